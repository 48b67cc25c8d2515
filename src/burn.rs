//! This crate's kernels inside [burn](https://burn.dev) (feature `burn`): fused LayerNorm and
//! RMSNorm on burn's own wgpu device and buffers, differentiable under burn's autodiff, and
//! drop-in [`LayerNorm`]/[`RmsNorm`] modules with burn-nn's parameter names.
//!
//! ```ignore
//! let device = wgpu_norm::burn::init()?;            // burn's wgpu device, shared with the kernels
//! let x = Tensor::<3>::random([8, 128, 1024], Distribution::Default, &device);
//! let y = wgpu_norm::burn::rms_norm(x, Some(gamma), 1e-6)?;
//! ```
//!
//! **Sharing the device.** burn keeps its wgpu device inside cubecl and gives no handle back
//! once it runs, so the device must be made through [`init`] (burn creates it, this crate
//! keeps its `WgpuSetup`), or, for a device an application made and gave burn with
//! `init_device`/`WgpuOptions::setup`, announced with [`register`]. Tensors on any other device
//! are an [`Error::Burn`], never a panic.
//!
//! **Buffers and order.** A tensor's buffer, offset and size come from burn's compute client
//! (`get_resource`), which first submits every pending burn command that touches it; this
//! crate then records into its own encoder and submits on burn's queue, so burn's earlier work
//! runs before and its later work after. burn sub-allocates tensors from shared buffers, so an
//! input and an output can be ranges of one buffer: the plan then binds every operand
//! read-write (see [`crate::plan`]). The tensors and their reservations are held until the
//! queue reports the work done. Non-contiguous tensors (transposed, broadcast) are made
//! contiguous first, by burn. With burn's `fusion` feature on, float tensors are lazy and have
//! no buffer: this module does not compile then, rather than misbehave.
//!
//! **Types.** f32 (and burn's `Flex32`), f16 and bf16 storage, the weight in its own type
//! (mixed). burn's wgpu backend itself has no bf16 tensors (`Device::supports_dtype`), so that
//! path only opens where burn adds them; f16 tensors need the adapter's `SHADER_F16` in burn,
//! not here.
//!
//! **Autodiff.** On an autodiff device (`device.autodiff()`), the forward saves the row
//! statistics and the backward runs this crate's backward kernels from them (dx, dγ, dβ; the
//! LayerNorm backward is exact from saved statistics, see the README's accuracy section).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients as Grads;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::{CubeTensor, WgpuDevice, into_contiguous};
use burn::backend::{Cube, CubeDevice, Dispatch, DispatchDevice, backend_extension};
use burn::cubecl::wgpu::{AutoCompiler, WgpuServer};
use burn::module::{Initializer, Module, Param};
use burn::tensor::wgpu::WgpuSetup;
use burn::tensor::{DType as BurnDType, Device, FloatDType, Shape, Tensor};

use crate::{
    DType, Error, LayerNorm as LayerNormOp, LayerNormBackward, Norms, NormsOptions, Result,
    RmsNorm as RmsNormOp, RmsNormBackward, TensorRef,
};

/// What one burn device shares with this crate.
struct Context {
    device: wgpu::Device,
    queue: wgpu::Queue,
    norms: Norms,
}

fn contexts() -> &'static Mutex<HashMap<WgpuDevice, Arc<Context>>> {
    static ALL: OnceLock<Mutex<HashMap<WgpuDevice, Arc<Context>>>> = OnceLock::new();
    ALL.get_or_init(Default::default)
}

fn burn_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Burn(format!("{what}: {e}"))
}

/// burn's default wgpu device, created now so that its wgpu device and queue are shared with
/// this crate's kernels. Use it (or clones of it, or `.autodiff()`) for every tensor these
/// functions see. Fails if burn's default wgpu runtime already started (a tensor was made on
/// it first): then make the device with [`init_with`] and another `DeviceKind`, or hand burn
/// your own device and call [`register`].
pub fn init() -> Result<Device> {
    init_with(Device::wgpu_options())
}

