//! LayerNorm backward: host side of `shaders/layer_norm_backward.wgsl` and
//! `shaders/param_grad.wgsl`. CPU mirror: [`crate::reference::layer_norm_backward`];
//! tests: `tests/layer_norm_backward.rs`.

use crate::dtype::DType;
use crate::error::Result;
use crate::norms::{Launch, Norms, accumulate_flags};
use crate::shaders::Kernel;
use crate::tensor::TensorRef;

/// Gradients of [`crate::LayerNorm`]: with `xhat = (x - mean) * rstd` and `g = dy * weight`,
///
/// - `dx = rstd * (g - mean(g) - xhat * mean(g * xhat))` (per row),
/// - `dweight = sum over rows of dy * xhat`, `dbias = sum over rows of dy`.
///
/// `mean` and `rstd` are the statistics the forward pass saved; without them they are
/// recomputed as the forward computes them. dweight and dbias are summed in a fixed order
/// (per-workgroup partial sums, then a reduction kernel; no atomics), so they are bitwise
/// identical from run to run. `accumulate_grad_input` adds dx to what `grad_input` holds (for
/// the residual stream); `accumulate_grad_params` adds to `grad_weight`/`grad_bias` (for
/// gradient accumulation over micro-batches).
#[derive(Clone, Copy, Debug)]
pub struct LayerNormBackward<'a> {
    pub rows: usize,
    pub dim: usize,
    /// As in the forward pass; used only when the statistics are recomputed.
    pub eps: f32,
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
    /// Storage of the weight.
    pub param_dtype: DType,
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
            eps: crate::LayerNorm::DEFAULT_EPS,
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
            param_dtype: DType::F32,
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

    /// The forward pass's saved mean and rstd (both, or neither).
    pub fn saved(mut self, mean: impl Into<TensorRef<'a>>, rstd: impl Into<TensorRef<'a>>) -> Self {
        self.mean = Some(mean.into());
        self.rstd = Some(rstd.into());
        self
    }

    pub fn grad_weight(mut self, grad_weight: impl Into<TensorRef<'a>>) -> Self {
        self.grad_weight = Some(grad_weight.into());
        self
    }

    pub fn grad_bias(mut self, grad_bias: impl Into<TensorRef<'a>>) -> Self {
        self.grad_bias = Some(grad_bias.into());
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
    /// Validates `op` and records it into `encoder` (one compute pass: the row kernel, then
    /// the dweight/dbias reduction when either is wanted). Nothing is submitted. With zero
    /// rows only dweight/dbias are written (0, or left as they are when accumulating).
    pub fn layer_norm_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        op: &LayerNormBackward,
    ) -> Result<()> {
        let f = accumulate_flags(op.accumulate_grad_input, op.accumulate_grad_params);
        self.backward(
            encoder,
            &Launch {
                kernel: Kernel::LayerNormBackward,
                rows: op.rows,
                dim: op.dim,
                eps: op.eps,
                flags: f,
                act: op.dtype,
                param: op.param_dtype,
                stat_len: None,
                operands: vec![
                    Some(op.input),
                    Some(op.grad_output),
                    op.weight,
                    op.mean,
                    op.rstd,
                    Some(op.grad_input),
                    None,
                ],
            },
            op.grad_weight,
            op.grad_bias,
        )
    }
}
