//! Scalar CPU references of the kernels, the standard they are tested against.
//!
//! Everything is accumulated in f64, and the variance is a second pass over the centred
//! values, so these are more exact than any f32 kernel they check. Inputs are f32, as the
//! kernels see them; outputs stay f64 so a comparison is not blurred by a final rounding.

/// The result of a reference norm: `y` has the input's shape, the statistics one value a row.
#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    pub y: Vec<f64>,
    /// LayerNorm only: each row's mean.
    pub mean: Vec<f64>,
    /// `1 / sqrt(var + eps)` (LayerNorm) or `1 / sqrt(mean(x^2) + eps)` (RMSNorm).
    pub rstd: Vec<f64>,
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
    check_shapes(x, dim, &[weight, bias]);
    let rows = x.len() / dim;
    let mut out = Reference {
        y: Vec::with_capacity(x.len()),
        mean: Vec::with_capacity(rows),
        rstd: Vec::with_capacity(rows),
    };
    for row in x.chunks_exact(dim) {
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / dim as f64;
        let var = row
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / dim as f64;
        let rstd = 1.0 / (var + f64::from(eps)).sqrt();
        for (i, &v) in row.iter().enumerate() {
            let w = weight.map_or(1.0, |w| f64::from(w[i]));
            let b = bias.map_or(0.0, |b| f64::from(b[i]));
            out.y.push((f64::from(v) - mean) * rstd * w + b);
        }
        out.mean.push(mean);
        out.rstd.push(rstd);
    }
    out
}

/// Mirror of `shaders/rms_norm.wgsl`: `y = x / sqrt(mean(x^2) + eps) * weight`. `mean` of
/// the result is empty. Panics on shapes that do not fit.
pub fn rms_norm(x: &[f32], dim: usize, weight: Option<&[f32]>, eps: f32) -> Reference {
    check_shapes(x, dim, &[weight]);
    let rows = x.len() / dim;
    let mut out = Reference {
        y: Vec::with_capacity(x.len()),
        mean: Vec::new(),
        rstd: Vec::with_capacity(rows),
    };
    for row in x.chunks_exact(dim) {
        let ms = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / dim as f64;
        let rrms = 1.0 / (ms + f64::from(eps)).sqrt();
        for (i, &v) in row.iter().enumerate() {
            let w = weight.map_or(1.0, |w| f64::from(w[i]));
            out.y.push(f64::from(v) * rrms * w);
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
    backward(
        x,
        dy,
        dim,
        weight,
        |row, v| (f64::from(v) - fwd.mean[row]) * fwd.rstd[row],
        &fwd.rstd,
        true,
    )
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
    let fwd = rms_norm(x, dim, None, eps);
    backward(
        x,
        dy,
        dim,
        weight,
        |row, v| f64::from(v) * fwd.rstd[row],
        &fwd.rstd,
        false,
    )
}

/// The shared shape of both backward passes; `centred` selects LayerNorm's mean(g) term.
fn backward(
    x: &[f32],
    dy: &[f32],
    dim: usize,
    weight: Option<&[f32]>,
    xhat: impl Fn(usize, f32) -> f64,
    scale: &[f64],
    centred: bool,
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
        let g: Vec<f64> = (0..dim)
            .map(|i| f64::from(dr[i]) * weight.map_or(1.0, |w| f64::from(w[i])))
            .collect();
        let mean_g = if centred {
            g.iter().sum::<f64>() / dim as f64
        } else {
            0.0
        };
        let mean_gx = g.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / dim as f64;
        for i in 0..dim {
            out.dx.push(scale[row] * (g[i] - mean_g - xh[i] * mean_gx));
            out.dx_scale
                .push(scale[row] * (g[i].abs() + mean_g.abs() + (xh[i] * mean_gx).abs()));
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
    assert_eq!(gpu.len(), reference.len());
    let mut worst = (0.0, 0);
    for (i, (&g, &r)) in gpu.iter().zip(reference).enumerate() {
        let g = f64::from(g);
        let ratio = if r.is_nan() && g.is_nan() || (r.is_infinite() && g == r) {
            0.0
        } else {
            let e = (g - r).abs() / (F32_ATOL + F32_RTOL * r.abs());
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
