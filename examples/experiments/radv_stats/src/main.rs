//! Register statistics of wgpu-norm's kernels from a real GPU compiler, without a GPU.
//!
//! Mesa's RADV driver offers a null device (`RADV_FORCE_FAMILY`, no AMD hardware needed) that
//! compiles pipelines with AMD's ACO compiler and reports, through
//! VK_KHR_pipeline_executable_properties, the registers each kernel takes and how many waves
//! of it fit a SIMD at once. For a memory-bound kernel that keeps its row in registers, those
//! waves times the bytes each keeps in flight is what hides the memory's latency, so a kernel
//! change that frees registers can be judged here before a GPU times it. AMD's figures are not
//! NVIDIA's, but the live values behind them are the kernel's own.
//!
//! The variants are the ones `wgpu_norm::plan::plan` picks for the ops `wgpu-norm bench` runs
//! (LayerNorm with weight, bias and saved statistics; RMSNorm with weight and rrms; both
//! backward passes from saved statistics with dweight, and dbias), on a large device with
//! subgroups (wgpu's no-op backend: nothing runs), with the default tuning. Each is
//! translated to SPIR-V by naga and compiled by RADV in 32-lane waves, as NVIDIA's warps
//! (`RADV_PERFTEST=cswave32`; Mesa 22.3 takes them for kernels with subgroup operations
//! anyway, and 64 lanes for the others without it).
//!
//! Needs Debian's `mesa-vulkan-drivers` (RADV). From the repository root:
//!     cargo run --release --manifest-path examples/experiments/radv_stats/Cargo.toml \
//!         --target-dir target/radv-stats -- [--dims 128,4096] [--dtypes f32,bf16] \
//!         [--ops ln,rms,lnb,rmsb] [--v N] [--below N] [--below-backward N] [--recomputed]
//!         [--family navi21]
//!         [--dump DIR]
//! One line a variant: op, dtype, D, VGPRs, spilled VGPRs, waves a SIMD, instructions, label.

use std::collections::BTreeSet;
use std::ffi::CStr;

use ash::vk;
use wgpu_norm::plan::{plan, Caps};
use wgpu_norm::shaders::Variant;
use wgpu_norm::{
    DType, LayerNorm, LayerNormBackward, NormsOptions, RmsNorm, RmsNormBackward, TensorRef, Tuning,
};

struct Args {
    dims: Vec<u32>,
    dtypes: Vec<DType>,
    ops: Vec<String>,
    v: Option<u32>,
    below: Option<u32>,
    below_backward: Option<u32>,
    recomputed: bool,
    family: String,
    dump: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        dims: vec![128, 1024, 4096, 4097, 32768],
        dtypes: vec![DType::F32, DType::F16, DType::Bf16],
        ops: ["ln", "rms", "lnb", "rmsb"].map(String::from).to_vec(),
        v: None,
        below: None,
        below_backward: None,
        recomputed: false,
        family: "navi21".into(),
        dump: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--dims" => {
                a.dims = value()
                    .split(',')
                    .map(|d| d.parse().expect("--dims"))
                    .collect()
            }
            "--dtypes" => {
                a.dtypes = value()
                    .split(',')
                    .map(|d| match d {
                        "f32" => DType::F32,
                        "f16" => DType::F16,
                        "bf16" => DType::Bf16,
                        _ => panic!("--dtypes: f32, f16 or bf16"),
                    })
                    .collect()
            }
            "--ops" => a.ops = value().split(',').map(String::from).collect(),
            "--v" => a.v = Some(value().parse().expect("--v")),
            "--below" => a.below = Some(value().parse().expect("--below")),
            "--below-backward" => {
                a.below_backward = Some(value().parse().expect("--below-backward"))
            }
            "--recomputed" => a.recomputed = true,
            "--family" => a.family = value(),
            "--dump" => a.dump = Some(value()),
            _ => panic!("unknown argument {flag} (see src/main.rs)"),
        }
    }
    a
}

