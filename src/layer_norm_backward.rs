//! LayerNorm backward: host side of `shaders/layer_norm_backward.wgsl` (then
//! `shaders/param_grad.wgsl`, see [`crate::param_grad`]). CPU mirror:
//! [`crate::reference::layer_norm_backward`]; tests: `tests/layer_norm_backward.rs`.

use crate::builder::setters;
use crate::dtype::DType;
use crate::error::{Error, Operand, Result};
use crate::kernel::{Access, Kernel, KernelDef, Opt, PARTIALS, Shape, has, param, per_row, rows};
use crate::op::{Launch, Operands, private::Describe, requires};
use crate::tensor::TensorRef;

/// The row kernel's bindings, in binding order (1, 2, ...). dweight and dbias are bound by
/// the stage-2 kernel ([`crate::param_grad`]).
pub(crate) const KERNEL: KernelDef = KernelDef {
    name: "layer_norm_backward",
    source: include_str!("../shaders/layer_norm_backward.wgsl"),
    slots: &[
        rows(Operand::Input, Access::Read),
        rows(Operand::GradOutput, Access::Read),
        param(Operand::Weight),
        per_row(Operand::Mean, Access::Read),
        per_row(Operand::Rstd, Access::Read),
        // Read when accumulating.
        rows(Operand::GradInput, Access::ReadWrite),
        PARTIALS,
    ],
    shape: Shape::RowsWithPartials {
        per_invocation: crate::shaders::V_PER_INVOCATION / 2,
        arrays: 4,
        held: 2,
        stage2: Kernel::ParamGrad,
    },
    includes: &[crate::shaders::SCALE],
    // Three sums in one reduction: row_sum3 in reduce.wgsl; the statistics, where they are
    // recomputed, in another: wg_moments.
    wgsl_flags: &["triples", "moments"],
    flags: has(
        &[Operand::Weight, Operand::GradWeight, Operand::GradBias],
        &[Opt::AccumulateDx],
    ),
};

/// Gradients of [`crate::LayerNorm`]: with `xhat = (x - mean) * rstd` and `g = dy * weight`,
///
/// - `dx = rstd * (g - mean(g) - xhat * mean(g * xhat))` (per row),
/// - `dweight = sum over rows of dy * xhat`, `dbias = sum over rows of dy`.
///
/// Build it from the forward op with [`crate::LayerNorm::backward`], which carries over x,
/// eps, the weight, the storage and the saved statistics, or with
/// [`LayerNormBackward::new`]. `mean` and `rstd` are the statistics the forward pass saved
/// (the mean serves as the pivot of the row's sums, the exact mean being taken from the row
/// again, so another value near it does as well; one far from the row costs precision);
/// without them they are recomputed as the forward computes them, which needs the forward's
/// eps (an error says so when it is not set). dweight and dbias are summed in a fixed order
/// (per-workgroup partial sums, then a reduction kernel; no atomics), so they are bitwise
/// identical from run to run. `accumulate_grad_input` adds dx to what `grad_input` holds (for
/// the residual stream); `accumulate_grad_params` adds to `grad_weight`/`grad_bias` (for
/// gradient accumulation over micro-batches).
#[derive(Clone, Debug)]
#[must_use = "an op does nothing until it is recorded (Norms::record) or prepared"]
pub struct LayerNormBackward<'a> {
    pub rows: usize,
    pub dim: usize,
    /// The forward pass's eps; needed only when the statistics are recomputed.
    pub eps: Option<f32>,
    pub input: TensorRef<'a>,
    pub grad_output: TensorRef<'a>,
    pub grad_input: TensorRef<'a>,
    pub weight: Option<TensorRef<'a>>,
    pub mean: Option<TensorRef<'a>>,
    pub rstd: Option<TensorRef<'a>>,
    pub grad_weight: Option<TensorRef<'a>>,
    pub grad_bias: Option<TensorRef<'a>>,
    pub accumulate_grad_input: bool,
    pub accumulate_grad_params: bool,
    /// Storage of x, dy and dx; dweight/dbias and statistics are f32.
    pub dtype: DType,
    /// Storage of the weight; None: the same as `dtype`.
    pub param_dtype: Option<DType>,
}

impl<'a> LayerNormBackward<'a> {
    pub fn new(
        rows: usize,
        dim: usize,
        input: impl Into<TensorRef<'a>>,
        grad_output: impl Into<TensorRef<'a>>,
        grad_input: impl Into<TensorRef<'a>>,
    ) -> Self {
        LayerNormBackward {
            rows,
            dim,
            eps: None,
            input: input.into(),
            grad_output: grad_output.into(),
            grad_input: grad_input.into(),
            weight: None,
            mean: None,
            rstd: None,
            grad_weight: None,
            grad_bias: None,
            accumulate_grad_input: false,
            accumulate_grad_params: false,
            dtype: DType::F32,
            param_dtype: None,
        }
    }

    setters! {
        /// The forward pass's eps (for recomputed statistics).
        some eps: f32;
        /// Storage of x, dy and dx (and of the weight, unless
        /// [`LayerNormBackward::param_dtype`] says otherwise, in either order).
        value dtype: DType;
        /// Storage of the weight.
        some param_dtype: DType;
        tensor weight;
        tensor grad_weight;
        tensor grad_bias;
        value accumulate_grad_input: bool;
        value accumulate_grad_params: bool;
    }

    /// The forward pass's saved mean and rstd.
    #[must_use = "setters return the changed op; the original is unchanged"]
    pub fn saved(mut self, mean: impl Into<TensorRef<'a>>, rstd: impl Into<TensorRef<'a>>) -> Self {
        self.mean = Some(mean.into());
        self.rstd = Some(rstd.into());
        self
    }
}

impl Describe for LayerNormBackward<'_> {
    fn launch(&self) -> Result<Launch<'_>> {
        let mut o = Operands::default();
        o.set(Operand::Input, self.input)
            .set(Operand::GradOutput, self.grad_output)
            .set(Operand::GradInput, self.grad_input)
            .set(Operand::Weight, self.weight)
            .set(Operand::Mean, self.mean)
            .set(Operand::Rstd, self.rstd)
            .set(Operand::GradWeight, self.grad_weight)
            .set(Operand::GradBias, self.grad_bias);
        requires(&o, Operand::Mean, Operand::Rstd)?;
        requires(&o, Operand::Rstd, Operand::Mean)?;
        let saved = self.mean.is_some();
        let eps = match (self.eps, saved) {
            (Some(eps), _) => eps,
            // Unused: the statistics are given.
            (None, true) => 0.0,
            (None, false) => {
                return Err(Error::EpsilonNeeded {
                    op: "LayerNormBackward",
                });
            }
        };
        Ok(Launch {
            kernel: Kernel::LayerNormBackward,
            rows: self.rows,
            dim: self.dim,
            eps,
            options: crate::param_grad::accumulate(
                self.accumulate_grad_input,
                self.accumulate_grad_params,
            ),
            act: self.dtype,
            param: self.param_dtype.unwrap_or(self.dtype),
            stat_len: None,
            operands: o,
        })
    }
}
