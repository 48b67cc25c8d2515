// RMSNorm backward, stage 1: dx for every row, and per-workgroup column partial sums of
// dy * xhat, which param_grad.wgsl reduces to dweight in a fixed order.
// CPU mirror: `wgpu_norm::reference::rms_norm_backward`.
//
// With xhat = x * rrms and g = dy * weight (or dy * (1 + weight), OPT_GEMMA_OFFSET):
//     dx = rrms * (g - xhat * sum(g * xhat) / k)   for the first k = stat_len elements,
//     dx = rrms * g                                 for the rest (pRMSNorm; k = D otherwise),
// since only the first k elements enter rrms. rrms comes from the forward pass (saved)
// or is recomputed as rms_norm.wgsl does, the scaled retry included (scale.wgsl).

@compute @workgroup_size(WG)
fn main(g: Group, ids: Ids) {
    reduce_init(ids);
    let lid = ids.lid;
    // SLOTS rows side by side (short rows, RW invocations each; 1 elsewhere), and
    // rows_per_group such steps one after another. The workgroup writes one partial row.
    // One row at a time, the slot is a constant: uniformity analysis then sees each row's
    // tests as the workgroup's, which the `shared` retry's barriers need.
//#if side_by_side
    let slot = lid / RW;
    let lane = lid % RW;
//#else
    let slot = 0u;
    let lane = lid;
//#endif
    let group = group_index(g);
    let first = step_row(group, 0u, 0u);
//#if paired
    // Every row of this workgroup starts on this phase (step_row).
    set_row(first);
//#endif
    // Column partial sums in registers across this workgroup's rows (where they fit).
//#if held_partials
    var pw: array<V, CACHE>;
//#endif
    for (var r = 0u; r < params.rows_per_group; r++) {
        if step_row(group, r, 0u) >= params.rows {
            break;
        }
        let row = step_row(group, r, slot);
        // None for a slot past the last row, which still takes part in every barrier.
        let n = select(0u, row_vs(), row < params.rows);
        let inv_len = 1.0 / f32(params.stat_len);
        // A recomputed rrms whose sum of squares left f32's range is taken again (scale.wgsl;
        // a saved one needs no squares).
        var rrms = 0.0;
        var retry = false;
//#if saved
        if n > 0u {
            rrms = ld_rrms(row);
        }
//#endif
//#if cached
        // x and dy stay in registers (a 16-bit row's as its storage words, `Cached`), and
        // each pass takes x * rrms from the cache again rather than writing it back: an
        // update in place under the row's bound keeps two copies of each V live.
        var c: array<Cached, CACHE>;
        var d: array<Cached, CACHE>;
//#unroll k
        if lane + k * RW < n {
            c[k] = ld_cached_x(row, lane + k * RW);
            d[k] = ld_cached_dy(row, lane + k * RW);
        }
//#endunroll
//#if saved
//#else
        {
            var q = V(0.0);
//#unroll k
            {
                let x = from_cache(c[k]);
                q += in_prefix(lane + k * RW, x * x);
            }
//#endunroll
            let ms = wg_sum_decide(hsum(q), lid) * inv_len;
            retry = out_of_range(ms) && n > 0u;
            rrms = inv_root(ms, 0);
        }
//#endif
//#if shared
        if retry {
            rms_norm_backward_retry(row, lane, group, &pw);
            continue;
        }
//#endif
        var s = V(0.0);
//#unroll k
        if lane + k * RW < n {
            s += grad_g(from_cache(d[k]), lane + k * RW) * (from_cache(c[k]) * rrms);
        }
//#endunroll
        let t = wg_sum(hsum(s), lid) * inv_len;
        // A row to be retried writes nothing yet: dx may be accumulated.
//#unroll k
        if lane + k * RW < n {
            let i = lane + k * RW;
            let dy = from_cache(d[k]);
            let xr = from_cache(c[k]) * rrms;
            var v = rrms * (grad_g(dy, i) - in_prefix(i, xr * t));
            if has(OPT_ACCUMULATE_DX) {
                v += ld_dx(row, i);
            }
            if !retry {
                st_dx(row, i, v);
            }
            pw[k] += select(dy * xr, V(0.0), retry);
        }
//#endunroll
//#else
//#if saved
//#else
        {
            var q = V(0.0);
            for (var i = lane; i < n; i += RW) {
                let v = ld_x(row, i);
                q += in_prefix(i, v * v);
            }
            let ms = wg_sum_decide(hsum(q), lid) * inv_len;
            retry = out_of_range(ms) && n > 0u;
            rrms = inv_root(ms, 0);
        }
//#endif
//#if shared
        if retry {
//#if retry_held
            rms_norm_backward_retry(row, lane, group, &pw);
//#else
            rms_norm_backward_retry(row, lane, group, r == 0u);
//#endif
            continue;
        }
//#endif
        var s = V(0.0);
        for (var i = lane; i < n; i += RW) {
            s += grad_g(ld_dy(row, i), i) * (ld_x(row, i) * rrms);
        }
        let t = wg_sum(hsum(s), lid) * inv_len;
//#if held_partials
        // The row read again, the partial sums kept in registers (`streamed`).
//#unroll k
        if lane + k * RW < n {
            pw[k] += streamed_dx(row, lane + k * RW, rrms, t, retry);
        }
//#endunroll
//#else
        for (var i = lane; i < n; i += RW) {
            let p = streamed_dx(row, i, rrms, t, retry);
            if has(HAS_DWEIGHT) {
                let before = select(ld_partials(group, i), V(0.0), r == 0u);
                st_partials(group, i, before + p);
            }
        }
//#endif
//#endif
//#if shared
//#else
        if retry {
            mark_retry(r);
        }
//#endif
    }
//#if shared
//#else
//#if held_partials
    store_held_partials(first, lid, slot, lane, group, &pw);
//#endif
    // Rows whose sum of squares left f32's range, again (scale.wgsl).
    deferred_retries(slot, lane, group, lid);
//#endif
//#if retry_held
    store_held_partials(first, lid, slot, lane, group, &pw);
//#endif
}

