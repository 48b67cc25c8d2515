//! What each kernel is: its WGSL file, its table of bindings, and its dispatch shape.
//!
//! The table ([`Slot`]s, binding `i + 1` for entry `i`; binding 0 is the uniform `Params`) is
//! the one source of truth for a kernel's bindings. From it come the bind-group layouts
//! (`Norms`), the WGSL binding declarations, the typed accessors of every operand and the
//! presence flags (`shaders`), and the validation of every operand (`plan`).
//! `tests/shaders.rs` reflects each compiled variant's bindings with naga and compares them
//! with the table.

use crate::error::Operand;

/// How a kernel uses one binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Read-only (bound read-write when an input shares a buffer with an output).
    Read,
    Write,
    /// Written, and read back (an accumulated gradient, a stored sum re-read).
    ReadWrite,
}

impl Access {
    pub fn writes(self) -> bool {
        self != Access::Read
    }

    pub fn reads(self) -> bool {
        self != Access::Write
    }
}

/// How many elements an operand holds, for a launch of `rows` rows of `dim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Extent {
    /// `rows * dim`: a whole row per row (x, y, dy, dx, the residual stream).
    Rows,
    /// `dim`: weight, bias and their gradients.
    Dim,
    /// `rows`: one statistic per row.
    PerRow,
    /// The backward's partial column sums: rows of `dim`, in a buffer of the crate's own.
    Partials,
    /// [`ROW_PART_F32S`] f32 per part of a row split over several workgroups (the forward's
    /// few-row path): each part's sums, in a buffer of the crate's own.
    RowParts,
}

/// Which storage type an operand has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// The launch's activation type (x, y, dy, dx, the residual stream).
    Act,
    /// The launch's parameter type (weight, bias).
    Param,
    /// Always f32 (statistics, parameter gradients, partial sums).
    F32,
}

/// One binding of a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    pub operand: Operand,
    pub access: Access,
    pub extent: Extent,
    pub class: Class,
    /// Present in every launch (else optional, and flagged by [`Operand::flag`] when there).
    pub required: bool,
}

/// A required row tensor in the activation type.
pub const fn rows(operand: Operand, access: Access) -> Slot {
    Slot {
        operand,
        access,
        extent: Extent::Rows,
        class: Class::Act,
        required: true,
    }
}

/// This slot, optional.
pub const fn optional(s: Slot) -> Slot {
    Slot {
        required: false,
        ..s
    }
}

/// An optional parameter (`dim` elements) in the parameter type.
pub const fn param(operand: Operand) -> Slot {
    Slot {
        operand,
        access: Access::Read,
        extent: Extent::Dim,
        class: Class::Param,
        required: false,
    }
}

/// An optional per-row f32 statistic.
pub const fn per_row(operand: Operand, access: Access) -> Slot {
    Slot {
        operand,
        access,
        extent: Extent::PerRow,
        class: Class::F32,
        required: false,
    }
}

/// An optional f32 parameter gradient, read back when accumulating.
pub const fn grad_param(operand: Operand) -> Slot {
    Slot {
        operand,
        access: Access::ReadWrite,
        extent: Extent::Dim,
        class: Class::F32,
        required: false,
    }
}

/// The partial-sum rows of the backward, in the crate's own buffer.
pub const PARTIALS: Slot = Slot {
    operand: Operand::Partials,
    access: Access::ReadWrite,
    extent: Extent::Partials,
    class: Class::F32,
    required: false,
};

/// f32 for each part of a forward row split over several workgroups (WGSL: one
/// `vec4<f32>`): LayerNorm's mean as a reference and an offset and its sum of squared
/// deviations (split.wgsl), RMSNorm's sum of squares.
pub const ROW_PART_F32S: u32 = 4;

/// The parts' sums of a forward row split over several workgroups, in the crate's own buffer:
/// written by the first dispatch, read by the second.
pub const ROW_PARTS: Slot = Slot {
    extent: Extent::RowParts,
    ..PARTIALS
};

/// Options of a launch beyond its operands, as bits of `Params::flags` (WGSL:
/// `OPT_<NAME>`, generated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Opt {
    /// RMSNorm: multiply by `1 + weight`.
    GemmaOffset,
    /// RMSNorm: round `x * rrms` to the storage type before the weight.
    LlamaRounding,
    /// LayerNorm: `1 / (sqrt(var) + eps)`.
    EpsOutside,
    /// Backward: add dx to what grad_input holds.
    AccumulateDx,
    /// Backward: add to what grad_weight / grad_bias hold.
    AccumulateParams,
}

impl Opt {
    pub const ALL: [Opt; 5] = [
        Opt::GemmaOffset,
        Opt::LlamaRounding,
        Opt::EpsOutside,
        Opt::AccumulateDx,
        Opt::AccumulateParams,
    ];

