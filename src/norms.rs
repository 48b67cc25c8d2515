//! [`Norms`]: the kernels of one device, and the recording of plans.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::copy::CopyOp;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernel::Kernel;
use crate::layer_norm::LayerNorm;
use crate::layer_norm_backward::LayerNormBackward;
use crate::op::{Op, Operands};
use crate::plan::{Bind, Caps, Plan, Step, plan_launch};
use crate::prepared::{Prepared, PreparedStep};
use crate::rms_norm::RmsNorm;
use crate::rms_norm_backward::RmsNormBackward;
use crate::shaders::{Params, Variant};
use crate::tensor::TensorRef;

/// How [`Norms`] uses the device.
#[derive(Clone, Copy, Debug)]
pub struct NormsOptions {
    /// Reduce with subgroup operations when the device has `Features::SUBGROUP` (default).
    /// When false, or without the feature, a workgroup-memory tree reduction is used.
    pub subgroups: bool,
    /// Install a device-lost callback, so that every call after the device is lost returns
    /// [`Error::DeviceLost`] (default). wgpu keeps one such callback per device: a runtime
    /// that sets its own (before or after) should set this to false and call the closure
    /// from [`Norms::device_lost_handler`] in its own.
    pub device_lost_callback: bool,
    /// Largest workgroup the kernels use (rounded down to a power of two, at least 64).
    /// `None` (default): the device's limit, except on OpenGL, where it is
    /// [`GL_MAX_WORKGROUP_SIZE`].
    pub max_workgroup_size: Option<u32>,
    /// How rows are spread over invocations and workgroups (the per-adapter knobs).
    pub tuning: Tuning,
}

/// The knobs of the row kernels' launch shape that suit one adapter and not another. The
/// defaults are what measured best on an H200; a CPU adapter, whose "invocations" are SIMD
/// lanes of a few cores and whose barriers are function calls, wants fewer, longer-lived
/// invocations. Every setting gives the same results within the documented tolerances (the
/// order of additions, hence the bits, follows the workgroup size).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuning {
    /// Row elements (`V`s) each forward invocation aims to handle where rows are stored in f32
    /// (the backward half as many): the workgroup grows with D while each invocation keeps at
    /// least this many (fewer than twice as many; [`crate::shaders::workgroup_size`]). The
    /// forward's strided rows take `v_per_invocation_strided` instead. A power of two from 1
    /// to 64.
    pub v_per_invocation: u32,
    /// The same where x and y are stored in 16 bits (f16, bf16). A 16-bit `V` moves half the
    /// bytes of an f32 one; since 2026-11-28 the cache holds it in half the registers too
    /// (its storage words, [`crate::shaders::Variant::packed_cache`]; strided and paired `V`s
    /// still take f32's), which is why it is a knob of its own: the default takes as many as
    /// f32 rows (an H200 read bf16 rows 1.4–1.6× faster than with twice as many, when a
    /// cached 16-bit `V` took f32's registers); a CPU adapter wanted twice as many
    /// (lavapipe, 1.3–1.5×), which the autotune's last stage measures. The forward's strided
    /// rows scale it as `v_per_invocation_strided` scales f32 rows'. A power of two from 1
    /// to 64.
    pub v_per_invocation_16bit: u32,
    /// The same for the forward's f32 rows that cannot be read four consecutive elements at
    /// a time (D % 4 != 0, or an operand off a 16-byte boundary): their `V`s are four
    /// elements strided over the row's invocations ([`crate::shaders::Variant::strided`]),
    /// each element its own load and store. A GPU coalesces those across invocations and
    /// wants the same shape as for other rows; a CPU adapter pays them per SIMD lane and
    /// wants fewer, longer-lived invocations than for other rows (lavapipe's forward at
    /// D = 4097: 1.4–1.5× faster with 32 than with 8). Such rows stored in 16 bits take
    /// `v_per_invocation_16bit` scaled by the same factor ([`Tuning::v_per_invocation_for`]).
    /// The backward keeps `v_per_invocation` (halved) for strided rows too: on lavapipe it
    /// was slower with more (D = 127: 30–45 %). A power of two from 1 to 64.
    pub v_per_invocation_strided: u32,
    /// Bytes of rows (at their storage size) each forward workgroup handles at least, one row
    /// (or one set side by side) after another: short rows share a workgroup so that its launch
    /// is paid for by enough traffic. At least 4; at most
    /// [`crate::shaders::MAX_ROWS_PER_GROUP`] rows whatever this says.
    pub bytes_per_group: u32,
    /// Workgroups a forward dispatch aims for before it splits its rows: with fewer rows than
    /// this (a decode step), each long row is cut into parts of at least
    /// [`crate::shaders::MIN_PART`] `V`s, one workgroup each, in two dispatches (the parts'
    /// sums, then the normalization; deterministic). 0 never splits. Not where the op saves
    /// its per-row statistics or writes over an input.
    pub split_groups: u32,
    /// How short a forward row must be to share a workgroup with others, side by side
    /// ([`crate::shaders::Variant::row_wg`]): fewer `V`s than this many per invocation of the
    /// smallest workgroup ([`crate::shaders::MIN_WORKGROUP_SIZE`]). Side by side, a row takes
    /// a power of two of invocations with about `v_per_invocation` `V`s each (at most 16), so
    /// a row of more than 32 · min(`v_per_invocation`, 16) `V`s never does (256 at the
    /// default 8, whatever this says); it is reduced with a tree in workgroup memory;
    /// alone, it takes the whole workgroup, fewer `V`s each, and subgroup operations where the
    /// device has them. The default (2: f32 rows up to D = 508) is lavapipe's: there the
    /// forward at D = 256 ran 1.35–2.05× faster side by side, at 512 0.96–1.33×, at 1024
    /// 0.80–0.95× (2026-11-29). A power of two from 1 to 64.
    pub side_by_side_below: u32,
    /// The same for the backward's rows, in the same `V`s (its kernels take half the
    /// forward's per invocation). The default (1: f32 rows up to D = 252) is lavapipe's:
    /// there the LayerNorm backward at D = 256 ran 0.75–0.93× side by side; the H200's f32
    /// backward read 55–59 % of a copy at D = 256 alone, one `V` an invocation, against
    /// 83–90 % at D = 128 side by side (2026-11-27), which the autotune measures on each
    /// device. A power of two from 1 to 64.
    pub side_by_side_below_backward: u32,
}

