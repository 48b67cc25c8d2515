//! The per-adapter launch shape (`Tuning`): every setting gives results within the same
//! tolerances (only the order of additions changes), and a bad one is an error.

mod common;

use wgpu_norm::{DType, Error, NormsOptions, SliceOptions, Tuning, reference};

/// The extremes and a middle of each knob, the 16-bit and strided rows' `V`s apart from the
/// f32 rows' (split_groups: never, every row of the grid's few long ones as many parts as it
/// may have, the default, a few; forward rows side by side below every V an invocation, one,
/// eight, four, the backward's below two, every one, four, one).
const TUNINGS: [Tuning; 4] = [
    Tuning {
        v_per_invocation: 1,
        v_per_invocation_16bit: 64,
        v_per_invocation_strided: 64,
        bytes_per_group: 4,
        split_groups: 0,
        side_by_side_below: 64,
        side_by_side_below_backward: 2,
    },
    Tuning {
        v_per_invocation: 2,
        v_per_invocation_16bit: 1,
        v_per_invocation_strided: 1,
        bytes_per_group: 65536,
        split_groups: u32::MAX,
        side_by_side_below: 1,
        side_by_side_below_backward: 64,
    },
    Tuning {
        v_per_invocation: 64,
        v_per_invocation_16bit: 2,
        v_per_invocation_strided: 4,
        bytes_per_group: 1 << 30,
        split_groups: wgpu_norm::shaders::SPLIT_GROUPS,
        side_by_side_below: 8,
        side_by_side_below_backward: 4,
    },
    Tuning {
        v_per_invocation: 16,
        v_per_invocation_16bit: 16,
        v_per_invocation_strided: 32,
        bytes_per_group: 1000,
        split_groups: 5,
        side_by_side_below: 4,
        side_by_side_below_backward: 1,
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
        // D = 300 and 1000: rows side by side under some of the tunings' thresholds and
        // alone under others (75 and 250 V's).
        for (rows, dim) in [
            (70, 1),
            (33, 7),
            (45, 128),
            (37, 300),
            (9, 1000),
            (3, 4097),
            (2, 9000),
        ] {
            // Without saved statistics, few long rows are split as split_groups says.
            for op in [common::Op::LayerNorm, common::Op::RmsNorm] {
                let mut case = common::Case::new(op, rows, dim, (rows * dim) as u64);
                case.stats = false;
                // In V's: four elements where D % 4 == 0, else one (a part's are single).
                let per_row = if dim % 4 == 0 { dim / 4 } else { dim } as u32;
                let parts =
                    wgpu_norm::shaders::split_parts(rows as u64, per_row, tuning.split_groups);
                let split = parts > 1;
                // The shapes below that split do so under every tuning but split_groups = 0.
                assert_eq!(split, tuning.split_groups > rows as u32 && dim >= 4097);
                assert_eq!(
                    common::splits(&gpu, &case),
                    split,
                    "{tuning:?} {rows}x{dim}"
                );
                common::check(&gpu, &case);
            }
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
        Tuning {
            v_per_invocation_16bit: 0,
            ..Default::default()
        },
        Tuning {
            v_per_invocation_16bit: 96,
            ..Default::default()
        },
        Tuning {
            v_per_invocation_strided: 0,
            ..Default::default()
        },
        Tuning {
            v_per_invocation_strided: 12,
            ..Default::default()
        },
        Tuning {
            side_by_side_below: 0,
            ..Default::default()
        },
        Tuning {
            side_by_side_below: 6,
            ..Default::default()
        },
        Tuning {
            side_by_side_below: 128,
            ..Default::default()
        },
        Tuning {
            side_by_side_below_backward: 0,
            ..Default::default()
        },
        Tuning {
            side_by_side_below_backward: 3,
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

#[test]
fn autotune_measures_once_then_reads_the_cache() {
    let gpu = common::gpu();
    let dir = std::env::temp_dir().join(format!("wgpu-norm-tune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = NormsOptions::default();
    // A small grid: the measurement itself, not its verdict on this adapter, is under test.
    let grid = wgpu_norm::tune::Grid {
        dims: vec![7, 1024, 4097],
        bytes: Some(64 << 10),
        side_by_side_dims: vec![256, 512],
    };
    let tune = || {
        wgpu_norm::tune::tuning_cached_in(&dir, &gpu.device, &gpu.queue, options, &grid).unwrap()
    };
    let first = tune();
    assert!(first.measured);
    let candidates = wgpu_norm::tune::candidates();
    assert!(wgpu_norm::tune::is_candidate(&first.tuning), "{first:?}");
    // Every candidate (timed at D = 1024 alone), then whole rows against split ones for a
    // decode step, then the other candidates for strided rows (timed at D = 7 and 4097),
    // then the other thresholds for rows side by side (timed at D = 256 and 512), forward
    // and then backward, then 16-bit rows with twice as many V's as f32 ones against as
    // many. A knob's value that runs the same kernels as one before it at its stage's D is
    // not timed: each of the three knob stages has at least one score and at most one for
    // each other candidate.
    let whole = &first.scores[candidates.len()];
    assert_eq!(whole.0.split_groups, 0);
    let knobs = &first.scores[candidates.len() + 1..first.scores.len() - 1];
    let defaults = Tuning::default();
    // The stage an entry belongs to: the strided rows' (0), then each side-by-side knob's
    // (the stages before leave them at their defaults, and a value equal to the shape
    // chosen's is never timed).
    let stage_of = |t: &Tuning| {
        if t.side_by_side_below_backward != defaults.side_by_side_below_backward {
            2
        } else if t.side_by_side_below != defaults.side_by_side_below {
            1
        } else {
            0
        }
    };
    let stages: Vec<usize> = knobs.iter().map(|s| stage_of(&s.0)).collect();
    assert!(stages.is_sorted(), "{first:?}");
    type Knob = fn(&mut Tuning) -> &mut u32;
    let all: [(Knob, &[u32]); 3] = [
        (
            |t| &mut t.v_per_invocation_strided,
            &wgpu_norm::tune::STRIDED_CANDIDATES,
        ),
        (
            |t| &mut t.side_by_side_below,
            &wgpu_norm::tune::SIDE_BY_SIDE_CANDIDATES,
        ),
        (
            |t| &mut t.side_by_side_below_backward,
            &wgpu_norm::tune::SIDE_BY_SIDE_BACKWARD_CANDIDATES,
        ),
    ];
    for (stage, (knob, values)) in all.into_iter().enumerate() {
        let scores: Vec<Tuning> = knobs
            .iter()
            .filter(|s| stage_of(&s.0) == stage)
            .map(|s| s.0)
            .collect();
        assert!(
            !scores.is_empty() && scores.len() < values.len(),
            "stage {stage}: {first:?}"
        );
        let mut tried: Vec<u32> = scores.iter().map(|t| *knob(&mut t.clone())).collect();
        tried.sort_unstable();
        tried.dedup();
        assert_eq!(tried.len(), scores.len(), "stage {stage}: {first:?}");
        assert!(tried.iter().all(|v| values.contains(v)), "{first:?}");
        // The knob alone differs from one entry of the stage to the next.
        let without = |t: &Tuning| {
            let mut t = *t;
            *knob(&mut t) = 0;
            t
        };
        for t in &scores {
            assert_eq!(without(t), without(&scores[0]), "stage {stage}: {first:?}");
        }
    }
    let twice = first.scores.last().unwrap();
    assert_eq!(
        twice.0.v_per_invocation_16bit,
        (2 * twice.0.v_per_invocation).min(64)
    );
    // The default is the yardstick: its own score is exactly 1, every score is finite.
    assert_eq!(first.scores[0], (Tuning::default(), 1.0));
    assert!(
        first.scores.iter().all(|s| s.1.is_finite() && s.1 > 0.0),
        "{first:?}"
    );
    // A choice other than the default beats it by the margin.
    let chosen = first.scores.iter().find(|s| s.0 == first.tuning).unwrap().1;
    assert!(first.tuning == Tuning::default() || chosen < 1.0 - wgpu_norm::tune::MARGIN);
    eprintln!("autotune on {}: {first:?}", gpu.describe());

    let path = first.cache.clone().unwrap();
    let second = tune();
    assert!(
        !second.measured && second.tuning == first.tuning,
        "{second:?}"
    );

    // A corrupt file is measured again (and rewritten).
    std::fs::write(&path, "not a tuning").unwrap();
    let again = tune();
    assert!(again.measured && again.cache == Some(path.clone()));
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("v_per_invocation=")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
