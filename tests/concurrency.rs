//! One `Norms` shared by threads that record and submit at once gives the bits one thread
//! gets; ten thousand ops leave the caches and the process's memory where they were.

mod common;

use common::backward::{BwdCase, run_backward};
use common::{Case, Op, gpu, run};
use wgpu_norm::{Gpu, LayerNorm, RmsNorm, RmsNormBackward};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// Every output of every case, as bits.
fn outputs(gpu: &Gpu, forward: &[Case], backward: &[BwdCase]) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    for c in forward {
        let o = run(gpu, c);
        out.extend([bits(&o.y), bits(&o.mean), bits(&o.rstd)]);
    }
    for c in backward {
        let o = run_backward(gpu, c);
        out.extend([bits(&o.dx), bits(&o.dweight), bits(&o.dbias)]);
    }
    out
}

#[test]
fn eight_threads_share_one_norms() {
    let gpu = gpu();
    let forward: Vec<Case> = [(Op::LayerNorm, 300, 1000), (Op::RmsNorm, 7, 4097)]
        .into_iter()
        .enumerate()
        .map(|(i, (op, rows, dim))| Case::new(op, rows, dim, 40 + i as u64))
        .collect();
    let backward: Vec<BwdCase> = [(Op::LayerNorm, 2000, 256), (Op::RmsNorm, 5, 8192)]
        .into_iter()
        .enumerate()
        .map(|(i, (op, rows, dim))| {
            let mut c = BwdCase::new(op, rows, dim, 50 + i as u64);
            c.saved = i == 0;
            c
        })
        .collect();
    let expected = outputs(gpu, &forward, &backward);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| (0..3).map(|_| outputs(gpu, &forward, &backward)).collect()))
            .collect();
        for h in handles {
            let runs: Vec<Vec<Vec<u32>>> = h.join().expect("a thread panicked");
            for got in runs {
                assert!(
                    got == expected,
                    "a thread got other bits than one thread alone"
                );
            }
        }
    });
}

/// Resident memory of this process, where the system says (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[test]
fn ten_thousand_ops_leave_memory_flat() {
    // A device of its own, so that other tests' caches do not count; kept to the end of the run.
    let gpu: &'static Gpu = Box::leak(Box::new(
        pollster::block_on(async {
            let adapter = wgpu_norm::pick_adapter().await?;
            Gpu::from_adapter(adapter, None, Default::default()).await
        })
        .expect("an adapter"),
    ));
    // A few shapes in turn, as a model's layers would record them.
    let shapes = [(1, 4096), (8, 1024), (3, 777)];
    let buffers: Vec<_> = shapes
        .iter()
        .map(|&(rows, dim)| {
            let n = rows * dim;
            let data = common::Rng::new(n as u64).data(n, 0.0, 1.0);
            (
                gpu.upload("x", &data),
                gpu.upload("dy", &data),
                gpu.storage("y", n),
                gpu.upload("w", &vec![1.0; dim]),
                gpu.storage("dw", dim),
            )
        })
        .collect();
    let step = |i: usize, encoder: &mut wgpu::CommandEncoder| {
        let (rows, dim) = shapes[i % shapes.len()];
        let (x, dy, y, w, dw) = &buffers[i % shapes.len()];
        if i.is_multiple_of(2) {
            let op = LayerNorm::new(rows, dim, x, y).weight(w);
            gpu.norms.record(encoder, &op).unwrap();
        } else {
            let op = RmsNorm::new(rows, dim, x, y).weight(w);
            gpu.norms.record(encoder, &op).unwrap();
        }
        let bwd = RmsNormBackward::new(rows, dim, x, dy, y)
            .eps(1e-6)
            .weight(w)
            .grad_weight(dw);
        gpu.norms.record(encoder, &bwd).unwrap();
    };
    let batch = |from: usize, to: usize| {
        for start in (from..to).step_by(100) {
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            for i in start..(start + 100).min(to) {
                step(i, &mut encoder);
            }
            gpu.queue.submit([encoder.finish()]);
            gpu.device
                .poll(wgpu::PollType::wait_indefinitely())
                .unwrap();
        }
    };
    batch(0, 1000);
    let (caches, memory) = (gpu.norms.cache_stats(), resident_bytes());
    batch(1000, 10_000);
    assert_eq!(
        gpu.norms.cache_stats(),
        caches,
        "pipelines, uniform parameters and partial sums: as after the first thousand"
    );
    if let (Some(before), Some(after)) = (memory, resident_bytes()) {
        let grown = after.saturating_sub(before);
        assert!(
            grown < 32 << 20,
            "resident memory grew by {} MiB over 9000 ops",
            grown >> 20
        );
    }
}
