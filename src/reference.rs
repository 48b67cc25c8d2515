//! Scalar CPU references of the kernels, the standard they are tested against.
//!
//! Everything is accumulated in f64, and the variance is a second pass over the centred
//! values, so these are more exact than any f32 kernel they check. Inputs are f32, as the
//! kernels see them; outputs stay f64 so a comparison is not blurred by a final rounding.

use crate::dtype::DType;

/// The result of a reference norm: `y` has the input's shape, the statistics one value a row.
#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    pub y: Vec<f64>,
    /// LayerNorm only: each row's mean.
    pub mean: Vec<f64>,
    /// `1 / sqrt(var + eps)` (LayerNorm) or `1 / sqrt(mean(x^2) + eps)` (RMSNorm).
    pub rstd: Vec<f64>,
    /// With a residual: `x + residual` rounded to the storage type, the rows normalized.
    pub s: Vec<f64>,
}

/// The options of a reference LayerNorm (the defaults are PyTorch's, in f32).
#[derive(Clone, Copy, Debug)]
pub struct LayerNormSpec<'a> {
    pub weight: Option<&'a [f32]>,
    pub bias: Option<&'a [f32]>,
    pub eps: f32,
    /// `(x - mean) / (sqrt(var) + eps)` instead of `/ sqrt(var + eps)`.
    pub eps_added_to_std: bool,
    pub residual: Option<&'a [f32]>,
    /// Storage of x, y and the residual stream: where `x + residual` is rounded.
    pub dtype: DType,
}

impl Default for LayerNormSpec<'_> {
    fn default() -> Self {
        LayerNormSpec {
            weight: None,
            bias: None,
            eps: 1e-5,
            eps_added_to_std: false,
            residual: None,
            dtype: DType::F32,
        }
    }
}

/// The options of a reference RMSNorm.
#[derive(Clone, Copy, Debug)]
pub struct RmsNormSpec<'a> {
    pub weight: Option<&'a [f32]>,
    pub eps: f32,
    pub residual: Option<&'a [f32]>,
    pub dtype: DType,
    /// Multiply by `1 + weight`.
    pub gemma_offset: bool,
    /// Round `x * rrms` to the storage type before the weight (Hugging Face Llama).
    pub llama_rounding: bool,
    /// pRMSNorm: the statistic over the first `k` elements of each row.
    pub stat_len: Option<usize>,
}

impl Default for RmsNormSpec<'_> {
    fn default() -> Self {
        RmsNormSpec {
            weight: None,
            eps: f32::EPSILON,
            residual: None,
            dtype: DType::F32,
            gemma_offset: false,
            llama_rounding: false,
            stat_len: None,
        }
    }
}

/// The rows normalized: x, or `x + residual` rounded to `dtype`.
fn input_rows(x: &[f32], residual: Option<&[f32]>, dtype: DType) -> (Vec<f64>, Vec<f64>) {
    match residual {
        None => (x.iter().map(|&v| f64::from(v)).collect(), Vec::new()),
        Some(r) => {
            assert_eq!(r.len(), x.len(), "the residual must have the shape of x");
            let s: Vec<f64> = x
                .iter()
                .zip(r)
                .map(|(&a, &b)| dtype.round(f64::from(a) + f64::from(b)))
                .collect();
            (s.clone(), s)
        }
    }
}

fn check_shapes(x: &[f32], dim: usize, params: &[Option<&[f32]>]) {
    assert!(dim > 0, "dim must be at least 1");
    assert_eq!(x.len() % dim, 0, "x is not a whole number of rows of {dim}");
    for p in params.iter().flatten() {
        assert_eq!(p.len(), dim, "weight/bias must have dim elements");
    }
}