//#if held_partials
// This workgroup's partial row from the sums held in registers.
fn store_held_partials(
    first: u32,
    lid: u32,
    slot: u32,
    lane: u32,
    group: u32,
    pw: ptr<function, array<V, CACHE>>,
) {
    if has(HAS_DWEIGHT) {
        store_held_row(first, lid, slot, lane, group, pw);
    }
}
//#endif

//#if shared
//#else
// What scale.wgsl's deferred_retries calls: a retried row's dx, and its terms added to the
// workgroup's partial row in memory.
fn retry_in_memory(row: u32, lane: u32, group: u32) {
    rms_norm_backward_retry(row, lane, group, false);
}
//#endif

// The row again, rrms from the row scaled by 2^-e, taken by each invocation alone
// (scale.wgsl): dx, and the row's contribution to this workgroup's partial sums (which the
// first attempt left out). A row holding inf or NaN goes through unscaled, as before.
//#if retry_held
fn rms_norm_backward_retry(row: u32, lane: u32, group: u32, pw: ptr<function, array<V, CACHE>>) {
//#else
// `fresh`: the workgroup's partial row is not started yet (the retried row is its first,
// taken at once in a `shared` variant); the deferred retry comes after every row.
fn rms_norm_backward_retry(row: u32, lane: u32, group: u32, fresh: bool) {
//#endif
    retry_barrier();
    var e = row_exponent(row);
    if e == NO_SCALE {
        e = 0;
    }
    // The rrms of the scaled row (xhat = (x * 2^-e) * rs) and the true one.
    let rs = inv_root(scaled_mean_square(row, e), e);
    let rrms = times_pow2(rs, -e);
    let n = row_vs();
    var st = no_sum();
    for (var i0 = 0u; i0 < n; i0 += SERIAL) {
//#unroll ui SERIAL
        if i0 + ui < n {
            let i = i0 + ui;
            st = add(st, grad_g(ld_dy(row, i), i) * (scale_v(ld_x(row, i), e) * rs));
        }
//#endunroll
    }
    let t = sum_of(st) / f32(params.stat_len);
    retry_barrier();
//#if retry_held
//#unroll k
    if lane + k * RW < n {
        let i = lane + k * RW;
        let xh = scale_v(ld_x(row, i), e) * rs;
        let d = ld_dy(row, i);
        var v = rrms * (grad_g(d, i) - in_prefix(i, xh * t));
        if has(OPT_ACCUMULATE_DX) {
            v += ld_dx(row, i);
        }
        st_dx(row, i, v);
        (*pw)[k] += d * xh;
    }
//#endunroll
//#else
    for (var i = lane; i < n; i += RW) {
        let xh = scale_v(ld_x(row, i), e) * rs;
        let d = ld_dy(row, i);
        var v = rrms * (grad_g(d, i) - in_prefix(i, xh * t));
        if has(OPT_ACCUMULATE_DX) {
            v += ld_dx(row, i);
        }
        st_dx(row, i, v);
        // Added to what the workgroup's rows before this one left, unless it is the first.
        if has(HAS_DWEIGHT) {
            let before = select(ld_partials(group, i), V(0.0), fresh);
            st_partials(group, i, before + d * xh);
        }
    }
//#endif
}

// dx of the row's i-th V read from memory (stored, unless the row is to be retried), and its
// term of the dweight partial sum (0 for a row to be retried).
fn streamed_dx(row: u32, i: u32, rrms: f32, t: f32, retry: bool) -> V {
    let xh = ld_x(row, i) * rrms;
    let d = ld_dy(row, i);
    var v = rrms * (grad_g(d, i) - in_prefix(i, xh * t));
    if has(OPT_ACCUMULATE_DX) {
        v += ld_dx(row, i);
    }
    if !retry {
        st_dx(row, i, v);
    }
    return select(d * xh, V(0.0), retry);
}

// The row as the scaled retry reads it (scale.wgsl): x is never written here.
fn ld_all(row: u32, i: u32) -> V {
    return ld_x(row, i);
}

// g = dy * weight (or * (1 + weight)) for the i-th V of the row.
fn grad_g(d: V, i: u32) -> V {
    if has(HAS_WEIGHT) {
        var w = ld_weight(i);
        if has(OPT_GEMMA_OFFSET) {
            w += V(1.0);
        }
        return d * w;
    }
    return d;
}
