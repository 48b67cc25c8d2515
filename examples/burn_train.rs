//! A small character-level language model trained with burn on this crate's README, four
//! times from the same seed: with burn-nn's LayerNorm and RmsNorm, and with this crate's fused
//! ones through burn (`wgpu_norm::burn`). It checks that the fused norms train as burn-nn's do
//! (the losses agree at every step within a stated tolerance), and answers the question the
//! crate started from: does RMSNorm train faster than LayerNorm? It prints the time per step
//! and the loss of each run, and plots loss against step and against wall time (SVG).
//!
//!     cargo run --release --features burn-example --example burn_train -- [--steps 300] [--svg FILE]

use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{
    Embedding, EmbeddingConfig, Gelu, LayerNormConfig, Linear, LinearConfig, RmsNormConfig,
};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Parser;
use plotters::prelude::*;
use wgpu_norm::burn::FusedNormConfig;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 300)]
    steps: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Characters of context the model sees.
    #[arg(long, default_value_t = 16)]
    context: usize,
    /// Width of the hidden layers (the D of the norms).
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    #[arg(long, default_value = "target/burn_train.svg")]
    svg: String,
    /// Largest relative difference allowed between the loss of a fused run and of burn-nn's at
    /// the same step.
    #[arg(long, default_value_t = 1e-3)]
    tolerance: f32,
}

/// Which norm a run uses.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    NnLayer,
    FusedLayer,
    NnRms,
    FusedRms,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::NnLayer => "burn-nn LayerNorm",
            Kind::FusedLayer => "wgpu-norm LayerNorm",
            Kind::NnRms => "burn-nn RmsNorm",
            Kind::FusedRms => "wgpu-norm RmsNorm",
        }
    }
}

/// One of the four norms; the others are None (burn's Module derive takes Options).
#[derive(Module, Debug)]
struct Norm {
    nn_ln: Option<burn::nn::LayerNorm>,
    nn_rms: Option<burn::nn::RmsNorm>,
    ln: Option<wgpu_norm::burn::LayerNorm>,
    rms: Option<wgpu_norm::burn::RmsNorm>,
}

impl Norm {
    fn new(kind: Kind, d: usize, device: &Device) -> Self {
        let (ln, rms) = (LayerNormConfig::new(d), RmsNormConfig::new(d));
        Norm {
            nn_ln: (kind == Kind::NnLayer).then(|| ln.init(device)),
            nn_rms: (kind == Kind::NnRms).then(|| rms.init(device)),
            ln: (kind == Kind::FusedLayer).then(|| ln.init_fused(device)),
            rms: (kind == Kind::FusedRms).then(|| rms.init_fused(device)),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match (&self.nn_ln, &self.nn_rms, &self.ln, &self.rms) {
            (Some(m), ..) => m.forward(x),
            (_, Some(m), ..) => m.forward(x),
            (_, _, Some(m), _) => m.forward(x),
            (.., Some(m)) => m.forward(x),
            _ => unreachable!("one norm is set"),
        }
    }
}

/// Embeddings of the context, a norm-activated layer and a pre-norm residual layer, a head.
#[derive(Module, Debug)]
struct CharModel {
    embed: Embedding,
    fc1: Linear,
    norm1: Norm,
    fc2: Linear,
    norm2: Norm,
    head: Linear,
    gelu: Gelu,
}

impl CharModel {
    fn new(kind: Kind, vocab: usize, args: &Args, device: &Device) -> Self {
        let embed_dim = 32;
        // Every random draw happens in this order, so every kind starts from the same weights.
        CharModel {
            embed: EmbeddingConfig::new(vocab, embed_dim).init(device),
            fc1: LinearConfig::new(args.context * embed_dim, args.hidden).init(device),
            norm1: Norm::new(kind, args.hidden, device),
            fc2: LinearConfig::new(args.hidden, args.hidden).init(device),
            norm2: Norm::new(kind, args.hidden, device),
            head: LinearConfig::new(args.hidden, vocab).init(device),
            gelu: Gelu::new(),
        }
    }

    fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
        let [batch, context] = tokens.dims();
        let e = self.embed.forward(tokens).reshape([batch as i32, -1]);
        let _ = context;
        let h = self.gelu.forward(self.norm1.forward(self.fc1.forward(e)));
        let h = h.clone() + self.gelu.forward(self.fc2.forward(self.norm2.forward(h)));
        self.head.forward(h)
    }
}

/// xorshift64*: the batches are the same for every run.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

struct Run {
    kind: Kind,
    losses: Vec<f32>,
    /// Seconds since the first step began, at the end of each step.
    times: Vec<f64>,
}

