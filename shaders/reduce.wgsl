// Workgroup-wide reductions, the ones every row kernel uses (per row, where short rows lie
// side by side). The order of additions is fixed by WG and RW alone (and by the subgroup size
// in the subgroup variant), so the same input gives the same bits on the same device. Each
// must be called in workgroup-uniform control flow.
//
// wg_sum returns the sum to every invocation. It needs no trailing barrier: consecutive calls
// use the two halves of `red` in turn, so a call never writes what the call before it may
// still be reading (and the one before that is behind a barrier of the call between). The
// *_uniform ones hand their result out through workgroupUniformLoad, so that a kernel may
// branch on it around barriers: wg_sum_decide is wg_sum_uniform where the retry of a row
// whose squares leave f32's range needs barriers (the `shared` variants, whose outputs may
// be written over their inputs; scale.wgsl), and plain wg_sum elsewhere.

fn wg_sum_decide(v: f32, lid: u32) -> f32 {
//#if shared
    return wg_sum_uniform(v, lid);
//#else
    return wg_sum(v, lid);
//#endif
}

//#if moments
// A row's mean and variance from every invocation's share of it, in one reduction: the
// LayerNorm forward's (and the backward's where it recomputes them) after one barrier with
// subgroups. Each invocation gives `m` = (count, pivot p, sum of x - p, M2 around its own
// mean), p its own first element; the result is (r, c, M2) with the mean r + c: r near the
// mean (with subgroups within a rounding of it, in the tree the pivot of the part nearest
// it), c the rest (kernels take x - r, exact near the mean, then c off it). No element is
// the row's pivot, so none far from the rest costs the others their precision: each share's
// deviations are exact to its own spread, and the shares' means are combined by the
// two-pass formula over their means (Chan, Golub and LeVeque), M2 = sum of
// (M2_j + n_j * (mean_j - mean)^2), every term non-negative, with each mean carried as a
// reference and an offset from it. An invocation without elements (count 0)
// adds nothing. As wg_sum_decide, uniform where the kernel branches on it around barriers
// (`shared`). The tree variant below takes all of `red`: a wg_sum right after it would need
// a barrier first (the kernels call one or the other, or row_sum3, which starts with one).
fn wg_moments_decide(m: vec4<f32>, lid: u32) -> vec3<f32> {
//#if shared
    return hand_out(wg_moments(m, lid), lid);
//#else
    return wg_moments(m, lid);
//#endif
}

// Two parts (count, reference h, offset l, M2) of a row, the mean of each h + l, as one, `a`
// the earlier: the offset of b's mean from a's (its rounding relative to that distance),
// and the merged mean from whichever of the two references is nearer it, so that the
// reference moves towards the mean and the offset stays small. A part without elements
// changes nothing; `a` has elements wherever `b` has (the lanes with elements come first,
// and the parts of a split row are merged from the first), which spares the registers that
// the case of an empty `a` took (RADV, f32 at D = 128 side by side: 80 VGPRs with it, 64
// without).
fn merge(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    let n = a.x + b.x;
    let g = b.y - a.y;
    let d = g + (b.z - a.z);
    let w = b.x / max(n, 1.0);
    // (d * w first: an empty b's w is 0, and d * d may overflow where d does not.)
    let dw = d * w;
    let la = a.z + dw;
    let lb = la - g;
    let m2 = (a.w + b.w) + (dw * d) * a.x;
    let to_b = b.x > 0.0 && abs(lb) < abs(la);
    return vec4<f32>(n, select(a.y, b.y, to_b), select(la, lb, to_b), m2);
}
//#endif

var<private> red_half: u32;

//#if subgroups
// One slot per subgroup; the smallest subgroup wgpu reports is 4 lanes.
const PARTS: u32 = WG / 4u;
var<workgroup> red: array<f32, 2u * PARTS>;
var<workgroup> total: vec4<f32>;
var<private> sg_size: u32;
var<private> sg_lane: u32;

fn reduce_init(ids: Ids) {
    sg_size = ids.sg_size;
    sg_lane = ids.sg_lane;
}

