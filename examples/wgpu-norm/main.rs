//! The wgpu-norm command-line tool.
//!
//!     cargo run --release --example wgpu-norm -- info
//!     cargo run --release --example wgpu-norm -- run --op rms-norm --input x.npy --output y.npy
//!     cargo run --release --example wgpu-norm -- bench
//!
//! Bad input (a missing, truncated or malformed file, Fortran order, an unsupported dtype,
//! shapes that do not fit, a bad epsilon) is one line on stderr and exit code 2; other
//! failures (no adapter, say) exit with 1.

mod npy;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use npy::Array;
use wgpu_norm::timing::{Clock, Timer};
use wgpu_norm::{
    DType, Error, Gpu, LayerNorm, NormsOptions, RmsNorm, SliceOptions, TensorRef, reference,
};

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
    Bench(BenchArgs),
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

#[derive(Args)]
struct BenchArgs {
    /// Row lengths D to measure.
    #[arg(long, value_delimiter = ',', default_value = "1024,4096,8192")]
    dims: Vec<usize>,
    /// Rows per tensor (default: from --mib).
    #[arg(long, conflicts_with = "mib")]
    rows: Option<usize>,
    /// Size of x in MiB (default: 8 on a CPU adapter, 256 on a GPU).
    #[arg(long)]
    mib: Option<usize>,
    /// Runs per timed batch; each kernel is warmed up for 0.5 s, then timed in 5 batches and
    /// the median batch reported (default: 5 on a CPU adapter, 100 on a GPU).
    #[arg(long)]
    iters: Option<u32>,
    /// Write every figure, with the adapter, date and crate version, as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw GB/s against D for the three kernels as SVG.
    #[arg(long)]
    svg: Option<PathBuf>,
}

