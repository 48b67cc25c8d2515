//! Shared test harness: one device per configuration, seeded data, poisoned outputs, and a
//! launcher that runs either norm through the recording API with arbitrary byte offsets.
#![allow(dead_code)]

pub mod backward;
pub mod storage;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use wgpu_norm::{Gpu, LayerNorm, NormsOptions, RmsNorm, TensorRef, reference};

/// Bits written into every output before a run: a NaN no arithmetic produces, so an element
/// still holding it was never written.
pub const POISON: u32 = 0x7FBA_DBAD;

/// Errors that reached a device's uncaptured-error handler; must stay 0.
pub static UNCAPTURED: AtomicUsize = AtomicUsize::new(0);

/// The command-line tool (examples/wgpu-norm), built next to the test binaries:
/// `<target>/<profile>/examples/`, wherever `CARGO_TARGET_DIR` puts `<target>`.
pub fn tool() -> std::process::Command {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir
        .join("examples")
        .join(format!("wgpu-norm{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} not built (`cargo test` builds the examples with the tests)",
        path.display()
    );
    std::process::Command::new(path)
}

pub fn open(limits: Option<wgpu::Limits>, options: NormsOptions) -> Gpu {
    let gpu = pollster::block_on(async {
        let adapter = wgpu_norm::pick_adapter().await?;
        Gpu::from_adapter(adapter, limits, options).await
    })
    .unwrap_or_else(|e| panic!("\n\nTHE GPU TESTS NEED A WGPU ADAPTER AND FOUND NONE.\n{e}\n\n"));
    gpu.device.on_uncaptured_error(std::sync::Arc::new(|e| {
        eprintln!("uncaptured wgpu error: {e}");
        UNCAPTURED.fetch_add(1, Ordering::SeqCst);
    }));
    gpu
}

/// The default device: subgroup reductions where the adapter has them.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let gpu = open(None, NormsOptions::default());
        eprintln!(
            "adapter: {} (subgroups: {})",
            gpu.describe(),
            gpu.norms.uses_subgroups()
        );
        gpu
    })
}

/// The same adapter with the workgroup-memory tree reduction forced.
pub fn tree_gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        open(
            None,
            NormsOptions {
                subgroups: false,
                ..Default::default()
            },
        )
    })
}

/// A device with wgpu's default limits (256 invocations per workgroup, 128 MiB bindings), as
/// a runtime that asks for nothing more would have.
pub fn default_limits_gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| open(Some(wgpu::Limits::default()), NormsOptions::default()))
}

/// A device whose storage bindings are limited to `max_binding` bytes (and whose grid is
/// limited to 64 workgroups a side), so the splitting logic runs without giant buffers.
/// Devices are kept for the whole run, never dropped while other tests use the GPU.
pub fn small_binding_gpu(max_binding: u64) -> &'static Gpu {
    static GPUS: Mutex<Vec<(u64, &'static Gpu)>> = Mutex::new(Vec::new());
    let mut gpus = GPUS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&(_, gpu)) = gpus.iter().find(|(b, _)| *b == max_binding) {
        return gpu;
    }
    let adapter = pollster::block_on(wgpu_norm::pick_adapter()).expect("adapter");
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: max_binding,
        max_compute_workgroups_per_dimension: 64,
        ..adapter.limits()
    };
    let gpu: &'static Gpu = Box::leak(Box::new(open(Some(limits), NormsOptions::default())));
    assert_eq!(
        gpu.device.limits().max_storage_buffer_binding_size,
        max_binding
    );
    gpus.push((max_binding, gpu));
    gpu
}

/// Seeded generator (SplitMix64): the same data on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// `n` values `center + spread * N(0, 1)`, rounded to f32.
    pub fn data(&mut self, n: usize, center: f64, spread: f64) -> Vec<f32> {
        (0..n)
            .map(|_| (center + spread * self.normal()) as f32)
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    LayerNorm,
    RmsNorm,
}