/// [`init`] with burn's options (device kind, graphics API, memory configuration).
pub fn init_with(options: burn::tensor::wgpu::WgpuOptions) -> Result<Device> {
    let (device, setup) = options
        .init_with_setup()
        .map_err(|e| burn_error("starting burn's wgpu runtime", e))?;
    register(&device, &setup)?;
    Ok(device)
}

/// Makes this crate's kernels available on a burn device whose wgpu setup the caller holds
/// (an application's own device given to burn with `WgpuOptions::setup(..).init()`, or the
/// setup returned by `init_with_setup`). Registering the same device again is a no-op.
pub fn register(device: &Device, setup: &WgpuSetup) -> Result<()> {
    register_with(device, setup, NormsOptions::default())
}

/// [`register`] with this crate's options: a launch shape chosen for the adapter
/// ([`crate::tune::tuning_for`] on `setup.device`), say, or a workgroup cap. burn keeps the
/// device's lost callback, whatever `options` say.
pub fn register_with(device: &Device, setup: &WgpuSetup, options: NormsOptions) -> Result<()> {
    let key = wgpu_device_of(device)
        .ok_or_else(|| Error::Burn("register: the device is not a burn wgpu device".into()))?;
    let mut all = contexts().lock().unwrap_or_else(|e| e.into_inner());
    if all.contains_key(&key) {
        return Ok(());
    }
    // burn (cubecl) keeps the device's one lost callback for itself.
    let options = NormsOptions {
        device_lost_callback: false,
        ..options
    };
    let norms = Norms::with_options(&setup.device, options)?;
    all.insert(
        key,
        Arc::new(Context {
            device: setup.device.clone(),
            queue: setup.queue.clone(),
            norms,
        }),
    );
    Ok(())
}

/// The adapter under a registered burn device (for labels and figures).
pub fn adapter_info(device: &Device) -> Result<wgpu::AdapterInfo> {
    Ok(context_of(device)?.device.adapter_info())
}

/// The wgpu device under a burn device (through autodiff), if it is one.
fn wgpu_device_of(device: &Device) -> Option<WgpuDevice> {
    let mut d = device.as_dispatch();
    if let DispatchDevice::Autodiff(ad) = d {
        d = ad;
    }
    #[allow(unreachable_patterns)]
    match d {
        DispatchDevice::Cube(CubeDevice::Wgpu(w)) => Some(w.clone()),
        _ => None,
    }
}

fn context_of(device: &Device) -> Result<Arc<Context>> {
    let key = wgpu_device_of(device).ok_or_else(|| {
        Error::Burn(format!(
            "the tensor is on {device:?}, not on a burn wgpu device (make it with \
             wgpu_norm::burn::init)"
        ))
    })?;
    cube_context(&CubeDevice::Wgpu(key.clone())).ok_or_else(|| {
        Error::Burn(format!(
            "burn wgpu device {key:?} is not registered with wgpu-norm: make it with \
             wgpu_norm::burn::init, or call wgpu_norm::burn::register with its WgpuSetup"
        ))
    })
}

fn cube_context(device: &CubeDevice) -> Option<Arc<Context>> {
    #[allow(unreachable_patterns)]
    let key = match device {
        CubeDevice::Wgpu(w) => w,
        _ => return None,
    };
    let all = contexts().lock().unwrap_or_else(|e| e.into_inner());
    all.get(key).cloned()
}

/// This crate's storage type for a burn float type.
fn storage_of(dtype: BurnDType) -> Option<DType> {
    match dtype {
        BurnDType::F32 | BurnDType::Flex32 => Some(DType::F32),
        BurnDType::F16 => Some(DType::F16),
        BurnDType::BF16 => Some(DType::Bf16),
        _ => None,
    }
}

/// A tensor's range of its wgpu buffer, reserved (with the tensor) until `pins` are dropped.
struct Bound {
    buffer: wgpu::Buffer,
    offset: u64,
    bytes: u64,
}

