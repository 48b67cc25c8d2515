//! The wgpu-norm command-line tool.
//!
//!     cargo run --release --example wgpu-norm -- info
//!     cargo run --release --example wgpu-norm -- run --op rms-norm --input x.npy --output y.npy
//!     cargo run --release --example wgpu-norm -- bench
//!
//! Bad input (a missing, truncated or malformed file, Fortran order, an unsupported dtype,
//! shapes that do not fit, a bad epsilon) is one line on stderr and exit code 2; other
//! failures (no adapter, say) exit with 1.

mod bench;
mod npy;

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use npy::Array;
use wgpu_norm::{DType, Error, Gpu, LayerNorm, NormsOptions, RmsNorm, SliceOptions, reference};

#[derive(Parser)]
#[command(
    name = "wgpu-norm",
    version,
    about = "LayerNorm and RMSNorm on the GPU through wgpu"
)]
struct Cli {
    /// Use the first adapter whose name contains this (case-insensitive); overrides
    /// WGPU_ADAPTER_NAME. WGPU_BACKEND limits the backends searched.
    #[arg(long, global = true)]
    adapter: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every adapter wgpu finds, what matters about it here, and which one would be used.
    Info,
    /// Normalize a .npy file.
    Run(RunArgs),
    /// Check both norms against the CPU reference, then time them against a copy.
    Bench(bench::BenchArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OpName {
    LayerNorm,
    RmsNorm,
}

#[derive(Args)]
struct RunArgs {
    #[arg(long, value_enum)]
    op: OpName,
    /// Input, float32 or float16 in C order, any rank; the output has its dtype.
    #[arg(long)]
    input: PathBuf,
    /// Gamma, of shape input.shape[axis:].
    #[arg(long)]
    weight: Option<PathBuf>,
    /// Beta, of shape input.shape[axis:] (layer-norm only).
    #[arg(long)]
    bias: Option<PathBuf>,
    /// Epsilon (default 1e-5 for layer-norm, f32 machine epsilon for rms-norm, as PyTorch).
    #[arg(long, allow_hyphen_values = true)]
    eps: Option<f32>,
    /// First normalized dimension, as ONNX: dimensions axis..rank are normalized.
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    axis: i64,
    #[arg(long)]
    output: PathBuf,
    /// Save each row's mean (layer-norm), of shape input.shape[:axis] + ones.
    #[arg(long)]
    mean: Option<PathBuf>,
    /// Save each row's 1/sqrt(var+eps) (layer-norm), of shape input.shape[:axis] + ones.
    #[arg(long)]
    rstd: Option<PathBuf>,
    /// Save each row's 1/sqrt(mean(x^2)+eps) (rms-norm), of shape input.shape[:axis] + ones.
    #[arg(long)]
    rrms: Option<PathBuf>,
    /// Also run the CPU reference and print the largest error.
    #[arg(long)]
    check: bool,
}

/// Why the tool stopped: bad input exits with 2, anything else with 1.
pub(crate) enum Failure {
    BadInput(String),
    Other(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        match e {
            Error::NoAdapter(_)
            | Error::RequestDevice(_)
            | Error::Readback(_)
            | Error::Internal(_)
            | Error::UnsupportedDevice(_) => Failure::Other(e.to_string()),
            _ => Failure::BadInput(e.to_string()),
        }
    }
}

pub(crate) fn bad<T>(msg: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::BadInput(msg.into()))
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print as clap formats them.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // A usage error is bad input too: one line, exit code 2.
            let text = e.to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("bad arguments");
            eprintln!(
                "wgpu-norm: {} (see --help)",
                first.trim_start_matches("error: ")
            );
            std::process::exit(2);
        }
    };
    let result = match &cli.command {
        Command::Info => info(cli.adapter.as_deref()),
        Command::Run(args) => run(cli.adapter.as_deref(), args),
        Command::Bench(args) => bench::bench(cli.adapter.as_deref(), args),
    };
    let (message, code) = match result {
        Ok(()) => return,
        Err(Failure::BadInput(m)) => (m, 2),
        Err(Failure::Other(m)) => (m, 1),
    };
    // One line, whatever the underlying error looked like (npyz's parse errors span several).
    let one_line: Vec<&str> = message.split_whitespace().collect();
    eprintln!("wgpu-norm: {}", one_line.join(" "));
    std::process::exit(code);
}