/// One run's inputs and where in their buffers they go.
#[derive(Clone, Debug)]
pub struct Case {
    pub op: Op,
    pub dim: usize,
    pub x: Vec<f32>,
    pub weight: Option<Vec<f32>>,
    pub bias: Option<Vec<f32>>,
    pub eps: f32,
    pub stats: bool,
    /// Byte offset of every operand inside its own buffer (a multiple of 4).
    pub offset: u64,
}

impl Case {
    pub fn new(op: Op, rows: usize, dim: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let x = rng.data(rows * dim, 0.5, 2.0);
        let weight = Some(rng.data(dim, 1.0, 0.5));
        let bias = (op == Op::LayerNorm).then(|| rng.data(dim, 0.0, 0.5));
        Case {
            op,
            dim,
            x,
            weight,
            bias,
            eps: 1e-5,
            stats: true,
            offset: 0,
        }
    }

    pub fn rows(&self) -> usize {
        self.x.len() / self.dim
    }

    /// Row 1 (of 3) replaced by the k-th of [`EXTREME_ROWS`], with its eps.
    pub fn extreme_middle_row(&mut self, k: usize) {
        let dim = self.dim;
        let (extreme, eps) = extreme_row(k, dim, k as u64);
        self.x[dim..2 * dim].copy_from_slice(&extreme);
        self.eps = eps;
    }

    pub fn reference(&self) -> reference::Reference {
        match self.op {
            Op::LayerNorm => reference::layer_norm(
                &self.x,
                self.dim,
                self.weight.as_deref(),
                self.bias.as_deref(),
                self.eps,
            ),
            Op::RmsNorm => reference::rms_norm(&self.x, self.dim, self.weight.as_deref(), self.eps),
        }
    }
}

/// What a run wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Out {
    pub y: Vec<f32>,
    pub mean: Vec<f32>,
    pub rstd: Vec<f32>,
}

/// A buffer holding `data` at byte `offset`, poison before it and 64 poison bytes after.
fn staged(gpu: &Gpu, label: &str, data: Option<&[f32]>, len: usize, offset: u64) -> wgpu::Buffer {
    let lead = (offset / 4) as usize;
    let mut words = vec![POISON; lead + len + 16];
    if let Some(data) = data {
        for (w, v) in words[lead..].iter_mut().zip(data) {
            *w = v.to_bits();
        }
    }
    let buffer = gpu.storage(label, words.len());
    gpu.queue
        .write_buffer(&buffer, 0, bytemuck::cast_slice(&words));
    buffer
}

/// Reads `len` values at `offset`, asserting that every one was written and that nothing
/// around them was.
fn collect(words: &[f32], len: usize, offset: u64, what: &str) -> Vec<f32> {
    let lead = (offset / 4) as usize;
    for (i, w) in words.iter().enumerate() {
        let inside = i >= lead && i < lead + len;
        let poisoned = w.to_bits() == POISON;
        assert!(
            inside != poisoned,
            "{what}: word {i} {} (data at {lead}..{})",
            if inside {
                "was never written"
            } else {
                "outside the output was overwritten"
            },
            lead + len
        );
    }
    words[lead..lead + len].to_vec()
}

fn t(b: &wgpu::Buffer, off: u64, len: usize) -> TensorRef<'_> {
    TensorRef::new(b, off, (len * 4) as u64)
}