// Subgroups in the workgroup.
fn subgroups() -> u32 {
    return (WG + sg_size - 1u) / sg_size;
}

// Lanes of a subgroup are taken to be consecutive in local_invocation_index, as they are for
// one-dimensional workgroups on every Vulkan, Metal and D3D12 driver.
fn wg_sum(v: f32, lid: u32) -> f32 {
    let s = subgroupAdd(v);
    if sg_lane == 0u {
        red[red_half + lid / sg_size] = s;
    }
    workgroupBarrier();
    let t = partials_total(red_half);
    red_half = PARTS - red_half;
    return t;
}

// The subgroups' partials at red[h..], summed: each subgroup adds them all itself, every lane
// a strided share, then across its lanes, so that every invocation gets the same total. (A
// loop over all of them in every invocation costs a CPU adapter's 8-lane subgroups 128 loads
// an invocation in a workgroup of 1024.)
fn partials_total(h: u32) -> f32 {
    var t = 0.0;
    for (var i = sg_lane; i < subgroups(); i += sg_size) {
        t += red[h + i];
    }
    return subgroupAdd(t);
}

//#if moments
// Two halves used in turn, as red's.
var<workgroup> red_m: array<vec4<f32>, 2u * PARTS>;
var<private> red_m_half: u32;

// Within each subgroup over its lanes, then across the subgroups over theirs, every subgroup
// reading all of them in the same order (as partials_total), so that every invocation gets
// the same bits; one barrier. Each level takes two sums, as many as a sum and then a sum of
// squares around it take: the first gives a reference near the mean (r: the first part's,
// moved by the others' mean offset from it, whose rounding grows with their distance from
// it), the second the mean's offset from r, exact to the data's spread, and the squares of
// the parts' offsets from r. M2 around r + c is then sum of (M2_j + n_j * e_j^2) - n * c^2,
// e_j = mean_j - r: since r is off the mean by a rounding of the parts' distances from the
// first part's reference at most, c^2 is a tiny part of that sum, and taking it off loses
// nothing much (nothing at all for a constant row, whose r is exact).
fn wg_moments(m: vec4<f32>, lid: u32) -> vec3<f32> {
    let q = vec4<f32>(m.x, m.y, m.z / max(m.x, 1.0), m.w);
    let p0 = subgroupBroadcastFirst(q.y);
    let a = subgroupAdd(about(q, p0));
    let r = p0 + a.y / max(a.x, 1.0);
    let b = subgroupAdd(around(q, r));
    let c = b.x / max(a.x, 1.0);
    let h = red_m_half;
    if sg_lane == 0u {
        red_m[h + lid / sg_size] = vec4<f32>(a.x, r, c, b.y - a.x * (c * c));
    }
    workgroupBarrier();
    // Subgroup 0's part holds the row's first elements (the lanes with elements come first).
    let pw = red_m[h].y;
    var aw = vec2<f32>(0.0);
    for (var i = sg_lane; i < subgroups(); i += sg_size) {
        aw += about(red_m[h + i], pw);
    }
    aw = subgroupAdd(aw);
    let rw = pw + aw.y / max(aw.x, 1.0);
    var bw = vec2<f32>(0.0);
    for (var i = sg_lane; i < subgroups(); i += sg_size) {
        bw += around(red_m[h + i], rw);
    }
    bw = subgroupAdd(bw);
    let cw = bw.x / max(aw.x, 1.0);
    red_m_half = PARTS - h;
    return vec3<f32>(rw, cw, bw.y - aw.x * (cw * cw));
}

// A part's (count, reference, offset, M2) terms of the first sum, around p0: its count, and
// its count times its mean's distance from p0.
fn about(q: vec4<f32>, p0: f32) -> vec2<f32> {
    return vec2<f32>(q.x, q.x * ((q.y - p0) + q.z));
}

// Its terms of the second, around r: its count times its mean's distance e from r, and its
// M2 plus its count times e^2.
fn around(q: vec4<f32>, r: f32) -> vec2<f32> {
    let e = (q.y - r) + q.z;
    // (q.x * e first: an empty part's count is 0, and e * e may overflow where e does not.)
    let ne = q.x * e;
    return vec2<f32>(ne, q.w + ne * e);
}
//#endif