impl Bound {
    fn of(t: &CubeTensor, pins: &mut Vec<Box<dyn Any + Send>>) -> Result<Bound> {
        // Submits every pending burn command on this buffer first: ours come after.
        let res = t
            .client
            .get_resource::<WgpuServer<AutoCompiler>>(t.handle.clone())
            .map_err(|e| {
                burn_error("getting a tensor's wgpu buffer from burn", format!("{e:?}"))
            })?;
        let r = res.resource();
        let bytes = (t.meta.shape().num_elements() * t.dtype.size()) as u64;
        if bytes > r.size {
            return Err(Error::Burn(format!(
                "burn gave a {} byte range for a tensor of {bytes} bytes",
                r.size
            )));
        }
        let bound = Bound {
            buffer: r.buffer.clone(),
            offset: r.offset,
            bytes,
        };
        pins.push(Box::new(res));
        pins.push(Box::new(t.clone()));
        Ok(bound)
    }

    fn tensor(&self) -> TensorRef<'_> {
        TensorRef::new(&self.buffer, self.offset, self.bytes)
    }
}

/// A new contiguous tensor on `like`'s device.
fn empty(like: &CubeTensor, shape: Shape, dtype: BurnDType) -> CubeTensor {
    let handle = like.client.empty(shape.num_elements() * dtype.size());
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        handle,
        dtype,
    )
}

/// Records with `record` into a new encoder and submits it on burn's queue; `pins` live until
/// the GPU is done with it.
fn submit(
    ctx: &Context,
    label: &str,
    pins: Vec<Box<dyn Any + Send>>,
    record: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<()>,
) -> Result<()> {
    let mut encoder = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
    record(&mut encoder)?;
    ctx.queue.submit([encoder.finish()]);
    ctx.queue.on_submitted_work_done(move || drop(pins));
    Ok(())
}

/// Rows and D of a contiguous tensor normalized over its last dimension.
fn rows_dim(t: &CubeTensor) -> (usize, usize) {
    let shape = t.meta.shape();
    let dim = shape.as_slice().last().copied().unwrap_or(1);
    (shape.num_elements() / dim.max(1), dim)
}

fn act_storage(t: &CubeTensor) -> DType {
    storage_of(t.dtype).expect("checked by the public functions")
}

fn expect_ok<T>(r: Result<T>) -> T {
    // Everything a caller can get wrong is checked before burn's dispatch; what remains is the
    // device failing (lost, out of memory), which burn's own kernels report by panicking too.
    r.unwrap_or_else(|e| panic!("wgpu-norm inside burn: {e}"))
}

/// The LayerNorm forward on burn tensors: y and, when `stats`, the per-row mean and rstd (f32).
fn layer_norm_forward(
    x: CubeTensor,
    gamma: CubeTensor,
    beta: CubeTensor,
    eps: f32,
    stats: bool,
) -> Result<(CubeTensor, Option<(CubeTensor, CubeTensor)>)> {
    let ctx = cube_context(&x.device).ok_or_else(|| Error::Burn("unregistered device".into()))?;
    let (x, gamma, beta) = (
        into_contiguous(x),
        into_contiguous(gamma),
        into_contiguous(beta),
    );
    let (rows, dim) = rows_dim(&x);
    let y = empty(&x, x.meta.shape().clone(), x.dtype);
    let saved = stats.then(|| {
        (
            empty(&x, Shape::new([rows]), BurnDType::F32),
            empty(&x, Shape::new([rows]), BurnDType::F32),
        )
    });
    let mut pins = Vec::new();
    let bx = Bound::of(&x, &mut pins)?;
    let by = Bound::of(&y, &mut pins)?;
    let bg = Bound::of(&gamma, &mut pins)?;
    let bb = Bound::of(&beta, &mut pins)?;
    let bs = match &saved {
        Some((m, r)) => Some((Bound::of(m, &mut pins)?, Bound::of(r, &mut pins)?)),
        None => None,
    };
    let mut op = LayerNormOp::new(rows, dim, bx.tensor(), by.tensor())
        .eps(eps)
        .dtype(act_storage(&x))
        .param_dtype(act_storage(&gamma))
        .weight(bg.tensor())
        .bias(bb.tensor());
    if let Some((m, r)) = &bs {
        op = op.mean(m.tensor()).rstd(r.tensor());
    }
    submit(&ctx, "wgpu-norm layer_norm (burn)", pins, |e| {
        ctx.norms.record(e, &op)
    })?;
    Ok((y, saved))
}