/// Runs `case` on `gpu` through the recording API, every operand at `case.offset` in its own
/// poisoned buffer, and reads everything back.
pub fn run(gpu: &Gpu, case: &Case) -> Out {
    let (rows, dim, off) = (case.rows(), case.dim, case.offset);
    let n = case.x.len();
    let xb = staged(gpu, "x", Some(&case.x), n, off);
    let yb = staged(gpu, "y", None, n, off);
    let wb = case
        .weight
        .as_ref()
        .map(|w| staged(gpu, "w", Some(w), dim, off));
    let bb = case
        .bias
        .as_ref()
        .map(|b| staged(gpu, "b", Some(b), dim, off));
    let mb = staged(gpu, "mean", None, rows, off);
    let rb = staged(gpu, "rstd", None, rows, off);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    match case.op {
        Op::LayerNorm => {
            let mut op = LayerNorm::new(rows, dim, t(&xb, off, n), t(&yb, off, n)).eps(case.eps);
            op.weight = wb.as_ref().map(|b| t(b, off, dim));
            op.bias = bb.as_ref().map(|b| t(b, off, dim));
            if case.stats {
                op = op.mean(t(&mb, off, rows)).rstd(t(&rb, off, rows));
            }
            gpu.norms.layer_norm(&mut encoder, &op).expect("layer_norm");
        }
        Op::RmsNorm => {
            let mut op = RmsNorm::new(rows, dim, t(&xb, off, n), t(&yb, off, n)).eps(case.eps);
            op.weight = wb.as_ref().map(|b| t(b, off, dim));
            if case.stats {
                op = op.rrms(t(&rb, off, rows));
            }
            gpu.norms.rms_norm(&mut encoder, &op).expect("rms_norm");
        }
    }
    gpu.queue.submit([encoder.finish()]);
    let lead = (off / 4) as usize;
    let read = pollster::block_on(gpu.read_async(&[
        (&yb, lead + n + 16),
        (&mb, lead + rows + 16),
        (&rb, lead + rows + 16),
    ]))
    .expect("readback");
    assert_eq!(
        UNCAPTURED.load(Ordering::SeqCst),
        0,
        "a wgpu error reached the handler"
    );
    let y = collect(&read[0], n, off, "y");
    let with_mean = case.stats && case.op == Op::LayerNorm;
    let mean = if with_mean {
        collect(&read[1], rows, off, "mean")
    } else {
        collect(&read[1], 0, off, "mean (not requested)")
    };
    let rstd = collect(&read[2], if case.stats { rows } else { 0 }, off, "rstd");
    Out { y, mean, rstd }
}

/// The README's bound on the saved mean: `1e-5·(|mean| + σ)`, σ from the reference's rstd
/// and eps. The mean of values that nearly cancel is only as exact as their f32 sum: a row
/// near 1 whose first element is 1e6 has a mean near 1000 off by 0.03.
fn mean_close(gpu: &[f32], mean: &[f64], rstd: &[f64], eps: f32, what: &str) {
    assert_eq!(gpu.len(), mean.len(), "{what}: mean: length");
    for (r, ((&got, &want), &rstd)) in gpu.iter().zip(mean).zip(rstd).enumerate() {
        let sigma = (1.0 / (rstd * rstd) - f64::from(eps)).max(0.0).sqrt();
        let allowed = 1e-5 * (want.abs() + sigma);
        let err = (f64::from(got) - want).abs();
        assert!(
            err <= allowed,
            "{what}: mean: row {r}: gpu {got} vs reference {want} (off by {err:e}, allowed {allowed:e})"
        );
    }
}

/// Asserts the f32 tolerance element by element, naming the first offender.
pub fn assert_close(gpu: &[f32], reference: &[f64], what: &str) {
    let (ratio, i) = reference::worst_error(gpu, reference);
    assert!(
        ratio <= 1.0,
        "{what}: element {i}: gpu {} vs reference {} ({ratio:.2}x the tolerance 1e-5 + 1e-5*|ref|)",
        gpu[i],
        reference[i]
    );
}

