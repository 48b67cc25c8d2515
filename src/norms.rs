//! [`Norms`]: the compiled kernels of one device, and the launch path they share.

use std::collections::HashMap;
use std::sync::Mutex;

use wgpu::util::DeviceExt;

use crate::dtype::DType;
use crate::error::{Error, Operand, Result};
use crate::shaders::{
    Family, Kernel, MAX_PARTIAL_ROWS, MIN_WORKGROUP_SIZE, PARAM_GRAD_COLUMNS, PARTIAL_INVOCATIONS,
    Params, Variant, flags, rows_per_group,
};
use crate::tensor::TensorRef;

/// How many f32 an operand holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Extent {
    /// `rows * dim`: one row each.
    Rows,
    /// `dim`: weight, bias and their gradients.
    Dim,
    /// `rows`: saved statistics.
    PerRow,
    /// The backward pass's partial sums, a buffer of the crate's own.
    Internal,
}

/// Which storage type an operand has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// The launch's activation type (x, y, the residual stream).
    Act,
    /// The launch's parameter type (weight, bias).
    Param,
    /// Always f32 (statistics, gradients, partial sums).
    F32,
}

/// One binding of a kernel family.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    pub operand: Operand,
    pub binding: u32,
    pub written: bool,
    pub extent: Extent,
    pub class: Class,
    /// Set in `Params::flags` when the operand is present.
    pub flag: u32,
}

const fn slot(operand: Operand, binding: u32, written: bool, extent: Extent, flag: u32) -> Slot {
    let class = match extent {
        Extent::Rows => Class::Act,
        Extent::Dim => Class::Param,
        _ => Class::F32,
    };
    Slot {
        operand,
        binding,
        written,
        extent,
        class,
        flag,
    }
}

/// A slot whose storage is always f32.
const fn f32_slot(s: Slot) -> Slot {
    Slot {
        class: Class::F32,
        ..s
    }
}

/// `shaders/forward_bindings.wgsl`.
pub(crate) const FORWARD_SLOTS: [Slot; 8] = [
    slot(Operand::Input, 1, false, Extent::Rows, 0),
    slot(Operand::Output, 2, true, Extent::Rows, 0),
    slot(Operand::Weight, 3, false, Extent::Dim, flags::WEIGHT),
    slot(Operand::Bias, 4, false, Extent::Dim, flags::BIAS),
    slot(Operand::Mean, 5, true, Extent::PerRow, flags::MEAN),
    slot(Operand::Rstd, 6, true, Extent::PerRow, flags::RSTD),
    slot(Operand::Residual, 7, false, Extent::Rows, flags::RESIDUAL),
    slot(
        Operand::ResidualOut,
        8,
        true,
        Extent::Rows,
        flags::RESIDUAL_OUT,
    ),
];

/// `shaders/backward_bindings.wgsl`.
/// The backward row kernels: x, dy and dx in the activation type, the weight in the parameter
/// type, statistics and partial sums f32 (`shaders/backward_bindings.wgsl` and generated).
pub(crate) const BACKWARD_SLOTS: [Slot; 7] = [
    slot(Operand::Input, 1, false, Extent::Rows, 0),
    slot(Operand::GradOutput, 2, false, Extent::Rows, 0),
    slot(Operand::Weight, 3, false, Extent::Dim, flags::WEIGHT),
    slot(Operand::Mean, 4, false, Extent::PerRow, flags::MEAN),
    slot(Operand::Rstd, 5, false, Extent::PerRow, flags::RSTD),
    slot(Operand::GradInput, 6, true, Extent::Rows, 0),
    slot(Operand::Partials, 7, true, Extent::Internal, 0),
];

/// `shaders/param_grad.wgsl`.
pub(crate) const PARAM_GRAD_SLOTS: [Slot; 3] = [
    slot(Operand::Partials, 1, true, Extent::Internal, 0),
    f32_slot(slot(
        Operand::GradWeight,
        2,
        true,
        Extent::Dim,
        flags::GRAD_WEIGHT,
    )),
    f32_slot(slot(
        Operand::GradBias,
        3,
        true,
        Extent::Dim,
        flags::GRAD_BIAS,
    )),
];

