//! WGSL sources and their variants.
//!
//! Each kernel family is one file under `shaders/`. A variant is that file plus
//! `common.wgsl` and `reduce.wgsl`, behind a prelude generated here from the Rust constants
//! (so the workgroup size has one source of truth), with `//#if NAME` / `//#else` /
//! `//#endif` blocks resolved for the variant's flags. `tests/shaders.rs` parses and
//! validates every variant with naga, without a GPU.

use bytemuck::{Pod, Zeroable};

use crate::dtype::DType;

/// Smallest workgroup the kernels use (one workgroup per row).
pub const MIN_WORKGROUP_SIZE: u32 = 64;

/// Largest workgroup the kernels use, where the device allows it.
pub const MAX_WORKGROUP_SIZE: u32 = 1024;

/// Row elements (`V`s) each invocation aims to handle: the workgroup grows with D until it
/// reaches the largest size, so short rows are not spread thinly over idle invocations and
/// every invocation has several loads in flight.
pub const V_PER_INVOCATION: u32 = 8;

/// Longest register cache, in `V`s per invocation. Rows that fit are read from memory once;
/// longer rows are streamed again (in practice from cache) for each pass.
pub const MAX_CACHE: u32 = 16;

/// Bytes of rows each norm workgroup handles at least, one row after another: short rows
/// share a workgroup so that the launch of one is paid for by enough traffic.
pub const BYTES_PER_GROUP: u32 = 16384;

/// Most rows one workgroup handles, so that tiny D still spreads over many workgroups.
pub const MAX_ROWS_PER_GROUP: u32 = 64;

/// The copy kernel's shape: a plain copy, independent of D.
const COPY_WORKGROUP_SIZE: u32 = 256;
const COPY_V_PER_INVOCATION: u32 = 4;

/// The backward stage-2 kernel's workgroup: PARAM_GRAD_COLUMNS V-columns, each summed by
/// WG / PARAM_GRAD_COLUMNS slices of the partial rows.
const PARAM_GRAD_WORKGROUP_SIZE: u32 = 256;
pub const PARAM_GRAD_COLUMNS: u32 = 4;

/// Backward: partial-sum rows (workgroups of the row kernel) aimed for, spread as
/// `PARTIAL_INVOCATIONS / workgroup size`, at most [`MAX_PARTIAL_ROWS`]: enough workgroups to
/// fill a large GPU, few enough that the partial sums are a small fraction of the traffic.
pub const PARTIAL_INVOCATIONS: u32 = 131072;
pub const MAX_PARTIAL_ROWS: u32 = 1024;

/// Register budget of the cache: `cache * workgroup` stays within this many `V`s, so that a
/// 1024-invocation workgroup (at most 64 registers each on many GPUs) does not spill.
const CACHE_BUDGET: u32 = 8192;

const _: () = assert!(MIN_WORKGROUP_SIZE.is_power_of_two() && MAX_WORKGROUP_SIZE.is_power_of_two());
const _: () = assert!(MAX_CACHE.is_power_of_two() && V_PER_INVOCATION.is_power_of_two());

/// The workgroup size for a row of `lanes`-wide elements on a device that allows `max_wg`
/// invocations (a power of two). The one source of truth for the WGSL constant `WG`.
pub fn workgroup_size(dim: u32, lanes: u32, per_invocation: u32, max_wg: u32) -> u32 {
    let per_row = dim.div_ceil(lanes);
    per_row
        .div_ceil(per_invocation)
        .next_power_of_two()
        .clamp(MIN_WORKGROUP_SIZE, max_wg.min(MAX_WORKGROUP_SIZE))
}

/// Rows each norm workgroup handles for rows of `dim` f32.
pub fn rows_per_group(dim: u32) -> u32 {
    (BYTES_PER_GROUP / dim.saturating_mul(4).max(1)).clamp(1, MAX_ROWS_PER_GROUP)
}

/// The register cache length for `per_row` `V`s over `wg` invocations; 0 when it does not fit.
fn cache_len(per_row: u32, wg: u32, arrays: u32) -> u32 {
    let per_invocation = per_row.div_ceil(wg).next_power_of_two();
    if per_invocation <= MAX_CACHE && per_invocation * wg * arrays <= CACHE_BUDGET.max(wg) {
        per_invocation
    } else {
        0
    }
}

