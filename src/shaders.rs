//! WGSL sources and their variants.
//!
//! Each kernel family is one file under `shaders/`. A variant is that file plus
//! `common.wgsl` and `reduce.wgsl`, behind a prelude generated here from the Rust constants
//! (so the workgroup size has one source of truth), with `//#if NAME` / `//#else` /
//! `//#endif` blocks resolved for the variant's flags. `tests/shaders.rs` parses and
//! validates every variant with naga, without a GPU.

use bytemuck::{Pod, Zeroable};

/// Invocations per workgroup; every kernel runs one workgroup per row.
pub const WORKGROUP_SIZE: u32 = 256;

/// Longest register cache, in `V` elements per invocation. A row of up to
/// `WORKGROUP_SIZE * MAX_CACHE` `V`s (16384 f32 with vec4 access) is read from memory once;
/// longer rows are streamed again from memory (in practice from cache) for each pass.
pub const MAX_CACHE: u32 = 16;

const _: () = assert!(
    WORKGROUP_SIZE.is_power_of_two(),
    "the tree reduction halves WG"
);
const _: () = assert!(MAX_CACHE.is_power_of_two());

const COMMON: &str = include_str!("../shaders/common.wgsl");
const REDUCE: &str = include_str!("../shaders/reduce.wgsl");
const LAYER_NORM: &str = include_str!("../shaders/layer_norm.wgsl");
const RMS_NORM: &str = include_str!("../shaders/rms_norm.wgsl");
const COPY: &str = include_str!("../shaders/copy.wgsl");

/// Bits of [`Params::flags`]; twins of the `FLAG_*` constants in `common.wgsl`.
pub(crate) mod flags {
    pub const WEIGHT: u32 = 1;
    pub const BIAS: u32 = 2;
    pub const MEAN: u32 = 4;
    pub const RSTD: u32 = 8;
}

/// Uniform parameters of one dispatch. Twin of `struct Params` in `shaders/common.wgsl`;
/// `tests/shaders.rs` checks that naga lays the WGSL struct out at these offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct Params {
    pub rows: u32,
    pub dim: u32,
    pub x_off: u32,
    pub y_off: u32,
    pub w_off: u32,
    pub b_off: u32,
    pub mean_off: u32,
    pub rstd_off: u32,
    pub eps: f32,
    pub flags: u32,
    pub _pad0: u32,
    pub _pad1: u32,
}

impl Params {
    /// Field names and byte offsets, in declaration order, for the layout check.
    pub const FIELDS: [(&'static str, usize); 12] = [
        ("rows", std::mem::offset_of!(Params, rows)),
        ("dim", std::mem::offset_of!(Params, dim)),
        ("x_off", std::mem::offset_of!(Params, x_off)),
        ("y_off", std::mem::offset_of!(Params, y_off)),
        ("w_off", std::mem::offset_of!(Params, w_off)),
        ("b_off", std::mem::offset_of!(Params, b_off)),
        ("mean_off", std::mem::offset_of!(Params, mean_off)),
        ("rstd_off", std::mem::offset_of!(Params, rstd_off)),
        ("eps", std::mem::offset_of!(Params, eps)),
        ("flags", std::mem::offset_of!(Params, flags)),
        ("_pad0", std::mem::offset_of!(Params, _pad0)),
        ("_pad1", std::mem::offset_of!(Params, _pad1)),
    ];
}

/// A kernel family: one WGSL file each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kernel {
    LayerNorm,
    RmsNorm,
    Copy,
}

impl Kernel {
    pub const ALL: [Kernel; 3] = [Kernel::LayerNorm, Kernel::RmsNorm, Kernel::Copy];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::LayerNorm => "layer_norm",
            Kernel::RmsNorm => "rms_norm",
            Kernel::Copy => "copy",
        }
    }

    fn source(self) -> &'static str {
        match self {
            Kernel::LayerNorm => LAYER_NORM,
            Kernel::RmsNorm => RMS_NORM,
            Kernel::Copy => COPY,
        }
    }

    /// Whether the kernel reduces over the row (and so can use subgroups and a cache).
    pub fn reduces(self) -> bool {
        !matches!(self, Kernel::Copy)
    }
}

