//! Forward LayerNorm and RMSNorm against a WGSL copy of the same bytes.
//!
//! Throughput counts the bytes the op must move, x read + y written, in decimal units (GB/s,
//! as PyTorch's figures in BENCHMARKS.md). Times are GPU timestamps
//! around the recorded launches where the adapter has them (wall clock otherwise; the first
//! line printed says which). `WGPU_NORM_BENCH_MIB` sets the size of x (default: 8 MiB on a
//! CPU adapter such as lavapipe, so `cargo bench` ends in minutes; 256 MiB on a GPU).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wgpu_norm::timing::Timer;
use wgpu_norm::{Gpu, LayerNorm, RmsNorm};

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

criterion_group!(benches, forward);
criterion_main!(benches);
