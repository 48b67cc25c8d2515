// LayerNorm backward, stage 1: dx for every row, and per-workgroup column partial sums of
// dy * xhat and dy, which param_grad.wgsl reduces to dweight and dbias in a fixed order.
// CPU mirror: `wgpu_norm::reference::layer_norm_backward`.
//
// With xhat = (x - mean) * rstd and g = dy * weight:
//     dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
// The statistics come from the forward pass (mean and rstd) or are recomputed
// exactly as layer_norm.wgsl computes them (pivot, two passes).

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    reduce_init(ids);
    let lid = ids.lid;
    let group = group_index(ids);
    let first = group * params.rows_per_group;
//#if cached
    // Column partials stay in registers across this workgroup's rows.
    var pw: array<V, CACHE>;
    var pb: array<V, CACHE>;
//#endif
    for (var r = 0u; r < params.rows_per_group; r++) {
        if first + r >= params.rows {
            break;
        }
        let row = first + r;
        let n = params.dim / VW;
        let inv_dim = 1.0 / f32(params.dim);
        let saved = has(HAS_MEAN);
        var mean = 0.0;
        var rstd = 0.0;
        var p = 0.0;
        if saved {
            mean = ld_mean(row);
            rstd = ld_rstd(row);
        } else {
            p = first_lane(ld_x(row, 0u));
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
            // As the forward: sums over x - p, then a second pass for the variance.
            var s = V(0.0);
//#unroll k
            if lid + k * WG < n {
                c[k] -= V(p);
                s += c[k];
            }
//#endunroll
            let m = wg_sum(hsum(s), lid) * inv_dim;
            var q = V(0.0);
//#unroll k
            if lid + k * WG < n {
                c[k] -= V(m);
                q += c[k] * c[k];
            }
//#endunroll
            rstd = 1.0 / sqrt(wg_sum(hsum(q), lid) * inv_dim + params.eps);
        } else {
//#unroll k
            c[k] -= V(mean);
//#endunroll
        }
        var sums = vec2<f32>(0.0);
//#unroll k
        if lid + k * WG < n {
            c[k] *= rstd;
            let g = grad_g(d[k], lid + k * WG);
            sums += vec2<f32>(hsum(g), hsum(g * c[k]));
        }
//#endunroll
        let t = wg_sum2(sums, lid) * inv_dim;
//#unroll k
        if lid + k * WG < n {
            let i = lid + k * WG;
            var v = rstd * (grad_g(d[k], i) - V(t.x) - c[k] * t.y);
            if has(OPT_ACCUMULATE_DX) {
                v += ld_dx(row, i);
            }
            st_dx(row, i, v);
            pw[k] += d[k] * c[k];
            pb[k] += d[k];
        }
//#endunroll
//#else
        // Rows too long for registers: passes over x and dy from memory (mostly cache).
        let pv = V(p);
        var m = mean;
        if !saved {
            var s = V(0.0);
            for (var i = lid; i < n; i += WG) {
                s += ld_x(row, i) - pv;
            }
            m = wg_sum(hsum(s), lid) * inv_dim;
            var q = V(0.0);
            for (var i = lid; i < n; i += WG) {
                let e = (ld_x(row, i) - pv) - V(m);
                q += e * e;
            }
            rstd = 1.0 / sqrt(wg_sum(hsum(q), lid) * inv_dim + params.eps);
        }
        var sums = vec2<f32>(0.0);
        for (var i = lid; i < n; i += WG) {
            let xh = ((ld_x(row, i) - pv) - V(m)) * rstd;
            let g = grad_g(ld_dy(row, i), i);
            sums += vec2<f32>(hsum(g), hsum(g * xh));
        }
        let t = wg_sum2(sums, lid) * inv_dim;
        // dbias partial rows follow the dweight ones when both are wanted.
        let kb = select(0u, params.part_rows, has(HAS_DWEIGHT)) + group;
        for (var i = lid; i < n; i += WG) {
            let xh = ((ld_x(row, i) - pv) - V(m)) * rstd;
            let d = ld_dy(row, i);
            var v = rstd * (grad_g(d, i) - V(t.x) - xh * t.y);
            if has(OPT_ACCUMULATE_DX) {
                v += ld_dx(row, i);
            }
            st_dx(row, i, v);
            // This workgroup owns its partial row: no other invocation touches it.
            if has(HAS_DWEIGHT) {
                st_partials(group, i, select(ld_partials(group, i), V(0.0), r == 0u) + d * xh);
            }
            if has(HAS_DBIAS) {
                st_partials(kb, i, select(ld_partials(kb, i), V(0.0), r == 0u) + d);
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
    let kb = select(0u, params.part_rows, has(HAS_DWEIGHT)) + group;
//#unroll k
    if lid + k * WG < n {
        if has(HAS_DWEIGHT) {
            st_partials(group, lid + k * WG, pw[k]);
        }
        if has(HAS_DBIAS) {
            st_partials(kb, lid + k * WG, pb[k]);
        }
    }
//#endunroll
//#endif
}

// g = dy * weight for the i-th V of the row.
fn grad_g(d: V, i: u32) -> V {
    if has(HAS_WEIGHT) {
        return d * ld_weight(i);
    }
    return d;
}
