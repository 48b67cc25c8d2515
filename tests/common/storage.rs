//! Harness for every storage type and option of the forward norms: tensors in f32, f16 or
//! bf16 at any element offset (odd ones too), outputs poisoned element by element, the
//! GPU compared with `reference::*_with` under the tolerance of the storage type.

use super::{Op, Rng, UNCAPTURED};
use std::sync::atomic::Ordering;
use wgpu_norm::reference::{self, LayerNormSpec, RmsNormSpec};
use wgpu_norm::{DType, EpsPlacement, Gpu, LayerNorm, RmsNorm, RoundingOrder, TensorRef};

/// One run: the values are f32 but representable in their storage type.
#[derive(Clone, Debug)]
pub struct AnyCase {
    pub op: Op,
    pub dim: usize,
    pub dtype: DType,
    pub param_dtype: DType,
    pub x: Vec<f32>,
    pub weight: Option<Vec<f32>>,
    pub bias: Option<Vec<f32>>,
    pub residual: Option<Vec<f32>>,
    pub residual_out: bool,
    pub eps: f32,
    /// Element offset of every tensor in its buffer (odd offsets straddle 32-bit words).
    pub offset: usize,
    /// The outputs' (y, residual_out) element offset where it differs from `offset`: rows
    /// of x and y then start on different halves of their words.
    pub out_offset: Option<usize>,
    pub eps_added_to_std: bool,
    pub gemma_offset: bool,
    pub llama_rounding: bool,
    pub partial: Option<f32>,
    /// Save the per-row statistic (rstd or rrms); without it, few long rows are split over
    /// several workgroups.
    pub stats: bool,
    /// What residual_out holds before the run (None: poison, which every element must lose).
    pub s_fill: Option<f32>,
}

/// `values` rounded to `dtype`.
pub fn quantize(dtype: DType, values: Vec<f32>) -> Vec<f32> {
    values
        .into_iter()
        .map(|v| dtype.round(f64::from(v)) as f32)
        .collect()
}

impl AnyCase {
    pub fn new(op: Op, dtype: DType, rows: usize, dim: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let x = quantize(dtype, rng.data(rows * dim, 0.5, 2.0));
        let weight = Some(quantize(dtype, rng.data(dim, 1.0, 0.5)));
        let bias = (op == Op::LayerNorm).then(|| quantize(dtype, rng.data(dim, 0.0, 0.5)));
        AnyCase {
            op,
            dim,
            dtype,
            param_dtype: dtype,
            x,
            weight,
            bias,
            residual: None,
            residual_out: false,
            eps: 1e-5,
            offset: 0,
            out_offset: None,
            eps_added_to_std: false,
            gemma_offset: false,
            llama_rounding: false,
            partial: None,
            stats: true,
            s_fill: None,
        }
    }

    /// f32 weight and bias with 16-bit activations.
    pub fn mixed(mut self) -> Self {
        self.param_dtype = DType::F32;
        let mut rng = Rng::new(self.dim as u64 + 77);
        self.weight = self.weight.map(|w| rng.data(w.len(), 1.0, 0.5));
        self.bias = self.bias.map(|b| rng.data(b.len(), 0.0, 0.5));
        self
    }

    pub fn with_residual(mut self, write_back: bool) -> Self {
        let r = Rng::new(self.x.len() as u64).data(self.x.len(), -0.25, 1.0);
        self.residual = Some(quantize(self.dtype, r));
        self.residual_out = write_back;
        self
    }

    pub fn rows(&self) -> usize {
        self.x.len() / self.dim
    }

    pub fn reference(&self) -> reference::Reference {
        match self.op {
            Op::LayerNorm => reference::layer_norm_with(
                &self.x,
                self.dim,
                &LayerNormSpec {
                    weight: self.weight.as_deref(),
                    bias: self.bias.as_deref(),
                    eps: self.eps,
                    eps_added_to_std: self.eps_added_to_std,
                    residual: self.residual.as_deref(),
                    dtype: self.dtype,
                },
            ),
            Op::RmsNorm => reference::rms_norm_with(
                &self.x,
                self.dim,
                &RmsNormSpec {
                    weight: self.weight.as_deref(),
                    eps: self.eps,
                    residual: self.residual.as_deref(),
                    dtype: self.dtype,
                    gemma_offset: self.gemma_offset,
                    llama_rounding: self.llama_rounding,
                    stat_len: self
                        .partial
                        .map(|p| ((f64::from(p) * self.dim as f64).ceil() as usize).max(1)),
                },
            ),
        }
    }
}