fn t(bf: &wgpu::Buffer, len: u64) -> TensorRef<'_> {
    TensorRef::new(bf, 0, len)
}

fn noop_device() -> wgpu::Device {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::NOOP,
        backend_options: wgpu::BackendOptions {
            noop: wgpu::NoopBackendOptions::enabled(),
            ..Default::default()
        },
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
        .expect("wgpu's no-op adapter");
    pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .expect("no-op device")
    .0
}

/// The distinct variants of the four ops at one shape, in op order.
fn variants(
    caps: &Caps,
    device: &wgpu::Device,
    a: &Args,
    dtype: DType,
    dim: u32,
) -> Vec<(String, Variant)> {
    // Enough rows that nothing is split (the no-op backend allocates its buffers).
    let rows: u64 = if dim > 8192 { 256 } else { 1024 };
    let buf = |bytes: u64| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes.next_multiple_of(16),
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    let d = u64::from(dim);
    let act = dtype.size();
    let (x, y, dy, dx) = (
        buf(rows * d * act),
        buf(rows * d * act),
        buf(rows * d * act),
        buf(rows * d * act),
    );
    let (w, b) = (buf(d * act), buf(d * act));
    let (mean, rstd) = (buf(rows * 4), buf(rows * 4));
    let (dw, db) = (buf(d * 4), buf(d * 4));
    let (rows, dim) = (rows as usize, dim as usize);
    let (xt, yt) = (t(&x, rows as u64 * d * act), t(&y, rows as u64 * d * act));
    let (dyt, dxt) = (t(&dy, rows as u64 * d * act), t(&dx, rows as u64 * d * act));
    let (wt, bt) = (t(&w, d * act), t(&b, d * act));
    let (mt, rt) = (t(&mean, rows as u64 * 4), t(&rstd, rows as u64 * 4));
    let (dwt, dbt) = (t(&dw, d * 4), t(&db, d * 4));
    let mut out = Vec::new();
    let mut add = |op: &str, p: wgpu_norm::Result<wgpu_norm::Plan>| {
        let p = p.unwrap_or_else(|e| panic!("{op} {dtype} D = {dim}: {e}"));
        let mut seen = BTreeSet::new();
        for s in p.steps {
            if s.variant.kernel.reduces() && seen.insert(s.variant.label()) {
                out.push((op.to_string(), s.variant));
            }
        }
    };
    for op in &a.ops {
        match op.as_str() {
            "ln" => add(
                op,
                plan(
                    caps,
                    &LayerNorm::new(rows, dim, xt, yt)
                        .dtype(dtype)
                        .weight(wt)
                        .bias(bt)
                        .mean(mt)
                        .rstd(rt),
                ),
            ),
            "rms" => add(
                op,
                plan(
                    caps,
                    &RmsNorm::new(rows, dim, xt, yt)
                        .dtype(dtype)
                        .weight(wt)
                        .rrms(mt),
                ),
            ),
            "lnb" => {
                let mut o = LayerNormBackward::new(rows, dim, xt, dyt, dxt)
                    .dtype(dtype)
                    .weight(wt)
                    .grad_weight(dwt)
                    .grad_bias(dbt);
                if !a.recomputed {
                    o = o.saved(mt, rt);
                }
                add(op, plan(caps, &o))
            }
            "rmsb" => {
                let mut o = RmsNormBackward::new(rows, dim, xt, dyt, dxt)
                    .dtype(dtype)
                    .weight(wt)
                    .grad_weight(dwt);
                if !a.recomputed {
                    o = o.saved(mt);
                }
                add(op, plan(caps, &o))
            }
            other => panic!("unknown op {other} (ln, rms, lnb, rmsb)"),
        }
    }
    out
}

