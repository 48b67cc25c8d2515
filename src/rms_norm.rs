//! RMSNorm forward: host side of `shaders/rms_norm.wgsl`.
//! CPU mirror: [`crate::reference::rms_norm`]; tests: `tests/rms_norm.rs`.

use crate::builder::setters;
use crate::dtype::DType;
use crate::error::{Error, Operand, Result};
use crate::kernel::{
    Access, KernelDef, Opt, ROW_PARTS, Shape, has, optional, param, per_row, rows,
};
use crate::op::{Launch, Operands, private::Describe, requires};
use crate::rms_norm_backward::RmsNormBackward;
use crate::tensor::TensorRef;

/// The kernel's bindings, in binding order (1, 2, ...).
pub(crate) const KERNEL: KernelDef = KernelDef {
    name: "rms_norm",
    source: include_str!("../shaders/rms_norm.wgsl"),
    slots: &[
        rows(Operand::Input, Access::Read),
        rows(Operand::Output, Access::Write),
        param(Operand::Weight),
        per_row(Operand::Rrms, Access::Write),
        optional(rows(Operand::Residual, Access::Read)),
        // Read back by the streamed pass: it may replace x or the residual in place.
        optional(rows(Operand::ResidualOut, Access::ReadWrite)),
    ],
    shape: Shape::Rows {
        per_invocation: crate::shaders::V_PER_INVOCATION,
        arrays: 1,
    },
    includes: &[crate::shaders::SCALE, crate::shaders::RESIDUAL],
    wgsl_flags: &[],
    flags: has(
        &[
            Operand::Weight,
            Operand::Rrms,
            Operand::Residual,
            Operand::ResidualOut,
        ],
        &[Opt::GemmaOffset, Opt::LlamaRounding],
    ),
};

/// The same kernel for few long rows, each split over several workgroups (`split.wgsl`),
/// without the per-row statistic.
pub(crate) const SPLIT: KernelDef = KernelDef {
    name: "rms_norm_split",
    slots: &[
        rows(Operand::Input, Access::Read),
        rows(Operand::Output, Access::Write),
        param(Operand::Weight),
        optional(rows(Operand::Residual, Access::Read)),
        optional(rows(Operand::ResidualOut, Access::ReadWrite)),
        ROW_PARTS,
    ],
    includes: &[
        crate::shaders::SCALE,
        crate::shaders::RESIDUAL,
        crate::shaders::SPLIT,
    ],
    wgsl_flags: &["split"],
    ..KERNEL
};

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
#[derive(Clone, Debug)]
#[must_use = "an op does nothing until it is recorded (Norms::record) or prepared"]
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
    /// None: the same as `dtype`.
    pub param_dtype: Option<DType>,
    pub gemma_offset: bool,
    pub rounding: RoundingOrder,
    /// pRMSNorm's p, in (0, 1]; None is plain RMSNorm (p = 1).
    pub partial: Option<f32>,
}

impl<'a> RmsNorm<'a> {
    /// PyTorch's default when `eps=None`: the machine epsilon of f32
    /// (`torch.finfo(torch.float32).eps`). ONNX `RMSNormalization` defaults to 1e-5 instead;
    /// pass it with [`RmsNorm::eps`].
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
            param_dtype: None,
            gemma_offset: false,
            rounding: RoundingOrder::Gemma,
            partial: None,
        }
    }

    setters! {
        value eps: f32;
        /// Multiply by `(1 + weight)` instead of the weight (Gemma).
        value gemma_offset: bool;
        value rounding: RoundingOrder;
        /// pRMSNorm: estimate the RMS from the first `ceil(p * dim)` elements, p in (0, 1].
        some partial: f32;
        /// Storage of x, y and the residual stream (and of the weight, unless
        /// [`RmsNorm::param_dtype`] says otherwise, in either order).
        value dtype: DType;
        /// Storage of the weight.
        some param_dtype: DType;
        tensor weight;
        /// Save each row's `1 / sqrt(mean(x^2) + eps)` (f32).
        tensor rrms;
        /// Normalize `x + residual` instead of x.
        tensor residual;
        /// Write `x + residual` (as normalized) here; it may be the residual itself or x.
        tensor residual_out;
    }

    /// The gradients of this op: x, eps, shape, storage, weight, Gemma offset and pRMSNorm as
    /// here, the rrms this op saves (if it does), `grad_output` (dy) and `grad_input` (dx,
    /// with the shape of x). With a fused residual the row that was normalized is the sum, so
    /// it must have been written (`residual_out`). The rounding order does not enter: as in
    /// autograd, a rounding passes the gradient through unchanged.
    pub fn backward(
        &self,
        grad_output: impl Into<TensorRef<'a>>,
        grad_input: impl Into<TensorRef<'a>>,
    ) -> Result<RmsNormBackward<'a>> {
        let input = match (self.residual, self.residual_out) {
            (None, _) => self.input,
            (Some(_), Some(s)) => s,
            (Some(_), None) => {
                return Err(Error::MissingOperand {
                    needs: Operand::ResidualOut,
                    given: Operand::Residual,
                });
            }
        };
        let mut op = RmsNormBackward::new(self.rows, self.dim, input, grad_output, grad_input)
            .eps(self.eps)
            .dtype(self.dtype)
            .gemma_offset(self.gemma_offset);
        op.param_dtype = self.param_dtype;
        op.partial = self.partial;
        op.weight = self.weight;
        op.rrms = self.rrms;
        Ok(op)
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

impl Describe for RmsNorm<'_> {
    fn launch(&self) -> Result<Launch<'_>> {
        let mut o = Operands::default();
        o.set(Operand::Input, self.input)
            .set(Operand::Output, self.output)
            .set(Operand::Weight, self.weight)
            .set(Operand::Rrms, self.rrms)
            .set(Operand::Residual, self.residual)
            .set(Operand::ResidualOut, self.residual_out);
        requires(&o, Operand::ResidualOut, Operand::Residual)?;
        let mut options = 0;
        if self.gemma_offset {
            options |= Opt::GemmaOffset.flag();
        }
        if self.rounding == RoundingOrder::Llama {
            options |= Opt::LlamaRounding.flag();
        }
        Ok(Launch {
            kernel: crate::Kernel::RmsNorm,
            rows: self.rows,
            dim: self.dim,
            eps: self.eps,
            options,
            act: self.dtype,
            param: self.param_dtype.unwrap_or(self.dtype),
            stat_len: prefix_len(self.partial, self.dim)?,
            operands: o,
        })
    }
}
