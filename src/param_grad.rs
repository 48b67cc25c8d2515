//! Backward stage 2: host side of `shaders/param_grad.wgsl`, which sums the row kernels'
//! partial column sums into dweight and dbias in a fixed order (no float atomics, so the
//! same input gives the same bits). Used by both backward ops; tested through them.

use crate::error::{Error, Operand, Result};
use crate::kernel::{
    Access, Extent, Kernel, KernelDef, Opt, PARTIALS, Shape, Slot, grad_param, has,
};
use crate::plan::{Bind, Caps, Checked, Step, bind_range};
use crate::shaders::{
    MAX_PARTIAL_ROWS, MAX_PARTIAL_ROWS_PER_GROUP, PARTIAL_INVOCATIONS, Params, Variant, row_groups,
};

/// The kernel's bindings, in binding order (1, 2, ...).
pub(crate) const KERNEL: KernelDef = KernelDef {
    name: "param_grad",
    source: include_str!("../shaders/param_grad.wgsl"),
    slots: &[
        Slot {
            access: Access::Read,
            ..PARTIALS
        },
        grad_param(Operand::GradWeight),
        grad_param(Operand::GradBias),
    ],
    shape: Shape::Columns,
    includes: &[],
    wgsl_flags: &[],
    flags: has(
        &[Operand::GradWeight, Operand::GradBias],
        &[Opt::AccumulateParams],
    ),
};

/// The option bits of a backward op's accumulation flags.
pub(crate) fn accumulate(grad_input: bool, grad_params: bool) -> u32 {
    let mut f = 0;
    if grad_input {
        f |= Opt::AccumulateDx.flag();
    }
    if grad_params {
        f |= Opt::AccumulateParams.flag();
    }
    f
}

/// How the backward row kernel spreads its rows so that its partial sums stay few.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Partials {
    /// Partial-sum arrays (dweight, dbias) wanted: 0, 1 or 2.
    pub arrays: u32,
    /// Steps each workgroup of the row kernel takes, `slots` rows each (one partial row per
    /// workgroup).
    pub rows_per_group: u32,
    /// The row kernel takes paired `V`s, its workgroups in pairs ([`row_groups`]).
    pub paired: bool,
}

/// Partial rows: one per workgroup of the row kernel, a count fixed by the shape alone, so
/// the order of every sum is too. Aimed at `PARTIAL_INVOCATIONS / workgroup size` (enough
/// workgroups to fill a large GPU, few enough that the partial sums are a small fraction of
/// the traffic); each chunk's partial rows fit one binding. A workgroup of `slots` short rows
/// side by side takes `slots` rows a step. Paired `V`s (`paired`) take their workgroups in
/// pairs ([`crate::shaders::row_groups`]): at most one more partial row, and never paired
/// where a binding holds fewer than two.
pub(crate) fn partials(
    caps: &Caps,
    c: &Checked,
    arrays: u32,
    wg: u32,
    slots: u32,
    paired: bool,
) -> Result<Partials> {
    // Partial sums are f32 whatever the storage.
    let part_row = u64::from(c.dim) * 4;
    let by_size = caps.max_binding / (part_row * u64::from(arrays.max(1)));
    if by_size == 0 {
        return Err(Error::RowTooLarge {
            dim: c.dim as usize,
            row_bytes: part_row * u64::from(arrays),
            max_binding: caps.max_binding,
        });
    }
    let target = u64::from((PARTIAL_INVOCATIONS / wg).clamp(1, MAX_PARTIAL_ROWS));
    let slots = u64::from(slots);
    let per_group = c
        .rows
        .div_ceil(target.min(by_size) * slots)
        .clamp(1, u64::from(MAX_PARTIAL_ROWS_PER_GROUP));
    // Each dispatch's partial rows fit one binding (at most a few steps a workgroup for that);
    // paired workgroups may take one row more than ceil(rows / per_group).
    let paired = paired && by_size >= 2;
    let fit = if paired { by_size - 1 } else { by_size };
    let per_group = per_group.max(c.chunk_rows.div_ceil(fit * slots));
    debug_assert!(per_group <= u64::from(MAX_PARTIAL_ROWS_PER_GROUP));
    debug_assert!(row_groups(c.chunk_rows, per_group * slots, paired) <= by_size);
    Ok(Partials {
        arrays,
        rows_per_group: per_group as u32,
        paired,
    })
}

/// The stage-2 dispatch after a row-kernel dispatch that wrote `part_rows` partial rows.
/// Chunks after the first add to what the earlier ones wrote.
pub(crate) fn step(caps: &Caps, c: &Checked, p: &Partials, part_rows: u32, chunk: usize) -> Step {
    let variant =
        Variant::columns(Kernel::ParamGrad, part_rows, c.vec4, caps.max_wg).with_flags(c.flags);
    let mut params = Params {
        rows: part_rows,
        dim: c.dim,
        flags: c.flags,
        part_rows,
        parts: 1,
        ..Params::default()
    };
    if chunk > 0 {
        params.flags |= Opt::AccumulateParams.flag();
    }
    let binds = KERNEL
        .slots
        .iter()
        .enumerate()
        .map(|(i, s)| match s.extent {
            Extent::Partials if part_rows > 0 => Bind::Scratch {
                size: u64::from(part_rows) * u64::from(c.dim) * 4 * u64::from(p.arrays),
            },
            Extent::Partials => Bind::Absent,
            _ => match c.operand(s.operand) {
                Some(t) => {
                    let (offset, size, off) = bind_range(t.offset, t.size, 4, caps.align);
                    params.off[i + 1] = off;
                    Bind::Operand {
                        operand: s.operand,
                        offset,
                        size,
                    }
                }
                None => Bind::Absent,
            },
        })
        .collect();
    let lanes = if c.vec4 { 4 } else { 1 };
    let columns = u64::from(c.dim / lanes);
    let groups = columns.div_ceil(u64::from(variant.columns_per_group()));
    Step {
        variant,
        params,
        grid: caps.grid(groups),
        binds,
    }
}
