//! Forward LayerNorm and RMSNorm against a WGSL copy of the same bytes.
//!
//! Throughput counts the bytes the op must move, x read + y written, in decimal units (GB/s,
//! as PyTorch's figures in BENCHMARKS.md). Times are GPU timestamps
//! around the recorded launches where the adapter has them (wall clock otherwise; the first
//! line printed says which). `WGPU_NORM_BENCH_MIB` sets the size of x (default: 8 MiB on a
//! CPU adapter such as lavapipe, so `cargo bench` ends in minutes; 256 MiB on a GPU).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wgpu_norm::timing::Timer;
use wgpu_norm::{DType, EpsPlacement, Gpu, LayerNorm, RmsNorm, RoundingOrder, TensorRef};

const DIMS: [usize; 3] = [1024, 4096, 8192];

fn forward(c: &mut Criterion) {
    let gpu = Gpu::new().unwrap_or_else(|e| panic!("{e}"));
    let info = gpu.adapter.get_info();
    let cpu = info.device_type == wgpu::DeviceType::Cpu;
    let mib: usize = std::env::var("WGPU_NORM_BENCH_MIB")
        .ok()
        .map(|v| {
            v.parse()
                .expect("WGPU_NORM_BENCH_MIB must be a whole number")
        })
        .unwrap_or(if cpu { 8 } else { 256 });
    let timer = Timer::new(&gpu.device, &gpu.queue);
    eprintln!(
        "adapter: {} | clock: {:?} | subgroups: {} | x = {mib} MiB",
        gpu.describe(),
        timer.clock(),
        gpu.norms.uses_subgroups()
    );
    for dim in DIMS {
        let rows = (mib << 20) / 4 / dim;
        let n = rows * dim;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.3)
            .collect();
        let xb = gpu.upload("bench x", &x);
        let yb = gpu.storage("bench y", n);
        let wb = gpu.upload("bench weight", &vec![1.5; dim]);
        let bb = gpu.upload("bench bias", &vec![0.25; dim]);
        let mut group = c.benchmark_group(format!("forward/D={dim}"));
        group.throughput(Throughput::BytesDecimal((2 * n * 4) as u64));
        if cpu {
            group.sample_size(10);
            group.warm_up_time(std::time::Duration::from_millis(500));
            group.measurement_time(std::time::Duration::from_secs(2));
        }
        let mut bench =
            |name: &str, record: &dyn Fn(&mut wgpu::CommandEncoder) -> wgpu_norm::Result<()>| {
                group.bench_function(name, |b| {
                    b.iter_custom(|iters| {
                        timer.time(iters as u32, |e| record(e)).expect("timed run")
                    })
                });
            };
        bench("copy", &|e| gpu.norms.copy(e, rows, dim, &xb, &yb));
        bench("layer_norm", &|e| {
            let op = LayerNorm::new(rows, dim, &xb, &yb).weight(&wb).bias(&bb);
            gpu.norms.layer_norm(e, &op)
        });
        bench("rms_norm", &|e| {
            let op = RmsNorm::new(rows, dim, &xb, &yb).weight(&wb);
            gpu.norms.rms_norm(e, &op)
        });
        group.finish();
    }
}