/// The RMSNorm forward on burn tensors: y and, when `stats`, the per-row rrms (f32).
fn rms_norm_forward(
    x: CubeTensor,
    gamma: CubeTensor,
    eps: f32,
    gemma: bool,
    stats: bool,
) -> Result<(CubeTensor, Option<CubeTensor>)> {
    let ctx = cube_context(&x.device).ok_or_else(|| Error::Burn("unregistered device".into()))?;
    let (x, gamma) = (into_contiguous(x), into_contiguous(gamma));
    let (rows, dim) = rows_dim(&x);
    let y = empty(&x, x.meta.shape().clone(), x.dtype);
    let saved = stats.then(|| empty(&x, Shape::new([rows]), BurnDType::F32));
    let mut pins = Vec::new();
    let bx = Bound::of(&x, &mut pins)?;
    let by = Bound::of(&y, &mut pins)?;
    let bg = Bound::of(&gamma, &mut pins)?;
    let br = match &saved {
        Some(r) => Some(Bound::of(r, &mut pins)?),
        None => None,
    };
    let mut op = RmsNormOp::new(rows, dim, bx.tensor(), by.tensor())
        .eps(eps)
        .gemma_offset(gemma)
        .dtype(act_storage(&x))
        .param_dtype(act_storage(&gamma))
        .weight(bg.tensor());
    if let Some(r) = &br {
        op = op.rrms(r.tensor());
    }
    submit(&ctx, "wgpu-norm rms_norm (burn)", pins, |e| {
        ctx.norms.record(e, &op)
    })?;
    Ok((y, saved))
}

/// An f32 gradient of a parameter, in the parameter's own type.
fn as_param_type(grad: CubeTensor, param: BurnDType) -> CubeTensor {
    match param {
        BurnDType::F32 => grad,
        BurnDType::Flex32 => Cube::float_cast(grad, FloatDType::Flex32),
        BurnDType::F16 => Cube::float_cast(grad, FloatDType::F16),
        BurnDType::BF16 => Cube::float_cast(grad, FloatDType::BF16),
        _ => grad,
    }
}

/// The LayerNorm backward from saved statistics: dx, dγ, dβ (γ's type).
fn layer_norm_backward(
    dy: CubeTensor,
    x: CubeTensor,
    gamma: CubeTensor,
    (mean, rstd): (CubeTensor, CubeTensor),
    eps: f32,
    want: [bool; 2],
) -> Result<(CubeTensor, Option<CubeTensor>, Option<CubeTensor>)> {
    let ctx = cube_context(&x.device).ok_or_else(|| Error::Burn("unregistered device".into()))?;
    let dy = like_input(dy, &x);
    let (rows, dim) = rows_dim(&x);
    let dx = empty(&x, x.meta.shape().clone(), x.dtype);
    let grad = |wanted: bool| wanted.then(|| empty(&x, Shape::new([dim]), BurnDType::F32));
    let (dgamma, dbeta) = (grad(want[0]), grad(want[1]));
    let mut pins = Vec::new();
    let (bx, bdy, bdx) = (
        Bound::of(&x, &mut pins)?,
        Bound::of(&dy, &mut pins)?,
        Bound::of(&dx, &mut pins)?,
    );
    let (bg, bm, br) = (
        Bound::of(&gamma, &mut pins)?,
        Bound::of(&mean, &mut pins)?,
        Bound::of(&rstd, &mut pins)?,
    );
    let bdg = dgamma
        .as_ref()
        .map(|t| Bound::of(t, &mut pins))
        .transpose()?;
    let bdb = dbeta
        .as_ref()
        .map(|t| Bound::of(t, &mut pins))
        .transpose()?;
    let mut op = LayerNormBackward::new(rows, dim, bx.tensor(), bdy.tensor(), bdx.tensor())
        .eps(eps)
        .dtype(act_storage(&x))
        .param_dtype(act_storage(&gamma))
        .weight(bg.tensor())
        .saved(bm.tensor(), br.tensor());
    if let Some(b) = &bdg {
        op = op.grad_weight(b.tensor());
    }
    if let Some(b) = &bdb {
        op = op.grad_bias(b.tensor());
    }
    submit(&ctx, "wgpu-norm layer_norm backward (burn)", pins, |e| {
        ctx.norms.record(e, &op)
    })?;
    let param = gamma.dtype;
    Ok((
        dx,
        dgamma.map(|g| as_param_type(g, param)),
        dbeta.map(|g| as_param_type(g, param)),
    ))
}

