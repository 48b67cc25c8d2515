//! The launch plan: everything about recording an op that needs no device.
//!
//! [`plan`] validates an op against a device's [`Caps`], chooses the shader variant of each
//! dispatch, splits work that does not fit one binding (or one grid dimension) into several
//! dispatches, and computes their grids, uniform parameters and binding ranges. It reads the
//! op's buffers' sizes and usages and compares them, and calls nothing on the device, so it
//! is unit-tested without a GPU (`tests/plan.rs`, on wgpu's no-op backend). Recording
//! ([`crate::Norms::record`], [`crate::Prepared`]) executes a plan.

use crate::dtype::DType;
use crate::error::{Error, Operand, Result};
use crate::kernel::{Class, Extent, Kernel, Shape, Slot};
use crate::norms::{NormsOptions, Tuning};
use crate::op::{Launch, Op, Operands};
use crate::shaders::{
    LANES, MAX_WORKGROUP_BYTES, MIN_WORKGROUP_SIZE, Params, RowTuning, Variant, row_groups,
    rows_per_group, split_parts,
};
use crate::tensor::TensorRef;

/// Largest binding we make, whatever the device allows: keeps every element index in u32.
const MAX_BINDING: u64 = 1 << 31;

/// What the plan needs to know of a device: read once from its limits and features.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Largest workgroup to use: the largest power of two the device allows.
    pub max_wg: u32,
    /// Reduce with subgroup operations.
    pub subgroups: bool,
    /// Largest storage binding we make (a multiple of 16).
    pub max_binding: u64,
    /// Where a storage binding may start: `min_storage_buffer_offset_alignment`, at least 16.
    pub align: u64,
    pub max_groups_per_dim: u32,
    /// The launch-shape knobs ([`NormsOptions::tuning`]), checked.
    pub tuning: Tuning,
    /// Two storage bindings of one dispatch may overlap in one buffer when either is written.
    /// WebGPU forbids it (a browser reports "writable storage buffer binding aliasing" and
    /// drops the dispatch), wgpu's native backends allow it: in place and arenas work there.
    pub writable_aliasing: bool,
}

impl Caps {
    /// The capabilities of a device with `limits` and `features`, or why the kernels cannot
    /// run on it.
    pub fn new(
        limits: &wgpu::Limits,
        features: wgpu::Features,
        options: NormsOptions,
    ) -> Result<Self> {
        let allowed = limits
            .max_compute_invocations_per_workgroup
            .min(limits.max_compute_workgroup_size_x)
            .min(
                options
                    .max_workgroup_size
                    .unwrap_or(u32::MAX)
                    .max(MIN_WORKGROUP_SIZE),
            );
        if allowed < MIN_WORKGROUP_SIZE {
            return Err(Error::UnsupportedDevice(format!(
                "needs {MIN_WORKGROUP_SIZE} invocations per workgroup, the device allows {allowed}"
            )));
        }
        let needed = Kernel::ALL
            .iter()
            .map(|k| k.def().slots.len() as u32)
            .max()
            .unwrap_or(0);
        if limits.max_storage_buffers_per_shader_stage < needed {
            return Err(Error::UnsupportedDevice(format!(
                "needs {needed} storage buffers per shader stage, the device allows {}",
                limits.max_storage_buffers_per_shader_stage
            )));
        }
        if limits.max_compute_workgroup_storage_size < MAX_WORKGROUP_BYTES {
            return Err(Error::UnsupportedDevice(format!(
                "needs {MAX_WORKGROUP_BYTES} bytes of workgroup memory, the device allows {}",
                limits.max_compute_workgroup_storage_size
            )));
        }
        let t = options.tuning;
        let v_ok = |v: u32| v.is_power_of_two() && v <= 64;
        if ![
            t.v_per_invocation,
            t.v_per_invocation_16bit,
            t.v_per_invocation_strided,
            t.side_by_side_below,
            t.side_by_side_below_backward,
        ]
        .into_iter()
        .all(v_ok)
            || t.bytes_per_group < 4
        {
            return Err(Error::BadTuning(format!(
                "{t:?}: v_per_invocation, v_per_invocation_16bit, v_per_invocation_strided, \
                 side_by_side_below and side_by_side_below_backward must be powers of two from \
                 1 to 64 and bytes_per_group at least 4"
            )));
        }
        Ok(Caps {
            tuning: t,
            max_wg: 1 << allowed.ilog2(),
            subgroups: options.subgroups && features.contains(wgpu::Features::SUBGROUP),
            max_binding: limits.max_storage_buffer_binding_size.min(MAX_BINDING) & !15,
            align: u64::from(limits.min_storage_buffer_offset_alignment).max(16),
            max_groups_per_dim: limits.max_compute_workgroups_per_dimension,
            writable_aliasing: !cfg!(target_arch = "wasm32"),
        })
    }

