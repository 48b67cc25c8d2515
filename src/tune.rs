//! Choosing the launch shape ([`Tuning`]) for one adapter by measuring it once, and keeping
//! the result in the user's cache directory.
//!
//! The right shape differs by adapter: an H200 wants many invocations with 8 `V`s each, a CPU
//! adapter (lavapipe) fewer, longer-lived invocations, since its barriers are function calls.
//! [`autotune`] times a small grid of candidates on the device (RMSNorm and LayerNorm, forward
//! and backward, at short, mid and long rows of D % 4 == 0), scores each by the geometric mean
//! of its time over the default's, and keeps the default unless a candidate beats it by
//! [`MARGIN`]; then, with that shape, it times a decode step (1 to 64 rows) with few long rows
//! split over several workgroups and without, and keeps the split unless whole rows beat it
//! by the margin; then the forward's `V`s per invocation in rows that cannot be read four
//! consecutive elements at a time (strided `V`s, timed at the grid's D % 4 != 0), where a CPU
//! adapter wants another shape than for the others; then how short a row must be to share a
//! workgroup with others, forward and backward apart ([`Tuning::side_by_side_below`] and
//! [`Tuning::side_by_side_below_backward`], timed at short rows of their own,
//! [`Grid::side_by_side_dims`]); last, it times rows stored in bf16 with
//! twice as many `V`s per invocation as f32 rows (the same bytes in flight) against as many
//! (half the registers, the default), over the whole grid. The backward's strided rows
//! follow the main shape, which is chosen without them (in f32: they enter only the bf16
//! stage).
//! [`tuning_for`] caches that choice per adapter, driver and crate version, so it is measured
//! once. Native only: it blocks while it measures.
//!
//! Turn it off with `WGPU_NORM_AUTOTUNE=0` (then [`tuning_for`] returns the default without
//! measuring or reading the cache); `WGPU_NORM_CACHE_DIR` moves the cache (default:
//! `$XDG_CACHE_HOME/wgpu-norm`, else `~/.cache/wgpu-norm`).

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::dtype::DType;
use crate::error::Result;
use crate::norms::{Norms, NormsOptions, Tuning};
use crate::plan::plan;
use crate::timing::Timer;
use crate::{LayerNorm, RmsNorm, TensorRef};

/// A candidate must be this much faster than the default (geometric mean over the grid) to
/// be chosen: smaller differences are within run-to-run noise.
pub const MARGIN: f64 = 0.05;

/// The candidates: `V`s per invocation by bytes of rows per workgroup, the default among them.
pub fn candidates() -> Vec<Tuning> {
    let mut all = vec![Tuning::default()];
    // 2 V's per invocation lost everywhere it was tried (H200: 43 % of a copy at D = 8192).
    // 32 keeps in registers only part of rows that 16 keeps whole (Variant::tail): lavapipe
    // ran the scalar forward at D = 4097 twice as fast that way (2026-11-27), on 64
    // invocations rather than 128.
    for v in [4, 8, 16, 32] {
        for bytes in [4096, 16384, 65536] {
            let t = Tuning {
                bytes_per_group: bytes,
                ..Tuning::default()
            }
            .with_v_per_invocation(v);
            if !all.contains(&t) {
                all.push(t);
            }
        }
    }
    all
}

/// The candidates for [`Tuning::v_per_invocation_strided`] (every candidate's
/// `v_per_invocation` is one of them).
pub const STRIDED_CANDIDATES: [u32; 4] = [4, 8, 16, 32];

/// The candidates for [`Tuning::side_by_side_below`]: the default (2), one (the forward's
/// rows of one `V` an invocation alone, as until 2026-11-29: f32 D = 256-508), four (rows of
/// up to four side by side too: D = 512-1020) and eight (D = 1024 too, at 8 `V`s an
/// invocation: past 256 `V`s a row takes the whole workgroup anyway; with more `V`s an
/// invocation, D = 1024-2044). A value whose kernels are another's at the grid's D is not
/// timed.
pub const SIDE_BY_SIDE_CANDIDATES: [u32; 4] = [1, 2, 4, 8];

/// The candidates for [`Tuning::side_by_side_below_backward`]: the default (1), two (the
/// backward's rows of one `V` an invocation side by side too: f32 D = 256-508) and four
/// (D = 512 too, at 8 `V`s an invocation: past 128 `V`s a backward row takes the whole
/// workgroup anyway).
pub const SIDE_BY_SIDE_BACKWARD_CANDIDATES: [u32; 3] = [1, 2, 4];

