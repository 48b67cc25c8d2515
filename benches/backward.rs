//! LayerNorm and RMSNorm backward against a WGSL copy of the same bytes.
//!
//! Throughput counts the bytes the op must move: x and dy read, dx written (the copy moves
//! its own x read + y written). dweight (and dbias) are computed too, from saved statistics,
//! as a training step would. Decimal units (GB/s). GPU timestamps where the adapter has them.
//! `WGPU_NORM_BENCH_MIB` sets the size of x (default: 8 MiB on a CPU adapter, 256 MiB on a
//! GPU).

mod common;

use common::Bench;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wgpu_norm::{DType, LayerNormBackward, RmsNorm, RmsNormBackward, TensorRef};

const DIMS: [usize; 3] = [1024, 4096, 8192];

fn backward(c: &mut Criterion) {
    let bench = Bench::new();
    let gpu = &bench.gpu;
    for dim in DIMS {
        let rows = (bench.mib << 20) / 4 / dim;
        let n = rows * dim;
        let x = common::activations(n);
        let dy = common::gradients(n);
        let xb = gpu.upload("bench x", &x);
        let dyb = gpu.upload("bench dy", &dy);
        let dxb = gpu.storage("bench dx", n);
        let wb = gpu.upload("bench weight", &vec![1.5; dim]);
        let mean = gpu.upload("bench mean", &vec![0.2; rows]);
        let rstd = gpu.upload("bench rstd", &vec![3.4; rows]);
        let dw = gpu.storage("bench dweight", dim);
        let db = gpu.storage("bench dbias", dim);
        let mut group = c.benchmark_group(format!("backward/D={dim}"));
        bench.configure(&mut group);
        group.throughput(Throughput::BytesDecimal((2 * n * 4) as u64));
        bench.run(&mut group, "copy", &|e| {
            gpu.norms.copy(e, rows, dim, &xb, &dxb)
        });
        group.throughput(Throughput::BytesDecimal((3 * n * 4) as u64));
        let ln = LayerNormBackward::new(rows, dim, &xb, &dyb, &dxb)
            .weight(&wb)
            .saved(&mean, &rstd)
            .grad_weight(&dw)
            .grad_bias(&db);
        bench.run(&mut group, "layer_norm_backward", &|e| {
            gpu.norms.layer_norm_backward(e, &ln)
        });
        let rms = RmsNormBackward::new(rows, dim, &xb, &dyb, &dxb)
            .weight(&wb)
            .saved(&rstd)
            .grad_weight(&dw);
        bench.run(&mut group, "rms_norm_backward", &|e| {
            gpu.norms.rms_norm_backward(e, &rms)
        });
        group.finish();
    }
}

/// The backward with x, dy and dx stored in 16 bits (dweight/dbias f32), at D = 4096.
fn backward_16_bit(c: &mut Criterion) {
    let bench = Bench::new();
    let gpu = &bench.gpu;
    let dim = 4096;
    let rows = (bench.mib << 20) / 4 / dim;
    let n = rows * dim;
    let x = common::activations(n);
    let dy = common::gradients(n);
    let mean = gpu.upload("bench mean", &vec![0.2; rows]);
    let rstd = gpu.upload("bench rstd", &vec![3.4; rows]);
    let dw = gpu.storage("bench dweight", dim);
    let db = gpu.storage("bench dbias", dim);
    let mut group = c.benchmark_group(format!("backward 16-bit/D={dim}"));
    bench.configure(&mut group);
    for d in [DType::F16, DType::Bf16] {
        let bytes = n as u64 * d.size();
        let t = |b| TensorRef::new(b, 0, bytes);
        let (xb, dyb) = (gpu.upload_as("x", &x, d), gpu.upload_as("dy", &dy, d));
        let dxb = gpu.upload_as("dx", &x, d);
        let wb = gpu.upload_as("weight", &vec![1.5; dim], d);
        group.throughput(Throughput::BytesDecimal(2 * bytes));
        let words = (bytes / 4) as usize;
        bench.run(&mut group, &format!("copy {d}"), &|e| {
            gpu.norms.copy(e, 1, words, &xb, &dxb)
        });
        group.throughput(Throughput::BytesDecimal(3 * bytes));
        let ln = LayerNormBackward::new(rows, dim, t(&xb), t(&dyb), t(&dxb))
            .dtype(d)
            .weight(&wb)
            .saved(&mean, &rstd)
            .grad_weight(&dw)
            .grad_bias(&db);
        let name = format!("layer_norm_backward {d}");
        bench.run(&mut group, &name, &|e| {
            gpu.norms.layer_norm_backward(e, &ln)
        });
        let rms = RmsNormBackward::new(rows, dim, t(&xb), t(&dyb), t(&dxb))
            .dtype(d)
            .weight(&wb)
            .saved(&rstd)
            .grad_weight(&dw);
        let name = format!("rms_norm_backward {d}");
        bench.run(&mut group, &name, &|e| gpu.norms.rms_norm_backward(e, &rms));
    }
    group.finish();
}

/// A decode step's shapes, few rows of D = 4096: GPU time per op next to a copy of the same
/// bytes, the backward with and without its parameter gradients, and the forward.
fn few_rows(c: &mut Criterion) {
    let bench = Bench::new();
    let gpu = &bench.gpu;
    let dim = 4096;
    for rows in [1, 8, 64] {
        let n = rows * dim;
        let xb = gpu.upload("bench x", &common::activations(n));
        let dyb = gpu.upload("bench dy", &common::gradients(n));
        let dxb = gpu.storage("bench dx", n);
        let wb = gpu.upload("bench weight", &vec![1.5; dim]);
        let stats = gpu.upload("bench statistics", &vec![0.3; 2 * rows]);
        let (mean, rstd) = (
            TensorRef::new(&stats, 0, rows as u64 * 4),
            TensorRef::new(&stats, rows as u64 * 4, rows as u64 * 4),
        );
        let (dw, db) = (
            gpu.storage("bench dweight", dim),
            gpu.storage("bench dbias", dim),
        );
        let mut group = c.benchmark_group(format!("backward few rows/{rows}x{dim}"));
        bench.configure(&mut group);
        group.throughput(Throughput::BytesDecimal((3 * n * 4) as u64));
        bench.run(&mut group, "copy", &|e| {
            gpu.norms.copy(e, rows, dim, &xb, &dxb)
        });
        let fwd = RmsNorm::new(rows, dim, &xb, &dxb).weight(&wb);
        bench.run(&mut group, "rms_norm", &|e| gpu.norms.rms_norm(e, &fwd));
        let rms = RmsNormBackward::new(rows, dim, &xb, &dyb, &dxb)
            .weight(&wb)
            .saved(rstd);
        bench.run(&mut group, "rms_norm_backward dx only", &|e| {
            gpu.norms.rms_norm_backward(e, &rms)
        });
        let rms_dw = rms.clone().grad_weight(&dw);
        bench.run(&mut group, "rms_norm_backward with dweight", &|e| {
            gpu.norms.rms_norm_backward(e, &rms_dw)
        });
        let ln = LayerNormBackward::new(rows, dim, &xb, &dyb, &dxb)
            .weight(&wb)
            .saved(mean, rstd)
            .grad_weight(&dw)
            .grad_bias(&db);
        bench.run(
            &mut group,
            "layer_norm_backward with dweight, dbias",
            &|e| gpu.norms.layer_norm_backward(e, &ln),
        );
        group.finish();
    }
}

criterion_group!(benches, backward, backward_16_bit, few_rows);
criterion_main!(benches);
