//! The burn integration (feature `burn`): the fused norms on burn's own wgpu device, against
//! burn-nn's modules and the f64 CPU reference, forward and through burn's autodiff.
#![cfg(feature = "burn")]

use std::sync::OnceLock;

use burn::module::Module;
use burn::nn::{LayerNormConfig, RmsNormConfig};
use burn::tensor::wgpu::WgpuSetup;
use burn::tensor::{DType, Device, Tensor, TensorData};
use wgpu_norm::burn::{FusedNormConfig, gemma_rms_norm, layer_norm, rms_norm};
use wgpu_norm::{Error, reference};

fn device() -> &'static Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE.get_or_init(|| {
        wgpu_norm::burn::init().unwrap_or_else(|e| {
            panic!("\n\nTHE BURN TESTS NEED A WGPU ADAPTER AND FOUND NONE.\n{e}\n\n")
        })
    })
}

/// Seeded values in [-1, 1) times `scale` plus `offset`, never all zeros.
fn data(n: usize, seed: u64, offset: f32, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            offset + scale * ((s >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        })
        .collect()
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(DType::F32).into_data().try_to_vec::<f32>().unwrap()
}

fn assert_close<W: Copy + Into<f64>>(what: &str, got: &[f32], want: &[W], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w): (f64, f64) = (g.into(), w.into());
        assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

const DIMS: [usize; 5] = [1, 7, 256, 1024, 4097];

#[test]
fn forward_matches_the_reference_and_burn_nn() {
    let dev = device();
    for (k, &dim) in DIMS.iter().enumerate() {
        let (a, b) = (3, 5);
        let x = data(a * b * dim, k as u64, 0.5, 2.0);
        let g = data(dim, 100 + k as u64, 1.0, 0.5);
        let beta = data(dim, 200 + k as u64, 0.0, 0.5);
        let xt = tensor(x.clone(), [a, b, dim], dev);
        let (gt, bt) = (
            tensor(g.clone(), [dim], dev),
            tensor(beta.clone(), [dim], dev),
        );

        let y = values(layer_norm(xt.clone(), Some(gt.clone()), Some(bt.clone()), 1e-5).unwrap());
        let want = reference::layer_norm(&x, dim, Some(&g), Some(&beta), 1e-5).y;
        assert_close(&format!("LayerNorm D={dim}"), &y, &want, 1e-5, 1e-5);

        let y = values(rms_norm(xt.clone(), Some(gt.clone()), 1e-6).unwrap());
        let want = reference::rms_norm(&x, dim, Some(&g), 1e-6).y;
        assert_close(&format!("RMSNorm D={dim}"), &y, &want, 1e-5, 1e-5);

        // burn-nn's own modules with the same parameters: the drop-in agrees with them.
        let mut nn = LayerNormConfig::new(dim).init(dev);
        nn.gamma = nn.gamma.map(|_| gt.clone());
        nn.beta = nn.beta.map(|p| p.map(|_| bt.clone()));
        let fused = LayerNormConfig::new(dim)
            .init_fused(dev)
            .load_record(nn.clone().into_record());
        assert_close(
            &format!("LayerNorm module D={dim}"),
            &values(fused.forward(xt.clone())),
            &values(nn.forward(xt.clone())),
            1e-4,
            1e-4,
        );
        let mut nn = RmsNormConfig::new(dim).init(dev);
        nn.gamma = nn.gamma.map(|_| gt.clone());
        let fused = RmsNormConfig::new(dim)
            .init_fused(dev)
            .load_record(nn.clone().into_record());
        assert_close(
            &format!("RmsNorm module D={dim}"),
            &values(fused.forward(xt.clone())),
            &values(nn.forward(xt)),
            1e-4,
            1e-4,
        );
    }
}

#[test]
fn missing_parameters_and_gemma_offset() {
    let dev = device();
    let dim = 300;
    let x = data(4 * dim, 7, 0.0, 3.0);
    let g = data(dim, 8, 0.0, 0.3);
    let xt = tensor(x.clone(), [4, dim], dev);
    let y = values(layer_norm(xt.clone(), None, None, 1e-5).unwrap());
    assert_close(
        "plain LayerNorm",
        &y,
        &reference::layer_norm(&x, dim, None, None, 1e-5).y,
        1e-5,
        1e-5,
    );
    let y = values(rms_norm(xt.clone(), None, 1e-6).unwrap());
    assert_close(
        "plain RMSNorm",
        &y,
        &reference::rms_norm(&x, dim, None, 1e-6).y,
        1e-5,
        1e-5,
    );
    let y = values(gemma_rms_norm(xt, Some(tensor(g.clone(), [dim], dev)), 1e-6).unwrap());
    let one_plus: Vec<f32> = g.iter().map(|v| 1.0 + v).collect();
    let want = reference::rms_norm(&x, dim, Some(&one_plus), 1e-6).y;
    assert_close("Gemma RMSNorm", &y, &want, 1e-5, 1e-5);
}