//#if triples
var<workgroup> red3: array<vec4<f32>, PARTS>;

// Three sums at once (the LayerNorm backward's), one reduction for all.
fn wg_sum3_uniform(v: vec3<f32>, lid: u32) -> vec3<f32> {
    let s = subgroupAdd(v);
    if sg_lane == 0u {
        red3[lid / sg_size] = vec4<f32>(s, 0.0);
    }
    workgroupBarrier();
    var t = vec3<f32>(0.0);
    if lid == 0u {
        for (var i = 0u; i < subgroups(); i++) {
            t += red3[i].xyz;
        }
    }
    return hand_out(t, lid);
}
//#endif
//#else
// Two halves for wg_sum; the LayerNorm backward's three sums (tree3) and the moments' four
// planes (wg_moments) use all of it, after a barrier.
//#if thirds
var<workgroup> red: array<f32, 3u * WG>;
//#else
var<workgroup> red: array<f32, 2u * WG>;
//#endif
// What the *_uniform reductions hand out (workgroupUniformLoad needs a uniform pointer).
var<workgroup> total: vec4<f32>;

fn reduce_init(ids: Ids) {}

// Tree reduction in workgroup memory; WG and RW are powers of two (asserted on the host).
// Where short rows lie side by side (RW < WG), each row's RW invocations sum their own run
// of `red`: the sum is the row's alone.
fn wg_sum(v: f32, lid: u32) -> f32 {
    let h = red_half;
    let lane = lid % RW;
    red[h + lid] = v;
    workgroupBarrier();
    for (var s = RW / 2u; s > 0u; s >>= 1u) {
        if lane < s {
            red[h + lid] += red[h + lid + s];
        }
        workgroupBarrier();
    }
    red_half = WG - h;
    return red[h + lid - lane];
}

//#if moments
// Each row's parts merged pairwise up a tree over its RW invocations (merge, the lower run
// first, in this fixed order), each step's upper run handing its parts over in `red` (four
// planes; each row has 3 RW / 4 slots a plane, two regions used in turn, so that a step
// writes where no one reads any more: one barrier a step). The last merge's invocation
// writes the result where it read, for the row's others.
const PLANE: u32 = 3u * WG / 4u;

fn put_moments(i: u32, v: vec4<f32>) {
    red[i] = v.x;
    red[PLANE + i] = v.y;
    red[2u * PLANE + i] = v.z;
    red[3u * PLANE + i] = v.w;
}

fn get_moments(i: u32) -> vec4<f32> {
    return vec4<f32>(red[i], red[PLANE + i], red[2u * PLANE + i], red[3u * PLANE + i]);
}

fn wg_moments(m: vec4<f32>, lid: u32) -> vec3<f32> {
    let lane = lid % RW;
    let slot = lid / RW;
    var t = vec4<f32>(m.x, m.y, m.z / max(m.x, 1.0), m.w);
    // Both halves of `red` may still be read by the reduction before this one.
    workgroupBarrier();
    var at = slot * (RW / 2u + RW / 4u);
    var other = at + RW / 2u;
    for (var s = RW / 2u; s > 0u; s >>= 1u) {
        if lane >= s && lane < 2u * s {
            put_moments(at + lane - s, t);
        }
        workgroupBarrier();
        if lane < s {
            t = merge(t, get_moments(at + lane));
        }
        let was = at;
        at = other;
        other = was;
    }
    if RW > 1u {
        // `other`: where the last step read.
        if lane == 0u {
            put_moments(other, t);
        }
        workgroupBarrier();
        t = get_moments(other);
    }
    return t.yzw;
}
//#endif
//#endif