/// The RMSNorm backward from the saved rrms: dx, dγ (γ's type).
fn rms_norm_backward(
    dy: CubeTensor,
    x: CubeTensor,
    gamma: CubeTensor,
    rrms: CubeTensor,
    eps: f32,
    gemma: bool,
    want_gamma: bool,
) -> Result<(CubeTensor, Option<CubeTensor>)> {
    let ctx = cube_context(&x.device).ok_or_else(|| Error::Burn("unregistered device".into()))?;
    let dy = like_input(dy, &x);
    let (rows, dim) = rows_dim(&x);
    let dx = empty(&x, x.meta.shape().clone(), x.dtype);
    let dgamma = want_gamma.then(|| empty(&x, Shape::new([dim]), BurnDType::F32));
    let mut pins = Vec::new();
    let (bx, bdy, bdx) = (
        Bound::of(&x, &mut pins)?,
        Bound::of(&dy, &mut pins)?,
        Bound::of(&dx, &mut pins)?,
    );
    let (bg, br) = (Bound::of(&gamma, &mut pins)?, Bound::of(&rrms, &mut pins)?);
    let bdg = dgamma
        .as_ref()
        .map(|t| Bound::of(t, &mut pins))
        .transpose()?;
    let mut op = RmsNormBackward::new(rows, dim, bx.tensor(), bdy.tensor(), bdx.tensor())
        .eps(eps)
        .gemma_offset(gemma)
        .dtype(act_storage(&x))
        .param_dtype(act_storage(&gamma))
        .weight(bg.tensor())
        .saved(br.tensor());
    if let Some(b) = &bdg {
        op = op.grad_weight(b.tensor());
    }
    submit(&ctx, "wgpu-norm rms_norm backward (burn)", pins, |e| {
        ctx.norms.record(e, &op)
    })?;
    let param = gamma.dtype;
    Ok((dx, dgamma.map(|g| as_param_type(g, param))))
}

/// The gradient burn hands the backward (maybe broadcast, maybe of another float type) as a
/// contiguous tensor of x's type, which the backward kernels read.
fn like_input(dy: CubeTensor, x: &CubeTensor) -> CubeTensor {
    let dy = into_contiguous(dy);
    if dy.dtype == x.dtype {
        dy
    } else {
        Cube::float_cast(dy, float_dtype(x.dtype))
    }
}

fn float_dtype(d: BurnDType) -> FloatDType {
    match d {
        BurnDType::F16 => FloatDType::F16,
        BurnDType::BF16 => FloatDType::BF16,
        BurnDType::Flex32 => FloatDType::Flex32,
        _ => FloatDType::F32,
    }
}

/// The fused norms as a burn backend extension: implemented for burn's cubecl backend (wgpu)
/// and its autodiff. Call them through [`layer_norm`] and [`rms_norm`], which check their
/// arguments first.
#[backend_extension(Autodiff, Cube)]
pub trait NormBackend: burn::backend::Backend {
    /// LayerNorm over the last dimension; `gamma` and `beta` of length D.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// RMSNorm over the last dimension; `gamma` of length D, used as `1 + gamma` with
    /// `gemma_offset`.
    fn fused_rms_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        epsilon: f64,
        gemma_offset: bool,
    ) -> FloatTensor<Self>;
}

