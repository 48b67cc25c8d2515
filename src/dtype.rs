//! Storage types of tensors in GPU buffers.

/// How the elements of a tensor are stored. Arithmetic is always f32; 16-bit tensors are
/// converted on load and rounded (to nearest even) on store. Saved statistics are always f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    #[default]
    F32,
    /// IEEE half precision, packed two to a 32-bit word (element 2k in the low half). Needs no
    /// `SHADER_F16`.
    F16,
    /// bfloat16 (the high half of an f32), packed like f16.
    Bf16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
        }
    }

    /// `v` rounded to this type (to nearest, ties to even), as the kernels store it.
    pub fn round(self, v: f64) -> f64 {
        match self {
            DType::F32 => f64::from(v as f32),
            DType::F16 => half::f16::from_f32(v as f32).to_f64(),
            DType::Bf16 => half::bf16::from_f32(v as f32).to_f64(),
        }
    }

    /// The bytes of `values` stored as this type.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            DType::F32 => bytemuck::cast_slice(values).to_vec(),
            DType::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            DType::Bf16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        }
    }

    /// The values stored in `bytes` (a whole number of elements), as f32.
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::Bf16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
