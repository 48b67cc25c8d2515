//! `wgpu-norm bench`: both norms (and their backward) checked against the CPU reference on
//! the timed buffers, then timed against a copy of the same bytes, over a grid of D, row
//! counts and storage types, with PyTorch's figures from the same machine beside them.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::Args;
use wgpu_norm::timing::{Clock, Timer};
use wgpu_norm::{DType, Error, Gpu, LayerNorm, NormsOptions, RmsNorm, TensorRef, Tuning};
use wgpu_norm::{reference, wgpu};

use crate::{Failure, bad, largest_error, open_gpu_with, utc_date};

#[derive(Args)]
pub struct BenchArgs {
    /// Row lengths D to measure.
    #[arg(long, value_delimiter = ',', default_value = "1024,4096,8192")]
    dims: Vec<usize>,
    /// Row counts to measure at each D (few rows: a decode step), instead of --mib; the table
    /// then shows microseconds per op.
    #[arg(long, value_delimiter = ',', conflicts_with = "mib")]
    rows: Vec<usize>,
    /// Size of x in MiB at f32 (16-bit types have the same elements in half the bytes;
    /// default: 8 on a CPU adapter, 256 on a GPU).
    #[arg(long)]
    mib: Option<usize>,
    /// Storage types of x and y (and of dy and dx), each measured at every D.
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    dtypes: Vec<String>,
    /// Also check and time both backward passes (dx, dgamma and dbeta from the saved
    /// statistics, as a training step runs them).
    #[arg(long)]
    backward: bool,
    /// PyTorch's figures at the same shapes, as `examples/torch_norms.py` prints them (CSV):
    /// shown as PyTorch's time over ours.
    #[arg(long)]
    torch: Option<PathBuf>,
    /// Runs per timed batch; each kernel is warmed up, then timed in 5 batches and the median
    /// batch reported (default: 5 on a CPU adapter, 100 on a GPU).
    #[arg(long)]
    iters: Option<u32>,
    /// Warm-up of each kernel before it is timed, in milliseconds.
    #[arg(long, default_value_t = 500)]
    warm_up_ms: u64,
    /// Tuning: measure the candidates on this adapter once and use the best (cached in the
    /// user's cache directory; WGPU_NORM_AUTOTUNE=0 turns it off); the explicit knobs below
    /// override what it chose.
    #[arg(long)]
    autotune: bool,
    /// Tuning: V's (4 elements) per forward invocation for f32 rows, a power of two (default
    /// 8); 16-bit rows take as many unless --v-per-invocation-16bit says otherwise.
    #[arg(long)]
    v_per_invocation: Option<u32>,
    /// Tuning: V's per forward invocation for f16/bf16 rows, a power of two (default:
    /// --v-per-invocation's, or the autotune's choice).
    #[arg(long)]
    v_per_invocation_16bit: Option<u32>,
    /// Tuning: V's per forward invocation for f32 rows not read four consecutive elements at
    /// a time (D % 4 != 0), a power of two (default: --v-per-invocation's, or the autotune's
    /// choice); 16-bit such rows scale by the same factor.
    #[arg(long)]
    v_per_invocation_strided: Option<u32>,
    /// Tuning: bytes of rows per forward workgroup (default 16384).
    #[arg(long)]
    bytes_per_group: Option<u32>,
    /// Tuning: workgroups a forward dispatch aims for before it splits few long rows over
    /// several (default 128; 0 never splits).
    #[arg(long)]
    split_groups: Option<u32>,
    /// Tuning: forward rows share a workgroup, side by side, below this many V's per
    /// invocation of a 64-invocation workgroup, a power of two (default 2: up to D = 508).
    #[arg(long)]
    side_by_side_below: Option<u32>,
    /// Tuning: the same for the backward's rows (default 1: up to D = 252).
    #[arg(long)]
    side_by_side_below_backward: Option<u32>,
    /// Tuning: largest workgroup (default: the device's, 256 on OpenGL).
    #[arg(long)]
    max_workgroup_size: Option<u32>,
    /// Write every figure, with the adapter, date, tuning and crate version, as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw GB/s against D for the copy and both forward kernels (the first dtype) as SVG.
    #[arg(long)]
    svg: Option<PathBuf>,
}