/// Why the tool stopped: bad input exits with 2, anything else with 1.
enum Failure {
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

fn bad<T>(msg: impl Into<String>) -> Result<T, Failure> {
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
        Command::Bench(args) => bench(cli.adapter.as_deref(), args),
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
    let name = wanted_adapter(adapter);
    let gpu = pollster::block_on(async {
        let instance = wgpu_norm::adapter::instance();
        let adapter = wgpu_norm::adapter::pick_adapter_named(&instance, name.as_deref()).await?;
        Gpu::from_adapter(adapter, None, NormsOptions::default()).await
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
fn largest_error(gpu: &[f32], reference: &[f64], dtype: DType) -> (f64, f64) {
    let abs = gpu
        .iter()
        .zip(reference)
        .map(|(&g, &r)| (f64::from(g) - r).abs())
        .filter(|e| !e.is_nan())
        .fold(0.0, f64::max);
    (abs, reference::worst_error_in(dtype, gpu, reference).0)
}

// ---- bench

/// One kernel's figures at one D.
struct Figure {
    gbps: Option<f64>,
    /// Largest error against the reference (norms only) and whether it passed.
    check: Option<(f64, bool)>,
}

struct Row {
    dim: usize,
    rows: usize,
    copy: Figure,
    layer_norm: Figure,
    rms_norm: Figure,
}

/// Warm-up before each kernel's timing, at least.
const WARM_UP: std::time::Duration = std::time::Duration::from_millis(500);

/// Timed batches of `--iters` runs per kernel; the median batch is reported.
const BATCHES: usize = 5;

struct Progress(bool);

impl Progress {
    fn say(&self, msg: &str) {
        if self.0 {
            eprint!("\r\x1b[2K{msg}");
        } else {
            eprintln!("{msg}");
        }
    }

    fn done(&self) {
        if self.0 {
            eprint!("\r\x1b[2K");
        }
    }
}

fn bench(adapter: Option<&str>, a: &BenchArgs) -> Result<(), Failure> {
    if a.dims.contains(&0) {
        return Err(Error::ZeroDim.into());
    }
    if a.rows == Some(0) || a.mib == Some(0) || a.iters == Some(0) {
        return bad("--rows, --mib and --iters must be at least 1");
    }
    let gpu = open_gpu(adapter)?;
    let info = gpu.adapter.get_info();
    let cpu = info.device_type == wgpu::DeviceType::Cpu;
    let mib = a.mib.unwrap_or(if cpu { 8 } else { 256 });
    let iters = a.iters.unwrap_or(if cpu { 5 } else { 100 });
    let timer = Timer::new(&gpu.device, &gpu.queue);
    println!("adapter: {}", gpu.describe());
    println!(
        "clock: {}, subgroups: {}, median of {BATCHES} batches of {iters} runs per kernel",
        match timer.clock() {
            Clock::GpuTimestamps => "GPU timestamps",
            Clock::WallClock => "wall clock (no timestamp queries on this adapter)",
        },
        gpu.norms.uses_subgroups()
    );
    let progress = Progress(std::io::stderr().is_terminal());
    let mut table = Vec::new();
    for (i, &dim) in a.dims.iter().enumerate() {
        let rows = a.rows.unwrap_or(((mib << 20) / 4 / dim).max(1));
        let step = |what: &str| {
            progress.say(&format!(
                "[{}/{}] D={dim} rows={rows}: {what}",
                i + 1,
                a.dims.len()
            ))
        };
        step("preparing data");
        table.push(bench_dim(&gpu, &timer, dim, rows, iters, &step)?);
    }
    progress.done();
    print_table(&table);
    if let Some(p) = &a.json {
        write_json(p, &gpu, &timer, iters, &table)?;
    }
    if let Some(p) = &a.svg {
        draw_svg(p, &info.name, &table)?;
    }
    Ok(())
}

fn bench_dim(
    gpu: &Gpu,
    timer: &Timer,
    dim: usize,
    rows: usize,
    iters: u32,
    step: &dyn Fn(&str),
) -> Result<Row, Failure> {
    let n = rows
        .checked_mul(dim)
        .filter(|&n| n <= usize::MAX / 8)
        .ok_or_else(|| Failure::BadInput(format!("{rows} rows x {dim} is too large")))?;
    // Seeded data around 3 with spread ~1, so LayerNorm's centring matters.
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ dim as u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let x: Vec<f32> = (0..n).map(|_| 3.0 + 2.0 * next() - 1.0).collect();
    let w: Vec<f32> = (0..dim).map(|_| 0.5 + next()).collect();
    let b: Vec<f32> = (0..dim).map(|_| next() - 0.5).collect();
    let xb = gpu.upload("bench x", &x);
    let yb = gpu.storage("bench y", n);
    let wb = gpu.upload("bench weight", &w);
    let bb = gpu.upload("bench bias", &b);
    let bytes = (n * 4) as u64;
    let (xt, yt) = (TensorRef::new(&xb, 0, bytes), TensorRef::new(&yb, 0, bytes));
    let ln = LayerNorm::new(rows, dim, xt, yt).weight(&wb).bias(&bb);
    let rms = RmsNorm::new(rows, dim, xt, yt).weight(&wb);

    // Correctness first, on the very buffers that are timed.
    let check = |layer: bool| -> Result<(f64, bool), Failure> {
        step(if layer {
            "checking layer_norm"
        } else {
            "checking rms_norm"
        });
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        if layer {
            gpu.norms.layer_norm(&mut encoder, &ln)?;
        } else {
            gpu.norms.rms_norm(&mut encoder, &rms)?;
        }
        gpu.queue.submit([encoder.finish()]);
        let y = pollster::block_on(gpu.read_async(&[(&yb, n)]))?.remove(0);
        let r = if layer {
            reference::layer_norm(&x, dim, Some(&w), Some(&b), ln.eps)
        } else {
            reference::rms_norm(&x, dim, Some(&w), rms.eps)
        };
        let (abs, ratio) = largest_error(&y, &r.y, DType::F32);
        Ok((abs, ratio <= 1.0))
    };
    let ln_check = check(true)?;
    let rms_check = check(false)?;

    let traffic = 2.0 * bytes as f64 * f64::from(iters);
    let time = |what: &str, record: &dyn Fn(&mut wgpu::CommandEncoder) -> wgpu_norm::Result<()>| {
        step(&format!("timing {what}"));
        // Warm up for a while, not a few runs: a GPU that idled through the CPU check above
        // needs time to raise its clocks again.
        let start = std::time::Instant::now();
        let mut batches = 0;
        while batches < 1 || (start.elapsed() < WARM_UP && batches < 100) {
            timer.time(iters, record)?;
            batches += 1;
        }
        let mut gbps = (0..BATCHES)
            .map(|_| Ok(traffic / timer.time(iters, record)?.as_secs_f64() / 1e9))
            .collect::<Result<Vec<f64>, Failure>>()?;
        gbps.sort_by(f64::total_cmp);
        Ok::<f64, Failure>(gbps[BATCHES / 2])
    };
    let copy = time("copy", &|e| gpu.norms.copy(e, rows, dim, xt, yt))?;
    let figure = |check: (f64, bool), gbps: &dyn Fn() -> Result<f64, Failure>| {
        Ok::<Figure, Failure>(Figure {
            gbps: if check.1 { Some(gbps()?) } else { None },
            check: Some(check),
        })
    };
    let layer_norm = figure(ln_check, &|| {
        time("layer_norm", &|e| gpu.norms.layer_norm(e, &ln))
    })?;
    let rms_norm = figure(rms_check, &|| {
        time("rms_norm", &|e| gpu.norms.rms_norm(e, &rms))
    })?;
    Ok(Row {
        dim,
        rows,
        copy: Figure {
            gbps: Some(copy),
            check: None,
        },
        layer_norm,
        rms_norm,
    })
}

fn print_table(table: &[Row]) {
    println!(
        "{:>7} {:>9} {:>10} {:>18} {:>18} {:>8} {:>10} {:>10}",
        "D",
        "rows",
        "copy GB/s",
        "LayerNorm GB/s",
        "RMSNorm GB/s",
        "RMS/LN",
        "LN error",
        "RMS error"
    );
    for r in table {
        let copy = r.copy.gbps.unwrap_or(f64::NAN);
        let cell = |f: &Figure| match (f.gbps, f.check) {
            (Some(g), _) => format!("{} ({:.0}%)", gbps(g), 100.0 * g / copy),
            (None, _) => "FAILED check".to_string(),
        };
        let err = |f: &Figure| match f.check {
            Some((e, ok)) => format!("{e:.1e}{}", if ok { "" } else { "!" }),
            None => "-".into(),
        };
        let ratio = match (r.rms_norm.gbps, r.layer_norm.gbps) {
            (Some(a), Some(b)) => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        println!(
            "{:>7} {:>9} {:>10} {:>18} {:>18} {:>8} {:>10} {:>10}",
            r.dim,
            r.rows,
            gbps(copy),
            cell(&r.layer_norm),
            cell(&r.rms_norm),
            ratio,
            err(&r.layer_norm),
            err(&r.rms_norm)
        );
    }
}

/// GB/s with three or four significant digits.
fn gbps(g: f64) -> String {
    let decimals = if g < 10.0 {
        2
    } else if g < 100.0 {
        1
    } else {
        0
    };
    format!("{g:.decimals$}")
}

/// Today's date (UTC) as YYYY-MM-DD, from the system clock.
fn utc_date() -> String {
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

fn write_json(
    path: &Path,
    gpu: &Gpu,
    timer: &Timer,
    iters: u32,
    table: &[Row],
) -> Result<(), Failure> {
    let info = gpu.adapter.get_info();
    let fig = |f: &Figure, copy: f64| {
        serde_json::json!({
            "gbps": f.gbps,
            "fraction_of_copy": f.gbps.map(|g| g / copy),
            "max_abs_error": f.check.map(|c| c.0),
            "check_passed": f.check.map(|c| c.1),
        })
    };
    let results: Vec<_> = table
        .iter()
        .map(|r| {
            let copy = r.copy.gbps.unwrap_or(f64::NAN);
            serde_json::json!({
                "dim": r.dim,
                "rows": r.rows,
                "bytes_moved_per_run": 2 * r.rows * r.dim * 4,
                "copy_gbps": copy,
                "layer_norm": fig(&r.layer_norm, copy),
                "rms_norm": fig(&r.rms_norm, copy),
                "rms_over_layer_norm": match (r.rms_norm.gbps, r.layer_norm.gbps) {
                    (Some(a), Some(b)) => Some(a / b),
                    _ => None,
                },
            })
        })
        .collect();
    let doc = serde_json::json!({
        "tool": "wgpu-norm bench",
        "crate_version": env!("CARGO_PKG_VERSION"),
        "date": utc_date(),
        "adapter": {
            "name": info.name,
            "backend": format!("{:?}", info.backend),
            "device_type": format!("{:?}", info.device_type),
            "driver": info.driver,
            "driver_info": info.driver_info,
        },
        "clock": format!("{:?}", timer.clock()),
        "subgroups": gpu.norms.uses_subgroups(),
        "iters_per_batch": iters,
        "batches": BATCHES,
        "statistic": "median batch",
        "dtype": "f32",
        "units": "GB/s = (x read + y written) / time, decimal",
        "results": results,
    });
    let text = serde_json::to_string_pretty(&doc).expect("JSON of plain values");
    std::fs::write(path, text + "\n")
        .or_else(|e| bad(format!("cannot write {}: {e}", path.display())))
}

fn draw_svg(path: &Path, adapter: &str, table: &[Row]) -> Result<(), Failure> {
    use plotters::prelude::*;
    let fail = |e: &dyn std::fmt::Display| {
        Failure::BadInput(format!("cannot draw {}: {e}", path.display()))
    };
    type Series = (&'static str, RGBColor, Vec<(f64, f64)>);
    let series: [Series; 3] = [
        ("copy", RGBColor(120, 120, 120), points(table, |r| &r.copy)),
        (
            "LayerNorm",
            RGBColor(31, 119, 180),
            points(table, |r| &r.layer_norm),
        ),
        (
            "RMSNorm",
            RGBColor(214, 39, 40),
            points(table, |r| &r.rms_norm),
        ),
    ];
    let all = series.iter().flat_map(|s| s.2.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, 0.0f64, 0.0f64);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x1 == 0.0 {
        return Err(fail(&"no figures to draw"));
    }
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("wgpu-norm forward, f32 — {adapter}"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x0 / 1.5..x1 * 1.5).log_scale(), 0.0..y1 * 1.3)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_labels(8)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("D (elements per row)")
        .y_desc("GB/s (x read + y written)")
        .draw()
        .map_err(|e| fail(&e))?;
    for (name, color, pts) in series {
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| fail(&e))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(|e| fail(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}

fn points(table: &[Row], pick: impl Fn(&Row) -> &Figure) -> Vec<(f64, f64)> {
    table
        .iter()
        .filter_map(|r| pick(r).gbps.map(|g| (r.dim as f64, g)))
        .collect()
}
