// Declarations shared by every kernel. The host prepends generated code: a prelude with WG
// (workgroup size), CACHE (row elements each invocation keeps in registers, 0 = stream), VW
// (consecutive elements per V), SLICES (param_grad), the alias V (f32 or vec4<f32>), the flag
// bits HAS_<operand> and OPT_<option>, and FLAGS, those of them compiled into this pipeline
// (see has()); then, after this file, the bindings of the kernel with
// a typed accessor for each (ld_x(row, i), st_y(row, i, v), ...). The `//#if` blocks are
// resolved by src/shaders.rs. No literal here repeats a host constant.

// Twin of `wgpu_norm::shaders::Params` (src/shaders.rs); tests/shaders.rs checks the layout.
struct Params {
    // Rows in this dispatch, spread over x and y of the grid (param_grad: partial rows).
    rows: u32,
    // Elements per row.
    dim: u32,
    eps: f32,
    // HAS_* and OPT_* bits.
    flags: u32,
    // Steps each workgroup takes, one after another: SLOTS rows side by side each (short
    // rows; 1 elsewhere); consecutive rows, but in the paired backward (step_row).
    rows_per_group: u32,
    // Backward: partial-sum rows of this dispatch (where the dbias rows start).
    part_rows: u32,
    // Elements at the start of each row that enter the statistics (pRMSNorm); dim otherwise.
    stat_len: u32,
    // Parts of each row, where a row is split over several workgroups (split.wgsl); 1
    // elsewhere.
    parts: u32,
    // Element offset of each operand inside its binding, by binding number: bindings must
    // start at min_storage_buffer_offset_alignment, the caller's data need not. Only the
    // generated accessors read it.
    off: array<vec4<u32>, 3>,
}

@group(0) @binding(0) var<uniform> params: Params;

// Offset of binding `b`'s operand, in V's (host guarantees divisibility for vec4).
fn off_v(b: u32) -> u32 {
    return params.off[b / 4u][b % 4u] / VW;
}

// Offset of binding `b`'s operand, in elements.
fn off_f(b: u32) -> u32 {
    return params.off[b / 4u][b % 4u];
}

// The V's of row `row` a forward norm's invocation works on, as (first, count): the whole
// row, or part `part` of it where a row is split over several workgroups (split.wgsl); none
// for a slot past the last row, where short rows are normalized side by side (RW < WG),
// which then loads and stores nothing but still takes part in every barrier.
fn row_part(row: u32, part: u32) -> vec2<u32> {
    if row >= params.rows {
        return vec2<u32>(0u);
    }
//#if split
    let base = part * part_len();
    return vec2<u32>(base, min(part_len(), row_vs() - base));
//#else
    return vec2<u32>(0u, row_vs());
//#endif
}

// The row a backward workgroup takes at step r in slot `slot` (SLOTS rows side by side a
// step, rows_per_group steps). Paired V's: the workgroups go in pairs over blocks of twice
// their rows, one taking the block's even rows and the other its odd ones, so that at odd D,
// where a row's phase alternates, every row of a workgroup is on one phase and each lane on
// the same columns of its partial sums (`wgpu_norm::shaders::row_groups`). Consecutive rows
// elsewhere.
fn step_row(group: u32, r: u32, slot: u32) -> u32 {
    let j = r * SLOTS + slot;
//#if paired
    return (group >> 1u) * 2u * params.rows_per_group * SLOTS + 2u * j + (group & 1u);
//#else
    return group * params.rows_per_group * SLOTS + j;
//#endif
}

// V's of a row. Strided V's (whole rows where D % 4 != 0, see row_elems) are a quarter of
// the row each lane, rounded up, and paired V's a half of its words each lane pair: ceil(D/4)
// either way. Their few slots past the row (the last V's upper lanes, and with paired V's a
// lane before it) are masked.
fn row_vs() -> u32 {
//#if strided
    return (params.dim + 3u) / 4u;
//#else
    return params.dim / VW;
//#endif
}

//#if paired
// The parity of the current row's first element (the same in every row tensor): paired V's
// start on a word boundary (`wgpu_norm::shaders::Variant::pairs`). Set by every
// accessor of a row tensor (set_row), so it is the row's from the row's first load on; an
// invocation works on one row at a time.
var<private> row_phase: u32;
//#endif