/// One kernel's figures at one shape.
#[derive(Default)]
struct Figure {
    gbps: Option<f64>,
    /// GPU time of one op within a timed batch.
    us: Option<f64>,
    /// Largest error against the reference and whether every element passed (norms only).
    check: Option<(f64, bool)>,
    /// PyTorch's time for the same op and shape, from `--torch`.
    torch_us: Option<f64>,
}

/// The kernels of one row of the table, in column order.
const KERNELS: [&str; 5] = [
    "copy",
    "layer_norm",
    "rms_norm",
    "layer_norm_backward",
    "rms_norm_backward",
];

struct Row {
    dtype: DType,
    dim: usize,
    rows: usize,
    /// By [`KERNELS`]; the backward ones empty without `--backward`.
    figures: [Figure; 5],
}

impl Row {
    fn copy_gbps(&self) -> f64 {
        self.figures[0].gbps.unwrap_or(f64::NAN)
    }
}

/// Timed batches per kernel; the median is reported.
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

fn parse_dtype(s: &str) -> Result<DType, Failure> {
    match s.trim() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::Bf16),
        other => bad(format!("--dtypes: unknown type {other:?} (f32, f16, bf16)")),
    }
}

/// PyTorch's per-op times, keyed by (dtype, rows, D), in [`KERNELS`] order.
type TorchTimes = std::collections::HashMap<(String, usize, usize), [Option<f64>; 5]>;

/// Reads `torch_norms.py`'s CSV: copy as GB/s of x read + y written (turned into µs here),
/// the four ops as µs.
fn read_torch(path: &Path) -> Result<TorchTimes, Failure> {
    let text = std::fs::read_to_string(path)
        .or_else(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    let mut out = TorchTimes::new();
    let mut header: Option<Vec<String>> = None;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let Some(h) = &header else {
            header = Some(cells.iter().map(|c| c.to_string()).collect());
            continue;
        };
        let col = |name: &str| -> Option<f64> {
            let i = h.iter().position(|c| c == name)?;
            cells.get(i)?.parse().ok()
        };
        let (Some(dtype), Some(rows), Some(dim)) = (
            cells.first(),
            col("rows").map(|r| r as usize),
            col("D").map(|d| d as usize),
        ) else {
            return bad(format!("{}: cannot read the line {line:?}", path.display()));
        };
        let elem = parse_dtype(dtype)?.size() as f64;
        let copy_us = col("copy_GBps").map(|g| 2.0 * elem * (rows * dim) as f64 / g / 1e3);
        // Keyed by the type's own name, whichever spelling the file used.
        out.insert(
            (parse_dtype(dtype)?.name().to_string(), rows, dim),
            [
                copy_us,
                col("ln_fwd_us"),
                col("rms_fwd_us"),
                col("ln_bwd_us"),
                col("rms_bwd_us"),
            ],
        );
    }
    Ok(out)
}

