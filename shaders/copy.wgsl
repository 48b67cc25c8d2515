// The baseline the benchmarks compare with: y = x over the same rows with the same access
// pattern, workgroup size and register cache as the norm kernels, and no arithmetic.

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let row = grid_row(ids);
    if row >= params.rows {
        return;
    }
    let lid = ids.lid;
    let n = params.dim / VW;
    let xb = (params.x_off + row * params.dim) / VW;
    let yb = (params.y_off + row * params.dim) / VW;
//#if cached
    var c: array<V, CACHE>;
//#unroll k
    if lid + k * WG < n {
        c[k] = x[xb + lid + k * WG];
    }
//#endunroll
//#unroll k
    if lid + k * WG < n {
        y[yb + lid + k * WG] = c[k];
    }
//#endunroll
//#else
    for (var i = lid; i < n; i += WG) {
        y[yb + i] = x[xb + i];
    }
//#endif
}
