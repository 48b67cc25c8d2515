//! RMSNorm forward: host side of `shaders/rms_norm.wgsl`.
//! CPU mirror: [`crate::reference::rms_norm`]; tests: `tests/rms_norm.rs`.

use crate::dtype::DType;
use crate::error::{Error, Operand, Result};
use crate::norms::{Launch, Norms};
use crate::shaders::{Kernel, flags};
use crate::tensor::TensorRef;

/// Where RMSNorm rounds to a 16-bit storage type. Models diverge when this differs from the
/// order they were trained with. For f32 storage both are the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RoundingOrder {
    /// Everything in f32 and one rounding at the end: `y = round(x * rrms * w)` (Gemma's
    /// order; with the offset, `round(x * rrms * (1 + w))`).
    #[default]
    Gemma,
    /// Hugging Face Llama's: `t = round(x * rrms)`, then `y = round(t * w)` (the product in
    /// f32 of the two stored values, as PyTorch multiplies 16-bit tensors).
    Llama,
}

/// `y = x * rrms * weight` over the last `dim` elements of each of `rows` rows,
/// `rrms = 1 / sqrt(mean(x^2) + eps)`, as `torch.nn.functional.rms_norm` and ONNX
/// `RMSNormalization` (axis = -1).
///
/// The weight is optional (absent = 1). `rrms`, when given, receives one f32 per row.
///
/// Options used by real models: storage in f16/bf16 (`dtype`, `param_dtype`, as
/// [`crate::LayerNorm`]), the fused residual add (`residual`, `residual_out`), Gemma's
/// `(1 + weight)` ([`RmsNorm::gemma_offset`]), the [`RoundingOrder`], and pRMSNorm
/// ([`RmsNorm::partial`]: the RMS estimated from the first `ceil(p * dim)` elements).
#[derive(Clone, Copy, Debug)]
pub struct RmsNorm<'a> {
    pub rows: usize,
    pub dim: usize,
    pub eps: f32,
    pub input: TensorRef<'a>,
    pub output: TensorRef<'a>,
    pub weight: Option<TensorRef<'a>>,
    pub rrms: Option<TensorRef<'a>>,
    pub residual: Option<TensorRef<'a>>,
    pub residual_out: Option<TensorRef<'a>>,
    pub dtype: DType,
    pub param_dtype: DType,
    pub gemma_offset: bool,
    pub rounding: RoundingOrder,
    /// pRMSNorm's p, in (0, 1]; None is plain RMSNorm (p = 1).
    pub partial: Option<f32>,
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
            residual: None,
            residual_out: None,
            dtype: DType::F32,
            param_dtype: DType::F32,
            gemma_offset: false,
            rounding: RoundingOrder::Gemma,
            partial: None,
        }
    }

    /// Storage of x, y (and residual, residual_out) and, unless set apart, of the weight.
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self.param_dtype = dtype;
        self
    }

    /// Storage of the weight (set after [`RmsNorm::dtype`]).
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

    /// Multiply by `(1 + weight)` instead of the weight (Gemma).
    pub fn gemma_offset(mut self, yes: bool) -> Self {
        self.gemma_offset = yes;
        self
    }

    pub fn rounding(mut self, order: RoundingOrder) -> Self {
        self.rounding = order;
        self
    }

    /// pRMSNorm: estimate the RMS from the first `ceil(p * dim)` elements, p in (0, 1].
    pub fn partial(mut self, p: f32) -> Self {
        self.partial = Some(p);
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

    /// Save each row's `1 / sqrt(mean(x^2) + eps)`.
    pub fn rrms(mut self, rrms: impl Into<TensorRef<'a>>) -> Self {
        self.rrms = Some(rrms.into());
        self
    }
}

/// pRMSNorm's `ceil(p * dim)`: at least one element, at most the row.
pub(crate) fn prefix_len(partial: Option<f32>, dim: usize) -> Result<Option<usize>> {
    match partial {
        None => Ok(None),
        Some(p) if p > 0.0 && p <= 1.0 => Ok(Some(
            ((f64::from(p) * dim as f64).ceil() as usize).clamp(1, dim.max(1)),
        )),
        Some(p) => Err(Error::BadFraction(p)),
    }
}

impl Norms {
    /// Validates `op` and records it into `encoder` (one compute pass). Zero rows records
    /// nothing. Nothing is submitted.
    pub fn rms_norm(&self, encoder: &mut wgpu::CommandEncoder, op: &RmsNorm) -> Result<()> {
        if op.residual.is_none() && op.residual_out.is_some() {
            return Err(Error::MissingOperand {
                needs: Operand::Residual,
                given: Operand::ResidualOut,
            });
        }
        let stat_len = prefix_len(op.partial, op.dim)?;
        let mut f = 0;
        if op.gemma_offset {
            f |= flags::GEMMA_OFFSET;
        }
        if op.rounding == RoundingOrder::Llama {
            f |= flags::LLAMA_ROUNDING;
        }
        self.forward(
            encoder,
            &Launch {
                kernel: Kernel::RmsNorm,
                rows: op.rows,
                dim: op.dim,
                eps: op.eps,
                flags: f,
                operands: vec![
                    Some(op.input),
                    Some(op.output),
                    op.weight,
                    None,
                    None,
                    op.rrms,
                    op.residual,
                    op.residual_out,
                ],
                act: op.dtype,
                param: op.param_dtype,
                stat_len,
            },
        )
    }
}
