//! The benchmarks' baseline copy is exact: every element, nothing outside the output.

mod common;

use common::{POISON, Rng, gpu, small_binding_gpu};
use wgpu_norm::TensorRef;

fn check_copy(gpu: &wgpu_norm::Gpu, rows: usize, dim: usize, offset: u64) {
    let n = rows * dim;
    let x = Rng::new(dim as u64).data(n, 0.0, 1.0);
    let lead = (offset / 4) as usize;
    let xb = gpu.upload("x", &[vec![0.0; lead], x.clone()].concat());
    let yb = gpu.upload("y", &vec![f32::from_bits(POISON); lead + n + 8]);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    let t = |b| TensorRef::new(b, offset, (n * 4) as u64);
    gpu.norms
        .copy(&mut encoder, rows, dim, t(&xb), t(&yb))
        .unwrap();
    gpu.queue.submit([encoder.finish()]);
    let y = pollster::block_on(gpu.read_async(&[(&yb, lead + n + 8)])).unwrap();
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&y[0][lead..lead + n]),
        bits(&x),
        "rows={rows} dim={dim} offset={offset}"
    );
    assert!(
        y[0][..lead]
            .iter()
            .chain(&y[0][lead + n..])
            .all(|v| v.to_bits() == POISON)
    );
}

#[test]
fn copies_exactly() {
    for (rows, dim, offset) in [
        (1, 1, 0),
        (70000, 3, 4),
        (257, 1024, 16),
        (3, 4097, 0),
        (2, 65536, 272),
    ] {
        check_copy(gpu(), rows, dim, offset);
    }
    let small = small_binding_gpu(256 << 10);
    check_copy(small, 300, 1000, 12);
}