/// What [`tuning_for`] decided, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct Tuned {
    pub tuning: Tuning,
    /// Measured now (false: read from the cache, or autotuning is off).
    pub measured: bool,
    /// Each candidate's score (below 1 is faster), when measured: its time over the default's,
    /// then whole rows' decode step over split rows' with the shape chosen, then, where the
    /// grid has a D % 4 != 0, each other candidate for the forward's strided rows over the
    /// shape chosen, then, where the grid has side-by-side dims, each other of
    /// [`SIDE_BY_SIDE_CANDIDATES`] and then of [`SIDE_BY_SIDE_BACKWARD_CANDIDATES`] over the
    /// shape chosen, then 16-bit rows with twice as many `V`s as f32 rows over as many.
    pub scores: Vec<(Tuning, f64)>,
    /// The cache file, when one is used.
    pub cache: Option<PathBuf>,
}

/// The tuning for this device: from the cache when this adapter, driver and crate version
/// were measured before, else measured now with [`autotune`] and cached. `options` are the
/// ones the caller's [`Norms`] will use (their `tuning` is ignored). With
/// `WGPU_NORM_AUTOTUNE=0`, the default at once.
pub fn tuning_for(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    options: NormsOptions,
) -> Result<Tuned> {
    if std::env::var("WGPU_NORM_AUTOTUNE").is_ok_and(|v| v == "0") {
        return Ok(Tuned {
            tuning: Tuning::default(),
            measured: false,
            scores: Vec::new(),
            cache: None,
        });
    }
    let dir = std::env::var_os("WGPU_NORM_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("wgpu-norm")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/wgpu-norm")));
    match dir {
        Some(dir) => tuning_cached_in(&dir, device, queue, options, &Grid::default()),
        None => autotune(device, queue, options, &Grid::default()).map(|(tuning, scores)| Tuned {
            tuning,
            measured: true,
            scores,
            cache: None,
        }),
    }
}

/// [`tuning_for`] with the cache in `dir` (created if missing), measuring on `grid`. A cache
/// file that cannot be read or parsed is measured again and rewritten; one that cannot be
/// written is not fatal.
pub fn tuning_cached_in(
    dir: &Path,
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    options: NormsOptions,
    grid: &Grid,
) -> Result<Tuned> {
    // Keyed by what the kernels will actually use on this device (a device opened with lower
    // limits, or without subgroups, is another measurement).
    let caps = Norms::with_options(
        device,
        NormsOptions {
            device_lost_callback: false,
            ..options
        },
    )?
    .caps()
    .clone();
    let key = cache_key(&device.adapter_info(), &caps);
    let path = dir.join(format!("tuning-{:016x}.txt", fnv1a(key.as_bytes())));
    if let Some(tuning) = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| parse(&text, &key))
    {
        return Ok(Tuned {
            tuning,
            measured: false,
            scores: Vec::new(),
            cache: Some(path),
        });
    }
    let (tuning, scores) = autotune(device, queue, options, grid)?;
    let text = format!(
        "# wgpu-norm's launch shape for this adapter, measured by wgpu_norm::tune::autotune\n\
         key={key}\nv_per_invocation={}\nv_per_invocation_16bit={}\n\
         v_per_invocation_strided={}\nbytes_per_group={}\nsplit_groups={}\n\
         side_by_side_below={}\nside_by_side_below_backward={}\n",
        tuning.v_per_invocation,
        tuning.v_per_invocation_16bit,
        tuning.v_per_invocation_strided,
        tuning.bytes_per_group,
        tuning.split_groups,
        tuning.side_by_side_below,
        tuning.side_by_side_below_backward
    );
    let _ = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, text));
    Ok(Tuned {
        tuning,
        measured: true,
        scores,
        cache: Some(path),
    })
}

/// How the autotune measures ([`GPU_BYTES`], the yardstick it beats, its stages): a choice
/// measured another way is measured again. Raise it when the method changes.
const METHOD: u32 = 3;

