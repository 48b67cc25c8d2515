// Workgroup-wide sum, the one reduction every kernel uses. The result is returned to every
// invocation, and the order of additions is fixed by WG alone (and by the subgroup size in the
// subgroup variant), so the same input gives the same bits on the same device.
// Must be called in workgroup-uniform control flow.

//#if subgroups
// One slot per subgroup; the smallest subgroup wgpu reports is 4 lanes.
var<workgroup> red: array<f32, WG / 4u>;
var<private> sg_size: u32;
var<private> sg_lane: u32;

fn reduce_init(ids: Ids) {
    sg_size = ids.sg_size;
    sg_lane = ids.sg_lane;
}

// Lanes of a subgroup are taken to be consecutive in local_invocation_index, as they are for
// one-dimensional workgroups on every Vulkan, Metal and D3D12 driver.
fn wg_sum(v: f32, lid: u32) -> f32 {
    let s = subgroupAdd(v);
    if sg_lane == 0u {
        red[lid / sg_size] = s;
    }
    workgroupBarrier();
    // Few partials (one per subgroup): every invocation sums them in the same order, which
    // saves a second barrier to broadcast the total.
    var t = 0.0;
    let n = (WG + sg_size - 1u) / sg_size;
    for (var i = 0u; i < n; i++) {
        t += red[i];
    }
    // `red` is written again by the next call.
    workgroupBarrier();
    return t;
}
//#else
var<workgroup> red: array<f32, WG>;

fn reduce_init(ids: Ids) {}

// Tree reduction in workgroup memory; WG is a power of two (asserted on the host).
fn wg_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let t = red[0];
    workgroupBarrier();
    return t;
}
//#endif

//#if pairs
// Two sums at once (the LayerNorm backward needs sum(g) and sum(g * xhat)), one barrier
// round for both; same order of additions as wg_sum.
var<workgroup> red2: array<vec2<f32>, WG>;

fn wg_sum2(v: vec2<f32>, lid: u32) -> vec2<f32> {
    red2[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red2[lid] += red2[lid + s];
        }
        workgroupBarrier();
    }
    let t = red2[0];
    workgroupBarrier();
    return t;
}
//#endif
