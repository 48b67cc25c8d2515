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
    let group = group_index(g);
    let first = group * params.rows_per_group;
//#if cached
    var pw: array<V, CACHE>;
//#endif
    for (var r = 0u; r < params.rows_per_group; r++) {
        if first + r >= params.rows {
            break;
        }
        let row = first + r;
        let n = row_vs();
        let inv_len = 1.0 / f32(params.stat_len);
        // A recomputed rrms whose sum of squares left f32's range is taken again (scale.wgsl;
        // a saved one needs no squares).
        var rrms = 0.0;
        var retry = false;
//#if saved
        rrms = ld_rrms(row);
//#endif
//#if cached
        var c: array<V, CACHE>;
        var d: array<V, CACHE>;
//#unroll k
        if lid + k * WG < n {
            c[k] = ld_x(row, lid + k * WG);
            d[k] = ld_dy(row, lid + k * WG);
        }
//#endunroll
//#if saved
//#else
        {
            var q = V(0.0);
//#unroll k
            q += in_prefix(lid + k * WG, c[k] * c[k]);
//#endunroll
            let ms = wg_sum_decide(hsum(q), lid) * inv_len;
            retry = out_of_range(ms);
            rrms = inv_root(ms, 0);
        }
//#endif
//#if shared
        if retry {
            rms_norm_backward_retry(row, lid, group, &pw);
            continue;
        }
//#endif
        var s = V(0.0);
//#unroll k
        if lid + k * WG < n {
            c[k] *= rrms;
            s += grad_g(d[k], lid + k * WG) * c[k];
        }
//#endunroll
        let t = wg_sum(hsum(s), lid) * inv_len;
        // A row to be retried writes nothing yet: dx may be accumulated.
//#unroll k
        if lid + k * WG < n {
            let i = lid + k * WG;
            var v = rrms * (grad_g(d[k], i) - in_prefix(i, c[k] * t));
            if has(OPT_ACCUMULATE_DX) {
                v += ld_dx(row, i);
            }
            if !retry {
                st_dx(row, i, v);
            }
            pw[k] += select(d[k] * c[k], V(0.0), retry);
        }
//#endunroll
//#else
//#if saved
//#else
        {
            var q = V(0.0);
            for (var i = lid; i < n; i += WG) {
                let v = ld_x(row, i);
                q += in_prefix(i, v * v);
            }
            let ms = wg_sum_decide(hsum(q), lid) * inv_len;
            retry = out_of_range(ms);
            rrms = inv_root(ms, 0);
        }
//#endif
//#if shared
        if retry {
            rms_norm_backward_retry(row, lid, group);
            continue;
        }
//#endif
        var s = V(0.0);
        for (var i = lid; i < n; i += WG) {
            s += grad_g(ld_dy(row, i), i) * (ld_x(row, i) * rrms);
        }
        let t = wg_sum(hsum(s), lid) * inv_len;
        for (var i = lid; i < n; i += WG) {
            let xh = ld_x(row, i) * rrms;
            let d = ld_dy(row, i);
            var v = rrms * (grad_g(d, i) - in_prefix(i, xh * t));
            if has(OPT_ACCUMULATE_DX) {
                v += ld_dx(row, i);
            }
            if !retry {
                st_dx(row, i, v);
            }
            if has(HAS_DWEIGHT) {
                let before = select(ld_partials(group, i), V(0.0), r == 0u);
                st_partials(group, i, before + select(d * xh, V(0.0), retry));
            }
        }
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
    // Rows whose sum of squares left f32's range, again (scale.wgsl).
    if retry_any {
        for (var r = 0u; r < params.rows_per_group; r++) {
            if marked(r) {
//#if cached
                rms_norm_backward_retry(first + r, lid, group, &pw);
//#else
                rms_norm_backward_retry(first + r, lid, group);
//#endif
            }
        }
    }
//#endif
//#if cached
    // The grid can hold more workgroups than there are groups of rows: those write nothing.
    if first >= params.rows {
        return;
    }
    let n = row_vs();
//#unroll k
    if lid + k * WG < n && has(HAS_DWEIGHT) {
        st_partials(group, lid + k * WG, pw[k]);
    }
//#endunroll
//#endif
}

// The row again, rrms from the row scaled by 2^-e, taken by each invocation alone
// (scale.wgsl): dx, and the row's contribution to this workgroup's partial sums (which the
// first attempt left out). A row holding inf or NaN goes through unscaled, as before.
//#if cached
fn rms_norm_backward_retry(row: u32, lid: u32, group: u32, pw: ptr<function, array<V, CACHE>>) {
//#else
fn rms_norm_backward_retry(row: u32, lid: u32, group: u32) {
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
//#if cached
//#unroll k
    if lid + k * WG < n {
        let i = lid + k * WG;
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
    for (var i = lid; i < n; i += WG) {
        let xh = scale_v(ld_x(row, i), e) * rs;
        let d = ld_dy(row, i);
        var v = rrms * (grad_g(d, i) - in_prefix(i, xh * t));
        if has(OPT_ACCUMULATE_DX) {
            v += ld_dx(row, i);
        }
        st_dx(row, i, v);
        // The first attempt started this partial row (at row r == 0) or left it as it was.
        if has(HAS_DWEIGHT) {
            st_partials(group, i, ld_partials(group, i) + d * xh);
        }
    }
//#endif
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
