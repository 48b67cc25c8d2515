// Rows whose squares leave f32's range. A row with |x| (or, for LayerNorm, a spread) beyond
// about 1.8e19 has squares that overflow, and a row below about 1e-19 squares that underflow
// (GPUs that flush subnormals lose them all), which matters when eps is as small. Such a row
// is taken again scaled by 2^-e, e chosen so that its largest |x| is in [1, 2): scaling by a
// power of two is exact, and the normalized values are the same.
//
// Only those rows pay for it. The test is a few scalar operations on the result of the row's
// last reduction, and the retry has each invocation compute the scaled statistics alone,
// over the whole row (ld_all, defined by each kernel), SERIAL V's an iteration, summing in
// blocks so that the serial order costs no accuracy. That needs no barrier, so a workgroup
// retries its marked rows after all its rows (mark_retry), and the loop over rows carries
// none of the retry's weight (inside it, the retry slowed a CPU adapter by a tenth); only the
// backward's short rows side by side, whose slots add to one partial row, take their
// retries in turns behind barriers (workgroup_retries). In `shared` variants an output may be
// written over an input, which would then be gone: there a row is retried at once, its test
// made uniform by wg_sum_decide (wg_moments_decide in LayerNorm), its reads of the whole row
// bracketed by storage barriers. Rows holding inf or NaN are taken unscaled (NO_SCALE):
// scaling cannot mend them.

// Rows this invocation works on marked for the retry, by the workgroup's step that took them
// (ROW_WORDS from the host bounds the steps). Where short rows lie side by side, each
// invocation marks its own row's steps.
var<private> retry_marks: array<u32, ROW_WORDS>;
var<private> retry_any: bool;

fn mark_retry(r: u32) {
    retry_marks[r / 32u] |= 1u << (r % 32u);
    retry_any = true;
}

fn marked(r: u32) -> bool {
    return ((retry_marks[r / 32u] >> (r % 32u)) & 1u) != 0u;
}

//#if partials
//#if side_by_side
var<workgroup> retry_seen: atomic<u32>;
var<workgroup> retry_told: u32;

// Whether any invocation of the workgroup marked a row, uniformly: where the backward's short
// rows lie side by side, their slots share one partial row, and take their retries in turns
// with a barrier between turns.
fn workgroup_retries(lid: u32) -> bool {
    if retry_any {
        atomicOr(&retry_seen, 1u);
    }
    workgroupBarrier();
    if lid == 0u {
        retry_told = atomicLoad(&retry_seen);
    }
    return workgroupUniformLoad(&retry_told) != 0u;
}
//#endif

//#if shared
//#else
// The backward's marked rows, after all its rows, each added to the workgroup's partial row in
// memory (retry_in_memory, the kernel's own): by one slot at a time where short rows lie side
// by side (they share it).
fn deferred_retries(slot: u32, lane: u32, group: u32, lid: u32) {
//#if side_by_side
    if workgroup_retries(lid) {
        for (var s = 0u; s < SLOTS; s++) {
            if slot == s {
                retry_marked(slot, lane, group);
            }
            storageBarrier();
        }
    }
//#else
    retry_marked(slot, lane, group);
//#endif
}

fn retry_marked(slot: u32, lane: u32, group: u32) {
    if retry_any {
        for (var r = 0u; r < params.rows_per_group; r++) {
            if marked(r) {
                retry_in_memory(step_row(group, r, slot), lane, group);
            }
        }
    }
}
//#endif
//#endif

// A mean of squares (plus eps) below 2^-96 may have lost terms to underflow by more than f32
// rounding: a flushed square is off by at most 2^-126, 2^-30 of that.
const TINY: f32 = 0x1p-96f;

// row_exponent's answer for a row holding inf or NaN.
const NO_SCALE: i32 = 1000;

fn finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

// Whether a row's mean of squares (or variance) `m2` calls for the scaled retry.
fn out_of_range(m2: f32) -> bool {
    return !finite(m2) || m2 + params.eps < TINY;
}

// The largest biased exponent of the lanes of v (255 for inf or NaN).
fn max_exponent(v: V) -> u32 {
//#if wide
    let b = (bitcast<vec4<u32>>(v) >> vec4<u32>(23u)) & vec4<u32>(0xffu);
    return max(max(b.x, b.y), max(b.z, b.w));
//#else
    return (bitcast<u32>(v) >> 23u) & 0xffu;
//#endif
}

// The e that brings the largest |x| among the row's first stat_len elements (those that enter
// its statistics) into [1, 2); NO_SCALE for inf or NaN. A subnormal or zero largest |x| is
// scaled as 2^-126.
fn row_exponent(row: u32) -> i32 {
    let n = row_vs();
    var b = 0u;
    for (var i0 = 0u; i0 < n; i0 += SERIAL) {
//#unroll ui SERIAL
        if i0 + ui < n {
            b = max(b, max_exponent(in_prefix(i0 + ui, ld_all(row, i0 + ui))));
        }
//#endunroll
    }
    if b >= 255u {
        return NO_SCALE;
    }
    return i32(max(b, 1u)) - 127;
}