impl Tuning {
    /// This tuning with `v` `V`s per forward invocation for rows of every storage type,
    /// strided or not: the same number of cached `V`s (four registers each in f32 and for
    /// strided rows, two for other 16-bit rows).
    pub fn with_v_per_invocation(self, v: u32) -> Self {
        Tuning {
            v_per_invocation: v,
            v_per_invocation_16bit: v,
            v_per_invocation_strided: v,
            ..self
        }
    }

    /// The `V`s per forward invocation aimed for with x stored as `act`, in rows of strided
    /// `V`s of a forward norm (`strided_forward`) or other rows.
    pub fn v_per_invocation_for(&self, act: DType, strided_forward: bool) -> u32 {
        let v = if act.size() == 2 {
            self.v_per_invocation_16bit
        } else {
            self.v_per_invocation
        };
        if !strided_forward {
            return v;
        }
        // Scaled as f32 rows' are (all powers of two, so exact): the f32 figure itself.
        (u64::from(v) * u64::from(self.v_per_invocation_strided)
            / u64::from(self.v_per_invocation.max(1)))
        .clamp(1, 64) as u32
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            v_per_invocation: crate::shaders::V_PER_INVOCATION,
            v_per_invocation_16bit: crate::shaders::V_PER_INVOCATION_16BIT,
            v_per_invocation_strided: crate::shaders::V_PER_INVOCATION,
            bytes_per_group: crate::shaders::BYTES_PER_GROUP,
            split_groups: crate::shaders::SPLIT_GROUPS,
            side_by_side_below: crate::shaders::SIDE_BY_SIDE_BELOW,
            side_by_side_below_backward: crate::shaders::SIDE_BY_SIDE_BELOW_BACKWARD,
        }
    }
}

/// Largest workgroup used on wgpu's OpenGL backend unless [`NormsOptions::max_workgroup_size`]
/// says otherwise. Mesa's llvmpipe compiles the GLSL of a 1024-invocation variant in 20–110 s
/// (2 s at 256), measured; 256 is also what WebGPU guarantees, and what the kernels are
/// tested with on every backend.
pub const GL_MAX_WORKGROUP_SIZE: u32 = 256;

