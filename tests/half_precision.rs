//! f16 and bf16 storage (f32 arithmetic) for both norms: vec4 and packed-scalar paths, odd D
//! and odd element offsets, the mixed mode (f32 weights), against the f64 reference computed
//! from the same 16-bit inputs.

mod common;

use common::storage::{AnyCase, check_any, quantize};
use common::{Op, Rng, gpu, tree_gpu};
use wgpu_norm::DType;

const HALVES: [DType; 2] = [DType::F16, DType::Bf16];

/// Many rows with small D, few with large: vec4 (D % 4 == 0, even offsets) and packed scalar
/// (odd D) paths, the cache and the streamed path.
const SHAPES: &[(usize, usize)] = &[
    (70000, 1),
    (257, 2),
    (257, 3),
    (257, 4),
    (257, 7),
    (257, 31),
    (100, 256),
    (33, 1000),
    (33, 1024),
    (33, 1025),
    (3, 4096),
    (3, 4097),
    (2, 12288),
    (1, 65536),
];

#[test]
fn shape_grid() {
    for op in [Op::LayerNorm, Op::RmsNorm] {
        for dtype in HALVES {
            for (i, &(rows, dim)) in SHAPES.iter().enumerate() {
                check_any(gpu(), &AnyCase::new(op, dtype, rows, dim, 10 + i as u64));
            }
        }
    }
}

#[test]
fn odd_offsets_straddle_words() {
    // Odd element offsets put every row start (and, with odd D, every other row end) in the
    // middle of a 32-bit word shared with a neighbour.
    for op in [Op::LayerNorm, Op::RmsNorm] {
        for dtype in HALVES {
            for (offset, rows, dim) in [
                (1, 99, 5),
                (3, 17, 64),
                (1, 5, 1025),
                (5, 2, 20001),
                (2, 40, 7),
            ] {
                let mut c = AnyCase::new(op, dtype, rows, dim, offset as u64 + dim as u64);
                c.offset = offset;
                check_any(gpu(), &c);
                check_any(tree_gpu(), &c);
            }
        }
    }
}

#[test]
fn mixed_mode_f32_weights() {
    for op in [Op::LayerNorm, Op::RmsNorm] {
        for dtype in HALVES {
            for (rows, dim, offset) in [(64, 4096, 0), (9, 1001, 1), (200, 12, 4)] {
                let mut c = AnyCase::new(op, dtype, rows, dim, 5).mixed();
                c.offset = offset;
                check_any(gpu(), &c);
            }
        }
    }
}

#[test]
fn sums_of_squares_stay_in_f32() {
    // 1024 values of 300: the sum of squares, 9.2e7, is far beyond f16's 65504.
    for op in [Op::LayerNorm, Op::RmsNorm] {
        for dim in [1024, 1023] {
            let mut c = AnyCase::new(op, DType::F16, 2, dim, 1);
            c.x = vec![300.0; 2 * dim];
            c.x[dim + 5] = 296.0;
            let out = check_any(gpu(), &c);
            assert!(out.y.iter().all(|v| v.is_finite()));
        }
    }
}

#[test]
fn bf16_rounds_to_nearest_even() {
    // x + residual of two bf16 values is exact in f32 and often a tie between two bf16s: the
    // stored sum must be exactly half's round-to-nearest-even of it.
    for dim in [256, 255] {
        let c = AnyCase::new(Op::RmsNorm, DType::Bf16, 40, dim, 3).with_residual(true);
        let out = check_any(gpu(), &c);
        let r = c.residual.as_ref().unwrap();
        let mut ties = 0;
        for ((&g, &a), &b) in out.s.iter().zip(&c.x).zip(r) {
            let sum = a + b;
            let want = half::bf16::from_f32(sum).to_f32();
            assert_eq!(
                g.to_bits(),
                want.to_bits(),
                "{a} + {b} = {sum}: stored {g}, want {want}"
            );
            if sum.to_bits() & 0xffff == 0x8000 {
                ties += 1;
            }
        }
        assert!(ties > 10, "the data must exercise ties ({ties})");
    }
}

#[test]
fn data_offset_by_1e3_in_f16() {
    // f16 has 11 bits: 1000 +- 1 keeps only a few of them, but the pivot keeps what is there.
    let mut c = AnyCase::new(Op::LayerNorm, DType::F16, 3, 4096, 8);
    c.x = quantize(DType::F16, Rng::new(8).data(3 * 4096, 1000.0, 1.0));
    check_any(gpu(), &c);
}