    /// Above the presence bits of every [`Operand`].
    pub const fn flag(self) -> u32 {
        1 << (16 + self as u32)
    }

    pub fn wgsl(self) -> &'static str {
        match self {
            Opt::GemmaOffset => "OPT_GEMMA_OFFSET",
            Opt::LlamaRounding => "OPT_LLAMA_ROUNDING",
            Opt::EpsOutside => "OPT_EPS_OUTSIDE",
            Opt::AccumulateDx => "OPT_ACCUMULATE_DX",
            Opt::AccumulateParams => "OPT_ACCUMULATE_PARAMS",
        }
    }
}

/// The flag bits compiled into a kernel's pipeline ([`crate::shaders::Variant::flags`], WGSL
/// `FLAGS`) instead of read from `Params::flags` at run time: those that change the work on
/// every element. A run-time test keeps the code of every path in one pipeline, and with it
/// the registers of the widest (a fused residual's second row of loads in flight) in the plain
/// norm; compiled in, the compiler drops the paths a launch does not take. The per-row
/// statistics and the options tested once a row or column stay run-time bits: they cost
/// nothing there, and each bit compiled in doubles the pipelines a program may compile.
pub const SPECIALIZED: u32 = has(
    &[
        Operand::Weight,
        Operand::Bias,
        Operand::Residual,
        Operand::ResidualOut,
        Operand::GradWeight,
        Operand::GradBias,
    ],
    &[Opt::GemmaOffset, Opt::LlamaRounding, Opt::AccumulateDx],
);

const _: () = assert!(
    Operand::ALL.len() <= 16,
    "presence bits run into the option bits"
);

/// How a kernel's work is laid over workgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    /// One workgroup per row at a time (short rows several in turn), reducing over the row.
    /// Each invocation aims to hold `per_invocation` V's of the row in each of `arrays`
    /// register arrays.
    Rows { per_invocation: u32, arrays: u32 },
    /// As `Rows`, and each workgroup also writes one row of partial column sums (the
    /// backward's dweight/dbias), which `stage2` reduces after each dispatch.
    RowsWithPartials {
        per_invocation: u32,
        arrays: u32,
        /// Of the `arrays`, those that hold column partial sums: they stay in registers
        /// where the row itself is too long for them ([`crate::shaders::Variant::streamed`]).
        held: u32,
        stage2: Kernel,
    },
    /// A plain copy of the bytes, independent of the rows.
    Flat,
    /// Column sums over partial rows.
    Columns,
}

/// Everything the host knows of one kernel.
#[derive(Debug)]
pub struct KernelDef {
    /// The WGSL file's stem, used in labels.
    pub name: &'static str,
    pub source: &'static str,
    pub slots: &'static [Slot],
    pub shape: Shape,
    /// Shared WGSL files this kernel uses, after the generated bindings (name, text).
    pub includes: &'static [(&'static str, &'static str)],
    /// `//#if` names that are true for this kernel.
    pub wgsl_flags: &'static [&'static str],
    /// The `HAS_*`/`OPT_*` bits its WGSL tests with `has()` (a test reads them off the text):
    /// of these, the [`SPECIALIZED`] ones a launch sets are compiled into its pipeline.
    pub flags: u32,
}

/// The flag bits of operands and options, for the [`KernelDef::flags`] tables.
pub const fn has(operands: &[Operand], opts: &[Opt]) -> u32 {
    let mut bits = 0;
    let mut i = 0;
    while i < operands.len() {
        bits |= operands[i].flag();
        i += 1;
    }
    let mut i = 0;
    while i < opts.len() {
        bits |= opts[i].flag();
        i += 1;
    }
    bits
}

impl KernelDef {
    /// The binding number of `operand`, if this kernel binds it.
    pub fn binding(&self, operand: Operand) -> Option<u32> {
        self.slots
            .iter()
            .position(|s| s.operand == operand)
            .map(|i| i as u32 + 1)
    }

    pub fn slot(&self, operand: Operand) -> Option<&Slot> {
        self.slots.iter().find(|s| s.operand == operand)
    }
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
    /// LayerNorm over few long rows, each split over several workgroups: two dispatches, the
    /// parts' sums and then the normalization (`layer_norm.wgsl`, compiled `split`).
    LayerNormSplit,
    /// RMSNorm likewise (`rms_norm.wgsl`, compiled `split`).
    RmsNormSplit,
}

impl Kernel {
    pub const ALL: [Kernel; 8] = [
        Kernel::LayerNorm,
        Kernel::RmsNorm,
        Kernel::Copy,
        Kernel::LayerNormBackward,
        Kernel::RmsNormBackward,
        Kernel::ParamGrad,
        Kernel::LayerNormSplit,
        Kernel::RmsNormSplit,
    ];

