//! WGSL sources and their variants.
//!
//! Each kernel is one file under `shaders/`. A variant is that file plus the shared ones
//! (`common.wgsl`, `reduce.wgsl`, ...) behind code generated here: a prelude of the Rust
//! constants (workgroup size, cache length, vector width, flag bits and the launch's
//! compiled-in ones, [`Variant::flags`]) and the declarations and
//! typed accessors of every binding, from the kernel's table ([`crate::kernel`]). `//#if NAME`
//! / `//#else` / `//#endif` blocks are resolved for the variant, and `//#unroll` blocks
//! unrolled. `tests/shaders.rs` parses and validates every variant with naga, without a GPU,
//! and reflects its bindings against the table.

use bytemuck::{Pod, Zeroable};

use crate::dtype::DType;
use crate::error::Operand;
pub use crate::kernel::Kernel;
use crate::kernel::{Class, Extent, Opt, ROW_PART_F32S, Shape};

/// A forward row longer than its register cache by at most 1 / TAIL_SHARE of the cache keeps
/// the cache's worth in registers and streams only the rest, its tail ([`Variant::tail`]);
/// longer rows are streamed whole. On lavapipe a row of 17 `V`s per invocation (D = 4097 over
/// 64 invocations) ran 1.4× faster so; but the unrolled cache is what a shader compiler pays
/// for. With a tail at every long row, test binaries on lavapipe took 2-6× as long
/// (tests/limits.rs 3.5 to 22 s), and OpenGL's tests/half_precision.rs 1667 s where it took
/// 39 s without. Those figures probably compared a cold Mesa shader cache with a warm one
/// (BENCHMARKS.md, 2026-11-28): this limit stands until both are timed cold.
pub const TAIL_SHARE: u32 = 8;

/// Smallest workgroup the kernels use (one workgroup per row).
pub const MIN_WORKGROUP_SIZE: u32 = 64;

/// Largest workgroup the kernels use, where the device allows it.
pub const MAX_WORKGROUP_SIZE: u32 = 1024;

/// Most bytes of workgroup memory any kernel declares: wgpu's smallest compute limit
/// (`Limits::downlevel_defaults().max_compute_workgroup_storage_size`, which every device
/// with compute shaders meets), so that no workgroup size the plan may pick overruns a
/// device. wgpu 30 does not check a pipeline's workgroup memory against the device's limit
/// (gfx-rs/wgpu#8946; a browser does), so tests/shaders.rs measures every variant with naga
/// against this figure, and a device reporting less is refused
/// ([`crate::Error::UnsupportedDevice`]).
/// The largest, at 1024 invocations (2026-11-29, every variable declared, each rounded to
/// 16 bytes): 14352 bytes, the LayerNorm backward with subgroups (`wg_sum`'s halves, the
/// moments' halves and the three sums); without subgroups 12304, the tree's `red` of
/// 3 · 1024 f32.
pub const MAX_WORKGROUP_BYTES: u32 = 16352;

/// Row elements (`V`s of four elements) each invocation aims to handle, at least (fewer than
/// twice as many, [`workgroup_size`]): the workgroup grows with D until it reaches the
/// largest size, so short rows are not spread thinly over idle invocations and every
/// invocation has several loads in flight. Where D % 4 != 0 a `V` is
/// four elements still, strided over the row's invocations ([`Variant::strided`]); only a
/// split row's parts take one element per `V` ([`LANES`] times as many, up to [`MAX_CACHE`]).
pub const V_PER_INVOCATION: u32 = 8;

/// [`V_PER_INVOCATION`] where rows are stored in 16 bits: as many as f32 rows take, though a
/// 16-bit `V` moves half the bytes. A cached `V` is four f32 registers whatever the storage,
/// and on an H200 (2026-11-27, commit 7cd02a4) twice as many (16) read bf16 rows at D = 4096
/// 1.4–1.6× slower than 8 (LayerNorm 1168 against 1860 GB/s, RMSNorm 1533 against 2169),
/// where lavapipe had read them 1.3–1.5× faster (1114ab3): the autotune's last stage times
/// twice as many, and a CPU adapter takes them there.
pub const V_PER_INVOCATION_16BIT: u32 = V_PER_INVOCATION;

/// Elements in the `V` of the vec4 path.
pub const LANES: u32 = 4;

/// Longest register cache, in `V`s per invocation. Rows that fit are read from memory once;
/// longer rows are streamed again (in practice from cache) for each pass, but for the tail
/// of a forward row that nearly fits ([`TAIL_SHARE`]). The cache is
/// unrolled into the shader's text, and its length is what a shader compiler pays for: Mesa's
/// GLSL path took 4× as long at 32 scalar `V`s as at 16.
pub const MAX_CACHE: u32 = 16;

/// Bytes of rows each norm workgroup handles at least, one row (or one set of rows side by
/// side) after another: short rows share a workgroup so that the launch of one is paid for by
/// enough traffic.
pub const BYTES_PER_GROUP: u32 = 16384;

/// Most rows one workgroup handles, so that tiny D still spreads over many workgroups.
pub const MAX_ROWS_PER_GROUP: u32 = 64;

/// Fewest `V`s in each part of a forward row split over several workgroups (few long rows,
/// [`split_parts`]): a part moves at least a smallest workgroup's worth of `V`s four times.
pub const MIN_PART: u32 = 4 * MIN_WORKGROUP_SIZE;

/// Most parts of one split row: each workgroup of the second dispatch adds every part's sums.
pub const MAX_PARTS: u32 = 64;

/// Workgroups a forward dispatch aims to keep busy before it splits rows over several
/// (the default of [`crate::Tuning::split_groups`]): about one per multiprocessor of a large
/// GPU (an H100 and an H200 have 132).
pub const SPLIT_GROUPS: u32 = 128;

/// V's an invocation takes per iteration where it reads a whole row alone (scale.wgsl's
/// retry), written out: the fewer the iterations, the further a CPU adapter that caps every
/// invocation's loop iterations (llvmpipe: 65535 in all) gets. The WGSL constant `SERIAL`.
pub const SERIAL_UNROLL: u32 = 4;

/// Most steps one workgroup of a backward row kernel takes, one row each (or one set of short
/// rows side by side): each workgroup writes one row of partial sums, so few rows a workgroup
/// means many partial rows; many rows are spread over more workgroups rather than more steps
/// each.
pub const MAX_PARTIAL_ROWS_PER_GROUP: u32 = 1024;

/// The copy kernel's shape: a plain copy, independent of D.
const COPY_WORKGROUP_SIZE: u32 = 256;
const COPY_V_PER_INVOCATION: u32 = 4;

/// The backward stage-2 kernel's workgroup: `WG / SLICES` V-columns, each summed by `SLICES`
/// slices of the partial rows ([`param_grad_slices`]).
const PARAM_GRAD_WORKGROUP_SIZE: u32 = 256;
/// Partial rows each param_grad invocation sums on its own before the slices are added.
pub const ROWS_PER_SLICE: u32 = 16;
/// Fewest V-columns a param_grad workgroup owns.
pub const MIN_COLUMNS: u32 = 4;

/// Backward: partial-sum rows (workgroups of the row kernel) aimed for, spread as
/// `PARTIAL_INVOCATIONS / workgroup size`, at most [`MAX_PARTIAL_ROWS`]: enough workgroups to
/// fill a large GPU, few enough that the partial sums are a small fraction of the traffic.
pub const PARTIAL_INVOCATIONS: u32 = 131072;
pub const MAX_PARTIAL_ROWS: u32 = 1024;

/// Register budget of the cache: `cache * workgroup` stays within this many `V`s, so that a
/// 1024-invocation workgroup (at most 64 registers each on many GPUs) does not spill. Counted
/// in `V`s of either width: counted in 32-bit registers it would let one-element `V`s fill
/// four times as many, and a scalar backward at D = 4097 that kept its row in registers that
/// way ran 30-40 % slower on lavapipe than streaming it (2026-11-27).
const CACHE_BUDGET: u32 = 8192;

const _: () = assert!(MIN_WORKGROUP_SIZE.is_power_of_two() && MAX_WORKGROUP_SIZE.is_power_of_two());
const _: () = assert!(MAX_CACHE.is_power_of_two() && V_PER_INVOCATION.is_power_of_two());
const _: () = assert!(LANES.is_power_of_two());