/// Everything that selects one compiled pipeline: the typed key of the pipeline cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Variant {
    pub kernel: Kernel,
    /// `V = vec4<f32>`: D % 4 == 0 and every operand 16-byte aligned.
    pub vec4: bool,
    /// Register cache length in `V`s per invocation; 0 streams the row from memory.
    pub cache: u32,
    /// Reduce with subgroup operations (the device has `Features::SUBGROUP`).
    pub subgroups: bool,
    /// Inputs bound read_write because one of them shares a buffer with an output.
    pub shared: bool,
}

impl Variant {
    /// The variant for a row of `dim` elements.
    pub fn for_row(kernel: Kernel, dim: u32, vec4: bool, subgroups: bool, shared: bool) -> Self {
        let lanes = if vec4 { 4 } else { 1 };
        let per_invocation = dim.div_ceil(lanes).div_ceil(WORKGROUP_SIZE);
        let cache = if kernel.reduces() && per_invocation <= MAX_CACHE {
            per_invocation.next_power_of_two()
        } else {
            0
        };
        Variant {
            kernel,
            vec4,
            cache,
            subgroups: subgroups && kernel.reduces(),
            shared,
        }
    }

    /// Every variant the host can ask for, for validation.
    pub fn all() -> Vec<Variant> {
        let mut out = Vec::new();
        for kernel in Kernel::ALL {
            let caches: Vec<u32> = if kernel.reduces() {
                std::iter::once(0)
                    .chain((0..=MAX_CACHE.trailing_zeros()).map(|b| 1 << b))
                    .collect()
            } else {
                vec![0]
            };
            let subgroup_opts: &[bool] = if kernel.reduces() {
                &[false, true]
            } else {
                &[false]
            };
            for &cache in &caches {
                for vec4 in [false, true] {
                    for &subgroups in subgroup_opts {
                        for shared in [false, true] {
                            out.push(Variant {
                                kernel,
                                vec4,
                                cache,
                                subgroups,
                                shared,
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// A label for wgpu objects and error messages.
    pub fn label(&self) -> String {
        format!(
            "wgpu-norm {} {} cache={}{}{}",
            self.kernel.name(),
            if self.vec4 { "vec4" } else { "f32" },
            self.cache,
            if self.subgroups { " subgroups" } else { "" },
            if self.shared { " shared" } else { "" },
        )
    }

    fn flag(&self, name: &str) -> Option<bool> {
        match name {
            "vec4" => Some(self.vec4),
            "cached" => Some(self.cache > 0),
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
             const WG: u32 = {WORKGROUP_SIZE}u;\n\
             const CACHE: u32 = {cache}u;\n\
             const VW: u32 = {vw}u;\n\
             alias V = {v};\n\n",
            label = self.label(),
            cache = self.cache,
        );
        let mut parts = vec![("common.wgsl", COMMON)];
        if self.kernel.reduces() {
            parts.push(("reduce.wgsl", REDUCE));
        }
        parts.push((self.kernel.name(), self.kernel.source()));
        for (name, text) in parts {
            out.push_str(&format!("// ---- {name}\n"));
            out.push_str(&preprocess(text, |f| {
                self.flag(f)
                    .unwrap_or_else(|| panic!("unknown //#if flag {f:?} in {name}"))
            }));
        }
        out
    }
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
    fn cache_length_covers_the_row() {
        for dim in [1, 4, 255, 256, 257, 1024, 1025, 4096, 4097, 16384, 16385] {
            for vec4 in [false, true] {
                let v = Variant::for_row(Kernel::LayerNorm, dim, vec4, false, false);
                let lanes = if vec4 { 4 } else { 1 };
                if v.cache > 0 {
                    assert!(v.cache * WORKGROUP_SIZE * lanes >= dim, "{dim} {vec4}");
                } else {
                    assert!(dim > MAX_CACHE * WORKGROUP_SIZE * lanes, "{dim} {vec4}");
                }
            }
        }
    }
}
