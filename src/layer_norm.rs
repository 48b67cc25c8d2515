//! LayerNorm forward: host side of `shaders/layer_norm.wgsl`.
//! CPU mirror: [`crate::reference::layer_norm`]; tests: `tests/layer_norm.rs`.

use crate::error::Result;
use crate::norms::{Launch, Norms};
use crate::shaders::Kernel;
use crate::tensor::TensorRef;

/// `y = (x - mean) * rstd * weight + bias` over the last `dim` elements of each of `rows`
/// rows, `rstd = 1 / sqrt(var + eps)` with the biased variance (divided by `dim`), as
/// `torch.nn.functional.layer_norm` and ONNX `LayerNormalization` (axis = -1).
///
/// Weight and bias are optional (absent = 1 and 0). `mean` and `rstd`, when given, receive
/// one f32 per row (ONNX's `Mean` and `InvStdDev` outputs).
#[derive(Clone, Copy, Debug)]
pub struct LayerNorm<'a> {
    pub rows: usize,
    pub dim: usize,
    pub eps: f32,
    pub input: TensorRef<'a>,
    pub output: TensorRef<'a>,
    pub weight: Option<TensorRef<'a>>,
    pub bias: Option<TensorRef<'a>>,
    pub mean: Option<TensorRef<'a>>,
    pub rstd: Option<TensorRef<'a>>,
}

impl<'a> LayerNorm<'a> {
    /// PyTorch's and ONNX's default.
    pub const DEFAULT_EPS: f32 = 1e-5;

    pub fn new(
        rows: usize,
        dim: usize,
        input: impl Into<TensorRef<'a>>,
        output: impl Into<TensorRef<'a>>,
    ) -> Self {
        LayerNorm {
            rows,
            dim,
            eps: Self::DEFAULT_EPS,
            input: input.into(),
            output: output.into(),
            weight: None,
            bias: None,
            mean: None,
            rstd: None,
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

    pub fn bias(mut self, bias: impl Into<TensorRef<'a>>) -> Self {
        self.bias = Some(bias.into());
        self
    }

    /// Save each row's mean.
    pub fn mean(mut self, mean: impl Into<TensorRef<'a>>) -> Self {
        self.mean = Some(mean.into());
        self
    }

    /// Save each row's `1 / sqrt(var + eps)`.
    pub fn rstd(mut self, rstd: impl Into<TensorRef<'a>>) -> Self {
        self.rstd = Some(rstd.into());
        self
    }
}

impl Norms {
    /// Validates `op` and records it into `encoder` (one compute pass). Zero rows records
    /// nothing. Nothing is submitted.
    pub fn layer_norm(&self, encoder: &mut wgpu::CommandEncoder, op: &LayerNorm) -> Result<()> {
        self.forward(
            encoder,
            &Launch {
                kernel: Kernel::LayerNorm,
                rows: op.rows,
                dim: op.dim,
                eps: op.eps,
                flags: 0,
                operands: vec![
                    Some(op.input),
                    Some(op.output),
                    op.weight,
                    op.bias,
                    op.mean,
                    op.rstd,
                ],
            },
        )
    }
}