/// A forward row goes side by side with others in one workgroup ([`Variant::row_wg`]) when it
/// has fewer `V`s than this many per invocation of the smallest workgroup: the default of
/// [`crate::Tuning::side_by_side_below`] (`Variant::for_row_with` says what was measured).
pub const SIDE_BY_SIDE_BELOW: u32 = 2;

/// The same for the backward, whose kernels take half the forward's `V`s per invocation: the
/// default of [`crate::Tuning::side_by_side_below_backward`].
pub const SIDE_BY_SIDE_BELOW_BACKWARD: u32 = 1;

/// What a device's [`crate::Tuning`] says of one row kernel's launch shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowTuning {
    /// `V`s per forward invocation aimed for, the backward taking half as many
    /// ([`crate::Tuning::v_per_invocation_for`]).
    pub v_per_invocation: u32,
    /// [`crate::Tuning::side_by_side_below`].
    pub side_by_side_below: u32,
    /// [`crate::Tuning::side_by_side_below_backward`].
    pub side_by_side_below_backward: u32,
}

impl Default for RowTuning {
    fn default() -> Self {
        RowTuning {
            v_per_invocation: V_PER_INVOCATION,
            side_by_side_below: SIDE_BY_SIDE_BELOW,
            side_by_side_below_backward: SIDE_BY_SIDE_BELOW_BACKWARD,
        }
    }
}

/// The workgroup size for a row of `lanes`-wide elements on a device that allows `max_wg`
/// invocations (a power of two). The one source of truth for the WGSL constant `WG`.
///
/// The largest power of two that gives each invocation at least `per_invocation` `V`s (fewer
/// than twice as many), unless that is more than [`MAX_CACHE`] (or `per_invocation`, where
/// it is larger): the register cache is then the row's share exactly, not rounded up
/// (`cache_len`). A row of a power of two of `V`s takes `per_invocation` either way. Until
/// 2026-11-28 the workgroup was the smallest power of two with at most `per_invocation`
/// each, and the cache that rounded up to a power of two: at D = 4097 (1025 `V`s) 256
/// invocations each with room for 8 `V`s and about 4 to hold, where a register cache bounds
/// how many rows a multiprocessor keeps in flight (RADV's compiler: 1.75 rows a SIMD against
/// 4 at D = 4096; now 128 invocations of 9, 3.5 rows).
pub fn workgroup_size(dim: u32, lanes: u32, per_invocation: u32, max_wg: u32) -> u32 {
    let per_row = dim.div_ceil(lanes);
    let hi = max_wg.min(MAX_WORKGROUP_SIZE);
    let mut wg = 1u32 << (per_row / per_invocation).max(1).ilog2();
    while per_row.div_ceil(wg) > MAX_CACHE.max(per_invocation) && wg < hi {
        wg *= 2;
    }
    wg.clamp(MIN_WORKGROUP_SIZE, hi)
}

/// Rows each norm workgroup handles for rows of `dim` elements of `elem_size` bytes, aiming
/// at `bytes_per_group` ([`BYTES_PER_GROUP`] unless tuned).
pub fn rows_per_group(dim: u32, elem_size: u32, bytes_per_group: u32) -> u32 {
    (bytes_per_group / dim.saturating_mul(elem_size).max(1)).clamp(1, MAX_ROWS_PER_GROUP)
}

/// Workgroups of a backward row kernel over `rows` rows, `per_group` a workgroup (steps
/// times rows side by side). With paired `V`s ([`Variant::pairs`]) they go in pairs over
/// blocks of `2 * per_group` rows, one taking the even rows of its block and the other the odd
/// (`step_row` in common.wgsl), so that at odd D every row of a workgroup starts on the same
/// half of a word and its lanes stay on their columns; the last block's odd workgroup is left
/// out where the block has one row. No workgroup is empty: each writes its partial row.
pub fn row_groups(rows: u64, per_group: u64, paired: bool) -> u64 {
    if !paired {
        return rows.div_ceil(per_group);
    }
    let block = 2 * per_group;
    2 * rows.div_ceil(block) - u64::from(rows % block == 1)
}

/// Parts of each row where `rows` rows of `per_row` `V`s leave workgroups idle: enough for
/// about `split_groups` workgroups in all (0: never split), none shorter than [`MIN_PART`],
/// at most [`MAX_PARTS`]; every part but the last the same length, none empty. 1: no split.
pub fn split_parts(rows: u64, per_row: u32, split_groups: u32) -> u32 {
    if rows == 0 || rows >= u64::from(split_groups) {
        return 1;
    }
    let want = (u64::from(split_groups).div_ceil(rows)) as u32;
    let parts = want.min(per_row / MIN_PART).min(MAX_PARTS);
    if parts < 2 {
        return 1;
    }
    per_row.div_ceil(per_row.div_ceil(parts))
}

/// [`Variant::strided`] for `kernel` with or without vec4 access.
pub(crate) fn is_strided(kernel: Kernel, vec4: bool) -> bool {
    !vec4
        && matches!(
            kernel.def().shape,
            Shape::Rows { .. } | Shape::RowsWithPartials { .. }
        )
        && !kernel.is_split()
}

/// The register cache length for `per_row` `V`s over `row_wg` invocations of a `wg`-invocation
/// workgroup: each invocation's share, any length up to [`MAX_CACHE`] (every entry is
/// registers the compiler keeps for the whole row); 0 when it does not fit.
fn cache_len(per_row: u32, row_wg: u32, wg: u32, arrays: u32) -> u32 {
    let per_invocation = per_row.div_ceil(row_wg);
    if per_invocation <= MAX_CACHE && per_invocation * wg * arrays <= CACHE_BUDGET.max(wg) {
        per_invocation
    } else {
        0
    }
}

/// The register cache of a row kernel of `shape` (`Rows` or `RowsWithPartials`) and whether
/// the row is streamed past it ([`Variant::streamed`]): the whole row in registers where all
/// of the kernel's arrays fit; else, in the forward, the cache's worth of a row that nearly
/// fits (its tail streamed, [`TAIL_SHARE`]), and in the backward its partial sums alone where
/// they fit.
fn row_cache(shape: Shape, per_row: u32, row_wg: u32, wg: u32) -> (u32, bool) {
    let (arrays, held) = match shape {
        Shape::Rows { arrays, .. } => {
            // A row that nearly fits keeps the cache's worth in registers, its tail streamed
            // (TAIL_SHARE).
            return match cache_len(per_row, row_wg, wg, arrays) {
                0 => {
                    let fits = MAX_CACHE.min(CACHE_BUDGET.max(wg) / wg / arrays);
                    let cache: u32 = if fits == 0 { 0 } else { 1 << fits.ilog2() };
                    let tail =
                        cache > 0 && per_row.div_ceil(row_wg) <= cache + cache.div_ceil(TAIL_SHARE);
                    if tail { (cache, true) } else { (0, false) }
                }
                cache => (cache, false),
            };
        }
        Shape::RowsWithPartials { arrays, held, .. } => (arrays, held),
        Shape::Flat | Shape::Columns => return (0, false),
    };
    match cache_len(per_row, row_wg, wg, arrays) {
        0 if held > 0 => {
            let cache = cache_len(per_row, row_wg, wg, held);
            (cache, cache > 0)
        }
        cache => (cache, false),
    }
}

/// Shared WGSL files (every kernel's own file is named by its [`crate::kernel::KernelDef`]).
pub(crate) const COMMON: &str = include_str!("../shaders/common.wgsl");
pub(crate) const REDUCE: &str = include_str!("../shaders/reduce.wgsl");
pub(crate) const HALF: &str = include_str!("../shaders/half.wgsl");
/// The retry of rows whose squares leave f32's range, for every kernel that takes statistics.
pub(crate) const SCALE: (&str, &str) = ("scale.wgsl", include_str!("../shaders/scale.wgsl"));
/// The forward norms' input stream: x, or x + residual, and re-reading it.
pub(crate) const RESIDUAL: (&str, &str) =
    ("residual.wgsl", include_str!("../shaders/residual.wgsl"));