/// The adapter name asked for: `--adapter`, else `WGPU_ADAPTER_NAME`.
fn wanted_adapter(flag: Option<&str>) -> Option<String> {
    flag.map(str::to_string)
        .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
}

fn open_gpu(adapter: Option<&str>) -> Result<Gpu, Failure> {
    open_gpu_with(adapter, NormsOptions::default())
}

pub(crate) fn open_gpu_with(adapter: Option<&str>, options: NormsOptions) -> Result<Gpu, Failure> {
    let name = wanted_adapter(adapter);
    let gpu = pollster::block_on(async {
        let instance = wgpu_norm::adapter::instance();
        let adapter = wgpu_norm::adapter::pick_adapter_named(&instance, name.as_deref()).await?;
        Gpu::from_adapter(adapter, None, options).await
    })?;
    Ok(gpu)
}

// ---- info

fn info(adapter: Option<&str>) -> Result<(), Failure> {
    let instance = wgpu_norm::adapter::instance();
    let all = pollster::block_on(wgpu_norm::adapter::adapters(&instance));
    if all.is_empty() {
        return Err(Error::NoAdapter(wgpu_norm::adapter::NO_ADAPTER_HINT.into()).into());
    }
    for (i, a) in all.iter().enumerate() {
        let info = a.get_info();
        let f = a.features();
        let l = a.limits();
        let yes = |b: bool| if b { "yes" } else { "no" };
        println!("[{i}] {}", info.name);
        println!(
            "    backend: {:?}, type: {:?}",
            info.backend, info.device_type
        );
        println!("    driver: {} {}", info.driver, info.driver_info);
        println!(
            "    subgroups: {} (size {}..={}), shader-f16: {}, timestamp queries: {} (inside encoders: {})",
            yes(f.contains(wgpu::Features::SUBGROUP)),
            info.subgroup_min_size,
            info.subgroup_max_size,
            yes(f.contains(wgpu::Features::SHADER_F16)),
            yes(f.contains(wgpu::Features::TIMESTAMP_QUERY)),
            yes(f.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)),
        );
        println!(
            "    max storage binding: {} MiB, workgroup storage: {} KiB, invocations per workgroup: {}",
            l.max_storage_buffer_binding_size >> 20,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_invocations_per_workgroup
        );
    }
    let name = wanted_adapter(adapter);
    let chosen = pollster::block_on(wgpu_norm::adapter::pick_adapter_named(
        &instance,
        name.as_deref(),
    ))?;
    println!(
        "would use: {}{}",
        wgpu_norm::adapter::describe(&chosen.get_info()),
        match &name {
            Some(n) => format!(" (name contains {n:?})"),
            None => " (best by device type and backend; set --adapter or WGPU_ADAPTER_NAME)".into(),
        }
    );
    Ok(())
}

// ---- run

fn read_npy(path: &Path) -> Result<Array, Failure> {
    npy::read(path).map_err(Failure::BadInput)
}

fn write_npy(path: &Path, shape: &[u64], data: &[f32], dtype: DType) -> Result<(), Failure> {
    npy::write(path, shape, data, dtype).map_err(Failure::BadInput)
}