    /// A 2-D grid of `groups` workgroups (one dimension stops at 65535).
    pub fn grid(&self, groups: u64) -> [u32; 2] {
        let max = u64::from(self.max_groups_per_dim);
        let x = groups.clamp(1, max);
        [x as u32, groups.div_ceil(x) as u32]
    }
}

/// The dispatches that record one op, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The op's kernel, for labels.
    pub name: &'static str,
    /// Empty for zero rows (but a backward still resets or keeps its parameter gradients).
    pub steps: Vec<Step>,
    /// Bytes of the crate's own partial-sum buffer the steps use (0 for none).
    pub scratch: u64,
}

/// One dispatch.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub variant: Variant,
    pub params: Params,
    /// Workgroups in x and y.
    pub grid: [u32; 2],
    /// What binding `i + 1` of the variant's kernel table is bound to.
    pub binds: Vec<Bind>,
}

/// What one binding of a dispatch is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind {
    /// A byte range of the operand's buffer, starting at a multiple of the device's offset
    /// alignment at or before the operand (the rest of the way is `params.off`).
    Operand {
        operand: Operand,
        offset: u64,
        size: u64,
    },
    /// The first `size` bytes of the crate's partial-sum buffer.
    Scratch { size: u64 },
    /// An optional operand that is absent: a small buffer of the crate's own.
    Absent,
}

/// The plan of `op` on a device with `caps`: every check, no device call.
pub fn plan(caps: &Caps, op: &impl Op) -> Result<Plan> {
    plan_launch(caps, &op.launch()?)
}

/// A launch after validation: what every dispatch of it needs.
pub(crate) struct Checked<'a> {
    pub rows: u64,
    pub dim: u32,
    pub vec4: bool,
    /// Every row tensor's rows start on the same half of a 32-bit word, and at D % 4 == 0 on
    /// a word boundary: 16-bit strided rows may take paired `V`s
    /// ([`Variant::pairs`]).
    pub pairs: bool,
    /// Presence bits of the operands and the launch's options.
    pub flags: u32,
    /// Rows per dispatch: each binding of a row tensor holds at most this many.
    pub chunk_rows: u64,
    pub act: DType,
    pub param: DType,
    operands: Operands<'a>,
}

impl<'a> Checked<'a> {
    pub fn operand(&self, o: Operand) -> Option<TensorRef<'a>> {
        self.operands.get(o)
    }

    fn elem_size(&self, s: &Slot) -> u64 {
        elem_size(s.class, self.act, self.param)
    }
}

fn elem_size(class: Class, act: DType, param: DType) -> u64 {
    match class {
        Class::Act => act.size(),
        Class::Param => param.size(),
        Class::F32 => 4,
    }
}

