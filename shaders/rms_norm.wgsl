// RMSNorm forward: y = x * rrms * weight, rrms = 1 / sqrt(mean(x^2) + eps), where the mean
// runs over the first stat_len elements of the row (all of them, or ceil(p * D) for
// pRMSNorm). Options: FLAG_GEMMA_OFFSET multiplies by (1 + weight); FLAG_LLAMA_ROUNDING
// rounds x * rrms to the storage type before the multiplication by the weight (Hugging Face
// Llama's order; the default rounds once, at the end, as Gemma does); FLAG_RESIDUAL
// normalizes s = x + residual (rounded to the storage type) and FLAG_RESIDUAL_OUT writes s.
// One workgroup per row at a time. CPU mirror: `wgpu_norm::reference::rms_norm`.
//
// The sum of squares is accumulated in f32: beyond |x| ~ 1.8e19 a square overflows to inf and
// the row's output becomes 0 (or NaN where x is inf); see the README.

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    reduce_init(ids);
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
    let inv_len = 1.0 / f32(params.stat_len);
    let prefix = params.stat_len < params.dim;

//#if cached
    // The row stays in registers: x is read once, all loads in flight together.
    var c: array<V, CACHE>;
//#unroll k
    if lid + k * WG < n {
        c[k] = ld_in(row, lid + k * WG);
    }
//#endunroll
    if has_flag(FLAG_RESIDUAL_OUT) {
//#unroll k
        if lid + k * WG < n {
            st_s(row, lid + k * WG, c[k]);
        }
//#endunroll
    }
    var q = V(0.0);
    if prefix {
//#unroll k
        q += in_prefix(lid + k * WG, c[k] * c[k]);
//#endunroll
    } else {
//#unroll k
        q += c[k] * c[k];
//#endunroll
    }
    let rrms = 1.0 / sqrt(wg_sum(hsum(q), lid) * inv_len + params.eps);
//#unroll k
    if lid + k * WG < n {
        st_y(row, lid + k * WG, scale(c[k] * rrms, lid + k * WG));
    }
//#endunroll
//#else
    // Rows too long for registers: two passes over x, the second mostly from cache.
    var q = V(0.0);
    for (var i = lid; i < n; i += WG) {
        let v = ld_in(row, i);
        if has_flag(FLAG_RESIDUAL_OUT) {
            st_s(row, i, v);
        }
        q += in_prefix(i, v * v);
    }
    let rrms = 1.0 / sqrt(wg_sum(hsum(q), lid) * inv_len + params.eps);
    for (var i = lid; i < n; i += WG) {
        st_y(row, i, scale(ld_again(row, i) * rrms, i));
    }
//#endif

    if lid == 0u && has_flag(FLAG_RSTD) {
        rstd_out[off_f(6u) + row] = rrms;
    }
}

// The row's i-th V of x, or of x + residual rounded to the storage type.
fn ld_in(row: u32, i: u32) -> V {
    if has_flag(FLAG_RESIDUAL) {
        return round_act(ld_x(row, i) + ld_r(row, i));
    }
    return ld_x(row, i);
}

// ld_in again, in a later streamed pass. Once s is written back it is read from there:
// residual_out may replace x or the residual in place (as vLLM's fused add does), and
// x + residual would then no longer be there to add. The same invocation wrote it.
fn ld_again(row: u32, i: u32) -> V {
    if has_flag(FLAG_RESIDUAL_OUT) {
        return ld_s(row, i);
    }
    return ld_in(row, i);
}

// xhat * weight (or * (1 + weight)) for the i-th V of the row, in the configured order.
fn scale(xhat: V, i: u32) -> V {
    var o = xhat;
    if has_flag(FLAG_LLAMA_ROUNDING) {
        o = round_act(o);
    }
    if has_flag(FLAG_WEIGHT) {
        var w = ld_w(i);
        if has_flag(FLAG_GEMMA_OFFSET) {
            w += V(1.0);
        }
        o *= w;
    }
    return o;
}
