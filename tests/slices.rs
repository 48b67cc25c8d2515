//! The slice convenience layer: upload, run, read back, sync and async.

mod common;

use common::{Rng, assert_close, gpu};
use wgpu_norm::{SliceOptions, reference};

#[test]
fn layer_norm_of_slices() {
    let mut rng = Rng::new(1);
    let (rows, dim) = (10, 333);
    let x = rng.data(rows * dim, 2.0, 3.0);
    let w = rng.data(dim, 1.0, 0.2);
    let b = rng.data(dim, 0.0, 0.2);
    let opts = SliceOptions {
        eps: Some(1e-3),
        weight: Some(&w),
        bias: Some(&b),
        ..Default::default()
    };
    let out = gpu().layer_norm(&x, dim, &opts).unwrap();
    let r = reference::layer_norm(&x, dim, Some(&w), Some(&b), 1e-3);
    assert_close(&out.y, &r.y, "y");
    assert_close(&out.mean, &r.mean, "mean");
    assert_eq!(out.rstd.len(), rows);
    let again = pollster::block_on(gpu().layer_norm_async(&x, dim, &opts)).unwrap();
    assert_eq!(out, again);
}

#[test]
fn rms_norm_of_slices_with_default_eps() {
    let mut rng = Rng::new(2);
    let x = rng.data(7 * 4096, 0.0, 1.0);
    let out = pollster::block_on(gpu().rms_norm_async(&x, 4096, &SliceOptions::default())).unwrap();
    let r = reference::rms_norm(&x, 4096, None, f32::EPSILON);
    assert_close(&out.y, &r.y, "y");
    assert_eq!(out.rrms.len(), 7);
}

#[test]
fn empty_input_is_empty_output() {
    let out = gpu().layer_norm(&[], 8, &SliceOptions::default()).unwrap();
    assert!(out.y.is_empty() && out.mean.is_empty() && out.rstd.is_empty());
    let grads = gpu()
        .rms_norm_backward(&[], &[], 8, &SliceOptions::default())
        .unwrap();
    assert!(grads.dx.is_empty() && grads.dbias.is_empty());
    assert_eq!(grads.dweight, [0.0; 8], "a sum over no rows");
}

#[test]
fn sixteen_bit_storage_of_slices() {
    let mut rng = Rng::new(3);
    let x = rng.data(9 * 301, 0.0, 2.0);
    let w = rng.data(301, 1.0, 0.2);
    for dtype in [wgpu_norm::DType::F16, wgpu_norm::DType::Bf16] {
        let opts = SliceOptions {
            weight: Some(&w),
            eps: Some(1e-5),
            dtype,
            ..Default::default()
        };
        let out = gpu().rms_norm(&x, 301, &opts).unwrap();
        // The reference sees the values as the GPU stored them.
        let stored: Vec<f32> = x
            .iter()
            .map(|&v| dtype.round(f64::from(v)) as f32)
            .collect();
        let r = reference::rms_norm(&stored, 301, Some(&w), 1e-5);
        let (ratio, i) = reference::worst_error_in(dtype, &out.y, &r.y);
        assert!(ratio <= 1.0, "{dtype}: y[{i}] = {} vs {}", out.y[i], r.y[i]);
    }
}

#[test]
fn backward_of_slices() {
    // The slice layer's backward recomputes the statistics with the same eps as its forward.
    let mut rng = Rng::new(4);
    let (rows, dim) = (6, 257);
    let x = rng.data(rows * dim, 1.0, 2.0);
    let dy = rng.data(rows * dim, 0.0, 1.0);
    let w = rng.data(dim, 1.0, 0.3);
    let opts = SliceOptions {
        eps: Some(1e-3),
        weight: Some(&w),
        ..Default::default()
    };
    let check = |g: &wgpu_norm::Gradients, r: &reference::Gradients, bias: bool, what: &str| {
        common::backward::assert_sum_close(&g.dx, &r.dx, &r.dx_scale, &format!("{what} dx"));
        common::backward::assert_sum_close(
            &g.dweight,
            &r.dweight,
            &r.dweight_scale,
            &format!("{what} dweight"),
        );
        if bias {
            common::backward::assert_sum_close(
                &g.dbias,
                &r.dbias,
                &r.dbias_scale,
                &format!("{what} dbias"),
            );
        } else {
            assert!(g.dbias.is_empty());
        }
    };
    let g = gpu().layer_norm_backward(&x, &dy, dim, &opts).unwrap();
    let r = reference::layer_norm_backward(&x, &dy, dim, Some(&w), 1e-3);
    check(&g, &r, true, "layer_norm");
    let g = pollster::block_on(gpu().rms_norm_backward_async(&x, &dy, dim, &opts)).unwrap();
    let r = reference::rms_norm_backward(&x, &dy, dim, Some(&w), 1e-3);
    check(&g, &r, false, "rms_norm");
    // dy must have the shape of x.
    let err = gpu()
        .rms_norm_backward(&x, &dy[1..], dim, &opts)
        .unwrap_err();
    assert!(matches!(err, wgpu_norm::Error::SliceLength { .. }), "{err}");
}
