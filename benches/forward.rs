//! Forward LayerNorm and RMSNorm against a WGSL copy of the same bytes.
//!
//! Throughput counts the bytes the op must move, x read + y written, in decimal units (GB/s,
//! as PyTorch's figures in BENCHMARKS.md). Times are GPU timestamps around the recorded
//! launches where the adapter has them (wall clock otherwise; the first line printed says
//! which). `WGPU_NORM_BENCH_MIB` sets the size of x (default: 8 MiB on a CPU adapter such as
//! lavapipe, so `cargo bench` ends in minutes; 256 MiB on a GPU).

mod common;

use common::Bench;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wgpu_norm::{DType, EpsPlacement, LayerNorm, RmsNorm, RoundingOrder, TensorRef};

const DIMS: [usize; 3] = [1024, 4096, 8192];

fn forward(c: &mut Criterion) {
    let bench = Bench::new();
    let gpu = &bench.gpu;
    for dim in DIMS {
        let rows = (bench.mib << 20) / 4 / dim;
        let n = rows * dim;
        let x = common::activations(n);
        let xb = gpu.upload("bench x", &x);
        let yb = gpu.storage("bench y", n);
        let wb = gpu.upload("bench weight", &vec![1.5; dim]);
        let bb = gpu.upload("bench bias", &vec![0.25; dim]);
        let mut group = c.benchmark_group(format!("forward/D={dim}"));
        group.throughput(Throughput::BytesDecimal((2 * n * 4) as u64));
        bench.configure(&mut group);
        bench.run(&mut group, "copy", &|e| {
            gpu.norms.copy(e, rows, dim, &xb, &yb)
        });
        let ln = LayerNorm::new(rows, dim, &xb, &yb).weight(&wb).bias(&bb);
        bench.run(&mut group, "layer_norm", &|e| gpu.norms.layer_norm(e, &ln));
        let rms = RmsNorm::new(rows, dim, &xb, &yb).weight(&wb);
        bench.run(&mut group, "rms_norm", &|e| gpu.norms.rms_norm(e, &rms));
        group.finish();
    }
}

/// Every storage type and option of the forward kernels at one D, each with the copy of the
/// same bytes: GB/s counts every tensor the variant must read and write at its storage size.
fn variants(c: &mut Criterion) {
    let bench = Bench::new();
    let gpu = &bench.gpu;
    let dim = 4096;
    let rows = (bench.mib << 20) / 4 / dim;
    let n = rows * dim;
    let x = common::activations(n);
    let r = common::gradients(n);
    let w: Vec<f32> = (0..dim).map(|i| 1.0 + (i % 7) as f32 * 0.1).collect();
    let mut group = c.benchmark_group(format!("forward variants/D={dim}"));
    bench.configure(&mut group);
    for d in [DType::F32, DType::F16, DType::Bf16] {
        let bytes = n as u64 * d.size();
        let t = |b| TensorRef::new(b, 0, bytes);
        let (xb, rb) = (gpu.upload_as("x", &x, d), gpu.upload_as("residual", &r, d));
        let (yb, sb) = (gpu.upload_as("y", &x, d), gpu.upload_as("s", &x, d));
        let wd = gpu.upload_as("weight", &w, d);
        let w32 = gpu.upload("weight f32", &w);
        let mut run =
            |name: &str,
             tensors: u64,
             record: &dyn Fn(&mut wgpu::CommandEncoder) -> wgpu_norm::Result<()>| {
                group.throughput(Throughput::BytesDecimal(tensors * bytes));
                bench.run(&mut group, &format!("{name} {d}"), record);
            };
        let words = (bytes / 4) as usize;
        run("copy", 2, &|e| gpu.norms.copy(e, 1, words, &xb, &yb));
        let ln = LayerNorm::new(rows, dim, t(&xb), t(&yb))
            .dtype(d)
            .weight(&wd);
        run("layer_norm", 2, &|e| gpu.norms.layer_norm(e, &ln));
        let rms = RmsNorm::new(rows, dim, t(&xb), t(&yb)).dtype(d).weight(&wd);
        run("rms_norm", 2, &|e| gpu.norms.rms_norm(e, &rms));
        let fused = rms.clone().residual(t(&rb)).residual_out(t(&sb));
        run("rms_norm + residual", 4, &|e| gpu.norms.rms_norm(e, &fused));
        let fused_ln = ln.clone().residual(t(&rb)).residual_out(t(&sb));
        run("layer_norm + residual", 4, &|e| {
            gpu.norms.layer_norm(e, &fused_ln)
        });
        let gemma = rms.clone().gemma_offset(true);
        run("rms_norm gemma offset", 2, &|e| {
            gpu.norms.rms_norm(e, &gemma)
        });
        let prms = rms.clone().partial(0.0625);
        run("prms_norm p=0.0625", 2, &|e| gpu.norms.rms_norm(e, &prms));
        let outside = ln.clone().eps_placement(EpsPlacement::AddedToStd);
        run("layer_norm eps on std", 2, &|e| {
            gpu.norms.layer_norm(e, &outside)
        });
        if d != DType::F32 {
            let mixed = RmsNorm::new(rows, dim, t(&xb), t(&yb))
                .dtype(d)
                .param_dtype(DType::F32)
                .weight(&w32);
            run("rms_norm f32 weight", 2, &|e| gpu.norms.rms_norm(e, &mixed));
            let llama = rms.rounding(RoundingOrder::Llama);
            run("rms_norm llama order", 2, &|e| {
                gpu.norms.rms_norm(e, &llama)
            });
        }
    }
    group.finish();
}

criterion_group!(benches, forward, variants);
criterion_main!(benches);
