//! The kernels on the browser's WebGPU: forward and backward of both norms, f32/f16/bf16, odd
//! D, against the f64 reference, the same checks as on Vulkan. Runs in headless Chromium
//! through `wasm-bindgen-test` (`.ci/web`); empty on native targets.
#![cfg(target_arch = "wasm32")]

use wasm_bindgen_test::*;
use wgpu_norm::{DType, Error, Gpu, SliceOptions, reference};

wasm_bindgen_test_configure!(run_in_browser);

/// Rows x D: one element, below a workgroup, odd and not a multiple of 4, above 4096.
const SHAPES: [(usize, usize); 5] = [(3, 1), (5, 7), (4, 300), (2, 1027), (2, 4097)];
const TYPES: [DType; 3] = [DType::F32, DType::F16, DType::Bf16];

async fn gpu() -> Gpu {
    Gpu::new_async().await.unwrap_or_else(|e| {
        panic!("no WebGPU adapter in this browser ({e}); Chromium needs --enable-unsafe-webgpu")
    })
}

/// Seeded values around `center` (never zeros), rounded to `dtype` as the GPU will store them.
fn data(n: usize, seed: u64, center: f32, dtype: DType) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            center + ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect();
    dtype.decode(&dtype.encode(&v))
}

#[wasm_bindgen_test]
async fn the_adapter_is_the_browsers_webgpu() {
    let gpu = gpu().await;
    let info = gpu.adapter.get_info();
    console_log!("adapter: {}", gpu.describe());
    assert_eq!(
        info.backend,
        wgpu_norm::wgpu::Backend::BrowserWebGpu,
        "{info:?}"
    );
}

#[wasm_bindgen_test]
async fn forward_matches_the_reference() {
    let gpu = gpu().await;
    for (t, dtype) in TYPES.into_iter().enumerate() {
        for (k, &(rows, dim)) in SHAPES.iter().enumerate() {
            let seed = (t * 10 + k) as u64;
            let x = data(rows * dim, seed, 3.0, dtype);
            let w = data(dim, seed + 100, 1.0, DType::F32);
            let b = data(dim, seed + 200, 0.0, DType::F32);
            let opts = SliceOptions {
                weight: Some(&w),
                bias: Some(&b),
                dtype,
                ..Default::default()
            };
            let what = format!("{dtype} rows={rows} D={dim}");
            let ln = gpu.layer_norm_async(&x, dim, &opts).await.unwrap();
            let r = reference::layer_norm(&x, dim, Some(&w), Some(&b), 1e-5);
            let (ratio, i) = reference::worst_error_in(dtype, &ln.y, &r.y);
            assert!(
                ratio <= 1.0,
                "LayerNorm {what}: y[{i}] {} vs {}",
                ln.y[i],
                r.y[i]
            );
            for (row, (&m, &s)) in ln.mean.iter().zip(&ln.rstd).enumerate() {
                assert!((f64::from(m) - r.mean[row]).abs() <= 1e-5 * (1.0 + r.mean[row].abs()));
                assert!(
                    (f64::from(s) - r.rstd[row]).abs() <= 1e-5 * r.rstd[row],
                    "{what}"
                );
            }
            let opts = SliceOptions { bias: None, ..opts };
            let rms = gpu.rms_norm_async(&x, dim, &opts).await.unwrap();
            let r = reference::rms_norm(&x, dim, Some(&w), f32::EPSILON);
            let (ratio, i) = reference::worst_error_in(dtype, &rms.y, &r.y);
            assert!(
                ratio <= 1.0,
                "RMSNorm {what}: y[{i}] {} vs {}",
                rms.y[i],
                r.y[i]
            );
        }
    }
}