/// The backward passes with x, dy and dx in 16 bits (dweight/dbias and statistics f32),
/// against the f64 reference on the same 16-bit inputs: dx within the storage type's
/// tolerance plus 1e-5 of the size of its terms, dweight/dbias as in f32.
#[test]
fn backward_in_16_bit_storage() {
    use common::backward::assert_sum_close;
    use common::storage::{at, stage, unstage};
    use wgpu_norm::{LayerNorm, LayerNormBackward, RmsNorm, RmsNormBackward, reference};
    let gpu = gpu();
    let cases = [
        (40, 64, 0, false, false),
        (9, 5, 1, true, false),
        (5, 1025, 3, false, true),
        (2, 20000, 2, true, false),
        (3000, 3, 0, false, false),
    ];
    for op in [Op::LayerNorm, Op::RmsNorm] {
        for dtype in HALVES {
            for &(rows, dim, off, saved, mixed) in &cases {
                let n = rows * dim;
                let par = if mixed { DType::F32 } else { dtype };
                let mut rng = Rng::new((rows * dim + off) as u64);
                let x = quantize(dtype, rng.data(n, 0.5, 2.0));
                let dy = quantize(dtype, rng.data(n, 0.0, 1.0));
                let w = quantize(par, rng.data(dim, 1.0, 0.5));
                let xb = stage(gpu, dtype, Some(&x), n, off);
                let dyb = stage(gpu, dtype, Some(&dy), n, off);
                let dxb = stage(gpu, dtype, None, n, off);
                let yb = stage(gpu, dtype, None, n, off);
                let wb = stage(gpu, par, Some(&w), dim, off);
                let stats = stage(gpu, DType::F32, None, 2 * rows, 0);
                let (dw, db) = (gpu.storage("dw", dim), gpu.storage("db", dim));
                let (mean, rstd) = (
                    at(&stats, 0, DType::F32, rows),
                    at(&stats, rows, DType::F32, rows),
                );
                let mut e = gpu.device.create_command_encoder(&Default::default());
                let (xt, yt) = (at(&xb, off, dtype, n), at(&yb, off, dtype, n));
                let (dyt, dxt, wt) = (
                    at(&dyb, off, dtype, n),
                    at(&dxb, off, dtype, n),
                    at(&wb, off, par, dim),
                );
                let layer = op == Op::LayerNorm;
                if layer {
                    if saved {
                        let f = LayerNorm::new(rows, dim, xt, yt)
                            .dtype(dtype)
                            .mean(mean)
                            .rstd(rstd);
                        gpu.norms.layer_norm(&mut e, &f).unwrap();
                    }
                    let mut b = LayerNormBackward::new(rows, dim, xt, dyt, dxt)
                        .eps(1e-5)
                        .dtype(dtype)
                        .param_dtype(par)
                        .weight(wt)
                        .grad_weight(&dw)
                        .grad_bias(&db);
                    if saved {
                        b = b.saved(mean, rstd);
                    }
                    gpu.norms.layer_norm_backward(&mut e, &b).unwrap();
                } else {
                    if saved {
                        let f = RmsNorm::new(rows, dim, xt, yt)
                            .dtype(dtype)
                            .eps(1e-5)
                            .rrms(rstd);
                        gpu.norms.rms_norm(&mut e, &f).unwrap();
                    }
                    let mut b = RmsNormBackward::new(rows, dim, xt, dyt, dxt)
                        .eps(1e-5)
                        .dtype(dtype)
                        .param_dtype(par)
                        .weight(wt)
                        .grad_weight(&dw);
                    if saved {
                        b = b.saved(rstd);
                    }
                    gpu.norms.rms_norm_backward(&mut e, &b).unwrap();
                }
                gpu.queue.submit([e.finish()]);
                let words = (dxb.size() / 4) as usize;
                let out =
                    pollster::block_on(gpu.read_async(&[(&dxb, words), (&dw, dim), (&db, dim)]))
                        .unwrap();
                let dx = unstage(&out[0], dtype, n, off, "dx");
                let r = if layer {
                    reference::layer_norm_backward(&x, &dy, dim, Some(&w), 1e-5)
                } else {
                    reference::rms_norm_backward(&x, &dy, dim, Some(&w), 1e-5)
                };
                let what = format!(
                    "{op:?} {dtype}/{par} rows={rows} dim={dim} offset={off} saved={saved}"
                );
                for (i, ((&g, &e), &s)) in dx.iter().zip(&r.dx).zip(&r.dx_scale).enumerate() {
                    let err = (f64::from(g) - e).abs();
                    let tol = reference::tolerance(dtype, e) + 1e-5 * s;
                    assert!(
                        err <= tol,
                        "{what}: dx[{i}] = {g} vs {e} (tolerance {tol:e})"
                    );
                }
                assert_sum_close(
                    &out[1],
                    &r.dweight,
                    &r.dweight_scale,
                    &format!("{what}: dweight"),
                );
                if layer {
                    assert_sum_close(&out[2], &r.dbias, &r.dbias_scale, &format!("{what}: dbias"));
                }
            }
        }
    }
}