/// A forward row split over several workgroups: its parts and their sums.
pub(crate) const SPLIT: (&str, &str) = ("split.wgsl", include_str!("../shaders/split.wgsl"));

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
    /// Partial-sum rows of this dispatch (backward), where the dbias rows start.
    pub part_rows: u32,
    pub stat_len: u32,
    /// Parts of each row, where a row is split over several workgroups (1 elsewhere).
    pub parts: u32,
    /// Element offset of each operand inside its binding, indexed by binding number.
    pub off: [u32; Params::OFFSETS],
}

impl Params {
    /// Entries of `off`: binding numbers 0..OFFSETS (0 is this struct itself).
    pub const OFFSETS: usize = 12;

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
        ("part_rows", std::mem::offset_of!(Params, part_rows)),
        ("stat_len", std::mem::offset_of!(Params, stat_len)),
        ("parts", std::mem::offset_of!(Params, parts)),
        ("off", std::mem::offset_of!(Params, off)),
    ];

    /// The words of this struct, a key for caching its uniform buffer.
    pub(crate) fn words(&self) -> [u32; size_of::<Params>() / 4] {
        bytemuck::cast(*self)
    }
}

/// Everything that selects one compiled pipeline: the typed key of the pipeline cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Variant {
    pub kernel: Kernel,
    /// Workgroup size (the WGSL constant `WG`), from [`workgroup_size`].
    pub wg: u32,
    /// Invocations per row (the WGSL constant `RW`): `wg`, or fewer where a norm's row (forward
    /// or backward) is too short to keep [`MIN_WORKGROUP_SIZE`] invocations busy (the
    /// forward's: to give them two `V`s each), and
    /// `wg / row_wg` rows are taken side by side ([`Variant::rows_side_by_side`]).
    pub row_wg: u32,
    /// `V = vec4<f32>` of four consecutive elements: D % 4 == 0 and every operand 16-byte
    /// aligned. Otherwise four strided elements ([`Variant::strided`]), or one (a split row's
    /// parts, the copy, the column sums).
    pub vec4: bool,
    /// Register cache length in `V`s per invocation; 0 streams the row from memory.
    pub cache: u32,
    /// Backward: the row is read from memory for each pass while its column partial sums
    /// stay in the `cache` registers: a row too long for registers holding all of the
    /// kernel's arrays (`Shape::RowsWithPartials::arrays`) may fit them for the partial sums
    /// alone (`held`). Otherwise each V's partial sum is read and written back in memory for
    /// every row. Forward: the row is a little longer than the `cache` registers, which hold its
    /// first `cache * row_wg` V's; the rest (the tail, the WGSL flag `tail`, [`TAIL_SHARE`]) is
    /// streamed from memory for each pass. False elsewhere.
    pub streamed: bool,
    /// Strided `V`s in pairs of 16-bit elements that share a 32-bit word
    /// ([`Variant::pairs`]): chosen by the plan where every row tensor's rows start on the
    /// same half of their words.
    pub paired: bool,
    /// ParamGrad: slices of the partial rows per column (the WGSL constant `SLICES`); 1
    /// elsewhere.
    pub slices: u32,
    /// Reduce with subgroup operations (the device has `Features::SUBGROUP`).
    pub subgroups: bool,
    /// Inputs bound read_write because one of them shares a buffer with an output.
    pub shared: bool,
    /// Backward: the forward pass's statistics are given (compiled apart, so that each
    /// variant carries only its own path, and its own retry, scale.wgsl). False elsewhere.
    pub saved: bool,
    /// Split kernels ([`Kernel::is_split`]): the first of their two dispatches, which only
    /// sums each part of each row. False elsewhere.
    pub stats: bool,
    /// Storage of x, y, dy, dx and the residual stream (norms and backward; f32 elsewhere).
    pub act: DType,
    /// Storage of weight and bias (norms and backward; f32 elsewhere).
    pub param: DType,
    /// The launch's flag bits that are compiled in ([`crate::kernel::SPECIALIZED`]: the operands
    /// and options that change the work on every element), the WGSL constant `FLAGS`; the
    /// others are read from `Params::flags`. 0 where a variant is made without a launch
    /// ([`Variant::for_row`], [`Variant::all`]): naga validates every path whatever the bits.
    pub flags: u32,
}

impl Variant {
    /// The variant of a row kernel for a row of `dim` elements on a device allowing `max_wg`
    /// invocations per workgroup (a power of two, at least [`MIN_WORKGROUP_SIZE`]).
    pub fn for_row(
        kernel: Kernel,
        dim: u32,
        vec4: bool,
        subgroups: bool,
        shared: bool,
        max_wg: u32,
    ) -> Self {
        Self::for_row_with(
            kernel,
            dim,
            vec4,
            subgroups,
            shared,
            max_wg,
            RowTuning::default(),
        )
    }

    /// [`Variant::for_row`] with a device's [`crate::Tuning`] for this kernel.
    pub fn for_row_with(
        kernel: Kernel,
        dim: u32,
        vec4: bool,
        subgroups: bool,
        shared: bool,
        max_wg: u32,
        tuning: RowTuning,
    ) -> Self {
        let v_per_invocation = tuning.v_per_invocation;
        let strided = is_strided(kernel, vec4);
        let lanes = if vec4 || strided { LANES } else { 1 };
        let mut subgroups = subgroups && kernel.reduces();
        let mut streamed = false;
        let (wg, row_wg, cache, slices) = match kernel.def().shape {
            Shape::Flat => {
                let wg = COPY_WORKGROUP_SIZE.min(max_wg);
                (wg, wg, COPY_V_PER_INVOCATION, 1)
            }
            Shape::Columns => {
                let wg = PARAM_GRAD_WORKGROUP_SIZE.min(max_wg);
                (wg, wg, 0, 1)
            }
            Shape::Rows { per_invocation, .. } | Shape::RowsWithPartials { per_invocation, .. } => {
                // The kernel's own share relative to the default, scaled by the tuning's, in
                // four-element units: a split row's scalar path takes LANES times as many
                // one-element V's, up to the cache's length (with one element per V, a row of
                // D = 4097 would otherwise spread over four times the invocations, each with a
                // quarter of the bytes in flight; whole rows have strided V's of four for
                // that).
                let share = (per_invocation * v_per_invocation / V_PER_INVOCATION).max(1);
                let forward = matches!(kernel.def().shape, Shape::Rows { .. });
                let per_invocation = if lanes == 1 && forward {
                    (share * LANES).min(MAX_CACHE.max(share))
                } else {
                    share
                };
                let wg = workgroup_size(dim, lanes, per_invocation, max_wg);
                let per_row = dim.div_ceil(lanes);
                // A row of fewer V's than the smallest workgroup has invocations would leave
                // the rest of it idle: the workgroup takes several such rows side by side
                // instead, forward and backward. Their reductions are trees over each row's
                // invocations in workgroup memory (a subgroup may span several rows, and its
                // size is not known here); the backward adds its slots' column sums into the
                // workgroup's one partial row after its rows (rows out of f32's range then add
                // theirs, one slot at a time). Where an output may overwrite an
                // input (`shared`), a row out of f32's range is retried at once behind
                // workgroup-wide barriers, which needs the whole workgroup on one row. Longer
                // rows, whose invocations all have work, keep the shape measured on GPUs.
                // How short is the tuning's `side_by_side_below` (forward) and
                // `side_by_side_below_backward`. By default the forward takes rows of fewer
                // than two V's an invocation side by side too: on lavapipe (2026-11-29) one V
                // an invocation at D = 256 ran 1.35-2.05× faster so, two at D = 512
                // 0.96-1.33×, four at 1024 0.80-0.95×; the backward, which adds each slot's
                // column sums after its rows, ran 0.75-0.93× side by side at D = 256. The
                // H200's backward (2026-11-27) read 83-90 % of a copy at D = 128 (side by
                // side, four V's an invocation) against 55-59 % at 256 (one V) and 73-78 % at
                // 512 (two): the autotune times other thresholds on each device.
                let below = if forward {
                    tuning.side_by_side_below
                } else {
                    tuning.side_by_side_below_backward
                };
                let side_by_side = !shared
                    && !kernel.is_split()
                    && u64::from(per_row) < u64::from(below) * u64::from(MIN_WORKGROUP_SIZE);
                let row_wg = if side_by_side {
                    // At most MAX_CACHE V's each, so that the row stays in registers.
                    per_row
                        .div_ceil(per_invocation.min(MAX_CACHE))
                        .next_power_of_two()
                        .min(wg)
                } else {
                    wg
                };
                if row_wg < wg {
                    subgroups = false;
                }
                let cache;
                (cache, streamed) = row_cache(kernel.def().shape, per_row, row_wg, wg);
                (wg, row_wg, cache, 1)
            }
        };
        Variant {
            kernel,
            wg,
            row_wg,
            vec4,
            cache,
            streamed,
            paired: false,
            slices,
            subgroups,
            shared,
            saved: false,
            stats: false,
            act: DType::F32,
            param: DType::F32,
            flags: 0,
        }
    }

