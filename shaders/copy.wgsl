// The baseline the benchmarks compare with: y = x over the same bytes as a plain copy of the
// whole tensor (not row by row), each invocation moving CACHE V's with all loads in flight
// before the first store. Always f32: a 16-bit tensor is copied as its bytes.

@group(0) @binding(1) var<storage, RO> x: array<V>;
@group(0) @binding(2) var<storage, read_write> y: array<V>;

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let n = params.rows * params.dim / VW;
    let base = group_index(ids) * WG * CACHE + ids.lid;
    let xb = off_v(1u);
    let yb = off_v(2u);
    var c: array<V, CACHE>;
//#unroll k
    if base + k * WG < n {
        c[k] = x[xb + base + k * WG];
    }
//#endunroll
//#unroll k
    if base + k * WG < n {
        y[yb + base + k * WG] = c[k];
    }
//#endunroll
}