impl Default for NormsOptions {
    fn default() -> Self {
        NormsOptions {
            subgroups: true,
            device_lost_callback: true,
            max_workgroup_size: None,
            tuning: Tuning::default(),
        }
    }
}

/// Distinct uniform parameter blocks kept before the cache starts over. A model records the
/// same few shapes over and over; this bounds what a stream of distinct ones can hold.
const PARAMS_CACHE: usize = 4096;

/// How much of the device the caches hold (see [`Norms::cache_stats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheStats {
    /// Compiled pipelines, one per [`Variant`] used.
    pub pipelines: usize,
    /// Uniform buffers of distinct dispatch parameters (at most 4096).
    pub params_buffers: usize,
    /// Bytes of the shared partial-sum buffer of the backward passes.
    pub scratch_bytes: u64,
}

/// A cached pipeline: compiled once, by whichever thread asks first, without holding the
/// cache's lock while it compiles.
type PipelineCell = Arc<OnceLock<Result<wgpu::ComputePipeline>>>;

/// The kernels of one `wgpu::Device`.
///
/// Built once per device (it is `Send + Sync`): bind-group layouts now, pipelines compiled
/// on first use (or ahead, [`Norms::warm`]) and cached under their [`Variant`]. Ops
/// ([`LayerNorm`], [`RmsNorm`], their backward passes, [`CopyOp`]) are recorded into the
/// caller's encoder with [`Norms::record`], which validates everything first and returns
/// [`Error`] instead of letting wgpu raise a validation error; or prepared once with
/// [`Norms::prepare`] and recorded at wgpu's own cost every step after. Nothing here submits,
/// and recording never waits on the GPU.
pub struct Norms {
    device: wgpu::Device,
    caps: Caps,
    layouts: HashMap<(Kernel, bool), (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    pipelines: Mutex<HashMap<Variant, PipelineCell>>,
    /// Uniform buffers keyed by their contents, so that recording the same op again creates
    /// none.
    params: Mutex<HashMap<[u32; size_of::<Params>() / 4], wgpu::Buffer>>,
    /// Partial sums (the backward's column sums, the parts of split rows), shared by every op
    /// recorded here: each op writes and reads them within its own consecutive dispatches,
    /// and wgpu orders those across encoders and submissions, so one buffer (grown to the
    /// largest need) serves all.
    scratch: Mutex<Option<wgpu::Buffer>>,
    /// Bound in place of absent optional operands, each binding at its own range, so that no
    /// two writable bindings of a dispatch alias. Two buffers, so that a read-only and a
    /// writable binding never name the same one.
    dummy_in: wgpu::Buffer,
    dummy_out: wgpu::Buffer,
    /// One storage binding: binds each operand alone, to find which one wgpu rejected.
    probe: wgpu::BindGroupLayout,
    /// Why the device was lost, once wgpu has said so.
    lost: Arc<Mutex<Option<String>>>,
}

/// A poisoned lock only means another thread panicked while holding it; every map here is
/// still a valid cache.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Norms {
    /// Builds the layouts for `device`, using subgroups where it has them.
    pub fn new(device: &wgpu::Device) -> Result<Self> {
        Self::with_options(device, NormsOptions::default())
    }