impl NormBackend for Cube {
    fn fused_layer_norm(
        x: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        epsilon: f64,
    ) -> CubeTensor {
        expect_ok(layer_norm_forward(x, gamma, beta, epsilon as f32, false)).0
    }

    fn fused_rms_norm(x: CubeTensor, gamma: CubeTensor, epsilon: f64, gemma: bool) -> CubeTensor {
        expect_ok(rms_norm_forward(x, gamma, epsilon as f32, gemma, false)).0
    }
}

#[derive(Debug)]
struct LayerNormGrad;

impl Backward<Cube, 3> for LayerNormGrad {
    /// x, γ, (mean, rstd), ε.
    type State = (CubeTensor, CubeTensor, (CubeTensor, CubeTensor), f32);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Grads, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = grads.consume::<Cube>(&ops.node);
        let (x, gamma, stats, eps) = ops.state;
        let want = [node_gamma.is_some(), node_beta.is_some()];
        let (dx, dgamma, dbeta) = expect_ok(layer_norm_backward(dy, x, gamma, stats, eps, want));
        if let Some(node) = node_x {
            grads.register::<Cube>(node.id, dx);
        }
        if let (Some(node), Some(g)) = (node_gamma, dgamma) {
            grads.register::<Cube>(node.id, g);
        }
        if let (Some(node), Some(g)) = (node_beta, dbeta) {
            grads.register::<Cube>(node.id, g);
        }
    }
}

#[derive(Debug)]
struct RmsNormGrad;

impl Backward<Cube, 2> for RmsNormGrad {
    /// x, γ, rrms, ε, Gemma's offset.
    type State = (CubeTensor, CubeTensor, CubeTensor, f32, bool);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Grads, _: &mut Checkpointer) {
        let [node_x, node_gamma] = ops.parents;
        let dy = grads.consume::<Cube>(&ops.node);
        let (x, gamma, rrms, eps, gemma) = ops.state;
        let want = node_gamma.is_some();
        let (dx, dgamma) = expect_ok(rms_norm_backward(dy, x, gamma, rrms, eps, gemma, want));
        if let Some(node) = node_x {
            grads.register::<Cube>(node.id, dx);
        }
        if let (Some(node), Some(g)) = (node_gamma, dgamma) {
            grads.register::<Cube>(node.id, g);
        }
    }
}

impl<C: CheckpointStrategy> NormBackend for Autodiff<Cube, C> {
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let eps = epsilon as f32;
        match LayerNormGrad
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, gamma) = (into_contiguous(x.into_primitive()), gamma.into_primitive());
                let gamma = into_contiguous(gamma);
                let (y, stats) = expect_ok(layer_norm_forward(
                    x.clone(),
                    gamma.clone(),
                    beta.into_primitive(),
                    eps,
                    true,
                ));
                let stats = stats.expect("asked for");
                prep.finish((x, gamma, stats, eps), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Cube as NormBackend>::fused_layer_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                epsilon,
            )),
        }
    }

    fn fused_rms_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        epsilon: f64,
        gemma: bool,
    ) -> FloatTensor<Self> {
        let eps = epsilon as f32;
        match RmsNormGrad
            .prepare::<C>([x.node(), gamma.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = into_contiguous(x.into_primitive());
                let gamma = into_contiguous(gamma.into_primitive());
                let (y, rrms) =
                    expect_ok(rms_norm_forward(x.clone(), gamma.clone(), eps, gemma, true));
                prep.finish((x, gamma, rrms.expect("asked for"), eps, gemma), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Cube as NormBackend>::fused_rms_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                epsilon,
                gemma,
            )),
        }
    }
}

