// The baseline the benchmarks compare with: y = x over the same bytes as a plain copy of the
// whole tensor (not row by row), each invocation moving CACHE V's with all loads in flight
// before the first store. Always f32: a 16-bit tensor is copied as its bytes. The tensor is
// addressed as one flat row (row 0 of the accessors).

@compute @workgroup_size(WG)
fn main(g: Group, ids: Ids) {
    let n = params.rows * params.dim / VW;
    let base = group_index(g) * WG * CACHE + ids.lid;
    var c: array<V, CACHE>;
//#unroll k
    if base + k * WG < n {
        c[k] = ld_x(0u, base + k * WG);
    }
//#endunroll
//#unroll k
    if base + k * WG < n {
        st_y(0u, base + k * WG, c[k]);
    }
//#endunroll
}