    pub fn with_options(device: &wgpu::Device, mut options: NormsOptions) -> Result<Self> {
        if options.max_workgroup_size.is_none()
            && device.adapter_info().backend == wgpu::Backend::Gl
        {
            options.max_workgroup_size = Some(GL_MAX_WORKGROUP_SIZE);
        }
        let caps = Caps::new(&device.limits(), device.features(), options)?;
        let mut layouts = HashMap::new();
        for kernel in Kernel::ALL {
            for shared in [false, true] {
                let mut entries = vec![wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: wgpu::BufferSize::new(size_of::<Params>() as u64),
                    },
                    count: None,
                }];
                entries.extend((1..).zip(kernel.def().slots).map(|(binding, s)| {
                    wgpu::BindGroupLayoutEntry {
                        binding,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage {
                                read_only: !s.access.writes() && !shared,
                            },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    }
                }));
                let label = format!(
                    "wgpu-norm {} layout{}",
                    kernel.name(),
                    if shared { " (shared buffers)" } else { "" }
                );
                let (layout, pipeline_layout) = capture(device, || {
                    let layout =
                        device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                            label: Some(&label),
                            entries: &entries,
                        });
                    let pipeline_layout =
                        device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                            label: Some(&label),
                            bind_group_layouts: &[Some(&layout)],
                            immediate_size: 0,
                        });
                    (layout, pipeline_layout)
                })?;
                layouts.insert((kernel, shared), (layout, pipeline_layout));
            }
        }
        // One range per binding number, each at an allowed binding offset.
        let size = caps.align * crate::shaders::Params::OFFSETS as u64;
        let dummy = |label| {
            capture(device, || {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            })
        };
        let probe = capture(device, || {
            device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("wgpu-norm operand probe"),
                entries: &[wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: true },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                }],
            })
        })?;
        let norms = Norms {
            device: device.clone(),
            caps,
            layouts,
            pipelines: Mutex::new(HashMap::new()),
            params: Mutex::new(HashMap::new()),
            scratch: Mutex::new(None),
            dummy_in: dummy("wgpu-norm absent input")?,
            dummy_out: dummy("wgpu-norm absent output")?,
            probe,
            lost: Arc::new(Mutex::new(None)),
        };
        if options.device_lost_callback {
            let handler = norms.device_lost_handler();
            device.set_device_lost_callback(move |reason, message| handler(reason, &message));
        }
        Ok(norms)
    }

    /// A closure that marks these kernels' device as lost, for a runtime's own device-lost
    /// callback (see [`NormsOptions::device_lost_callback`]). After it, every call returns
    /// [`Error::DeviceLost`].
    pub fn device_lost_handler(
        &self,
    ) -> impl Fn(wgpu::DeviceLostReason, &str) + Send + Sync + 'static {
        let lost = self.lost.clone();
        move |reason, message| {
            *lock(&lost) = Some(format!("{reason:?}: {message}"));
        }
    }

    /// Why the device was lost, if wgpu has said so (it says so at the next poll or
    /// submission after the loss, or after `Device::destroy`).
    pub fn device_lost(&self) -> Option<String> {
        lock(&self.lost).clone()
    }

    fn check_device(&self) -> Result<()> {
        match self.device_lost() {
            Some(why) => Err(Error::DeviceLost(why)),
            None => Ok(()),
        }
    }

    /// The device these kernels were built for.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// What the plans of this device are made from.
    pub fn caps(&self) -> &Caps {
        &self.caps
    }

    /// Whether reductions use subgroup operations.
    pub fn uses_subgroups(&self) -> bool {
        self.caps.subgroups
    }

    /// What the caches hold now.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            pipelines: lock(&self.pipelines).len(),
            params_buffers: lock(&self.params).len(),
            scratch_bytes: lock(&self.scratch).as_ref().map_or(0, wgpu::Buffer::size),
        }
    }

    /// The plan of `op` on this device (see [`crate::plan`]): validation and every choice,
    /// nothing recorded.
    pub fn plan(&self, op: &impl Op) -> Result<Plan> {
        crate::plan::plan(&self.caps, op)
    }

    /// Validates `op` and records it into `encoder`, in a compute pass of its own. Nothing is
    /// submitted. An op with nothing to do (zero rows) records nothing.
    ///
    /// Each call creates the bind groups of its dispatches (they name the caller's buffers);
    /// pipelines, uniform parameters and the backward's partial-sum buffer come from caches.
    /// An op recorded every step on the same buffers costs less as a [`Prepared`] one.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, op: &impl Op) -> Result<()> {
        self.check_device()?;
        let launch = op.launch()?;
        let plan = plan_launch(&self.caps, &launch)?;
        if plan.steps.is_empty() {
            return Ok(());
        }
        let steps = self.build(&plan, &launch.operands, false)?;
        let mut pass = begin_pass(encoder, plan.name);
        for s in &steps {
            s.record(&mut pass);
        }
        Ok(())
    }

    /// [`Norms::record`] into the caller's compute pass.
    pub fn record_in(&self, pass: &mut wgpu::ComputePass<'_>, op: &impl Op) -> Result<()> {
        self.check_device()?;
        let launch = op.launch()?;
        let plan = plan_launch(&self.caps, &launch)?;
        for s in &self.build(&plan, &launch.operands, false)? {
            s.record(pass);
        }
        Ok(())
    }

    /// Validates `op`, compiles its pipelines and creates its bind groups and parameters once:
    /// the returned [`Prepared`] records the same op on the same buffers at wgpu's own cost
    /// (a pipeline, a bind group and a dispatch per step). It keeps the buffers alive.
    pub fn prepare(&self, op: &impl Op) -> Result<Prepared> {
        self.check_device()?;
        let launch = op.launch()?;
        let plan = plan_launch(&self.caps, &launch)?;
        let steps = self.build(&plan, &launch.operands, true)?;
        Ok(Prepared::new(plan.name, steps))
    }

    /// Compiles the pipelines `op` needs, so that recording it later compiles nothing. On the
    /// web, where a compilation error can only be awaited, there is [`Norms::warm_async`] only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn warm(&self, op: &impl Op) -> Result<()> {
        self.check_device()?;
        for step in self.plan(op)?.steps {
            self.pipeline(step.variant, true)?;
        }
        Ok(())
    }

    /// [`Norms::warm`], awaiting the device's verdict on each pipeline instead of looking at
    /// it once.
    pub async fn warm_async(&self, op: &impl Op) -> Result<()> {
        self.check_device()?;
        for step in self.plan(op)?.steps {
            let cell = self.cell(step.variant);
            if cell.get().is_none() {
                let compiled = self.compile_async(step.variant).await;
                // Another thread may have compiled it meanwhile; either result is the same.
                let _ = cell.set(compiled);
            }
            cell.get().expect("set above").clone()?;
        }
        Ok(())
    }

    /// The pipeline of every step, a parameters buffer and a bind group for each.
    fn build(&self, plan: &Plan, operands: &Operands, prepared: bool) -> Result<Vec<PreparedStep>> {
        let scratch = match plan.scratch {
            0 => None,
            bytes => Some(self.scratch(bytes)?),
        };
        let mut steps = Vec::with_capacity(plan.steps.len());
        for step in &plan.steps {
            let pipeline = self.pipeline(step.variant, prepared)?;
            let params = self.params_buffer(&step.params)?;
            steps.push((pipeline, params, step));
        }
        capture(&self.device, || {
            steps
                .into_iter()
                .map(|(pipeline, params, step)| PreparedStep {
                    pipeline,
                    bind_group: self.bind_group(step, operands, scratch.as_ref(), &params),
                    grid: step.grid,
                })
                .collect()
        })
        .map_err(|e| self.diagnose(plan, operands).unwrap_or(e))
    }

    /// Which operand's buffer wgpu rejected when a bind group was not made: each is bound
    /// alone, and the first one rejected is named (destroyed, or from another device).
    fn diagnose(&self, plan: &Plan, operands: &Operands) -> Option<Error> {
        let ranges = plan
            .steps
            .iter()
            .flat_map(|s| &s.binds)
            .filter_map(|b| match *b {
                Bind::Operand {
                    operand,
                    offset,
                    size,
                } => Some((operand, offset, size)),
                _ => None,
            });
        for (operand, offset, size) in ranges {
            let buffer = operands.get(operand)?.buffer;
            let probe = capture(&self.device, || {
                self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("wgpu-norm operand probe"),
                    layout: &self.probe,
                    entries: &[wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer,
                            offset,
                            size: wgpu::BufferSize::new(size),
                        }),
                    }],
                })
            });
            if let Err(Error::Validation(why)) = probe {
                return Some(if why.contains("destroyed") {
                    Error::DestroyedBuffer { operand }
                } else if why.contains("doesn't match") {
                    Error::OtherDevice { operand }
                } else {
                    Error::Validation(format!("{operand}: {why}"))
                });
            }
        }
        None
    }

    fn bind_group(
        &self,
        step: &Step,
        operands: &Operands,
        scratch: Option<&wgpu::Buffer>,
        params: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        let kernel = step.variant.kernel;
        let slots = kernel.def().slots;
        let mut entries = Vec::with_capacity(slots.len() + 1);
        entries.push(wgpu::BindGroupEntry {
            binding: 0,
            resource: params.as_entire_binding(),
        });
        for ((binding, slot), bind) in (1u32..).zip(slots).zip(&step.binds) {
            let (buffer, offset, size) = match *bind {
                Bind::Operand {
                    operand,
                    offset,
                    size,
                } => {
                    let t = operands
                        .get(operand)
                        .expect("the plan binds present operands");
                    (t.buffer, offset, size)
                }
                Bind::Scratch { size } => (scratch.expect("the plan sized it"), 0, size),
                Bind::Absent => {
                    let dummy = if slot.access.writes() {
                        &self.dummy_out
                    } else {
                        &self.dummy_in
                    };
                    (dummy, u64::from(binding) * self.caps.align, 16)
                }
            };
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset,
                    size: wgpu::BufferSize::new(size),
                }),
            });
        }
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.name()),
            layout: &self.layouts[&(kernel, step.variant.shared)].0,
            entries: &entries,
        })
    }

    fn cell(&self, variant: Variant) -> PipelineCell {
        lock(&self.pipelines).entry(variant).or_default().clone()
    }

    /// The compiled pipeline of `variant`, compiling it on first use. The cache's lock is only
    /// held to find the variant's cell; a thread needing a variant another is compiling waits
    /// for that one alone. `wait` allows blocking on the device's verdict (never needed on
    /// native, where it is known at once).
    fn pipeline(&self, variant: Variant, wait: bool) -> Result<wgpu::ComputePipeline> {
        let cell = self.cell(variant);
        cell.get_or_init(|| self.compile(variant, wait)).clone()
    }

    fn compile(&self, variant: Variant, wait: bool) -> Result<wgpu::ComputePipeline> {
        let scopes = ErrorScopes::push(&self.device);
        let pipeline = self.create_pipeline(variant);
        #[cfg(not(target_arch = "wasm32"))]
        let verdict = if wait {
            pollster::block_on(scopes.pop())
        } else {
            scopes.pop_now()
        };
        // Nothing asks to wait in the browser (`warm` is native only).
        #[cfg(target_arch = "wasm32")]
        let verdict = {
            let _ = wait;
            scopes.pop_now()
        };
        verdict
            .map(|()| pipeline)
            .map_err(|e| compile_error(variant, e))
    }

    async fn compile_async(&self, variant: Variant) -> Result<wgpu::ComputePipeline> {
        let scopes = ErrorScopes::push(&self.device);
        let pipeline = self.create_pipeline(variant);
        scopes
            .pop()
            .await
            .map(|()| pipeline)
            .map_err(|e| compile_error(variant, e))
    }

    fn create_pipeline(&self, variant: Variant) -> wgpu::ComputePipeline {
        let label = variant.label();
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&label),
                source: wgpu::ShaderSource::Wgsl(variant.source().into()),
            });
        self.device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: Some(&self.layouts[&(variant.kernel, variant.shared)].1),
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            })
    }

    /// A uniform buffer holding `params`, created once per distinct value.
    fn params_buffer(&self, params: &Params) -> Result<wgpu::Buffer> {
        let key = params.words();
        let mut cache = lock(&self.params);
        if let Some(b) = cache.get(&key) {
            return Ok(b.clone());
        }
        if cache.len() >= PARAMS_CACHE {
            cache.clear();
        }
        // Written through a mapping at creation rather than `create_buffer_init`, which
        // panics where the mapping fails (a lost device).
        let buffer = capture(&self.device, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-norm params"),
                size: size_of::<Params>() as u64,
                usage: wgpu::BufferUsages::UNIFORM,
                mapped_at_creation: true,
            })
        })?;
        buffer
            .get_mapped_range_mut(..)
            .map_err(|e| {
                let why = self.device_lost().unwrap_or_else(|| e.to_string());
                Error::DeviceLost(why)
            })?
            .copy_from_slice(bytemuck::bytes_of(params));
        buffer.unmap();
        cache.insert(key, buffer.clone());
        Ok(buffer)
    }

    /// The shared partial-sum buffer, at least `bytes` long. It grows by powers of two, so
    /// that a run of growing shapes replaces it only a few times; a buffer replaced stays
    /// alive while recorded work or prepared ops still use it.
    fn scratch(&self, bytes: u64) -> Result<wgpu::Buffer> {
        let mut scratch = lock(&self.scratch);
        if let Some(b) = scratch.as_ref().filter(|b| b.size() >= bytes) {
            return Ok(b.clone());
        }
        let size = bytes
            .next_power_of_two()
            .min(self.caps.max_binding)
            .max(bytes);
        let buffer = capture(&self.device, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-norm partial sums"),
                size,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        })?;
        *scratch = Some(buffer.clone());
        Ok(buffer)
    }

    /// Records `output = input` for `rows x dim` f32: [`CopyOp`].
    pub fn copy<'a>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        rows: usize,
        dim: usize,
        input: impl Into<TensorRef<'a>>,
        output: impl Into<TensorRef<'a>>,
    ) -> Result<()> {
        self.record(encoder, &CopyOp::new(rows, dim, input, output))
    }

    /// [`Norms::record`] of a [`LayerNorm`].
    pub fn layer_norm(&self, encoder: &mut wgpu::CommandEncoder, op: &LayerNorm) -> Result<()> {
        self.record(encoder, op)
    }

    /// [`Norms::record`] of an [`RmsNorm`].
    pub fn rms_norm(&self, encoder: &mut wgpu::CommandEncoder, op: &RmsNorm) -> Result<()> {
        self.record(encoder, op)
    }

    /// [`Norms::record`] of a [`LayerNormBackward`]: the row kernel, then the dweight/dbias
    /// reduction when either is wanted. With zero rows only dweight/dbias are written (0, or
    /// left as they are when accumulating).
    pub fn layer_norm_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        op: &LayerNormBackward,
    ) -> Result<()> {
        self.record(encoder, op)
    }

    /// [`Norms::record`] of an [`RmsNormBackward`] (see [`Norms::layer_norm_backward`]).
    pub fn rms_norm_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        op: &RmsNormBackward,
    ) -> Result<()> {
        self.record(encoder, op)
    }
}