/// Runs `case` and checks y and the statistics against the reference.
pub fn check(gpu: &Gpu, case: &Case) -> Out {
    let out = run(gpu, case);
    let r = case.reference();
    let what = format!(
        "{:?} rows={} dim={} offset={} weight={} bias={}",
        case.op,
        case.rows(),
        case.dim,
        case.offset,
        case.weight.is_some(),
        case.bias.is_some()
    );
    assert_close(&out.y, &r.y, &format!("{what}: y"));
    if case.stats {
        if case.op == Op::LayerNorm {
            mean_close(&out.mean, &r.mean, &r.rstd, case.eps, &what);
        }
        let rel: Vec<f64> = out
            .rstd
            .iter()
            .zip(&r.rstd)
            .map(|(&g, &r)| (f64::from(g) - r).abs() / r.abs().max(1e-30))
            .collect();
        let worst = rel.iter().cloned().fold(0.0, f64::max);
        assert!(worst <= 1e-5, "{what}: rstd off by {worst:e} relative");
    }
    out
}

/// Many rows with small D, few rows with large D: every D of the grid at least once, rows past
/// 65535 (the grid's one-dimension limit), D = 1, D below and above the workgroup size and the
/// register cache, D not a multiple of 4, short rows side by side (the forward's up to 127
/// `V`s: D = 507).
pub const GRID: &[(usize, usize)] = &[
    (70000, 1),
    (70000, 5),
    (70000, 64),
    (257, 2),
    (257, 3),
    (257, 4),
    (257, 7),
    (257, 31),
    (257, 127),
    (257, 256),
    (257, 507),
    (257, 1000),
    (257, 1024),
    (257, 1025),
    (3, 4096),
    (3, 4097),
    (3, 12288),
    (1, 65536),
    (3, 65536),
];

pub fn shape_grid(gpu: &Gpu, op: Op, seed: u64) {
    for (i, &(rows, dim)) in GRID.iter().enumerate() {
        check(gpu, &Case::new(op, rows, dim, seed + i as u64));
    }
}

pub fn byte_offsets(op: Op) {
    // 4, 12: strided V's (not on 4 elements); 16, 48: vec4 but not binding-aligned; 260, 1024: past one binding
    // alignment.
    for offset in [4, 12, 16, 48, 260, 1024] {
        for dim in [7, 64, 1024] {
            let mut case = Case::new(op, 9, dim, offset + dim as u64);
            case.offset = offset;
            check(gpu(), &case);
        }
    }
}

pub fn deterministic(op: Op) {
    let bits = |o: &Out| {
        let mut b: Vec<u32> = o.y.iter().map(|v| v.to_bits()).collect();
        b.extend(o.rstd.iter().map(|v| v.to_bits()));
        b
    };
    // One row per workgroup, and short rows side by side.
    for (rows, dim) in [(300, 4096), (1000, 100)] {
        let case = Case::new(op, rows, dim, 13);
        let first = bits(&run(gpu(), &case));
        for _ in 0..3 {
            assert_eq!(
                bits(&run(gpu(), &case)),
                first,
                "D = {dim}: same input, different bits"
            );
        }
    }
}

/// Seeded property test: random shapes, offsets, optional operands, eps and reduction.
pub fn random_shapes(op: Op, seed: u64) {
    let mut rng = Rng::new(seed);
    for i in 0..40 {
        let dim = 1 + rng.below(if i % 4 == 0 { 20000 } else { 2100 }) as usize;
        let rows = 1 + rng.below((200_000 / dim as u64).clamp(1, 300)) as usize;
        let mut case = Case::new(op, rows, dim, seed + i);
        case.offset = 4 * rng.below(80);
        case.eps = [0.0, 1e-12, 1e-5, 0.1][rng.below(4) as usize];
        if rng.below(3) == 0 {
            case.weight = None;
        }
        if rng.below(3) == 0 {
            case.bias = None;
        }
        case.stats = rng.below(2) == 0;
        let gpu = if rng.below(2) == 0 { gpu() } else { tree_gpu() };
        check(gpu, &case);
    }
}