/// Mirror of `shaders/layer_norm.wgsl`: `y = (x - mean) / sqrt(var + eps) * weight + bias`,
/// biased variance. Panics on shapes that do not fit (a test helper, not an API for input
/// from outside).
pub fn layer_norm(
    x: &[f32],
    dim: usize,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
) -> Reference {
    let spec = LayerNormSpec {
        weight,
        bias,
        eps,
        ..Default::default()
    };
    layer_norm_with(x, dim, &spec)
}

/// [`layer_norm`] with every option of the kernel.
pub fn layer_norm_with(x: &[f32], dim: usize, spec: &LayerNormSpec) -> Reference {
    check_shapes(x, dim, &[spec.weight, spec.bias]);
    let (rows_in, s) = input_rows(x, spec.residual, spec.dtype);
    let rows = x.len() / dim;
    let mut out = Reference {
        y: Vec::with_capacity(x.len()),
        mean: Vec::with_capacity(rows),
        rstd: Vec::with_capacity(rows),
        s,
    };
    for row in rows_in.chunks_exact(dim) {
        let mean = row.iter().sum::<f64>() / dim as f64;
        let var = row.iter().map(|&v| (v - mean).powi(2)).sum::<f64>() / dim as f64;
        let eps = f64::from(spec.eps);
        let rstd = if spec.eps_added_to_std {
            1.0 / (var.sqrt() + eps)
        } else {
            1.0 / (var + eps).sqrt()
        };
        for (i, &v) in row.iter().enumerate() {
            let w = spec.weight.map_or(1.0, |w| f64::from(w[i]));
            let b = spec.bias.map_or(0.0, |b| f64::from(b[i]));
            out.y.push((v - mean) * rstd * w + b);
        }
        out.mean.push(mean);
        out.rstd.push(rstd);
    }
    out
}

/// Mirror of `shaders/rms_norm.wgsl`: `y = x / sqrt(mean(x^2) + eps) * weight`. `mean` of
/// the result is empty. Panics on shapes that do not fit.
pub fn rms_norm(x: &[f32], dim: usize, weight: Option<&[f32]>, eps: f32) -> Reference {
    let spec = RmsNormSpec {
        weight,
        eps,
        ..Default::default()
    };
    rms_norm_with(x, dim, &spec)
}

/// [`rms_norm`] with every option of the kernel. With `llama_rounding`, `x * rrms` is
/// rounded to the storage type before the weight, as the kernel does.
pub fn rms_norm_with(x: &[f32], dim: usize, spec: &RmsNormSpec) -> Reference {
    check_shapes(x, dim, &[spec.weight]);
    let (rows_in, s) = input_rows(x, spec.residual, spec.dtype);
    let rows = x.len() / dim;
    let k = spec.stat_len.unwrap_or(dim);
    assert!(k >= 1 && k <= dim, "the statistic covers 1..=dim elements");
    let mut out = Reference {
        y: Vec::with_capacity(x.len()),
        mean: Vec::new(),
        rstd: Vec::with_capacity(rows),
        s,
    };
    for row in rows_in.chunks_exact(dim) {
        let ms = row[..k].iter().map(|&v| v.powi(2)).sum::<f64>() / k as f64;
        let rrms = 1.0 / (ms + f64::from(spec.eps)).sqrt();
        for (i, &v) in row.iter().enumerate() {
            let mut w = spec.weight.map_or(1.0, |w| f64::from(w[i]));
            if spec.gemma_offset && spec.weight.is_some() {
                w += 1.0;
            }
            let mut t = v * rrms;
            if spec.llama_rounding {
                t = spec.dtype.round(t);
            }
            out.y.push(t * w);
        }
        out.rstd.push(rrms);
    }
    out
}

