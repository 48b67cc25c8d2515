//! LayerNorm backward on the GPU against `reference::layer_norm_backward`, which is itself
//! checked by central finite differences.

mod common;

use common::backward::{BwdCase, backward_grid, central, check_backward};
use common::{Op, Rng, gpu, tree_gpu};
use wgpu_norm::reference;

/// sum(y * dy) for LayerNorm(x; w, b), in f64 via the reference forward.
fn loss(x: &[f32], dy: &[f32], dim: usize, w: &[f32], b: &[f32]) -> f64 {
    let y = reference::layer_norm(x, dim, Some(w), Some(b), 1e-5).y;
    y.iter().zip(dy).map(|(a, &d)| a * f64::from(d)).sum()
}

#[test]
fn reference_matches_finite_differences() {
    for (rows, dim) in [(1, 1), (3, 2), (2, 5), (4, 7)] {
        let mut rng = Rng::new(dim as u64);
        let x = rng.data(rows * dim, 0.3, 1.5);
        let dy = rng.data(rows * dim, 0.0, 1.0);
        let w = rng.data(dim, 1.0, 0.4);
        let b = rng.data(dim, 0.0, 0.4);
        let g = reference::layer_norm_backward(&x, &dy, dim, Some(&w), 1e-5);
        for i in 0..x.len() {
            let fd = central(&x, i, |x| loss(x, &dy, dim, &w, &b));
            assert!(
                (fd - g.dx[i]).abs() <= 1e-4 * (1.0 + fd.abs()),
                "dx[{i}]: {fd} vs {}",
                g.dx[i]
            );
        }
        for i in 0..dim {
            let fd = central(&w, i, |w| loss(&x, &dy, dim, w, &b));
            assert!(
                (fd - g.dweight[i]).abs() <= 1e-4 * (1.0 + fd.abs()),
                "dweight[{i}]"
            );
            let fd = central(&b, i, |b| loss(&x, &dy, dim, &w, b));
            assert!(
                (fd - g.dbias[i]).abs() <= 1e-4 * (1.0 + fd.abs()),
                "dbias[{i}]"
            );
        }
    }
}

#[test]
fn shape_grid() {
    backward_grid(gpu(), Op::LayerNorm, 500);
}

#[test]
fn shape_grid_tree_reduction() {
    backward_grid(tree_gpu(), Op::LayerNorm, 600);
}

#[test]
fn weight_stats_and_param_grads_optional() {
    common::backward::options_grid(Op::LayerNorm);
}

#[test]
fn accumulates_into_existing_gradients() {
    common::backward::accumulates(Op::LayerNorm);
}

#[test]
fn deterministic() {
    common::backward::deterministic(Op::LayerNorm);
}

#[test]
fn streamed_rows_keep_partial_sums_in_registers() {
    common::backward::streamed(Op::LayerNorm);
}

#[test]
fn several_long_rows_a_workgroup_add_to_its_partial_row_in_memory() {
    common::backward::partial_rows_in_memory(Op::LayerNorm);
}

#[test]
fn in_place_retry_of_a_first_row_starts_its_partial_row() {
    common::backward::in_place_retry_of_a_first_row(Op::LayerNorm);
}

#[test]
fn split_over_small_bindings() {
    common::backward::split(Op::LayerNorm);
}

#[test]
fn zero_rows_zero_the_parameter_gradients() {
    let gpu = gpu();
    let x = gpu.storage("x", 4);
    let w = gpu.upload("dw", &[5.0; 4]);
    let b = gpu.upload("db", &[6.0; 4]);
    let empty = |b| wgpu_norm::TensorRef::new(b, 0, 0);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    let op = wgpu_norm::LayerNormBackward::new(0, 4, empty(&x), empty(&x), empty(&x))
        .eps(1e-5)
        .grad_weight(&w)
        .grad_bias(&b);
    // dx aliases x and dy here, but with zero rows every range is empty.
    gpu.norms.layer_norm_backward(&mut encoder, &op).unwrap();
    gpu.queue.submit([encoder.finish()]);
    let out = pollster::block_on(gpu.read_async(&[(&w, 4), (&b, 4)])).unwrap();
    assert_eq!(out, [vec![0.0; 4], vec![0.0; 4]]);
}

