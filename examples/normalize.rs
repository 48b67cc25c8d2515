//! Normalizes seeded data with both kernels on the GPU and checks it against the CPU
//! reference: `cargo run --release --example normalize [-- ROWS DIM]`.

use std::time::Instant;

use wgpu_norm::{Gpu, SliceOptions, reference};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let rows = args.next().transpose()?.unwrap_or(4096);
    let dim = args.next().transpose()?.unwrap_or(4096);

    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.describe());

    // A fixed pseudo-random row-major [rows, dim] matrix, mean 3 and spread ~2, plus weights.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let x: Vec<f32> = (0..rows * dim)
        .map(|_| 3.0 + 4.0 * (next() - 0.5))
        .collect();
    let weight: Vec<f32> = (0..dim).map(|_| 0.5 + next()).collect();
    let bias: Vec<f32> = (0..dim).map(|_| next() - 0.5).collect();
    let opts = SliceOptions {
        eps: Some(1e-5),
        weight: Some(&weight),
        bias: Some(&bias),
    };

    for name in ["layer_norm", "rms_norm"] {
        let t = Instant::now();
        let (out, want) = if name == "layer_norm" {
            let out = gpu.layer_norm(&x, dim, &opts)?;
            (
                out,
                reference::layer_norm(&x, dim, Some(&weight), Some(&bias), 1e-5),
            )
        } else {
            let opts = SliceOptions { bias: None, ..opts };
            let out = gpu.rms_norm(&x, dim, &opts)?;
            (out, reference::rms_norm(&x, dim, Some(&weight), 1e-5))
        };
        let elapsed = t.elapsed();
        let max_abs = out
            .y
            .iter()
            .zip(&want.y)
            .map(|(&g, &r)| (f64::from(g) - r).abs())
            .fold(0.0, f64::max);
        let (ratio, _) = reference::worst_error(&out.y, &want.y);
        println!(
            "{name:>10}: {rows} x {dim} in {:.1} ms (upload, run, read back); largest error {max_abs:.2e} \
             = {:.0}% of the tolerance 1e-5 + 1e-5*|ref|: {}",
            elapsed.as_secs_f64() * 1e3,
            ratio * 100.0,
            if ratio <= 1.0 { "ok" } else { "FAILED" }
        );
        if ratio > 1.0 {
            return Err(format!("{name} is outside the tolerance").into());
        }
    }
    Ok(())
}