/// Data at 1e4 +- 1: `E[x^2] - mean^2` loses everything here, and a mean held in f32 is off
/// by up to 5e-4; both reductions must still meet the f32 tolerance.
pub fn offset_data(op: Op) {
    for (i, dim) in [31, 1024, 4096, 12288, 65536].into_iter().enumerate() {
        let mut case = Case::new(op, 3, dim, 40 + i as u64);
        case.x = Rng::new(i as u64).data(3 * dim, 1e4, 1.0);
        check(gpu(), &case);
        check(tree_gpu(), &case);
    }
}

/// (center, spread, eps) of the rows whose squares leave f32's range, shared by the forward
/// and backward tests.
/// A row of `dim` values from `seed` drawn as the k-th of [`EXTREME_ROWS`], and its eps. What
/// Box-Muller would push past f32 at 3e37 +- 1e37 is saturated.
pub fn extreme_row(k: usize, dim: usize, seed: u64) -> (Vec<f32>, f32) {
    let (center, spread, eps) = EXTREME_ROWS[k];
    let row = Rng::new(seed).data(dim, center, spread);
    (row.iter().map(|v| v.clamp(-3e38, 3e38)).collect(), eps)
}

pub const EXTREME_ROWS: [(f64, f64, f32); 6] = [
    (0.3e20, 1e20, 1e-5),
    (-0.3e30, 1e30, 1e-5),
    (1e19, 1e19, 1e-5),
    (3e37, 1e37, 1e-5),
    (0.3e-25, 1e-25, 0.0),
    (-0.3e-30, 1e-30, 0.0),
];

/// Rows whose squares leave f32's range, each between two ordinary rows: |x| ~ 1e20 and
/// 1e30 (squares overflow), a spread of 1e19 at an offset of 1e19, values near 3e37 (sums of
/// x overflow too), and |x| ~ 1e-25 and 1e-30 with eps = 0 (squares underflow); D = 7, 4096
/// (the row in registers) and 65536 (streamed), both reductions. y is held to the f32
/// tolerance, rstd to 1e-5 relative, and the mean to 1e-5 of the row's own spread.
pub fn extreme_magnitudes(op: Op) {
    for (k, &(center, spread, _)) in EXTREME_ROWS.iter().enumerate() {
        // 7, 256, 507: rows side by side (forward: 1, 8 and 16 invocations a row).
        for dim in [7, 256, 507, 4096, 65536] {
            let mut case = Case::new(op, 3, dim, 60 + k as u64);
            case.extreme_middle_row(k);
            let r = case.reference();
            for gpu in [gpu(), tree_gpu()] {
                let out = run(gpu, &case);
                let what = format!("{op:?} center {center:e} spread {spread:e} dim {dim}");
                assert_close(&out.y, &r.y, &format!("{what}: y"));
                for row in 0..3 {
                    let rstd = r.rstd[row];
                    let g = f64::from(out.rstd[row]);
                    assert!(
                        (g - rstd).abs() <= 1e-5 * rstd,
                        "{what}: row {row}: rstd {g:e} vs {rstd:e}"
                    );
                    if op == Op::LayerNorm {
                        // The mean of values +-1e19 that nearly cancel is only as exact as
                        // f32 sums of them: relative to the spread, not to the mean.
                        let (g, m) = (f64::from(out.mean[row]), r.mean[row]);
                        let tolerance = 1e-5 / rstd + 1e-5 * m.abs();
                        assert!(
                            (g - m).abs() <= tolerance,
                            "{what}: row {row}: mean {g:e} vs {m:e}"
                        );
                    }
                }
            }
        }
    }
}

/// Rows of magnitude 1e-20 to 1e15 (squares stay within f32).
pub fn magnitudes(op: Op) {
    for (i, scale) in [1e-20, 1e-10, 1e10, 1e15].into_iter().enumerate() {
        for dim in [5, 1024, 65536] {
            let mut case = Case::new(op, 2, dim, 50 + i as u64);
            case.x = Rng::new(i as u64).data(2 * dim, 0.3 * scale, scale);
            check(gpu(), &case);
        }
    }
}