/// Poison for one element of each type: NaNs that no arithmetic produces.
fn poison(dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => 0x7FBA_DBADu32.to_le_bytes().to_vec(),
        DType::F16 => 0x7DADu16.to_le_bytes().to_vec(),
        DType::Bf16 => 0x7F8Du16.to_le_bytes().to_vec(),
    }
}

/// A buffer holding `data` (or poison) as `dtype` after `offset` poison elements, with
/// poison after it up to a whole word plus 16 bytes.
pub fn stage(
    gpu: &Gpu,
    dtype: DType,
    data: Option<&[f32]>,
    len: usize,
    offset: usize,
) -> wgpu::Buffer {
    let p = poison(dtype);
    let mut bytes: Vec<u8> = p.repeat(offset);
    match data {
        Some(d) => bytes.extend(dtype.encode(d)),
        None => bytes.extend(p.repeat(len)),
    }
    while !bytes.len().is_multiple_of(4)
        || bytes.len() < (offset + len) * dtype.size() as usize + 16
    {
        bytes.extend(&p);
    }
    let words: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    gpu.upload("storage case", &words)
}

/// The `len` elements at `offset`, checking that each was written and nothing around them.
pub fn unstage(words: &[f32], dtype: DType, len: usize, offset: usize, what: &str) -> Vec<f32> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let p = poison(dtype);
    let size = dtype.size() as usize;
    for (e, chunk) in bytes.chunks_exact(size).enumerate() {
        let inside = e >= offset && e < offset + len;
        assert!(
            inside != (chunk == p.as_slice()),
            "{what}: element {e} {} (data at {offset}..{})",
            if inside {
                "was never written"
            } else {
                "outside the output was overwritten"
            },
            offset + len
        );
    }
    dtype.decode(&bytes[offset * size..(offset + len) * size])
}

#[derive(Clone, Debug)]
pub struct AnyOut {
    pub y: Vec<f32>,
    pub s: Vec<f32>,
    pub rstd: Vec<f32>,
    /// The plan split the rows over several workgroups.
    pub split: bool,
    /// The plan's rows (or parts) ran past the register cache (`Variant::tail`).
    pub tail: bool,
}

pub fn at(b: &wgpu::Buffer, off: usize, d: DType, len: usize) -> TensorRef<'_> {
    TensorRef::new(b, (off as u64) * d.size(), (len as u64) * d.size())
}

