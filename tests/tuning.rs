//! The per-adapter launch shape (`Tuning`): every setting gives results within the same
//! tolerances (only the order of additions changes), and a bad one is an error.

mod common;

use wgpu_norm::{DType, Error, NormsOptions, SliceOptions, Tuning, reference};

/// The extremes and a middle of each knob.
const TUNINGS: [Tuning; 4] = [
    Tuning {
        v_per_invocation: 1,
        bytes_per_group: 4,
    },
    Tuning {
        v_per_invocation: 2,
        bytes_per_group: 65536,
    },
    Tuning {
        v_per_invocation: 64,
        bytes_per_group: 1 << 30,
    },
    Tuning {
        v_per_invocation: 16,
        bytes_per_group: 1000,
    },
];

#[test]
fn every_tuning_matches_the_reference_forward_and_backward() {
    for tuning in TUNINGS {
        let gpu = common::open(
            None,
            NormsOptions {
                tuning,
                ..Default::default()
            },
        );
        for (rows, dim) in [(70, 1), (33, 7), (3, 4097), (2, 9000)] {
            for dtype in [DType::F32, DType::Bf16] {
                let mut rng = common::Rng::new(rows as u64 * 31 + dim as u64);
                let x = dtype.decode(&dtype.encode(&rng.data(rows * dim, 3.0, 1.0)));
                let dy = dtype.decode(&dtype.encode(&rng.data(rows * dim, 0.0, 1.0)));
                let w = rng.data(dim, 1.0, 0.3);
                let b = rng.data(dim, 0.0, 0.3);
                let what = format!("{tuning:?} {dtype} rows={rows} D={dim}");
                let opts = SliceOptions {
                    weight: Some(&w),
                    bias: Some(&b),
                    dtype,
                    ..Default::default()
                };
                let y = gpu.layer_norm(&x, dim, &opts).unwrap().y;
                let r = reference::layer_norm(&x, dim, Some(&w), Some(&b), 1e-5);
                let (ratio, i) = reference::worst_error_in(dtype, &y, &r.y);
                assert!(
                    ratio <= 1.0,
                    "LayerNorm {what}: y[{i}] {} vs {}",
                    y[i],
                    r.y[i]
                );
                let opts = SliceOptions { bias: None, ..opts };
                let y = gpu.rms_norm(&x, dim, &opts).unwrap().y;
                let r = reference::rms_norm(&x, dim, Some(&w), f32::EPSILON);
                let (ratio, i) = reference::worst_error_in(dtype, &y, &r.y);
                assert!(
                    ratio <= 1.0,
                    "RMSNorm {what}: y[{i}] {} vs {}",
                    y[i],
                    r.y[i]
                );
                for layer in [true, false] {
                    let (g, r) = if layer {
                        let g = gpu.layer_norm_backward(&x, &dy, dim, &opts).unwrap();
                        (
                            g,
                            reference::layer_norm_backward(&x, &dy, dim, Some(&w), 1e-5),
                        )
                    } else {
                        let g = gpu.rms_norm_backward(&x, &dy, dim, &opts).unwrap();
                        let eps = f32::EPSILON;
                        (g, reference::rms_norm_backward(&x, &dy, dim, Some(&w), eps))
                    };
                    for (i, ((&g, &v), &s)) in g.dx.iter().zip(&r.dx).zip(&r.dx_scale).enumerate() {
                        let allowed = reference::tolerance(dtype, v) + 1e-5 * s;
                        assert!(
                            (f64::from(g) - v).abs() <= allowed,
                            "{what}: dx[{i}] {g} vs {v}"
                        );
                    }
                    let grads = g.dweight.iter().zip(&r.dweight).zip(&r.dweight_scale);
                    for (i, ((&g, &v), &s)) in grads.enumerate() {
                        let allowed = 1e-5 + 1e-5 * s;
                        assert!(
                            (f64::from(g) - v).abs() <= allowed,
                            "{what}: dw[{i}] {g} vs {v}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn a_bad_tuning_is_an_error() {
    let device = &common::gpu().device;
    for tuning in [
        Tuning {
            v_per_invocation: 3,
            ..Default::default()
        },
        Tuning {
            v_per_invocation: 0,
            ..Default::default()
        },
        Tuning {
            v_per_invocation: 128,
            ..Default::default()
        },
        Tuning {
            bytes_per_group: 0,
            ..Default::default()
        },
    ] {
        let options = NormsOptions {
            tuning,
            ..Default::default()
        };
        let r = wgpu_norm::Norms::with_options(device, options);
        assert!(matches!(r, Err(Error::BadTuning(_))), "{tuning:?}");
    }
}