/// Every storage type and option of the forward kernels at one D, each with the copy of the
/// same bytes: GB/s counts every tensor the variant must read and write at its storage size.
fn variants(c: &mut Criterion) {
    let gpu = Gpu::new().unwrap_or_else(|e| panic!("{e}"));
    let cpu = gpu.adapter.get_info().device_type == wgpu::DeviceType::Cpu;
    let mib: usize = std::env::var("WGPU_NORM_BENCH_MIB")
        .ok()
        .map(|v| {
            v.parse()
                .expect("WGPU_NORM_BENCH_MIB must be a whole number")
        })
        .unwrap_or(if cpu { 8 } else { 256 });
    let timer = Timer::new(&gpu.device, &gpu.queue);
    let dim = 4096;
    let rows = (mib << 20) / 4 / dim;
    let n = rows * dim;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.3)
        .collect();
    let r: Vec<f32> = (0..n)
        .map(|i| ((i * 104729) % 997) as f32 * 1e-3 - 0.5)
        .collect();
    let w: Vec<f32> = (0..dim).map(|i| 1.0 + (i % 7) as f32 * 0.1).collect();
    // Each tensor in each storage type, as raw bytes in f32-sized words.
    let stored = |label: &str, d: DType, v: &[f32]| {
        let bytes = d.encode(v);
        let words: Vec<f32> = bytes
            .chunks(4)
            .map(|b| {
                f32::from_le_bytes([b[0], b[1], *b.get(2).unwrap_or(&0), *b.get(3).unwrap_or(&0)])
            })
            .collect();
        gpu.upload(label, &words)
    };
    let mut group = c.benchmark_group(format!("forward variants/D={dim}"));
    if cpu {
        group.sample_size(10);
        group.warm_up_time(std::time::Duration::from_millis(500));
        group.measurement_time(std::time::Duration::from_secs(2));
    }
    for d in [DType::F32, DType::F16, DType::Bf16] {
        let bytes = n as u64 * d.size();
        let t = |b| TensorRef::new(b, 0, bytes);
        let (xb, rb) = (stored("x", d, &x), stored("residual", d, &r));
        let (yb, sb) = (stored("y", d, &x), stored("s", d, &x));
        let wd = stored("weight", d, &w);
        let w32 = stored("weight f32", DType::F32, &w);
        let mut bench =
            |name: &str,
             tensors: u64,
             record: &dyn Fn(&mut wgpu::CommandEncoder) -> wgpu_norm::Result<()>| {
                group.throughput(Throughput::BytesDecimal(tensors * bytes));
                group.bench_function(format!("{name} {d}"), |b| {
                    b.iter_custom(|iters| timer.time(iters as u32, record).expect("timed run"))
                });
            };
        let words = (bytes / 4) as usize;
        bench("copy", 2, &|e| gpu.norms.copy(e, 1, words, &xb, &yb));
        let ln = LayerNorm::new(rows, dim, t(&xb), t(&yb))
            .dtype(d)
            .weight(&wd);
        bench("layer_norm", 2, &|e| gpu.norms.layer_norm(e, &ln));
        let rms = RmsNorm::new(rows, dim, t(&xb), t(&yb)).dtype(d).weight(&wd);
        bench("rms_norm", 2, &|e| gpu.norms.rms_norm(e, &rms));
        let fused = rms.residual(t(&rb)).residual_out(t(&sb));
        bench("rms_norm + residual", 4, &|e| gpu.norms.rms_norm(e, &fused));
        let fused_ln = ln.residual(t(&rb)).residual_out(t(&sb));
        bench("layer_norm + residual", 4, &|e| {
            gpu.norms.layer_norm(e, &fused_ln)
        });
        let gemma = rms.gemma_offset(true);
        bench("rms_norm gemma offset", 2, &|e| {
            gpu.norms.rms_norm(e, &gemma)
        });
        let prms = rms.partial(0.0625);
        bench("prms_norm p=0.0625", 2, &|e| gpu.norms.rms_norm(e, &prms));
        let outside = ln.eps_placement(EpsPlacement::AddedToStd);
        bench("layer_norm eps on std", 2, &|e| {
            gpu.norms.layer_norm(e, &outside)
        });
        if d != DType::F32 {
            let mixed = RmsNorm::new(rows, dim, t(&xb), t(&yb))
                .dtype(d)
                .param_dtype(DType::F32)
                .weight(&w32);
            bench("rms_norm f32 weight", 2, &|e| gpu.norms.rms_norm(e, &mixed));
            let llama = rms.rounding(RoundingOrder::Llama);
            bench("rms_norm llama order", 2, &|e| {
                gpu.norms.rms_norm(e, &llama)
            });
        }
    }
    group.finish();
}

criterion_group!(benches, forward, variants);
criterion_main!(benches);