fn spirv(src: &str) -> Vec<u32> {
    let module =
        naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{}", e.emit_to_string(src)));
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .subgroup_stages(naga::valid::ShaderStages::all())
    .subgroup_operations(naga::valid::SubgroupOperationSet::all())
    .validate(&module)
    .unwrap_or_else(|e| panic!("{}", e.emit_to_string(src)));
    let options = naga::back::spv::Options {
        lang_version: (1, 3),
        flags: naga::back::spv::WriterFlags::empty(),
        ..Default::default()
    };
    let pipeline = naga::back::spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: "main".into(),
    };
    naga::back::spv::write_vec(&module, &info, &options, Some(&pipeline)).expect("SPIR-V")
}

/// RADV's null device, with pipeline statistics.
struct Radv {
    _entry: ash::Entry,
    device: ash::Device,
    stats: ash::khr::pipeline_executable_properties::Device,
}

impl Radv {
    fn new() -> Radv {
        // SAFETY (this whole tool): plain Vulkan calls on objects it created, in order, on one
        // thread; nothing is submitted.
        unsafe {
            let entry = ash::Entry::load().expect("the Vulkan loader (libvulkan1)");
            let app = vk::ApplicationInfo::default().api_version(vk::API_VERSION_1_3);
            let instance = entry
                .create_instance(
                    &vk::InstanceCreateInfo::default().application_info(&app),
                    None,
                )
                .expect("a Vulkan instance");
            let physical = instance
                .enumerate_physical_devices()
                .expect("physical devices")
                .into_iter()
                .find(|&p| {
                    let props = instance.get_physical_device_properties(p);
                    CStr::from_ptr(props.device_name.as_ptr())
                        .to_string_lossy()
                        .contains("RADV")
                })
                .expect("no RADV device: install mesa-vulkan-drivers");
            let priority = [1.0];
            let queues = [vk::DeviceQueueCreateInfo::default()
                .queue_family_index(0)
                .queue_priorities(&priority)];
            let extensions = [ash::khr::pipeline_executable_properties::NAME.as_ptr()];
            let mut executables =
                vk::PhysicalDevicePipelineExecutablePropertiesFeaturesKHR::default()
                    .pipeline_executable_info(true);
            let info = vk::DeviceCreateInfo::default()
                .queue_create_infos(&queues)
                .enabled_extension_names(&extensions)
                .push_next(&mut executables);
            let device = instance
                .create_device(physical, &info, None)
                .expect("RADV's null device");
            let stats = ash::khr::pipeline_executable_properties::Device::new(&instance, &device);
            Radv {
                _entry: entry,
                device,
                stats,
            }
        }
    }

    /// The compiler's statistics of a compute kernel, by name.
    fn compile(&self, words: &[u32], bindings: u32) -> Vec<(String, u64)> {
        unsafe {
            let d = &self.device;
            let module = d
                .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(words), None)
                .expect("shader module");
            // Binding 0 is the uniform params, the rest storage (every kernel's table).
            let layout: Vec<_> = (0..bindings)
                .map(|b| {
                    vk::DescriptorSetLayoutBinding::default()
                        .binding(b)
                        .descriptor_type(if b == 0 {
                            vk::DescriptorType::UNIFORM_BUFFER
                        } else {
                            vk::DescriptorType::STORAGE_BUFFER
                        })
                        .descriptor_count(1)
                        .stage_flags(vk::ShaderStageFlags::COMPUTE)
                })
                .collect();
            let set = d
                .create_descriptor_set_layout(
                    &vk::DescriptorSetLayoutCreateInfo::default().bindings(&layout),
                    None,
                )
                .expect("set layout");
            let sets = [set];
            let pipeline_layout = d
                .create_pipeline_layout(
                    &vk::PipelineLayoutCreateInfo::default().set_layouts(&sets),
                    None,
                )
                .expect("pipeline layout");
            let stage = vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(module)
                .name(c"main");
            let info = [vk::ComputePipelineCreateInfo::default()
                .stage(stage)
                .layout(pipeline_layout)
                .flags(vk::PipelineCreateFlags::CAPTURE_STATISTICS_KHR)];
            let pipeline = d
                .create_compute_pipelines(vk::PipelineCache::null(), &info, None)
                .expect("pipeline")[0];
            let exec = vk::PipelineExecutableInfoKHR::default()
                .pipeline(pipeline)
                .executable_index(0);
            let stats = self
                .stats
                .get_pipeline_executable_statistics(&exec)
                .expect("statistics");
            let out = stats
                .iter()
                .map(|s| {
                    (
                        CStr::from_ptr(s.name.as_ptr())
                            .to_string_lossy()
                            .into_owned(),
                        s.value.u64,
                    )
                })
                .collect();
            d.destroy_pipeline(pipeline, None);
            d.destroy_pipeline_layout(pipeline_layout, None);
            d.destroy_descriptor_set_layout(set, None);
            d.destroy_shader_module(module, None);
            out
        }
    }
}