const COMMON: &str = include_str!("../shaders/common.wgsl");
const REDUCE: &str = include_str!("../shaders/reduce.wgsl");
const LAYER_NORM: &str = include_str!("../shaders/layer_norm.wgsl");
const RMS_NORM: &str = include_str!("../shaders/rms_norm.wgsl");
const COPY: &str = include_str!("../shaders/copy.wgsl");
const LAYER_NORM_BACKWARD: &str = include_str!("../shaders/layer_norm_backward.wgsl");
const RMS_NORM_BACKWARD: &str = include_str!("../shaders/rms_norm_backward.wgsl");
const PARAM_GRAD: &str = include_str!("../shaders/param_grad.wgsl");
const HALF: &str = include_str!("../shaders/half.wgsl");
const BACKWARD_BINDINGS: &str = include_str!("../shaders/backward_bindings.wgsl");

/// Bits of [`Params::flags`]; twins of the `FLAG_*` constants in `common.wgsl`.
pub(crate) mod flags {
    pub const WEIGHT: u32 = 1;
    pub const BIAS: u32 = 2;
    pub const MEAN: u32 = 4;
    pub const RSTD: u32 = 8;
    pub const ACCUMULATE_DX: u32 = 16;
    pub const ACCUMULATE_PARAMS: u32 = 32;
    pub const GRAD_WEIGHT: u32 = 64;
    pub const GRAD_BIAS: u32 = 128;
    pub const GEMMA_OFFSET: u32 = 256;
    pub const LLAMA_ROUNDING: u32 = 512;
    pub const EPS_OUTSIDE: u32 = 1024;
    pub const RESIDUAL: u32 = 2048;
    pub const RESIDUAL_OUT: u32 = 4096;
}

/// Uniform parameters of one dispatch. Twin of `struct Params` in `shaders/common.wgsl`;
/// `tests/shaders.rs` checks that naga lays the WGSL struct out at these offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct Params {
    pub rows: u32,
    pub dim: u32,
    pub eps: f32,
    pub flags: u32,
    pub rows_per_group: u32,
    pub part_row0: u32,
    pub part_rows: u32,
    pub stat_len: u32,
    /// Element offset of each operand inside its binding, indexed by binding number.
    pub off: [u32; 12],
}

impl Params {
    /// Field names and byte offsets, in declaration order, for the layout check.
    pub const FIELDS: [(&'static str, usize); 9] = [
        ("rows", std::mem::offset_of!(Params, rows)),
        ("dim", std::mem::offset_of!(Params, dim)),
        ("eps", std::mem::offset_of!(Params, eps)),
        ("flags", std::mem::offset_of!(Params, flags)),
        (
            "rows_per_group",
            std::mem::offset_of!(Params, rows_per_group),
        ),
        ("part_row0", std::mem::offset_of!(Params, part_row0)),
        ("part_rows", std::mem::offset_of!(Params, part_rows)),
        ("stat_len", std::mem::offset_of!(Params, stat_len)),
        ("off", std::mem::offset_of!(Params, off)),
    ];
}

/// A kernel: one WGSL file each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kernel {
    LayerNorm,
    RmsNorm,
    Copy,
    LayerNormBackward,
    RmsNormBackward,
    /// Backward stage 2: dweight/dbias from the row kernels' partial sums.
    ParamGrad,
}

/// Kernels sharing one binding layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Forward,
    Backward,
    ParamGrad,
}

