//! LayerNorm on the GPU against `reference::layer_norm` (run on lavapipe in CI).

mod common;

use common::{Case, Op, assert_close, check, gpu, run, tree_gpu};

#[test]
fn shape_grid() {
    common::shape_grid(gpu(), Op::LayerNorm, 0);
}

#[test]
fn shape_grid_tree_reduction() {
    common::shape_grid(tree_gpu(), Op::LayerNorm, 100);
}

#[test]
fn weight_and_bias_optional_and_stats_optional() {
    for (k, (w, b, stats)) in [
        (false, false, true),
        (true, false, false),
        (false, true, true),
        (true, true, false),
    ]
    .into_iter()
    .enumerate()
    {
        for dim in [3, 256, 4097] {
            let mut case = Case::new(Op::LayerNorm, 5, dim, 7 + k as u64);
            if !w {
                case.weight = None;
            }
            if !b {
                case.bias = None;
            }
            case.stats = stats;
            check(gpu(), &case);
        }
    }
}

#[test]
fn byte_offsets_of_every_kind() {
    common::byte_offsets(Op::LayerNorm);
}

#[test]
fn constant_rows_give_the_bias() {
    for dim in [1, 4, 1000, 4097] {
        let mut case = Case::new(Op::LayerNorm, 4, dim, 3);
        for (r, row) in case.x.chunks_mut(dim).enumerate() {
            row.fill([0.0, 3.5, -1e4, 1e-20][r]);
        }
        let out = check(gpu(), &case);
        let bias = case.bias.as_ref().unwrap();
        for row in out.y.chunks(dim) {
            assert_eq!(row, &bias[..], "a constant row must give exactly the bias");
        }
    }
}

#[test]
fn data_offset_by_1e4_keeps_f32_accuracy() {
    common::offset_data(Op::LayerNorm);
}

/// Six rows of `dim` whose invocations' shares have far-apart means of their own: the
/// variance is then mostly the spread of those means (the one reduction's between-share terms,
/// wg_moments in reduce.wgsl), in runs of one V, of a few, and by halves; a row whose first
/// element lies far from the rest (1e6 before values near 1); and rows of two values only.
fn cluster_rows(dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = common::Rng::new(seed);
    let mut x = vec![0.0; 6 * dim];
    for (r, row) in x.chunks_mut(dim).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            let noise = 1e-3 * rng.normal();
            *v = match r {
                // Clusters 3 apart around 1e4, by V, by 64 elements, by halves.
                0 => 1e4 + 3.0 * ((j / 4) % 2) as f64 + noise,
                1 => 1e4 + 3.0 * ((j / 64) % 2) as f64 + noise,
                2 => -5.0 + 10.0 * ((2 * j) / dim) as f64 + noise,
                // The first element 1e6 away from the rest.
                3 if j == 0 => 1e6,
                3 => 1.0 + rng.normal(),
                // Two values.
                4 => [0.25, -7.5][j % 2],
                _ => [1e4, 1e4 + 1.0][(j * 7 / 3) % 2],
            } as f32;
        }
    }
    x
}

/// [`cluster_rows`] with the subgroup reduction and the tree, whole rows and rows side by side,
/// vec4 and strided.
#[test]
fn rows_of_clusters_and_a_far_first_element() {
    for (i, dim) in [7, 100, 1024, 4096, 4097].into_iter().enumerate() {
        let mut case = Case::new(Op::LayerNorm, 6, dim, 90 + i as u64);
        case.x = cluster_rows(dim, 500 + i as u64);
        check(gpu(), &case);
        check(tree_gpu(), &case);
    }
}

