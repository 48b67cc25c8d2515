// Bindings of the forward kernels (layer_norm, rms_norm, copy); slots in src/norms.rs.
// RO is read for inputs, or read_write when an input shares a buffer with an output (wgpu
// tracks usage per buffer, and read-only plus read-write use of one buffer is invalid).
@group(0) @binding(1) var<storage, RO> x: array<V>;
@group(0) @binding(2) var<storage, read_write> y: array<V>;
@group(0) @binding(3) var<storage, RO> weight: array<V>;
@group(0) @binding(4) var<storage, RO> bias: array<V>;
@group(0) @binding(5) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> rstd_out: array<f32>;
