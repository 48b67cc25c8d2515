//! The one error type of the crate.

/// Which operand of an op an error is about; also the key of an op's operands inside the
/// crate. Each has one name across the API, the errors and the shaders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operand {
    Input,
    Output,
    Weight,
    Bias,
    /// LayerNorm's per-row mean.
    Mean,
    /// LayerNorm's per-row `1 / sqrt(var + eps)`.
    Rstd,
    /// RMSNorm's per-row `1 / sqrt(mean(x^2) + eps)`.
    Rrms,
    /// The residual added to the input before the norm.
    Residual,
    /// Where input + residual is written back.
    ResidualOut,
    GradOutput,
    GradInput,
    GradWeight,
    GradBias,
    /// The backward pass's partial sums, a buffer of the crate's own.
    Partials,
}

impl Operand {
    /// Every operand, in the order of their presence bits.
    pub const ALL: [Operand; 14] = [
        Operand::Input,
        Operand::Output,
        Operand::Weight,
        Operand::Bias,
        Operand::Mean,
        Operand::Rstd,
        Operand::Rrms,
        Operand::Residual,
        Operand::ResidualOut,
        Operand::GradOutput,
        Operand::GradInput,
        Operand::GradWeight,
        Operand::GradBias,
        Operand::Partials,
    ];

    /// The name in the API and in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Operand::Input => "input",
            Operand::Output => "output",
            Operand::Weight => "weight",
            Operand::Bias => "bias",
            Operand::Mean => "mean",
            Operand::Rstd => "rstd",
            Operand::Rrms => "rrms",
            Operand::Residual => "residual",
            Operand::ResidualOut => "residual_out",
            Operand::GradOutput => "grad_output",
            Operand::GradInput => "grad_input",
            Operand::GradWeight => "grad_weight",
            Operand::GradBias => "grad_bias",
            Operand::Partials => "partial sums",
        }
    }

    /// The name of its array and accessors in the generated WGSL (`x`, `ld_x`, `HAS_X`).
    pub fn wgsl(self) -> &'static str {
        match self {
            Operand::Input => "x",
            Operand::Output => "y",
            Operand::Weight => "weight",
            Operand::Bias => "bias",
            Operand::Mean => "mean",
            Operand::Rstd => "rstd",
            Operand::Rrms => "rrms",
            Operand::Residual => "residual",
            Operand::ResidualOut => "residual_out",
            Operand::GradOutput => "dy",
            Operand::GradInput => "dx",
            Operand::GradWeight => "dweight",
            Operand::GradBias => "dbias",
            Operand::Partials => "partials",
        }
    }

    /// Its bit in the kernels' flags, set when it is present (WGSL: `HAS_<WGSL NAME>`).
    pub const fn flag(self) -> u32 {
        1 << self as u32
    }
}

impl std::fmt::Display for Operand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can go wrong. Bad arguments are reported here before anything is
/// recorded, so none of them reaches wgpu's uncaptured-error handler.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    #[error("the normalized dimension D must be at least 1")]
    ZeroDim,

    #[error("epsilon must be finite and >= 0, got {0}")]
    BadEpsilon(f32),

    #[error("{rows} rows x {dim} elements is too large to address")]
    ShapeTooLarge { rows: usize, dim: usize },

    #[error(
        "a row of {dim} elements ({row_bytes} bytes) does not fit one storage binding of this device \
         (max_storage_buffer_binding_size = {max_binding})"
    )]
    RowTooLarge {
        dim: usize,
        row_bytes: u64,
        max_binding: u64,
    },

    #[error("{operand} is {actual} bytes but must be {expected} bytes ({what})")]
    WrongSize {
        operand: Operand,
        expected: u64,
        actual: u64,
        what: &'static str,
    },

    #[error("{operand}: bytes {offset}..{end} lie outside its buffer of {buffer_size} bytes")]
    OutOfBounds {
        operand: Operand,
        offset: u64,
        end: u64,
        buffer_size: u64,
    },

    #[error("{operand}: byte offset {offset} is not a multiple of its element size, {element}")]
    MisalignedOffset {
        operand: Operand,
        offset: u64,
        element: u64,
    },

    #[error("{operand}: the buffer lacks BufferUsages::STORAGE (it has {usage:?})")]
    MissingUsage {
        operand: Operand,
        usage: wgpu::BufferUsages,
    },

    #[error(
        "{written} overlaps {other} in the same buffer; outputs may only alias the input \
         exactly (in place)"
    )]
    Overlap { written: Operand, other: Operand },

    #[error("{operand}: its buffer has been destroyed")]
    DestroyedBuffer { operand: Operand },

    #[error("{operand}: its buffer belongs to another device than these kernels")]
    OtherDevice { operand: Operand },

    #[error("{needs} is required with {given}")]
    MissingOperand { needs: Operand, given: Operand },

    #[error("slice of {len} elements is not {rows} rows x {dim} ({what})")]
    SliceLength {
        len: usize,
        rows: usize,
        dim: usize,
        what: &'static str,
    },

    #[error(
        "{op} recomputes its statistics and needs the forward pass's eps: set it with .eps(..), \
         build the backward from the forward op (`.backward(..)`), or pass the saved statistics"
    )]
    EpsilonNeeded { op: &'static str },

    #[error("not supported: {0}")]
    Unsupported(&'static str),

    #[error("the pRMSNorm fraction must be in (0, 1], got {0}")]
    BadFraction(f32),

    #[error("bad tuning: {0}")]
    BadTuning(String),

    /// The device's limits are below what the kernels need: 64 invocations per workgroup, as
    /// many storage buffers per shader stage as the largest kernel binds (wgpu's downlevel
    /// limits, 4, are too few), and [`crate::shaders::MAX_WORKGROUP_BYTES`] of
    /// workgroup memory (every device wgpu opens for compute has it unless asked for less).
    #[error("the device cannot run these kernels: {0}")]
    UnsupportedDevice(String),

    #[error("{0}")]
    NoAdapter(String),

    #[error("requesting the device failed: {0}")]
    RequestDevice(String),

    #[error("reading results back from the GPU failed: {0}")]
    Readback(String),

    #[error("the GPU ran out of memory: {0}")]
    OutOfMemory(String),

    #[error("wgpu rejected a call of wgpu-norm: {0}")]
    Validation(String),

    #[error("wgpu reported an internal error: {0}")]
    Wgpu(String),

    #[error("the device is lost ({0}); make a new device and new Norms")]
    DeviceLost(String),

    /// A burn tensor or device that the burn integration cannot take (feature `burn`).
    #[error("burn: {0}")]
    Burn(String),

    #[error("wgpu-norm internal error (please report): {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