// The row elements of the lanes of the row's i-th V: consecutive, or one from each quarter of
// the row, so that each of an invocation's four loads is consecutive across the invocations
// (`wgpu_norm::shaders::Variant::strided`), or pairs of 16-bit elements that share a 32-bit
// word, word i of the row (from the word holding its first element) and word i of its second
// half (`Variant::pairs`). A lane before the row (paired, odd phase) wraps past it, and is
// masked with the lanes past the row.
fn row_elems(i: u32) -> vec4<u32> {
//#if paired
    let h = row_vs();
    return vec4<u32>(2u * i, 2u * i + 1u, 2u * (h + i), 2u * (h + i) + 1u) - vec4<u32>(row_phase);
//#else
//#if strided
    return vec4<u32>(i) + vec4<u32>(0u, 1u, 2u, 3u) * row_vs();
//#else
    return vec4<u32>(i * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
//#endif
//#endif
}

// Whether a forward row's i-th V past its register cache (its `tail`) holds an element of
// the row: paired V's past the row's end hold none, and skipping them spares their masked
// loads (a lane before the row wraps to a large index, and its pair's other element is in the
// row). Strided V's (a quarter of the row a lane) hold one up to the row's V count, the
// loops' bound. True in a row streamed whole, whose loops stay as short as they were:
// OpenGL's compiler (llvmpipe) took tests/half_precision.rs from 39 s to over 8 minutes with
// the check in every streamed loop (2026-11-27).
fn tail_in_row(i: u32) -> bool {
//#if tail
//#if paired
    let e = row_elems(i);
    return min(e.x, e.y) < params.dim;
//#else
    return true;
//#endif
//#else
    return true;
//#endif
}

// v with the lanes of the row's i-th V past the row zeroed: loads give 0 there, but a
// difference (x - mean) does not. Only strided V's have such lanes.
fn in_row(i: u32, v: V) -> V {
//#if strided
    return select(V(0.0), v, row_elems(i) < vec4<u32>(params.dim));
//#else
    return v;
//#endif
}

// Whether an operand is present (HAS_*) or an option on (OPT_*). The bits that change the
// work on every element are the pipeline's own (FLAGS), so that the compiler keeps only the
// paths this launch takes; the others are read at run time.
fn has(f: u32) -> bool {
    if (f & SPECIALIZED) != 0u {
        return (FLAGS & f) != 0u;
    }
    return (params.flags & f) != 0u;
}

// Sum of the lanes of one V, in a fixed order (no dot(): it may fuse differently per driver).
fn hsum(v: V) -> f32 {
//#if wide
    return (v.x + v.y) + (v.z + v.w);
//#else
    return v;
//#endif
}

// v with the lanes (of the row's i-th V) of elements at or past stat_len zeroed.
fn in_prefix(i: u32, v: V) -> V {
//#if wide
    return select(V(0.0), v, row_elems(i) < vec4<u32>(params.stat_len));
//#else
    return select(0.0, v, i < params.stat_len);
//#endif
}

// Element 0 of the row, from the row's first V: its first lane, or with paired V's on an odd
// phase the second (the first is the previous row's, masked).
fn first_lane(v: V) -> f32 {
//#if paired
    return select(v.x, v.y, row_phase == 1u);
//#else
//#if wide
    return v.x;
//#else
    return v;
//#endif
//#endif
}

// The first element of the row's i-th V (an invocation's pivot: its first element of the
// row): its first lane, but where first_lane takes the second.
fn first_elem(v: V, i: u32) -> f32 {
//#if paired
    return select(v.x, first_lane(v), i == 0u);
//#else
    return first_lane(v);
//#endif
}

// Built-in inputs every kernel takes, in two structs: WGSL's uniformity analysis takes a
// struct as a whole, so one that held an invocation's index too would make the workgroup's
// index non-uniform, and Chrome's compiler (Tint) rejects every barrier after a branch on it.
struct Group {
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
}

// Per invocation (one struct, so the subgroup ones can come and go).
struct Ids {
    @builtin(local_invocation_index) lid: u32,
//#if subgroups
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
//#endif
}

// This workgroup's index: the grid is 2-D because one dimension stops at 65535.
fn group_index(g: Group) -> u32 {
    return g.wg.y * g.nwg.x + g.wg.x;
}