pub(crate) fn plan_launch(caps: &Caps, l: &Launch) -> Result<Plan> {
    let c = check(caps, l)?;
    let def = l.kernel.def();
    let shared = shares_buffers(l.kernel, &c);
    // The row kernels' variant, for this device's tuning and the op's storage.
    let strided_forward =
        crate::shaders::is_strided(l.kernel, c.vec4) && matches!(def.shape, Shape::Rows { .. });
    let row_tuning = |v_per_invocation| RowTuning {
        v_per_invocation,
        side_by_side_below: caps.tuning.side_by_side_below,
        side_by_side_below_backward: caps.tuning.side_by_side_below_backward,
    };
    let v_per_invocation = caps.tuning.v_per_invocation_for(c.act, strided_forward);
    let row_variant = || {
        let v = Variant::for_row_with(
            l.kernel,
            c.dim,
            c.vec4,
            caps.subgroups,
            shared,
            caps.max_wg,
            row_tuning(v_per_invocation),
        )
        .with_storage(c.act, c.param);
        Variant {
            paired: c.pairs && v.pairs(),
            ..v
        }
    };
    let mut steps = Vec::new();
    match def.shape {
        Shape::Flat => {
            let v = Variant::for_row(l.kernel, c.dim, c.vec4, false, shared, caps.max_wg);
            let lanes = if c.vec4 { 4 } else { 1 };
            for (r0, rows) in chunks(&c) {
                let groups = (rows * u64::from(c.dim) / lanes).div_ceil(u64::from(v.wg * v.cache));
                steps.push(row_step(caps, l, &c, v, r0, rows, 1, groups, None));
            }
        }
        Shape::Rows { .. } => {
            let v = row_variant();
            // Rows side by side count once per step: `per_group` rows in all.
            let side_by_side = v.rows_side_by_side();
            let steps_per_group =
                rows_per_group(c.dim, c.act.size() as u32, caps.tuning.bytes_per_group)
                    .div_ceil(side_by_side);
            let per_group = u64::from(steps_per_group * side_by_side);
            // Few long rows are split over several workgroups (split.wgsl), unless an output
            // may overwrite an input (a part's retry reads the whole row) or per-row
            // statistics are asked for (the split kernels have no room for them).
            let split = l.kernel.split().filter(|_| {
                !shared
                    && !def
                        .slots
                        .iter()
                        .any(|s| s.extent == Extent::PerRow && c.operand(s.operand).is_some())
            });
            let lanes = if c.vec4 { LANES } else { 1 };
            for (r0, rows) in chunks(&c) {
                let parts = split_parts(rows, c.dim / lanes, caps.tuning.split_groups);
                if let Some(kernel) = split.filter(|_| parts > 1) {
                    // Each part is a row of its own to the variant: its workgroup and cache.
                    // Its V's are single elements, not strided ones.
                    let v = Variant::for_row_with(
                        kernel,
                        (c.dim / lanes).div_ceil(parts) * lanes,
                        c.vec4,
                        caps.subgroups,
                        false,
                        caps.max_wg,
                        row_tuning(caps.tuning.v_per_invocation_for(c.act, false)),
                    )
                    .with_storage(c.act, c.param);
                    // The parts' sums, then the normalization.
                    for stats in [true, false] {
                        let v = Variant { stats, ..v };
                        let mut step =
                            row_step(caps, l, &c, v, r0, rows, 1, rows * u64::from(parts), None);
                        step.params.parts = parts;
                        steps.push(step);
                    }
                    continue;
                }
                let groups = rows.div_ceil(per_group);
                steps.push(row_step(
                    caps,
                    l,
                    &c,
                    v,
                    r0,
                    rows,
                    steps_per_group,
                    groups,
                    None,
                ));
            }
        }
        Shape::RowsWithPartials { stage2, .. } => {
            let mut v = row_variant();
            // The statistics the kernel reads, given by the forward pass.
            v.saved = def.slots.iter().any(|s| {
                s.extent == Extent::PerRow && !s.access.writes() && c.operand(s.operand).is_some()
            });
            let arrays = stage2
                .def()
                .slots
                .iter()
                .filter(|s| c.operand(s.operand).is_some())
                .count() as u32;
            let slots = v.rows_side_by_side();
            let p = crate::param_grad::partials(caps, &c, arrays, v.wg, slots, v.paired)?;
            v.paired = p.paired;
            if c.rows == 0 && arrays > 0 {
                // No partials: the sums over nothing are 0 (or what is there, when
                // accumulating).
                steps.push(crate::param_grad::step(caps, &c, &p, 0, 0));
            }
            for (chunk, (r0, rows)) in chunks(&c).enumerate() {
                let groups = row_groups(rows, u64::from(p.rows_per_group * slots), v.paired);
                let row = row_step(caps, l, &c, v, r0, rows, p.rows_per_group, groups, Some(&p));
                steps.push(row);
                if arrays > 0 {
                    steps.push(crate::param_grad::step(caps, &c, &p, groups as u32, chunk));
                }
            }
        }
        Shape::Columns => {
            return Err(Error::Internal(format!(
                "{} is not an op's kernel",
                def.name
            )));
        }
    }
    if !caps.writable_aliasing {
        reject_writable_aliasing(l.kernel, &c, &steps)?;
    }
    let scratch = steps
        .iter()
        .flat_map(|s| &s.binds)
        .filter_map(|b| match b {
            Bind::Scratch { size } => Some(*size),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    Ok(Plan {
        name: def.name,
        steps,
        scratch,
    })
}

/// Where the device forbids it (WebGPU), two bindings of one dispatch that overlap in one
/// buffer, either of them written: an op in place, or operands whose binding ranges (widened
/// to the offset alignment) meet in an arena.
fn reject_writable_aliasing(kernel: Kernel, c: &Checked, steps: &[Step]) -> Result<()> {
    for step in steps
        .iter()
        .filter(|s| s.variant.kernel == kernel || Some(s.variant.kernel) == kernel.split())
    {
        let slots = step.variant.kernel.def().slots;
        let bound: Vec<_> = step
            .binds
            .iter()
            .zip(slots)
            .filter_map(|(b, s)| match *b {
                Bind::Operand {
                    operand,
                    offset,
                    size,
                } => Some((s, c.operand(operand)?.buffer, offset, offset + size)),
                _ => None,
            })
            .collect();
        for (i, &(sa, ba, a0, a1)) in bound.iter().enumerate() {
            for &(sb, bb, b0, b1) in &bound[i + 1..] {
                if ba == bb && a0 < b1 && b0 < a1 && (sa.access.writes() || sb.access.writes()) {
                    return Err(Error::Unsupported(
                        "operands that share a buffer where one is written (in place, or \
                         binding ranges meeting within the offset alignment): WebGPU forbids \
                         writable storage bindings that alias",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `(first row, rows)` of each dispatch.
fn chunks(c: &Checked) -> impl Iterator<Item = (u64, u64)> + use<> {
    let (total, chunk) = (c.rows, c.chunk_rows);
    (0..total.div_ceil(chunk)).map(move |i| (i * chunk, chunk.min(total - i * chunk)))
}

/// One dispatch of a row kernel (or the copy) over `rows` rows from `r0`: of the variant's
/// kernel, which is the launch's own or, for few long rows, its split kernel.
#[allow(clippy::too_many_arguments)]
fn row_step(
    caps: &Caps,
    l: &Launch,
    c: &Checked,
    variant: Variant,
    r0: u64,
    rows: u64,
    rows_per_group: u32,
    groups: u64,
    partials: Option<&crate::param_grad::Partials>,
) -> Step {
    let variant = variant.with_flags(c.flags);
    let mut params = Params {
        rows: rows as u32,
        dim: c.dim,
        eps: l.eps,
        flags: c.flags,
        rows_per_group,
        part_rows: groups as u32,
        stat_len: l.stat_len.map_or(c.dim, |k| k as u32),
        parts: 1,
        ..Params::default()
    };
    let binds = variant
        .kernel
        .def()
        .slots
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let size = c.elem_size(s);
            let row = u64::from(c.dim) * size;
            let (start, len) = match s.extent {
                Extent::Rows => (r0 * row, rows * row),
                Extent::Dim => (0, row),
                Extent::PerRow => (r0 * 4, rows * 4),
                Extent::Partials => {
                    return match partials {
                        Some(p) if p.arrays > 0 => Bind::Scratch {
                            size: groups * u64::from(c.dim) * 4 * u64::from(p.arrays),
                        },
                        _ => Bind::Absent,
                    };
                }
                // For each part of each row (`groups`: one workgroup per part).
                Extent::RowParts => {
                    return Bind::Scratch {
                        size: groups * u64::from(crate::kernel::ROW_PART_F32S) * 4,
                    };
                }
            };
            match c.operand(s.operand) {
                Some(t) => {
                    let (offset, size, off) = bind_range(t.offset + start, len, size, caps.align);
                    params.off[i + 1] = off;
                    Bind::Operand {
                        operand: s.operand,
                        offset,
                        size,
                    }
                }
                None => Bind::Absent,
            }
        })
        .collect();
    Step {
        variant,
        params,
        grid: caps.grid(groups),
        binds,
    }
}

/// The binding (offset, size) for `len` bytes at byte `at`: it starts at the alignment below
/// `at` and covers whole words (`check_operand` made sure the last word is in the buffer).
/// Returns it with the offset of the data inside it, in elements of `size` bytes.
pub(crate) fn bind_range(at: u64, len: u64, size: u64, align: u64) -> (u64, u64, u32) {
    let bind_at = at / align * align;
    let end = (at + len).next_multiple_of(4);
    (bind_at, end - bind_at, ((at - bind_at) / size) as u32)
}

/// Validates a launch: shape, eps, every operand against its slot, aliasing, the limits.
fn check<'a>(caps: &Caps, l: &Launch<'a>) -> Result<Checked<'a>> {
    if l.dim == 0 {
        return Err(Error::ZeroDim);
    }
    if !(l.eps.is_finite() && l.eps >= 0.0) {
        return Err(Error::BadEpsilon(l.eps));
    }
    let too_large = Error::ShapeTooLarge {
        rows: l.rows,
        dim: l.dim,
    };
    let dim = u32::try_from(l.dim).map_err(|_| too_large.clone())?;
    (l.rows as u64)
        .checked_mul(u64::from(dim) * 4)
        .ok_or(too_large)?;
    let def = l.kernel.def();
    let kernels = [Some(l.kernel), l.kernel.stage2()];
    let slot_of = |o: Operand| kernels.iter().flatten().find_map(|k| k.def().slot(o));
    let mut flags = l.options;
    let mut all = Vec::new();
    for (operand, t) in l.operands.iter() {
        let slot = slot_of(operand).ok_or_else(|| {
            Error::Internal(format!("{operand} is not an operand of {}", def.name))
        })?;
        flags |= operand.flag();
        let size = elem_size(slot.class, l.act, l.param);
        let (count, what) = match slot.extent {
            Extent::Rows => (l.rows as u64 * u64::from(dim), "rows x dim elements"),
            Extent::Dim => (u64::from(dim), "dim elements"),
            Extent::PerRow => (l.rows as u64, "one f32 per row"),
            Extent::Partials | Extent::RowParts => {
                return Err(Error::Internal("partial sums are the crate's own".into()));
            }
        };
        check_operand(operand, &t, count * size, size, what)?;
        all.push((*slot, t));
    }
    if let Some(s) = def
        .slots
        .iter()
        .find(|s| s.required && l.operands.get(s.operand).is_none())
    {
        return Err(Error::Internal(format!("{} needs {}", def.name, s.operand)));
    }
    // The op modules compute it in 1..=dim.
    debug_assert!(l.stat_len.is_none_or(|k| k >= 1 && k <= l.dim));
    check_aliasing(&all)?;

    let row_bytes = u64::from(dim) * l.act.size();
    // Every row- or dim-sized binding holds a whole row at least: the widest of them (an f32
    // weight with 16-bit activations, say) must fit one binding.
    let widest = all
        .iter()
        .filter(|(s, _)| matches!(s.extent, Extent::Rows | Extent::Dim))
        .map(|(s, _)| u64::from(dim) * elem_size(s.class, l.act, l.param))
        .fold(row_bytes, u64::max);
    if widest + caps.align > caps.max_binding {
        return Err(Error::RowTooLarge {
            dim: l.dim,
            row_bytes: widest,
            max_binding: caps.max_binding,
        });
    }
    // vec4 access needs every row- or dim-sized operand to start on 4 elements.
    let vec4 = dim.is_multiple_of(4)
        && all
            .iter()
            .filter(|(s, _)| matches!(s.extent, Extent::Rows | Extent::Dim))
            .all(|(s, t)| {
                let size = elem_size(s.class, l.act, l.param);
                t.offset.is_multiple_of(4 * size)
            });
    // Bindings start on `align` (at least 16 bytes), so an operand's element offset has the
    // parity of its offset in the binding, and each of its rows' starts that of the same row's
    // in every other row tensor where those offsets agree.
    let parities: Vec<u64> = all
        .iter()
        .filter(|(s, _)| s.extent == Extent::Rows)
        .map(|(s, t)| t.offset / elem_size(s.class, l.act, l.param) % 2)
        .collect();
    let pairs = l.act.size() == 2
        && parities.windows(2).all(|p| p[0] == p[1])
        && (!dim.is_multiple_of(4) || parities.iter().all(|&p| p == 0));
    // Rows per dispatch: each binding may start up to `align` bytes before its data, and the
    // per-row statistics (4 bytes a row) must fit too: a 16-bit row of D = 1 is 2 bytes.
    let max_groups = u64::from(caps.max_groups_per_dim).pow(2);
    let chunk_rows = ((caps.max_binding - caps.align) / row_bytes.max(4)).min(max_groups);
    Ok(Checked {
        rows: l.rows as u64,
        dim,
        vec4,
        pairs,
        flags,
        chunk_rows,
        act: l.act,
        param: l.param,
        operands: l.operands,
    })
}

/// Whether an input of `kernel` shares a buffer with one of its outputs: wgpu then needs
/// every input bound read_write (a buffer is either read-only or writable in a dispatch).
fn shares_buffers(kernel: Kernel, c: &Checked) -> bool {
    let bound: Vec<(&Slot, TensorRef)> = kernel
        .def()
        .slots
        .iter()
        .filter_map(|s| c.operand(s.operand).map(|t| (s, t)))
        .collect();
    bound.iter().any(|(sa, a)| {
        !sa.access.writes()
            && bound
                .iter()
                .any(|(sb, b)| sb.access.writes() && a.buffer == b.buffer)
    })
}

/// Rejects written ranges that overlap anything but an identical input range of the same
/// shape (in place).
fn check_aliasing(all: &[(Slot, TensorRef)]) -> Result<()> {
    for (i, (sa, a)) in all.iter().enumerate() {
        for (sb, b) in &all[i + 1..] {
            let (wa, wb) = (sa.access.writes(), sb.access.writes());
            if a.buffer != b.buffer || !(wa || wb) {
                continue;
            }
            let overlap = a.offset < b.end() && b.offset < a.end();
            // Each element is read before it is written, by the same invocation.
            let in_place = wa != wb
                && sa.extent == Extent::Rows
                && sb.extent == Extent::Rows
                && a.offset == b.offset
                && a.size == b.size;
            if overlap && !in_place {
                let (written, other) = if wa { (sa, sb) } else { (sb, sa) };
                return Err(Error::Overlap {
                    written: written.operand,
                    other: other.operand,
                });
            }
        }
    }
    Ok(())
}

fn check_operand(
    operand: Operand,
    t: &TensorRef,
    expected: u64,
    element: u64,
    what: &'static str,
) -> Result<()> {
    if !t.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(Error::MissingUsage {
            operand,
            usage: t.buffer.usage(),
        });
    }
    if !t.offset.is_multiple_of(element) {
        return Err(Error::MisalignedOffset {
            operand,
            offset: t.offset,
            element,
        });
    }
    if t.size != expected {
        return Err(Error::WrongSize {
            operand,
            expected,
            actual: t.size,
            what,
        });
    }
    // Bindings cover whole 32-bit words: a 16-bit tensor ending mid-word needs the rest of
    // that word inside the buffer (it is never written).
    if t.offset
        .checked_add(t.size)
        .is_none_or(|end| end.next_multiple_of(4) > t.buffer.size())
    {
        return Err(Error::OutOfBounds {
            operand,
            offset: t.offset,
            end: t.end().next_multiple_of(4),
            buffer_size: t.buffer.size(),
        });
    }
    Ok(())
}
