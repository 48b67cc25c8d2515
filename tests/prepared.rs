//! Prepared ops record what `Norms::record` records: the same bits, on the same buffers,
//! again and again as the data changes; many of them in one compute pass; and warming
//! compiles what recording would.

mod common;

use common::{Rng, UNCAPTURED, assert_close, gpu, small_binding_gpu};
use std::sync::atomic::Ordering;
use wgpu_norm::{DType, Gpu, LayerNorm, LayerNormBackward, Op, RmsNorm, TensorRef, reference};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// Runs `record` in one submission and reads `outputs` back.
fn run(
    gpu: &Gpu,
    outputs: &[&wgpu::Buffer],
    record: impl FnOnce(&mut wgpu::CommandEncoder),
) -> Vec<Vec<f32>> {
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    record(&mut encoder);
    gpu.queue.submit([encoder.finish()]);
    let reads: Vec<(&wgpu::Buffer, usize)> = outputs
        .iter()
        .map(|b| (*b, (b.size() / 4) as usize))
        .collect();
    let out = pollster::block_on(gpu.read_async(&reads)).unwrap();
    assert_eq!(
        UNCAPTURED.load(Ordering::SeqCst),
        0,
        "a wgpu error reached the handler"
    );
    out
}

/// `op` recorded by `Norms::record` and as a `Prepared`, from the same poisoned outputs:
/// the same bits.
fn same_bits(gpu: &Gpu, outputs: &[&wgpu::Buffer], op: &impl Op, what: &str) {
    let poison = |gpu: &Gpu| {
        for b in outputs {
            let words = vec![common::POISON; (b.size() / 4) as usize];
            gpu.queue.write_buffer(b, 0, bytemuck::cast_slice(&words));
        }
    };
    poison(gpu);
    let direct = run(gpu, outputs, |e| gpu.norms.record(e, op).unwrap());
    let prepared = gpu.norms.prepare(op).unwrap();
    poison(gpu);
    let again = run(gpu, outputs, |e| prepared.record(e));
    for (i, (a, b)) in direct.iter().zip(&again).enumerate() {
        assert_eq!(bits(a), bits(b), "{what}: output {i}");
    }
}

#[test]
fn prepared_ops_give_the_bits_of_recorded_ones() {
    for (gpu, shapes) in [
        (gpu(), &[(1, 4096), (300, 1000), (5, 4097), (70000, 3)][..]),
        // Several bindings, and a backward reduced per chunk.
        (
            small_binding_gpu(256 << 10),
            &[(300, 1000), (13, 16384)][..],
        ),
    ] {
        for &(rows, dim) in shapes {
            let mut rng = Rng::new(rows as u64 * dim as u64);
            let n = rows * dim;
            let x = gpu.upload("x", &rng.data(n, 0.5, 2.0));
            let dy = gpu.upload("dy", &rng.data(n, 0.0, 1.0));
            let r = gpu.upload("r", &rng.data(n, 0.0, 1.0));
            let w = gpu.upload("w", &rng.data(dim, 1.0, 0.3));
            let b = gpu.upload("b", &rng.data(dim, 0.0, 0.3));
            let (y, s, dx) = (
                gpu.storage("y", n),
                gpu.storage("s", n),
                gpu.storage("dx", n),
            );
            let (m, rs) = (gpu.storage("m", rows), gpu.storage("rs", rows));
            let (dw, db) = (gpu.storage("dw", dim), gpu.storage("db", dim));
            let what = format!("{rows}x{dim}");
            let ln = LayerNorm::new(rows, dim, &x, &y)
                .weight(&w)
                .bias(&b)
                .mean(&m)
                .rstd(&rs)
                .residual(&r)
                .residual_out(&s);
            same_bits(gpu, &[&y, &s, &m, &rs], &ln, &format!("{what} layer_norm"));
            let rms = RmsNorm::new(rows, dim, &x, &y)
                .weight(&w)
                .rrms(&rs)
                .eps(1e-5);
            same_bits(gpu, &[&y, &rs], &rms, &format!("{what} rms_norm"));
            let lnb = LayerNormBackward::new(rows, dim, &x, &dy, &dx)
                .eps(1e-5)
                .weight(&w)
                .grad_weight(&dw)
                .grad_bias(&db);
            same_bits(
                gpu,
                &[&dx, &dw, &db],
                &lnb,
                &format!("{what} layer_norm_backward"),
            );
            let rmsb = rms.backward(&dy, &dx).unwrap().grad_weight(&dw);
            same_bits(
                gpu,
                &[&dx, &dw],
                &rmsb,
                &format!("{what} rms_norm_backward"),
            );
        }
    }
}