// 2^k, exactly, for k in [-126, 127].
fn pow2(k: i32) -> f32 {
    return bitcast<f32>(u32(k + 127) << 23u);
}

// v * 2^e, in steps the exponent can hold: exact unless the result leaves f32's range.
fn times_pow2(v: f32, e: i32) -> f32 {
    var r = v;
    var left = e;
    for (var i = 0; i < 3; i++) {
        let k = clamp(left, -126, 127);
        r *= pow2(k);
        left -= k;
    }
    return r;
}

// v * 2^-e for e from row_exponent (0: v as it is), in two exact steps.
fn scale_v(v: V, e: i32) -> V {
    let a = clamp(-e, -126, 127);
    return v * pow2(a) * pow2(-e - a);
}

// 1 / sqrt(m2 + eps * 4^-e): the reciprocal root of a row scaled by 2^-e, whose mean of
// squares (or variance) is m2. Where eps * 4^-e leaves f32's range, eps dwarfs the row and
// the answer is 2^e / sqrt(eps).
fn inv_root(m2: f32, e: i32) -> f32 {
    let eps = times_pow2(params.eps, -2 * e);
    if !finite(eps) {
        return times_pow2(1.0 / sqrt(params.eps), e);
    }
    return 1.0 / sqrt(m2 + eps);
}

// A serial sum of many V's, in blocks of 32 and 1024, so that its rounding error grows with
// the block sizes rather than with the row (compilers are free to simplify a compensated
// sum away). The blocks' sums are scalars: the retry holds three of these beside its loads,
// and it sets the registers of the whole kernel (RADV, the LayerNorm backward at D = 128:
// 128 VGPRs with V's there).
struct Sum {
    lo: V,
    mid: f32,
    hi: f32,
    count: u32,
}

fn add(a: Sum, v: V) -> Sum {
    var r = a;
    r.lo += v;
    r.count += 1u;
    if (r.count & 31u) == 0u {
        r.mid += hsum(r.lo);
        r.lo = V(0.0);
        if (r.count & 1023u) == 0u {
            r.hi += r.mid;
            r.mid = 0.0;
        }
    }
    return r;
}

fn sum_of(a: Sum) -> f32 {
    return a.hi + (a.mid + hsum(a.lo));
}

fn no_sum() -> Sum {
    return Sum(V(0.0), 0.0, 0.0, 0u);
}

// The mean of squares of the first stat_len elements of the row scaled by 2^-e.
fn scaled_mean_square(row: u32, e: i32) -> f32 {
    let n = row_vs();
    var q = no_sum();
    for (var i0 = 0u; i0 < n; i0 += SERIAL) {
//#unroll ui SERIAL
        if i0 + ui < n {
            let v = in_prefix(i0 + ui, scale_v(ld_all(row, i0 + ui), e));
            q = add(q, v * v);
        }
//#endunroll
    }
    return sum_of(q) / f32(params.stat_len);
}

// A pivot near the mean, the mean of x - pivot and the variance of the row scaled by 2^-e,
// in three passes: the mean of x - x0 (x0 the first element) is exact only to the rounding
// of the distance from x0 to the rest, so the pivot is x0 moved by it (x0 itself where that
// is 0, a constant row), and the mean of x - pivot is then as exact as the data; the variance
// is a pass over deviations from it.
struct Moments {
    pivot: f32,
    mean: f32,
    var_: f32,
}

fn scaled_moments(row: u32, e: i32) -> Moments {
    let n = row_vs();
    let inv_dim = 1.0 / f32(params.dim);
    let x0 = first_lane(scale_v(ld_all(row, 0u), e));
    let p = x0 + scaled_mean_from(row, e, x0);
    let m = scaled_mean_from(row, e, p);
    var q = no_sum();
    for (var i0 = 0u; i0 < n; i0 += SERIAL) {
//#unroll ui SERIAL
        if i0 + ui < n {
            let d = in_row(i0 + ui, (scale_v(ld_all(row, i0 + ui), e) - V(p)) - V(m));
            q = add(q, d * d);
        }
//#endunroll
    }
    return Moments(p, m, sum_of(q) * inv_dim);
}

// The mean of x - p over the row scaled by 2^-e.
fn scaled_mean_from(row: u32, e: i32, p: f32) -> f32 {
    let n = row_vs();
    var s = no_sum();
    for (var i0 = 0u; i0 < n; i0 += SERIAL) {
//#unroll ui SERIAL
        if i0 + ui < n {
            s = add(s, in_row(i0 + ui, scale_v(ld_all(row, i0 + ui), e) - V(p)));
        }
//#endunroll
    }
    return sum_of(s) / f32(params.dim);
}

// Where an output may be written over an input (`shared`), every invocation's writes so far
// are made visible before the retry reads the whole row, and its reads are done before
// anyone writes over them.
fn retry_barrier() {
//#if shared
    storageBarrier();
//#endif
}
