// 16-bit storage: f16 and bf16 packed two to a u32 (element 2k in the low half), converted to
// and from f32 around f32 arithmetic. Needs no SHADER_F16: f16 goes through
// unpack2x16float/pack2x16float, and bf16 (which WGSL has no type for) is the high half of an
// f32's bits.

fn bf16_lo(w: u32) -> f32 {
    return bitcast<f32>(w << 16u);
}

fn bf16_hi(w: u32) -> f32 {
    return bitcast<f32>(w & 0xffff0000u);
}

fn bf16_unpack(w: u32) -> vec2<f32> {
    return vec2<f32>(bf16_lo(w), bf16_hi(w));
}

// The bf16 bits of f, rounded to nearest even; NaN stays a (quiet) NaN.
fn bf16_bits(f: f32) -> u32 {
    let b = bitcast<u32>(f);
    if (b & 0x7fffffffu) > 0x7f800000u {
        return (b >> 16u) | 0x40u;
    }
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}

fn bf16_pack(v: vec2<f32>) -> u32 {
    return bf16_bits(v.x) | (bf16_bits(v.y) << 16u);
}

fn f16_bits(f: f32) -> u32 {
    return pack2x16float(vec2<f32>(f, 0.0)) & 0xffffu;
}