impl Kernel {
    pub const ALL: [Kernel; 6] = [
        Kernel::LayerNorm,
        Kernel::RmsNorm,
        Kernel::Copy,
        Kernel::LayerNormBackward,
        Kernel::RmsNormBackward,
        Kernel::ParamGrad,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::LayerNorm => "layer_norm",
            Kernel::RmsNorm => "rms_norm",
            Kernel::Copy => "copy",
            Kernel::LayerNormBackward => "layer_norm_backward",
            Kernel::RmsNormBackward => "rms_norm_backward",
            Kernel::ParamGrad => "param_grad",
        }
    }

    fn source(self) -> &'static str {
        match self {
            Kernel::LayerNorm => LAYER_NORM,
            Kernel::RmsNorm => RMS_NORM,
            Kernel::Copy => COPY,
            Kernel::LayerNormBackward => LAYER_NORM_BACKWARD,
            Kernel::RmsNormBackward => RMS_NORM_BACKWARD,
            Kernel::ParamGrad => PARAM_GRAD,
        }
    }

    pub fn family(self) -> Family {
        match self {
            Kernel::LayerNorm | Kernel::RmsNorm | Kernel::Copy => Family::Forward,
            Kernel::LayerNormBackward | Kernel::RmsNormBackward => Family::Backward,
            Kernel::ParamGrad => Family::ParamGrad,
        }
    }

    /// Whether the kernel reduces over a row (and so can use subgroups and a cache).
    pub fn reduces(self) -> bool {
        !matches!(self, Kernel::Copy | Kernel::ParamGrad)
    }

    /// Row elements each invocation aims to hold, and register arrays of that length it keeps.
    fn cache_shape(self) -> (u32, u32) {
        match self {
            Kernel::LayerNormBackward => (V_PER_INVOCATION / 2, 4),
            Kernel::RmsNormBackward => (V_PER_INVOCATION / 2, 3),
            _ => (V_PER_INVOCATION, 1),
        }
    }
}

/// Everything that selects one compiled pipeline: the typed key of the pipeline cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Variant {
    pub kernel: Kernel,
    /// Workgroup size (the WGSL constant `WG`), from [`workgroup_size`].
    pub wg: u32,
    /// `V = vec4<f32>`: D % 4 == 0 and every operand 16-byte aligned.
    pub vec4: bool,
    /// Register cache length in `V`s per invocation; 0 streams the row from memory.
    pub cache: u32,
    /// Reduce with subgroup operations (the device has `Features::SUBGROUP`).
    pub subgroups: bool,
    /// Inputs bound read_write because one of them shares a buffer with an output.
    pub shared: bool,
    /// Storage of x, y, dy, dx and the residual stream (norms and backward; f32 elsewhere).
    pub act: DType,
    /// Storage of weight and bias (norms and backward; f32 elsewhere).
    pub param: DType,
}

impl Variant {
    /// The variant for a row of `dim` elements on a device allowing `max_wg` invocations
    /// per workgroup (a power of two, at least [`MIN_WORKGROUP_SIZE`]).
    pub fn for_row(
        kernel: Kernel,
        dim: u32,
        vec4: bool,
        subgroups: bool,
        shared: bool,
        max_wg: u32,
    ) -> Self {
        let lanes = if vec4 { 4 } else { 1 };
        let (wg, cache) = match kernel {
            Kernel::Copy => (COPY_WORKGROUP_SIZE.min(max_wg), COPY_V_PER_INVOCATION),
            Kernel::ParamGrad => (PARAM_GRAD_WORKGROUP_SIZE.min(max_wg), 0),
            _ => {
                let (per_invocation, arrays) = kernel.cache_shape();
                let wg = workgroup_size(dim, lanes, per_invocation, max_wg);
                (wg, cache_len(dim.div_ceil(lanes), wg, arrays))
            }
        };
        Variant {
            kernel,
            wg,
            vec4,
            cache,
            subgroups: subgroups && kernel.reduces(),
            shared,
            act: DType::F32,
            param: DType::F32,
        }
    }

    /// This variant with 16-bit storage (the norms and their backward passes only).
    pub fn with_storage(mut self, act: DType, param: DType) -> Self {
        if storage_pairs(self.kernel).contains(&(act, param)) {
            self.act = act;
            self.param = param;
        }
        self
    }