/// [`cluster_rows`] normalized in place: y over x makes the kernel's `shared` variant, whose
/// reduction is handed out uniformly (wg_moments_decide) and whose rows take a whole
/// workgroup each, so that at D = 7 and 100 most invocations hold no element. Subgroups and
/// the tree.
#[test]
fn rows_of_clusters_in_place() {
    for (i, dim) in [7, 100, 1000, 4097].into_iter().enumerate() {
        let mut case = Case::new(Op::LayerNorm, 6, dim, 190 + i as u64);
        case.x = cluster_rows(dim, 600 + i as u64);
        case.bias = None;
        let want = case.reference();
        for gpu in [gpu(), tree_gpu()] {
            let buf = gpu.upload("xy", &case.x);
            let w = gpu.upload("w", case.weight.as_ref().unwrap());
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            let op = wgpu_norm::LayerNorm::new(6, dim, &buf, &buf).weight(&w);
            gpu.norms.layer_norm(&mut encoder, &op).unwrap();
            gpu.queue.submit([encoder.finish()]);
            let y = pollster::block_on(gpu.read_async(&[(&buf, case.x.len())])).unwrap();
            assert_close(&y[0], &want.y, &format!("D = {dim} in place"));
        }
    }
}

/// Rows of values near 1 with one element 1e6 away: at the row's start, at the start of an
/// invocation's share (element 68: V 17, or lane 68 of strided V's), in the middle, at the
/// end; and a row with every 64th element far.
fn far_element_rows(dim: usize, seed: u64) -> Vec<f32> {
    let mut x = common::Rng::new(seed).data(5 * dim, 1.0, 1.0);
    for (r, row) in x.chunks_mut(dim).enumerate() {
        match r {
            0 => row[0] = 1e6,
            1 => row[68.min(dim - 1)] = -1e6,
            2 => row[dim / 2] = 1e6,
            3 => row[dim - 1] = -1e6,
            _ => row.iter_mut().step_by(64).for_each(|v| *v = 1e6),
        }
    }
    x
}

/// No element is the kernels' pivot of the row (each invocation's is its own first element,
/// and the shares' means are combined around a reference near the row's mean), so a row with
/// an element far from the rest keeps the f32 bound on y, the mean and rstd wherever that
/// element is: whole rows and rows side by side, both reductions, and rows split over
/// workgroups. (With the row's first element as the pivot, y at D = 12288 was off by 4.1x
/// the bound.) Also the scaled retry, whose pivot was the first element as well: a row whose
/// squares leave f32's range with its first element far from the rest.
#[test]
fn a_far_element_anywhere_keeps_f32_accuracy() {
    for (i, dim) in [7, 100, 1024, 4097, 12288].into_iter().enumerate() {
        let mut case = Case::new(Op::LayerNorm, 5, dim, 77 + i as u64);
        case.x = far_element_rows(dim, 78 + i as u64);
        check(gpu(), &case);
        check(tree_gpu(), &case);
        case.stats = false;
        if dim >= 4097 {
            assert!(common::splits(gpu(), &case), "5x{dim} is not split");
        }
        check(gpu(), &case);
        check(tree_gpu(), &case);
    }
    for dim in [7, 4096, 65536] {
        let mut case = Case::new(Op::LayerNorm, 3, dim, 88);
        let mut row = common::Rng::new(89).data(dim, 0.3e20, 1e20);
        row[0] = 3e26;
        case.x[dim..2 * dim].copy_from_slice(&row);
        check(gpu(), &case);
        check(tree_gpu(), &case);
    }
}

#[test]
fn very_small_and_very_large_magnitudes() {
    common::magnitudes(Op::LayerNorm);
}

#[test]
fn rows_whose_squares_leave_f32() {
    common::extreme_magnitudes(Op::LayerNorm);
}

#[test]
fn a_nan_or_inf_poisons_only_its_row() {
    for (dim, bad) in [
        (5, f32::NAN),
        (1024, f32::NAN),
        (4097, f32::INFINITY),
        (64, f32::NEG_INFINITY),
    ] {
        let mut case = Case::new(Op::LayerNorm, 4, dim, 11);
        case.x[2 * dim + dim / 2] = bad;
        let out = run(gpu(), &case);
        let r = case.reference();
        for row in [0, 1, 3] {
            let s = row * dim..(row + 1) * dim;
            assert_close(&out.y[s.clone()], &r.y[s], &format!("clean row {row}"));
        }
        assert!(
            out.y[2 * dim..3 * dim].iter().all(|v| v.is_nan()),
            "row 2 must be all NaN"
        );
        assert!(out.rstd[2].is_nan() && out.mean[2].is_nan() || out.mean[2].is_infinite());
    }
}