fn compile_error(variant: Variant, e: Error) -> Error {
    // Our own shaders failing to compile is a bug; it still comes back as an error rather
    // than through the caller's uncaptured-error handler.
    Error::Internal(format!("compiling {}: {e}", variant.label()))
}

pub(crate) fn begin_pass<'e>(
    encoder: &'e mut wgpu::CommandEncoder,
    label: &str,
) -> wgpu::ComputePass<'e> {
    encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes: None,
    })
}

/// Runs `f` inside error scopes, so that what wgpu rejects comes back as an [`Error`] rather
/// than through the caller's uncaptured-error handler. Never blocks (see
/// [`ErrorScopes::pop_now`]).
pub(crate) fn capture<T>(device: &wgpu::Device, f: impl FnOnce() -> T) -> Result<T> {
    let scopes = ErrorScopes::push(device);
    let out = f();
    scopes.pop_now().map(|()| out)
}

/// The three error scopes wgpu has (out of memory, validation, internal), pushed together.
/// They are thread-local in wgpu, so concurrent recording threads do not see each other's
/// errors.
pub(crate) struct ErrorScopes([wgpu::ErrorScopeGuard; 3]);

impl ErrorScopes {
    pub fn push(device: &wgpu::Device) -> Self {
        ErrorScopes([
            device.push_error_scope(wgpu::ErrorFilter::OutOfMemory),
            device.push_error_scope(wgpu::ErrorFilter::Validation),
            device.push_error_scope(wgpu::ErrorFilter::Internal),
        ])
    }

    /// The first error caught, waiting for the device's verdict.
    pub async fn pop(self) -> Result<()> {
        let [oom, validation, internal] = self.0;
        // Innermost first.
        let found = [
            internal.pop().await,
            validation.pop().await,
            oom.pop().await,
        ];
        found
            .into_iter()
            .flatten()
            .next()
            .map_or(Ok(()), |e| Err(convert(e)))
    }

    /// The first error caught, looking once without waiting. On native wgpu the verdict is
    /// known when the call returns; where it is only known later (a browser), this reports
    /// none, and what the device finds then is dropped with the scope.
    pub fn pop_now(self) -> Result<()> {
        let mut fut = std::pin::pin!(self.pop());
        let waker = std::task::Waker::noop();
        match fut
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
        {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => Ok(()),
        }
    }
}

fn convert(e: wgpu::Error) -> Error {
    match e {
        wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory(e.to_string()),
        wgpu::Error::Validation { description, .. } => Error::Validation(description),
        wgpu::Error::Internal { description, .. } => Error::Wgpu(description),
    }
}