    /// Every variant the host can ask for, for validation.
    pub fn all() -> Vec<Variant> {
        let mut out = std::collections::BTreeSet::new();
        let wgs = (MIN_WORKGROUP_SIZE.trailing_zeros()..=MAX_WORKGROUP_SIZE.trailing_zeros())
            .map(|b| 1u32 << b);
        for kernel in Kernel::ALL {
            for wg in wgs.clone() {
                // Every cache length the host can pick for this kernel and workgroup size.
                let caches: Vec<u32> = match kernel {
                    Kernel::Copy if wg <= COPY_WORKGROUP_SIZE => vec![COPY_V_PER_INVOCATION],
                    Kernel::ParamGrad if wg <= PARAM_GRAD_WORKGROUP_SIZE => vec![0],
                    Kernel::Copy | Kernel::ParamGrad => vec![],
                    _ => (0..=MAX_CACHE.trailing_zeros())
                        .map(|b| cache_len((1 << b) * wg, wg, kernel.cache_shape().1))
                        .chain([0])
                        .collect(),
                };
                for cache in caches {
                    for vec4 in [false, true] {
                        for subgroups in [false, kernel.reduces()] {
                            for shared in [false, true] {
                                for (act, param) in storage_pairs(kernel) {
                                    out.insert(Variant {
                                        kernel,
                                        wg,
                                        vec4,
                                        cache,
                                        subgroups,
                                        shared,
                                        act,
                                        param,
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
        out.into_iter().collect()
    }

    /// A label for wgpu objects and error messages.
    pub fn label(&self) -> String {
        format!(
            "wgpu-norm {} {}/{} wg={} {} cache={}{}{}",
            self.kernel.name(),
            self.act,
            self.param,
            self.wg,
            if self.vec4 { "vec4" } else { "scalar" },
            self.cache,
            if self.subgroups { " subgroups" } else { "" },
            if self.shared { " shared" } else { "" },
        )
    }

    fn flag(&self, name: &str) -> Option<bool> {
        match name {
            "vec4" => Some(self.vec4),
            "cached" => Some(self.cache > 0),
            "pairs" => Some(self.kernel == Kernel::LayerNormBackward),
            "subgroups" => Some(self.subgroups),
            "shared" => Some(self.shared),
            _ => None,
        }
    }

    /// The complete WGSL source of this variant.
    pub fn source(&self) -> String {
        let (v, vw) = if self.vec4 {
            ("vec4<f32>", 4)
        } else {
            ("f32", 1)
        };
        let mut out = format!(
            "// Generated by wgpu_norm::shaders for: {label}\n\
             const WG: u32 = {wg}u;\n\
             const CACHE: u32 = {cache}u;\n\
             const VW: u32 = {vw}u;\n\
             const COLS: u32 = {PARAM_GRAD_COLUMNS}u;\n\
             alias V = {v};\n\n",
            label = self.label(),
            wg = self.wg,
            cache = self.cache,
        );
        let mut parts = vec![("common.wgsl", COMMON)];
        let storage;
        match self.kernel {
            Kernel::LayerNorm | Kernel::RmsNorm => {
                // Only 16-bit storage needs the conversions (and the device's
                // pack2x16float, which wgpu's GL ES backend may lack).
                if self.act != DType::F32 || self.param != DType::F32 {
                    parts.push(("half.wgsl", HALF));
                }
                storage = forward_storage(self);
                parts.push(("(generated forward bindings)", &storage));
            }
            Kernel::LayerNormBackward | Kernel::RmsNormBackward => {
                if self.act != DType::F32 || self.param != DType::F32 {
                    parts.push(("half.wgsl", HALF));
                }
                storage = backward_storage(self);
                parts.push(("(generated backward bindings)", &storage));
            }
            Kernel::Copy | Kernel::ParamGrad => {}
        }
        if self.kernel.reduces() {
            parts.push(("reduce.wgsl", REDUCE));
        }
        parts.push((self.kernel.name(), self.kernel.source()));
        for (name, text) in parts {
            out.push_str(&format!("// ---- {name}\n"));
            let flag = |f: &str| {
                self.flag(f)
                    .unwrap_or_else(|| panic!("unknown //#if flag {f:?} in {name}"))
            };
            let text = unroll(&preprocess(text, flag), self.cache);
            // Inputs are read-only unless one shares a buffer with an output.
            let access = if self.shared { "read_write" } else { "read" };
            out.push_str(&text.replace("<storage, RO>", &format!("<storage, {access}>")));
        }
        out
    }
}

/// The (activation, parameter) storage pairs a kernel is compiled for: 16-bit activations
/// with parameters of the same type or f32 (the mixed mode).
fn storage_pairs(kernel: Kernel) -> Vec<(DType, DType)> {
    match kernel {
        Kernel::LayerNorm
        | Kernel::RmsNorm
        | Kernel::LayerNormBackward
        | Kernel::RmsNormBackward => vec![
            (DType::F32, DType::F32),
            (DType::F16, DType::F16),
            (DType::F16, DType::F32),
            (DType::Bf16, DType::Bf16),
            (DType::Bf16, DType::F32),
        ],
        _ => vec![(DType::F32, DType::F32)],
    }
}

/// One storage binding whose typed accessors are generated: `load(row, i)` (or `load(i)`
/// for the parameters) returns its i-th V as f32, `store(row, i, v)` writes one.
struct Access {
    binding: u32,
    array: &'static str,
    dtype: DType,
    written: bool,
    per_row: bool,
    load: Option<&'static str>,
    store: Option<&'static str>,
}

const fn access(
    binding: u32,
    array: &'static str,
    dtype: DType,
    written: bool,
    load: Option<&'static str>,
    store: Option<&'static str>,
) -> Access {
    Access {
        binding,
        array,
        dtype,
        written,
        per_row: true,
        load,
        store,
    }
}

/// Bindings and typed accessors of the forward norms for the variant's storage: `ld_x`,
/// `ld_r` (residual), `ld_s` (the written-back sum), `ld_w`, `ld_b`, `st_y`, `st_s`, and
/// `round_act`, which rounds an f32 V to the activation type.
fn forward_storage(v: &Variant) -> String {
    let (a, p) = (v.act, v.param);
    let accesses = [
        access(1, "x", a, false, Some("ld_x"), None),
        access(2, "y", a, true, None, Some("st_y")),
        Access {
            per_row: false,
            ..access(3, "weight", p, false, Some("ld_w"), None)
        },
        Access {
            per_row: false,
            ..access(4, "bias", p, false, Some("ld_b"), None)
        },
        access(7, "residual", a, false, Some("ld_r"), None),
        // Read back by the streamed passes: s_out may alias x or the residual.
        access(8, "s_out", a, true, Some("ld_s"), Some("st_s")),
    ];
    let fixed = "@group(0) @binding(5) var<storage, read_write> mean_out: array<f32>;\n\
                 @group(0) @binding(6) var<storage, read_write> rstd_out: array<f32>;\n\n";
    storage_code(v, &accesses, fixed)
}

/// The same for the backward row kernels: `ld_x`, `ld_dy`, `ld_w`, `ld_dx` (to accumulate)
/// and `st_dx`; statistics and partial sums are f32.
fn backward_storage(v: &Variant) -> String {
    let (a, p) = (v.act, v.param);
    let accesses = [
        access(1, "x", a, false, Some("ld_x"), None),
        access(2, "dy", a, false, Some("ld_dy"), None),
        Access {
            per_row: false,
            ..access(3, "weight", p, false, Some("ld_w"), None)
        },
        access(6, "dx", a, true, Some("ld_dx"), Some("st_dx")),
    ];
    storage_code(v, &accesses, BACKWARD_BINDINGS)
}

/// Declarations and accessors for `accesses`, after the `fixed` declarations.
///
/// 16-bit tensors are arrays of u32 holding two elements each. With vec4 access one V is a
/// vec2<u32> (four elements, 8-byte aligned). Scalar access reads the word holding element
/// e, and writes its half with atomicAnd/atomicOr: the other half may belong to another
/// workgroup's row (odd D or odd offsets), and two plain stores would race.
fn storage_code(v: &Variant, accesses: &[Access], fixed: &str) -> String {
    let mut out = String::new();
    for a in accesses {
        let ty = match (a.dtype, v.vec4, a.written) {
            (DType::F32, _, _) => "V",
            (_, true, _) => "vec2<u32>",
            (_, false, false) => "u32",
            (_, false, true) => "atomic<u32>",
        };
        let access = if a.written { "read_write" } else { "RO" };
        out.push_str(&format!(
            "@group(0) @binding({}) var<storage, {access}> {}: array<{ty}>;\n",
            a.binding, a.array
        ));
    }
    out.push_str(fixed);
    out.push('\n');
    let (pack, bits) = match v.act {
        DType::Bf16 => ("bf16_pack", "bf16_bits"),
        _ => ("pack2x16float", "f16_bits"),
    };
    for a in accesses {
        let (arr, b) = (a.array, a.binding);
        let args = if a.per_row {
            "row: u32, i: u32"
        } else {
            "i: u32"
        };
        let row = if a.per_row {
            " + row * (params.dim / VW)"
        } else {
            ""
        };
        let row_e = if a.per_row { " + row * params.dim" } else { "" };
        let unpack = if a.dtype == DType::F16 {
            "unpack2x16float"
        } else {
            "bf16_unpack"
        };
        let word = if a.written {
            format!("atomicLoad(&{arr}[e >> 1u])")
        } else {
            format!("{arr}[e >> 1u]")
        };
        if let Some(f) = a.load {
            let body = match (a.dtype, v.vec4) {
                (DType::F32, _) => format!("return {arr}[off_v({b}u){row} + i];"),
                (_, true) => format!(
                    "let w = {arr}[off_v({b}u){row} + i];\n    \
                     return vec4<f32>({unpack}(w.x), {unpack}(w.y));"
                ),
                (DType::F16, false) => format!(
                    "let e = off_f({b}u){row_e} + i;\n    \
                     return unpack2x16float({word})[e & 1u];"
                ),
                (_, false) => format!(
                    "let e = off_f({b}u){row_e} + i;\n    \
                     let w = {word};\n    \
                     return select(bf16_lo(w), bf16_hi(w), (e & 1u) == 1u);"
                ),
            };
            out.push_str(&format!("fn {f}({args}) -> V {{\n    {body}\n}}\n\n"));
        }
        if let Some(f) = a.store {
            let body = match (a.dtype, v.vec4) {
                (DType::F32, _) => format!("{arr}[off_v({b}u){row} + i] = v;"),
                (_, true) => {
                    format!("{arr}[off_v({b}u){row} + i] = vec2<u32>({pack}(v.xy), {pack}(v.zw));")
                }
                (_, false) => format!(
                    "let e = off_f({b}u){row_e} + i;\n    \
                     let sh = (e & 1u) * 16u;\n    \
                     atomicAnd(&{arr}[e >> 1u], ~(0xffffu << sh));\n    \
                     atomicOr(&{arr}[e >> 1u], {bits}(v) << sh);"
                ),
            };
            out.push_str(&format!("fn {f}({args}, v: V) {{\n    {body}\n}}\n\n"));
        }
    }
    let round = match (v.act, v.vec4) {
        (DType::F32, _) => "v".to_string(),
        (DType::F16, true) => "vec4<f32>(unpack2x16float(pack2x16float(v.xy)), \
             unpack2x16float(pack2x16float(v.zw)))"
            .to_string(),
        (DType::Bf16, true) => {
            "vec4<f32>(bf16_unpack(bf16_pack(v.xy)), bf16_unpack(bf16_pack(v.zw)))".to_string()
        }
        (DType::F16, false) => "unpack2x16float(f16_bits(v)).x".to_string(),
        (DType::Bf16, false) => "bf16_lo(bf16_bits(v))".to_string(),
    };
    out.push_str(&format!(
        "// v rounded to the activation storage type.\nfn round_act(v: V) -> V {{\n    return {round};\n}}\n"
    ));
    out
}

/// Resolves `//#if NAME`, `//#else`, `//#endif` (nestable). Lines of a dropped branch are
/// blanked rather than removed, so naga's line numbers still match the source files.
fn preprocess(text: &str, flag: impl Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    // One entry per open `#if`: (this branch is live, the enclosing context is live).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        let live = stack.last().is_none_or(|&(b, outer)| b && outer);
        if let Some(name) = t.strip_prefix("//#if ") {
            stack.push((flag(name.trim()), live));
        } else if t == "//#else" {
            let top = stack.last_mut().expect("//#else without //#if");
            top.0 = !top.0;
        } else if t == "//#endif" {
            stack.pop().expect("//#endif without //#if");
        } else if live {
            out.push_str(line);
        }
        out.push('\n');
    }
    assert!(stack.is_empty(), "unterminated //#if");
    out
}

/// Repeats each block between `//#unroll NAME` and `//#endunroll` `count` times, with the
/// identifier NAME replaced by `0u`, `1u`, ... in each copy.
///
/// The register cache depends on this: wgpu bounds every WGSL loop with a hidden counter (its
/// protection against infinite loops), which keeps drivers from unrolling a loop over the
/// cache array, and an array indexed by a loop variable lives in slow local memory. Constant
/// indices let the driver keep it in registers.
fn unroll(text: &str, count: u32) -> String {
    let mut out = String::with_capacity(text.len());
    let mut block: Option<(String, Vec<&str>)> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("//#unroll ") {
            assert!(block.is_none(), "nested //#unroll");
            block = Some((name.trim().to_string(), Vec::new()));
        } else if t == "//#endunroll" {
            let (name, lines) = block.take().expect("//#endunroll without //#unroll");
            for k in 0..count {
                for l in &lines {
                    out.push_str(&replace_ident(l, &name, &format!("{k}u")));
                    out.push('\n');
                }
            }
        } else if let Some((_, lines)) = &mut block {
            lines.push(line);
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(block.is_none(), "unterminated //#unroll");
    out
}

/// `line` with every whole-word occurrence of the identifier `name` replaced by `with`.
fn replace_ident(line: &str, name: &str, with: &str) -> String {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find(name) {
        out.push_str(&rest[..at]);
        let before = out.chars().next_back();
        let after = rest[at + name.len()..].chars().next();
        if before.is_some_and(is_ident) || after.is_some_and(is_ident) {
            out.push_str(name);
        } else {
            out.push_str(with);
        }
        rest = &rest[at + name.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocess_nests_and_keeps_lines() {
        let src = "a\n//#if x\nb\n//#if y\nc\n//#else\nd\n//#endif\n//#else\ne\n//#endif\nf\n";
        let on = preprocess(src, |n| n == "x");
        assert_eq!(
            on.lines().filter(|l| !l.is_empty()).collect::<Vec<_>>(),
            ["a", "b", "d", "f"]
        );
        assert_eq!(on.lines().count(), src.lines().count());
        let off = preprocess(src, |_| false);
        assert_eq!(
            off.lines().filter(|l| !l.is_empty()).collect::<Vec<_>>(),
            ["a", "e", "f"]
        );
    }

    #[test]
    fn unroll_repeats_with_constant_indices() {
        let src = "a\n//#unroll k\nc[k] = kk + k;\n//#endunroll\nb\n";
        assert_eq!(unroll(src, 2), "a\nc[0u] = kk + 0u;\nc[1u] = kk + 1u;\nb\n");
        assert_eq!(unroll(src, 0), "a\nb\n");
    }

    #[test]
    fn cache_covers_the_row_within_the_register_budget() {
        let all = Variant::all();
        for max_wg in [256, 1024] {
            for dim in [
                1, 4, 255, 256, 257, 1024, 1025, 4096, 4097, 8192, 16384, 16385, 65536,
            ] {
                for vec4 in [false, true] {
                    for kernel in Kernel::ALL {
                        let v = Variant::for_row(kernel, dim, vec4, false, false, max_wg);
                        let lanes = if vec4 { 4 } else { 1 };
                        assert!(v.wg.is_power_of_two() && v.wg <= max_wg, "{v:?}");
                        assert!(v.wg >= MIN_WORKGROUP_SIZE, "{v:?}");
                        assert!(all.contains(&v), "{v:?} is not validated");
                        if !kernel.reduces() {
                            continue;
                        }
                        let arrays = kernel.cache_shape().1;
                        if v.cache > 0 {
                            assert!(v.cache * v.wg * lanes >= dim, "{v:?}");
                            assert!(v.cache * v.wg * arrays <= CACHE_BUDGET.max(v.wg), "{v:?}");
                        } else {
                            let fits = MAX_CACHE.min(CACHE_BUDGET / v.wg / arrays);
                            assert!(dim.div_ceil(lanes) > v.wg * fits, "{v:?}");
                        }
                    }
                }
            }
        }
    }
}