/// Gradients computed by a reference backward.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    pub dx: Vec<f64>,
    /// For each element of `dx`: the magnitude of its terms,
    /// `rstd * (|g| + |mean(g)| + |xhat * mean(g * xhat)|)`. dx is a difference of these, so
    /// its f32 rounding error scales with this, not with |dx| (for D = 1, say, the terms
    /// nearly cancel).
    pub dx_scale: Vec<f64>,
    pub dweight: Vec<f64>,
    /// LayerNorm only.
    pub dbias: Vec<f64>,
    /// For each element of `dweight`/`dbias`: the sum of the magnitudes of its terms, the
    /// scale its rounding error grows with.
    pub dweight_scale: Vec<f64>,
    pub dbias_scale: Vec<f64>,
}

/// Mirror of `shaders/layer_norm_backward.wgsl` and `param_grad.wgsl`: with
/// `xhat = (x - mean) * rstd` and `g = dy * weight`,
/// `dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`, `dweight = sum_rows dy * xhat`,
/// `dbias = sum_rows dy`. Statistics are computed here, in f64.
pub fn layer_norm_backward(
    x: &[f32],
    dy: &[f32],
    dim: usize,
    weight: Option<&[f32]>,
    eps: f32,
) -> Gradients {
    let fwd = layer_norm(x, dim, None, None, eps);
    let xhat = |row: usize, v: f32| (f64::from(v) - fwd.mean[row]) * fwd.rstd[row];
    let w = |i: usize| weight.map_or(1.0, |w| f64::from(w[i]));
    backward(x, dy, dim, weight, w, xhat, &fwd.rstd, true, dim)
}

/// Mirror of `shaders/rms_norm_backward.wgsl` and `param_grad.wgsl`: with `xhat = x * rrms`
/// and `g = dy * weight`, `dx = rrms * (g - xhat * mean(g * xhat))`,
/// `dweight = sum_rows dy * xhat`.
pub fn rms_norm_backward(
    x: &[f32],
    dy: &[f32],
    dim: usize,
    weight: Option<&[f32]>,
    eps: f32,
) -> Gradients {
    let spec = RmsNormSpec {
        weight,
        eps,
        ..Default::default()
    };
    rms_norm_backward_with(x, dy, dim, &spec)
}

/// [`rms_norm_backward`] with the forward's options that change the gradient: the Gemma
/// offset (`g = dy * (1 + weight)`) and pRMSNorm (`stat_len` = k: only the first k elements
/// enter rrms, so only they get the statistics term, `sum(g * xhat) / k`). Residual and
/// storage options do not apply (the backward is f32).
pub fn rms_norm_backward_with(x: &[f32], dy: &[f32], dim: usize, spec: &RmsNormSpec) -> Gradients {
    let fwd_spec = RmsNormSpec {
        weight: None,
        gemma_offset: false,
        ..*spec
    };
    let fwd = rms_norm_with(x, dim, &fwd_spec);
    let xhat = |row: usize, v: f32| f64::from(v) * fwd.rstd[row];
    let w = |i: usize| {
        let w = spec.weight.map_or(1.0, |w| f64::from(w[i]));
        if spec.gemma_offset && spec.weight.is_some() {
            w + 1.0
        } else {
            w
        }
    };
    let k = spec.stat_len.unwrap_or(dim);
    backward(x, dy, dim, spec.weight, w, xhat, &fwd.rstd, false, k)
}