/// Plain gradient descent on weight and bias to fit a target, forward and backward on the GPU,
/// against the same steps in f64 on the CPU.
#[test]
fn gradient_descent_fits_a_target() {
    let gpu = gpu();
    let (rows, dim) = (64, 48);
    let mut rng = Rng::new(1234);
    let x = rng.data(rows * dim, 1.0, 2.0);
    let target = rng.data(rows * dim, 0.5, 1.5);
    let (mut w, mut b) = (vec![1.0f32; dim], vec![0.0f32; dim]);
    let (mut wc, mut bc) = (vec![1.0f64; dim], vec![0.0f64; dim]);
    let n = (rows * dim) as f32;
    let lr = 0.5;
    let mut losses = Vec::new();
    for step in 0..300 {
        // GPU: y = LN(x; w, b); dy = 2 (y - t) / n; dw, db from the backward kernels.
        let wf = gpu.upload("w", &w);
        let bf = gpu.upload("b", &b);
        let xb = gpu.upload("x", &x);
        let yb = gpu.storage("y", rows * dim);
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let op = wgpu_norm::LayerNorm::new(rows, dim, &xb, &yb)
            .weight(&wf)
            .bias(&bf);
        gpu.norms.layer_norm(&mut encoder, &op).unwrap();
        gpu.queue.submit([encoder.finish()]);
        let y = pollster::block_on(gpu.read_async(&[(&yb, rows * dim)]))
            .unwrap()
            .remove(0);
        let loss: f32 = y
            .iter()
            .zip(&target)
            .map(|(a, t)| (a - t) * (a - t))
            .sum::<f32>()
            / n;
        let dy: Vec<f32> = y
            .iter()
            .zip(&target)
            .map(|(a, t)| 2.0 * (a - t) / n)
            .collect();
        let dyb = gpu.upload("dy", &dy);
        let dxb = gpu.storage("dx", rows * dim);
        let dw = gpu.storage("dw", dim);
        let db = gpu.storage("db", dim);
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let op = wgpu_norm::LayerNormBackward::new(rows, dim, &xb, &dyb, &dxb)
            .eps(1e-5)
            .weight(&wf)
            .grad_weight(&dw)
            .grad_bias(&db);
        gpu.norms.layer_norm_backward(&mut encoder, &op).unwrap();
        gpu.queue.submit([encoder.finish()]);
        let g = pollster::block_on(gpu.read_async(&[(&dw, dim), (&db, dim)])).unwrap();
        for i in 0..dim {
            w[i] -= lr * g[0][i];
            b[i] -= lr * g[1][i];
        }
        // CPU, in f64: the same step from the reference.
        let xhat = reference::layer_norm(&x, dim, None, None, 1e-5).y;
        let yc: Vec<f64> = (0..rows * dim)
            .map(|k| xhat[k] * wc[k % dim] + bc[k % dim])
            .collect();
        let lc: f64 = yc
            .iter()
            .zip(&target)
            .map(|(a, &t)| (a - f64::from(t)).powi(2))
            .sum::<f64>()
            / f64::from(n);
        let mut gw = vec![0.0; dim];
        let mut gb = vec![0.0; dim];
        for k in 0..rows * dim {
            let d = 2.0 * (yc[k] - f64::from(target[k])) / f64::from(n);
            gw[k % dim] += d * xhat[k];
            gb[k % dim] += d;
        }
        for i in 0..dim {
            wc[i] -= f64::from(lr) * gw[i];
            bc[i] -= f64::from(lr) * gb[i];
        }
        assert!(
            (f64::from(loss) - lc).abs() <= 1e-4 * lc.max(1e-3),
            "step {step}: GPU loss {loss} vs CPU {lc}"
        );
        losses.push(loss);
    }
    assert!(
        losses[299] < 0.8 * losses[0],
        "loss did not fall: {} -> {}",
        losses[0],
        losses[299]
    );
    assert!(
        losses.windows(2).all(|p| p[1] <= p[0] * (1.0 + 1e-5)),
        "loss must fall every step"
    );
}

#[test]
fn data_offset_by_1e4_with_recomputed_statistics() {
    common::backward::offset_data(Op::LayerNorm);
}

/// Rows of values near 1 with an element 1e6 away, at the start, in the middle and at the end,
/// statistics saved and recomputed, both reductions: no element is the row's pivot (the saved
/// mean is, or each invocation's own first element), so dx keeps the f32 bound.
#[test]
fn a_far_element_anywhere_keeps_f32_accuracy() {
    for (i, dim) in [7, 1024, 4097, 12288].into_iter().enumerate() {
        for saved in [true, false] {
            let mut c = BwdCase::new(Op::LayerNorm, 3, dim, 1400 + i as u64);
            c.x = Rng::new(1410 + i as u64).data(3 * dim, 1.0, 1.0);
            c.x[0] = 1e6;
            c.x[dim + dim / 2] = -1e6;
            c.x[3 * dim - 1] = 1e6;
            c.saved = saved;
            check_backward(gpu(), &c);
            check_backward(tree_gpu(), &c);
        }
    }
}

#[test]
fn saved_statistics_far_from_zero() {
    common::backward::saved_statistics_far_from_zero(Op::LayerNorm);
}

#[test]
fn rows_whose_squares_leave_f32() {
    common::backward::extreme_magnitudes(Op::LayerNorm);
}

#[test]
fn side_by_side_rows_retried_in_turns() {
    common::backward::side_by_side_retries(Op::LayerNorm);
}