fn family_slots(family: Family) -> &'static [Slot] {
    match family {
        Family::Forward => &FORWARD_SLOTS,
        Family::Backward => &BACKWARD_SLOTS,
        Family::ParamGrad => &PARAM_GRAD_SLOTS,
    }
}

const FAMILIES: [Family; 3] = [Family::Forward, Family::Backward, Family::ParamGrad];

/// Largest binding we make, whatever the device allows: keeps every element index in u32.
const MAX_BINDING: u64 = 1 << 31;

/// How [`Norms`] uses the device.
#[derive(Clone, Copy, Debug)]
pub struct NormsOptions {
    /// Reduce with subgroup operations when the device has `Features::SUBGROUP` (default).
    /// When false, or without the feature, a workgroup-memory tree reduction is used.
    pub subgroups: bool,
}

impl Default for NormsOptions {
    fn default() -> Self {
        NormsOptions { subgroups: true }
    }
}

/// The kernels of one `wgpu::Device`: bind-group layouts built once, pipelines compiled on
/// first use and cached under their [`Variant`]. Recording methods
/// ([`Norms::layer_norm`], [`Norms::rms_norm`], their `_backward`s, [`Norms::copy`]) validate
/// every argument, then record into the caller's encoder; they never submit.
pub struct Norms {
    device: wgpu::Device,
    limits: wgpu::Limits,
    /// Largest workgroup size to use: a power of two the device allows.
    max_wg: u32,
    subgroups: bool,
    /// Per family, indexed by `Variant::shared`: read-only inputs, or every storage binding
    /// read_write.
    layouts: HashMap<(Family, bool), (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    pipelines: Mutex<HashMap<Variant, wgpu::ComputePipeline>>,
    /// Bound in place of absent optional operands; two, so that a read-only and a
    /// read-write binding never name the same buffer.
    dummy_in: wgpu::Buffer,
    dummy_out: wgpu::Buffer,
}

/// One kernel launch as the op modules describe it.
pub(crate) struct Launch<'a> {
    pub kernel: Kernel,
    pub rows: usize,
    pub dim: usize,
    pub eps: f32,
    /// Flags beyond those of present operands.
    pub flags: u32,
    /// Storage of activations and parameters (forward norms).
    pub act: DType,
    pub param: DType,
    /// Elements at the start of each row that enter the statistics (pRMSNorm); `dim` if None.
    pub stat_len: Option<usize>,
    /// In the order of the family's slots.
    pub operands: Vec<Option<TensorRef<'a>>>,
}

/// A launch after validation: what every dispatch of it needs.
struct Checked {
    dim: u32,
    shared: bool,
    vec4: bool,
    align: u64,
    chunk_rows: u64,
    flags: u32,
}

impl Norms {
    /// Builds the layouts for `device`, using subgroups where it has them.
    pub fn new(device: &wgpu::Device) -> Result<Self> {
        Self::with_options(device, NormsOptions::default())
    }