/// Tensors from burn's pool sit at offsets inside shared buffers; slices and transposes are
/// what models hand over.
#[test]
fn pooled_sliced_and_transposed_tensors() {
    let dev = device();
    let (rows, dim) = (64, 96);
    let x = data(rows * dim, 9, 0.0, 1.0);
    let whole = tensor(x.clone(), [rows, dim], dev);
    // Rows 10..20: contiguous, at an offset in the buffer.
    let part = whole.clone().slice([10..20, 0..dim]);
    let y = values(rms_norm(part, None, 1e-6).unwrap());
    let want = reference::rms_norm(&x[10 * dim..20 * dim], dim, None, 1e-6).y;
    assert_close("slice", &y, &want, 1e-5, 1e-5);
    // A transpose: made contiguous first.
    let t = whole.transpose();
    let y = values(layer_norm(t.clone(), None, None, 1e-5).unwrap());
    let xt = values(t);
    assert_close(
        "transposed",
        &y,
        &reference::layer_norm(&xt, rows, None, None, 1e-5).y,
        1e-5,
        1e-5,
    );
    // Many small ops in a row, outputs feeding inputs: burn's pool reuses freed ranges.
    let mut h = tensor(x.clone(), [rows, dim], dev);
    let mut want = x.clone();
    for _ in 0..20 {
        h = rms_norm(h, None, 1e-6).unwrap() * 1.5;
        want = reference::rms_norm(&want, dim, None, 1e-6)
            .y
            .iter()
            .map(|v| (v * 1.5) as f32)
            .collect();
    }
    assert_close("chain", &values(h), &want, 1e-4, 1e-4);
}

/// Gradients through burn's autodiff against burn-nn's modules on the same data.
#[test]
fn gradients_match_burn_nn() {
    let dev = device().clone().autodiff();
    for (k, &dim) in DIMS.iter().enumerate() {
        let rows = 6;
        let x = data(rows * dim, 300 + k as u64, 0.3, 1.5);
        let w = data(rows * dim, 400 + k as u64, 0.0, 1.0); // loss = sum(y * w)
        let g = data(dim, 500 + k as u64, 1.0, 0.5);
        let b = data(dim, 600 + k as u64, 0.0, 0.5);
        let wt = tensor(w, [rows, dim], &dev);

        for rms in [false, true] {
            let run = |fused: bool| {
                let xt = tensor(x.clone(), [rows, dim], &dev).require_grad();
                let y;
                let (gamma, beta);
                // The modules outlive the backward pass, as in a training step.
                let (mut keep_ln, mut keep_rms) = (None, None);
                if rms {
                    let mut m = RmsNormConfig::new(dim).with_epsilon(1e-6).init(&dev);
                    m.gamma = m
                        .gamma
                        .map(|_| tensor(g.clone(), [dim], &dev).require_grad());
                    beta = None;
                    y = if fused {
                        let mut f = RmsNormConfig::new(dim).with_epsilon(1e-6).init_fused(&dev);
                        f.gamma = f
                            .gamma
                            .map(|_| tensor(g.clone(), [dim], &dev).require_grad());
                        gamma = f.gamma.val();
                        f.forward(xt.clone())
                    } else {
                        gamma = m.gamma.val();
                        m.forward(xt.clone())
                    };
                    keep_rms = Some(m);
                } else {
                    let mut m = LayerNormConfig::new(dim).init(&dev);
                    m.gamma = m
                        .gamma
                        .map(|_| tensor(g.clone(), [dim], &dev).require_grad());
                    m.beta = m
                        .beta
                        .map(|p| p.map(|_| tensor(b.clone(), [dim], &dev).require_grad()));
                    gamma = m.gamma.val();
                    beta = m.beta.as_ref().map(|p| p.val());
                    y = if fused {
                        layer_norm(xt.clone(), Some(gamma.clone()), beta.clone(), 1e-5).unwrap()
                    } else {
                        m.forward(xt.clone())
                    };
                    keep_ln = Some(m);
                }
                let grads = (y * wt.clone()).sum().backward();
                let grad = |t: &Tensor<2>| values(t.grad(&grads).expect("a gradient of x"));
                let grad1 = |t: &Tensor<1>, what| {
                    values(t.grad(&grads).unwrap_or_else(|| {
                        panic!("no gradient of {what} (fused: {fused}, D = {dim})")
                    }))
                };
                let out = (
                    grad(&xt),
                    grad1(&gamma, "gamma"),
                    beta.as_ref().map(|b| grad1(b, "beta")),
                );
                drop((keep_ln, keep_rms));
                out
            };
            let (fx, fg, fb) = run(true);
            let (nx, ng, nb) = run(false);
            // The fused gradients against the f64 reference, to the README's bound.
            let dy = data(rows * dim, 400 + k as u64, 0.0, 1.0);
            let r = if rms {
                reference::rms_norm_backward(&x, &dy, dim, Some(&g), 1e-6)
            } else {
                reference::layer_norm_backward(&x, &dy, dim, Some(&g), 1e-5)
            };
            let name = if rms { "RMSNorm" } else { "LayerNorm" };
            for (i, (got, want)) in fx.iter().zip(&r.dx).enumerate() {
                let bound = 1e-5 + 1e-5 * r.dx_scale[i];
                assert!(
                    (f64::from(*got) - want).abs() <= bound,
                    "{name} D={dim} dx[{i}]: {got} vs {want}"
                );
            }
            for (i, (got, want)) in fg.iter().zip(&r.dweight).enumerate() {
                let bound = 1e-5 + 1e-5 * r.dweight_scale[i];
                assert!(
                    (f64::from(*got) - want).abs() <= bound,
                    "{name} D={dim} dgamma[{i}]: {got} vs {want}"
                );
            }
            if let Some(fb) = &fb {
                for (i, (got, want)) in fb.iter().zip(&r.dbias).enumerate() {
                    let bound = 1e-5 + 1e-5 * r.dbias_scale[i];
                    assert!(
                        (f64::from(*got) - want).abs() <= bound,
                        "{name} D={dim} dbeta[{i}]: {got} vs {want}"
                    );
                }
            }
            let what = format!("{} D={dim}", if rms { "RMSNorm" } else { "LayerNorm" });
            // burn-nn's chain rounds at every step: its gradient is the looser of the two.
            let tol = 2e-4 * (dim as f64).sqrt().max(1.0);
            assert_close(&format!("{what} dx"), &fx, &nx, tol, 1e-3);
            assert_close(&format!("{what} dgamma"), &fg, &ng, tol, 1e-3);
            if let (Some(fb), Some(nb)) = (fb, nb) {
                assert_close(&format!("{what} dbeta"), &fb, &nb, tol, 1e-3);
            }
        }
    }
}

