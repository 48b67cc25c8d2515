//! burn-nn's LayerNorm and RmsNorm against this crate's fused kernels through burn
//! (`wgpu_norm::burn`), on the same burn wgpu device in the same run: forward, and forward +
//! backward under burn's autodiff.
//!
//! Wall-clock time of `iters` ops followed by one `device.sync()`: burn submits its own work,
//! so there are no GPU timestamps around it; the fused path's host cost (asking burn for the
//! buffers) is included, as a model pays it. Throughput counts x read + y written (forward),
//! plus dy read and dx written (backward), in decimal GB/s. `WGPU_NORM_BENCH_MIB` sets the size
//! of x (default 8 MiB on a CPU adapter, 256 MiB on a GPU).
//!
//!     cargo bench --features burn --bench burn
//!
//! `WGPU_NORM_BENCH_AUTOTUNE=1` runs this crate's kernels with the launch shape the autotune
//! chooses for the adapter (the default shape otherwise). `WGPU_NORM_BENCH_DIMS=128,4097,...`
//! replaces the default D's (issue 12's grid: 128,256,512,1024,2048,4096,4097,5120,6912,8192,
//! 16384,32768).

use std::time::{Duration, Instant};

use burn::nn::{LayerNormConfig, RmsNormConfig};
use burn::tensor::{Device, Distribution, Tensor};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wgpu_norm::burn::FusedNormConfig;

const DIMS: [usize; 3] = [1024, 4096, 8192];

/// The D's to time: `WGPU_NORM_BENCH_DIMS` (comma-separated), else [`DIMS`].
fn dims() -> Vec<usize> {
    match std::env::var("WGPU_NORM_BENCH_DIMS") {
        Ok(v) => v
            .split(',')
            .map(|d| {
                d.trim()
                    .parse()
                    .ok()
                    .filter(|&d| d > 0)
                    .unwrap_or_else(|| panic!("WGPU_NORM_BENCH_DIMS: {d:?} is not a D above 0"))
            })
            .collect(),
        Err(_) => DIMS.to_vec(),
    }
}

fn time(device: &Device, iters: u64, op: &dyn Fn()) -> Duration {
    device.sync().expect("sync");
    let start = Instant::now();
    for _ in 0..iters {
        op();
    }
    device.sync().expect("sync");
    start.elapsed()
}

/// A group counting `bytes` per op; short runs on a CPU adapter.
fn new_group(
    c: &mut Criterion,
    name: String,
    bytes: u64,
    cpu: bool,
) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::BytesDecimal(bytes));
    if cpu {
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(3));
    }
    group
}

/// burn's default wgpu device with this crate's kernels registered on it: with the launch
/// shape the autotune chooses for the adapter when `WGPU_NORM_BENCH_AUTOTUNE=1` (cached as
/// `wgpu_norm::tune::tuning_for` caches it), else the default.
fn device() -> Device {
    let (device, setup) = Device::wgpu_options()
        .init_with_setup()
        .unwrap_or_else(|e| panic!("starting burn's wgpu runtime: {e}"));
    let mut options = wgpu_norm::NormsOptions::default();
    if std::env::var("WGPU_NORM_BENCH_AUTOTUNE").is_ok_and(|v| v == "1") {
        let tuned = wgpu_norm::tune::tuning_for(&setup.device, &setup.queue, options)
            .unwrap_or_else(|e| panic!("autotune: {e}"));
        eprintln!("autotune: {:?}", tuned.tuning);
        options.tuning = tuned.tuning;
    }
    wgpu_norm::burn::register_with(&device, &setup, options).unwrap_or_else(|e| panic!("{e}"));
    device
}

fn burn_norms(c: &mut Criterion) {
    let device = device();
    let info = wgpu_norm::burn::adapter_info(&device).expect("registered");
    let cpu = info.device_type == wgpu::DeviceType::Cpu;
    let mib: usize = std::env::var("WGPU_NORM_BENCH_MIB")
        .ok()
        .map(|v| {
            v.parse()
                .expect("WGPU_NORM_BENCH_MIB must be a whole number")
        })
        .unwrap_or(if cpu { 8 } else { 256 });
    eprintln!(
        "adapter: {} | {:?} | {:?} | clock: wall (burn submits its own work) | x = {mib} MiB",
        info.name, info.backend, info.device_type
    );
    let ad = device.clone().autodiff();
    for dim in dims() {
        let rows = (mib << 20) / 4 / dim;
        let bytes = (rows * dim * 4) as u64;
        let x = Tensor::<2>::random([rows, dim], Distribution::Default, &device);
        let (nn_ln, nn_rms) = (
            LayerNormConfig::new(dim).init(&device),
            RmsNormConfig::new(dim).init(&device),
        );
        let (ln, rms) = (
            LayerNormConfig::new(dim).init_fused(&device),
            RmsNormConfig::new(dim).init_fused(&device),
        );
        let mut group = new_group(c, format!("burn forward/D={dim}"), 2 * bytes, cpu);
        let run = |group: &mut criterion::BenchmarkGroup<'_, _>, name: &str, op: &dyn Fn()| {
            group.bench_function(name, |b| b.iter_custom(|iters| time(&device, iters, op)));
        };
        run(&mut group, "burn-nn LayerNorm", &|| {
            drop(nn_ln.forward(x.clone()))
        });
        run(&mut group, "wgpu-norm LayerNorm", &|| {
            drop(ln.forward(x.clone()))
        });
        run(&mut group, "burn-nn RmsNorm", &|| {
            drop(nn_rms.forward(x.clone()))
        });
        run(&mut group, "wgpu-norm RmsNorm", &|| {
            drop(rms.forward(x.clone()))
        });
        group.finish();

        // Forward + backward: loss = sum(y * w), gradients of x and γ (β).
        let xa = Tensor::<2>::from_data(x.clone().into_data(), &ad).require_grad();
        let w = Tensor::<2>::random([rows, dim], Distribution::Default, &ad);
        let (nn_ln, nn_rms) = (
            LayerNormConfig::new(dim).init(&ad),
            RmsNormConfig::new(dim).init(&ad),
        );
        let (ln, rms) = (
            LayerNormConfig::new(dim).init_fused(&ad),
            RmsNormConfig::new(dim).init_fused(&ad),
        );
        // Forward (x, y) and backward (x, dy, dx): the least any implementation moves.
        let mut group = new_group(c, format!("burn forward+backward/D={dim}"), 5 * bytes, cpu);
        let step = |y: Tensor<2>| drop((y * w.clone()).sum().backward());
        let run = |group: &mut criterion::BenchmarkGroup<'_, _>, name: &str, op: &dyn Fn()| {
            group.bench_function(name, |b| b.iter_custom(|iters| time(&ad, iters, op)));
        };
        run(&mut group, "burn-nn LayerNorm", &|| {
            step(nn_ln.forward(xa.clone()))
        });
        run(&mut group, "wgpu-norm LayerNorm", &|| {
            step(ln.forward(xa.clone()))
        });
        run(&mut group, "burn-nn RmsNorm", &|| {
            step(nn_rms.forward(xa.clone()))
        });
        run(&mut group, "wgpu-norm RmsNorm", &|| {
            step(rms.forward(xa.clone()))
        });
        group.finish();
    }
}

criterion_group!(benches, burn_norms);
criterion_main!(benches);