    pub fn with_options(device: &wgpu::Device, options: NormsOptions) -> Result<Self> {
        let limits = device.limits();
        let allowed = limits
            .max_compute_invocations_per_workgroup
            .min(limits.max_compute_workgroup_size_x);
        if allowed < MIN_WORKGROUP_SIZE {
            return Err(Error::UnsupportedDevice(format!(
                "needs {MIN_WORKGROUP_SIZE} invocations per workgroup, the device allows {allowed}"
            )));
        }
        let most_slots = FAMILIES.iter().map(|&f| family_slots(f).len()).max();
        let needed = most_slots.unwrap_or(0) as u32;
        if limits.max_storage_buffers_per_shader_stage < needed {
            return Err(Error::UnsupportedDevice(format!(
                "needs {needed} storage buffers per shader stage, the device allows {}",
                limits.max_storage_buffers_per_shader_stage
            )));
        }
        // The largest power of two the device allows.
        let max_wg = 1 << allowed.ilog2();
        let subgroups = options.subgroups && device.features().contains(wgpu::Features::SUBGROUP);
        let mut layouts = HashMap::new();
        for family in FAMILIES {
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
                entries.extend(
                    family_slots(family)
                        .iter()
                        .map(|s| wgpu::BindGroupLayoutEntry {
                            binding: s.binding,
                            visibility: wgpu::ShaderStages::COMPUTE,
                            ty: wgpu::BindingType::Buffer {
                                ty: wgpu::BufferBindingType::Storage {
                                    read_only: !s.written && !shared,
                                },
                                has_dynamic_offset: false,
                                min_binding_size: None,
                            },
                            count: None,
                        }),
                );
                let label = format!(
                    "wgpu-norm {family:?} layout{}",
                    if shared { " (shared buffers)" } else { "" }
                );
                let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(&label),
                    entries: &entries,
                });
                let pipeline_layout =
                    device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: Some(&label),
                        bind_group_layouts: &[Some(&layout)],
                        immediate_size: 0,
                    });
                layouts.insert((family, shared), (layout, pipeline_layout));
            }
        }
        // 16 bytes: the smallest binding of an array<vec4<f32>>.
        let dummy = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        Ok(Norms {
            device: device.clone(),
            limits,
            max_wg,
            subgroups,
            layouts,
            pipelines: Mutex::new(HashMap::new()),
            dummy_in: dummy("wgpu-norm absent input"),
            dummy_out: dummy("wgpu-norm absent output"),
        })
    }

    /// The device these kernels were built for.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// Whether reductions use subgroup operations.
    pub fn uses_subgroups(&self) -> bool {
        self.subgroups
    }

    /// Records `output = input` for `rows x dim` f32: the bandwidth baseline of the
    /// benchmarks, a plain copy of the same bytes.
    pub fn copy<'a>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        rows: usize,
        dim: usize,
        input: impl Into<TensorRef<'a>>,
        output: impl Into<TensorRef<'a>>,
    ) -> Result<()> {
        let l = Launch {
            kernel: Kernel::Copy,
            rows,
            dim,
            eps: 0.0,
            flags: 0,
            operands: vec![Some(input.into()), Some(output.into())],
            act: DType::F32,
            param: DType::F32,
            stat_len: None,
        };
        let c = self.check(&l, &[])?;
        if rows == 0 {
            return Ok(());
        }
        let mut pass = begin_pass(encoder, "wgpu-norm copy");
        self.record_rows(&mut pass, &l, &c, None, |_, _, _| Ok(()))
    }

    /// The compiled pipeline of `variant`, compiling it on first use.
    fn pipeline(&self, variant: Variant) -> Result<wgpu::ComputePipeline> {
        // A poisoned lock only means another thread panicked while compiling; the map is
        // still a valid cache.
        let mut cache = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get(&variant) {
            return Ok(p.clone());
        }
        let label = variant.label();
        // Our own shaders failing to compile is a bug, but it must still come back as an
        // error here rather than through the caller's uncaptured-error handler.
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&label),
                source: wgpu::ShaderSource::Wgsl(variant.source().into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: Some(&self.layouts[&(variant.kernel.family(), variant.shared)].1),
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(Error::Internal(format!("compiling {label}: {err}")));
        }
        cache.insert(variant, pipeline.clone());
        Ok(pipeline)
    }

    /// Validates a launch and the `extra` operands recorded with it (by a second kernel).
    fn check(&self, l: &Launch, extra: &[(Slot, Option<TensorRef>)]) -> Result<Checked> {
        if l.dim == 0 {
            return Err(Error::ZeroDim);
        }
        if !(l.eps.is_finite() && l.eps >= 0.0) {
            return Err(Error::BadEpsilon(l.eps));
        }
        let too_large = Error::ShapeTooLarge {
            rows: l.rows,
            dim: l.dim,
        };
        let dim = u32::try_from(l.dim).map_err(|_| too_large.clone())?;
        let row_bytes = u64::from(dim) * l.act.size();
        (l.rows as u64)
            .checked_mul(u64::from(dim) * 4)
            .ok_or(too_large.clone())?;
        let slots = family_slots(l.kernel.family());
        let all: Vec<(Slot, Option<TensorRef>)> = slots
            .iter()
            .copied()
            .zip(l.operands.iter().copied())
            .chain(extra.iter().copied())
            .collect();
        let mut flag_bits = l.flags;
        for (s, t) in &all {
            let Some(t) = t else { continue };
            flag_bits |= s.flag;
            let size = self.elem_size(l, s);
            let (count, what) = match s.extent {
                Extent::Rows => (l.rows as u64 * u64::from(dim), "rows x dim elements"),
                Extent::Dim => (u64::from(dim), "dim elements"),
                Extent::PerRow => (l.rows as u64, "one f32 per row"),
                Extent::Internal => continue,
            };
            check_operand(s.operand, t, count * size, size, what)?;
        }
        // The op modules compute it in 1..=dim.
        debug_assert!(l.stat_len.is_none_or(|k| k >= 1 && k <= l.dim.max(1)));
        let shared = check_aliasing(&all)?;

        let align = u64::from(self.limits.min_storage_buffer_offset_alignment).max(16);
        let max_binding = self.max_binding();
        if row_bytes + align > max_binding {
            return Err(Error::RowTooLarge {
                dim: l.dim,
                row_bytes,
                max_binding: self.limits.max_storage_buffer_binding_size,
            });
        }
        // vec4 access needs every row- or dim-sized operand to start on 4 elements.
        let vec4 = dim.is_multiple_of(4)
            && all
                .iter()
                .filter(|(s, _)| matches!(s.extent, Extent::Rows | Extent::Dim))
                .filter_map(|(s, t)| t.map(|t| (self.elem_size(l, s), t)))
                .all(|(size, t)| t.offset.is_multiple_of(4 * size));
        // Rows per dispatch: each binding may start up to `align` bytes before its data.
        let max_groups = u64::from(self.limits.max_compute_workgroups_per_dimension).pow(2);
        let chunk_rows = ((max_binding - align) / row_bytes).min(max_groups);
        Ok(Checked {
            dim,
            shared,
            vec4,
            align,
            chunk_rows,
            flags: flag_bits,
        })
    }

    /// Bytes per element of a slot's operand in launch `l`.
    fn elem_size(&self, l: &Launch, s: &Slot) -> u64 {
        match s.class {
            Class::Act => l.act.size(),
            Class::Param => l.param.size(),
            Class::F32 => 4,
        }
    }

    /// Largest binding we make.
    fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(MAX_BINDING) & !15
    }

    /// Records a row kernel (forward or backward stage 1) over all rows, in as many
    /// dispatches (chunks) as the binding limit needs. `partials` is the backward's
    /// partial-sum buffer and its rows per workgroup; each chunk writes its partial rows from
    /// the start of it, and `after_chunk(pass, chunk, workgroups)` records what consumes them.
    fn record_rows(
        &self,
        pass: &mut wgpu::ComputePass,
        l: &Launch,
        c: &Checked,
        partials: Option<(&wgpu::Buffer, u32)>,
        mut after_chunk: impl FnMut(&mut wgpu::ComputePass, usize, u32) -> Result<()>,
    ) -> Result<()> {
        let variant = Variant::for_row(
            l.kernel,
            c.dim,
            c.vec4,
            self.subgroups,
            c.shared,
            self.max_wg,
        )
        .with_storage(l.act, l.param);
        let pipeline = self.pipeline(variant)?;
        let slots = family_slots(l.kernel.family());
        let rows_per_group = match partials {
            Some((_, per_group)) => per_group,
            None => rows_per_group(c.dim),
        };
        let lanes = if c.vec4 { 4 } else { 1 };
        let total_rows = l.rows as u64;
        let mut params = Vec::new();
        let mut ranges = Vec::new();
        let mut grids = Vec::new();
        for r0 in (0..total_rows).step_by(c.chunk_rows as usize) {
            let rows = c.chunk_rows.min(total_rows - r0);
            let groups = match l.kernel {
                Kernel::Copy => (rows * u64::from(c.dim) / lanes)
                    .div_ceil(u64::from(variant.wg * variant.cache)),
                _ => rows.div_ceil(u64::from(rows_per_group)),
            };
            let mut p = Params {
                rows: rows as u32,
                dim: c.dim,
                eps: l.eps,
                flags: c.flags,
                rows_per_group,
                part_row0: 0,
                part_rows: groups as u32,
                stat_len: l.stat_len.map_or(c.dim, |k| k as u32),
                ..Params::default()
            };
            let mut chunk_ranges = Vec::with_capacity(slots.len());
            for (s, t) in slots.iter().zip(&l.operands) {
                let size = self.elem_size(l, s);
                let row = u64::from(c.dim) * size;
                let (start, len) = match s.extent {
                    Extent::Rows => (r0 * row, rows * row),
                    Extent::Dim => (0, row),
                    Extent::PerRow => (r0 * 4, rows * 4),
                    Extent::Internal => (0, 0),
                };
                let range = t.map(|t| {
                    let (range, off) = bind_range(t.offset + start, len, size, c.align);
                    p.off[s.binding as usize] = off;
                    range
                });
                chunk_ranges.push(range);
            }
            params.push(p);
            ranges.push(chunk_ranges);
            grids.push((groups as u32, self.grid(groups)));
        }
        let label = variant.label();
        let bind_groups = self.bind_groups(&label, &variant, slots, &params, |chunk, i| {
            let s = &slots[i];
            let t = l.operands.get(i).copied().flatten();
            let range = ranges[chunk].get(i).copied().flatten();
            match (t, range, s.extent) {
                (_, _, Extent::Internal) => partials.map(|(b, _)| b.as_entire_binding()),
                (Some(t), Some((at, size)), _) => {
                    Some(wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: t.buffer,
                        offset: at,
                        size: wgpu::BufferSize::new(size),
                    }))
                }
                _ => None,
            }
        });
        for (chunk, (bind_group, (groups, [gx, gy]))) in bind_groups.iter().zip(grids).enumerate() {
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(gx, gy, 1);
            after_chunk(pass, chunk, groups)?;
        }
        Ok(())
    }

    /// A 2-D grid of `groups` workgroups (one dimension stops at 65535).
    fn grid(&self, groups: u64) -> [u32; 2] {
        let max = u64::from(self.limits.max_compute_workgroups_per_dimension);
        let x = groups.clamp(1, max);
        [x as u32, groups.div_ceil(x) as u32]
    }

    /// One bind group per entry of `params` (all in one uniform buffer, each at an aligned
    /// offset); `resource(chunk, slot index)` names what to bind, `None` a dummy.
    fn bind_groups<'b>(
        &'b self,
        label: &str,
        variant: &Variant,
        slots: &[Slot],
        params: &[Params],
        resource: impl Fn(usize, usize) -> Option<wgpu::BindingResource<'b>>,
    ) -> Vec<wgpu::BindGroup> {
        let stride = (size_of::<Params>() as u64)
            .next_multiple_of(u64::from(self.limits.min_uniform_buffer_offset_alignment));
        let mut uniform = vec![0u8; (stride * params.len() as u64) as usize];
        for (i, p) in params.iter().enumerate() {
            let at = i * stride as usize;
            uniform[at..at + size_of::<Params>()].copy_from_slice(bytemuck::bytes_of(p));
        }
        let params_buffer = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &uniform,
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let layout = &self.layouts[&(variant.kernel.family(), variant.shared)].0;
        (0..params.len())
            .map(|chunk| {
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params_buffer,
                        offset: chunk as u64 * stride,
                        size: wgpu::BufferSize::new(size_of::<Params>() as u64),
                    }),
                }];
                for (i, s) in slots.iter().enumerate() {
                    let dummy = if s.written {
                        &self.dummy_out
                    } else {
                        &self.dummy_in
                    };
                    let resource = resource(chunk, i).unwrap_or_else(|| dummy.as_entire_binding());
                    entries.push(wgpu::BindGroupEntry {
                        binding: s.binding,
                        resource,
                    });
                }
                self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(label),
                    layout,
                    entries: &entries,
                })
            })
            .collect()
    }

    /// Validates and records a forward norm: one compute pass.
    pub(crate) fn forward(&self, encoder: &mut wgpu::CommandEncoder, l: &Launch) -> Result<()> {
        let c = self.check(l, &[])?;
        if l.rows == 0 {
            return Ok(());
        }
        let mut pass = begin_pass(encoder, l.kernel.name());
        self.record_rows(&mut pass, l, &c, None, |_, _, _| Ok(()))
    }

    /// Validates and records a backward norm: the row kernel (dx and partial column sums),
    /// then, when dweight or dbias is wanted, the fixed-order reduction of the partials.
    pub(crate) fn backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        l: &Launch,
        grad_weight: Option<TensorRef>,
        grad_bias: Option<TensorRef>,
    ) -> Result<()> {
        let extra = [
            (PARAM_GRAD_SLOTS[1], grad_weight),
            (PARAM_GRAD_SLOTS[2], grad_bias),
        ];
        let mut c = self.check(l, &extra)?;
        if l.operands[3].is_some() != l.operands[4].is_some()
            && l.kernel == Kernel::LayerNormBackward
        {
            let (given, needs) = if l.operands[3].is_some() {
                (Operand::Mean, Operand::Rstd)
            } else {
                (Operand::Rstd, Operand::Mean)
            };
            return Err(Error::MissingOperand { needs, given });
        }
        let arrays = u32::from(grad_weight.is_some()) + u32::from(grad_bias.is_some());
        if grad_weight.is_some() {
            c.flags |= flags::GRAD_WEIGHT;
        }
        if grad_bias.is_some() {
            c.flags |= flags::GRAD_BIAS;
        }
        // Partial rows: one per workgroup of the row kernel, a count fixed by the shape alone,
        // so the order of every sum is too. Each chunk (binding) is reduced on its own.
        let variant = Variant::for_row(
            l.kernel,
            c.dim,
            c.vec4,
            self.subgroups,
            c.shared,
            self.max_wg,
        );
        // Partial sums are f32 whatever the storage.
        let part_row = u64::from(c.dim) * 4;
        let by_size = self.max_binding() / (part_row * u64::from(arrays.max(1)));
        if by_size == 0 {
            return Err(Error::RowTooLarge {
                dim: l.dim,
                row_bytes: part_row * u64::from(arrays),
                max_binding: self.limits.max_storage_buffer_binding_size,
            });
        }
        let target = u64::from((PARTIAL_INVOCATIONS / variant.wg).clamp(1, MAX_PARTIAL_ROWS));
        let rows = l.rows as u64;
        let per_group = rows.div_ceil(target.min(by_size).max(1)).max(1);
        let per_group = per_group.max(c.chunk_rows.div_ceil(by_size)) as u32;
        let most_groups = c.chunk_rows.min(rows).div_ceil(u64::from(per_group));
        let part_buffer = (arrays > 0 && rows > 0).then(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-norm backward partial sums"),
                size: most_groups * part_row * u64::from(arrays),
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        });
        let part = part_buffer.as_ref().unwrap_or(&self.dummy_out);
        let mut pass = begin_pass(encoder, l.kernel.name());
        if rows == 0 {
            // No partials: the sums over nothing are 0 (or what is there, when accumulating).
            if arrays > 0 {
                self.record_param_grad(&mut pass, &c, part, 0, c.flags, grad_weight, grad_bias)?;
            }
            return Ok(());
        }
        self.record_rows(
            &mut pass,
            l,
            &c,
            Some((part, per_group)),
            |pass, chunk, groups| {
                if arrays == 0 {
                    return Ok(());
                }
                // Chunks after the first add to what the earlier ones wrote.
                let acc = if chunk > 0 {
                    flags::ACCUMULATE_PARAMS
                } else {
                    0
                };
                self.record_param_grad(
                    pass,
                    &c,
                    part,
                    groups,
                    c.flags | acc,
                    grad_weight,
                    grad_bias,
                )
            },
        )
    }

    /// Backward stage 2: dweight/dbias as column sums of `part_rows` partial rows.
    #[allow(clippy::too_many_arguments)]
    fn record_param_grad(
        &self,
        pass: &mut wgpu::ComputePass,
        c: &Checked,
        part: &wgpu::Buffer,
        part_rows: u32,
        flag_bits: u32,
        grad_weight: Option<TensorRef>,
        grad_bias: Option<TensorRef>,
    ) -> Result<()> {
        let v = Variant::for_row(Kernel::ParamGrad, c.dim, c.vec4, false, false, self.max_wg);
        let pipeline = self.pipeline(v)?;
        let mut p = Params {
            rows: part_rows,
            dim: c.dim,
            flags: flag_bits,
            part_rows,
            ..Params::default()
        };
        let mut bound = [None, None];
        for (i, t) in [grad_weight, grad_bias].into_iter().enumerate() {
            if let Some(t) = t {
                let ((at, size), off) = bind_range(t.offset, t.size, 4, c.align);
                p.off[PARAM_GRAD_SLOTS[i + 1].binding as usize] = off;
                bound[i] = Some((t.buffer, at, size));
            }
        }
        let label = v.label();
        let bind_groups = self.bind_groups(&label, &v, &PARAM_GRAD_SLOTS, &[p], |_, i| match i {
            0 => Some(part.as_entire_binding()),
            _ => bound[i - 1].map(|(buffer, offset, size)| {
                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset,
                    size: wgpu::BufferSize::new(size),
                })
            }),
        });
        let lanes = if c.vec4 { 4 } else { 1 };
        let columns = u64::from(c.dim / lanes);
        let [gx, gy] = self.grid(columns.div_ceil(u64::from(PARAM_GRAD_COLUMNS)));
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_groups[0], &[]);
        pass.dispatch_workgroups(gx, gy, 1);
        Ok(())
    }
}

