// A forward row split over several workgroups: where the rows are fewer than the workgroups
// a GPU runs at once (a decode step: 1 to 64 rows), each long row is cut into params.parts
// parts of part_len() V's (the last one shorter), one workgroup each, in two dispatches of
// the same kernel. The first (`stats`) sums each part on its own and writes two f32 per part;
// the second reads every part's sums of its row, combines them in part order, and normalizes
// its own part. Every workgroup of a row adds the same numbers in the same order, so all of
// them, and every run, get the same statistics: the result is deterministic, though not the
// same bits as the row taken whole (other additions).
//
// LayerNorm's parts give the sum of x - p (p: the row's first element, as in
// layer_norm.wgsl) and the sum of squares around their own mean; the combination is Chan,
// Golub and LeVeque's: var * D = sum of (M2_j + n_j * (mean_j - mean)^2). RMSNorm's give
// their sum of squares. A row whose statistics leave f32's range is retried as any other
// (scale.wgsl), each invocation reading the whole row, writing its own part.

// V's of each part (the last part holds the rest).
fn part_len() -> u32 {
    return (params.dim / VW + params.parts - 1u) / params.parts;
}

// Elements of part j.
fn part_elems(j: u32) -> f32 {
    let start = j * part_len();
    return f32((min(start + part_len(), params.dim / VW) - start) * VW);
}

// Where part j of `row` keeps its sums.
fn part_index(row: u32, j: u32) -> u32 {
    return row * params.parts + j;
}

// LayerNorm: the mean of x - p over the row and its variance, from the parts' sums.
fn split_moments(row: u32) -> vec2<f32> {
    var s = 0.0;
    for (var j = 0u; j < params.parts; j++) {
        s += ld_partials(part_index(row, j)).x;
    }
    let m = s / f32(params.dim);
    var q = 0.0;
    for (var j = 0u; j < params.parts; j++) {
        let sums = ld_partials(part_index(row, j));
        let n = part_elems(j);
        let d = sums.x / n - m;
        q += sums.y + n * d * d;
    }
    return vec2<f32>(m, q / f32(params.dim));
}

// RMSNorm: the mean of squares over the row's first stat_len elements.
fn split_mean_square(row: u32) -> f32 {
    var q = 0.0;
    for (var j = 0u; j < params.parts; j++) {
        q += ld_partials(part_index(row, j)).x;
    }
    return q / f32(params.stat_len);
}
