// The forward norms' input stream, shared by layer_norm.wgsl and rms_norm.wgsl. The row
// normalized is x or, with a residual, s = x + residual rounded to the storage type (as an
// unfused `s = x + r; y = norm(s)` would store it); with residual_out, s is written back.

// The row's i-th V of x, or of x + residual rounded to the storage type.
fn ld_in(row: u32, i: u32) -> V {
    if has(HAS_RESIDUAL) {
        return round_act(ld_x(row, i) + ld_residual(row, i));
    }
    return ld_x(row, i);
}

// ld_in as the row cache holds it (the storage words of 16-bit rows: `Cached`). With a
// residual, s rounded to the storage type packs back exactly.
fn ld_in_cached(row: u32, i: u32) -> Cached {
    if has(HAS_RESIDUAL) {
        return to_cache(ld_in(row, i));
    }
    return ld_cached_x(row, i);
}

// ld_in again, in a later streamed pass. Once s is written back it is read from there:
// residual_out may replace x or the residual in place (as vLLM's fused add does), and
// x + residual would then no longer be there to add. The same invocation wrote it. (A split
// row's first dispatch, STATS, writes nothing: it adds again.)
fn ld_again(row: u32, i: u32) -> V {
    if has(HAS_RESIDUAL_OUT) && !STATS {
        return ld_residual_out(row, i);
    }
    return ld_in(row, i);
}

// The row's i-th V as any invocation may read it (for the scaled retry, scale.wgsl, which
// reads the whole row): where s may have been written over x or the residual (`shared`) it is
// read back, which retry_barrier made visible; elsewhere it is added again.
fn ld_all(row: u32, i: u32) -> V {
//#if shared
    return ld_again(row, i);
//#else
    return ld_in(row, i);
//#endif
}