/// What identifies a measurement: the adapter, its driver, the crate version, the kernels
/// themselves, the options that change them, and how it was measured.
fn cache_key(info: &wgpu::AdapterInfo, caps: &crate::Caps) -> String {
    format!(
        "{} | {:?} | {:?} | {:04x}:{:04x} | {} {} | wgpu-norm {} kernels {:016x} | \
         subgroups={} max_wg={} | method {METHOD} {GPU_BYTES} {CPU_BYTES} {:?}",
        info.name,
        info.backend,
        info.device_type,
        info.vendor,
        info.device,
        info.driver,
        info.driver_info,
        env!("CARGO_PKG_VERSION"),
        kernels_fingerprint(),
        caps.subgroups,
        caps.max_wg,
        Tuning::default(),
    )
    .replace('\n', " ")
}

/// A hash of what the candidates' speed depends on within one crate version: every WGSL
/// source and the launch shapes chosen over the grid, so that a choice measured on other
/// kernels (a development build, say) is measured again.
fn kernels_fingerprint() -> u64 {
    use crate::shaders::{COMMON, HALF, REDUCE, Variant};
    // The compiled-in flags too: which of them are is Rust's choice, not the WGSL's.
    let mut text = format!("{COMMON}{REDUCE}{HALF}{}", crate::kernel::SPECIALIZED);
    for kernel in crate::Kernel::ALL {
        let def = kernel.def();
        text.push_str(&def.flags.to_string());
        text.push_str(def.source);
        for (_, include) in def.includes {
            text.push_str(include);
        }
        for dim in [1, 7, 128, 1024, 4097, 8192] {
            for vec4 in [false, true] {
                let v = Variant::for_row(kernel, dim, vec4, true, false, 1024);
                text.push_str(&v.label());
            }
        }
    }
    fnv1a(text.as_bytes())
}

fn parse(text: &str, key: &str) -> Option<Tuning> {
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
    };
    if value("key")? != key {
        return None;
    }
    let tuning = Tuning {
        v_per_invocation: value("v_per_invocation")?.trim().parse().ok()?,
        v_per_invocation_16bit: value("v_per_invocation_16bit")?.trim().parse().ok()?,
        v_per_invocation_strided: value("v_per_invocation_strided")?.trim().parse().ok()?,
        bytes_per_group: value("bytes_per_group")?.trim().parse().ok()?,
        split_groups: value("split_groups")?.trim().parse().ok()?,
        side_by_side_below: value("side_by_side_below")?.trim().parse().ok()?,
        side_by_side_below_backward: value("side_by_side_below_backward")?.trim().parse().ok()?,
    };
    is_candidate(&tuning).then_some(tuning)
}

/// 64-bit FNV-1a: a stable file name for a key (std's hasher may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Records one op into an encoder.
type Record<'a> = dyn Fn(&mut wgpu::CommandEncoder) -> Result<()> + 'a;

/// What the autotune measures.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    /// Row lengths (default: short rows, a mid size, an odd one, a long one). Those with
    /// D % 4 == 0 choose the main shape (all of them if none is), the others the shape of
    /// strided rows.
    pub dims: Vec<usize>,
    /// Bytes of x (f32) at each D; `None`: [`CPU_BYTES`] on a CPU adapter, [`GPU_BYTES`] on a
    /// GPU (less where the device's binding or buffer size limit is lower).
    pub bytes: Option<u64>,
    /// Row lengths that [`Tuning::side_by_side_below`]'s candidates are timed at (forward)
    /// and [`Tuning::side_by_side_below_backward`]'s (backward): by default 256, 512 and
    /// 1024, where the candidates differ; empty skips that stage.
    pub side_by_side_dims: Vec<usize>,
}

/// Bytes of x the autotune times on a CPU adapter: the size the benches report for one
/// (`WGPU_NORM_BENCH_MIB`'s default there). At 1 MiB, as until 2026-11-29, lavapipe ranked
/// the backward's short rows side by side 1.15-1.20× faster than alone at D = 256 (with 32
/// `V`s an invocation), where at 8 MiB they ran 0.70-0.75× as fast: a CPU's caches, which
/// hold most of a megabyte's rows, are not what the op meets in a model.
pub const CPU_BYTES: u64 = 8 << 20;