#[test]
fn half_precision_tensors() {
    let dev = device();
    if !dev.supports_dtype(DType::F16) {
        panic!("this adapter gives burn no f16 tensors (SHADER_F16); the f16 path is untested");
    }
    let dim = 1000;
    let x = data(8 * dim, 11, 0.0, 2.0);
    let xt = tensor(x.clone(), [8, dim], dev).cast(DType::F16);
    let x16 = values(xt.clone());
    let y = layer_norm(xt.clone(), None, None, 1e-5).unwrap();
    assert_eq!(y.dtype(), DType::F16);
    let want = reference::layer_norm(&x16, dim, None, None, 1e-5).y;
    assert_close("f16 LayerNorm", &values(y), &want, 1e-3, 1e-3);
    // Autodiff in f16: gradients in f16, close to the f32 ones.
    let ad = dev.clone().autodiff();
    let xa = tensor(x16.clone(), [8, dim], &ad)
        .cast(DType::F16)
        .require_grad();
    let ga = tensor(vec![1.0; dim], [dim], &ad)
        .cast(DType::F16)
        .require_grad();
    let grads = rms_norm(xa.clone(), Some(ga.clone()), 1e-6)
        .unwrap()
        .cast(DType::F32)
        .sum()
        .backward();
    let dg = ga.grad(&grads).unwrap();
    assert_eq!(dg.dtype(), DType::F16);
    let x32 = tensor(x16, [8, dim], &ad).require_grad();
    let g32 = tensor(vec![1.0; dim], [dim], &ad).require_grad();
    let grads32 = rms_norm(x32, Some(g32.clone()), 1e-6)
        .unwrap()
        .sum()
        .backward();
    assert_close(
        "f16 dgamma",
        &values(dg),
        &values(g32.grad(&grads32).unwrap()),
        1e-2,
        1e-2,
    );
}

