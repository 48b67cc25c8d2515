//! RMSNorm on the GPU against `reference::rms_norm` (run on lavapipe in CI).

mod common;

use common::{Case, Op, Rng, assert_close, check, gpu, run, tree_gpu};

#[test]
fn shape_grid() {
    common::shape_grid(gpu(), Op::RmsNorm, 0);
}

#[test]
fn shape_grid_tree_reduction() {
    common::shape_grid(tree_gpu(), Op::RmsNorm, 100);
}

#[test]
fn weight_and_rrms_optional() {
    for (k, (w, stats)) in [(false, true), (true, false), (false, false)]
        .into_iter()
        .enumerate()
    {
        for dim in [3, 256, 4097] {
            let mut case = Case::new(Op::RmsNorm, 5, dim, 7 + k as u64);
            if !w {
                case.weight = None;
            }
            case.stats = stats;
            check(gpu(), &case);
        }
    }
}

#[test]
fn byte_offsets_of_every_kind() {
    common::byte_offsets(Op::RmsNorm);
}

#[test]
fn constant_rows() {
    for dim in [1, 4, 1000, 4097] {
        let mut case = Case::new(Op::RmsNorm, 4, dim, 3);
        for (r, row) in case.x.chunks_mut(dim).enumerate() {
            row.fill([3.5, -1e4, 1e-20, 1e-3][r]);
        }
        check(gpu(), &case);
        // With eps = 0 the result is exactly sign(x) * weight while x^2 is a normal f32.
        let mut case = Case::new(Op::RmsNorm, 2, dim, 4);
        for (r, row) in case.x.chunks_mut(dim).enumerate() {
            row.fill([0.25, -1e4][r]);
        }
        case.eps = 0.0;
        check(gpu(), &case);
        // 0 / 0 stays NaN, in the reference too.
        case.x = vec![0.0; dim];
        let out = run(gpu(), &case);
        assert!(out.y.iter().all(|v| v.is_nan()), "0/0 must stay NaN");
    }
}

#[test]
fn data_offset_by_1e4() {
    common::offset_data(Op::RmsNorm);
}

#[test]
fn very_small_and_very_large_magnitudes() {
    common::magnitudes(Op::RmsNorm);
}

#[test]
fn rows_whose_squares_leave_f32() {
    common::extreme_magnitudes(Op::RmsNorm);
}

#[test]
fn a_nan_or_inf_stays_in_its_row() {
    for (dim, bad) in [
        (5, f32::NAN),
        (1024, f32::NAN),
        (4097, f32::INFINITY),
        (64, f32::NEG_INFINITY),
    ] {
        let mut case = Case::new(Op::RmsNorm, 4, dim, 11);
        let at = 2 * dim + dim / 2;
        case.x[at] = bad;
        let out = run(gpu(), &case);
        let r = case.reference();
        for row in [0, 1, 3] {
            let s = row * dim..(row + 1) * dim;
            assert_close(&out.y[s.clone()], &r.y[s], &format!("clean row {row}"));
        }
        let bad_row = &out.y[2 * dim..3 * dim];
        if bad.is_nan() {
            assert!(
                bad_row.iter().all(|v| v.is_nan()),
                "a NaN makes its row NaN"
            );
        } else {
            // An Inf makes rrms 0: the Inf itself becomes NaN (inf * 0), the rest 0.
            assert_eq!(out.rstd[2], 0.0);
            for (i, v) in bad_row.iter().enumerate() {
                assert!(if 2 * dim + i == at {
                    v.is_nan()
                } else {
                    *v == 0.0
                });
            }
        }
    }
}

#[test]
fn deterministic() {
    common::deterministic(Op::RmsNorm);
}

#[test]
fn few_long_rows_split_over_workgroups() {
    common::few_long_rows(Op::RmsNorm);
}

#[test]
fn few_long_rows_split_with_every_storage_and_option() {
    common::storage::split_rows_any(Op::RmsNorm);
}

#[test]
fn rows_past_the_register_cache() {
    common::storage::rows_past_the_cache(Op::RmsNorm);
}

#[test]
fn random_shapes() {
    common::random_shapes(Op::RmsNorm, 4048);
}

#[test]
fn fused_residual_add() {
    use common::storage::{AnyCase, check_any};
    for dtype in [
        wgpu_norm::DType::F32,
        wgpu_norm::DType::F16,
        wgpu_norm::DType::Bf16,
    ] {
        for (rows, dim, offset) in [(300, 64, 0), (7, 1025, 1), (3, 20000, 2), (70000, 3, 0)] {
            for write_back in [false, true] {
                let mut c = AnyCase::new(Op::RmsNorm, dtype, rows, dim, dim as u64)
                    .with_residual(write_back);
                c.offset = offset;
                check_any(gpu(), &c);
            }
        }
    }
}

#[test]
fn gemma_offset() {
    use common::storage::{AnyCase, check_any};
    for dtype in [wgpu_norm::DType::F32, wgpu_norm::DType::Bf16] {
        for (rows, dim) in [(40, 256), (5, 1001), (2, 20000)] {
            let mut c = AnyCase::new(Op::RmsNorm, dtype, rows, dim, 6);
            c.gemma_offset = true;
            check_any(gpu(), &c);
        }
    }
}

