//! RMSNorm backward: host side of `shaders/rms_norm_backward.wgsl` and
//! `shaders/param_grad.wgsl`. CPU mirror: [`crate::reference::rms_norm_backward`];
//! tests: `tests/rms_norm_backward.rs`.

use crate::dtype::DType;
use crate::error::Result;
use crate::norms::{Launch, Norms, accumulate_flags};
use crate::shaders::{Kernel, flags};
use crate::tensor::TensorRef;

/// Gradients of [`crate::RmsNorm`]: with `xhat = x * rrms` and `g = dy * weight`,
///
/// - `dx = rrms * (g - xhat * mean(g * xhat))` (per row),
/// - `dweight = sum over rows of dy * xhat`.
///
/// `rrms` is the statistic the forward pass saved; without it, it is recomputed. dweight is
/// summed in a fixed order (bitwise identical from run to run). The accumulate flags add to
/// what `grad_input` / `grad_weight` hold.
///
/// With the Gemma offset `g = dy * (1 + weight)` (dweight is unchanged: `sum dy * xhat`).
/// With pRMSNorm (`partial(p)`, k = ceil(p * dim)) only the first k elements enter rrms, so
/// only they get the statistics term: `dx = rrms * (g - xhat * sum(g * xhat) / k)` for
/// them, `rrms * g` for the rest.
#[derive(Clone, Copy, Debug)]
pub struct RmsNormBackward<'a> {
    pub rows: usize,
    pub dim: usize,
    /// As in the forward pass; used only when rrms is recomputed.
    pub eps: f32,
    pub input: TensorRef<'a>,
    pub grad_output: TensorRef<'a>,
    pub grad_input: TensorRef<'a>,
    pub weight: Option<TensorRef<'a>>,
    pub rrms: Option<TensorRef<'a>>,
    pub grad_weight: Option<TensorRef<'a>>,
    pub accumulate_grad_input: bool,
    pub accumulate_grad_params: bool,
    /// Storage of x, dy and dx; dweight/dbias and statistics are f32.
    pub dtype: DType,
    /// Storage of the weight.
    pub param_dtype: DType,
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
            eps: crate::RmsNorm::DEFAULT_EPS,
            input: input.into(),
            grad_output: grad_output.into(),
            grad_input: grad_input.into(),
            weight: None,
            rrms: None,
            grad_weight: None,
            accumulate_grad_input: false,
            accumulate_grad_params: false,
            dtype: DType::F32,
            param_dtype: DType::F32,
            gemma_offset: false,
            partial: None,
        }
    }

    /// The forward used `(1 + weight)`.
    pub fn gemma_offset(mut self, yes: bool) -> Self {
        self.gemma_offset = yes;
        self
    }

    /// The forward was pRMSNorm with this p.
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

    /// The forward pass's saved rrms.
    pub fn saved(mut self, rrms: impl Into<TensorRef<'a>>) -> Self {
        self.rrms = Some(rrms.into());
        self
    }

    pub fn grad_weight(mut self, grad_weight: impl Into<TensorRef<'a>>) -> Self {
        self.grad_weight = Some(grad_weight.into());
        self
    }

    /// Storage of x, dy and dx and, unless set apart, of the weight.
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self.param_dtype = dtype;
        self
    }

    /// Storage of the weight (set after `dtype`).
    pub fn param_dtype(mut self, dtype: DType) -> Self {
        self.param_dtype = dtype;
        self
    }

    pub fn accumulate_grad_input(mut self, yes: bool) -> Self {
        self.accumulate_grad_input = yes;
        self
    }

    pub fn accumulate_grad_params(mut self, yes: bool) -> Self {
        self.accumulate_grad_params = yes;
        self
    }
}

impl Norms {
    /// Validates `op` and records it into `encoder` (one compute pass). Nothing is
    /// submitted. With zero rows only dweight is written (0, or left as it is when
    /// accumulating).
    pub fn rms_norm_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        op: &RmsNormBackward,
    ) -> Result<()> {
        let mut f = accumulate_flags(op.accumulate_grad_input, op.accumulate_grad_params);
        if op.gemma_offset {
            f |= flags::GEMMA_OFFSET;
        }
        let stat_len = crate::rms_norm::prefix_len(op.partial, op.dim)?;
        self.backward(
            encoder,
            &Launch {
                kernel: Kernel::RmsNormBackward,
                rows: op.rows,
                dim: op.dim,
                eps: op.eps,
                flags: f,
                act: op.dtype,
                param: op.param_dtype,
                stat_len,
                operands: vec![
                    Some(op.input),
                    Some(op.grad_output),
                    op.weight,
                    None,
                    op.rrms,
                    Some(op.grad_input),
                    None,
                ],
            },
            op.grad_weight,
            None,
        )
    }
}