/// Bytes of x the autotune times on a GPU: rows in and out must not fit the GPU's last cache
/// level, or the candidates are ranked by how they use that cache, not memory. At 32 MiB
/// (x and y: 64 MiB against an H200's 50 MiB L2) the H200 chose 4 `V`s per invocation and
/// 4 KiB per workgroup, which read RMSNorm at D = 4096 8 % slower than the default at
/// 256 MiB (2026-11-27, commit 7cd02a4). 128 MiB in and 128 out outsize the L2 of NVIDIA's
/// and the Infinity Cache of AMD's consumer GPUs; it is also the storage binding that WebGPU's
/// default limits allow. The autotune holds 640 MiB of buffers while it runs (x, y, dy, dx
/// and their bf16 twins).
pub const GPU_BYTES: u64 = 128 << 20;

impl Default for Grid {
    fn default() -> Self {
        Grid {
            dims: vec![128, 1024, 4097, 8192],
            bytes: None,
            side_by_side_dims: vec![256, 512, 1024],
        }
    }
}

/// Measures every candidate on this device over `grid` and returns the best with every
/// score (about a minute on lavapipe, with its pipelines compiled; seconds on a GPU).
pub fn autotune(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    options: NormsOptions,
    grid: &Grid,
) -> Result<(Tuning, Vec<(Tuning, f64)>)> {
    let cpu = device.adapter_info().device_type == wgpu::DeviceType::Cpu;
    let limits = device.limits();
    let gpu_bytes = GPU_BYTES
        .min(limits.max_storage_buffer_binding_size)
        .min(limits.max_buffer_size);
    let bytes = grid
        .bytes
        .unwrap_or(if cpu { CPU_BYTES } else { gpu_bytes })
        & !3;
    // On a GPU, batches of about 20 ops' worth of 32 MiB (the size timed before GPU_BYTES),
    // so that each batch is long enough for the clock's resolution whatever the size.
    let iters = if cpu {
        2
    } else {
        ((20 * (32u64 << 20)) / bytes.max(1)).clamp(5, 20) as u32
    };
    let dims = &grid.dims;
    let strided_dims: Vec<usize> = dims.iter().copied().filter(|d| d % 4 != 0).collect();
    let mut wide_dims: Vec<usize> = dims.iter().copied().filter(|d| d % 4 == 0).collect();
    if wide_dims.is_empty() {
        wide_dims.clone_from(dims);
    }
    // Every D timed, for the buffers' sizes.
    let every_dim: Vec<usize> = dims
        .iter()
        .chain(&grid.side_by_side_dims)
        .copied()
        .collect();
    if dims.is_empty() || every_dim.iter().any(|&d| d == 0 || d as u64 * 4 > bytes) {
        return Err(crate::Error::BadTuning(format!(
            "autotune grid: each D must be at least 1 and fit {bytes} bytes, got {dims:?} \
             and {:?}",
            grid.side_by_side_dims
        )));
    }
    let timer = Timer::new(device, queue);
    let storage = |label: &str, size: u64| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    // Data around 3 with spread 1 (the values do not change the timing, as long as they are
    // finite and not all equal).
    let x = storage("wgpu-norm autotune x", bytes);
    let words: Vec<f32> = (0..bytes / 4)
        .map(|i| 3.0 + (i % 97) as f32 / 97.0)
        .collect();
    queue.write_buffer(&x, 0, bytemuck::cast_slice(&words));
    let (y, dy, dx) = (
        storage("wgpu-norm autotune y", bytes),
        storage("wgpu-norm autotune dy", bytes),
        storage("wgpu-norm autotune dx", bytes),
    );
    queue.write_buffer(&dy, 0, bytemuck::cast_slice(&words));
    let max_dim = dims.iter().max().copied().unwrap_or(1) as u64;
    let param_len = every_dim.iter().max().copied().unwrap_or(1) as u64;
    let w = storage("wgpu-norm autotune weight", param_len * 4);
    queue.write_buffer(
        &w,
        0,
        bytemuck::cast_slice(&vec![1.0f32; param_len as usize]),
    );
    // The same values in bf16 (the top half of each f32), for the 16-bit stage; y and dx are
    // written into the f32 buffers, which are large enough.
    let bf16 = |f: f32| (f.to_bits() >> 16) as u16;
    let mut halves: Vec<u16> = words.iter().map(|&f| bf16(f)).collect();
    halves.resize(halves.len().next_multiple_of(2), 0);
    let x16 = storage("wgpu-norm autotune x (bf16)", halves.len() as u64 * 2);
    queue.write_buffer(&x16, 0, bytemuck::cast_slice(&halves));
    let dy16 = storage("wgpu-norm autotune dy (bf16)", halves.len() as u64 * 2);
    queue.write_buffer(&dy16, 0, bytemuck::cast_slice(&halves));
    let ones = vec![bf16(1.0); (param_len as usize).next_multiple_of(2)];
    let w16 = storage("wgpu-norm autotune weight (bf16)", ones.len() as u64 * 2);
    queue.write_buffer(&w16, 0, bytemuck::cast_slice(&ones));
    // The statistics buffers are shared by all ops: the RMSNorm backward reads what the
    // LayerNorm forward last wrote, which changes nothing for timing.
    let stats_len = bytes / 4 / every_dim.iter().min().copied().unwrap_or(1) as u64 * 4;
    let (mean, rstd) = (
        storage("wgpu-norm autotune mean", stats_len),
        storage("wgpu-norm autotune rstd", stats_len),
    );
    let dw = storage("wgpu-norm autotune dweight", param_len * 4);

    // Each candidate's time for each (D, op), taken twice in alternating order so that a
    // drift in the device's clocks does not favour the candidates measured first.
    let all = candidates();
    // One Norms per candidate for both rounds: each compiles its own pipelines once.
    let norms_for = |tuning| {
        Norms::with_options(
            device,
            NormsOptions {
                tuning,
                device_lost_callback: false,
                ..options
            },
        )
    };
    // Once to compile and warm, then the better of two batches.
    let best_time = |op: &Record| -> Result<f64> {
        timer.time(1, op)?;
        Ok((0..2)
            .map(|_| timer.time(iters, op).map(|d| d.as_secs_f64()))
            .collect::<Result<Vec<f64>>>()?
            .into_iter()
            .fold(f64::INFINITY, f64::min))
    };
    // The four ops timed at `dim`, rows stored as `dtype` (f32, or bf16 with a bf16 weight):
    // RMSNorm and LayerNorm forward, then their backward passes.
    let ops_at = |dtype: DType, dim: usize| {
        let (x, dy, w) = match dtype {
            DType::F32 => (&x, &dy, &w),
            _ => (&x16, &dy16, &w16),
        };
        let rows = (bytes / 4) as usize / dim;
        let n = (rows * dim) as u64 * dtype.size();
        let t = |b| TensorRef::new(b, 0, n);
        let wt = TensorRef::new(w, 0, dim as u64 * dtype.size());
        let stat = |b| TensorRef::new(b, 0, rows as u64 * 4);
        let rms = RmsNorm::new(rows, dim, t(x), t(&y))
            .dtype(dtype)
            .weight(wt)
            .rrms(stat(&rstd));
        let ln = LayerNorm::new(rows, dim, t(x), t(&y))
            .dtype(dtype)
            .weight(wt)
            .mean(stat(&mean))
            .rstd(stat(&rstd));
        let dwt = TensorRef::new(&dw, 0, dim as u64 * 4);
        let rms_bwd = rms.backward(t(dy), t(&dx))?.grad_weight(dwt);
        let ln_bwd = ln.backward(t(dy), t(&dx))?.grad_weight(dwt);
        Ok::<_, crate::Error>((rms, ln, rms_bwd, ln_bwd))
    };
    // Adds the time of `ops` of each D of `dims` with `norms` to `out`.
    let time_grid =
        |norms: &Norms, dtype: DType, dims: &[usize], ops: Range<usize>, out: &mut [f64]| {
            for (k, &dim) in dims.iter().enumerate() {
                let (rms, ln, rms_bwd, ln_bwd) = ops_at(dtype, dim)?;
                let all_ops: [&Record; 4] = [
                    &|e| norms.rms_norm(e, &rms),
                    &|e| norms.layer_norm(e, &ln),
                    &|e| norms.rms_norm_backward(e, &rms_bwd),
                    &|e| norms.layer_norm_backward(e, &ln_bwd),
                ];
                let per_dim = ops.len();
                for (o, op) in all_ops[ops.clone()].iter().enumerate() {
                    out[k * per_dim + o] += best_time(op)?;
                }
            }
            Ok::<_, crate::Error>(())
        };
    // The kernels `norms` runs for `ops` of each D of `dims`, in f32: two tunings that give
    // the same run the same code, and need not both be timed.
    let variants = |norms: &Norms, dims: &[usize], ops: Range<usize>| {
        let mut out = Vec::new();
        for &dim in dims {
            let (rms, ln, rms_bwd, ln_bwd) = ops_at(DType::F32, dim)?;
            let caps = norms.caps();
            let plans = [
                plan(caps, &rms)?,
                plan(caps, &ln)?,
                plan(caps, &rms_bwd)?,
                plan(caps, &ln_bwd)?,
            ];
            for p in &plans[ops.clone()] {
                out.extend(p.steps.iter().map(|s| s.variant));
            }
        }
        Ok::<_, crate::Error>(out)
    };
    // The geometric mean of `times` over `base` (below 1: faster).
    let ratio = |times: &[f64], base: &[f64]| {
        let logs: f64 = times.iter().zip(base).map(|(a, b)| (a / b).ln()).sum();
        (logs / times.len() as f64).exp()
    };
    let norms_of = all
        .iter()
        .map(|&tuning| norms_for(tuning))
        .collect::<Result<Vec<_>>>()?;
    // Each of `norms` timed over `dims` in `dtype` (`ops` of each D's: RMSNorm, LayerNorm,
    // their backward passes), twice, in alternating order; then the geometric mean of each
    // one's time over the first's, and the best of them, which must beat the first by the
    // margin.
    let contest =
        |norms: &[&Norms], tunings: &[Tuning], dtype: DType, dims: &[usize], ops: Range<usize>| {
            let mut times = vec![vec![0.0f64; dims.len() * ops.len()]; norms.len()];
            for round in 0..2 {
                let order: Vec<usize> = if round == 0 {
                    (0..norms.len()).collect()
                } else {
                    (0..norms.len()).rev().collect()
                };
                for c in order {
                    time_grid(norms[c], dtype, dims, ops.clone(), &mut times[c])?;
                }
            }
            let scores: Vec<(Tuning, f64)> = tunings
                .iter()
                .zip(&times)
                .map(|(&t, ts)| (t, ratio(ts, &times[0])))
                .collect();
            let best = scores
                .iter()
                .map(|&(_, s)| s)
                .enumerate()
                // A zero time (a clock that did not tick) would score 0 and win: such a
                // candidate is out.
                .filter(|&(_, s)| s.is_finite() && s > 0.0)
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .filter(|&(_, s)| s < 1.0 - MARGIN)
                .map_or(0, |(c, _)| c);
            Ok::<_, crate::Error>((best, scores))
        };
    let (best, scores) = contest(
        &norms_of.iter().collect::<Vec<_>>(),
        &all,
        DType::F32,
        &wide_dims,
        0..4,
    )?;
    let best = all[best];

    // Few rows (a decode step), with the shape chosen: rows split over several workgroups
    // (the default) against whole rows (split_groups = 0), forward without statistics at the
    // grid's longest D; whole rows must win by the margin.
    let whole = Tuning {
        split_groups: 0,
        ..best
    };
    let (split_norms, whole_norms) = (norms_for(best)?, norms_for(whole)?);
    let mut decode = [0.0f64; 2];
    let fit = (bytes / 4 / max_dim) as usize;
    let mut rows_list: Vec<usize> = [1, 8, 64].iter().map(|&r| r.min(fit)).collect();
    rows_list.dedup();
    for round in 0..2 {
        for k in 0..2 {
            let which = if round == 0 { k } else { 1 - k };
            let norms = if which == 0 {
                &split_norms
            } else {
                &whole_norms
            };
            for &rows in &rows_list {
                let n = (rows as u64) * max_dim * 4;
                let t = |b| TensorRef::new(b, 0, n);
                let wt = TensorRef::new(&w, 0, max_dim * 4);
                let dim = max_dim as usize;
                let rms = RmsNorm::new(rows, dim, t(&x), t(&y)).weight(wt);
                let ln = LayerNorm::new(rows, dim, t(&x), t(&y)).weight(wt);
                let ops: [&Record; 2] =
                    [&|e| norms.rms_norm(e, &rms), &|e| norms.layer_norm(e, &ln)];
                for op in ops {
                    decode[which] += best_time(op)?.max(f64::MIN_POSITIVE).ln();
                }
            }
        }
    }
    let whole_score = ((decode[1] - decode[0]) / (4 * rows_list.len()) as f64).exp();
    let mut scores = scores;
    scores.push((whole, whole_score));
    // The shape chosen, and its Norms (already made for the decode step).
    let (mut best, mut best_norms) = if whole_score.is_finite() && whole_score < 1.0 - MARGIN {
        (whole, whole_norms)
    } else {
        (best, split_norms)
    };

    // One knob's `values` against the shape chosen (`best`, whose Norms is `best_norms`), in
    // f32 over `dims` and `ops`: the best of them where it beats the shape chosen by the
    // margin, the score of each that runs other kernels than those before it added to
    // `scores`.
    let knob = |best: Tuning,
                best_norms: Norms,
                values: &[Tuning],
                dims: &[usize],
                ops: Range<usize>,
                scores: &mut Vec<(Tuning, f64)>| {
        // Each value whose kernels differ from every one's before it (the shape chosen's
        // first): where two give the same kernels at these D, the first stands for both.
        let mut tunings = vec![best];
        let mut others = Vec::new();
        let mut seen = vec![variants(&best_norms, dims, ops.clone())?];
        for &t in values {
            let norms = norms_for(t)?;
            let v = variants(&norms, dims, ops.clone())?;
            if !seen.contains(&v) {
                seen.push(v);
                tunings.push(t);
                others.push(norms);
            }
        }
        let (chosen, knob_scores) = {
            let all_norms: Vec<&Norms> = std::iter::once(&best_norms).chain(&others).collect();
            contest(&all_norms, &tunings, DType::F32, dims, ops)?
        };
        scores.extend(knob_scores.into_iter().skip(1));
        Ok::<_, crate::Error>(if chosen > 0 {
            (tunings[chosen], others.swap_remove(chosen - 1))
        } else {
            (best, best_norms)
        })
    };

    // Rows of strided `V`s (the grid's D % 4 != 0), with the shape chosen: each candidate for
    // their `V`s per invocation, forward only (the knob's only user).
    if !strided_dims.is_empty() {
        let values = STRIDED_CANDIDATES.map(|v| Tuning {
            v_per_invocation_strided: v,
            ..best
        });
        (best, best_norms) = knob(best, best_norms, &values, &strided_dims, 0..2, &mut scores)?;
    }

    // How short a row must be to share a workgroup, at the stage's own short rows (the main
    // grid's D = 128 is side by side under every candidate): the forward's threshold timed
    // on the forward, then the backward's on the backward.
    if !grid.side_by_side_dims.is_empty() {
        let dims = &grid.side_by_side_dims;
        let values = SIDE_BY_SIDE_CANDIDATES.map(|below| Tuning {
            side_by_side_below: below,
            ..best
        });
        (best, best_norms) = knob(best, best_norms, &values, dims, 0..2, &mut scores)?;
        let values = SIDE_BY_SIDE_BACKWARD_CANDIDATES.map(|below| Tuning {
            side_by_side_below_backward: below,
            ..best
        });
        (best, best_norms) = knob(best, best_norms, &values, dims, 2..4, &mut scores)?;
    }

    // Rows stored in 16 bits, with the shape chosen: twice as many `V`s per invocation as f32
    // rows (the bytes of f32 rows in flight, twice the registers) must beat as many by the
    // margin.
    let twice = Tuning {
        v_per_invocation_16bit: twice_16bit(best.v_per_invocation),
        ..best
    };
    if twice == best {
        return Ok((best, scores));
    }
    let twice_norms = norms_for(twice)?;
    let (chosen, half_scores) = contest(
        &[&best_norms, &twice_norms],
        &[best, twice],
        DType::Bf16,
        dims,
        0..4,
    )?;
    scores.extend(half_scores.into_iter().skip(1));
    Ok(([best, twice][chosen], scores))
}