fn run(adapter: Option<&str>, a: &RunArgs) -> Result<(), Failure> {
    let layer = a.op == OpName::LayerNorm;
    if let Some(eps) = a.eps.filter(|e| !(e.is_finite() && *e >= 0.0)) {
        return Err(Error::BadEpsilon(eps).into());
    }
    if !layer && a.bias.is_some() {
        return bad("--bias applies to layer-norm only (RMSNorm has no beta)");
    }
    if !layer && (a.mean.is_some() || a.rstd.is_some()) {
        return bad("--mean and --rstd apply to layer-norm only (rms-norm saves --rrms)");
    }
    if layer && a.rrms.is_some() {
        return bad("--rrms applies to rms-norm only (layer-norm saves --mean and --rstd)");
    }
    let x = read_npy(&a.input)?;
    let rank = x.shape.len() as i64;
    if rank == 0 || a.axis < -rank || a.axis >= rank {
        return bad(format!(
            "--axis {} does not fit {} of shape {:?} (rank {rank})",
            a.axis,
            a.input.display(),
            x.shape
        ));
    }
    let axis = if a.axis < 0 { a.axis + rank } else { a.axis } as usize;
    let norm_shape = &x.shape[axis..];
    let dim = norm_shape.iter().product::<u64>() as usize;
    if dim == 0 {
        return bad(format!(
            "{}: the normalized dimensions {norm_shape:?} hold no elements",
            a.input.display()
        ));
    }
    let param = |p: &Option<PathBuf>| -> Result<Option<Vec<f32>>, Failure> {
        let Some(p) = p else { return Ok(None) };
        let arr = read_npy(p)?;
        if arr.shape != norm_shape {
            return bad(format!(
                "{} has shape {:?}; it must be input.shape[axis:] = {norm_shape:?}",
                p.display(),
                arr.shape
            ));
        }
        Ok(Some(arr.data))
    };
    let weight = param(&a.weight)?;
    let bias = param(&a.bias)?;

    let gpu = open_gpu(adapter)?;
    eprintln!("adapter: {}", gpu.describe());
    let opts = SliceOptions {
        eps: a.eps,
        weight: weight.as_deref(),
        bias: bias.as_deref(),
        // Output dtype = input dtype; f16 weights are exact in f32 (the mixed mode).
        dtype: x.dtype,
    };
    // y, and each statistic asked for with where it goes.
    let (y, stats) = if layer {
        let out = gpu.layer_norm(&x.data, dim, &opts)?;
        (out.y, vec![(&a.mean, out.mean), (&a.rstd, out.rstd)])
    } else {
        let out = gpu.rms_norm(&x.data, dim, &opts)?;
        (out.y, vec![(&a.rrms, out.rrms)])
    };

    let stats_shape: Vec<u64> = x.shape[..axis]
        .iter()
        .copied()
        .chain(std::iter::repeat_n(1, x.shape.len() - axis))
        .collect();
    write_npy(&a.output, &x.shape, &y, x.dtype)?;
    for (path, values) in stats {
        if let Some(p) = path {
            write_npy(p, &stats_shape, &values, DType::F32)?;
        }
    }
    if a.check {
        let r = if layer {
            let eps = a.eps.unwrap_or(LayerNorm::DEFAULT_EPS);
            reference::layer_norm(&x.data, dim, weight.as_deref(), bias.as_deref(), eps)
        } else {
            let eps = a.eps.unwrap_or(RmsNorm::DEFAULT_EPS);
            reference::rms_norm(&x.data, dim, weight.as_deref(), eps)
        };
        let (abs, ratio) = largest_error(&y, &r.y, x.dtype);
        println!(
            "check: largest error {abs:.3e} ({:.1}% of the {} tolerance): {}",
            ratio * 100.0,
            x.dtype,
            if ratio <= 1.0 { "ok" } else { "FAILED" }
        );
        if ratio > 1.0 {
            return Err(Failure::Other(
                "the GPU result is outside the tolerance".into(),
            ));
        }
    }
    Ok(())
}

/// Largest absolute error, and the largest ratio of error to the tolerance of `dtype`.
pub(crate) fn largest_error(gpu: &[f32], reference: &[f64], dtype: DType) -> (f64, f64) {
    let abs = gpu
        .iter()
        .zip(reference)
        .map(|(&g, &r)| (f64::from(g) - r).abs())
        .filter(|e| !e.is_nan())
        .fold(0.0, f64::max);
    (abs, reference::worst_error_in(dtype, gpu, reference).0)
}

/// Today's date (UTC) as YYYY-MM-DD, from the system clock.
pub(crate) fn utc_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = (secs / 86400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
