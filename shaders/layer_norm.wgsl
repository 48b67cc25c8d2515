// LayerNorm forward: y = (x - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + eps), with
// the biased variance. One workgroup per row at a time. CPU mirror: `wgpu_norm::reference::layer_norm`.
//
// Accuracy: all sums run over x - p, where p is the row's first element. For data far from
// zero (1e4 +- 1, say) the mean itself is not representable to better than half an ulp of 1e4
// (5e-4), but the shifted values are exact (the difference of nearby floats is) and small, so
// the shifted mean m and the centred values (x - p) - m keep f32 precision. The variance is
// a second pass over those centred values, never E[x^2] - mean^2.

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    reduce_init(ids);
    // Several short rows per workgroup, so that each moves enough bytes to pay for its launch.
    let first = group_index(ids) * params.rows_per_group;
    for (var r = 0u; r < params.rows_per_group; r++) {
        if first + r >= params.rows {
            break;
        }
        layer_norm_row(first + r, ids.lid);
    }
}

fn layer_norm_row(row: u32, lid: u32) {
    let n = params.dim / VW;
    let xb = off_v(1u) + row * params.dim / VW;
    let yb = off_v(2u) + row * params.dim / VW;
    let inv_dim = 1.0 / f32(params.dim);
    let p = first_lane(x[xb]);
    let pv = V(p);

//#if cached
    // The row stays in registers: one read of x, two exact passes over it. All loads are
    // issued before the first use, so each invocation has CACHE of them in flight.
    var c: array<V, CACHE>;
//#unroll k
    if lid + k * WG < n {
        c[k] = x[xb + lid + k * WG];
    }
//#endunroll
    var s = V(0.0);
//#unroll k
    if lid + k * WG < n {
        c[k] -= pv;
        s += c[k];
    }
//#endunroll
    let m = wg_sum(hsum(s), lid) * inv_dim;
    let mv = V(m);
    var q = V(0.0);
//#unroll k
    if lid + k * WG < n {
        c[k] -= mv;
        q += c[k] * c[k];
    }
//#endunroll
    let rstd = 1.0 / sqrt(wg_sum(hsum(q), lid) * inv_dim + params.eps);
//#unroll k
    if lid + k * WG < n {
        y[yb + lid + k * WG] = affine(c[k] * rstd, lid + k * WG);
    }
//#endunroll
//#else
    // Rows too long for registers: three passes over x, the later two mostly from cache.
    var s = V(0.0);
    for (var i = lid; i < n; i += WG) {
        s += x[xb + i] - pv;
    }
    let m = wg_sum(hsum(s), lid) * inv_dim;
    let mv = V(m);
    var q = V(0.0);
    for (var i = lid; i < n; i += WG) {
        let d = (x[xb + i] - pv) - mv;
        q += d * d;
    }
    let rstd = 1.0 / sqrt(wg_sum(hsum(q), lid) * inv_dim + params.eps);
    for (var i = lid; i < n; i += WG) {
        y[yb + i] = affine(((x[xb + i] - pv) - mv) * rstd, i);
    }
//#endif

    if lid == 0u {
        if has_flag(FLAG_MEAN) {
            mean_out[off_f(5u) + row] = p + m;
        }
        if has_flag(FLAG_RSTD) {
            rstd_out[off_f(6u) + row] = rstd;
        }
    }
}

// xhat * weight + bias for the i-th V of the row.
fn affine(xhat: V, i: u32) -> V {
    var o = xhat;
    if has_flag(FLAG_WEIGHT) {
        o *= weight[off_v(3u) + i];
    }
    if has_flag(FLAG_BIAS) {
        o += bias[off_v(4u) + i];
    }
    return o;
}
