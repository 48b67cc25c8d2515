// RMSNorm forward: y = x * rrms * weight, rrms = 1 / sqrt(mean(x^2) + eps), where the mean
// runs over the first stat_len elements of the row (all of them, or ceil(p * D) for
// pRMSNorm). Options: OPT_GEMMA_OFFSET multiplies by (1 + weight); OPT_LLAMA_ROUNDING
// rounds x * rrms to the storage type before the multiplication by the weight (Hugging Face
// Llama's order; the default rounds once, at the end, as Gemma does); a residual is added
// first (residual.wgsl). One workgroup per row at a time.
// CPU mirror: `wgpu_norm::reference::rms_norm`.
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
    if has(HAS_RESIDUAL_OUT) {
//#unroll k
        if lid + k * WG < n {
            st_residual_out(row, lid + k * WG, c[k]);
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
        if has(HAS_RESIDUAL_OUT) {
            st_residual_out(row, i, v);
        }
        q += in_prefix(i, v * v);
    }
    let rrms = 1.0 / sqrt(wg_sum(hsum(q), lid) * inv_len + params.eps);
    for (var i = lid; i < n; i += WG) {
        st_y(row, i, scale(ld_again(row, i) * rrms, i));
    }
//#endif

    if lid == 0u && has(HAS_RRMS) {
        st_rrms(row, rrms);
    }
}

// xhat * weight (or * (1 + weight)) for the i-th V of the row, in the configured order.
fn scale(xhat: V, i: u32) -> V {
    var o = xhat;
    if has(OPT_LLAMA_ROUNDING) {
        o = round_act(o);
    }
    if has(HAS_WEIGHT) {
        var w = ld_weight(i);
        if has(OPT_GEMMA_OFFSET) {
            w += V(1.0);
        }
        o *= w;
    }
    return o;
}