/// The binding (offset, size) for `len` bytes at byte `at`: it starts at the alignment below
/// `at` and covers whole words (check_operand made sure the last word is in the buffer).
/// Returns it with the offset of the data inside it, in elements of `size` bytes.
fn bind_range(at: u64, len: u64, size: u64, align: u64) -> ((u64, u64), u32) {
    let bind_at = at / align * align;
    let range = (bind_at, (at + len).next_multiple_of(4) - bind_at);
    (range, ((at - bind_at) / size) as u32)
}

/// Flags of a backward launch's accumulation options.
pub(crate) fn accumulate_flags(grad_input: bool, grad_params: bool) -> u32 {
    let mut f = 0;
    if grad_input {
        f |= flags::ACCUMULATE_DX;
    }
    if grad_params {
        f |= flags::ACCUMULATE_PARAMS;
    }
    f
}

fn begin_pass<'e>(encoder: &'e mut wgpu::CommandEncoder, label: &str) -> wgpu::ComputePass<'e> {
    encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes: None,
    })
}

/// Rejects written ranges that overlap anything but an identical input range of the same
/// shape (in place), and says whether any input shares a buffer with an output.
fn check_aliasing(all: &[(Slot, Option<TensorRef>)]) -> Result<bool> {
    let mut shared = false;
    for (i, (sa, a)) in all.iter().enumerate() {
        let Some(a) = a else { continue };
        for (sb, b) in all.iter().skip(i + 1) {
            let Some(b) = b else { continue };
            if a.buffer != b.buffer || !(sa.written || sb.written) {
                continue;
            }
            shared |= sa.written != sb.written;
            let overlap = a.offset < b.end() && b.offset < a.end();
            // Each element is read before it is written, by the same invocation.
            let in_place = sa.written != sb.written
                && sa.extent == Extent::Rows
                && sb.extent == Extent::Rows
                && a.offset == b.offset
                && a.size == b.size;
            if overlap && !in_place {
                let (written, other) = if sa.written { (sa, sb) } else { (sb, sa) };
                return Err(Error::Overlap {
                    written: written.operand,
                    other: other.operand,
                });
            }
        }
    }
    Ok(shared)
}

fn check_operand(
    operand: Operand,
    t: &TensorRef,
    expected: u64,
    element: u64,
    what: &'static str,
) -> Result<()> {
    if !t.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(Error::MissingUsage {
            operand,
            usage: t.buffer.usage(),
        });
    }
    if !t.offset.is_multiple_of(element) {
        return Err(Error::MisalignedOffset {
            operand,
            offset: t.offset,
            element,
        });
    }
    if t.size != expected {
        return Err(Error::WrongSize {
            operand,
            expected,
            actual: t.size,
            what,
        });
    }
    // Bindings cover whole 32-bit words: a 16-bit tensor ending mid-word needs the rest of
    // that word inside the buffer (it is never written).
    if t.offset
        .checked_add(t.size)
        .is_none_or(|end| end.next_multiple_of(4) > t.buffer.size())
    {
        return Err(Error::OutOfBounds {
            operand,
            offset: t.offset,
            end: t.end().next_multiple_of(4),
            buffer_size: t.buffer.size(),
        });
    }
    Ok(())
}
