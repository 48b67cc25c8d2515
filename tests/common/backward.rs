//! Backward harness: seeded x and dy, poisoned outputs at byte offsets, GPU against the f64
//! reference; dweight/dbias judged relative to the sum of the magnitudes of their terms.

use super::{Op, POISON, Rng, UNCAPTURED};
use std::sync::atomic::Ordering;
use wgpu_norm::{
    Gpu, LayerNorm, LayerNormBackward, RmsNorm, RmsNormBackward, TensorRef, reference,
};

#[derive(Clone, Debug)]
pub struct BwdCase {
    pub op: Op,
    pub dim: usize,
    pub x: Vec<f32>,
    pub dy: Vec<f32>,
    pub weight: Option<Vec<f32>>,
    pub eps: f32,
    /// Run the forward first and hand its statistics to the backward.
    pub saved: bool,
    pub grad_params: bool,
    pub offset: u64,
    /// Existing contents of dx and dweight/dbias to accumulate into.
    pub accumulate: Option<(Vec<f32>, Vec<f32>)>,
    /// RMSNorm only: the forward's Gemma offset and pRMSNorm p.
    pub gemma_offset: bool,
    pub partial: Option<f32>,
    /// Hold dx to 1e-5 of the magnitudes of its terms, without the 1e-5 absolute floor (for
    /// rows whose dx is far from 1 in size).
    pub relative: bool,
    /// dx written over dy (the kernels' `shared` variants, which retry a row at once).
    pub in_place: bool,
}

impl BwdCase {
    pub fn new(op: Op, rows: usize, dim: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        BwdCase {
            op,
            dim,
            x: rng.data(rows * dim, 0.5, 2.0),
            dy: rng.data(rows * dim, 0.0, 1.0),
            weight: Some(rng.data(dim, 1.0, 0.5)),
            eps: 1e-5,
            saved: false,
            grad_params: true,
            offset: 0,
            accumulate: None,
            gemma_offset: false,
            partial: None,
            relative: false,
            in_place: false,
        }
    }

    pub fn rows(&self) -> usize {
        self.x.len() / self.dim
    }

