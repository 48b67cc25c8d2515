//! What every benchmark sets up the same way.

use wgpu_norm::Gpu;
use wgpu_norm::timing::Timer;

/// The adapter, its timer, and the size of x in MiB: `WGPU_NORM_BENCH_MIB`, else 8 on a CPU
/// adapter (so `cargo bench` on lavapipe ends in minutes) and 256 on a GPU.
pub struct Bench {
    pub gpu: Gpu,
    pub timer: Timer,
    pub mib: usize,
    pub cpu: bool,
}

impl Bench {
    pub fn new() -> Self {
        let gpu = Gpu::new().unwrap_or_else(|e| panic!("{e}"));
        let cpu = gpu.adapter.get_info().device_type == wgpu::DeviceType::Cpu;
        let mib = std::env::var("WGPU_NORM_BENCH_MIB")
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
        Bench {
            gpu,
            timer,
            mib,
            cpu,
        }
    }

    /// Short runs on a CPU adapter.
    pub fn configure<M: criterion::measurement::Measurement>(
        &self,
        group: &mut criterion::BenchmarkGroup<'_, M>,
    ) {
        if self.cpu {
            group.sample_size(10);
            group.warm_up_time(std::time::Duration::from_millis(500));
            group.measurement_time(std::time::Duration::from_secs(2));
        }
    }

    /// Benchmarks `record` as `name`, timed by the GPU where it can be.
    pub fn run<M: criterion::measurement::Measurement<Value = std::time::Duration>>(
        &self,
        group: &mut criterion::BenchmarkGroup<'_, M>,
        name: &str,
        record: &dyn Fn(&mut wgpu::CommandEncoder) -> wgpu_norm::Result<()>,
    ) {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| self.timer.time(iters as u32, record).expect("timed run"))
        });
    }
}

/// A fixed pattern of `n` activations in [-0.3, 0.7).
pub fn activations(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.3)
        .collect()
}

/// A second fixed pattern (gradients, a residual), in [-0.5, 0.5).
pub fn gradients(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 104729) % 997) as f32 * 1e-3 - 0.5)
        .collect()
}