    /// The column-sum kernel for `part_rows` partial rows.
    pub fn columns(kernel: Kernel, part_rows: u32, vec4: bool, max_wg: u32) -> Self {
        let v = Variant::for_row(kernel, 1, vec4, false, false, max_wg);
        Variant {
            slices: param_grad_slices(part_rows, v.wg),
            ..v
        }
    }

    /// Rows one workgroup of this variant normalizes at once (`WG / RW` in WGSL).
    pub fn rows_side_by_side(&self) -> u32 {
        self.wg / self.row_wg
    }

    /// Whether a `V` is four elements strided over the row's invocations rather than
    /// consecutive: the norms' whole rows, forward and backward, where vec4 access is not
    /// possible (D % 4 != 0, or an operand not 16-byte aligned). Lane l of the i-th `V` is element
    /// `l * Q + i` of the row, Q = ceil(D / 4) (one quarter of the row a lane), so each of its
    /// four loads is consecutive across the invocations (coalesced), an invocation has four
    /// elements in flight per `V`, as the vec4 path has, at any alignment, and a row has
    /// ceil(D / 4) `V`s, as many as a vec4 row of D rounded up. (Groups of `4 * RW` elements,
    /// lane l of the i-th `V` at `(i / RW) * 4 * RW + l * RW + i % RW`, as they were until
    /// 2026-11-28, gave D = 4097 over 512 invocations 1536 `V`s, a third of them wholly past
    /// the row.) The at most three element slots past the row (the last `V`s' upper lanes)
    /// read as 0 and are not written.
    pub fn strided(&self) -> bool {
        is_strided(self.kernel, self.vec4)
    }

    /// Whether this variant may take strided `V`s in pairs of 16-bit elements that share a
    /// 32-bit word (the field `paired`, the WGSL flag of that name): a norm's whole rows,
    /// forward or backward, strided, stored in 16 bits. Lanes (0, 1) of the i-th `V` are
    /// word i of the row and lanes (2, 3) word `ceil(D / 4) + i` (a half of the row's words a
    /// lane pair, counted from the word holding its first element), so the invocation loads
    /// whole words and stores them with one plain store, where strided `V`s of single elements
    /// put the two halves of a word in neighbouring invocations and store each half with two
    /// atomics. The words follow the row start of the output, whose parity alternates from
    /// row to row at
    /// odd D (the row's first lane is then the previous row's last element, masked). The plan
    /// pairs only where every row tensor's rows start on the same half of a word (equal offset
    /// parities), and, at D % 4 == 0, on a word boundary: an odd start there touches
    /// D / 2 + 1 words, one more than two halves of ceil(D / 4). The backward's column
    /// partial sums need each lane on one column in every row of a workgroup, so there the
    /// workgroups go in pairs, one taking the even rows of a block and the other the odd
    /// ([`row_groups`], `step_row` in common.wgsl): at odd D all rows of a workgroup are then
    /// on one phase.
    pub fn pairs(&self) -> bool {
        self.strided() && self.act != DType::F32
    }

    /// Whether a forward norm's row (or part) runs past its register cache: the first
    /// `cache * row_wg` `V`s stay in registers, the rest is streamed ([`Variant::streamed`]).
    pub fn tail(&self) -> bool {
        self.streamed && matches!(self.kernel.def().shape, Shape::Rows { .. })
    }

    /// Whether the row cache in registers holds the storage words of 16-bit rows (the WGSL
    /// alias `Cached` is `vec2<u32>`, converted to f32 at each pass) rather than their f32
    /// values: 16-bit rows of four consecutive elements a `V`. A cached `V` then takes two
    /// registers instead of four, so an invocation keeps as many bytes of the row in flight
    /// at half the registers (RADV's compiler, 2026-11-28: bf16 LayerNorm at D = 4096,
    /// 88 → 48 VGPRs). Strided and paired `V`s are assembled from single elements or words
    /// and masked, and keep their f32 values.
    pub fn packed_cache(&self) -> bool {
        self.vec4 && self.act != DType::F32
    }

    /// Whether `V` is a `vec4<f32>`, of consecutive or strided elements (the WGSL flag `wide`).
    pub fn wide(&self) -> bool {
        self.vec4 || self.strided()
    }

    /// Columns of partial sums one workgroup of this (column-sum) variant owns.
    pub fn columns_per_group(&self) -> u32 {
        self.wg / self.slices
    }

    /// This variant with 16-bit storage (the norms and their backward passes only).
    pub fn with_storage(mut self, act: DType, param: DType) -> Self {
        if storage_pairs(self.kernel).contains(&(act, param)) {
            self.act = act;
            self.param = param;
        }
        self
    }

    /// This variant for a launch with the flag bits `flags` (`Params::flags`): those its
    /// kernel tests that are compiled in ([`Variant::flags`]).
    pub fn with_flags(mut self, flags: u32) -> Self {
        self.flags = flags & self.kernel.def().flags & crate::kernel::SPECIALIZED;
        self
    }