    pub fn def(self) -> &'static KernelDef {
        match self {
            Kernel::LayerNorm => &crate::layer_norm::KERNEL,
            Kernel::RmsNorm => &crate::rms_norm::KERNEL,
            Kernel::Copy => &crate::copy::KERNEL,
            Kernel::LayerNormBackward => &crate::layer_norm_backward::KERNEL,
            Kernel::RmsNormBackward => &crate::rms_norm_backward::KERNEL,
            Kernel::ParamGrad => &crate::param_grad::KERNEL,
            Kernel::LayerNormSplit => &crate::layer_norm::SPLIT,
            Kernel::RmsNormSplit => &crate::rms_norm::SPLIT,
        }
    }

    /// The kernel that takes this forward norm's few long rows split over several
    /// workgroups, if it has one.
    pub fn split(self) -> Option<Kernel> {
        match self {
            Kernel::LayerNorm => Some(Kernel::LayerNormSplit),
            Kernel::RmsNorm => Some(Kernel::RmsNormSplit),
            _ => None,
        }
    }

    /// Whether this is a split kernel ([`Kernel::split`]): one part of a row per workgroup.
    pub fn is_split(self) -> bool {
        self.def().wgsl_flags.contains(&"split")
    }

    pub fn name(self) -> &'static str {
        self.def().name
    }

    /// Whether the kernel reduces over a row (and so can use subgroups and a register cache).
    pub fn reduces(self) -> bool {
        matches!(
            self.def().shape,
            Shape::Rows { .. } | Shape::RowsWithPartials { .. }
        )
    }

    /// Most steps one workgroup of this kernel takes, a row or a set of short rows side by
    /// side each (the size of scale.wgsl's marks, which count steps).
    pub fn max_rows_per_group(self) -> u32 {
        match self.def().shape {
            Shape::Rows { .. } => crate::shaders::MAX_ROWS_PER_GROUP,
            Shape::RowsWithPartials { .. } => crate::shaders::MAX_PARTIAL_ROWS_PER_GROUP,
            Shape::Flat | Shape::Columns => 1,
        }
    }

    /// The kernel that reduces this one's partial sums, if it writes any.
    pub fn stage2(self) -> Option<Kernel> {
        match self.def().shape {
            Shape::RowsWithPartials { stage2, .. } => Some(stage2),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_consistent() {
        for k in Kernel::ALL {
            let def = k.def();
            // Params::off has one entry per binding number.
            assert!(def.slots.len() < crate::shaders::Params::OFFSETS, "{k:?}");
            for (i, s) in def.slots.iter().enumerate() {
                assert_eq!(
                    def.binding(s.operand),
                    Some(i as u32 + 1),
                    "{k:?}: duplicate"
                );
                if s.extent == Extent::Partials {
                    assert!(k.stage2().is_some() || k == Kernel::ParamGrad, "{k:?}");
                }
            }
        }
    }

    /// Each table's `flags` are the bits its WGSL (its file, the shared files it includes and
    /// those every kernel has) tests with `has()`: a bit missing there would be compiled in as
    /// absent.
    #[test]
    fn flag_tables_are_what_the_wgsl_tests() {
        let names: Vec<(String, u32)> = Operand::ALL
            .iter()
            .map(|o| (format!("HAS_{}", o.wgsl().to_uppercase()), o.flag()))
            .chain(Opt::ALL.iter().map(|o| (o.wgsl().to_string(), o.flag())))
            .collect();
        for k in Kernel::ALL {
            let def = k.def();
            let mut tested = 0;
            let shared = [
                crate::shaders::COMMON,
                crate::shaders::REDUCE,
                crate::shaders::HALF,
            ];
            let texts = shared
                .into_iter()
                .chain([def.source])
                .chain(def.includes.iter().map(|i| i.1));
            for text in texts {
                // Code only: has() itself is declared in common.wgsl, and comments name it.
                let code: String = text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .collect::<Vec<_>>()
                    .join("\n");
                let text = code.replace("fn has(", "");
                for call in text.split("has(").skip(1) {
                    let name = call.split(')').next().unwrap();
                    let bit = names.iter().find(|(n, _)| n == name);
                    tested |= bit.unwrap_or_else(|| panic!("{k:?}: has({name})")).1;
                }
            }
            assert_eq!(
                def.flags, tested,
                "{k:?}: the table's flags against has() in its WGSL"
            );
        }
    }

    #[test]
    fn flag_bits_are_distinct() {
        let mut all: Vec<u32> = Operand::ALL.iter().map(|o| o.flag()).collect();
        all.extend(Opt::ALL.iter().map(|o| o.flag()));
        let or = all.iter().fold(0, |a, b| a | b);
        assert_eq!(or.count_ones() as usize, all.len());
    }
}