#[test]
fn a_prepared_op_follows_its_buffers_data() {
    // A decode loop: the same prepared op every step, new data in the same buffers.
    let gpu = gpu();
    let (rows, dim) = (1, 4096);
    let x = gpu.storage("x", dim);
    let y = gpu.storage("y", dim);
    let w = gpu.upload("w", &Rng::new(1).data(dim, 1.0, 0.2));
    let weight = Rng::new(1).data(dim, 1.0, 0.2);
    let op = gpu
        .norms
        .prepare(&RmsNorm::new(rows, dim, &x, &y).weight(&w).eps(1e-6))
        .unwrap();
    // One row, split over workgroups: the parts' sums, then the normalization.
    assert_eq!(op.dispatches(), 2);
    for step in 0..4 {
        let data = Rng::new(100 + step).data(dim, step as f64, 1.0 + step as f64);
        gpu.queue.write_buffer(&x, 0, bytemuck::cast_slice(&data));
        let out = run(gpu, &[&y], |e| op.record(e));
        let r = reference::rms_norm(&data, dim, Some(&weight), 1e-6);
        assert_close(&out[0], &r.y, &format!("step {step}"));
    }
}

#[test]
fn many_ops_in_one_pass() {
    // LayerNorm, then RMSNorm of its output, then the RMSNorm backward, all in the caller's
    // pass: wgpu orders the dispatches by the buffers they share.
    let gpu = gpu();
    let (rows, dim) = (37, 1000);
    let mut rng = Rng::new(7);
    let xs = rng.data(rows * dim, 3.0, 2.0);
    let dys = rng.data(rows * dim, 0.0, 1.0);
    let x = gpu.upload("x", &xs);
    let dy = gpu.upload("dy", &dys);
    let (h, z, dx) = (
        gpu.storage("h", rows * dim),
        gpu.storage("z", rows * dim),
        gpu.storage("dx", rows * dim),
    );
    let rrms = gpu.storage("rrms", rows);
    let ln = gpu
        .norms
        .prepare(&LayerNorm::new(rows, dim, &x, &h))
        .unwrap();
    let rms = RmsNorm::new(rows, dim, &h, &z).eps(1e-5).rrms(&rrms);
    let bwd = rms.backward(&dy, &dx).unwrap();
    let rms = gpu.norms.prepare(&rms).unwrap();
    let out = run(gpu, &[&z, &dx, &h], |e| {
        let mut pass = e.begin_compute_pass(&Default::default());
        ln.record_in(&mut pass);
        rms.record_in(&mut pass);
        gpu.norms.record_in(&mut pass, &bwd).unwrap();
    });
    // The reference chain, from the GPU's own h (its f32 rounding is the kernel's).
    let rh = reference::layer_norm(&xs, dim, None, None, 1e-5);
    assert_close(&out[2], &rh.y, "h");
    let rz = reference::rms_norm(&out[2], dim, None, 1e-5);
    assert_close(&out[0], &rz.y, "z");
    let rg = reference::rms_norm_backward(&out[2], &dys, dim, None, 1e-5);
    common::backward::assert_sum_close(&out[1], &rg.dx, &rg.dx_scale, "dx");
}

#[test]
fn warming_compiles_what_recording_needs() {
    // A device of its own, so that no other test's pipelines are counted.
    let gpu = pollster::block_on(async {
        let adapter = wgpu_norm::pick_adapter().await.unwrap();
        Gpu::from_adapter(adapter, None, Default::default())
            .await
            .unwrap()
    });
    let (rows, dim) = (3, 2048);
    let x = gpu.upload_as("x", &vec![1.0; rows * dim], DType::Bf16);
    let y = gpu.upload_as("y", &vec![0.0; rows * dim], DType::Bf16);
    let dx = gpu.upload_as("dx", &vec![0.0; rows * dim], DType::Bf16);
    let w = gpu.upload_as("w", &vec![1.0; dim], DType::Bf16);
    let dw = gpu.storage("dw", dim);
    let t = |b| TensorRef::new(b, 0, (rows * dim * 2) as u64);
    let fwd = RmsNorm::new(rows, dim, t(&x), t(&y))
        .dtype(DType::Bf16)
        .weight(TensorRef::new(&w, 0, (dim * 2) as u64));
    let bwd = fwd.backward(t(&y), t(&dx)).unwrap().grad_weight(&dw);
    assert_eq!(gpu.norms.cache_stats().pipelines, 0);
    gpu.norms.warm(&fwd).unwrap();
    pollster::block_on(gpu.norms.warm_async(&bwd)).unwrap();
    let warmed = gpu.norms.cache_stats();
    // The forward's two (its 3 rows are split over workgroups: the parts' sums, then the
    // normalization), the backward's row kernel and its dweight reduction.
    assert_eq!(warmed.pipelines, 4);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    gpu.norms.record(&mut encoder, &fwd).unwrap();
    gpu.norms.record(&mut encoder, &bwd).unwrap();
    gpu.queue.submit([encoder.finish()]);
    assert_eq!(gpu.norms.cache_stats().pipelines, warmed.pipelines);
    // Recording the same ops again creates no new uniform parameters either.
    let params = gpu.norms.cache_stats().params_buffers;
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    for _ in 0..10 {
        gpu.norms.record(&mut encoder, &fwd).unwrap();
        gpu.norms.record(&mut encoder, &bwd).unwrap();
    }
    gpu.queue.submit([encoder.finish()]);
    assert_eq!(gpu.norms.cache_stats().params_buffers, params);
    // Kept alive to the end of the run: no device is torn down while others are in use.
    Box::leak(Box::new(gpu));
}