pub fn bench(adapter: Option<&str>, a: &BenchArgs) -> Result<(), Failure> {
    if a.dims.is_empty() || a.dims.contains(&0) {
        return Err(Error::ZeroDim.into());
    }
    if a.rows.contains(&0) || a.mib == Some(0) || a.iters == Some(0) {
        return bad("--rows, --mib and --iters must be at least 1");
    }
    let dtypes = a
        .dtypes
        .iter()
        .map(|s| parse_dtype(s))
        .collect::<Result<Vec<_>, _>>()?;
    let torch = a.torch.as_deref().map(read_torch).transpose()?;
    let mut options = NormsOptions {
        max_workgroup_size: a.max_workgroup_size,
        ..NormsOptions::default()
    };
    let mut gpu = open_gpu_with(adapter, options)?;
    let base = if a.autotune {
        let tuned = wgpu_norm::tune::tuning_for(&gpu.device, &gpu.queue, options)?;
        println!(
            "autotune: {:?} ({}{})",
            tuned.tuning,
            if tuned.measured {
                "measured now"
            } else {
                "from the cache, or WGPU_NORM_AUTOTUNE=0"
            },
            tuned
                .cache
                .as_ref()
                .map_or(String::new(), |p| format!(", {}", p.display()))
        );
        tuned.tuning
    } else {
        Tuning::default()
    };
    let base = a
        .v_per_invocation
        .map_or(base, |v| base.with_v_per_invocation(v));
    options.tuning = Tuning {
        v_per_invocation_16bit: a
            .v_per_invocation_16bit
            .unwrap_or(base.v_per_invocation_16bit),
        v_per_invocation_strided: a
            .v_per_invocation_strided
            .unwrap_or(base.v_per_invocation_strided),
        bytes_per_group: a.bytes_per_group.unwrap_or(base.bytes_per_group),
        split_groups: a.split_groups.unwrap_or(base.split_groups),
        side_by_side_below: a.side_by_side_below.unwrap_or(base.side_by_side_below),
        side_by_side_below_backward: a
            .side_by_side_below_backward
            .unwrap_or(base.side_by_side_below_backward),
        ..base
    };
    if options.tuning != Tuning::default() {
        gpu.norms = wgpu_norm::Norms::with_options(&gpu.device, options)?;
    }
    let info = gpu.adapter.get_info();
    let cpu = info.device_type == wgpu::DeviceType::Cpu;
    let mib = a.mib.unwrap_or(if cpu { 8 } else { 256 });
    let iters = a.iters.unwrap_or(if cpu { 5 } else { 100 });
    let timer = Timer::new(&gpu.device, &gpu.queue);
    println!("adapter: {}", gpu.describe());
    println!(
        "clock: {}, subgroups: {}, {:?}, median of {BATCHES} batches of {iters} runs per kernel",
        match timer.clock() {
            Clock::GpuTimestamps => "GPU timestamps",
            Clock::WallClock => "wall clock (no timestamp queries on this adapter)",
        },
        gpu.norms.uses_subgroups(),
        options.tuning,
    );
    let shapes: Vec<(DType, usize, usize)> = dtypes
        .iter()
        .flat_map(|&t| {
            a.dims.iter().flat_map(move |&dim| {
                let rows = if a.rows.is_empty() {
                    vec![((mib << 20) / 4 / dim).max(1)]
                } else {
                    a.rows.clone()
                };
                rows.into_iter().map(move |r| (t, dim, r))
            })
        })
        .collect();
    let progress = Progress(std::io::stderr().is_terminal());
    let setup = Setup {
        gpu: &gpu,
        timer: &timer,
        iters,
        warm_up: std::time::Duration::from_millis(a.warm_up_ms),
        backward: a.backward,
        decode: !a.rows.is_empty(),
    };
    let mut table = Vec::new();
    for (i, &(dtype, dim, rows)) in shapes.iter().enumerate() {
        let step = |what: &str| {
            progress.say(&format!(
                "[{}/{}] {dtype} D={dim} rows={rows}: {what}",
                i + 1,
                shapes.len()
            ))
        };
        step("preparing data");
        let mut row = measure(&setup, dtype, dim, rows, &step)?;
        if let Some(t) = torch
            .as_ref()
            .and_then(|t| t.get(&(dtype.to_string(), rows, dim)))
        {
            for (f, &us) in row.figures.iter_mut().zip(t) {
                f.torch_us = us;
            }
        }
        table.push(row);
    }
    progress.done();
    print_table(&table, !a.rows.is_empty(), torch.is_some());
    let failed = table
        .iter()
        .flat_map(|r| &r.figures)
        .any(|f| f.check.is_some_and(|c| !c.1));
    if let Some(p) = &a.json {
        write_json(p, &gpu, &timer, iters, options.tuning, &table, setup.decode)?;
    }
    if let Some(p) = &a.svg {
        draw_svg(p, &info.name, &table)?;
    }
    if failed {
        return Err(Failure::Other(
            "a kernel's result is outside the tolerance (marked ! above); it was not timed".into(),
        ));
    }
    Ok(())
}

