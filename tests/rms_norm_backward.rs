//! RMSNorm backward on the GPU against `reference::rms_norm_backward`, which is itself checked
//! by central finite differences.

mod common;

use common::backward::{BwdCase, backward_grid, central, check_backward};
use common::{Op, Rng, gpu, tree_gpu};
use wgpu_norm::reference;

/// sum(y * dy) for RMSNorm(x; w), in f64 via the reference forward.
fn loss(x: &[f32], dy: &[f32], dim: usize, w: &[f32]) -> f64 {
    let y = reference::rms_norm(x, dim, Some(w), 1e-5).y;
    y.iter().zip(dy).map(|(a, &d)| a * f64::from(d)).sum()
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
    common::backward::options_grid(Op::RmsNorm);
}

#[test]
fn accumulates_into_existing_gradients() {
    common::backward::accumulates(Op::RmsNorm);
}

#[test]
fn deterministic() {
    common::backward::deterministic(Op::RmsNorm);
}

#[test]
fn streamed_rows_keep_partial_sums_in_registers() {
    common::backward::streamed(Op::RmsNorm);
}

#[test]
fn several_long_rows_a_workgroup_add_to_its_partial_row_in_memory() {
    common::backward::partial_rows_in_memory(Op::RmsNorm);
}

#[test]
fn in_place_retry_of_a_first_row_starts_its_partial_row() {
    common::backward::in_place_retry_of_a_first_row(Op::RmsNorm);
}

#[test]
fn split_over_small_bindings() {
    common::backward::split(Op::RmsNorm);
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
    common::backward::offset_data(Op::RmsNorm);
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

#[test]
fn saved_statistics_far_from_zero() {
    common::backward::saved_statistics_far_from_zero(Op::RmsNorm);
}

#[test]
fn rows_whose_squares_leave_f32() {
    common::backward::extreme_magnitudes(Op::RmsNorm);
}

#[test]
fn side_by_side_rows_retried_in_turns() {
    common::backward::side_by_side_retries(Op::RmsNorm);
}
