//! RMSNorm backward: host side of `shaders/rms_norm_backward.wgsl` (then
//! `shaders/param_grad.wgsl`, see [`crate::param_grad`]). CPU mirror:
//! [`crate::reference::rms_norm_backward`]; tests: `tests/rms_norm_backward.rs`.

use crate::builder::setters;
use crate::dtype::DType;
use crate::error::{Error, Operand, Result};
use crate::kernel::{Access, Kernel, KernelDef, Opt, PARTIALS, Shape, has, param, per_row, rows};
use crate::op::{Launch, Operands, private::Describe};
use crate::tensor::TensorRef;

/// The row kernel's bindings, in binding order (1, 2, ...). dweight is bound by the stage-2
/// kernel ([`crate::param_grad`]).
pub(crate) const KERNEL: KernelDef = KernelDef {
    name: "rms_norm_backward",
    source: include_str!("../shaders/rms_norm_backward.wgsl"),
    slots: &[
        rows(Operand::Input, Access::Read),
        rows(Operand::GradOutput, Access::Read),
        param(Operand::Weight),
        per_row(Operand::Rrms, Access::Read),
        // Read when accumulating.
        rows(Operand::GradInput, Access::ReadWrite),
        PARTIALS,
    ],
    shape: Shape::RowsWithPartials {
        per_invocation: crate::shaders::V_PER_INVOCATION / 2,
        arrays: 3,
        held: 1,
        stage2: Kernel::ParamGrad,
    },
    includes: &[crate::shaders::SCALE],
    wgsl_flags: &[],
    flags: has(
        &[Operand::Weight, Operand::GradWeight],
        &[Opt::AccumulateDx, Opt::GemmaOffset],
    ),
};

/// Gradients of [`crate::RmsNorm`]: with `xhat = x * rrms` and `g = dy * weight`,
///
/// - `dx = rrms * (g - xhat * mean(g * xhat))` (per row),
/// - `dweight = sum over rows of dy * xhat`.
///
/// Build it from the forward op with [`crate::RmsNorm::backward`], which carries over x, eps,
/// the weight, the options and the saved rrms, or with [`RmsNormBackward::new`]. `rrms` is
/// the statistic the forward pass saved; without it, it is recomputed, which needs the
/// forward's eps (an error says so when it is not set). dweight is summed in a fixed order
/// (bitwise identical from run to run). The accumulate flags add to what `grad_input` /
/// `grad_weight` hold.
///
/// With the Gemma offset `g = dy * (1 + weight)` (dweight is unchanged: `sum dy * xhat`).
/// With pRMSNorm (`partial(p)`, k = ceil(p * dim)) only the first k elements enter rrms, so
/// only they get the statistics term: `dx = rrms * (g - xhat * sum(g * xhat) / k)` for
/// them, `rrms * g` for the rest.
#[derive(Clone, Debug)]
#[must_use = "an op does nothing until it is recorded (Norms::record) or prepared"]
pub struct RmsNormBackward<'a> {
    pub rows: usize,
    pub dim: usize,
    /// The forward pass's eps; needed only when rrms is recomputed.
    pub eps: Option<f32>,
    pub input: TensorRef<'a>,
    pub grad_output: TensorRef<'a>,
    pub grad_input: TensorRef<'a>,
    pub weight: Option<TensorRef<'a>>,
    pub rrms: Option<TensorRef<'a>>,
    pub grad_weight: Option<TensorRef<'a>>,
    pub accumulate_grad_input: bool,
    pub accumulate_grad_params: bool,
    /// Storage of x, dy and dx; dweight and statistics are f32.
    pub dtype: DType,
    /// Storage of the weight; None: the same as `dtype`.
    pub param_dtype: Option<DType>,
    pub gemma_offset: bool,
    /// pRMSNorm's p, as in the forward pass.
    pub partial: Option<f32>,
}

impl<'a> RmsNormBackward<'a> {
    pub fn new(
        rows: usize,
        dim: usize,
        input: impl Into<TensorRef<'a>>,
        grad_output: impl Into<TensorRef<'a>>,
        grad_input: impl Into<TensorRef<'a>>,
    ) -> Self {
        RmsNormBackward {
            rows,
            dim,
            eps: None,
            input: input.into(),
            grad_output: grad_output.into(),
            grad_input: grad_input.into(),
            weight: None,
            rrms: None,
            grad_weight: None,
            accumulate_grad_input: false,
            accumulate_grad_params: false,
            dtype: DType::F32,
            param_dtype: None,
            gemma_offset: false,
            partial: None,
        }
    }

    setters! {
        /// The forward pass's eps (for a recomputed rrms).
        some eps: f32;
        /// The forward used `(1 + weight)`.
        value gemma_offset: bool;
        /// The forward was pRMSNorm with this p.
        some partial: f32;
        /// Storage of x, dy and dx (and of the weight, unless
        /// [`RmsNormBackward::param_dtype`] says otherwise, in either order).
        value dtype: DType;
        /// Storage of the weight.
        some param_dtype: DType;
        tensor weight;
        tensor grad_weight;
        value accumulate_grad_input: bool;
        value accumulate_grad_params: bool;
    }

    /// The forward pass's saved rrms.
    #[must_use = "setters return the changed op; the original is unchanged"]
    pub fn saved(mut self, rrms: impl Into<TensorRef<'a>>) -> Self {
        self.rrms = Some(rrms.into());
        self
    }
}

impl Describe for RmsNormBackward<'_> {
    fn launch(&self) -> Result<Launch<'_>> {
        let mut o = Operands::default();
        o.set(Operand::Input, self.input)
            .set(Operand::GradOutput, self.grad_output)
            .set(Operand::GradInput, self.grad_input)
            .set(Operand::Weight, self.weight)
            .set(Operand::Rrms, self.rrms)
            .set(Operand::GradWeight, self.grad_weight);
        let eps = match (self.eps, self.rrms.is_some()) {
            (Some(eps), _) => eps,
            // Unused: rrms is given.
            (None, true) => 0.0,
            (None, false) => {
                return Err(Error::EpsilonNeeded {
                    op: "RmsNormBackward",
                });
            }
        };
        let mut options =
            crate::param_grad::accumulate(self.accumulate_grad_input, self.accumulate_grad_params);
        if self.gemma_offset {
            options |= Opt::GemmaOffset.flag();
        }
        Ok(Launch {
            kernel: Kernel::RmsNormBackward,
            rows: self.rows,
            dim: self.dim,
            eps,
            options,
            act: self.dtype,
            param: self.param_dtype.unwrap_or(self.dtype),
            stat_len: crate::rms_norm::prefix_len(self.partial, self.dim)?,
            operands: o,
        })
    }
}