/// Checks what the kernels need of `x` and a parameter, returning D.
fn check<const D: usize>(x: &Tensor<D>, params: &[(&str, &Tensor<1>)], eps: f64) -> Result<usize> {
    let device = x.device();
    let ctx = context_of(&device)?;
    if D == 0 {
        return Err(Error::Burn(
            "a tensor of rank 0 has no dimension to normalize".into(),
        ));
    }
    if storage_of(x.dtype()).is_none() {
        return Err(Error::Burn(format!(
            "x is {:?}; the kernels take f32, f16 and bf16",
            x.dtype()
        )));
    }
    let dim = x.dims()[D - 1];
    if dim == 0 {
        return Err(Error::ZeroDim);
    }
    if !(eps.is_finite() && eps >= 0.0 && (eps as f32).is_finite()) {
        return Err(Error::BadEpsilon(eps as f32));
    }
    // What the plan would refuse at record time, inside burn's dispatch: a row that no binding
    // holds (the backward's f32 dγ is the widest operand), or a D beyond u32.
    let caps = ctx.norms.caps();
    let row_bytes = (dim as u64).saturating_mul(4);
    if u32::try_from(dim).is_err() || row_bytes + caps.align > caps.max_binding {
        return Err(Error::RowTooLarge {
            dim,
            row_bytes,
            max_binding: caps.max_binding,
        });
    }
    for (name, p) in params {
        if p.dims() != [dim] {
            return Err(Error::Burn(format!(
                "{name} has shape {:?}; x's last dimension is {dim}",
                p.dims()
            )));
        }
        if p.device() != device {
            return Err(Error::Burn(format!(
                "{name} is on {:?}, x on {device:?}",
                p.device()
            )));
        }
        if storage_of(p.dtype()).is_none() {
            return Err(Error::Burn(format!(
                "{name} is {:?}; the kernels take f32, f16 and bf16",
                p.dtype()
            )));
        }
    }
    Ok(dim)
}

/// LayerNorm of `x` over its last dimension, `y = (x − mean)·rstd·γ + β` with
/// `rstd = 1/√(var + ε)` as `burn::nn::LayerNorm` (and PyTorch) computes it, in one fused
/// kernel on burn's wgpu device. Missing γ is 1 and β 0. Differentiable on an autodiff device.
/// Bad input is an [`Error`]: a device not made with [`init`]/[`register`], a γ or β whose
/// length is not D, an unsupported type, D = 0, a negative or NaN ε.
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Option<Tensor<1>>,
    beta: Option<Tensor<1>>,
    epsilon: f64,
) -> Result<Tensor<D>> {
    let given: Vec<(&str, &Tensor<1>)> = [("gamma", gamma.as_ref()), ("beta", beta.as_ref())]
        .into_iter()
        .filter_map(|(n, t)| t.map(|t| (n, t)))
        .collect();
    let dim = check(&x, &given, epsilon)?;
    if x.shape().num_elements() == 0 {
        return Ok(x);
    }
    let device = x.device();
    let gamma = gamma.unwrap_or_else(|| Tensor::<1>::ones([dim], &device).cast(x.dtype()));
    // The kernel takes γ and β in one type, γ's: β is cast (its gradient flows back through
    // the cast).
    let beta = match beta {
        Some(b) if b.dtype() != gamma.dtype() => b.cast(gamma.dtype()),
        Some(b) => b,
        None => Tensor::<1>::zeros([dim], &device).cast(gamma.dtype()),
    };
    Ok(Tensor::from_dispatch(
        <Dispatch as NormBackend>::fused_layer_norm(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            epsilon,
        ),
    ))
}

/// RMSNorm of `x` over its last dimension, `y = x·γ/√(mean(x²) + ε)` as `burn::nn::RmsNorm`
/// computes it, in one fused kernel. Missing γ is 1. Errors as [`layer_norm`].
pub fn rms_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Option<Tensor<1>>,
    epsilon: f64,
) -> Result<Tensor<D>> {
    rms_norm_with(x, gamma, epsilon, false)
}