#[wasm_bindgen_test]
async fn in_place_is_an_error_in_the_browser() {
    // y over x: WebGPU forbids writable storage bindings that alias (the browser would report
    // it to the uncaptured-error handler and drop the dispatch), so the crate refuses it
    // before recording anything; natively it works (tests/rms_norm.rs).
    use wgpu_norm::{LayerNorm, RmsNorm, TensorRef};
    let gpu = gpu().await;
    let (rows, dim) = (3, 300);
    let x = data(rows * dim, 500, 3.0, DType::F32);
    let xb = gpu.upload_as("x, then y", &x, DType::F32);
    let t = TensorRef::new(&xb, 0, (rows * dim * 4) as u64);
    let scope = gpu
        .device
        .push_error_scope(wgpu_norm::wgpu::ErrorFilter::Validation);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    let ln = gpu
        .norms
        .layer_norm(&mut encoder, &LayerNorm::new(rows, dim, t, t));
    assert!(matches!(ln, Err(Error::Unsupported(_))), "{ln:?}");
    let rms = gpu
        .norms
        .rms_norm(&mut encoder, &RmsNorm::new(rows, dim, t, t));
    assert!(matches!(rms, Err(Error::Unsupported(_))), "{rms:?}");
    gpu.queue.submit([encoder.finish()]);
    if let Some(e) = scope.pop().await {
        panic!("the browser saw an error: {e}");
    }
    let y = gpu
        .read_async(&[(&xb, rows * dim)])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(y, x, "nothing was written");
}

#[wasm_bindgen_test]
async fn backward_matches_the_reference() {
    let gpu = gpu().await;
    for (t, dtype) in TYPES.into_iter().enumerate() {
        for (k, &(rows, dim)) in SHAPES.iter().enumerate() {
            let seed = (t * 10 + k) as u64 + 1000;
            let x = data(rows * dim, seed, 3.0, dtype);
            let dy = data(rows * dim, seed + 1, 0.0, dtype);
            let w = data(dim, seed + 2, 1.0, DType::F32);
            let opts = SliceOptions {
                weight: Some(&w),
                dtype,
                ..Default::default()
            };
            for layer in [true, false] {
                let what = format!(
                    "{} backward {dtype} rows={rows} D={dim}",
                    if layer { "LayerNorm" } else { "RMSNorm" }
                );
                let (got, r) = if layer {
                    let g = gpu.layer_norm_backward_async(&x, &dy, dim, &opts).await;
                    let r = reference::layer_norm_backward(&x, &dy, dim, Some(&w), 1e-5);
                    (g.unwrap(), r)
                } else {
                    let g = gpu.rms_norm_backward_async(&x, &dy, dim, &opts).await;
                    let r = reference::rms_norm_backward(&x, &dy, dim, Some(&w), f32::EPSILON);
                    (g.unwrap(), r)
                };
                // dx: its storage rounding plus the f32 bound on a difference of terms of
                // size dx_scale; dweight/dbias (f32): the bound on a sum of such terms.
                for (i, ((&g, &v), &s)) in got.dx.iter().zip(&r.dx).zip(&r.dx_scale).enumerate() {
                    let err = (f64::from(g) - v).abs();
                    let allowed = reference::tolerance(dtype, v) + 1e-5 * s;
                    assert!(err <= allowed, "{what}: dx[{i}] {g} vs {v}");
                }
                let sums = [(&got.dweight, &r.dweight, &r.dweight_scale)];
                let bias = [(&got.dbias, &r.dbias, &r.dbias_scale)];
                for (g, v, s) in sums.into_iter().chain(bias.into_iter().filter(|_| layer)) {
                    assert_eq!(g.len(), dim, "{what}");
                    for (i, ((&g, &v), &s)) in g.iter().zip(v).zip(s).enumerate() {
                        let err = (f64::from(g) - v).abs();
                        assert!(
                            err <= 1e-5 + 1e-5 * s,
                            "{what}: parameter grad [{i}] {g} vs {v}"
                        );
                    }
                }
            }
        }
    }
}

#[wasm_bindgen_test]
async fn bad_input_is_an_error_in_the_browser_too() {
    let gpu = gpu().await;
    let opts = SliceOptions::default();
    assert!(matches!(
        gpu.rms_norm_async(&[1.0, 2.0], 0, &opts).await,
        Err(Error::ZeroDim)
    ));
    let eps = SliceOptions {
        eps: Some(-1.0),
        ..opts
    };
    assert!(matches!(
        gpu.layer_norm_async(&[1.0, 2.0], 2, &eps).await,
        Err(Error::BadEpsilon(_))
    ));
    // Zero rows: a no-op.
    let out = gpu.layer_norm_async(&[], 4, &opts).await.unwrap();
    assert!(out.y.is_empty() && out.mean.is_empty());
}
