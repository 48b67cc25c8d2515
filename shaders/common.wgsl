// Declarations shared by every kernel. The host prepends a generated prelude that defines
// WG (workgroup size), CACHE (row elements each invocation keeps in registers, 0 = stream),
// VW (lanes per element of V) and the alias V (f32 or vec4<f32>), and the `//#if` blocks are
// resolved by src/shaders.rs. No literal here repeats a host constant.

// Twin of `wgpu_norm::shaders::Params` (src/shaders.rs); tests/shaders.rs checks the layout.
struct Params {
    // Rows in this dispatch, spread over x and y of the grid.
    rows: u32,
    // Elements per row.
    dim: u32,
    // Element (f32) offsets of each operand inside its binding: bindings must start at
    // min_storage_buffer_offset_alignment, the caller's data need not.
    x_off: u32,
    y_off: u32,
    w_off: u32,
    b_off: u32,
    mean_off: u32,
    rstd_off: u32,
    eps: f32,
    // FLAG_* bits below.
    flags: u32,
    // Consecutive rows each workgroup normalizes, one after another (norm kernels only).
    rows_per_group: u32,
    _pad1: u32,
}

const FLAG_WEIGHT: u32 = 1u;
const FLAG_BIAS: u32 = 2u;
const FLAG_MEAN: u32 = 4u;
const FLAG_RSTD: u32 = 8u;

@group(0) @binding(0) var<uniform> params: Params;
// When an input shares a buffer with an output, every binding is read_write: wgpu tracks
// usage per buffer, and read-only plus read-write use of one buffer in a dispatch is invalid.
//#if shared
@group(0) @binding(1) var<storage, read_write> x: array<V>;
@group(0) @binding(3) var<storage, read_write> weight: array<V>;
@group(0) @binding(4) var<storage, read_write> bias: array<V>;
//#else
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(3) var<storage, read> weight: array<V>;
@group(0) @binding(4) var<storage, read> bias: array<V>;
//#endif
@group(0) @binding(2) var<storage, read_write> y: array<V>;
@group(0) @binding(5) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> rstd_out: array<f32>;

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
