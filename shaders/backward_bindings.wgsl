// Bindings of the backward row kernels; slots in src/norms.rs. RO as in forward_bindings.wgsl.
@group(0) @binding(1) var<storage, RO> x: array<V>;
@group(0) @binding(2) var<storage, RO> dy: array<V>;
@group(0) @binding(3) var<storage, RO> weight: array<V>;
@group(0) @binding(4) var<storage, RO> mean_in: array<f32>;
@group(0) @binding(5) var<storage, RO> rstd_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<V>;
// Per-workgroup column sums of dy * xhat (then, for LayerNorm, of dy), reduced by param_grad.
@group(0) @binding(7) var<storage, read_write> part: array<V>;