    pub fn reference(&self) -> reference::Gradients {
        let w = self.weight.as_deref();
        match self.op {
            Op::LayerNorm => {
                reference::layer_norm_backward(&self.x, &self.dy, self.dim, w, self.eps)
            }
            Op::RmsNorm => reference::rms_norm_backward_with(
                &self.x,
                &self.dy,
                self.dim,
                &reference::RmsNormSpec {
                    weight: w,
                    eps: self.eps,
                    gemma_offset: self.gemma_offset,
                    stat_len: self
                        .partial
                        .map(|p| ((f64::from(p) * self.dim as f64).ceil() as usize).max(1)),
                    ..Default::default()
                },
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct BwdOut {
    pub dx: Vec<f32>,
    pub dweight: Vec<f32>,
    pub dbias: Vec<f32>,
}

fn buffer(gpu: &Gpu, data: &[f32], lead: usize) -> wgpu::Buffer {
    let mut words = vec![f32::from_bits(POISON); lead];
    words.extend_from_slice(data);
    words.extend(std::iter::repeat_n(f32::from_bits(POISON), 16));
    gpu.upload("bwd", &words)
}

fn poisoned(gpu: &Gpu, len: usize, lead: usize) -> wgpu::Buffer {
    buffer(gpu, &vec![f32::from_bits(POISON); len], lead)
}

fn t(b: &wgpu::Buffer, off: u64, len: usize) -> TensorRef<'_> {
    TensorRef::new(b, off, (len * 4) as u64)
}

/// Reads back `len` values at `lead`, checking that all were written and nothing around them.
fn take(words: &[f32], len: usize, lead: usize, what: &str) -> Vec<f32> {
    for (i, w) in words.iter().enumerate() {
        let inside = i >= lead && i < lead + len;
        assert!(
            inside != (w.to_bits() == POISON),
            "{what}: word {i} {}",
            if inside {
                "was never written"
            } else {
                "outside the output was overwritten"
            }
        );
    }
    words[lead..lead + len].to_vec()
}

pub fn run_backward(gpu: &Gpu, c: &BwdCase) -> BwdOut {
    let (rows, dim, off) = (c.rows(), c.dim, c.offset);
    let lead = (off / 4) as usize;
    let n = c.x.len();
    let xb = buffer(gpu, &c.x, lead);
    let dyb = buffer(gpu, &c.dy, lead);
    let wb = c.weight.as_ref().map(|w| buffer(gpu, w, lead));
    let (dx_own, dwb, dbb) = match &c.accumulate {
        Some((dx, dp)) => (
            buffer(gpu, dx, lead),
            buffer(gpu, dp, lead),
            buffer(gpu, dp, lead),
        ),
        None => (
            poisoned(gpu, n, lead),
            poisoned(gpu, dim, lead),
            poisoned(gpu, dim, lead),
        ),
    };
    assert!(
        !(c.in_place && c.accumulate.is_some()),
        "dx over dy starts as dy"
    );
    let dxb = if c.in_place { &dyb } else { &dx_own };
    let mb = poisoned(gpu, rows, lead);
    let rb = poisoned(gpu, rows, lead);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    let layer = c.op == Op::LayerNorm;
    if c.saved {
        // The forward's statistics, written into mb/rb; y goes to a scratch buffer.
        let yb = poisoned(gpu, n, lead);
        if layer {
            let op = LayerNorm::new(rows, dim, t(&xb, off, n), t(&yb, off, n))
                .eps(c.eps)
                .mean(t(&mb, off, rows))
                .rstd(t(&rb, off, rows));
            gpu.norms.layer_norm(&mut encoder, &op).unwrap();
        } else {
            let mut op = RmsNorm::new(rows, dim, t(&xb, off, n), t(&yb, off, n))
                .eps(c.eps)
                .rrms(t(&rb, off, rows));
            if let Some(p) = c.partial {
                op = op.partial(p);
            }
            gpu.norms.rms_norm(&mut encoder, &op).unwrap();
        }
    }
    let acc = c.accumulate.is_some();
    if layer {
        let mut op =
            LayerNormBackward::new(rows, dim, t(&xb, off, n), t(&dyb, off, n), t(dxb, off, n))
                .eps(c.eps)
                .accumulate_grad_input(acc)
                .accumulate_grad_params(acc);
        op.weight = wb.as_ref().map(|w| t(w, off, dim));
        if c.saved {
            op = op.saved(t(&mb, off, rows), t(&rb, off, rows));
        }
        if c.grad_params {
            op = op
                .grad_weight(t(&dwb, off, dim))
                .grad_bias(t(&dbb, off, dim));
        }
        gpu.norms
            .layer_norm_backward(&mut encoder, &op)
            .expect("layer_norm_backward");
    } else {
        let mut op =
            RmsNormBackward::new(rows, dim, t(&xb, off, n), t(&dyb, off, n), t(dxb, off, n))
                .eps(c.eps)
                .accumulate_grad_input(acc)
                .accumulate_grad_params(acc)
                .gemma_offset(c.gemma_offset);
        op.partial = c.partial;
        op.weight = wb.as_ref().map(|w| t(w, off, dim));
        if c.saved {
            op = op.saved(t(&rb, off, rows));
        }
        if c.grad_params {
            op = op.grad_weight(t(&dwb, off, dim));
        }
        gpu.norms
            .rms_norm_backward(&mut encoder, &op)
            .expect("rms_norm_backward");
    }
    gpu.queue.submit([encoder.finish()]);
    let read = pollster::block_on(gpu.read_async(&[
        (dxb, lead + n + 16),
        (&dwb, lead + dim + 16),
        (&dbb, lead + dim + 16),
    ]))
    .unwrap();
    assert_eq!(
        UNCAPTURED.load(Ordering::SeqCst),
        0,
        "a wgpu error reached the handler"
    );
    let params_written = c.grad_params || acc;
    let dx = take(&read[0], n, lead, "dx");
    let dweight = take(
        &read[1],
        if params_written { dim } else { 0 },
        lead,
        "dweight",
    );
    let with_bias = params_written && (layer || acc);
    let dbias = take(&read[2], if with_bias { dim } else { 0 }, lead, "dbias");
    BwdOut { dx, dweight, dbias }
}

/// `|gpu - ref| <= 1e-5 + 1e-5 * scale` for results whose terms have magnitudes adding to
/// `scale` (gradients are sums and differences: their rounding error grows with their terms).
pub fn assert_sum_close(gpu: &[f32], reference: &[f64], scale: &[f64], what: &str) {
    for (i, ((&g, &r), &s)) in gpu.iter().zip(reference).zip(scale).enumerate() {
        let err = (f64::from(g) - r).abs();
        assert!(
            err <= 1e-5 + 1e-5 * s,
            "{what}: element {i}: gpu {g} vs reference {r} (error {err:e}, sum of |terms| {s:e})"
        );
    }
}

/// Runs `c` and checks every output against the reference.
pub fn check_backward(gpu: &Gpu, c: &BwdCase) -> BwdOut {
    let out = run_backward(gpu, c);
    let r = c.reference();
    let what = format!(
        "{:?} backward rows={} dim={} offset={} weight={} saved={}",
        c.op,
        c.rows(),
        c.dim,
        c.offset,
        c.weight.is_some(),
        c.saved
    );
    let (dx_ref, dw_ref, db_ref) = match &c.accumulate {
        Some((dx, dp)) => (
            r.dx.iter()
                .zip(dx)
                .map(|(a, &b)| a + f64::from(b))
                .collect(),
            r.dweight
                .iter()
                .zip(dp)
                .map(|(a, &b)| a + f64::from(b))
                .collect(),
            r.dbias
                .iter()
                .zip(dp)
                .map(|(a, &b)| a + f64::from(b))
                .collect::<Vec<f64>>(),
        ),
        None => (r.dx.clone(), r.dweight.clone(), r.dbias.clone()),
    };
    let dx_scale: Vec<f64> = match &c.accumulate {
        Some((dx, _)) => r
            .dx_scale
            .iter()
            .zip(dx)
            .map(|(s, &a)| s + f64::from(a).abs())
            .collect(),
        None => r.dx_scale.clone(),
    };
    if c.relative {
        for (i, ((&g, &r), &s)) in out.dx.iter().zip(&dx_ref).zip(&dx_scale).enumerate() {
            let err = (f64::from(g) - r).abs();
            assert!(
                err <= 1e-5 * s + f64::from(f32::MIN_POSITIVE),
                "{what}: dx[{i}]: gpu {g:e} vs reference {r:e} (sum of |terms| {s:e})"
            );
        }
    } else {
        assert_sum_close(&out.dx, &dx_ref, &dx_scale, &format!("{what}: dx"));
    }
    if c.grad_params {
        assert_sum_close(
            &out.dweight,
            &dw_ref,
            &r.dweight_scale,
            &format!("{what}: dweight"),
        );
        if c.op == Op::LayerNorm {
            assert_sum_close(
                &out.dbias,
                &db_ref,
                &r.dbias_scale,
                &format!("{what}: dbias"),
            );
        }
    }
    out
}

/// The forward grid, for the backward.
pub fn backward_grid(gpu: &Gpu, op: Op, seed: u64) {
    for (i, &(rows, dim)) in super::GRID.iter().enumerate() {
        let mut c = BwdCase::new(op, rows, dim, seed + i as u64);
        c.saved = i % 2 == 0;
        check_backward(gpu, &c);
    }
}

/// d f / d v[i] by central differences, with the step as f32 really made it.
pub fn central(v: &[f32], i: usize, f: impl Fn(&[f32]) -> f64) -> f64 {
    let h = 1e-3 * v[i].abs().max(1.0);
    let (mut up, mut down) = (v.to_vec(), v.to_vec());
    up[i] += h;
    down[i] -= h;
    (f(&up) - f(&down)) / f64::from(up[i] - down[i])
}

/// With and without weight, saved statistics and parameter gradients, at several offsets.
pub fn options_grid(op: Op) {
    let cases = [
        (false, false, true),
        (true, true, false),
        (false, true, true),
        (true, false, false),
    ];
    for (k, (weight, saved, grads)) in cases.into_iter().enumerate() {
        for (rows, dim) in [(9, 3), (40, 256), (5, 4097), (2, 20000)] {
            let mut c = BwdCase::new(op, rows, dim, 700 + k as u64);
            if !weight {
                c.weight = None;
            }
            c.saved = saved;
            c.grad_params = grads;
            c.offset = [0, 4, 16, 260][k];
            check_backward(super::gpu(), &c);
        }
    }
}

pub fn accumulates(op: Op) {
    for dim in [7, 1024, 20000] {
        let mut c = BwdCase::new(op, 6, dim, 800);
        let mut rng = Rng::new(801);
        c.accumulate = Some((rng.data(6 * dim, 0.0, 1.0), rng.data(dim, 0.0, 1.0)));
        check_backward(super::gpu(), &c);
    }
}

/// The same inputs four times give the same bits: one row a workgroup, and short rows side by
/// side (whose slots' column sums are added in the workgroup).
pub fn deterministic(op: Op) {
    for (rows, dim) in [(3000, 1024), (5000, 100)] {
        let mut c = BwdCase::new(op, rows, dim, 900);
        c.saved = true;
        let first = run_backward(super::gpu(), &c);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for _ in 0..3 {
            let again = run_backward(super::gpu(), &c);
            assert_eq!(bits(&again.dx), bits(&first.dx));
            assert_eq!(bits(&again.dweight), bits(&first.dweight));
            assert_eq!(bits(&again.dbias), bits(&first.dbias));
        }
    }
}

/// Short rows side by side with several rows out of f32's range in one workgroup: in five of
/// its 64 slots (D = 7, one step), and at D = 33 (16 slots) in three slots of its first step
/// and one of them again in its second (past 16384 rows a workgroup takes two steps, its
/// partial rows capped at 1024). The slots share the workgroup's partial row, and take their
/// retries in turns after its other rows' sums are stored (`partials_first`).
pub fn side_by_side_retries(op: Op) {
    for (dim, rows) in [(7, 40), (33, 16 * 1024 + 48)] {
        for saved in [true, false] {
            let mut c = BwdCase::new(op, rows, dim, 1500 + dim as u64);
            let (extreme, eps) = super::extreme_row(0, dim, 1501);
            for r in [0, 1, 5, 17, 33] {
                c.x[r * dim..(r + 1) * dim].copy_from_slice(&extreme);
            }
            c.eps = eps;
            c.saved = saved;
            c.relative = true;
            for gpu in [super::gpu(), super::tree_gpu()] {
                check_backward(gpu, &c);
            }
        }
    }
}

/// Rows too long to stay in registers whose partial sums do (`Variant::streamed`: D = 12288 on
/// 1024 invocations), several rows a workgroup, saved statistics and recomputed, with one
/// row whose squares leave f32 (retried, its terms added to the partial row in memory after
/// the others' are stored).
pub fn streamed(op: Op) {
    let (rows, dim) = (300, 12288);
    for saved in [true, false] {
        let mut c = BwdCase::new(op, rows, dim, 1400 + u64::from(saved));
        let (extreme, eps) = super::extreme_row(0, dim, 1401);
        c.x[150 * dim..151 * dim].copy_from_slice(&extreme);
        c.eps = eps;
        c.saved = saved;
        // dx of the extreme row is ~1e-20 and held loosely; its terms of dweight are O(1).
        check_backward(super::gpu(), &c);
    }
}

/// A row out of f32's range first in its workgroup, dx written over dy (retried at once, in
/// `shared` variants), rows too long for registers even for the partial sums alone
/// (D = 40000): the retry starts the workgroup's partial row, whatever the crate's scratch
/// buffer held from the op before (an ordinary one at the same shape, run first).
pub fn in_place_retry_of_a_first_row(op: Op) {
    let (rows, dim) = (3, 40000);
    check_backward(super::gpu(), &BwdCase::new(op, rows, dim, 1500));
    for saved in [true, false] {
        let mut c = BwdCase::new(op, rows, dim, 1501);
        // Near 3e37: the squares overflow, and LayerNorm's sums of x too (its saved path
        // retries only then).
        let (extreme, eps) = super::extreme_row(3, dim, 1502);
        c.x[..dim].copy_from_slice(&extreme);
        c.eps = eps;
        c.saved = saved;
        c.in_place = true;
        check_backward(super::gpu(), &c);
    }
}

/// Rows too long for registers even for the partial sums alone (D = 40000), several to a
/// workgroup (a 1 MiB binding: six rows a dispatch, few partial rows), so that each adds its
/// terms to the workgroup's partial row in memory, with rows out of f32's range third in a
/// workgroup and first in one, retried after the others or, with dx written over dy, at once.
/// (The other tests' long rows have a workgroup each.)
pub fn partial_rows_in_memory(op: Op) {
    let gpu = super::small_binding_gpu(1 << 20);
    let (rows, dim) = (30, 40000);
    for (i, (saved, in_place)) in [(true, false), (false, false), (true, true), (false, true)]
        .into_iter()
        .enumerate()
    {
        let seed = 1600 + 10 * i as u64;
        let mut c = BwdCase::new(op, rows, dim, seed);
        for (k, row) in [2, 6].into_iter().enumerate() {
            let (extreme, eps) = super::extreme_row(3, dim, seed + 1 + k as u64);
            c.x[row * dim..(row + 1) * dim].copy_from_slice(&extreme);
            c.eps = eps;
        }
        c.saved = saved;
        c.in_place = in_place;
        check_backward(gpu, &c);
    }
}

/// Work over many small bindings (several chunks, each reduced on its own).
pub fn split(op: Op) {
    let gpu = super::small_binding_gpu(256 << 10);
    for (i, (rows, dim, offset)) in [(300, 1000, 0), (5000, 28, 4), (13, 16384, 16)]
        .into_iter()
        .enumerate()
    {
        let mut c = BwdCase::new(op, rows, dim, 950 + i as u64);
        c.offset = offset;
        c.saved = i == 1;
        check_backward(gpu, &c);
    }
}

/// Data at 1e4 +- 1 with the statistics recomputed (pivoted) by the kernel.
pub fn offset_data(op: Op) {
    for (i, dim) in [31, 1024, 12288].into_iter().enumerate() {
        let mut c = BwdCase::new(op, 3, dim, 1100 + i as u64);
        c.x = Rng::new(i as u64).data(3 * dim, 1e4, 1.0);
        check_backward(super::gpu(), &c);
    }
}

/// Data offset from zero by 1e3, 1e4 and 1e6 (spread 1), with statistics saved by the forward
/// pass and recomputed, every class of D. The saved f32 mean is off by up to half an ulp of
/// the offset; the backward derives the exact mean from the row instead, so the bound holds
/// for saved statistics as it does for recomputed ones.
pub fn saved_statistics_far_from_zero(op: Op) {
    for (k, offset) in [1e3, 1e4, 1e6].into_iter().enumerate() {
        for dim in [1, 2, 7, 64, 1024, 4097, 12288, 65536] {
            for saved in [true, false] {
                let mut c = BwdCase::new(op, 3, dim, 1200 + k as u64 + dim as u64);
                c.x = Rng::new(k as u64 + dim as u64).data(3 * dim, offset, 1.0);
                c.saved = saved;
                check_backward(super::gpu(), &c);
                if dim == 4097 {
                    check_backward(super::tree_gpu(), &c);
                }
            }
        }
    }
}

/// The forward's extreme rows (`super::extreme_magnitudes`) in the backward, saved and
/// recomputed statistics, each between two ordinary rows; dx held to 1e-5 of its terms.
pub fn extreme_magnitudes(op: Op) {
    for k in 0..super::EXTREME_ROWS.len() {
        for dim in [7, 4096, 65536] {
            for saved in [true, false] {
                let mut c = BwdCase::new(op, 3, dim, 1300 + k as u64);
                let (extreme, eps) = super::extreme_row(k, dim, k as u64);
                c.x[dim..2 * dim].copy_from_slice(&extreme);
                c.eps = eps;
                c.saved = saved;
                c.relative = true;
                for gpu in [super::gpu(), super::tree_gpu()] {
                    check_backward(gpu, &c);
                }
            }
        }
    }
}