struct Setup<'g> {
    gpu: &'g Gpu,
    timer: &'g Timer,
    iters: u32,
    warm_up: std::time::Duration,
    backward: bool,
    /// Few rows (`--rows`): the forward passes save no statistics, as a decode step's do not,
    /// and long rows are split over several workgroups.
    decode: bool,
}

/// Checks, then times, every kernel at one shape.
fn measure(
    s: &Setup,
    dtype: DType,
    dim: usize,
    rows: usize,
    step: &dyn Fn(&str),
) -> Result<Row, Failure> {
    let gpu = s.gpu;
    let n = rows
        .checked_mul(dim)
        .filter(|&n| n <= usize::MAX / 8)
        .ok_or_else(|| Failure::BadInput(format!("{rows} rows x {dim} is too large")))?;
    // Seeded data around 3 with spread ~1, so LayerNorm's centring matters; rounded to the
    // storage type, so that the reference sees what the kernel reads.
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ dim as u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let stored = |v: Vec<f32>| dtype.decode(&dtype.encode(&v));
    let x = stored((0..n).map(|_| 3.0 + 2.0 * next() - 1.0).collect());
    let w = stored((0..dim).map(|_| 0.5 + next()).collect());
    let b = stored((0..dim).map(|_| next() - 0.5).collect());
    let bytes = n as u64 * dtype.size();
    let words = bytes.div_ceil(4) as usize;
    let xb = gpu.upload_as("bench x", &x, dtype);
    let yb = gpu.storage("bench y", words);
    let wb = gpu.upload_as("bench weight", &w, dtype);
    let bb = gpu.upload_as("bench bias", &b, dtype);
    let (mean, rstd) = (
        gpu.storage("bench mean", rows),
        gpu.storage("bench rstd", rows),
    );
    let t = |buf| TensorRef::new(buf, 0, bytes);
    // 16-bit parameters of odd D: the buffer is padded to whole words, the tensor is not.
    let param = |buf| TensorRef::new(buf, 0, dim as u64 * dtype.size());
    let ln = LayerNorm::new(rows, dim, t(&xb), t(&yb))
        .dtype(dtype)
        .weight(param(&wb))
        .bias(param(&bb))
        .mean(&mean)
        .rstd(&rstd);
    let rms = RmsNorm::new(rows, dim, t(&xb), t(&yb))
        .dtype(dtype)
        .weight(param(&wb))
        .rrms(&rstd);
    // What is checked and timed forward: a decode step saves no statistics (the backward
    // below reads the ones `ln` and `rms` save).
    let (ln_fwd, rms_fwd) = if s.decode {
        (
            LayerNorm {
                mean: None,
                rstd: None,
                ..ln.clone()
            },
            RmsNorm {
                rrms: None,
                ..rms.clone()
            },
        )
    } else {
        (ln.clone(), rms.clone())
    };

    let read = |buf: &wgpu::Buffer| -> Result<Vec<f32>, Failure> {
        let w = pollster::block_on(gpu.read_async(&[(buf, words)]))?.remove(0);
        Ok(dtype.decode(&bytemuck::cast_slice::<f32, u8>(&w)[..bytes as usize]))
    };
    // NaN in every output word first, so that an element the kernel never wrote fails.
    let poison = |buf: &wgpu::Buffer| {
        let len = buf.size() as usize / 4;
        gpu.queue
            .write_buffer(buf, 0, bytemuck::cast_slice(&vec![f32::NAN; len]))
    };
    let submit = |record: &dyn Fn(&mut wgpu::CommandEncoder) -> wgpu_norm::Result<()>| {
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        record(&mut encoder)?;
        gpu.queue.submit([encoder.finish()]);
        Ok::<(), Failure>(())
    };

    // Correctness first, on the very buffers that are timed.
    step("checking layer_norm");
    poison(&yb);
    submit(&|e| gpu.norms.layer_norm(e, &ln_fwd))?;
    let got = read(&yb)?;
    let ln_check = by_rows(rows, dim, |r0, r1| {
        let (x, got) = (&x[r0 * dim..r1 * dim], &got[r0 * dim..r1 * dim]);
        let r = reference::layer_norm(x, dim, Some(&w), Some(&b), ln.eps);
        largest_error(got, &r.y, dtype)
    });
    step("checking rms_norm");
    poison(&yb);
    submit(&|e| gpu.norms.rms_norm(e, &rms_fwd))?;
    let got = read(&yb)?;
    let rms_check = by_rows(rows, dim, |r0, r1| {
        let (x, got) = (&x[r0 * dim..r1 * dim], &got[r0 * dim..r1 * dim]);
        let r = reference::rms_norm(x, dim, Some(&w), rms.eps);
        largest_error(got, &r.y, dtype)
    });

    let time =
        |what: &str,
         tensors: u64,
         record: &dyn Fn(&mut wgpu::CommandEncoder) -> wgpu_norm::Result<()>| {
            step(&format!("timing {what}"));
            // Warm up for a while, not a few runs: a GPU that idled through the CPU check above
            // needs time to raise its clocks again.
            let start = std::time::Instant::now();
            let mut batches = 0;
            while batches < 1 || (start.elapsed() < s.warm_up && batches < 100) {
                s.timer.time(s.iters, record)?;
                batches += 1;
            }
            let mut secs = (0..BATCHES)
                .map(|_| Ok(s.timer.time(s.iters, record)?.as_secs_f64() / f64::from(s.iters)))
                .collect::<Result<Vec<f64>, Failure>>()?;
            secs.sort_by(f64::total_cmp);
            let per_op = secs[BATCHES / 2];
            Ok::<Figure, Failure>(Figure {
                gbps: Some(tensors as f64 * bytes as f64 / per_op / 1e9),
                us: Some(per_op * 1e6),
                ..Figure::default()
            })
        };
    let checked = |check: (f64, bool), timed: &dyn Fn() -> Result<Figure, Failure>| {
        Ok::<Figure, Failure>(Figure {
            check: Some(check),
            ..if check.1 { timed()? } else { Figure::default() }
        })
    };
    // The copy moves whole words: a 16-bit tensor of odd length ends in half a word of padding.
    let whole = |buf| TensorRef::new(buf, 0, words as u64 * 4);
    let copy_op =
        |e: &mut wgpu::CommandEncoder| gpu.norms.copy(e, 1, words, whole(&xb), whole(&yb));
    let copy = time("copy", 2, &copy_op)?;
    let layer_norm = checked(ln_check, &|| {
        time("layer_norm", 2, &|e| gpu.norms.layer_norm(e, &ln_fwd))
    })?;
    let rms_norm = checked(rms_check, &|| {
        time("rms_norm", 2, &|e| gpu.norms.rms_norm(e, &rms_fwd))
    })?;
    let mut figures = [
        copy,
        layer_norm,
        rms_norm,
        Figure::default(),
        Figure::default(),
    ];
    if s.backward {
        let dy = stored((0..n).map(|_| next() - 0.5).collect());
        let dyb = gpu.upload_as("bench dy", &dy, dtype);
        let (dw, db) = (
            gpu.storage("bench dweight", dim),
            gpu.storage("bench dbias", dim),
        );
        // dx over y's buffer: the forward's output is no longer needed.
        let dx = t(&yb);
        let ln_bwd = ln.backward(t(&dyb), dx)?.grad_weight(&dw).grad_bias(&db);
        let rms_bwd = rms.backward(t(&dyb), dx)?.grad_weight(&dw);
        // Each backward reads the statistics its forward saved: run that forward first.
        let check = |layer: bool| -> Result<(f64, bool), Failure> {
            step(if layer {
                "checking layer_norm_backward"
            } else {
                "checking rms_norm_backward"
            });
            if layer {
                submit(&|e| gpu.norms.layer_norm(e, &ln))?;
            } else {
                submit(&|e| gpu.norms.rms_norm(e, &rms))?;
            }
            poison(&yb);
            poison(&dw);
            poison(&db);
            if layer {
                submit(&|e| gpu.norms.layer_norm_backward(e, &ln_bwd))?;
            } else {
                submit(&|e| gpu.norms.rms_norm_backward(e, &rms_bwd))?;
            }
            let got = read(&yb)?;
            let params = pollster::block_on(gpu.read_async(&[(&dw, dim), (&db, dim)]))?;
            // dx: storage rounding plus the f32 bound on a difference of terms of size
            // dx_scale; each thread also sums its rows' share of dgamma/dbeta (and of the
            // magnitudes of their terms) in f64.
            let parts = par_rows(rows, dim, |r0, r1| {
                let span = r0 * dim..r1 * dim;
                let (x, dy) = (&x[span.clone()], &dy[span.clone()]);
                let r = if layer {
                    reference::layer_norm_backward(x, dy, dim, Some(&w), ln.eps)
                } else {
                    reference::rms_norm_backward(x, dy, dim, Some(&w), rms.eps)
                };
                let mut worst = Worst::default();
                for ((&g, &v), &sc) in got[span].iter().zip(&r.dx).zip(&r.dx_scale) {
                    worst.add(g, v, reference::tolerance(dtype, v) + 1e-5 * sc);
                }
                (worst, r)
            });
            let mut worst = Worst::default();
            let mut sums = vec![[0.0f64; 4]; dim];
            for (w, r) in &parts {
                worst.merge(w);
                for (i, s) in sums.iter_mut().enumerate() {
                    s[0] += r.dweight[i];
                    s[1] += r.dweight_scale[i];
                    if layer {
                        s[2] += r.dbias[i];
                        s[3] += r.dbias_scale[i];
                    }
                }
            }
            // dgamma/dbeta (f32): the bound on a sum of terms of their size.
            for (i, s) in sums.iter().enumerate() {
                worst.add(params[0][i], s[0], 1e-5 + 1e-5 * s[1]);
                if layer {
                    worst.add(params[1][i], s[2], 1e-5 + 1e-5 * s[3]);
                }
            }
            Ok((worst.abs, worst.ratio <= 1.0))
        };
        let ln_check = check(true)?;
        figures[3] = checked(ln_check, &|| {
            time("layer_norm_backward", 3, &|e| {
                gpu.norms.layer_norm_backward(e, &ln_bwd)
            })
        })?;
        let rms_check = check(false)?;
        figures[4] = checked(rms_check, &|| {
            time("rms_norm_backward", 3, &|e| {
                gpu.norms.rms_norm_backward(e, &rms_bwd)
            })
        })?;
    }
    // The copy again, last: on the H200 (2026-11-26) the first timing after the CPU-side
    // check caught the GPU at low clocks in half the shapes (1.5 against 3.9 TB/s) despite
    // the warm-up. The faster of the two is the copy of this shape.
    let again = time("copy again", 2, &copy_op)?;
    if again.gbps > figures[0].gbps {
        figures[0] = again;
    }
    Ok(Row {
        dtype,
        dim,
        rows,
        figures,
    })
}

