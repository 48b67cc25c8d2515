//! f16 and bf16 storage (f32 arithmetic) for both norms: vec4 and strided paths, odd D
//! and odd element offsets, the mixed mode (f32 weights), against the f64 reference computed
//! from the same 16-bit inputs.

mod common;

use common::storage::{AnyCase, check_any, quantize};
use common::{Op, Rng, gpu, small_binding_gpu, tree_gpu};
use wgpu_norm::DType;

const HALVES: [DType; 2] = [DType::F16, DType::Bf16];

/// Many rows with small D, few with large: vec4 (D % 4 == 0, even offsets) and strided
/// paths (odd D: paired V's, whole words inside a row and per-element stores at its ends),
/// the cache and the streamed path; short rows side by side up to the forward's 127 `V`s
/// (D = 507, paired).
const SHAPES: &[(usize, usize)] = &[
    (70000, 1),
    (257, 2),
    (257, 3),
    (257, 4),
    (257, 7),
    (257, 31),
    (100, 256),
    (65, 507),
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
fn outputs_off_the_inputs_words() {
    // Forward rows stored in 16 bits, off vec4 alignment, with x (and the residual) at one
    // element offset and y (and residual_out) at another. Side by side (D = 5, 6, 7), one row
    // a workgroup, the cache and the streamed path (D = 20001), a fused residual written back
    // (rows = 40, 9).
    for op in [Op::LayerNorm, Op::RmsNorm] {
        for dtype in HALVES {
            for (offset, out_offset, rows, dim) in [
                // Strided single elements: rows starting on other halves of their words, or
                // at D % 4 == 0 off word boundaries.
                (0, 1, 99, 5),
                (1, 0, 40, 7),
                (1, 2, 17, 1026),
                (2, 3, 9, 4097),
                (0, 3, 9, 64),
                (1, 0, 2, 20001),
                // Paired V's (whole words): every row on the same half, alternating at odd D,
                // constant at D % 4 == 2 (odd for D = 1026 and 6).
                (3, 1, 9, 4097),
                (2, 0, 40, 7),
                (2, 4, 10, 1026),
                (1, 1, 2, 20001),
                (1, 1, 9, 1026),
                (3, 3, 40, 6),
            ] {
                let mut c = AnyCase::new(op, dtype, rows, dim, (offset + 7 * out_offset) as u64);
                if rows == 40 || rows == 9 {
                    c = c.with_residual(true);
                }
                c.offset = offset;
                c.out_offset = Some(out_offset);
                check_any(gpu(), &c);
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

/// One 16-bit backward case: x, dy and dx in `dtype` at element offset `off`, the weight in
/// f32 (`mixed`) or `dtype`, statistics saved by the forward or recomputed.
struct Bwd16 {
    op: Op,
    dtype: DType,
    rows: usize,
    dim: usize,
    off: usize,
    saved: bool,
    mixed: bool,
    x: Vec<f32>,
    dy: Vec<f32>,
    eps: f32,
    /// dx to the storage tolerance plus 1e-5 of its terms, without absolute floors.
    relative: bool,
    /// dx written over dy (the `shared` variants).
    in_place: bool,
    /// dx at this element offset rather than `off` (apart from dy).
    dx_off: Option<usize>,
    /// dx added to what dx holds (seeded values, in `dtype`).
    accumulate: bool,
}

impl Bwd16 {
    fn new(op: Op, dtype: DType, rows: usize, dim: usize, off: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        Bwd16 {
            op,
            dtype,
            rows,
            dim,
            off,
            saved: false,
            mixed: false,
            x: quantize(dtype, rng.data(rows * dim, 0.5, 2.0)),
            dy: quantize(dtype, rng.data(rows * dim, 0.0, 1.0)),
            eps: 1e-5,
            relative: false,
            in_place: false,
            dx_off: None,
            accumulate: false,
        }
    }

    /// Runs the backward (after the forward, for saved statistics) and checks dx, dweight and
    /// dbias against the f64 reference on the same 16-bit inputs.
    fn check(&self, gpu: &wgpu_norm::Gpu) {
        use common::backward::assert_sum_close;
        use common::storage::{at, stage, unstage};
        use wgpu_norm::{LayerNorm, RmsNorm, reference};
        let (dtype, rows, dim, off) = (self.dtype, self.rows, self.dim, self.off);
        let n = rows * dim;
        let par = if self.mixed { DType::F32 } else { dtype };
        let w = quantize(par, Rng::new(n as u64).data(dim, 1.0, 0.5));
        let xb = stage(gpu, dtype, Some(&self.x), n, off);
        let dyb = stage(gpu, dtype, Some(&self.dy), n, off);
        let dx_off = self.dx_off.unwrap_or(off);
        let prior = quantize(dtype, Rng::new(n as u64 + 1).data(n, 0.0, 1.0));
        let dxb = if self.in_place {
            dyb.clone()
        } else {
            stage(gpu, dtype, self.accumulate.then_some(&prior[..]), n, dx_off)
        };
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
            at(&dxb, dx_off, dtype, n),
            at(&wb, off, par, dim),
        );
        let layer = self.op == Op::LayerNorm;
        if layer {
            let mut f = LayerNorm::new(rows, dim, xt, yt)
                .dtype(dtype)
                .param_dtype(par)
                .weight(wt)
                .eps(self.eps);
            if self.saved {
                f = f.mean(mean).rstd(rstd);
                gpu.norms.record(&mut e, &f).unwrap();
            }
            let b = f
                .backward(dyt, dxt)
                .unwrap()
                .grad_weight(&dw)
                .grad_bias(&db)
                .accumulate_grad_input(self.accumulate);
            gpu.norms.record(&mut e, &b).unwrap();
        } else {
            let mut f = RmsNorm::new(rows, dim, xt, yt)
                .dtype(dtype)
                .param_dtype(par)
                .weight(wt)
                .eps(self.eps);
            if self.saved {
                f = f.rrms(rstd);
                gpu.norms.record(&mut e, &f).unwrap();
            }
            let b = f
                .backward(dyt, dxt)
                .unwrap()
                .grad_weight(&dw)
                .accumulate_grad_input(self.accumulate);
            gpu.norms.record(&mut e, &b).unwrap();
        }
        gpu.queue.submit([e.finish()]);
        let words = (dxb.size() / 4) as usize;
        let out =
            pollster::block_on(gpu.read_async(&[(&dxb, words), (&dw, dim), (&db, dim)])).unwrap();
        let dx = unstage(&out[0], dtype, n, dx_off, "dx");
        let r = if layer {
            reference::layer_norm_backward(&self.x, &self.dy, dim, Some(&w), self.eps)
        } else {
            reference::rms_norm_backward(&self.x, &self.dy, dim, Some(&w), self.eps)
        };
        let what = format!(
            "{:?} {dtype}/{par} rows={rows} dim={dim} offset={off} dx offset={dx_off} saved={} \
             in_place={} accumulate={}",
            self.op, self.saved, self.in_place, self.accumulate
        );
        for (i, ((&g, &e), &s)) in dx.iter().zip(&r.dx).zip(&r.dx_scale).enumerate() {
            // Accumulated: the sum in f32, rounded to the storage type once.
            let e = if self.accumulate {
                e + f64::from(prior[i])
            } else {
                e
            };
            let err = (f64::from(g) - e).abs();
            let tol = if self.relative {
                reference::relative_tolerance(dtype, e) + 1e-5 * s + f64::from(f32::MIN_POSITIVE)
            } else {
                reference::tolerance(dtype, e) + 1e-5 * s
            };
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

/// The backward passes with x, dy and dx in 16 bits (dweight/dbias and statistics f32),
/// against the f64 reference on the same 16-bit inputs: dx within the storage type's
/// tolerance plus 1e-5 of the size of its terms, dweight/dbias as in f32.
#[test]
fn backward_in_16_bit_storage() {
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
                let mut c = Bwd16::new(op, dtype, rows, dim, off, (rows * dim + off) as u64);
                c.saved = saved;
                c.mixed = mixed;
                c.check(gpu());
            }
        }
    }
}

/// The 16-bit backward at odd D, where each row starts on the other half of a word: paired
/// `V`s (whole words of x, dy and dx) with the workgroups in pairs, one taking the even rows of
/// a block and one the odd (`step_row`): several rows a workgroup at D = 4097 (601 rows: the
/// last block's odd workgroup left out; 600), 3001 rows at D = 7 side by side, 260 rows at
/// D = 20001 (LayerNorm's partial sums in memory, several rows a workgroup), dx added to what
/// it holds, rows out of f32's range retried in later steps of a workgroup, many dispatches
/// (small bindings); and dx on other halves than x and dy, which is not paired (each half
/// stored alone).
#[test]
fn backward_16_bit_rows_in_parity_pairs() {
    // (rows, dim, offset, dx offset, saved, accumulate)
    let cases = [
        (601, 4097, 1, 1, true, false),
        (600, 4097, 0, 0, false, true),
        (3001, 7, 1, 1, false, false),
        (3001, 7, 0, 0, true, true),
        (260, 20001, 1, 1, false, false),
        (9, 1025, 1, 0, true, false),
        (40, 7, 0, 1, false, false),
    ];
    for op in [Op::LayerNorm, Op::RmsNorm] {
        for dtype in HALVES {
            for &(rows, dim, off, dx_off, saved, accumulate) in &cases {
                let mut c = Bwd16::new(op, dtype, rows, dim, off, (rows + dim) as u64);
                c.saved = saved;
                c.dx_off = Some(dx_off);
                c.accumulate = accumulate;
                c.check(gpu());
            }
            // 61 rows in bindings of 128 KiB: 15 rows a dispatch, each with its own phase.
            let mut c = Bwd16::new(op, dtype, 61, 4097, 1, 61);
            c.saved = true;
            c.check(small_binding_gpu(128 << 10));
        }
        // bf16 has f32's range: rows whose squares leave it, in a workgroup's later steps and
        // in both workgroups of a pair, retried after the workgroup's other rows.
        for saved in [true, false] {
            let mut c = Bwd16::new(op, DType::Bf16, 601, 4097, 1, 5);
            let extreme = quantize(DType::Bf16, Rng::new(6).data(4 * 4097, 0.3e20, 1e20));
            c.x[300 * 4097..304 * 4097].copy_from_slice(&extreme);
            c.saved = saved;
            c.relative = true;
            c.check(gpu());
        }
    }
}

/// Saved statistics of data far from zero (f16 at 1000 +- 1, bf16 at 1000 +- 10: what their
/// 11 and 8 bits keep of it), against recomputed ones.
#[test]
fn backward_saved_statistics_far_from_zero() {
    for op in [Op::LayerNorm, Op::RmsNorm] {
        for (dtype, spread) in [(DType::F16, 1.0), (DType::Bf16, 10.0)] {
            for dim in [7, 1024, 4097] {
                for saved in [true, false] {
                    let mut c = Bwd16::new(op, dtype, 3, dim, 1, dim as u64);
                    c.x = quantize(dtype, Rng::new(dim as u64).data(3 * dim, 1000.0, spread));
                    c.saved = saved;
                    c.check(gpu());
                }
            }
        }
    }
}

/// bf16 has f32's range: rows whose squares leave it, forward and backward.
#[test]
fn bf16_rows_whose_squares_leave_f32() {
    for op in [Op::LayerNorm, Op::RmsNorm] {
        for (k, (center, spread, eps)) in [
            (0.3e20, 1e20, 1e-5),
            (-0.3e30, 1e30, 1e-5),
            (0.3e-25, 1e-25, 0.0),
        ]
        .into_iter()
        .enumerate()
        {
            // D = 4097: strided V's, the backward's retry (*_backward.wgsl, scale.wgsl) with
            // dx apart and over dy (retried at once, in `shared` variants).
            for dim in [7, 4096, 4097] {
                let extreme = quantize(DType::Bf16, Rng::new(k as u64).data(dim, center, spread));
                let mut f = AnyCase::new(op, DType::Bf16, 3, dim, 70 + k as u64);
                f.x[dim..2 * dim].copy_from_slice(&extreme);
                f.eps = eps;
                check_any(gpu(), &f);
                check_any(tree_gpu(), &f);
                let mut runs = vec![(true, false), (false, false)];
                if dim == 4097 {
                    runs.extend([(true, true), (false, true)]);
                }
                for (saved, in_place) in runs {
                    let mut b = Bwd16::new(op, DType::Bf16, 3, dim, 0, 80 + k as u64);
                    b.x[dim..2 * dim].copy_from_slice(&extreme);
                    b.eps = eps;
                    b.saved = saved;
                    b.relative = true;
                    b.in_place = in_place;
                    b.check(gpu());
                }
            }
        }
    }
}
