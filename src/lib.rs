//! # wgpu-norm
//!
//! LayerNorm and RMSNorm as WGSL compute kernels on any GPU wgpu reaches.
//!
//! - **LayerNorm**: `y = (x - mean) * rstd * weight + bias`, `rstd = 1 / sqrt(var + eps)`,
//!   biased variance, as `torch.nn.functional.layer_norm` and ONNX `LayerNormalization`.
//! - **RMSNorm**: `y = x * rrms * weight`, `rrms = 1 / sqrt(mean(x^2) + eps)`, as
//!   `torch.nn.functional.rms_norm` and ONNX `RMSNormalization`.
//!
//! Both normalise the last `dim` elements of each row of a row-major `[rows, dim]` tensor
//! stored as f32, f16 or bf16 ([`DType`]; arithmetic and statistics are always f32), with
//! the options real models use: a fused residual add, Gemma's `(1 + weight)`, two rounding
//! orders, pRMSNorm, and ε added to σ. The backward passes ([`LayerNormBackward`],
//! [`RmsNormBackward`]) give dx, dweight and dbias, bitwise deterministic.
//!
//! Two layers:
//! - [`Norms`] for runtimes that own the device: built once per device (it is `Send + Sync`),
//!   it records ops ([`Op`]) into the caller's `wgpu::CommandEncoder` with the caller's
//!   buffers ([`TensorRef`]s with byte offsets), validates everything first and returns
//!   [`Error`] instead of letting wgpu raise a validation error. It never submits and never
//!   waits on the GPU. An op recorded every step on the same buffers is prepared once
//!   ([`Norms::prepare`], [`Prepared`]) and then costs what a hand-written wgpu dispatch
//!   costs. [`plan`] shows, without a device, what recording an op does.
//! - [`Gpu`] for data in slices: picks an adapter ([`pick_adapter`]), uploads, runs, reads
//!   back.
//!
//! [`mod@reference`] holds the CPU mirrors of the kernels (f64, two-pass) they are tested against.
//!
//! ## Range
//! Every finite f32 input is normalized to the f32 tolerance: rows whose squares leave f32's
//! range (|x| beyond about 1.8e19, or below about 1e-19 with a tiny eps) are detected from
//! their sums and taken again scaled by a power of two (`shaders/scale.wgsl`).
//!
//! ## Non-finite input
//! Rows are independent. A NaN or ±Inf anywhere in a row makes that row's statistics and its
//! whole output NaN (for LayerNorm), or, for RMSNorm, an ±Inf makes rrms 0, its finite
//! elements 0 and itself NaN (as `x * rsqrt(mean(x^2))` in PyTorch); every other row is
//! unaffected.

#![forbid(unsafe_code)]

/// The wgpu this crate is built with: name its types through here to be sure they match.
pub use wgpu;

pub mod adapter;
mod builder;
#[cfg(feature = "burn")]
pub mod burn;
mod context;
mod copy;
mod dtype;
pub mod error;
pub mod kernel;
mod layer_norm;
mod layer_norm_backward;
mod norms;
mod op;
mod param_grad;
pub mod plan;
mod prepared;
pub mod reference;
mod rms_norm;
mod rms_norm_backward;
pub mod shaders;
mod tensor;
pub mod timing;
#[cfg(not(target_arch = "wasm32"))]
pub mod tune;

pub use adapter::pick_adapter;
pub use context::{Gpu, Gradients, LayerNormOutput, RmsNormOutput, SliceOptions, USEFUL_FEATURES};
pub use copy::CopyOp;
pub use dtype::DType;
pub use error::{Error, Operand, Result};
pub use kernel::Kernel;
pub use layer_norm::{EpsPlacement, LayerNorm};
pub use layer_norm_backward::LayerNormBackward;
pub use norms::{CacheStats, GL_MAX_WORKGROUP_SIZE, Norms, NormsOptions, Tuning};
pub use op::Op;
pub use plan::{Caps, Plan};
pub use prepared::Prepared;
pub use rms_norm::{RmsNorm, RoundingOrder};
pub use rms_norm_backward::RmsNormBackward;
pub use tensor::TensorRef;

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn shared_objects_are_send_and_sync() {
        assert_send_sync::<super::Norms>();
        assert_send_sync::<super::Prepared>();
    }
}