fn train(kind: Kind, text: &[usize], vocab: usize, args: &Args, device: &Device) -> Run {
    device.seed(42);
    let mut model = CharModel::new(kind, vocab, args, device);
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut rng = Rng(0x5EED);
    let (mut losses, mut times) = (Vec::new(), Vec::new());
    let start = Instant::now();
    for _ in 0..args.steps {
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        for _ in 0..args.batch {
            let at = rng.below(text.len() - args.context - 1);
            inputs.extend(text[at..at + args.context].iter().map(|&c| c as i64));
            targets.push(text[at + args.context] as i64);
        }
        let inputs = Tensor::<2, Int>::from_data(
            TensorData::new(inputs, [args.batch, args.context]),
            device,
        );
        let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [args.batch]), device);
        let loss = loss_fn.forward(model.forward(inputs), targets);
        // Reading the loss waits for the step: the times are wall time of whole steps.
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-3, model, grads);
        times.push(start.elapsed().as_secs_f64());
    }
    Run {
        kind,
        losses,
        times,
    }
}

fn plot(runs: &[Run], path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let max_loss = runs
        .iter()
        .flat_map(|r| r.losses.iter().copied())
        .fold(0f32, f32::max);
    let max_time = runs
        .iter()
        .map(|r| *r.times.last().unwrap())
        .fold(0f64, f64::max);
    let colors = [RED, MAGENTA, BLUE, CYAN];
    let steps = runs[0].losses.len();
    let mut by_step = ChartBuilder::on(&left)
        .caption("loss against step", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..steps as f64, 0f32..max_loss)?;
    by_step
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .draw()?;
    let mut by_time = ChartBuilder::on(&right)
        .caption("loss against wall time", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..max_time, 0f32..max_loss)?;
    by_time
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("loss")
        .draw()?;
    for (run, color) in runs.iter().zip(colors) {
        by_step
            .draw_series(LineSeries::new(
                run.losses.iter().enumerate().map(|(i, &l)| (i as f64, l)),
                color,
            ))?
            .label(run.kind.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        by_time.draw_series(LineSeries::new(
            run.times.iter().copied().zip(run.losses.iter().copied()),
            color,
        ))?;
    }
    by_step
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() {
    let args = Args::parse();
    let device = wgpu_norm::burn::init()
        .unwrap_or_else(|e| {
            eprintln!("burn_train: {e}");
            std::process::exit(1)
        })
        .autodiff();
    let readme = include_str!("../README.md");
    let mut chars: Vec<char> = readme.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    let text: Vec<usize> = readme
        .chars()
        .map(|c| chars.binary_search(&c).unwrap())
        .collect();
    println!(
        "{} steps of {} windows of {} characters from README.md ({} characters, vocabulary {}), \
         hidden width {}, Adam 3e-3, seed 42",
        args.steps,
        args.batch,
        args.context,
        text.len(),
        chars.len(),
        args.hidden
    );
    let kinds = [Kind::NnLayer, Kind::FusedLayer, Kind::NnRms, Kind::FusedRms];
    let runs: Vec<Run> = kinds
        .iter()
        .map(|&k| {
            let run = train(k, &text, chars.len(), &args, &device);
            // The first steps compile pipelines: time per step is taken after 10 steps.
            let warm = 10.min(args.steps - 1);
            let per_step = (run.times.last().unwrap() - run.times[warm])
                / (args.steps - 1 - warm).max(1) as f64;
            println!(
                "{:>20}: loss {:.4} -> {:.4}, {:.2} ms per step",
                k.name(),
                run.losses[0],
                run.losses.last().unwrap(),
                per_step * 1e3
            );
            run
        })
        .collect();
    let mut ok = true;
    for (nn, fused) in [(0, 1), (2, 3)] {
        let worst = runs[nn]
            .losses
            .iter()
            .zip(&runs[fused].losses)
            .map(|(a, b)| (a - b).abs() / a.abs().max(1e-6))
            .fold(0f32, f32::max);
        let agree = worst <= args.tolerance;
        ok &= agree;
        println!(
            "{} against {}: largest relative loss difference over all steps {:.2e} ({} {:.0e})",
            runs[fused].kind.name(),
            runs[nn].kind.name(),
            worst,
            if agree { "within" } else { "BEYOND" },
            args.tolerance
        );
    }
    let final_avg = |r: &Run| {
        let tail = &r.losses[r.losses.len().saturating_sub(20)..];
        tail.iter().sum::<f32>() / tail.len() as f32
    };
    println!(
        "RMSNorm against LayerNorm (this crate's): mean loss of the last 20 steps {:.4} vs {:.4}; \
         wall time {:.1} s vs {:.1} s",
        final_avg(&runs[3]),
        final_avg(&runs[1]),
        runs[3].times.last().unwrap(),
        runs[1].times.last().unwrap()
    );
    if let Some(dir) = std::path::Path::new(&args.svg).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match plot(&runs, &args.svg) {
        Ok(()) => println!("plot: {}", args.svg),
        Err(e) => eprintln!("burn_train: plotting failed: {e}"),
    }
    if !ok {
        std::process::exit(1);
    }
}
