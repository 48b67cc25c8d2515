//! CPU cost of recording one op into a command encoder (no GPU time: nothing is submitted).
//!
//! Next to the crate's calls, two hand-written wgpu dispatches measured in the same run:
//! - `wgpu floor`: one pipeline, one bind group made once and reused: a compute pass, set
//!   pipeline, set bind group, dispatch. No library can record a dispatch for less.
//! - `wgpu per call`: what a hand-written op that does not cache costs: a uniform buffer
//!   and a bind group created per call, then the same pass.
//!
//! Shape 1 x 4096 f32, a decode step's norm. Ops are recorded in batches of `BATCH` into one
//! encoder; finishing and dropping the encoder and polling the device (which frees what the
//! calls created) happen outside the timed part.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use wgpu::util::DeviceExt;
use wgpu_norm::{Gpu, LayerNorm, Norms, Prepared, Result, RmsNorm, RmsNormBackward};

const DIM: usize = 4096;
const BATCH: u64 = 500;

/// A shader with the forward LayerNorm's binding shape: one uniform, eight storage buffers
/// (x, y, weight, bias, mean, rstd, residual, residual out), so that bind groups cost alike.
const BASELINE: &str = "
struct P { n: u32, a: u32, b: u32, c: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read> b: array<f32>;
@group(0) @binding(5) var<storage, read_write> m: array<f32>;
@group(0) @binding(6) var<storage, read_write> r: array<f32>;
@group(0) @binding(7) var<storage, read> s: array<f32>;
@group(0) @binding(8) var<storage, read_write> t: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if id.x < p.n { y[id.x] = x[id.x] * w[id.x] + b[id.x] + s[id.x]; }
    if id.x == 0u { m[0] = 0.0; r[0] = 1.0; t[0] = 2.0; }
}
";

/// One buffer per binding of [`BASELINE`].
const BASELINE_BINDINGS: u32 = 8;

struct Baseline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    bind_group: wgpu::BindGroup,
}

impl Baseline {
    fn new(gpu: &Gpu, buffers: &[wgpu::Buffer]) -> Self {
        let device = &gpu.device;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("host baseline"),
            source: wgpu::ShaderSource::Wgsl(BASELINE.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("host baseline"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let layout = pipeline.get_bind_group_layout(0);
        let uniform = uniform(device);
        let bind_group = bind_group(device, &layout, &uniform, buffers);
        Baseline {
            pipeline,
            layout,
            bind_group,
        }
    }

    fn dispatch(&self, encoder: &mut wgpu::CommandEncoder, bind_group: &wgpu::BindGroup) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("host baseline"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(DIM as u32 / 64, 1, 1);
    }
}

fn uniform(device: &wgpu::Device) -> wgpu::Buffer {
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("host baseline params"),
        contents: bytemuck::cast_slice(&[DIM as u32, 0, 0, 0]),
        usage: wgpu::BufferUsages::UNIFORM,
    })
}

fn bind_group(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    uniform: &wgpu::Buffer,
    buffers: &[wgpu::Buffer],
) -> wgpu::BindGroup {
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: uniform.as_entire_binding(),
    }];
    entries.extend((1..).zip(buffers).map(|(binding, b)| wgpu::BindGroupEntry {
        binding,
        resource: b.as_entire_binding(),
    }));
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("host baseline"),
        layout,
        entries: &entries,
    })
}

/// Times `record` over `iters` calls, in batches of [`BATCH`] per encoder.
fn time_recording(gpu: &Gpu, iters: u64, record: &dyn Fn(&mut wgpu::CommandEncoder)) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(BATCH);
        left -= n;
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let start = Instant::now();
        for _ in 0..n {
            record(&mut encoder);
        }
        total += start.elapsed();
        drop(encoder.finish());
        gpu.device.poll(wgpu::PollType::Poll).ok();
    }
    total
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;
type Prepare<'a> = &'a dyn Fn(&Norms) -> Result<Prepared>;
type Record<'a> = &'a dyn Fn(&mut wgpu::CommandEncoder) -> Result<()>;

fn host(c: &mut Criterion) {
    let gpu = Gpu::new().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("adapter: {}", gpu.describe());
    let storage = |label| gpu.storage(label, DIM);
    let (x, y, w, dy, dx, dw) = (
        storage("x"),
        storage("y"),
        storage("w"),
        storage("dy"),
        storage("dx"),
        storage("dw"),
    );
    let stats = gpu.storage("stats", 2);
    let (mean, rstd) = (
        wgpu_norm::TensorRef::new(&stats, 0, 4),
        wgpu_norm::TensorRef::new(&stats, 4, 4),
    );
    let own: Vec<wgpu::Buffer> = (0..BASELINE_BINDINGS)
        .map(|_| storage("baseline"))
        .collect();
    let baseline = Baseline::new(&gpu, &own);

    let norms = &gpu.norms;
    let mut group = c.benchmark_group("host/1x4096");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    let rms = RmsNorm::new(1, DIM, &x, &y).weight(&w);
    let ln = LayerNorm::new(1, DIM, &x, &y)
        .weight(&w)
        .mean(mean)
        .rstd(rstd);
    let bwd = RmsNormBackward::new(1, DIM, &x, &dy, &dx)
        .weight(&w)
        .saved(rstd)
        .grad_weight(&dw);
    let ops: [(&str, Prepare); 3] = [
        ("rms_norm", &|n| n.prepare(&rms)),
        ("layer_norm with mean/rstd", &|n| n.prepare(&ln)),
        ("rms_norm_backward with dweight", &|n| n.prepare(&bwd)),
    ];
    // Reused objects first: wgpu's own bookkeeping grows after many objects are created and
    // freed, which slows later recording of every kind (the floor measured again at the end
    // shows by how much), so each pair is measured in the same state.
    let floor = |group: &mut Group, name: &str| {
        group.bench_function(name, |b| {
            b.iter_custom(|n| {
                time_recording(&gpu, n, &|e| baseline.dispatch(e, &baseline.bind_group))
            })
        });
    };
    floor(&mut group, "wgpu floor");
    for (name, prepare) in &ops {
        let prepared = prepare(norms).unwrap();
        group.bench_function(format!("{name} prepared"), |b| {
            b.iter_custom(|n| time_recording(&gpu, n, &|e| prepared.record(e)))
        });
    }
    group.bench_function("wgpu per call", |b| {
        b.iter_custom(|n| {
            time_recording(&gpu, n, &|e| {
                let u = uniform(&gpu.device);
                let bg = bind_group(&gpu.device, &baseline.layout, &u, &own);
                baseline.dispatch(e, &bg)
            })
        })
    });
    let unprepared: [(&str, Record); 3] = [
        ("rms_norm", &|e| norms.record(e, &rms)),
        ("layer_norm with mean/rstd", &|e| norms.record(e, &ln)),
        ("rms_norm_backward with dweight", &|e| norms.record(e, &bwd)),
    ];
    for (name, record) in unprepared {
        group.bench_function(name, |b| {
            b.iter_custom(|n| time_recording(&gpu, n, &|e| record(e).unwrap()))
        });
    }
    floor(&mut group, "wgpu floor, after the per-call runs");
    group.finish();
}

criterion_group!(benches, host);
criterion_main!(benches);
