// LayerNorm backward, stage 1: dx for every row, and per-workgroup column partial sums of
// dy * xhat and dy, which param_grad.wgsl reduces to dweight and dbias in a fixed order.
// Strided V's (D % 4 != 0) have lanes past the row, which load 0: dy there is 0, so every
// product with it is (NaN where that lane's xhat overflows: a lane whose dx and partial sums
// are never stored), and only sums of x - p need in_row.
// CPU mirror: `wgpu_norm::reference::layer_norm_backward`.
//
// With xhat = (x - mean) * rstd and g = dy * weight:
//     dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
// With the statistics saved by the forward pass, one reduction gives everything: over
// u = x - p, p the saved mean, it sums u, g and g * u, so that the mean is p + mean(u)
// exactly (the saved mean, correctly rounded to f32, is off by up to half an ulp of the
// data's offset, 5e-4 at 1e4, a large error in x - mean when the spread is 1: here it is
// only the pivot, near the mean, so u is exact and mean(u) small), and
//     mean(g * xhat) = rstd * (mean(g * u) - mean(u) * mean(g)),
// where mean(u) * mean(g) cancels nothing much. rstd's rounding is relative, and harmless.
// Without saved statistics they are recomputed as layer_norm.wgsl computes them (each
// invocation's pivot and two passes, then one reduction, wg_moments). Either way a row whose
// sums leave f32's range is taken again scaled by a power of two (scale.wgsl).

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
    var pb: array<V, CACHE>;