//#if side_by_side
// (No *_uniform reductions: with several rows in a workgroup, no sum is the workgroup's.)
//#else
// `t` of invocation 0, handed out by workgroupUniformLoad: the result is uniform, so that a
// kernel may branch on it around barriers. The sums handed out hold the same bits in every
// invocation, or (wg_sum3_uniform's) in invocation 0 alone.
fn hand_out(t: vec3<f32>, lid: u32) -> vec3<f32> {
    if lid == 0u {
        total = vec4<f32>(t, 0.0);
    }
    return workgroupUniformLoad(&total).xyz;
}

// wg_sum, uniform: the same additions in the same order.
fn wg_sum_uniform(v: f32, lid: u32) -> f32 {
    return hand_out(vec3<f32>(wg_sum(v, lid), 0.0, 0.0), lid).x;
}
//#endif

//#if triples
// The LayerNorm backward's three sums of a row, in one reduction; uniform where the row is
// the workgroup's.
fn row_sum3(v: vec3<f32>, lid: u32) -> vec3<f32> {
//#if subgroups
    return wg_sum3_uniform(v, lid);
//#else
//#if side_by_side
    let t = tree3(v, lid);
    // The next wg_sum may write where other rows still read (handed out, the hand-out's
    // barrier keeps them apart).
    workgroupBarrier();
    return t;
//#else
    return hand_out(tree3(v, lid), lid);
//#endif
//#endif
}

//#endif

//#if subgroups
//#else
//#if triples
// A tree over each row's RW invocations (all WG of them where the row is the workgroup's) in
// the three thirds of `red`, as wg_sum's, each step adding the upper run into the lower, in
// this fixed order.
fn tree3(v: vec3<f32>, lid: u32) -> vec3<f32> {
    let lane = lid % RW;
    // Both halves may still be read by the wg_sum calls before this one, or the last call's
    // result.
    workgroupBarrier();
    red[lid] = v.x;
    red[WG + lid] = v.y;
    red[2u * WG + lid] = v.z;
    workgroupBarrier();
    for (var s = RW / 2u; s > 0u; s >>= 1u) {
        if lane < s {
            red[lid] += red[lid + s];
            red[WG + lid] += red[WG + lid + s];
            red[2u * WG + lid] += red[2u * WG + lid + s];
        }
        workgroupBarrier();
    }
    let b = lid - lane;
    return vec3<f32>(red[b], red[WG + b], red[2u * WG + b]);
}
//#endif
//#endif

//#if partials
// A backward workgroup's column partial sums (one partial row, whatever its rows): where
// short rows lie side by side, every slot's added to slot 0's in slot order (a fixed order)
// and returned to slot 0's invocations; elsewhere the invocation's own. Once per workgroup:
// a serial sum in a few invocations costs less than a tree's barrier per halving, which a CPU
// adapter pays dearly (lavapipe, 4 MiB of D = 64: a tree's tail undid the gain).
//#if side_by_side
// Two halves used in turn, as wg_sum's: consecutive calls need one barrier each.
var<workgroup> cols: array<V, 2u * WG>;
var<private> cols_half: u32;

fn slots_sum(v: V, lid: u32) -> V {
    let h = cols_half;
    cols_half = WG - h;
    cols[h + lid] = v;
    workgroupBarrier();
    var t = v;
    if lid < RW {
        for (var s = 1u; s < SLOTS; s++) {
            t += cols[h + lid + s * RW];
        }
    }
    return t;
}
//#else
fn slots_sum(v: V, lid: u32) -> V {
    return v;
}
//#endif

//#if held_partials
// Partial row `k` of this workgroup from one array of sums held in registers (every slot's
// added to slot 0's in slot order where short rows lie side by side), in workgroup-uniform
// control flow. The grid can hold more workgroups than there are groups of rows: those
// write nothing.
fn store_held_row(
    first: u32,
    lid: u32,
    slot: u32,
    lane: u32,
    k: u32,
    sums: ptr<function, array<V, CACHE>>,
) {
    if first >= params.rows {
        return;
    }
    let n = row_vs();
//#unroll j
    {
        let t = slots_sum((*sums)[j], lid);
        if slot == 0u && lane + j * RW < n {
            st_partials(k, lane + j * RW, t);
        }
    }
//#endunroll
}
//#endif
//#endif
