//! Work larger than one storage binding is split into several bindings and dispatches.
//! The device's binding limit is lowered so that no giant buffer is needed.

mod common;

use common::{Case, Op, check, default_limits_gpu, small_binding_gpu};

#[test]
fn rows_beyond_one_binding_are_split() {
    // 256 KiB bindings, grids of at most 64 x 64 workgroups.
    let gpu = small_binding_gpu(256 << 10);
    for op in [Op::LayerNorm, Op::RmsNorm] {
        for (i, &(rows, dim, offset)) in [
            (300, 1000, 0),    // 1.2 MB in 5 bindings
            (5000, 28, 4),     // small D, 2-D grid and many chunks
            (200, 1025, 12),   // strided V's
            (13, 16384, 1040), // 4 rows per binding
            (3, 65000, 16),    // one row per binding, streamed
        ]
        .iter()
        .enumerate()
        {
            let mut case = Case::new(op, rows, dim, 300 + i as u64);
            case.offset = offset;
            check(gpu, &case);
        }
    }
}

#[test]
fn default_limits_cap_the_workgroup_size() {
    let gpu = default_limits_gpu();
    assert_eq!(
        gpu.device.limits().max_compute_invocations_per_workgroup,
        256
    );
    for op in [Op::LayerNorm, Op::RmsNorm] {
        for (i, &(rows, dim)) in [(100, 1024), (9, 4097), (5, 8192), (3, 16384), (2, 65536)]
            .iter()
            .enumerate()
        {
            check(gpu, &Case::new(op, rows, dim, 400 + i as u64));
        }
    }
}

/// wgpu's default limits are WebGPU's: 256 invocations per workgroup, 8 storage buffers a
/// stage, 16 KiB of workgroup memory, 128 MiB bindings. Every op family runs within them:
/// forward and backward of both norms (saved and recomputed statistics, parameter gradients),
/// 16-bit storage, and the copy, at D = 1, 7, 4097 and 65536.
#[test]
fn every_op_runs_within_webgpu_default_limits() {
    use common::backward::{BwdCase, check_backward};
    use common::storage::{AnyCase, check_any};
    let gpu = default_limits_gpu();
    let limits = gpu.device.limits();
    assert_eq!(limits.max_compute_invocations_per_workgroup, 256);
    assert_eq!(limits.max_storage_buffers_per_shader_stage, 8);
    assert_eq!(limits.max_compute_workgroup_storage_size, 16384);
    for (i, dim) in [1, 7, 4097, 65536].into_iter().enumerate() {
        let rows = if dim > 4097 { 2 } else { 9 };
        for op in [Op::LayerNorm, Op::RmsNorm] {
            let seed = 900 + i as u64;
            check(gpu, &Case::new(op, rows, dim, seed));
            for dtype in [wgpu_norm::DType::F16, wgpu_norm::DType::Bf16] {
                check_any(
                    gpu,
                    &AnyCase::new(op, dtype, rows, dim, seed).with_residual(true),
                );
            }
            for saved in [false, true] {
                let mut c = BwdCase::new(op, rows, dim, seed);
                c.saved = saved;
                check_backward(gpu, &c);
            }
        }
    }
    common::check_copy(gpu, 9, 4097, 12);
}