    /// Every variant the host can ask for, for validation (with no flags compiled in:
    /// [`Variant::flags`]).
    pub fn all() -> Vec<Variant> {
        let mut out = std::collections::BTreeSet::new();
        let pow2 =
            |lo: u32, hi: u32| (lo.trailing_zeros()..=hi.trailing_zeros()).map(|b| 1u32 << b);
        for kernel in Kernel::ALL {
            for wg in pow2(MIN_WORKGROUP_SIZE, MAX_WORKGROUP_SIZE) {
                // Every (cache, streamed, slices) the host can pick for this kernel and
                // workgroup size.
                let shapes: Vec<(u32, bool, u32)> = match kernel.def().shape {
                    Shape::Flat if wg <= COPY_WORKGROUP_SIZE => {
                        vec![(COPY_V_PER_INVOCATION, false, 1)]
                    }
                    Shape::Columns if wg <= PARAM_GRAD_WORKGROUP_SIZE => {
                        pow2(1, wg / MIN_COLUMNS).map(|s| (0, false, s)).collect()
                    }
                    Shape::Flat | Shape::Columns => vec![],
                    // Every cache length, and rows past the longest that keep it with a
                    // tail (TAIL_SHARE).
                    shape @ (Shape::Rows { .. } | Shape::RowsWithPartials { .. }) => (1
                        ..=MAX_CACHE + MAX_CACHE / TAIL_SHARE)
                        .map(|per_invocation| {
                            let (cache, streamed) = row_cache(shape, per_invocation * wg, wg, wg);
                            (cache, streamed, 1)
                        })
                        .chain([(0, false, 1)])
                        .collect(),
                };
                for vec4 in [false, true] {
                    // Short rows side by side (the smallest workgroup only): (row_wg, cache),
                    // without subgroups or shared buffers, saved statistics or not.
                    if let Shape::Rows { arrays, .. } | Shape::RowsWithPartials { arrays, .. } =
                        kernel.def().shape
                        && wg == MIN_WORKGROUP_SIZE
                        && !kernel.is_split()
                    {
                        for row_wg in pow2(1, wg / 2) {
                            for per_invocation in 1..=MAX_CACHE {
                                let cache = cache_len(per_invocation * row_wg, row_wg, wg, arrays);
                                for saved in [false, kernel.stage2().is_some()] {
                                    for (act, param) in storage_pairs(kernel) {
                                        out.insert(Variant {
                                            kernel,
                                            wg,
                                            row_wg,
                                            vec4,
                                            cache,
                                            streamed: false,
                                            paired: false,
                                            slices: 1,
                                            subgroups: false,
                                            shared: false,
                                            saved,
                                            stats: false,
                                            act,
                                            param,
                                            flags: 0,
                                        });
                                    }
                                }
                            }
                        }
                    }
                    // Split kernels: never in place, a first and a second dispatch.
                    let (shared, stats) = if kernel.is_split() {
                        (&[false][..], &[false, true][..])
                    } else {
                        (&[false, true][..], &[false][..])
                    };
                    for &(cache, streamed, slices) in &shapes {
                        for subgroups in [false, kernel.reduces()] {
                            for &shared in shared {
                                for saved in [false, kernel.stage2().is_some()] {
                                    for &stats in stats {
                                        for (act, param) in storage_pairs(kernel) {
                                            out.insert(Variant {
                                                kernel,
                                                wg,
                                                row_wg: wg,
                                                vec4,
                                                cache,
                                                streamed,
                                                paired: false,
                                                slices,
                                                subgroups,
                                                shared,
                                                saved,
                                                stats,
                                                act,
                                                param,
                                                flags: 0,
                                            });
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let pairs: Vec<Variant> = out
            .iter()
            .filter(|v| v.pairs())
            .map(|&v| Variant { paired: true, ..v })
            .collect();
        out.extend(pairs);
        out.into_iter().collect()
    }

    /// A label for wgpu objects and error messages.
    pub fn label(&self) -> String {
        format!(
            "wgpu-norm {} {}/{} wg={}{} {} cache={}{}{}{}{}{}{}{}",
            self.kernel.name(),
            self.act,
            self.param,
            self.wg,
            if self.row_wg < self.wg {
                format!(" rows={}x{}", self.rows_side_by_side(), self.row_wg)
            } else {
                String::new()
            },
            if self.vec4 {
                "vec4"
            } else if self.paired {
                "paired"
            } else if self.strided() {
                "strided"
            } else {
                "scalar"
            },
            self.cache,
            match (self.streamed, self.tail()) {
                (true, true) => " tail",
                (true, false) => " streamed",
                _ => "",
            },
            if self.slices > 1 {
                format!(" slices={}", self.slices)
            } else {
                String::new()
            },
            if self.subgroups { " subgroups" } else { "" },
            if self.shared { " shared" } else { "" },
            if self.saved { " saved" } else { "" },
            if self.stats { " stats" } else { "" },
            self.flag_names(),
        )
    }

    /// The compiled-in flags ([`Variant::flags`]) by name, for the label: " +weight+bias".
    fn flag_names(&self) -> String {
        let operands = Operand::ALL
            .iter()
            .filter(|o| self.flags & o.flag() != 0)
            .map(|o| o.wgsl().to_string());
        let opts = Opt::ALL
            .iter()
            .filter(|o| self.flags & o.flag() != 0)
            .map(|o| o.wgsl().trim_start_matches("OPT_").to_lowercase());
        operands.chain(opts).map(|n| format!(" +{n}")).collect()
    }

    fn flag(&self, name: &str) -> Option<bool> {
        match name {
            "vec4" => Some(self.vec4),
            "strided" => Some(self.strided()),
            "paired" => Some(self.paired),
            "wide" => Some(self.wide()),
            // The row in registers (a forward's up to its `tail`); the backward's partial sums
            // in registers (with the row or without, `streamed`).
            "cached" => Some(self.cached()),
            "tail" => Some(self.tail()),
            // A forward row read from memory in a loop: all of it where nothing is cached,
            // its tail where the cache holds the rest (one loop per pass serves both).
            "streams" => Some(!self.cached() || self.tail()),
            "held_partials" => Some(self.cache > 0),
            // The backward's retry of a row whose sums left f32's range adds its partial sums
            // to those held in registers where it is retried at once (`shared`). Elsewhere the
            // held sums are stored first, and the deferred retry adds to them in memory, each
            // invocation to its own columns (where short rows lie side by side, their slots
            // share the columns and take turns): inlined with the sums live, the retry set the
            // kernel's registers (RADV, LayerNorm backward at D = 4096: 112 VGPRs, 88 without
            // it; at D = 128, side by side, 128 and 96).
            "retry_held" => Some(self.cache > 0 && self.shared),
            "subgroups" => Some(self.subgroups),
            "shared" => Some(self.shared),
            "saved" => Some(self.saved),
            "stats" => Some(self.stats),
            "side_by_side" => Some(self.row_wg < self.wg),
            // `red` at 3 WG floats: three thirds for the tree of three sums (reduce.wgsl's
            // tree3), or four planes of 3 WG / 4 for the tree of moments (wg_moments).
            "thirds" => {
                Some(self.flag("triples") == Some(true) || self.flag("moments") == Some(true))
            }
            "partials" => Some(matches!(
                self.kernel.def().shape,
                Shape::RowsWithPartials { .. }
            )),
            _ if Kernel::ALL
                .iter()
                .any(|k| k.def().wgsl_flags.contains(&name)) =>
            {
                Some(self.kernel.def().wgsl_flags.contains(&name))
            }
            _ => None,
        }
    }

    /// The row (a forward's, up to its tail) or the backward's partial sums in registers:
    /// the WGSL flag `cached`.
    fn cached(&self) -> bool {
        self.cache > 0 && (!self.streamed || self.tail())
    }

    /// Whether any operand is stored in 16 bits (and the conversions are needed).
    fn sixteen_bit(&self) -> bool {
        self.act != DType::F32 || self.param != DType::F32
    }

    /// The generated prelude: the shape constants and the flag bits, from their Rust sources.
    fn prelude(&self) -> String {
        // The reductions' trees halve both.
        assert!(
            self.wg.is_power_of_two() && self.row_wg.is_power_of_two() && self.row_wg <= self.wg,
            "{self:?}"
        );
        assert_eq!(self.flags & !crate::kernel::SPECIALIZED, 0, "{self:?}");
        let v = if self.wide() { "vec4<f32>" } else { "f32" };
        let cached = if self.packed_cache() {
            "vec2<u32>"
        } else {
            "V"
        };
        // Elements per V where they are consecutive (vec4 binding offsets and indices).
        let vw = if self.vec4 { LANES } else { 1 };
        let mut out = format!(
            "// Generated by wgpu_norm::shaders for: {label}\n\
             const WG: u32 = {wg}u;\n\
             const RW: u32 = {row_wg}u;\n\
             const SLOTS: u32 = {slots}u;\n\
             const CACHE: u32 = {cache}u;\n\
             const VW: u32 = {vw}u;\n\
             const SLICES: u32 = {slices}u;\n\
             const ROW_WORDS: u32 = {row_words}u;\n\
             const SERIAL: u32 = {SERIAL_UNROLL}u;\n\
             const SPLIT: bool = {split};\n\
             const STATS: bool = {stats};\n\
             alias V = {v};\n\
             // A V as the row cache in registers holds it (Variant::packed_cache).\n\
             alias Cached = {cached};\n\n\
             // Bits of params.flags: an operand is present, an option is on. Those in\n\
             // SPECIALIZED are this pipeline's own, FLAGS (wgpu_norm::kernel::SPECIALIZED).\n\
             const SPECIALIZED: u32 = {specialized}u;\n\
             const FLAGS: u32 = {flags}u;\n",
            label = self.label(),
            wg = self.wg,
            row_wg = self.row_wg,
            slots = self.rows_side_by_side(),
            cache = self.cache,
            slices = self.slices,
            row_words = self.kernel.max_rows_per_group().div_ceil(32).max(1),
            split = self.kernel.is_split(),
            stats = self.stats,
            specialized = crate::kernel::SPECIALIZED,
            flags = self.flags,
        );
        for o in Operand::ALL {
            let name = o.wgsl().to_uppercase();
            out.push_str(&format!("const HAS_{name}: u32 = {}u;\n", o.flag()));
        }
        for o in Opt::ALL {
            out.push_str(&format!("const {}: u32 = {}u;\n", o.wgsl(), o.flag()));
        }
        out.push('\n');
        out
    }

    /// The complete WGSL source of this variant.
    pub fn source(&self) -> String {
        let def = self.kernel.def();
        let mut out = self.prelude();
        let mut parts = vec![("common.wgsl", COMMON)];
        // Only 16-bit storage needs the conversions (and the device's pack2x16float, which
        // wgpu's GL ES backend may lack).
        if self.sixteen_bit() {
            parts.push(("half.wgsl", HALF));
        }
        let bindings = bindings_code(self);
        parts.push(("(generated bindings and accessors)", &bindings));
        if self.kernel.reduces() {
            parts.push(("reduce.wgsl", REDUCE));
        }
        parts.extend(def.includes.iter().copied());
        parts.push((def.name, def.source));
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

/// The param_grad slices for `part_rows` partial rows: each invocation sums about
/// [`ROWS_PER_SLICE`] of them in order, then the slices are added as a tree. One partial row
/// (a decode step) gets one slice, so no invocation waits on a barrier for nothing.
pub fn param_grad_slices(part_rows: u32, wg: u32) -> u32 {
    part_rows
        .div_ceil(ROWS_PER_SLICE)
        .next_power_of_two()
        .clamp(1, wg / MIN_COLUMNS)
}

/// The (activation, parameter) storage pairs a kernel is compiled for: 16-bit activations
/// with parameters of the same type or f32 (the mixed mode).
fn storage_pairs(kernel: Kernel) -> Vec<(DType, DType)> {
    if kernel.reduces() {
        vec![
            (DType::F32, DType::F32),
            (DType::F16, DType::F16),
            (DType::F16, DType::F32),
            (DType::Bf16, DType::Bf16),
            (DType::Bf16, DType::F32),
        ]
    } else {
        vec![(DType::F32, DType::F32)]
    }
}

/// Declarations and typed accessors of every binding in the variant's kernel table, for its
/// storage types. Each operand `o` gets `ld_o` if the kernel reads it and `st_o` if it writes
/// it, indexed by what its extent needs: `(row, i)` for rows, `(i)` for parameters, `(row)`
/// for statistics (f32), `(k, i)` for the k-th partial-sum row; `i` counts V's. The element
/// offset inside the binding (`params.off`) is applied here, so no kernel names a binding
/// number.
///
/// 16-bit tensors are arrays of u32 holding two elements each. With vec4 access one V is a
/// vec2<u32> (four elements, 8-byte aligned). Scalar access reads the word holding element
/// e, and writes its half with atomicAnd/atomicOr: the other half may belong to another
/// workgroup's row (odd D or odd offsets), and two plain stores would race. Paired access
/// ([`Variant::pairs`]) reads two whole words per V and stores a word with one atomicStore
/// where both its halves are the row's (only this invocation touches it), a half as above
/// at the row's ends.
fn bindings_code(v: &Variant) -> String {
    let def = v.kernel.def();
    let mut decls = String::new();
    let mut fns = String::new();
    if v.paired {
        // The row tensor written (y, or dx): the plan pairs where every row tensor's rows
        // start on the same half of a word, so its phase is theirs.
        let y = 1 + def
            .slots
            .iter()
            .position(|s| s.extent == Extent::Rows && s.access.writes())
            .expect("a norm writes a row tensor");
        fns.push_str(&format!(
            "// Every accessor of a row's tensors sets the row's phase first (see row_elems).\n\
             fn set_row(row: u32) {{\n    \
             row_phase = (off_f({y}u) + row * params.dim) & 1u;\n}}\n\n"
        ));
    }
    for (i, s) in def.slots.iter().enumerate() {
        let b = i + 1;
        let dtype = match s.class {
            Class::Act => v.act,
            Class::Param => v.param,
            Class::F32 => DType::F32,
        };
        let arr = s.operand.wgsl();
        let writes = s.access.writes();
        let parts_ty = format!("vec{ROW_PART_F32S}<f32>");
        let ty = match (s.extent, dtype, v.vec4, writes) {
            (Extent::PerRow, ..) => "f32",
            (Extent::RowParts, ..) => parts_ty.as_str(),
            (_, DType::F32, true, _) => "vec4<f32>",
            (_, DType::F32, false, _) => "f32",
            (_, _, true, _) => "vec2<u32>",
            (_, _, false, false) => "u32",
            (_, _, false, true) => "atomic<u32>",
        };
        let access = if writes { "read_write" } else { "RO" };
        decls.push_str(&format!(
            "@group(0) @binding({b}) var<storage, {access}> {arr}: array<{ty}>;\n"
        ));
        // (arguments, index of the V, index of the element in the scalar path)
        let (args, at_v, at_e) = match s.extent {
            Extent::Rows => (
                "row: u32, i: u32",
                format!("off_v({b}u) + row * (params.dim / VW) + i"),
                format!("off_f({b}u) + row * params.dim + i"),
            ),
            Extent::Dim => (
                "i: u32",
                format!("off_v({b}u) + i"),
                format!("off_f({b}u) + i"),
            ),
            Extent::Partials => (
                "k: u32, i: u32",
                format!("off_v({b}u) + k * (params.dim / VW) + i"),
                format!("off_f({b}u) + k * params.dim + i"),
            ),
            Extent::RowParts => {
                fns.push_str(&format!(
                    "fn ld_{arr}(j: u32) -> {parts_ty} {{\n    return {arr}[j];\n}}\n\n\
                     fn st_{arr}(j: u32, v: {parts_ty}) {{\n    {arr}[j] = v;\n}}\n\n"
                ));
                continue;
            }
            Extent::PerRow => {
                let at = format!("off_f({b}u) + row");
                if s.access.reads() {
                    fns.push_str(&format!(
                        "fn ld_{arr}(row: u32) -> f32 {{\n    return {arr}[{at}];\n}}\n\n"
                    ));
                }
                if writes {
                    fns.push_str(&format!(
                        "fn st_{arr}(row: u32, v: f32) {{\n    {arr}[{at}] = v;\n}}\n\n"
                    ));
                }
                continue;
            }
        };
        let (pack, bits, unpack) = match dtype {
            DType::Bf16 => ("bf16_pack", "bf16_bits", "bf16_unpack"),
            _ => ("pack2x16float", "f16_bits", "unpack2x16float"),
        };
        // The 16-bit word at `at`: a written binding is an array of atomics.
        let word_at = |at: &str| {
            if writes {
                format!("atomicLoad(&{arr}[{at}])")
            } else {
                format!("{arr}[{at}]")
            }
        };
        if !v.vec4 {
            // One element at a time: `el_o(e)` reads and `put_o(e, v)` writes element e of the
            // binding, which the scalar path's accessors take one at a time and the strided
            // path's four at a time.
            let word = word_at("e >> 1u");
            if s.access.reads() {
                let body = match dtype {
                    DType::F32 => format!("return {arr}[e];"),
                    DType::F16 => format!("return unpack2x16float({word})[e & 1u];"),
                    DType::Bf16 => format!(
                        "let w = {word};\n    return select(bf16_lo(w), bf16_hi(w), (e & 1u) == 1u);"
                    ),
                };
                fns.push_str(&format!(
                    "fn el_{arr}(e: u32) -> f32 {{\n    {body}\n}}\n\n"
                ));
            }
            if writes {
                let body = match dtype {
                    DType::F32 => format!("{arr}[e] = v;"),
                    _ => format!(
                        "let sh = (e & 1u) * 16u;\n    \
                         atomicAnd(&{arr}[e >> 1u], ~(0xffffu << sh));\n    \
                         atomicOr(&{arr}[e >> 1u], {bits}(v) << sh);"
                    ),
                };
                fns.push_str(&format!(
                    "fn put_{arr}(e: u32, v: f32) {{\n    {body}\n}}\n\n"
                ));
            }
        }
        // Paired V's of this row tensor (16-bit, see Variant::pairs): whole words, its rows
        // starting where the output's do within a word.
        let paired = v.paired && s.extent == Extent::Rows;
        // The first element of the operand's row (or of the parameter), in the strided path.
        let start = match s.extent {
            Extent::Rows => format!("off_f({b}u) + row * params.dim"),
            Extent::Partials => format!("off_f({b}u) + k * params.dim"),
            _ => format!("off_f({b}u)"),
        };
        if s.access.reads() {
            let body = match (dtype, v.vec4, v.strided()) {
                (DType::F32, true, _) => format!("return {arr}[{at_v}];"),
                (_, true, _) => format!(
                    "let w = {arr}[{at_v}];\n    return vec4<f32>({unpack}(w.x), {unpack}(w.y));"
                ),
                // Two whole words, clamped to the row's last (lanes past the row are masked);
                // else as below.
                (_, false, true) if paired => format!(
                    "set_row(row);\n    let s = {start};\n    \
                     let last = (s + params.dim - 1u) >> 1u;\n    \
                     let w = (s >> 1u) + i;\n    \
                     return in_row(i, vec4<f32>({unpack}({}), {unpack}({})));",
                    word_at("min(w, last)"),
                    word_at("min(w + row_vs(), last)"),
                ),
                // Lanes past the row read its last element (in bounds) and return 0.
                (_, false, true) => format!(
                    "let a = min(row_elems(i), vec4<u32>(params.dim - 1u)) + vec4<u32>({start});\n    \
                     return in_row(i, vec4<f32>(el_{arr}(a.x), el_{arr}(a.y), el_{arr}(a.z), el_{arr}(a.w)));"
                ),
                (_, false, false) => format!("return el_{arr}({at_e});"),
            };
            fns.push_str(&format!("fn ld_{arr}({args}) -> V {{\n    {body}\n}}\n\n"));
            // The rows a kernel keeps in registers, as the cache holds them.
            if s.extent == Extent::Rows && matches!(s.operand, Operand::Input | Operand::GradOutput)
            {
                let body = if v.packed_cache() {
                    format!("{arr}[{at_v}]")
                } else {
                    format!("ld_{arr}(row, i)")
                };
                fns.push_str(&format!(
                    "fn ld_cached_{arr}({args}) -> Cached {{\n    return {body};\n}}\n\n"
                ));
            }
        }
        if writes {
            let body = match (dtype, v.vec4, v.strided()) {
                (DType::F32, true, _) => format!("{arr}[{at_v}] = v;"),
                (_, true, _) => {
                    format!("{arr}[{at_v}] = vec2<u32>({pack}(v.xy), {pack}(v.zw));")
                }
                (_, false, true) if paired => {
                    fns.push_str(&format!(
                        "// One word of the row: a plain store where both halves are the row's \
                         (this invocation's alone), else the half that is.\n\
                         fn put_pair_{arr}(w: u32, s: u32, e: vec2<u32>, v: vec2<f32>) {{\n    \
                         let inside = e < vec2<u32>(params.dim);\n    \
                         if all(inside) {{\n        atomicStore(&{arr}[w], {pack}(v));\n    \
                         }} else if inside.x {{\n        put_{arr}(s + e.x, v.x);\n    \
                         }} else if inside.y {{\n        put_{arr}(s + e.y, v.y);\n    }}\n}}\n\n"
                    ));
                    format!(
                        "set_row(row);\n    let s = {start};\n    let e = row_elems(i);\n    \
                         let w = (s >> 1u) + i;\n    \
                         put_pair_{arr}(w, s, e.xy, v.xy);\n    \
                         put_pair_{arr}(w + row_vs(), s, e.zw, v.zw);"
                    )
                }
                (_, false, true) => {
                    let mut body = format!("let e = row_elems(i);\n    let a = {start};");
                    for l in ["x", "y", "z", "w"] {
                        body.push_str(&format!(
                            "\n    if e.{l} < params.dim {{\n        put_{arr}(a + e.{l}, v.{l});\n    }}"
                        ));
                    }
                    body
                }
                (_, false, false) => format!("put_{arr}({at_e}, v);"),
            };
            fns.push_str(&format!("fn st_{arr}({args}, v: V) {{\n    {body}\n}}\n\n"));
        }
    }
    let round = match (v.act, v.wide()) {
        (DType::F32, _) => "v",
        (DType::F16, true) => {
            "vec4<f32>(unpack2x16float(pack2x16float(v.xy)), unpack2x16float(pack2x16float(v.zw)))"
        }
        (DType::Bf16, true) => {
            "vec4<f32>(bf16_unpack(bf16_pack(v.xy)), bf16_unpack(bf16_pack(v.zw)))"
        }
        (DType::F16, false) => "unpack2x16float(f16_bits(v)).x",
        (DType::Bf16, false) => "bf16_lo(bf16_bits(v))",
    };
    let (from_cache, to_cache) = if v.packed_cache() {
        let (pack, unpack) = match v.act {
            DType::Bf16 => ("bf16_pack", "bf16_unpack"),
            _ => ("pack2x16float", "unpack2x16float"),
        };
        (
            format!("vec4<f32>({unpack}(c.x), {unpack}(c.y))"),
            format!("vec2<u32>({pack}(v.xy), {pack}(v.zw))"),
        )
    } else {
        ("c".to_string(), "v".to_string())
    };
    format!(
        "{decls}\n{fns}// v rounded to the activation storage type.\n\
         fn round_act(v: V) -> V {{\n    return {round};\n}}\n\n\
         // A cached V's value, and a V (of the activation storage type) as the cache holds it.\n\
         fn from_cache(c: Cached) -> V {{\n    return {from_cache};\n}}\n\n\
         fn to_cache(v: V) -> Cached {{\n    return {to_cache};\n}}\n"
    )
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

/// Repeats each block between `//#unroll NAME` and `//#endunroll` `count` times (or, after
/// `//#unroll NAME SERIAL`, [`SERIAL_UNROLL`] times), with the identifier NAME replaced by
/// `0u`, `1u`, ... in each copy.
///
/// The register cache depends on this: wgpu bounds every WGSL loop with a hidden counter (its
/// protection against infinite loops), which keeps drivers from unrolling a loop over the
/// cache array, and an array indexed by a loop variable lives in slow local memory. Constant
/// indices let the driver keep it in registers.
fn unroll(text: &str, count: u32) -> String {
    let mut out = String::with_capacity(text.len());
    let mut block: Option<(String, u32, Vec<&str>)> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("//#unroll ") {
            assert!(block.is_none(), "nested //#unroll");
            let mut words = rest.split_whitespace();
            let name = words.next().expect("//#unroll needs a name").to_string();
            let times = match words.next() {
                None => count,
                Some("SERIAL") => SERIAL_UNROLL,
                Some(other) => panic!("unknown //#unroll count {other:?}"),
            };
            block = Some((name, times, Vec::new()));
        } else if t == "//#endunroll" {
            let (name, count, lines) = block.take().expect("//#endunroll without //#unroll");
            for k in 0..count {
                for l in &lines {
                    out.push_str(&replace_ident(l, &name, &format!("{k}u")));
                    out.push('\n');
                }
            }
        } else if let Some((_, _, lines)) = &mut block {
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
        let serial = "//#unroll u SERIAL\nx(u);\n//#endunroll\n";
        assert_eq!(unroll(serial, 2).lines().count(), SERIAL_UNROLL as usize);
    }

    #[test]
    fn cache_covers_the_row_within_the_register_budget() {
        let all: std::collections::BTreeSet<Variant> = Variant::all().into_iter().collect();
        // Every tuning's V's per invocation and side-by-side threshold (plan.rs accepts
        // powers of two up to 64 for both).
        let pow2 = || (0..=6).map(|b| 1u32 << b);
        let tunings = pow2().flat_map(|v| {
            // The backward's threshold runs the other way, so that the two are told apart.
            pow2().map(move |s| RowTuning {
                v_per_invocation: v,
                side_by_side_below: s,
                side_by_side_below_backward: 64 / s,
            })
        });
        for (max_wg, tuning) in [256, 1024]
            .into_iter()
            .flat_map(|m| tunings.clone().map(move |t| (m, t)))
        {
            for dim in [
                1, 4, 7, 17, 63, 68, 128, 252, 255, 256, 257, 508, 512, 1000, 1024, 1025, 2044,
                4096, 4097, 8192, 16384, 16385, 65536,
            ] {
                for vec4 in [false, true] {
                    for kernel in Kernel::ALL {
                        let v =
                            Variant::for_row_with(kernel, dim, vec4, false, false, max_wg, tuning);
                        let lanes = if v.wide() { LANES } else { 1 };
                        assert!(v.wg.is_power_of_two() && v.wg <= max_wg, "{v:?}");
                        assert!(v.wg >= MIN_WORKGROUP_SIZE, "{v:?}");
                        assert!(all.contains(&v), "{v:?} is not validated");
                        if !kernel.reduces() {
                            continue;
                        }
                        let (arrays, held) = match kernel.def().shape {
                            Shape::Rows { arrays, .. } => (arrays, 0),
                            Shape::RowsWithPartials { arrays, held, .. } => (arrays, held),
                            _ => unreachable!(),
                        };
                        if v.row_wg < v.wg {
                            // Side by side: too short a row for the smallest workgroup.
                            assert!(
                                v.wg == MIN_WORKGROUP_SIZE && v.cache > 0 && !v.subgroups,
                                "{v:?}"
                            );
                            let below = if kernel.stage2().is_some() {
                                tuning.side_by_side_below_backward
                            } else {
                                tuning.side_by_side_below
                            };
                            assert!(dim.div_ceil(lanes) < below * MIN_WORKGROUP_SIZE, "{v:?}");
                        }
                        let fits = |arrays: u32| MAX_CACHE.min(CACHE_BUDGET / v.wg / arrays);
                        if v.tail() {
                            // The forward keeps the cache's worth of a row that nearly fits.
                            assert_eq!(v.cache, fits(arrays), "{v:?}");
                            let need = dim.div_ceil(lanes).div_ceil(v.row_wg);
                            assert!(need > v.cache, "{v:?}");
                            assert!(need <= v.cache + v.cache.div_ceil(TAIL_SHARE), "{v:?}");
                        } else if v.cache > 0 {
                            assert!(v.cache * v.row_wg * lanes >= dim, "{v:?}");
                            // Streamed: the row does not fit with every array, the partial
                            // sums alone do.
                            let used = if v.streamed { held } else { arrays };
                            assert!(v.cache * v.wg * used <= CACHE_BUDGET.max(v.wg), "{v:?}");
                            if v.streamed {
                                assert!(dim.div_ceil(lanes) > v.wg * fits(arrays), "{v:?}");
                            }
                        } else {
                            // Too long for registers, the partial sums included.
                            assert!(dim.div_ceil(lanes) > v.wg * fits(arrays), "{v:?}");
                            if held > 0 {
                                assert!(dim.div_ceil(lanes) > v.wg * fits(held), "{v:?}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn short_rows_go_side_by_side() {
        // D = 128 in vec4: 32 V's, 4 invocations of 8 each, 16 rows per 64-invocation group.
        let v = Variant::for_row(Kernel::RmsNorm, 128, true, true, false, 1024);
        assert_eq!((v.wg, v.row_wg, v.rows_side_by_side()), (64, 4, 16));
        assert!(!v.subgroups && v.cache == V_PER_INVOCATION, "{v:?}");
        // Fewer than two V's an invocation of the smallest workgroup: the forward takes 8
        // rows of 8 invocations with 8 V's each (64 V's; 127 at D = 508, 16 invocations),
        // the backward (4 V's an invocation) one row with subgroups. Two V's an invocation
        // (D = 512): one row with subgroups.
        for k in [Kernel::LayerNorm, Kernel::RmsNorm] {
            let v = Variant::for_row(k, 256, true, true, false, 1024);
            assert_eq!((v.wg, v.row_wg, v.cache), (64, 8, 8), "{v:?}");
            assert!(!v.subgroups, "{v:?}");
            let v = Variant::for_row(k, 508, true, true, false, 1024);
            assert_eq!((v.wg, v.row_wg, v.cache), (64, 16, 8), "{v:?}");
            let v = Variant::for_row(k, 512, true, true, false, 1024);
            assert!(v.row_wg == v.wg && v.subgroups, "{v:?}");
        }
        let v = Variant::for_row(Kernel::LayerNormBackward, 256, true, true, false, 1024);
        assert!(v.row_wg == v.wg && v.subgroups, "{v:?}");
        // A tuning's thresholds move that line, the forward's and the backward's apart (the
        // other one at 64, which would take every row side by side that can be).
        let with = |kernel: Kernel, dim, below| {
            let (forward, backward) = if kernel.stage2().is_some() {
                (64, below)
            } else {
                (below, 64)
            };
            let t = RowTuning {
                side_by_side_below: forward,
                side_by_side_below_backward: backward,
                ..RowTuning::default()
            };
            let v = Variant::for_row_with(kernel, dim, true, true, false, 1024, t);
            (v.wg, v.row_wg, v.cache)
        };
        assert_eq!(with(Kernel::RmsNorm, 256, 1), (64, 64, 1));
        assert_eq!(with(Kernel::RmsNorm, 252, 1), (64, 8, 8));
        assert_eq!(with(Kernel::RmsNorm, 512, 4), (64, 16, 8));
        assert_eq!(with(Kernel::RmsNorm, 1024, 4), (64, 64, 4));
        assert_eq!(with(Kernel::RmsNorm, 1024, 8), (64, 32, 8));
        // Past 256 V's (32 invocations of 8) a row takes 64 invocations, a whole workgroup,
        // whatever the threshold.
        assert_eq!(with(Kernel::RmsNorm, 1028, 64), (64, 64, 5));
        assert_eq!(with(Kernel::LayerNormBackward, 252, 1), (64, 16, 4));
        assert_eq!(with(Kernel::LayerNormBackward, 256, 1), (64, 64, 1));
        assert_eq!(with(Kernel::LayerNormBackward, 256, 2), (64, 16, 4));
        assert_eq!(with(Kernel::RmsNormBackward, 512, 2), (64, 64, 2));
        assert_eq!(with(Kernel::RmsNormBackward, 512, 4), (64, 32, 4));
        assert_eq!(with(Kernel::RmsNormBackward, 516, 64), (64, 64, 3));
        // Written over an input: one row at a time.
        let v = Variant::for_row(Kernel::RmsNorm, 128, true, true, true, 1024);
        assert_eq!(v.row_wg, v.wg);
        // The backward takes half the forward's V's: D = 128 is 8 rows of 8 invocations, and
        // D = 8 (strided at D = 7) a row per invocation.
        for k in [Kernel::LayerNormBackward, Kernel::RmsNormBackward] {
            let v = Variant::for_row(k, 128, true, true, false, 1024);
            assert_eq!((v.wg, v.row_wg, v.cache), (64, 8, 4), "{v:?}");
            assert!(!v.subgroups, "{v:?}");
            assert_eq!(Variant::for_row(k, 8, true, false, false, 1024).row_wg, 1);
            assert_eq!(Variant::for_row(k, 7, false, false, false, 1024).row_wg, 1);
            assert_eq!(Variant::for_row(k, 128, true, true, true, 1024).row_wg, 64);
        }
        // D % 4 != 0: V's are four strided elements, as many per invocation as the vec4
        // path's (1025 over 128 invocations forward, 9 each; 256 backward, 5 each).
        let v = Variant::for_row(Kernel::LayerNorm, 4097, false, true, false, 1024);
        assert!(v.strided(), "{v:?}");
        assert_eq!((v.wg, v.cache), (128, 9));
        let v = Variant::for_row(Kernel::LayerNormBackward, 4097, false, true, false, 1024);
        let w = Variant::for_row(Kernel::LayerNormBackward, 4100, true, true, false, 1024);
        assert!(
            v.strided() && (v.wg, v.cache) == (w.wg, w.cache),
            "{v:?} {w:?}"
        );
        // A split row's scalar path takes four times the one-element V's, up to the cache:
        // 4097 over 512 invocations of 9 (256 of 17 would not fit).
        let v = Variant::for_row(Kernel::LayerNormSplit, 4097, false, true, false, 1024);
        assert!(!v.strided() && (v.wg, v.cache) == (512, 9), "{v:?}");
    }

    #[test]
    fn param_grad_slices_follow_the_partial_rows() {
        assert_eq!(param_grad_slices(0, 256), 1);
        assert_eq!(param_grad_slices(1, 256), 1);
        assert_eq!(param_grad_slices(16, 256), 1);
        assert_eq!(param_grad_slices(17, 256), 2);
        assert_eq!(param_grad_slices(1024, 256), 64);
        assert_eq!(param_grad_slices(100_000, 256), 256 / MIN_COLUMNS);
        let all = Variant::all();
        for part_rows in [0, 1, 5, 40, 300, 1024, 5000] {
            for max_wg in [64, 256, 1024] {
                let v = Variant::columns(Kernel::ParamGrad, part_rows, true, max_wg);
                assert!(all.contains(&v), "{v:?} is not validated");
                assert!(v.columns_per_group() >= MIN_COLUMNS, "{v:?}");
            }
        }
    }
}
