// RMSNorm forward: y = x * rrms * weight, rrms = 1 / sqrt(mean(x^2) + eps). One workgroup per
// row at a time. CPU mirror: `wgpu_norm::reference::rms_norm`.
//
// The sum of squares is accumulated in f32: beyond |x| ~ 1.8e19 a square overflows to inf and
// the row's output becomes 0 (or NaN where x is inf); see the README.

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    reduce_init(ids);
    // Several short rows per workgroup, so that each moves enough bytes to pay for its launch.
    let first = group_index(ids) * params.rows_per_group;
    for (var r = 0u; r < params.rows_per_group; r++) {
        if first + r >= params.rows {
            break;
        }
        rms_norm_row(first + r, ids.lid);
    }
}

fn rms_norm_row(row: u32, lid: u32) {
    let n = params.dim / VW;
    let xb = off_v(1u) + row * params.dim / VW;
    let yb = off_v(2u) + row * params.dim / VW;
    let inv_dim = 1.0 / f32(params.dim);

//#if cached
    // The row stays in registers: x is read once, all loads in flight together.
    var c: array<V, CACHE>;
//#unroll k
    if lid + k * WG < n {
        c[k] = x[xb + lid + k * WG];
    }
//#endunroll
    var q = V(0.0);
//#unroll k
    q += c[k] * c[k];
//#endunroll
    let rrms = 1.0 / sqrt(wg_sum(hsum(q), lid) * inv_dim + params.eps);
//#unroll k
    if lid + k * WG < n {
        y[yb + lid + k * WG] = scale(c[k] * rrms, lid + k * WG);
    }
//#endunroll
//#else
    // Rows too long for registers: two passes over x, the second mostly from cache.
    var q = V(0.0);
    for (var i = lid; i < n; i += WG) {
        let v = x[xb + i];
        q += v * v;
    }
    let rrms = 1.0 / sqrt(wg_sum(hsum(q), lid) * inv_dim + params.eps);
    for (var i = lid; i < n; i += WG) {
        y[yb + i] = scale(x[xb + i] * rrms, i);
    }
//#endif

    if lid == 0u && has_flag(FLAG_RSTD) {
        rstd_out[off_f(6u) + row] = rrms;
    }
}

// xhat * weight for the i-th V of the row.
fn scale(xhat: V, i: u32) -> V {
    if has_flag(FLAG_WEIGHT) {
        return xhat * weight[off_v(3u) + i];
    }
    return xhat;
}
