//! LayerNorm forward: host side of `shaders/layer_norm.wgsl`.
//! CPU mirror: [`crate::reference::layer_norm`]; tests: `tests/layer_norm.rs`.

use crate::builder::setters;
use crate::dtype::DType;
use crate::error::{Error, Operand, Result};
use crate::kernel::{
    Access, KernelDef, Opt, ROW_PARTS, Shape, has, optional, param, per_row, rows,
};
use crate::layer_norm_backward::LayerNormBackward;
use crate::op::{Launch, Operands, private::Describe, requires};
use crate::tensor::TensorRef;

/// The kernel's bindings, in binding order (1, 2, ...).
pub(crate) const KERNEL: KernelDef = KernelDef {
    name: "layer_norm",
    source: include_str!("../shaders/layer_norm.wgsl"),
    slots: &[
        rows(Operand::Input, Access::Read),
        rows(Operand::Output, Access::Write),
        param(Operand::Weight),
        param(Operand::Bias),
        per_row(Operand::Mean, Access::Write),
        per_row(Operand::Rstd, Access::Write),
        optional(rows(Operand::Residual, Access::Read)),
        // Read back by the streamed passes: it may replace x or the residual in place.
        optional(rows(Operand::ResidualOut, Access::ReadWrite)),
    ],
    shape: Shape::Rows {
        per_invocation: crate::shaders::V_PER_INVOCATION,
        arrays: 1,
    },
    includes: &[crate::shaders::SCALE, crate::shaders::RESIDUAL],
    // The row's mean and variance in one reduction: wg_moments in reduce.wgsl (the split
    // kernel's for each part, merged in split.wgsl).
    wgsl_flags: &["moments"],
    flags: has(
        &[
            Operand::Weight,
            Operand::Bias,
            Operand::Mean,
            Operand::Rstd,
            Operand::Residual,
            Operand::ResidualOut,
        ],
        &[Opt::EpsOutside],
    ),
};

/// The same kernel for few long rows, each split over several workgroups (`split.wgsl`):
/// without the per-row statistics, so that the parts' sums fit the bindings a device
/// guarantees.
pub(crate) const SPLIT: KernelDef = KernelDef {
    name: "layer_norm_split",
    slots: &[
        rows(Operand::Input, Access::Read),
        rows(Operand::Output, Access::Write),
        param(Operand::Weight),
        param(Operand::Bias),
        optional(rows(Operand::Residual, Access::Read)),
        optional(rows(Operand::ResidualOut, Access::ReadWrite)),
        ROW_PARTS,
    ],
    includes: &[
        crate::shaders::SCALE,
        crate::shaders::RESIDUAL,
        crate::shaders::SPLIT,
    ],
    wgsl_flags: &["split", "moments"],
    ..KERNEL
};

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
/// bias (f32 weights with 16-bit activations is the mixed mode; by default the same as
/// `dtype`); statistics are f32. With a `residual`, the row normalized is
/// `s = round(x + residual)` (rounded to `dtype`), and `residual_out` receives s (the new
/// residual stream), in the same pass.
#[derive(Clone, Debug)]
#[must_use = "an op does nothing until it is recorded (Norms::record) or prepared"]
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
    /// None: the same as `dtype`.
    pub param_dtype: Option<DType>,
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
            param_dtype: None,
            eps_placement: EpsPlacement::InsideSqrt,
        }
    }

    setters! {
        value eps: f32;
        value eps_placement: EpsPlacement;
        /// Storage of x, y and the residual stream (and of weight and bias, unless
        /// [`LayerNorm::param_dtype`] says otherwise, in either order).
        value dtype: DType;
        /// Storage of weight and bias.
        some param_dtype: DType;
        tensor weight;
        tensor bias;
        /// Save each row's mean (f32).
        tensor mean;
        /// Save each row's `1 / sqrt(var + eps)` (f32).
        tensor rstd;
        /// Normalize `x + residual` instead of x.
        tensor residual;
        /// Write `x + residual` (as normalized) here; it may be the residual itself or x.
        tensor residual_out;
    }

    /// The gradients of this op: x, eps, shape, storage and weight as here, the statistics
    /// this op saves (if it saves both), `grad_output` (dy) and `grad_input` (dx, with the
    /// shape of x). With a fused residual the row that was normalized is the sum, so it must
    /// have been written (`residual_out`).
    pub fn backward(
        &self,
        grad_output: impl Into<TensorRef<'a>>,
        grad_input: impl Into<TensorRef<'a>>,
    ) -> Result<LayerNormBackward<'a>> {
        if self.eps_placement != EpsPlacement::InsideSqrt {
            return Err(Error::Unsupported(
                "the backward of LayerNorm with eps added to the standard deviation",
            ));
        }
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
        let mut op = LayerNormBackward::new(self.rows, self.dim, input, grad_output, grad_input)
            .eps(self.eps)
            .dtype(self.dtype);
        op.param_dtype = self.param_dtype;
        op.weight = self.weight;
        if let (Some(mean), Some(rstd)) = (self.mean, self.rstd) {
            op = op.saved(mean, rstd);
        }
        Ok(op)
    }
}

impl Describe for LayerNorm<'_> {
    fn launch(&self) -> Result<Launch<'_>> {
        let mut o = Operands::default();
        o.set(Operand::Input, self.input)
            .set(Operand::Output, self.output)
            .set(Operand::Weight, self.weight)
            .set(Operand::Bias, self.bias)
            .set(Operand::Mean, self.mean)
            .set(Operand::Rstd, self.rstd)
            .set(Operand::Residual, self.residual)
            .set(Operand::ResidualOut, self.residual_out);
        requires(&o, Operand::ResidualOut, Operand::Residual)?;
        Ok(Launch {
            kernel: crate::Kernel::LayerNorm,
            rows: self.rows,
            dim: self.dim,
            eps: self.eps,
            options: match self.eps_placement {
                EpsPlacement::InsideSqrt => 0,
                EpsPlacement::AddedToStd => Opt::EpsOutside.flag(),
            },
            act: self.dtype,
            param: self.param_dtype.unwrap_or(self.dtype),
            stat_len: None,
            operands: o,
        })
    }
}
