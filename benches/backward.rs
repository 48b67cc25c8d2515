//! LayerNorm and RMSNorm backward against a WGSL copy of the same bytes.
//!
//! Throughput counts the bytes the op must move: x and dy read, dx written (the copy moves
//! its own x read + y written, and is reported as usual). dweight (and dbias) are computed
//! too, from saved statistics, as a training step would. Decimal units (GB/s). GPU
//! timestamps where the adapter has them. `WGPU_NORM_BENCH_MIB` sets the size of x (default:
//! 8 MiB on a CPU adapter, 256 MiB on a GPU).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wgpu_norm::timing::Timer;
use wgpu_norm::{Gpu, LayerNormBackward, RmsNormBackward};

const DIMS: [usize; 3] = [1024, 4096, 8192];

fn backward(c: &mut Criterion) {
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
        let dy: Vec<f32> = (0..n)
            .map(|i| ((i * 104729) % 997) as f32 * 1e-3 - 0.5)
            .collect();
        let xb = gpu.upload("bench x", &x);
        let dyb = gpu.upload("bench dy", &dy);
        let dxb = gpu.storage("bench dx", n);
        let wb = gpu.upload("bench weight", &vec![1.5; dim]);
        let mean = gpu.upload("bench mean", &vec![0.2; rows]);
        let rstd = gpu.upload("bench rstd", &vec![3.4; rows]);
        let dw = gpu.storage("bench dweight", dim);
        let db = gpu.storage("bench dbias", dim);
        let mut group = c.benchmark_group(format!("backward/D={dim}"));
        if cpu {
            group.sample_size(10);
            group.warm_up_time(std::time::Duration::from_millis(500));
            group.measurement_time(std::time::Duration::from_secs(2));
        }
        let mut bench =
            |name: &str,
             bytes: usize,
             record: &dyn Fn(&mut wgpu::CommandEncoder) -> wgpu_norm::Result<()>| {
                group.throughput(Throughput::BytesDecimal(bytes as u64));
                group.bench_function(name, |b| {
                    b.iter_custom(|iters| timer.time(iters as u32, record).expect("timed run"))
                });
            };
        bench("copy", 2 * n * 4, &|e| {
            gpu.norms.copy(e, rows, dim, &xb, &dxb)
        });
        bench("layer_norm_backward", 3 * n * 4, &|e| {
            let op = LayerNormBackward::new(rows, dim, &xb, &dyb, &dxb)
                .weight(&wb)
                .saved(&mean, &rstd)
                .grad_weight(&dw)
                .grad_bias(&db);
            gpu.norms.layer_norm_backward(e, &op)
        });
        bench("rms_norm_backward", 3 * n * 4, &|e| {
            let op = RmsNormBackward::new(rows, dim, &xb, &dyb, &dxb)
                .weight(&wb)
                .saved(&rstd)
                .grad_weight(&dw);
            gpu.norms.rms_norm_backward(e, &op)
        });
        group.finish();
    }
}

criterion_group!(benches, backward);
criterion_main!(benches);
