// The baseline the benchmarks compare with: y = x over the same rows and the same access
// pattern as the norm kernels (one workgroup per row, strided V loads), and no arithmetic.

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let row = grid_row(ids);
    if row >= params.rows {
        return;
    }
    let n = params.dim / VW;
    let xb = (params.x_off + row * params.dim) / VW;
    let yb = (params.y_off + row * params.dim) / VW;
    for (var i = ids.lid; i < n; i += WG) {
        y[yb + i] = x[xb + i];
    }
}
