//! RMSNorm forward: host side of `shaders/rms_norm.wgsl`.
//! CPU mirror: [`crate::reference::rms_norm`]; tests: `tests/rms_norm.rs`.

use crate::error::Result;
use crate::norms::{Launch, Norms};
use crate::shaders::Kernel;
use crate::tensor::TensorRef;

/// `y = x * rrms * weight` over the last `dim` elements of each of `rows` rows,
/// `rrms = 1 / sqrt(mean(x^2) + eps)`, as `torch.nn.functional.rms_norm` and ONNX
/// `RMSNormalization` (axis = -1).
///
/// The weight is optional (absent = 1). `rrms`, when given, receives one f32 per row.
#[derive(Clone, Copy, Debug)]
pub struct RmsNorm<'a> {
    pub rows: usize,
    pub dim: usize,
    pub eps: f32,
    pub input: TensorRef<'a>,
    pub output: TensorRef<'a>,
    pub weight: Option<TensorRef<'a>>,
    pub rrms: Option<TensorRef<'a>>,
}

impl<'a> RmsNorm<'a> {
    /// PyTorch's default when `eps=None`: the machine epsilon of f32 (`torch.finfo(torch.float32).eps`).
    /// ONNX `RMSNormalization` defaults to 1e-5 instead; pass it with [`RmsNorm::eps`].
    pub const DEFAULT_EPS: f32 = f32::EPSILON;

    pub fn new(
        rows: usize,
        dim: usize,
        input: impl Into<TensorRef<'a>>,
        output: impl Into<TensorRef<'a>>,
    ) -> Self {
        RmsNorm {
            rows,
            dim,
            eps: Self::DEFAULT_EPS,
            input: input.into(),
            output: output.into(),
            weight: None,
            rrms: None,
        }
    }

    pub fn eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }

    pub fn weight(mut self, weight: impl Into<TensorRef<'a>>) -> Self {
        self.weight = Some(weight.into());
        self
    }

    /// Save each row's `1 / sqrt(mean(x^2) + eps)`.
    pub fn rrms(mut self, rrms: impl Into<TensorRef<'a>>) -> Self {
        self.rrms = Some(rrms.into());
        self
    }
}

impl Norms {
    /// Validates `op` and records it into `encoder` (one compute pass). Zero rows records
    /// nothing. Nothing is submitted.
    pub fn rms_norm(&self, encoder: &mut wgpu::CommandEncoder, op: &RmsNorm) -> Result<()> {
        self.forward(
            encoder,
            &Launch {
                kernel: Kernel::RmsNorm,
                rows: op.rows,
                dim: op.dim,
                eps: op.eps,
                flags: 0,
                operands: vec![
                    Some(op.input),
                    Some(op.output),
                    op.weight,
                    None,
                    None,
                    op.rrms,
                ],
            },
        )
    }
}
