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