#[test]
fn rounding_orders() {
    use common::storage::{AnyCase, check_any};
    for dtype in [wgpu_norm::DType::F16, wgpu_norm::DType::Bf16] {
        for (rows, dim, mixed) in [(64, 256, false), (9, 1001, true), (2, 20000, false)] {
            let mut c = AnyCase::new(Op::RmsNorm, dtype, rows, dim, 7);
            if mixed {
                c = c.mixed();
            }
            let gemma = check_any(gpu(), &c);
            c.llama_rounding = true;
            let llama = check_any(gpu(), &c);
            // Same data, two orders: some outputs must differ, by a rounding.
            let differ = gemma.y.iter().zip(&llama.y).filter(|(a, b)| a != b).count();
            assert!(differ > 0, "{dtype}: the two orders gave identical outputs");
        }
    }
}

#[test]
fn partial_rms_norm() {
    use common::storage::{AnyCase, check_any};
    for (p, rows, dim) in [
        (0.0625, 64, 1024),
        (0.5, 100, 5),
        (0.3, 3, 20000),
        (1.0, 9, 77),
        (1e-6, 4, 64),
    ] {
        for dtype in [wgpu_norm::DType::F32, wgpu_norm::DType::F16] {
            let mut c = AnyCase::new(Op::RmsNorm, dtype, rows, dim, 8);
            c.partial = Some(p);
            check_any(gpu(), &c);
        }
    }
    // p = 1 is plain RMSNorm, bit for bit.
    let c = AnyCase::new(Op::RmsNorm, wgpu_norm::DType::F32, 9, 300, 9);
    let mut p1 = c.clone();
    p1.partial = Some(1.0);
    let a = common::storage::run_any(gpu(), &c);
    let b = common::storage::run_any(gpu(), &p1);
    assert_eq!(a.y, b.y);
}

#[test]
fn residual_updated_in_place() {
    // vLLM's fused_add_rms_norm writes the new residual stream over the old one; the written
    // sum may also replace x. Both in the register-cached and the streamed paths, and at odd D
    // (strided V's; in bf16 paired, whole words written over the words just read).
    use wgpu_norm::{DType, LayerNorm, RmsNorm, TensorRef, reference};
    let gpu = gpu();
    for dtype in [DType::F32, DType::Bf16] {
        for (rows, dim) in [(5, 1000), (2, 65536), (9, 4097)] {
            let n = rows * dim;
            let mut rng = Rng::new(dim as u64);
            let q = |v: Vec<f32>| -> Vec<f32> {
                v.into_iter()
                    .map(|x| dtype.round(f64::from(x)) as f32)
                    .collect()
            };
            let x = q(rng.data(n, 0.5, 2.0));
            let r = q(rng.data(n, -0.25, 1.0));
            let bytes = n as u64 * dtype.size();
            for over_x in [false, true] {
                let xb = gpu.upload_as("x", &x, dtype);
                let rb = gpu.upload_as("r", &r, dtype);
                let yb = gpu.upload_as("y", &x, dtype);
                let t = |b| TensorRef::new(b, 0, bytes);
                let s_into = if over_x { &xb } else { &rb };
                let mut encoder = gpu.device.create_command_encoder(&Default::default());
                if over_x {
                    let op = LayerNorm::new(rows, dim, t(&xb), t(&yb))
                        .dtype(dtype)
                        .residual(t(&rb))
                        .residual_out(t(s_into));
                    gpu.norms.layer_norm(&mut encoder, &op).unwrap();
                } else {
                    let op = RmsNorm::new(rows, dim, t(&xb), t(&yb))
                        .dtype(dtype)
                        .eps(1e-5)
                        .residual(t(&rb))
                        .residual_out(t(s_into));
                    gpu.norms.rms_norm(&mut encoder, &op).unwrap();
                }
                gpu.queue.submit([encoder.finish()]);
                let words = (bytes as usize).div_ceil(4);
                let out =
                    pollster::block_on(gpu.read_async(&[(&yb, words), (s_into, words)])).unwrap();
                let decode = |w: &[f32]| {
                    let b: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
                    dtype.decode(&b[..bytes as usize])
                };
                let (y, s) = (decode(&out[0]), decode(&out[1]));
                let want = if over_x {
                    reference::layer_norm_with(
                        &x,
                        dim,
                        &reference::LayerNormSpec {
                            residual: Some(&r),
                            dtype,
                            ..Default::default()
                        },
                    )
                } else {
                    reference::rms_norm_with(
                        &x,
                        dim,
                        &reference::RmsNormSpec {
                            residual: Some(&r),
                            dtype,
                            eps: 1e-5,
                            ..Default::default()
                        },
                    )
                };
                let (ratio, i) = reference::worst_error_in(dtype, &y, &want.y);
                assert!(
                    ratio <= 1.0,
                    "{dtype} D={dim} over_x={over_x}: y[{i}] = {} vs {}",
                    y[i],
                    want.y[i]
                );
                let (ratio, i) = reference::worst_error_in(dtype, &s, &want.s);
                assert!(
                    ratio <= 1.0,
                    "{dtype} D={dim}: s[{i}] = {} vs {}",
                    s[i],
                    want.s[i]
                );
            }
        }
    }
}