#[test]
fn in_place() {
    let case = Case::new(Op::LayerNorm, 33, 1000, 5);
    let expected = case.reference();
    let gpu = gpu();
    let buf = gpu.upload("xy", &case.x);
    let w = gpu.upload("w", case.weight.as_ref().unwrap());
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    let op = wgpu_norm::LayerNorm::new(33, 1000, &buf, &buf).weight(&w);
    gpu.norms.layer_norm(&mut encoder, &op).unwrap();
    gpu.queue.submit([encoder.finish()]);
    let y = pollster::block_on(gpu.read_async(&[(&buf, case.x.len())])).unwrap();
    let mut no_bias = case.clone();
    no_bias.bias = None;
    assert_close(&y[0], &no_bias.reference().y, "in place");
    assert_eq!(expected.y.len(), y[0].len());
}

#[test]
fn inputs_and_outputs_sharing_one_buffer() {
    // An arena: x, weight, bias, y, mean, rstd back to back in one buffer (wgpu would reject
    // read-only and read-write bindings of one buffer in a dispatch if the kernels used them).
    let (rows, dim) = (17, 300);
    let case = Case::new(Op::LayerNorm, rows, dim, 12);
    let gpu = gpu();
    let n = rows * dim;
    let mut arena = case.x.clone();
    arena.extend(case.weight.as_ref().unwrap());
    arena.extend(case.bias.as_ref().unwrap());
    arena.extend(std::iter::repeat_n(f32::NAN, n + 2 * rows));
    let buf = gpu.upload("arena", &arena);
    let at = |start: usize, len: usize| {
        wgpu_norm::TensorRef::new(&buf, (start * 4) as u64, (len * 4) as u64)
    };
    let y0 = n + 2 * dim;
    let op = wgpu_norm::LayerNorm::new(rows, dim, at(0, n), at(y0, n))
        .weight(at(n, dim))
        .bias(at(n + dim, dim))
        .mean(at(y0 + n, rows))
        .rstd(at(y0 + n + rows, rows));
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    gpu.norms.layer_norm(&mut encoder, &op).unwrap();
    gpu.queue.submit([encoder.finish()]);
    let all = pollster::block_on(gpu.read_async(&[(&buf, arena.len())])).unwrap();
    let r = case.reference();
    assert_close(&all[0][y0..y0 + n], &r.y, "y in the arena");
    assert_close(&all[0][y0 + n..y0 + n + rows], &r.mean, "mean in the arena");
    assert_eq!(&all[0][..n], &case.x[..], "x untouched");
}

#[test]
fn deterministic() {
    common::deterministic(Op::LayerNorm);
}

#[test]
fn few_long_rows_split_over_workgroups() {
    common::few_long_rows(Op::LayerNorm);
}

#[test]
fn few_long_rows_split_with_every_storage_and_option() {
    common::storage::split_rows_any(Op::LayerNorm);
}

#[test]
fn rows_past_the_register_cache() {
    common::storage::rows_past_the_cache(Op::LayerNorm);
}

#[test]
fn random_shapes() {
    common::random_shapes(Op::LayerNorm, 2024);
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
                let mut c = AnyCase::new(Op::LayerNorm, dtype, rows, dim, dim as u64)
                    .with_residual(write_back);
                c.offset = offset;
                check_any(gpu(), &c);
            }
        }
    }
}

#[test]
fn eps_added_to_the_standard_deviation() {
    use common::storage::{AnyCase, check_any};
    for (rows, dim) in [(50, 100), (3, 4096), (2, 20000)] {
        let mut c = AnyCase::new(Op::LayerNorm, wgpu_norm::DType::F32, rows, dim, 4);
        c.eps_added_to_std = true;
        c.eps = 0.1;
        let with = check_any(gpu(), &c);
        c.eps_added_to_std = false;
        let without = check_any(gpu(), &c);
        assert_ne!(with.y, without.y, "the placement must matter at eps = 0.1");
    }
}
