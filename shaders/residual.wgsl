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

// ld_in again, in a later streamed pass. Once s is written back it is read from there:
// residual_out may replace x or the residual in place (as vLLM's fused add does), and
// x + residual would then no longer be there to add. The same invocation wrote it.
fn ld_again(row: u32, i: u32) -> V {
    if has(HAS_RESIDUAL_OUT) {
        return ld_residual_out(row, i);
    }
    return ld_in(row, i);
}