/// The shared shape of both backward passes; `centred` selects LayerNorm's mean(g) term, and
/// only the first `k` elements of a row get the statistics terms (k = dim but for pRMSNorm).
#[allow(clippy::too_many_arguments)]
fn backward(
    x: &[f32],
    dy: &[f32],
    dim: usize,
    weight: Option<&[f32]>,
    w: impl Fn(usize) -> f64,
    xhat: impl Fn(usize, f32) -> f64,
    scale: &[f64],
    centred: bool,
    k: usize,
) -> Gradients {
    check_shapes(x, dim, &[weight]);
    assert_eq!(x.len(), dy.len(), "dy must have the shape of x");
    let mut out = Gradients {
        dx: Vec::with_capacity(x.len()),
        dx_scale: Vec::with_capacity(x.len()),
        dweight: vec![0.0; dim],
        dbias: if centred { vec![0.0; dim] } else { Vec::new() },
        dweight_scale: vec![0.0; dim],
        dbias_scale: if centred { vec![0.0; dim] } else { Vec::new() },
    };
    for (row, (xr, dr)) in x.chunks_exact(dim).zip(dy.chunks_exact(dim)).enumerate() {
        let xh: Vec<f64> = xr.iter().map(|&v| xhat(row, v)).collect();
        let g: Vec<f64> = (0..dim).map(|i| f64::from(dr[i]) * w(i)).collect();
        let mean_g = if centred {
            g.iter().sum::<f64>() / dim as f64
        } else {
            0.0
        };
        let mean_gx = g.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / k as f64;
        for i in 0..dim {
            let stat = if i < k { xh[i] * mean_gx } else { 0.0 };
            out.dx.push(scale[row] * (g[i] - mean_g - stat));
            out.dx_scale
                .push(scale[row] * (g[i].abs() + mean_g.abs() + stat.abs()));
            let d = f64::from(dr[i]);
            out.dweight[i] += d * xh[i];
            out.dweight_scale[i] += (d * xh[i]).abs();
            if centred {
                out.dbias[i] += d;
                out.dbias_scale[i] += d.abs();
            }
        }
    }
    out
}

/// The accuracy the kernels guarantee against these references for f32 data:
/// `|gpu - ref| <= 1e-5 + 1e-5 * |ref|`. Returns the worst ratio of error to allowance
/// (<= 1 passes), with the index where it occurs; a NaN or missing value counts as
/// infinitely wrong unless the reference is NaN too.
pub fn worst_error(gpu: &[f32], reference: &[f64]) -> (f64, usize) {
    worst_error_in(DType::F32, gpu, reference)
}

/// The tolerance for one output element stored as `dtype` whose exact value is `r`:
/// f32: `1e-5 + 1e-5 * |r|`; f16: one f16 ulp of `r` plus `1e-5 + 1e-3 * |r|`; bf16:
/// `1e-5 + 1.6e-2 * |r|` (PyTorch's `assert_close` defaults for the 16-bit types).
pub fn tolerance(dtype: DType, r: f64) -> f64 {
    F32_ATOL + relative_tolerance(dtype, r)
}

/// [`tolerance`] without its absolute floor of 1e-5: the part that scales with `r`, for
/// results whose size is far from 1.
pub fn relative_tolerance(dtype: DType, r: f64) -> f64 {
    let a = r.abs();
    match dtype {
        DType::F32 => F32_RTOL * a,
        DType::F16 => {
            // Spacing of f16 at |r|: 2^(e - 10) for normal numbers, 2^-24 below 2^-14.
            let ulp = if a < 2f64.powi(-14) {
                2f64.powi(-24)
            } else {
                2f64.powi(a.log2().floor() as i32 - 10)
            };
            ulp + 1e-3 * a
        }
        DType::Bf16 => 1.6e-2 * a,
    }
}

/// [`worst_error`] with the tolerance of `dtype`.
pub fn worst_error_in(dtype: DType, gpu: &[f32], reference: &[f64]) -> (f64, usize) {
    assert_eq!(gpu.len(), reference.len());
    let mut worst = (0.0, 0);
    for (i, (&g, &r)) in gpu.iter().zip(reference).enumerate() {
        let g = f64::from(g);
        let ratio = if r.is_nan() && g.is_nan() || (r.is_infinite() && g == r) {
            0.0
        } else {
            let e = (g - r).abs() / tolerance(dtype, r);
            if e.is_nan() { f64::INFINITY } else { e }
        };
        if ratio > worst.0 {
            worst = (ratio, i);
        }
    }
    worst
}

/// Absolute part of the f32 tolerance.
pub const F32_ATOL: f64 = 1e-5;
/// Relative part of the f32 tolerance.
pub const F32_RTOL: f64 = 1e-5;