fn main() {
    let a = args();
    // Before the loader and the driver read them.
    let set = |k: &str, v: &str| {
        if std::env::var_os(k).is_none() {
            std::env::set_var(k, v);
        }
    };
    set(
        "VK_ICD_FILENAMES",
        "/usr/share/vulkan/icd.d/radeon_icd.x86_64.json",
    );
    // --family wins over an inherited RADV_FORCE_FAMILY; compute in 32-lane waves, as NVIDIA's
    // warps, whatever else RADV_PERFTEST holds.
    std::env::set_var("RADV_FORCE_FAMILY", &a.family);
    let mut perftest: Vec<String> = std::env::var("RADV_PERFTEST")
        .unwrap_or_default()
        .split(',')
        .filter(|o| !o.is_empty() && *o != "cswave32")
        .map(String::from)
        .collect();
    perftest.push("cswave32".into());
    std::env::set_var("RADV_PERFTEST", perftest.join(","));
    let device = noop_device();
    let big = wgpu::Limits {
        max_storage_buffer_binding_size: 2 << 30,
        max_buffer_size: 2 << 30,
        max_compute_invocations_per_workgroup: 1024,
        max_compute_workgroup_size_x: 1024,
        ..wgpu::Limits::default()
    };
    let mut options = NormsOptions::default();
    if let Some(v) = a.v {
        options.tuning = Tuning::default().with_v_per_invocation(v);
    }
    if let Some(below) = a.below {
        options.tuning.side_by_side_below = below;
    }
    if let Some(below) = a.below_backward {
        options.tuning.side_by_side_below_backward = below;
    }
    let caps = Caps::new(&big, wgpu::Features::SUBGROUP, options).expect("caps");
    let radv = Radv::new();
    println!(
        "# RADV {} (wave32), wgpu-norm {} kernels, {:?}",
        a.family,
        if a.recomputed {
            "backward recomputing statistics"
        } else {
            "backward from saved statistics"
        },
        caps.tuning
    );
    println!(
        "{:<5} {:<5} {:>6} {:>6} {:>6} {:>6} {:>6}  variant",
        "op", "dtype", "D", "VGPRs", "spill", "waves", "instr"
    );
    for &dtype in &a.dtypes {
        for &dim in &a.dims {
            for (op, v) in variants(&caps, &device, &a, dtype, dim) {
                let src = v.source();
                if let Some(dir) = &a.dump {
                    std::fs::create_dir_all(dir).expect("--dump");
                    std::fs::write(format!("{dir}/{op}-{dtype}-{dim}.wgsl"), &src).expect("--dump");
                }
                let s = radv.compile(&spirv(&src), 1 + v.kernel.def().slots.len() as u32);
                let get = |name: &str| {
                    s.iter()
                        .find(|(n, _)| n == name)
                        .map_or("?".to_string(), |(_, v)| v.to_string())
                };
                println!(
                    "{:<5} {:<5} {:>6} {:>6} {:>6} {:>6} {:>6}  {}",
                    op,
                    dtype.to_string(),
                    dim,
                    get("VGPRs"),
                    get("Spilled VGPRs"),
                    get("Subgroups per SIMD"),
                    get("Instructions"),
                    v.label().trim_start_matches("wgpu-norm ")
                );
            }
        }
    }
}
