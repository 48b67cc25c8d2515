// RMSNorm forward: y = x * rrms * weight, rrms = 1 / sqrt(mean(x^2) + eps), where the mean
// runs over the first stat_len elements of the row (all of them, or ceil(p * D) for
// pRMSNorm). Options: OPT_GEMMA_OFFSET multiplies by (1 + weight); OPT_LLAMA_ROUNDING
// rounds x * rrms to the storage type before the multiplication by the weight (Hugging Face
// Llama's order; the default rounds once, at the end, as Gemma does); a residual is added
// first (residual.wgsl). One workgroup per row at a time, or several short rows side by side
// (RW invocations each).
// CPU mirror: `wgpu_norm::reference::rms_norm`.
//
// The sum of squares is accumulated in f32; a row whose squares leave f32's range (|x| beyond
// about 1.8e19, or tiny with a tiny eps) is normalized again, scaled by a power of two
// (scale.wgsl).

@compute @workgroup_size(WG)
fn main(g: Group, ids: Ids) {
    reduce_init(ids);
//#if split
    // One part of one of few long rows (split.wgsl): the part's sum of squares (`stats`), or
    // its normalization from every part's.
    let row = group_index(g) / params.parts;
    if row >= params.rows {
        return;
    }
    let part = group_index(g) % params.parts;
    if rms_norm_row(row, ids.lid, part) {
        rms_norm_retry(row, ids.lid, part);
    }
//#else
    // SLOTS rows side by side (short rows, RW invocations each; 1 elsewhere), and
    // rows_per_group such steps one after another, so that each workgroup moves enough bytes
    // to pay for its launch.
    let slot = ids.lid / RW;
    let first = group_index(g) * params.rows_per_group * SLOTS;
    for (var r = 0u; r < params.rows_per_group; r++) {
        if first + r * SLOTS >= params.rows {
            break;
        }
        if rms_norm_row(first + r * SLOTS + slot, ids.lid, 0u) {
            mark_retry(r);
        }
    }
    // Rows whose sums left f32's range, again (scale.wgsl). Each invocation marked its own
    // slot's rows, and the retry needs no barrier. Not in `shared` variants, which retried
    // each such row at once: there the retry holds storage barriers, which WGSL allows only in
    // uniform control flow, and a branch on private marks is not (Chrome's compiler rejects it).
//#if shared
//#else
    if retry_any {
        for (var r = 0u; r < params.rows_per_group; r++) {
            if marked(r) {
                rms_norm_retry(first + r * SLOTS + slot, ids.lid, 0u);
            }
        }
    }
//#endif
//#endif
}

// Normalizes one row (or, split, part `part` of it); true when its sum of squares left f32's
// range and it must be taken again.
fn rms_norm_row(row: u32, lid: u32, part: u32) -> bool {
    let lane = lid % RW;
    let span = row_part(row, part);
    let base = span.x;
    let n = span.y;
    let prefix = params.stat_len < params.dim;

//#if cached
    // The row stays in registers: x is read once, all loads in flight together. A row a
    // little longer than CACHE V's an invocation (`tail`) keeps its first CACHE * RW there.
    // A 16-bit row's cache holds its storage words (`Cached`), converted at each pass.
    var c: array<Cached, CACHE>;
//#unroll k
    if lane + k * RW < n {
        c[k] = ld_in_cached(row, base + lane + k * RW);
    }
//#endunroll
    if has(HAS_RESIDUAL_OUT) && !STATS {
//#unroll k
        if lane + k * RW < n {
            st_residual_out(row, base + lane + k * RW, from_cache(c[k]));
        }
//#endunroll
    }
//#endif
    var q = V(0.0);
//#if cached
    if prefix {
//#unroll k
        {
            let x = from_cache(c[k]);
            q += in_prefix(base + lane + k * RW, x * x);
        }
//#endunroll
    } else {
//#unroll k
        {
            let x = from_cache(c[k]);
            q += x * x;
        }
//#endunroll
    }
//#endif
//#if streams
    // The row past the registers (all of it where none is cached: a row too long for them),
    // read again for y, mostly from the memory cache.
    for (var i = base + lane + CACHE * RW; i < base + n && tail_in_row(i); i += RW) {
        let v = ld_in(row, i);
        if has(HAS_RESIDUAL_OUT) && !STATS {
            st_residual_out(row, i, v);
        }
        q += in_prefix(i, v * v);
    }
//#endif
    let ms = mean_square(row, hsum(q), lid, part);
//#if stats
//#else
//#if shared
    if out_of_range(ms) {
        rms_norm_retry(row, lid, part);
        return false;
    }
//#endif
    let rrms = inv_root(ms, 0);
//#if cached
//#unroll k
    if lane + k * RW < n {
        st_y(row, base + lane + k * RW, scale(from_cache(c[k]) * rrms, base + lane + k * RW));
    }
//#endunroll
//#endif
//#if streams
    for (var i = base + lane + CACHE * RW; i < base + n && tail_in_row(i); i += RW) {
        st_y(row, i, scale(ld_again(row, i) * rrms, i));
    }
//#endif
//#endif
//#if stats
    return false;
//#else
    if lane == 0u && n > 0u {
        save_rrms(row, rrms);
    }
    return out_of_range(ms) && n > 0u;
//#endif
}

// The row's mean of squares from this invocation's share `q` of the sum; a split row's first
// dispatch (`stats`) writes its part's sum instead (split.wgsl).
fn mean_square(row: u32, q: f32, lid: u32, part: u32) -> f32 {
//#if split
//#if stats
    let t = wg_sum(q, lid);
    if lid == 0u {
        st_partials(part_index(row, part), vec4<f32>(t, 0.0, 0.0, 0.0));
    }
    return 0.0;
//#else
    return split_mean_square(row);
//#endif
//#else
    return wg_sum_decide(q, lid) * (1.0 / f32(params.stat_len));
//#endif
}

// A row whose sum of squares left f32's range, normalized again from the row scaled by 2^-e,
// its statistic taken by each invocation alone (scale.wgsl); a split row's workgroup writes
// its own part. A row holding inf or NaN goes through unscaled and comes out as the first
// time.
fn rms_norm_retry(row: u32, lid: u32, part: u32) {
    let lane = lid % RW;
    retry_barrier();
    var e = row_exponent(row);
    if e == NO_SCALE {
        e = 0;
    }
    let rrms = inv_root(scaled_mean_square(row, e), e);
    retry_barrier();
    let span = row_part(row, part);
    for (var i = span.x + lane; i < span.x + span.y; i += RW) {
        st_y(row, i, scale(scale_v(ld_all(row, i), e) * rrms, i));
    }
    if lane == 0u {
        save_rrms(row, times_pow2(rrms, -e));
    }
}

// The per-row statistic, where asked for (a split row has none).
fn save_rrms(row: u32, rrms: f32) {
//#if split
//#else
    if has(HAS_RRMS) {
        st_rrms(row, rrms);
    }
//#endif
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