/// The copy of `rows x dim` f32 at byte `offset`: exactly the input's bits, nothing written
/// outside the output.
pub fn check_copy(gpu: &wgpu_norm::Gpu, rows: usize, dim: usize, offset: u64) {
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

/// Whether the plan of `case`'s op splits its rows over several workgroups.
pub fn splits(gpu: &Gpu, case: &Case) -> bool {
    let (rows, dim, n) = (case.rows(), case.dim, case.x.len());
    let (x, y) = (gpu.storage("x", n), gpu.storage("y", n));
    let (w, b) = (gpu.storage("w", dim), gpu.storage("b", dim));
    let stats = gpu.storage("stats", rows);
    let plan = match case.op {
        Op::LayerNorm => {
            let mut op = LayerNorm::new(rows, dim, t(&x, 0, n), t(&y, 0, n)).weight(t(&w, 0, dim));
            op = op.bias(t(&b, 0, dim));
            if case.stats {
                op = op.rstd(t(&stats, 0, rows));
            }
            gpu.norms.plan(&op)
        }
        Op::RmsNorm => {
            let mut op = RmsNorm::new(rows, dim, t(&x, 0, n), t(&y, 0, n)).weight(t(&w, 0, dim));
            if case.stats {
                op = op.rrms(t(&stats, 0, rows));
            }
            gpu.norms.plan(&op)
        }
    };
    let plan = plan.expect("plan");
    plan.steps.iter().any(|s| s.variant.kernel.is_split())
}

/// Few long rows with no per-row statistics asked for (a decode step), each split over
/// several workgroups: one part's minimum length to 100000, vec4 and scalar, byte offsets,
/// with and without the weight, both reductions; data at 1e4 +- 1; rows whose squares leave
/// f32's range, retried part by part; the same bits every run; and never split where the
/// statistics are saved, or where split_groups is 0.
pub fn few_long_rows(op: Op) {
    let shapes = [
        (1, 2048),
        (1, 4097),
        (2, 8192),
        (3, 12288),
        (8, 4096),
        (64, 4100),
        (1, 65536),
        (5, 100_000),
    ];
    for (i, &(rows, dim)) in shapes.iter().enumerate() {
        let mut case = Case::new(op, rows, dim, 90 + i as u64);
        case.stats = false;
        case.offset = [0, 4, 16][i % 3];
        if i % 2 == 1 {
            case.weight = None;
        }
        assert!(splits(gpu(), &case), "{op:?} {rows}x{dim} is not split");
        check(gpu(), &case);
        check(tree_gpu(), &case);
        case.x = Rng::new(i as u64).data(rows * dim, 1e4, 1.0);
        check(gpu(), &case);
        let mut saved = case.clone();
        saved.stats = true;
        assert!(
            !splits(gpu(), &saved),
            "{op:?} {rows}x{dim}: split with statistics"
        );
    }
    for (k, &(center, spread, _)) in EXTREME_ROWS.iter().enumerate() {
        for dim in [4096, 65536] {
            let mut case = Case::new(op, 3, dim, 70 + k as u64);
            case.stats = false;
            case.extreme_middle_row(k);
            let r = case.reference();
            for gpu in [gpu(), tree_gpu()] {
                let out = run(gpu, &case);
                let what = format!("{op:?} split, center {center:e} spread {spread:e} dim {dim}");
                assert_close(&out.y, &r.y, &format!("{what}: y"));
            }
        }
    }
    let case = Case {
        stats: false,
        ..Case::new(op, 4, 8192, 99)
    };
    let first = run(gpu(), &case).y;
    for _ in 0..3 {
        let again = run(gpu(), &case).y;
        assert!(
            first
                .iter()
                .zip(&again)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{op:?}: a split row gave other bits"
        );
    }
    let never = open(
        None,
        NormsOptions {
            tuning: wgpu_norm::Tuning {
                split_groups: 0,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    assert!(!splits(&never, &case), "split with split_groups = 0");
    check(&never, &case);
}
