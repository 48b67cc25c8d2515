// Backward, stage 2: dweight (and dbias) as column sums of the partial rows written by the
// row kernels, in a fixed order: no atomics, so the same input gives the same bits.
// Each workgroup owns COLS (from the host) V-columns; its invocations split the partial rows into
// WG / COLS strided slices, sum them in order, then add the slices as a tree.

const SLICES: u32 = WG / COLS;

@group(0) @binding(1) var<storage, read_write> part: array<V>;
@group(0) @binding(2) var<storage, read_write> dweight: array<V>;
@group(0) @binding(3) var<storage, read_write> dbias: array<V>;

var<workgroup> acc: array<V, WG>;

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let lid = ids.lid;
    let n = params.dim / VW;
    let col = group_index(ids) * COLS + lid % COLS;
    let slice = lid / COLS;
    let live = col < n;
    var w = V(0.0);
    var b = V(0.0);
    if has_flag(FLAG_GRAD_WEIGHT) {
        w = column_sum(0u, col, slice, lid, live);
    }
    if has_flag(FLAG_GRAD_BIAS) {
        // dbias partials follow the dweight ones when both are wanted.
        let base = select(0u, params.part_rows * n, has_flag(FLAG_GRAD_WEIGHT));
        b = column_sum(base, col, slice, lid, live);
    }
    if live && slice == 0u {
        if has_flag(FLAG_GRAD_WEIGHT) {
            var v = w;
            if has_flag(FLAG_ACCUMULATE_PARAMS) {
                v += dweight[off_v(2u) + col];
            }
            dweight[off_v(2u) + col] = v;
        }
        if has_flag(FLAG_GRAD_BIAS) {
            var v = b;
            if has_flag(FLAG_ACCUMULATE_PARAMS) {
                v += dbias[off_v(3u) + col];
            }
            dbias[off_v(3u) + col] = v;
        }
    }
}

// The sum over all partial rows of column `col` of the array starting at `base`, in slice 0.
fn column_sum(base: u32, col: u32, slice: u32, lid: u32, live: bool) -> V {
    var s = V(0.0);
    if live {
        for (var p = slice; p < params.part_rows; p += SLICES) {
            s += part[base + p * (params.dim / VW) + col];
        }
    }
    acc[lid] = s;
    workgroupBarrier();
    for (var h = SLICES / 2u; h > 0u; h >>= 1u) {
        if slice < h {
            acc[lid] += acc[lid + h * COLS];
        }
        workgroupBarrier();
    }
    let t = acc[lid];
    workgroupBarrier();
    return t;
}
