// A forward row split over several workgroups: where the rows are fewer than the workgroups
// a GPU runs at once (a decode step: 1 to 64 rows), each long row is cut into params.parts
// parts of part_len() V's (the last one shorter), one workgroup each, in two dispatches of
// the same kernel. The first (`stats`) sums each part on its own and writes four f32 per part;
// the second reads every part's sums of its row, combines them in part order, and normalizes
// its own part. Every workgroup of a row adds the same numbers in the same order, so all of
// them, and every run, get the same statistics: the result is deterministic, though not the
// same bits as the row taken whole (other additions).
//
// LayerNorm's parts give their mean as a reference and an offset, r + c, and their sum of
// squares around it (reduce.wgsl's wg_moments, as a whole row's); the combination is Chan,
// Golub and LeVeque's: var * D = sum of (M2_j + n_j * (mean_j - mean)^2), by reduce.wgsl's
// merge, in part order. RMSNorm's give their sum of squares. A row whose statistics leave
// f32's range is retried as any other (scale.wgsl), each invocation reading the whole row,
// writing its own part.

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

//#if moments
// LayerNorm: the row's mean as (r, c), r + c, and its variance, from the parts'.
fn split_moments(row: u32) -> vec3<f32> {
    var t = vec4<f32>(part_elems(0u), ld_partials(part_index(row, 0u)).xyz);
    for (var j = 1u; j < params.parts; j++) {
        let m = ld_partials(part_index(row, j));
        t = merge(t, vec4<f32>(part_elems(j), m.xyz));
    }
    return vec3<f32>(t.yz, t.w / f32(params.dim));
}
//#endif

// RMSNorm: the mean of squares over the row's first stat_len elements.
fn split_mean_square(row: u32) -> f32 {
    var q = 0.0;
    for (var j = 0u; j < params.parts; j++) {
        q += ld_partials(part_index(row, j)).x;
    }
    return q / f32(params.stat_len);
}
