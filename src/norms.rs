//! [`Norms`]: the compiled kernels of one device, and the launch path they share.

use std::collections::HashMap;
use std::sync::Mutex;

use wgpu::util::DeviceExt;

use crate::error::{Error, Operand, Result};
use crate::shaders::{Kernel, MIN_WORKGROUP_SIZE, Params, Variant, flags, rows_per_group};
use crate::tensor::TensorRef;

/// Binding slots of `shaders/common.wgsl`, in the order of [`Launch::operands`].
const SLOTS: [(Operand, u32, bool); 6] = [
    // (operand, binding, written by the kernel)
    (Operand::Input, 1, false),
    (Operand::Output, 2, true),
    (Operand::Weight, 3, false),
    (Operand::Bias, 4, false),
    (Operand::Mean, 5, true),
    (Operand::Rstd, 6, true),
];

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
/// ([`Norms::layer_norm`], [`Norms::rms_norm`], [`Norms::copy`]) validate every argument,
/// then record into the caller's encoder; they never submit.
pub struct Norms {
    device: wgpu::Device,
    limits: wgpu::Limits,
    /// Largest workgroup size to use: a power of two the device allows.
    max_wg: u32,
    subgroups: bool,
    /// Indexed by `Variant::shared`: read-only inputs, or every storage binding read_write.
    layouts: [wgpu::BindGroupLayout; 2],
    pipeline_layouts: [wgpu::PipelineLayout; 2],
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
    /// In [`SLOTS`] order: input, output, weight, bias, mean, rstd.
    pub operands: [Option<TensorRef<'a>>; 6],
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
        // The largest power of two the device allows.
        let max_wg = 1 << allowed.ilog2();
        if limits.max_storage_buffers_per_shader_stage < 6 {
            return Err(Error::UnsupportedDevice(format!(
                "needs 6 storage buffers per shader stage, the device allows {}",
                limits.max_storage_buffers_per_shader_stage
            )));
        }
        let subgroups = options.subgroups && device.features().contains(wgpu::Features::SUBGROUP);
        let layout =
            |shared: bool| {
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
                entries.extend(SLOTS.iter().map(|&(_, binding, written)| {
                    wgpu::BindGroupLayoutEntry {
                        binding,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage {
                                read_only: !written && !shared,
                            },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    }
                }));
                device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(if shared {
                        "wgpu-norm layout (shared buffers)"
                    } else {
                        "wgpu-norm layout"
                    }),
                    entries: &entries,
                })
            };
        let layouts = [layout(false), layout(true)];
        let pipeline_layouts = [0, 1].map(|i| {
            device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some("wgpu-norm pipeline layout"),
                bind_group_layouts: &[Some(&layouts[i])],
                immediate_size: 0,
            })
        });
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
            pipeline_layouts,
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
    /// benchmarks, with the same access pattern as the norms and no arithmetic.
    pub fn copy<'a>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        rows: usize,
        dim: usize,
        input: impl Into<TensorRef<'a>>,
        output: impl Into<TensorRef<'a>>,
    ) -> Result<()> {
        self.launch(
            encoder,
            &Launch {
                kernel: Kernel::Copy,
                rows,
                dim,
                eps: 0.0,
                operands: [
                    Some(input.into()),
                    Some(output.into()),
                    None,
                    None,
                    None,
                    None,
                ],
            },
        )
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
                layout: Some(&self.pipeline_layouts[variant.shared as usize]),
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

    /// Validates a launch completely, then records it as one compute pass.
    pub(crate) fn launch(&self, encoder: &mut wgpu::CommandEncoder, l: &Launch) -> Result<()> {
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
        let row_bytes = u64::from(dim) * 4;
        let total = (l.rows as u64)
            .checked_mul(row_bytes)
            .ok_or(too_large.clone())?;
        let stats_bytes = (l.rows as u64).checked_mul(4).ok_or(too_large)?;
        for (i, t) in l.operands.iter().enumerate() {
            let Some(t) = t else { continue };
            let (operand, _, _) = SLOTS[i];
            let (expected, what) = match operand {
                Operand::Input | Operand::Output => (total, "rows x dim f32"),
                Operand::Weight | Operand::Bias => (row_bytes, "dim f32"),
                Operand::Mean | Operand::Rstd => (stats_bytes, "one f32 per row"),
            };
            check_operand(operand, t, expected, what)?;
        }
        let shared = self.check_aliasing(&l.operands)?;

        let align = u64::from(self.limits.min_storage_buffer_offset_alignment).max(16);
        let max_binding = self.limits.max_storage_buffer_binding_size.min(MAX_BINDING) & !15;
        if row_bytes + align > max_binding {
            return Err(Error::RowTooLarge {
                dim: l.dim,
                row_bytes,
                max_binding: self.limits.max_storage_buffer_binding_size,
            });
        }
        if l.rows == 0 {
            return Ok(());
        }

        // vec4 access needs every row-sized operand to start on 16 bytes.
        let vec4 = dim.is_multiple_of(4)
            && l.operands[..4]
                .iter()
                .flatten()
                .all(|t| t.offset.is_multiple_of(16));
        let variant = Variant::for_row(l.kernel, dim, vec4, self.subgroups, shared, self.max_wg);
        let pipeline = self.pipeline(variant)?;

        // Rows per dispatch: each binding may start up to `align` bytes before its data.
        let max_wg = u64::from(self.limits.max_compute_workgroups_per_dimension);
        let chunk_rows = ((max_binding - align) / row_bytes).min(max_wg * max_wg);
        let chunks: Vec<(u64, u64)> = (0..l.rows as u64)
            .step_by(chunk_rows as usize)
            .map(|r0| (r0, chunk_rows.min(l.rows as u64 - r0)))
            .collect();

        let mut flag_bits = 0;
        for (i, bit) in [
            (2, flags::WEIGHT),
            (3, flags::BIAS),
            (4, flags::MEAN),
            (5, flags::RSTD),
        ] {
            if l.operands[i].is_some() {
                flag_bits |= bit;
            }
        }

        // All chunks' parameters in one uniform buffer, each at an aligned offset.
        let stride = (size_of::<Params>() as u64)
            .next_multiple_of(u64::from(self.limits.min_uniform_buffer_offset_alignment));
        let mut uniform = vec![0u8; (stride * chunks.len() as u64) as usize];
        let mut bindings = Vec::with_capacity(chunks.len());
        for (c, &(r0, rows)) in chunks.iter().enumerate() {
            let mut params = Params {
                rows: rows as u32,
                dim,
                eps: l.eps,
                flags: flag_bits,
                rows_per_group: rows_per_group(dim),
                ..Params::default()
            };
            let mut ranges = [(0u64, 0u64); 6];
            for (i, t) in l.operands.iter().enumerate() {
                let (operand, _, _) = SLOTS[i];
                let (start, len) = match operand {
                    Operand::Input | Operand::Output => (r0 * row_bytes, rows * row_bytes),
                    Operand::Weight | Operand::Bias => (0, row_bytes),
                    Operand::Mean | Operand::Rstd => (r0 * 4, rows * 4),
                };
                let elem_off = match t {
                    Some(t) => {
                        let at = t.offset + start;
                        let bind_at = at / align * align;
                        ranges[i] = (bind_at, at + len - bind_at);
                        ((at - bind_at) / 4) as u32
                    }
                    None => 0,
                };
                match operand {
                    Operand::Input => params.x_off = elem_off,
                    Operand::Output => params.y_off = elem_off,
                    Operand::Weight => params.w_off = elem_off,
                    Operand::Bias => params.b_off = elem_off,
                    Operand::Mean => params.mean_off = elem_off,
                    Operand::Rstd => params.rstd_off = elem_off,
                }
            }
            let at = c * stride as usize;
            uniform[at..at + size_of::<Params>()].copy_from_slice(bytemuck::bytes_of(&params));
            let groups = if l.kernel.reduces() {
                rows.div_ceil(u64::from(params.rows_per_group))
            } else {
                let lanes = if vec4 { 4 } else { 1 };
                (rows * u64::from(dim) / lanes).div_ceil(u64::from(variant.wg * variant.cache))
            };
            let grid_x = groups.min(max_wg);
            bindings.push((ranges, [grid_x as u32, groups.div_ceil(grid_x) as u32]));
        }
        let label = variant.label();
        let params_buffer = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(&label),
                contents: &uniform,
                usage: wgpu::BufferUsages::UNIFORM,
            });

        let bind_groups: Vec<_> = bindings
            .iter()
            .enumerate()
            .map(|(c, (ranges, _))| {
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params_buffer,
                        offset: c as u64 * stride,
                        size: wgpu::BufferSize::new(size_of::<Params>() as u64),
                    }),
                }];
                for (i, &(_, binding, written)) in SLOTS.iter().enumerate() {
                    let resource = match &l.operands[i] {
                        Some(t) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: t.buffer,
                            offset: ranges[i].0,
                            size: wgpu::BufferSize::new(ranges[i].1),
                        }),
                        None if written => self.dummy_out.as_entire_binding(),
                        None => self.dummy_in.as_entire_binding(),
                    };
                    entries.push(wgpu::BindGroupEntry { binding, resource });
                }
                self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(&label),
                    layout: &self.layouts[variant.shared as usize],
                    entries: &entries,
                })
            })
            .collect();

        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(&label),
            timestamp_writes: None,
        });
        pass.set_pipeline(&pipeline);
        for (bind_group, (_, [gx, gy])) in bind_groups.iter().zip(&bindings) {
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(*gx, *gy, 1);
        }
        Ok(())
    }

    /// Rejects outputs that overlap anything but an identical input range (in place), and
    /// says whether any input shares a buffer with an output.
    fn check_aliasing(&self, operands: &[Option<TensorRef>; 6]) -> Result<bool> {
        let mut shared = false;
        for (i, a) in operands.iter().enumerate() {
            let Some(a) = a else { continue };
            for (j, b) in operands.iter().enumerate().skip(i + 1) {
                let Some(b) = b else { continue };
                let (wa, wb) = (SLOTS[i].2, SLOTS[j].2);
                if a.buffer != b.buffer || !(wa || wb) {
                    continue;
                }
                shared |= wa != wb;
                let overlap = a.offset < b.end() && b.offset < a.end();
                let in_place = SLOTS[i].0 == Operand::Input
                    && SLOTS[j].0 == Operand::Output
                    && a.offset == b.offset
                    && a.size == b.size;
                if overlap && !in_place {
                    let (written, other) = if wa { (i, j) } else { (j, i) };
                    return Err(Error::Overlap {
                        written: SLOTS[written].0,
                        other: SLOTS[other].0,
                    });
                }
            }
        }
        Ok(shared)
    }
}

fn check_operand(operand: Operand, t: &TensorRef, expected: u64, what: &'static str) -> Result<()> {
    if !t.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(Error::MissingUsage {
            operand,
            usage: t.buffer.usage(),
        });
    }
    if !t.offset.is_multiple_of(4) {
        return Err(Error::MisalignedOffset {
            operand,
            offset: t.offset,
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
    if t.offset
        .checked_add(t.size)
        .is_none_or(|end| end > t.buffer.size())
    {
        return Err(Error::OutOfBounds {
            operand,
            offset: t.offset,
            end: t.end(),
            buffer_size: t.buffer.size(),
        });
    }
    Ok(())
}