#[test]
fn bad_input_is_an_error() {
    let dev = device();
    let x = tensor(data(4 * 16, 1, 0.0, 1.0), [4, 16], dev);
    let short = tensor(vec![1.0; 15], [15], dev);
    assert!(matches!(
        layer_norm(x.clone(), Some(short.clone()), None, 1e-5),
        Err(Error::Burn(m)) if m.contains("gamma")
    ));
    assert!(matches!(
        rms_norm(x.clone(), None, -1.0),
        Err(Error::BadEpsilon(_))
    ));
    assert!(matches!(
        rms_norm(x.clone(), None, f64::NAN),
        Err(Error::BadEpsilon(_))
    ));
    let empty = tensor(Vec::new(), [4, 0], dev);
    assert!(matches!(rms_norm(empty, None, 1e-6), Err(Error::ZeroDim)));
    let no_rows = tensor(Vec::new(), [0, 16], dev);
    assert_eq!(rms_norm(no_rows, None, 1e-6).unwrap().dims(), [0, 16]);
    assert!(matches!(
        rms_norm(x.clone(), None, 1e39),
        Err(Error::BadEpsilon(_))
    ));
    // β in another type than γ is cast to γ's, not refused inside burn.
    let beta16 = tensor(vec![0.5; 16], [16], dev).cast(DType::F16);
    let y = values(layer_norm(x.clone(), None, Some(beta16), 1e-5).unwrap());
    let want = reference::layer_norm(&values(x.clone()), 16, None, Some(&[0.5; 16]), 1e-5).y;
    assert_close("f16 beta", &y, &want, 1e-5, 1e-5);
    // A burn wgpu device that was not made through wgpu_norm::burn::init.
    // A burn device an application made from its own wgpu device, not yet announced.
    let setup = pollster::block_on(async {
        let instance = wgpu_norm::adapter::instance();
        let adapter = wgpu_norm::adapter::pick_adapter_named(&instance, None)
            .await
            .unwrap();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("the application's device"),
                required_features: adapter.features() - wgpu::Features::MAPPABLE_PRIMARY_BUFFERS,
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await
            .unwrap();
        WgpuSetup {
            backend: adapter.get_info().backend,
            instance,
            adapter,
            device,
            queue,
        }
    });
    let other = Device::wgpu_options().setup(setup.clone()).init().unwrap();
    let x = data(16, 3, 0.0, 1.0);
    let elsewhere = tensor(x.clone(), [1, 16], &other);
    assert!(matches!(
        rms_norm(elsewhere.clone(), None, 1e-6),
        Err(Error::Burn(m)) if m.contains("not registered")
    ));
    wgpu_norm::burn::register(&other, &setup).unwrap();
    let y = values(rms_norm(elsewhere, None, 1e-6).unwrap());
    assert_close(
        "registered",
        &y,
        &reference::rms_norm(&x, 16, None, 1e-6).y,
        1e-5,
        1e-5,
    );
}

/// Only γ trained (x a constant), no β: the gradient γ gets, and none is computed for x.
#[test]
fn gradients_of_parameters_alone() {
    let dev = device().clone().autodiff();
    let (rows, dim) = (5, 33);
    let x = data(rows * dim, 21, 0.0, 2.0);
    let dy = data(rows * dim, 22, 0.0, 1.0);
    let xt = tensor(x.clone(), [rows, dim], &dev);
    let mut m = LayerNormConfig::new(dim).with_bias(false).init_fused(&dev);
    assert!(m.beta.is_none());
    let g = data(dim, 23, 1.0, 0.3);
    m.gamma = m
        .gamma
        .map(|_| tensor(g.clone(), [dim], &dev).require_grad());
    let gamma = m.gamma.val();
    let grads = (m.forward(xt.clone()) * tensor(dy.clone(), [rows, dim], &dev))
        .sum()
        .backward();
    assert!(xt.grad(&grads).is_none());
    let r = reference::layer_norm_backward(&x, &dy, dim, Some(&g), 1e-5);
    assert_close(
        "dgamma alone",
        &values(gamma.grad(&grads).unwrap()),
        &r.dweight,
        1e-5,
        1e-5,
    );
}

/// 16-bit activations at odd D, with f32 γ (mixed), forward against the reference.
#[test]
fn half_precision_odd_rows_and_mixed_parameters() {
    let dev = device();
    for dim in [7, 4097] {
        let x = data(3 * dim, dim as u64, 0.5, 2.0);
        let xt = tensor(x, [3, dim], dev).cast(DType::F16);
        let x16 = values(xt.clone());
        let g = data(dim, 31, 1.0, 0.5);
        let y = rms_norm(xt, Some(tensor(g.clone(), [dim], dev)), 1e-6).unwrap();
        assert_eq!(y.dtype(), DType::F16);
        let want = reference::rms_norm(&x16, dim, Some(&g), 1e-6).y;
        assert_close(
            &format!("f16 x, f32 gamma, D={dim}"),
            &values(y),
            &want,
            2e-3,
            2e-3,
        );
    }
}
