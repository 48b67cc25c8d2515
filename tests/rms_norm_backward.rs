//! RMSNorm backward on the GPU against `reference::rms_norm_backward`, which is itself checked
//! by central finite differences.

mod common;

use common::backward::{BwdCase, backward_grid, check_backward, run_backward};
use common::{Op, Rng, gpu, small_binding_gpu, tree_gpu};
use wgpu_norm::reference;

/// sum(y * dy) for RMSNorm(x; w), in f64 via the reference forward.
fn loss(x: &[f32], dy: &[f32], dim: usize, w: &[f32]) -> f64 {
    let y = reference::rms_norm(x, dim, Some(w), 1e-5).y;
    y.iter().zip(dy).map(|(a, &d)| a * f64::from(d)).sum()
}

fn central(v: &[f32], i: usize, f: impl Fn(&[f32]) -> f64) -> f64 {
    let h = 1e-3 * v[i].abs().max(1.0);
    let (mut up, mut down) = (v.to_vec(), v.to_vec());
    up[i] += h;
    down[i] -= h;
    (f(&up) - f(&down)) / f64::from(up[i] - down[i])
}

#[test]
fn reference_matches_finite_differences() {
    for (rows, dim) in [(1, 1), (3, 2), (2, 5), (4, 7)] {
        let mut rng = Rng::new(10 + dim as u64);
        let x = rng.data(rows * dim, 0.3, 1.5);
        let dy = rng.data(rows * dim, 0.0, 1.0);
        let w = rng.data(dim, 1.0, 0.4);
        let g = reference::rms_norm_backward(&x, &dy, dim, Some(&w), 1e-5);
        for i in 0..x.len() {
            let fd = central(&x, i, |x| loss(x, &dy, dim, &w));
            assert!(
                (fd - g.dx[i]).abs() <= 1e-4 * (1.0 + fd.abs()),
                "dx[{i}]: {fd} vs {}",
                g.dx[i]
            );
        }
        for i in 0..dim {
            let fd = central(&w, i, |w| loss(&x, &dy, dim, w));
            assert!(
                (fd - g.dweight[i]).abs() <= 1e-4 * (1.0 + fd.abs()),
                "dweight[{i}]"
            );
        }
    }
}

#[test]
fn shape_grid() {
    backward_grid(gpu(), Op::RmsNorm, 500);
}

#[test]
fn shape_grid_tree_reduction() {
    backward_grid(tree_gpu(), Op::RmsNorm, 600);
}

#[test]
fn weight_stats_and_param_grads_optional() {
    for (k, (weight, saved, grads)) in [
        (false, false, true),
        (true, true, false),
        (false, true, true),
        (true, false, false),
    ]
    .into_iter()
    .enumerate()
    {
        for (rows, dim) in [(9, 3), (40, 256), (5, 4097), (2, 20000)] {
            let mut c = BwdCase::new(Op::RmsNorm, rows, dim, 700 + k as u64);
            if !weight {
                c.weight = None;
            }
            c.saved = saved;
            c.grad_params = grads;
            c.offset = [0, 4, 16, 260][k];
            check_backward(gpu(), &c);
        }
    }
}

#[test]
fn accumulates_into_existing_gradients() {
    for dim in [7, 1024, 20000] {
        let mut c = BwdCase::new(Op::RmsNorm, 6, dim, 800);
        let mut rng = Rng::new(801);
        c.accumulate = Some((rng.data(6 * dim, 0.0, 1.0), rng.data(dim, 0.0, 1.0)));
        check_backward(gpu(), &c);
    }
}

#[test]
fn deterministic() {
    let c = BwdCase::new(Op::RmsNorm, 3000, 1024, 900);
    let first = run_backward(gpu(), &c);
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    for _ in 0..3 {
        let again = run_backward(gpu(), &c);
        assert_eq!(bits(&again.dx), bits(&first.dx));
        assert_eq!(bits(&again.dweight), bits(&first.dweight));
    }
}

#[test]
fn split_over_small_bindings() {
    let gpu = small_binding_gpu(256 << 10);
    for (i, (rows, dim, offset)) in [(300, 1000, 0), (5000, 28, 4), (13, 16384, 16)]
        .into_iter()
        .enumerate()
    {
        let mut c = BwdCase::new(Op::RmsNorm, rows, dim, 950 + i as u64);
        c.offset = offset;
        c.saved = i == 1;
        check_backward(gpu, &c);
    }
}