/// The largest error and the largest ratio of error to what is allowed (NaN: infinite).
#[derive(Default)]
struct Worst {
    abs: f64,
    ratio: f64,
}

impl Worst {
    fn add(&mut self, got: f32, want: f64, allowed: f64) {
        let err = (f64::from(got) - want).abs();
        if err.is_nan() {
            self.ratio = f64::INFINITY;
        } else {
            self.abs = self.abs.max(err);
            self.ratio = self.ratio.max(err / allowed);
        }
    }

    fn merge(&mut self, other: &Worst) {
        self.abs = self.abs.max(other.abs);
        self.ratio = self.ratio.max(other.ratio);
    }
}

/// `f(first_row, end_row)` over all rows, split among the CPU's threads (the reference of a
/// 256 MiB tensor takes seconds on one), in row order.
fn par_rows<T: Send>(rows: usize, dim: usize, f: impl Fn(usize, usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = rows.div_ceil(threads).max((1 << 16) / dim + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..rows)
            .step_by(per)
            .map(|r0| {
                let f = &f;
                scope.spawn(move || f(r0, (r0 + per).min(rows)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("checking thread"))
            .collect()
    })
}

/// The largest error over all rows, and whether its worst ratio to the tolerance is within
/// it; `check(first_row, end_row)` gives both for a span of rows.
fn by_rows(
    rows: usize,
    dim: usize,
    check: impl Fn(usize, usize) -> (f64, f64) + Sync,
) -> (f64, bool) {
    let mut worst = Worst::default();
    for (abs, ratio) in par_rows(rows, dim, check) {
        worst.merge(&Worst { abs, ratio });
    }
    (worst.abs, worst.ratio <= 1.0)
}

fn print_table(table: &[Row], per_op: bool, torch: bool) {
    let backward = table.iter().any(|r| r.figures[3].check.is_some());
    let names = [
        "copy",
        "LayerNorm",
        "RMSNorm",
        "LayerNorm bwd",
        "RMSNorm bwd",
    ];
    let shown = if backward { 5 } else { 3 };
    let unit = if per_op { "µs" } else { "GB/s" };
    let mut head = format!("{:>5} {:>7} {:>9}", "dtype", "D", "rows");
    for name in &names[..shown] {
        head += &format!(" {:>20}", format!("{name} {unit}"));
    }
    head += &format!(" {:>7}", "RMS/LN");
    if torch {
        for name in &names[1..shown] {
            head += &format!(" {:>10}", format!("{}×pt", name.replace("Norm", "").trim()));
        }
    }
    head += "  errors";
    println!("{head}");
    for r in table {
        let copy = r.copy_gbps();
        let mut line = format!("{:>5} {:>7} {:>9}", r.dtype.name(), r.dim, r.rows);
        for (k, f) in r.figures[..shown].iter().enumerate() {
            let cell = match (f.gbps, f.us, f.check) {
                (_, _, Some((_, false))) => "FAILED check".to_string(),
                (Some(g), Some(us), _) if k > 0 => {
                    let main = if per_op { format!("{us:.2}") } else { gbps(g) };
                    format!("{main} ({:.0}%)", 100.0 * g / copy)
                }
                (Some(g), Some(us), _) => {
                    if per_op {
                        format!("{us:.2}")
                    } else {
                        gbps(g)
                    }
                }
                _ => "-".to_string(),
            };
            line += &format!(" {cell:>20}");
        }
        let ratio = match (r.figures[2].gbps, r.figures[1].gbps) {
            (Some(a), Some(b)) => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        line += &format!(" {ratio:>7}");
        if torch {
            for f in &r.figures[1..shown] {
                let cell = match (f.torch_us, f.us) {
                    (Some(t), Some(us)) => format!("{:.2}", t / us),
                    _ => "-".into(),
                };
                line += &format!(" {cell:>10}");
            }
        }
        let errors: Vec<String> = r.figures[1..shown]
            .iter()
            .map(|f| match f.check {
                Some((e, ok)) => format!("{e:.1e}{}", if ok { "" } else { "!" }),
                None => "-".into(),
            })
            .collect();
        line += &format!("  {}", errors.join(" "));
        println!("{line}");
    }
    println!(
        "(%: of the copy's GB/s in the same run{}; forward GB/s count x + y, backward x + dy + dx)",
        if torch {
            "; ×pt: PyTorch's time over ours, same shape"
        } else {
            ""
        }
    );
    if per_op {
        println!(
            "(few rows, a decode step: the forward passes save no statistics, and long rows are \
             split over several workgroups as Tuning::split_groups says)"
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

fn write_json(
    path: &Path,
    gpu: &Gpu,
    timer: &Timer,
    iters: u32,
    tuning: Tuning,
    table: &[Row],

    decode: bool,
) -> Result<(), Failure> {
    let info = gpu.adapter.get_info();
    let results: Vec<_> = table
        .iter()
        .map(|r| {
            let copy = r.copy_gbps();
            let mut entry = serde_json::json!({
                "dtype": r.dtype.name(),
                "dim": r.dim,
                "rows": r.rows,
                "bytes_per_tensor": r.rows * r.dim * r.dtype.size() as usize,
                "copy_gbps": copy,
                "copy_us": r.figures[0].us,
                "copy_torch_us": r.figures[0].torch_us,
                "rms_over_layer_norm": match (r.figures[2].gbps, r.figures[1].gbps) {
                    (Some(a), Some(b)) => Some(a / b),
                    _ => None,
                },
            });
            for (name, f) in KERNELS.iter().zip(&r.figures).skip(1) {
                if f.check.is_none() {
                    continue;
                }
                entry[*name] = serde_json::json!({
                    "gbps": f.gbps,
                    "us_per_op": f.us,
                    "fraction_of_copy": f.gbps.map(|g| g / copy),
                    "max_abs_error": f.check.map(|c| c.0),
                    "check_passed": f.check.map(|c| c.1),
                    "torch_us": f.torch_us,
                    "speedup_over_torch": f.torch_us.zip(f.us).map(|(t, us)| t / us),
                });
            }
            entry
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
        "tuning": {
            "v_per_invocation": tuning.v_per_invocation,
            "v_per_invocation_16bit": tuning.v_per_invocation_16bit,
            "v_per_invocation_strided": tuning.v_per_invocation_strided,
            "bytes_per_group": tuning.bytes_per_group,
            "split_groups": tuning.split_groups,
            "side_by_side_below": tuning.side_by_side_below,
            "side_by_side_below_backward": tuning.side_by_side_below_backward,
            "max_workgroup_size": gpu.norms.caps().max_wg,
        },
        "iters_per_batch": iters,
        "forward_saves_statistics": !decode,
        "batches": BATCHES,
        "statistic": "median batch; us_per_op = batch time / iters",
        "units": "GB/s = bytes the op must move / time, decimal: forward x + y, backward x + dy + dx",
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
    let Some(dtype) = table.first().map(|r| r.dtype) else {
        return Err(fail(&"no figures to draw"));
    };
    let table: Vec<&Row> = table.iter().filter(|r| r.dtype == dtype).collect();
    type Series = (&'static str, RGBColor, Vec<(f64, f64)>);
    let series: [Series; 3] = [
        ("copy", RGBColor(120, 120, 120), points(&table, 0)),
        ("LayerNorm", RGBColor(31, 119, 180), points(&table, 1)),
        ("RMSNorm", RGBColor(214, 39, 40), points(&table, 2)),
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
            format!("wgpu-norm forward, {dtype} — {adapter}"),
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

/// (D, GB/s) of kernel `k`, the first row count measured at each D.
fn points(table: &[&Row], k: usize) -> Vec<(f64, f64)> {
    let mut seen = Vec::new();
    table
        .iter()
        .filter(|r| {
            let first = !seen.contains(&r.dim);
            seen.push(r.dim);
            first
        })
        .filter_map(|r| r.figures[k].gbps.map(|g| (r.dim as f64, g)))
        .collect()
}