/// The other `V`s per invocation the autotune's last stage times for 16-bit rows: twice
/// f32 rows' `v` (the bytes of f32 rows in flight), within the knob's range.
fn twice_16bit(v: u32) -> u32 {
    v.saturating_mul(2).min(64)
}

/// Whether the autotune may choose `t`: one of [`candidates`], rows split or not, with 16-bit
/// rows taking the number of f32 rows' `V`s or twice it, strided rows one of
/// [`STRIDED_CANDIDATES`], and short rows side by side below one of
/// [`SIDE_BY_SIDE_CANDIDATES`] forward and of [`SIDE_BY_SIDE_BACKWARD_CANDIDATES`] backward.
pub fn is_candidate(t: &Tuning) -> bool {
    let base = Tuning {
        split_groups: crate::shaders::SPLIT_GROUPS,
        side_by_side_below: crate::shaders::SIDE_BY_SIDE_BELOW,
        side_by_side_below_backward: crate::shaders::SIDE_BY_SIDE_BELOW_BACKWARD,
        ..*t
    }
    .with_v_per_invocation(t.v_per_invocation);
    (t.split_groups == 0 || t.split_groups == crate::shaders::SPLIT_GROUPS)
        && [base.v_per_invocation_16bit, twice_16bit(t.v_per_invocation)]
            .contains(&t.v_per_invocation_16bit)
        && STRIDED_CANDIDATES.contains(&t.v_per_invocation_strided)
        && SIDE_BY_SIDE_CANDIDATES.contains(&t.side_by_side_below)
        && SIDE_BY_SIDE_BACKWARD_CANDIDATES.contains(&t.side_by_side_below_backward)
        && candidates().contains(&base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_file_names_its_key_and_rejects_another() {
        let key = "some adapter | Vulkan";
        let text = format!(
            "# comment\nkey={key}\nv_per_invocation=4\nv_per_invocation_16bit=4\n\
             v_per_invocation_strided=32\nbytes_per_group=65536\nsplit_groups=128\n\
             side_by_side_below=4\nside_by_side_below_backward=2\n"
        );
        let t = parse(&text, key).unwrap();
        assert_eq!(
            (t.side_by_side_below, t.side_by_side_below_backward),
            (4, 2)
        );
        // A file from before the side-by-side knobs is measured again; each knob takes one of
        // its candidates.
        let old = text.replace("side_by_side_below=4\n", "");
        assert_eq!(parse(&old, key), None);
        let old = text.replace("side_by_side_below_backward=2\n", "");
        assert_eq!(parse(&old, key), None);
        let odd = text.replace("side_by_side_below=4", "side_by_side_below=16");
        assert_eq!(parse(&odd, key), None);
        let odd = text.replace("backward=2", "backward=8");
        assert_eq!(parse(&odd, key), None);
        assert_eq!(
            (
                t.v_per_invocation,
                t.v_per_invocation_16bit,
                t.v_per_invocation_strided,
                t.bytes_per_group,
                t.split_groups
            ),
            (4, 4, 32, 65536, 128)
        );
        // A file from before the strided rows' knob is measured again.
        let old = text.replace("v_per_invocation_strided=32\n", "");
        assert_eq!(parse(&old, key), None);
        // Strided rows take one of their candidates, whatever f32 rows take.
        let other = text.replace("strided=32", "strided=8");
        assert_eq!(parse(&other, key).unwrap().v_per_invocation_strided, 8);
        let odd = text.replace("strided=32", "strided=64");
        assert_eq!(parse(&odd, key), None);
        // A file from before the 16-bit knob is measured again.
        let old = "key=k\nv_per_invocation=4\nbytes_per_group=65536\nsplit_groups=128\n";
        assert_eq!(parse(old, "k"), None);
        // 16-bit rows take the count of f32 rows' V's or twice it, nothing else.
        let odd = text.replace("v_per_invocation_16bit=4", "v_per_invocation_16bit=16");
        assert_eq!(parse(&odd, key), None);
        let twice = text.replace("v_per_invocation_16bit=4", "v_per_invocation_16bit=8");
        assert_eq!(parse(&twice, key).unwrap().v_per_invocation_16bit, 8);
        let capped = text
            .replace("v_per_invocation=4", "v_per_invocation=32")
            .replace("v_per_invocation_16bit=4", "v_per_invocation_16bit=64");
        assert_eq!(parse(&capped, key).unwrap().v_per_invocation_16bit, 64);
        // A corrupt count is measured again, not a panic.
        let huge = text.replace("v_per_invocation=4", "v_per_invocation=4294967295");
        assert_eq!(parse(&huge, key), None);
        assert_eq!(parse(&text, "another adapter"), None);
        assert_eq!(
            parse("key=k\nv_per_invocation=3\nbytes_per_group=1\n", "k"),
            None
        );
        assert_eq!(parse("garbage", key), None);
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
        assert_eq!(candidates()[0], Tuning::default());
    }
}