//#endif
    for (var r = 0u; r < params.rows_per_group; r++) {
        if step_row(group, r, 0u) >= params.rows {
            break;
        }
        let row = step_row(group, r, slot);
        // None for a slot past the last row, which still takes part in every barrier.
        let n = select(0u, row_vs(), row < params.rows);
        let inv_dim = 1.0 / f32(params.dim);
        // xhat = ((x - p) - mu) * rstd, with p near the mean: the saved mean, or the
        // recomputed one's reference (wg_moments).
        var p = 0.0;
//#if saved
        if n > 0u {
            p = ld_mean(row);
        }
//#endif
        // rstd, (mean(g), mean(g * xhat)), and whether the row's sums left f32's range.
        var rstd = 0.0;
        var t = vec2<f32>(0.0);
        var retry = false;
//#if cached
        // x and dy stay in registers (a 16-bit row's as its storage words, `Cached`). Each
        // pass takes x - p and xhat from the cache again rather than writing them back: an
        // update in place under the row's bound keeps two copies of each V live.
        var c: array<Cached, CACHE>;
        var d: array<Cached, CACHE>;
//#unroll k
        if lane + k * RW < n {
            c[k] = ld_cached_x(row, lane + k * RW);
            d[k] = ld_cached_dy(row, lane + k * RW);
        }
//#endunroll
        var mu = 0.0;
//#if saved
        {
            if n > 0u {
                rstd = ld_rstd(row);
            }
            var s = vec3<f32>(0.0);
//#unroll k
            if lane + k * RW < n {
                let u = in_row(lane + k * RW, from_cache(c[k]) - V(p));
                let g = grad_g(from_cache(d[k]), lane + k * RW);
                s += vec3<f32>(hsum(u), hsum(g), hsum(g * u));
            }
//#endunroll
            let sums = row_sum3(s, lid) * inv_dim;
            retry = !(finite(sums.x) && finite(sums.z)) && n > 0u;
            mu = sums.x;
            t = vec2<f32>(sums.y, rstd * (sums.z - sums.x * sums.y));
        }
//#else
        {
            // As the forward: each invocation's sum of x - lp (lp its first element) and of
            // the squares around its own mean, then one reduction (wg_moments).
            var lp = 0.0;
            if lane < n {
                lp = first_elem(from_cache(c[0]), lane);
            }
            var s = V(0.0);
            var count = 0.0;
//#unroll k
            if lane + k * RW < n {
                s += in_row(lane + k * RW, from_cache(c[k]) - V(lp));
                count += hsum(in_row(lane + k * RW, V(1.0)));
            }
//#endunroll
            let o = V(hsum(s) / max(count, 1.0));
            var q = V(0.0);
//#unroll k
            if lane + k * RW < n {
                let u = in_row(lane + k * RW, (from_cache(c[k]) - V(lp)) - o);
                q += u * u;
            }
//#endunroll
            let mo = wg_moments_decide(vec4<f32>(count, lp, hsum(s), hsum(q)), lid);
            p = mo.x;
            mu = mo.y;
            let v = mo.z * inv_dim;
            retry = out_of_range(v) && n > 0u;
            rstd = inv_root(v, 0);
            var s2 = vec3<f32>(0.0);
//#unroll k
            if lane + k * RW < n {
                let xh = in_row(lane + k * RW, (from_cache(c[k]) - V(p)) - V(mu)) * rstd;
                let g = grad_g(from_cache(d[k]), lane + k * RW);
                s2 += vec3<f32>(hsum(g), hsum(g * xh), 0.0);
            }
//#endunroll
            t = row_sum3(s2, lid).xy * inv_dim;
        }
//#endif
//#if shared
        if retry {
            layer_norm_backward_retry(row, lane, group, &pw, &pb);
            continue;
        }
//#endif
        // xhat as streamed_dx takes it (lanes past the row have dy = 0). A row to be retried
        // writes nothing yet: dx may be accumulated.
//#unroll k
        if lane + k * RW < n {
            let i = lane + k * RW;
            let dy = from_cache(d[k]);
            let xh = ((from_cache(c[k]) - V(p)) - V(mu)) * rstd;
            var v = rstd * (grad_g(dy, i) - V(t.x) - xh * t.y);
            if has(OPT_ACCUMULATE_DX) {
                v += ld_dx(row, i);
            }
            if !retry {
                st_dx(row, i, v);
            }
            pw[k] += select(dy * xh, V(0.0), retry);
            pb[k] += select(dy, V(0.0), retry);
        }
//#endunroll
//#else
        // Rows too long for registers: passes over x and dy from memory (mostly cache).
        var mu = 0.0;
//#if saved
        {
            rstd = ld_rstd(row);
            var s = vec3<f32>(0.0);
            for (var i = lane; i < n; i += RW) {
                let u = in_row(i, ld_x(row, i) - V(p));
                let g = grad_g(ld_dy(row, i), i);
                s += vec3<f32>(hsum(u), hsum(g), hsum(g * u));
            }
            let sums = row_sum3(s, lid) * inv_dim;
            retry = !(finite(sums.x) && finite(sums.z));
            mu = sums.x;
            t = vec2<f32>(sums.y, rstd * (sums.z - sums.x * sums.y));
        }
//#else
        {
            var lp = 0.0;
            if lane < n {
                lp = first_elem(ld_x(row, lane), lane);
            }
            var s = V(0.0);
            var count = 0.0;
            for (var i = lane; i < n; i += RW) {
                s += in_row(i, ld_x(row, i) - V(lp));
                count += hsum(in_row(i, V(1.0)));
            }
            let o = V(hsum(s) / max(count, 1.0));
            var q = V(0.0);
            for (var i = lane; i < n; i += RW) {
                let u = in_row(i, (ld_x(row, i) - V(lp)) - o);
                q += u * u;
            }
            let mo = wg_moments_decide(vec4<f32>(count, lp, hsum(s), hsum(q)), lid);
            p = mo.x;
            mu = mo.y;
            let v = mo.z * inv_dim;
            retry = out_of_range(v);
            rstd = inv_root(v, 0);
            var s2 = vec3<f32>(0.0);
            for (var i = lane; i < n; i += RW) {
                let xh = ((ld_x(row, i) - V(p)) - V(mu)) * rstd;
                let g = grad_g(ld_dy(row, i), i);
                s2 += vec3<f32>(hsum(g), hsum(g * xh), 0.0);
            }
            t = row_sum3(s2, lid).xy * inv_dim;
        }
//#endif
//#if shared
        if retry {
//#if retry_held
            layer_norm_backward_retry(row, lane, group, &pw, &pb);
//#else
            layer_norm_backward_retry(row, lane, group, r == 0u);
//#endif
            continue;
        }
//#endif
        let st = Stats(p, mu, rstd, t);
//#if held_partials
        // The row read again, the partial sums kept in registers (`streamed`).
//#unroll k
        if lane + k * RW < n {
            let terms = streamed_dx(row, lane + k * RW, st, retry);
            pw[k] += terms.w;
            pb[k] += terms.b;
        }
//#endunroll
//#else
        // dbias partial rows follow the dweight ones when both are wanted.
        let kb = select(0u, params.part_rows, has(HAS_DWEIGHT)) + group;
        for (var i = lane; i < n; i += RW) {
            let terms = streamed_dx(row, i, st, retry);
            // This workgroup owns its partial row: no other invocation touches it.
            if has(HAS_DWEIGHT) {
                let before = select(ld_partials(group, i), V(0.0), r == 0u);
                st_partials(group, i, before + terms.w);
            }
            if has(HAS_DBIAS) {
                let before = select(ld_partials(kb, i), V(0.0), r == 0u);
                st_partials(kb, i, before + terms.b);
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
    store_held_partials(first, lid, slot, lane, group, &pw, &pb);
//#endif
    // Rows whose sums left f32's range, again (scale.wgsl).
    deferred_retries(slot, lane, group, lid);
//#endif
//#if retry_held
    store_held_partials(first, lid, slot, lane, group, &pw, &pb);
//#endif
}

//#if held_partials
// This workgroup's partial rows from the sums held in registers; dbias partial rows follow the
// dweight ones when both are wanted.
fn store_held_partials(
    first: u32,
    lid: u32,
    slot: u32,
    lane: u32,
    group: u32,
    pw: ptr<function, array<V, CACHE>>,
    pb: ptr<function, array<V, CACHE>>,
) {
    if has(HAS_DWEIGHT) {
        store_held_row(first, lid, slot, lane, group, pw);
    }
    if has(HAS_DBIAS) {
        let kb = select(0u, params.part_rows, has(HAS_DWEIGHT)) + group;
        store_held_row(first, lid, slot, lane, kb, pb);
    }
}
//#endif

//#if shared
//#else
// What scale.wgsl's deferred_retries calls: a retried row's dx, and its terms added to the
// workgroup's partial row in memory.
fn retry_in_memory(row: u32, lane: u32, group: u32) {
    layer_norm_backward_retry(row, lane, group, false);
}
//#endif

// The row again, scaled by 2^-e, its statistics taken by each invocation alone (scale.wgsl):
// dx, and the row's contribution to this workgroup's partial sums (which the first attempt
// left out). A row holding inf or NaN goes through unscaled and comes out NaN, as before.
//#if retry_held
fn layer_norm_backward_retry(
    row: u32,
    lane: u32,
    group: u32,
    pw: ptr<function, array<V, CACHE>>,
    pb: ptr<function, array<V, CACHE>>,
) {
//#else
// `fresh`: the workgroup's partial row is not started yet (the retried row is its first,
// taken at once in a `shared` variant); the deferred retry comes after every row.
fn layer_norm_backward_retry(row: u32, lane: u32, group: u32, fresh: bool) {
//#endif
    retry_barrier();
    var e = row_exponent(row);
    if e == NO_SCALE {
        e = 0;
    }
    // A pivot near the mean as scaled, the mean of the scaled x - ps, the rstd of the scaled
    // row and the true one, and (mean(g), mean(g * xhat)).
    var ps = 0.0;
    var mu = 0.0;
    var rs = 0.0;
    var rstd = 0.0;
    var t = vec2<f32>(0.0);
//#if saved
    {
        // The saved mean, scaled (the first element where that is not finite).
        ps = times_pow2(ld_mean(row), -e);
        if !finite(ps) {
            ps = first_lane(scale_v(ld_x(row, 0u), e));
        }
        rstd = ld_rstd(row);
        let sums = scaled_sums(row, e, ps);
        mu = sums.x;
        rs = times_pow2(rstd, e);
        t = vec2<f32>(sums.y, rs * (sums.z - sums.x * sums.y));
    }
//#else
    {
        let mo = scaled_moments(row, e);
        ps = mo.pivot;
        mu = mo.mean;
        rs = inv_root(mo.var_, e);
        rstd = times_pow2(rs, -e);
        t = scaled_grad_sums(row, e, ps, mu, rs);
    }
//#endif
    retry_barrier();
    let n = row_vs();
//#if retry_held
//#unroll k
    if lane + k * RW < n {
        let i = lane + k * RW;
        let xh = ((scale_v(ld_x(row, i), e) - V(ps)) - V(mu)) * rs;
        let d = ld_dy(row, i);
        var v = rstd * (grad_g(d, i) - V(t.x) - xh * t.y);
        if has(OPT_ACCUMULATE_DX) {
            v += ld_dx(row, i);
        }
        st_dx(row, i, v);
        (*pw)[k] += d * xh;
        (*pb)[k] += d;
    }
//#endunroll
//#else
    let kb = select(0u, params.part_rows, has(HAS_DWEIGHT)) + group;
    for (var i = lane; i < n; i += RW) {
        let xh = ((scale_v(ld_x(row, i), e) - V(ps)) - V(mu)) * rs;
        let d = ld_dy(row, i);
        var v = rstd * (grad_g(d, i) - V(t.x) - xh * t.y);
        if has(OPT_ACCUMULATE_DX) {
            v += ld_dx(row, i);
        }
        st_dx(row, i, v);
        // Added to what the workgroup's rows before this one left, unless it is the first.
        if has(HAS_DWEIGHT) {
            let before = select(ld_partials(group, i), V(0.0), fresh);
            st_partials(group, i, before + d * xh);
        }
        if has(HAS_DBIAS) {
            let before = select(ld_partials(kb, i), V(0.0), fresh);
            st_partials(kb, i, before + d);
        }
    }
//#endif
}

// A row's statistics as the last pass over a streamed row needs them: its pivot p (the
// saved mean, or wg_moments' reference r), the mean of x - p, rstd, and
// (mean(g), mean(g * xhat)).
struct Stats {
    p: f32,
    mu: f32,
    rstd: f32,
    t: vec2<f32>,
}

// The row's i-th V's terms of the dweight and dbias partial sums (0 for a row to be retried).
struct Terms {
    w: V,
    b: V,
}

// dx of the row's i-th V read from memory (stored, unless the row is to be retried), and its
// terms of the partial sums.
fn streamed_dx(row: u32, i: u32, st: Stats, retry: bool) -> Terms {
    let xh = ((ld_x(row, i) - V(st.p)) - V(st.mu)) * st.rstd;
    let d = ld_dy(row, i);
    var v = st.rstd * (grad_g(d, i) - V(st.t.x) - xh * st.t.y);
    if has(OPT_ACCUMULATE_DX) {
        v += ld_dx(row, i);
    }
    if !retry {
        st_dx(row, i, v);
    }
    return Terms(select(d * xh, V(0.0), retry), select(d, V(0.0), retry));
}

// The row as the scaled retry reads it (scale.wgsl): x is never written here.
fn ld_all(row: u32, i: u32) -> V {
    return ld_x(row, i);
}

// The saved-statistics path's three sums of the row scaled by 2^-e (u = x * 2^-e - ps: u,
// g and g * u, each divided by D), taken by one invocation over the whole row, in blocks.
fn scaled_sums(row: u32, e: i32, ps: f32) -> vec3<f32> {
    var su = no_sum();
    var sg = no_sum();
    var sgu = no_sum();
    let n = row_vs();
    for (var i0 = 0u; i0 < n; i0 += SERIAL) {
//#unroll ui SERIAL
        if i0 + ui < n {
            let u = in_row(i0 + ui, scale_v(ld_x(row, i0 + ui), e) - V(ps));
            let g = grad_g(ld_dy(row, i0 + ui), i0 + ui);
            su = add(su, u);
            sg = add(sg, g);
            sgu = add(sgu, g * u);
        }
//#endunroll
    }
    return vec3<f32>(sum_of(su), sum_of(sg), sum_of(sgu)) / f32(params.dim);
}

// mean(g) and mean(g * xhat) over the row scaled by 2^-e, by one invocation, in blocks.
fn scaled_grad_sums(row: u32, e: i32, ps: f32, mu: f32, rs: f32) -> vec2<f32> {
    var sg = no_sum();
    var sgx = no_sum();
    let n = row_vs();
    for (var i0 = 0u; i0 < n; i0 += SERIAL) {
//#unroll ui SERIAL
        if i0 + ui < n {
            let xh = ((scale_v(ld_x(row, i0 + ui), e) - V(ps)) - V(mu)) * rs;
            let g = grad_g(ld_dy(row, i0 + ui), i0 + ui);
            sg = add(sg, g);
            sgx = add(sgx, g * xh);
        }
//#endunroll
    }
    return vec2<f32>(sum_of(sg), sum_of(sgx)) / f32(params.dim);
}

// g = dy * weight for the i-th V of the row.
fn grad_g(d: V, i: u32) -> V {
    if has(HAS_WEIGHT) {
        return d * ld_weight(i);
    }
    return d;
}
