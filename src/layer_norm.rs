//! LayerNorm forward: host side of `shaders/layer_norm.wgsl`.
//! CPU mirror: [`crate::reference::layer_norm`]; tests: `tests/layer_norm.rs`.

use crate::dtype::DType;
use crate::error::Result;
use crate::norms::{Launch, Norms};
use crate::shaders::{Kernel, flags};
use crate::tensor::TensorRef;

/// Where LayerNorm adds epsilon.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EpsPlacement {
    /// `(x - mean) / sqrt(var + eps)`: PyTorch, ONNX and nearly every model.
    #[default]
    InsideSqrt,
    /// `(x - mean) / (sqrt(var) + eps)`, as the Annotated Transformer writes it.
    AddedToStd,
}

/// `y = (x - mean) * rstd * weight + bias` over the last `dim` elements of each of `rows`
/// rows, `rstd = 1 / sqrt(var + eps)` with the biased variance (divided by `dim`), as
/// `torch.nn.functional.layer_norm` and ONNX `LayerNormalization` (axis = -1).
///
/// Weight and bias are optional (absent = 1 and 0). `mean` and `rstd`, when given, receive
/// one f32 per row (ONNX's `Mean` and `InvStdDev` outputs).
///
/// `dtype` is the storage of x, y and the residual stream, `param_dtype` that of weight and
/// bias (f32 weights with 16-bit activations is the mixed mode); statistics are f32. With a
/// `residual`, the row normalized is `s = round(x + residual)` (rounded to `dtype`), and
/// `residual_out` receives s (the new residual stream), in the same pass.
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
    pub residual: Option<TensorRef<'a>>,
    pub residual_out: Option<TensorRef<'a>>,
    pub dtype: DType,
    pub param_dtype: DType,
    pub eps_placement: EpsPlacement,
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
            residual: None,
            residual_out: None,
            dtype: DType::F32,
            param_dtype: DType::F32,
            eps_placement: EpsPlacement::InsideSqrt,
        }
    }

    /// Storage of x, y (and residual, residual_out) and, unless set apart, of weight and bias.
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self.param_dtype = dtype;
        self
    }

    /// Storage of weight and bias (set after [`LayerNorm::dtype`]).
    pub fn param_dtype(mut self, dtype: DType) -> Self {
        self.param_dtype = dtype;
        self
    }

    /// Normalize `x + residual` instead of x.
    pub fn residual(mut self, residual: impl Into<TensorRef<'a>>) -> Self {
        self.residual = Some(residual.into());
        self
    }

    /// Write `x + residual` (as normalized) here.
    pub fn residual_out(mut self, out: impl Into<TensorRef<'a>>) -> Self {
        self.residual_out = Some(out.into());
        self
    }

    pub fn eps_placement(mut self, placement: EpsPlacement) -> Self {
        self.eps_placement = placement;
        self
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
        if op.residual.is_none() && op.residual_out.is_some() {
            return Err(crate::Error::MissingOperand {
                needs: crate::Operand::Residual,
                given: crate::Operand::ResidualOut,
            });
        }
        self.forward(
            encoder,
            &Launch {
                kernel: Kernel::LayerNorm,
                rows: op.rows,
                dim: op.dim,
                eps: op.eps,
                flags: match op.eps_placement {
                    EpsPlacement::InsideSqrt => 0,
                    EpsPlacement::AddedToStd => flags::EPS_OUTSIDE,
                },
                operands: vec![
                    Some(op.input),
                    Some(op.output),
                    op.weight,
                    op.bias,
                    op.mean,
                    op.rstd,
                    op.residual,
                    op.residual_out,
                ],
                act: op.dtype,
                param: op.param_dtype,
                stat_len: None,
            },
        )
    }
}
