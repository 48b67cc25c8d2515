// Backward, stage 2: dweight (and dbias) as column sums of the partial rows written by the
// row kernels, in a fixed order: no atomics, so the same input gives the same bits.
// Each workgroup owns WG / SLICES V-columns; the SLICES invocations of a column each sum a
// strided share of the partial rows in order, then the slices are added as a tree. SLICES
// follows the number of partial rows (src/shaders.rs, param_grad_slices): with few rows, as
// in a decode step, it is 1 and every invocation sums a column alone, with no barrier.

const COLS: u32 = WG / SLICES;

var<workgroup> acc: array<V, WG>;

@compute @workgroup_size(WG)
fn main(g: Group, ids: Ids) {
    let lid = ids.lid;
    let n = params.dim / VW;
    let col = group_index(g) * COLS + lid % COLS;
    let slice = lid / COLS;
    let live = col < n;
    var w = V(0.0);
    var b = V(0.0);
    if has(HAS_DWEIGHT) {
        w = column_sum(0u, col, slice, lid, live);
    }
    if has(HAS_DBIAS) {
        // dbias partials follow the dweight ones when both are wanted.
        b = column_sum(select(0u, params.part_rows, has(HAS_DWEIGHT)), col, slice, lid, live);
    }
    if live && slice == 0u {
        if has(HAS_DWEIGHT) {
            if has(OPT_ACCUMULATE_PARAMS) {
                w += ld_dweight(col);
            }
            st_dweight(col, w);
        }
        if has(HAS_DBIAS) {
            if has(OPT_ACCUMULATE_PARAMS) {
                b += ld_dbias(col);
            }
            st_dbias(col, b);
        }
    }
}

// The sum over all partial rows, from row `first`, of column `col`, in slice 0.
fn column_sum(first: u32, col: u32, slice: u32, lid: u32, live: bool) -> V {
    var s = V(0.0);
    if live {
        for (var k = slice; k < params.part_rows; k += SLICES) {
            s += ld_partials(first + k, col);
        }
    }
    if SLICES == 1u {
        return s;
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
