// Declarations shared by every kernel. The host prepends a generated prelude that defines
// WG (workgroup size), CACHE (row elements each invocation keeps in registers, 0 = stream),
// VW (lanes per element of V) and the alias V (f32 or vec4<f32>), and the `//#if` blocks are
// resolved by src/shaders.rs. No literal here repeats a host constant.

// Twin of `wgpu_norm::shaders::Params` (src/shaders.rs); tests/shaders.rs checks the layout.
struct Params {
    // Rows in this dispatch, spread over x and y of the grid (param_grad: partial rows).
    rows: u32,
    // Elements per row.
    dim: u32,
    eps: f32,
    // FLAG_* bits below.
    flags: u32,
    // Consecutive rows each workgroup normalizes, one after another.
    rows_per_group: u32,
    // Backward: the partial-sum row of this dispatch's first workgroup, and the number of
    // partial rows in all (where the dbeta partials start).
    part_row0: u32,
    part_rows: u32,
    // Elements at the start of each row that enter the statistics (pRMSNorm); dim otherwise.
    stat_len: u32,
    // Element (f32) offset of each operand inside its binding, by binding number: bindings
    // must start at min_storage_buffer_offset_alignment, the caller's data need not.
    off: array<vec4<u32>, 3>,
}

const FLAG_WEIGHT: u32 = 1u;
const FLAG_BIAS: u32 = 2u;
const FLAG_MEAN: u32 = 4u;
const FLAG_RSTD: u32 = 8u;
const FLAG_ACCUMULATE_DX: u32 = 16u;
const FLAG_ACCUMULATE_PARAMS: u32 = 32u;
const FLAG_GRAD_WEIGHT: u32 = 64u;
const FLAG_GRAD_BIAS: u32 = 128u;
const FLAG_GEMMA_OFFSET: u32 = 256u;
const FLAG_LLAMA_ROUNDING: u32 = 512u;
const FLAG_EPS_OUTSIDE: u32 = 1024u;
const FLAG_RESIDUAL: u32 = 2048u;
const FLAG_RESIDUAL_OUT: u32 = 4096u;

@group(0) @binding(0) var<uniform> params: Params;

// Offset of binding `b`'s operand, in V's (host guarantees divisibility for vec4).
fn off_v(b: u32) -> u32 {
    return params.off[b / 4u][b % 4u] / VW;
}

// Offset of binding `b`'s operand, in f32.
fn off_f(b: u32) -> u32 {
    return params.off[b / 4u][b % 4u];
}

fn has_flag(f: u32) -> bool {
    return (params.flags & f) != 0u;
}

// Sum of the lanes of one V, in a fixed order (no dot(): it may fuse differently per driver).
fn hsum(v: V) -> f32 {
//#if vec4
    return (v.x + v.y) + (v.z + v.w);
//#else
    return v;
//#endif
}

// v with the lanes (of the row's i-th V) of elements at or past stat_len zeroed.
fn in_prefix(i: u32, v: V) -> V {
//#if vec4
    let e = vec4<u32>(i * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
    return select(V(0.0), v, e < vec4<u32>(params.stat_len));
//#else
    return select(0.0, v, i < params.stat_len);
//#endif
}

// The first scalar element of one V.
fn first_lane(v: V) -> f32 {
//#if vec4
    return v.x;
//#else
    return v;
//#endif
}

// Built-in inputs every kernel takes (one struct, so the subgroup ones can come and go).
struct Ids {
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
//#if subgroups
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
//#endif
}

// This workgroup's index: the grid is 2-D because one dimension stops at 65535.
fn group_index(ids: Ids) -> u32 {
    return ids.wg.y * ids.nwg.x + ids.wg.x;
}