/// Gemma's RMSNorm: `y = x·(1 + γ)/√(mean(x²) + ε)`, the offset fused (γ stored as trained by
/// Gemma, around 0). Missing γ is 0.
pub fn gemma_rms_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Option<Tensor<1>>,
    epsilon: f64,
) -> Result<Tensor<D>> {
    rms_norm_with(x, gamma, epsilon, true)
}

fn rms_norm_with<const D: usize>(
    x: Tensor<D>,
    gamma: Option<Tensor<1>>,
    epsilon: f64,
    gemma: bool,
) -> Result<Tensor<D>> {
    let given: Vec<(&str, &Tensor<1>)> = gamma.iter().map(|g| ("gamma", g)).collect();
    let dim = check(&x, &given, epsilon)?;
    if x.shape().num_elements() == 0 {
        return Ok(x);
    }
    let device = x.device();
    let gamma = gamma.unwrap_or_else(|| {
        let neutral = if gemma {
            Tensor::<1>::zeros([dim], &device)
        } else {
            Tensor::ones([dim], &device)
        };
        neutral.cast(x.dtype())
    });
    Ok(Tensor::from_dispatch(
        <Dispatch as NormBackend>::fused_rms_norm(
            x.into_dispatch(),
            gamma.into_dispatch(),
            epsilon,
            gemma,
        ),
    ))
}

/// Drop-in for `burn::nn::LayerNorm`: the same parameter names (`gamma`, `beta`) and record,
/// so a model swaps it in and loads the same weights; the forward is this crate's kernel.
/// Made from burn-nn's own config with [`FusedNormConfig::init_fused`].
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// γ, `[d_model]`, initialized to ones.
    pub gamma: Param<Tensor<1>>,
    /// β, `[d_model]`, initialized to zeros; `None` when the config says `bias = false`.
    pub beta: Option<Param<Tensor<1>>>,
    epsilon: f64,
}

impl LayerNorm {
    /// Normalizes over the last dimension. Panics where `burn::nn::LayerNorm` does (x's last
    /// dimension is not `d_model`), with this crate's error; [`LayerNorm::try_forward`]
    /// returns it instead.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.try_forward(x)
            .unwrap_or_else(|e| panic!("wgpu_norm::burn::LayerNorm: {e}"))
    }

    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        layer_norm(
            x,
            Some(self.gamma.val()),
            self.beta.as_ref().map(|b| b.val()),
            self.epsilon,
        )
    }
}

/// Drop-in for `burn::nn::RmsNorm`: the same parameter name (`gamma`) and record.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// γ, `[d_model]`, initialized to ones.
    pub gamma: Param<Tensor<1>>,
    pub epsilon: f64,
}

impl RmsNorm {
    /// Normalizes over the last dimension (panics as `burn::nn::RmsNorm`; see
    /// [`RmsNorm::try_forward`]).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.try_forward(x)
            .unwrap_or_else(|e| panic!("wgpu_norm::burn::RmsNorm: {e}"))
    }

    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>> {
        rms_norm(x, Some(self.gamma.val()), self.epsilon)
    }
}

/// burn-nn's norm configs make this crate's modules too.
pub trait FusedNormConfig {
    type Module;
    /// The module, with its parameters initialized as burn-nn initializes them.
    fn init_fused(&self, device: &Device) -> Self::Module;
}

impl FusedNormConfig for burn::nn::LayerNormConfig {
    type Module = LayerNorm;
    fn init_fused(&self, device: &Device) -> LayerNorm {
        LayerNorm {
            gamma: Initializer::Ones.init([self.d_model], device),
            beta: self
                .bias
                .then(|| Initializer::Zeros.init([self.d_model], device)),
            epsilon: self.epsilon,
        }
    }
}

impl FusedNormConfig for burn::nn::RmsNormConfig {
    type Module = RmsNorm;
    fn init_fused(&self, device: &Device) -> RmsNorm {
        RmsNorm {
            gamma: Initializer::Ones.init([self.d_model], device),
            epsilon: self.epsilon,
        }
    }
}
