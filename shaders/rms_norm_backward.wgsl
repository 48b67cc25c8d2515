// RMSNorm backward, stage 1: dx for every row, and per-workgroup column partial sums of
// dy * xhat, which param_grad.wgsl reduces to dweight in a fixed order.
// CPU mirror: `wgpu_norm::reference::rms_norm_backward`.
//
// With xhat = x * rrms and g = dy * weight (or dy * (1 + weight), OPT_GEMMA_OFFSET):
//     dx = rrms * (g - xhat * sum(g * xhat) / k)   for the first k = stat_len elements,
//     dx = rrms * g                                 for the rest (pRMSNorm; k = D otherwise),
// since only the first k elements enter rrms. rrms comes from the forward pass (saved)
// or is recomputed as rms_norm.wgsl does.

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    reduce_init(ids);
    let lid = ids.lid;
    let group = group_index(ids);
    let first = group * params.rows_per_group;
//#if cached
    var pw: array<V, CACHE>;
//#endif
    for (var r = 0u; r < params.rows_per_group; r++) {
        if first + r >= params.rows {
            break;
        }
        let row = first + r;
        let n = params.dim / VW;
        let inv_len = 1.0 / f32(params.stat_len);
        let saved = has(HAS_RRMS);
        var rrms = 0.0;
        if saved {
            rrms = ld_rrms(row);
        }
//#if cached
        var c: array<V, CACHE>;
        var d: array<V, CACHE>;
//#unroll k
        if lid + k * WG < n {
            c[k] = ld_x(row, lid + k * WG);
            d[k] = ld_dy(row, lid + k * WG);
        }
//#endunroll
        if !saved {
            var q = V(0.0);
//#unroll k
            q += in_prefix(lid + k * WG, c[k] * c[k]);
//#endunroll
            rrms = 1.0 / sqrt(wg_sum(hsum(q), lid) * inv_len + params.eps);
        }
        var s = V(0.0);
//#unroll k
        if lid + k * WG < n {
            c[k] *= rrms;
            s += grad_g(d[k], lid + k * WG) * c[k];
        }
//#endunroll
        let t = wg_sum(hsum(s), lid) * inv_len;
//#unroll k
        if lid + k * WG < n {
            let i = lid + k * WG;
            var v = rrms * (grad_g(d[k], i) - in_prefix(i, c[k] * t));
            if has(OPT_ACCUMULATE_DX) {
                v += ld_dx(row, i);
            }
            st_dx(row, i, v);
            pw[k] += d[k] * c[k];
        }
//#endunroll
//#else
        if !saved {
            var q = V(0.0);
            for (var i = lid; i < n; i += WG) {
                let v = ld_x(row, i);
                q += in_prefix(i, v * v);
            }
            rrms = 1.0 / sqrt(wg_sum(hsum(q), lid) * inv_len + params.eps);
        }
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
            st_dx(row, i, v);
            if has(HAS_DWEIGHT) {
                st_partials(group, i, select(ld_partials(group, i), V(0.0), r == 0u) + d * xh);
            }
        }
//#endif
    }
//#if cached
    // The grid can hold more workgroups than there are groups of rows: those write nothing.
    if first >= params.rows {
        return;
    }
    let n = params.dim / VW;
//#unroll k
    if lid + k * WG < n && has(HAS_DWEIGHT) {
        st_partials(group, lid + k * WG, pw[k]);
    }
//#endunroll
//#endif
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