pub fn run_any(gpu: &Gpu, c: &AnyCase) -> AnyOut {
    let (rows, dim, off) = (c.rows(), c.dim, c.offset);
    let out_off = c.out_offset.unwrap_or(off);
    let n = c.x.len();
    let (act, par) = (c.dtype, c.param_dtype);
    let xb = stage(gpu, act, Some(&c.x), n, off);
    let yb = stage(gpu, act, None, n, out_off);
    let wb = c
        .weight
        .as_ref()
        .map(|w| stage(gpu, par, Some(w), dim, off));
    let bb = c.bias.as_ref().map(|b| stage(gpu, par, Some(b), dim, off));
    let rb = c
        .residual
        .as_ref()
        .map(|r| stage(gpu, act, Some(r), n, off));
    let fill = c.s_fill.map(|v| vec![v; n]);
    let sb = stage(gpu, act, fill.as_deref(), n, out_off);
    let statb = stage(gpu, DType::F32, None, rows, off);
    let stat = || at(&statb, off, DType::F32, rows);
    let shape = |plan: wgpu_norm::Result<wgpu_norm::Plan>| {
        let plan = plan.expect("plan");
        let any =
            |f: fn(&wgpu_norm::shaders::Variant) -> bool| plan.steps.iter().any(|s| f(&s.variant));
        (any(|v| v.kernel.is_split()), any(|v| v.tail()))
    };
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    let (was_split, tail);
    match c.op {
        Op::LayerNorm => {
            let mut op = LayerNorm::new(rows, dim, at(&xb, off, act, n), at(&yb, out_off, act, n))
                .dtype(act)
                .param_dtype(par)
                .eps(c.eps);
            if c.stats {
                op = op.rstd(stat());
            }
            op.weight = wb.as_ref().map(|b| at(b, off, par, dim));
            op.bias = bb.as_ref().map(|b| at(b, off, par, dim));
            op.residual = rb.as_ref().map(|b| at(b, off, act, n));
            if c.residual_out {
                op = op.residual_out(at(&sb, out_off, act, n));
            }
            if c.eps_added_to_std {
                op = op.eps_placement(EpsPlacement::AddedToStd);
            }
            (was_split, tail) = shape(gpu.norms.plan(&op));
            gpu.norms.layer_norm(&mut encoder, &op).expect("layer_norm");
        }
        Op::RmsNorm => {
            let mut op = RmsNorm::new(rows, dim, at(&xb, off, act, n), at(&yb, out_off, act, n))
                .dtype(act)
                .param_dtype(par)
                .eps(c.eps)
                .gemma_offset(c.gemma_offset);
            if c.stats {
                op = op.rrms(stat());
            }
            op.weight = wb.as_ref().map(|b| at(b, off, par, dim));
            op.residual = rb.as_ref().map(|b| at(b, off, act, n));
            if c.residual_out {
                op = op.residual_out(at(&sb, out_off, act, n));
            }
            if c.llama_rounding {
                op = op.rounding(RoundingOrder::Llama);
            }
            if let Some(p) = c.partial {
                op = op.partial(p);
            }
            (was_split, tail) = shape(gpu.norms.plan(&op));
            gpu.norms.rms_norm(&mut encoder, &op).expect("rms_norm");
        }
    }
    gpu.queue.submit([encoder.finish()]);
    let words = |b: &wgpu::Buffer| (b.size() / 4) as usize;
    let read = pollster::block_on(gpu.read_async(&[
        (&yb, words(&yb)),
        (&sb, words(&sb)),
        (&statb, words(&statb)),
    ]))
    .unwrap();
    assert_eq!(
        UNCAPTURED.load(Ordering::SeqCst),
        0,
        "a wgpu error reached the handler"
    );
    let s_len = if c.residual_out || c.s_fill.is_some() {
        n
    } else {
        0
    };
    AnyOut {
        y: unstage(&read[0], act, n, out_off, "y"),
        s: unstage(&read[1], act, s_len, out_off, "residual_out"),
        rstd: unstage(
            &read[2],
            DType::F32,
            if c.stats { rows } else { 0 },
            off,
            "rstd",
        ),
        split: was_split,
        tail,
    }
}

/// Runs `c` and checks y (and s, and rstd) against the reference.
pub fn check_any(gpu: &Gpu, c: &AnyCase) -> AnyOut {
    let out = run_any(gpu, c);
    let r = c.reference();
    let what = format!(
        "{:?} {}/{} rows={} dim={} offset={} out_offset={:?}",
        c.op,
        c.dtype,
        c.param_dtype,
        c.rows(),
        c.dim,
        c.offset,
        c.out_offset
    );
    let (ratio, i) = reference::worst_error_in(c.dtype, &out.y, &r.y);
    assert!(
        ratio <= 1.0,
        "{what}: y[{i}] = {} vs reference {} ({ratio:.2}x the {} tolerance)",
        out.y[i],
        r.y[i],
        c.dtype
    );
    if c.residual_out {
        // s is x + residual rounded once: exact up to the storage rounding.
        let (ratio, i) = reference::worst_error_in(c.dtype, &out.s, &r.s);
        assert!(ratio <= 1.0, "{what}: s[{i}] = {} vs {}", out.s[i], r.s[i]);
    }
    let worst = out
        .rstd
        .iter()
        .zip(&r.rstd)
        .map(|(&g, &e)| (f64::from(g) - e).abs() / e.abs().max(1e-30))
        .fold(0.0, f64::max);
    assert!(worst <= 1e-5, "{what}: rstd off by {worst:e} relative");
    out
}