#[test]
fn in_place_over_grad_output() {
    let gpu = gpu();
    let c = BwdCase::new(Op::RmsNorm, 20, 300, 990);
    let xb = gpu.upload("x", &c.x);
    let g = gpu.upload("dy then dx", &c.dy);
    let w = gpu.upload("w", c.weight.as_ref().unwrap());
    let dw = gpu.storage("dw", 300);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    let op = wgpu_norm::RmsNormBackward::new(20, 300, &xb, &g, &g)
        .eps(c.eps)
        .weight(&w)
        .grad_weight(&dw);
    gpu.norms.rms_norm_backward(&mut encoder, &op).unwrap();
    gpu.queue.submit([encoder.finish()]);
    let out = pollster::block_on(gpu.read_async(&[(&g, 6000), (&dw, 300)])).unwrap();
    let r = c.reference();
    common::backward::assert_sum_close(&out[0], &r.dx, &r.dx_scale, "dx in place of dy");
    common::backward::assert_sum_close(&out[1], &r.dweight, &r.dweight_scale, "dweight");
}

#[test]
fn data_offset_by_1e4_with_recomputed_statistics() {
    for (i, dim) in [31, 1024, 12288].into_iter().enumerate() {
        let mut c = BwdCase::new(Op::RmsNorm, 3, dim, 1100 + i as u64);
        c.x = Rng::new(i as u64).data(3 * dim, 1e4, 1.0);
        check_backward(gpu(), &c);
    }
}

/// sum(y * dy) for RMSNorm(x; w) with the Gemma offset and a pRMSNorm prefix, in f64.
fn loss_with(x: &[f32], dy: &[f32], dim: usize, w: &[f32], gemma: bool, k: usize) -> f64 {
    let spec = reference::RmsNormSpec {
        weight: Some(w),
        eps: 1e-5,
        gemma_offset: gemma,
        stat_len: Some(k),
        ..Default::default()
    };
    let y = reference::rms_norm_with(x, dim, &spec).y;
    y.iter().zip(dy).map(|(a, &d)| a * f64::from(d)).sum()
}

#[test]
fn gemma_offset_and_partial_reference_matches_finite_differences() {
    for (rows, dim, k, gemma) in [
        (2, 5, 3, true),
        (3, 8, 1, false),
        (2, 7, 7, true),
        (1, 6, 2, true),
    ] {
        let mut rng = Rng::new(40 + dim as u64);
        let x = rng.data(rows * dim, 0.3, 1.5);
        let dy = rng.data(rows * dim, 0.0, 1.0);
        let w = rng.data(dim, 0.2, 0.4);
        let spec = reference::RmsNormSpec {
            weight: Some(&w),
            eps: 1e-5,
            gemma_offset: gemma,
            stat_len: Some(k),
            ..Default::default()
        };
        let g = reference::rms_norm_backward_with(&x, &dy, dim, &spec);
        for i in 0..x.len() {
            let fd = central(&x, i, |x| loss_with(x, &dy, dim, &w, gemma, k));
            assert!(
                (fd - g.dx[i]).abs() <= 1e-4 * (1.0 + fd.abs()),
                "dx[{i}]: {fd} vs {}",
                g.dx[i]
            );
        }
        for i in 0..dim {
            let fd = central(&w, i, |w| loss_with(&x, &dy, dim, w, gemma, k));
            assert!(
                (fd - g.dweight[i]).abs() <= 1e-4 * (1.0 + fd.abs()),
                "dweight[{i}]"
            );
        }
    }
}

#[test]
fn gemma_offset_and_partial_on_the_gpu() {
    for (i, (rows, dim, p, gemma)) in [
        (64, 1024, Some(0.0625), false),
        (9, 77, Some(0.5), true),
        (3, 20000, Some(0.3), true),
        (40, 256, None, true),
    ]
    .into_iter()
    .enumerate()
    {
        for saved in [false, true] {
            let mut c = BwdCase::new(Op::RmsNorm, rows, dim, 1200 + i as u64);
            c.partial = p;
            c.gemma_offset = gemma;
            c.saved = saved;
            check_backward(gpu(), &c);
        }
    }
}