/// The storage the long-row harnesses take, as (activation storage, weight and bias in f32
/// beside it): f32, bf16, and f16 with f32 parameters.
const STORAGES: [(DType, bool); 3] = [
    (DType::F32, false),
    (DType::Bf16, false),
    (DType::F16, true),
];

/// Few long rows split over several workgroups, with every storage type and option, no
/// statistics saved (a decode step): a fused residual whose sum is written back into a
/// buffer holding zeros (a pass that read it before writing would take them), D not a
/// multiple of 4 with 64 rows (parts too long for registers: streamed), pRMSNorm, Gemma, ε
/// added to σ, odd offsets; on the default device and on one with wgpu's default limits
/// (256 invocations a workgroup).
pub fn split_rows_any(op: Op) {
    for (k, (dtype, mixed)) in STORAGES.into_iter().enumerate() {
        for (rows, dim, offset) in [(64, 16390, 0), (3, 20000, 1), (1, 8192, 0)] {
            let mut c =
                AnyCase::new(op, dtype, rows, dim, 7 * k as u64 + dim as u64).with_residual(true);
            if mixed {
                c = c.mixed();
            }
            c.offset = offset;
            c.stats = false;
            c.s_fill = Some(0.0);
            match op {
                Op::RmsNorm => {
                    c.partial = (dim == 20000).then_some(0.3);
                    c.gemma_offset = rows == 1;
                }
                Op::LayerNorm => c.eps_added_to_std = rows == 1,
            }
            for gpu in [super::gpu(), super::default_limits_gpu()] {
                let out = check_any(gpu, &c);
                assert!(out.split, "{op:?} {dtype} {rows}x{dim}: not split");
            }
        }
    }
}

/// Rows longer than the forward's register cache (`Variant::tail`): the cache holds the first
/// part of each row, the rest is streamed for every pass. With the strided rows' and 16-bit
/// rows' `V`s per invocation at 64 (as lavapipe's autotune chooses for the former), D = 4097
/// and 4099 take 17 strided `V`s an invocation over 64 invocations, 16 of them in registers;
/// D = 4400 reads vec4s and takes 18 (the longest tail) with 64 `V`s for f32 too. Every storage type,
/// odd offsets (16-bit rows on both halves of a word, paired or not), a residual (written
/// back, and not), pRMSNorm's prefix ending inside the tail (4098 of 4099), Gemma, Llama's
/// rounding, ε added to σ.
pub fn rows_past_the_cache(op: Op) {
    let gpu = super::open(
        None,
        wgpu_norm::NormsOptions {
            tuning: wgpu_norm::Tuning {
                v_per_invocation: 64,
                v_per_invocation_16bit: 64,
                v_per_invocation_strided: 64,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    for (k, (dtype, mixed)) in STORAGES.into_iter().enumerate() {
        for (rows, dim, offset, out_offset) in [
            (9, 4097, 0, None),
            (5, 4099, 1, None),
            (4, 4097, 1, Some(2)),
            (3, 4400, 0, None),
        ] {
            let mut c = AnyCase::new(op, dtype, rows, dim, 11 * k as u64 + dim as u64)
                .with_residual(rows != 9);
            if mixed {
                c = c.mixed();
            }
            c.offset = offset;
            c.out_offset = out_offset;
            match op {
                Op::RmsNorm => {
                    c.partial = (rows == 5).then_some(0.9996);
                    c.gemma_offset = rows == 4;
                    c.llama_rounding = rows == 3 && dtype != DType::F32;
                }
                Op::LayerNorm => c.eps_added_to_std = rows == 4,
            }
            let out = check_any(&gpu, &c);
            assert!(out.tail, "{op:?} {dtype} {rows}x{dim}: no tail");
        }
    }
}
