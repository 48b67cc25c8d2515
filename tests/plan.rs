//! The launch plan, checked without a GPU. wgpu's no-op backend gives a device and buffers
//! (sizes and usages; nothing runs), which is all `plan` reads. Every plan across the shape
//! grid, every storage type and three kinds of device is held to the invariants recording
//! relies on: bindings aligned and inside their buffers, each operand's data where the
//! kernel's offsets say, every row covered once, grids within the device's limits, variants
//! that `tests/shaders.rs` validated.

use std::collections::HashSet;
use std::sync::OnceLock;

use wgpu_norm::kernel::{Class, Extent, Opt};
use wgpu_norm::plan::{Bind, Caps, Plan, plan};
use wgpu_norm::shaders::Variant;
use wgpu_norm::{
    CopyOp, DType, Error, Kernel, LayerNorm, LayerNormBackward, NormsOptions, Op, Operand, RmsNorm,
    RmsNormBackward, TensorRef,
};

fn device() -> &'static wgpu::Device {
    static DEVICE: OnceLock<wgpu::Device> = OnceLock::new();
    DEVICE.get_or_init(|| {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::NOOP,
            backend_options: wgpu::BackendOptions {
                noop: wgpu::NoopBackendOptions::enabled(),
                ..Default::default()
            },
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
            .expect("wgpu's no-op adapter");
        let (device, _queue) =
            pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                required_limits: adapter.limits(),
                ..Default::default()
            }))
            .expect("no-op device");
        device
    })
}

fn buffer(bytes: u64) -> wgpu::Buffer {
    device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes.next_multiple_of(4).max(4),
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    })
}

/// The three kinds of device: a large GPU, WebGPU's defaults, and one with 256 KiB bindings
/// and 64 workgroups a side (splits and 2-D grids at small sizes).
fn devices() -> Vec<(&'static str, Caps)> {
    let big = wgpu::Limits {
        max_storage_buffer_binding_size: 4 << 30,
        max_buffer_size: 4 << 30,
        max_compute_invocations_per_workgroup: 1024,
        max_compute_workgroup_size_x: 1024,
        ..wgpu::Limits::default()
    };
    let small = wgpu::Limits {
        max_storage_buffer_binding_size: 256 << 10,
        max_compute_workgroups_per_dimension: 64,
        ..wgpu::Limits::default()
    };
    let all = wgpu::Features::SUBGROUP;
    let caps = |l: &wgpu::Limits, f| Caps::new(l, f, NormsOptions::default()).unwrap();
    vec![
        ("large GPU", caps(&big, all)),
        (
            "WebGPU defaults",
            caps(&wgpu::Limits::default(), wgpu::Features::empty()),
        ),
        ("small bindings", caps(&small, all)),
    ]
}

fn validated() -> &'static HashSet<Variant> {
    static ALL: OnceLock<HashSet<Variant>> = OnceLock::new();
    ALL.get_or_init(|| Variant::all().into_iter().collect())
}

/// An op's operands with where they are, for checking a plan against.
struct Described<'a> {
    kernel: Kernel,
    rows: u64,
    dim: u64,
    act: DType,
    param: DType,
    operands: Vec<(Operand, TensorRef<'a>)>,
}

impl Described<'_> {
    fn get(&self, o: Operand) -> Option<TensorRef<'_>> {
        self.operands.iter().find(|(x, _)| *x == o).map(|(_, t)| *t)
    }

    fn elem(&self, class: Class) -> u64 {
        match class {
            Class::Act => self.act.size(),
            Class::Param => self.param.size(),
            Class::F32 => 4,
        }
    }
}

/// Every invariant recording relies on, for one plan.
fn check_plan(what: &str, caps: &Caps, d: &Described, plan: &Plan) {
    let mut r0 = 0; // first row of the current row-kernel step
    let mut last_groups = None;
    let mut row_steps = 0;
    for (n, step) in plan.steps.iter().enumerate() {
        let v = step.variant;
        let at = format!("{what}: step {n} ({})", v.label());
        // The matrix is validated with no flags compiled in: naga checks every path whatever
        // FLAGS says.
        assert!(
            validated().contains(&Variant { flags: 0, ..v }),
            "{at}: not a validated variant"
        );
        // The launch's bits its kernel tests per element are the pipeline's own, and the same
        // as the run-time ones.
        assert_eq!(
            v.flags,
            step.params.flags & v.kernel.def().flags & wgpu_norm::kernel::SPECIALIZED,
            "{at}: compiled-in flags"
        );
        assert!(v.wg <= caps.max_wg, "{at}");
        assert!(v.subgroups <= caps.subgroups, "{at}");
        let def = v.kernel.def();
        assert_eq!(step.binds.len(), def.slots.len(), "{at}");
        let p = &step.params;
        assert_eq!(u64::from(p.dim), d.dim, "{at}");
        let [gx, gy] = step.grid;
        assert!(gx >= 1 && gy >= 1, "{at}");
        assert!(
            gx <= caps.max_groups_per_dim && gy <= caps.max_groups_per_dim,
            "{at}"
        );
        let groups = u64::from(gx) * u64::from(gy);
        let column_sums = v.kernel == Kernel::ParamGrad;
        if v.kernel.is_split() {
            // Few long rows, each in parts: the parts' sums, then the normalization, over the
            // same rows; every part nonempty, none longer than its workgroup takes.
            assert_eq!(d.kernel.split(), Some(v.kernel), "{at}");
            assert_eq!(
                v.stats,
                n == 0 || !plan.steps[n - 1].variant.stats,
                "{at}: order"
            );
            let per_row = d.dim / if v.vec4 { 4 } else { 1 };
            let parts = u64::from(p.parts);
            let len = per_row.div_ceil(parts);
            assert!(
                parts > 1 && parts <= u64::from(wgpu_norm::shaders::MAX_PARTS),
                "{at}"
            );
            assert!(len * (parts - 1) < per_row, "{at}: an empty part");
            assert!(
                len >= u64::from(wgpu_norm::shaders::MIN_PART),
                "{at}: a short part"
            );
            // The cache holds the part, or all but its tail.
            if v.cache > 0 {
                assert_eq!(
                    u64::from(v.cache * v.wg) < len,
                    v.tail(),
                    "{at}: the cache and the part"
                );
            }
            let needed = u64::from(p.rows) * parts;
            assert!(
                groups >= needed && groups < needed + u64::from(gx),
                "{at}: grid"
            );
        } else if !column_sums {
            assert_eq!(v.kernel, d.kernel, "{at}");
            assert_eq!(p.parts, 1, "{at}");
            let needed = match v.kernel {
                Kernel::Copy => (u64::from(p.rows) * d.dim / if v.vec4 { 4 } else { 1 })
                    .div_ceil(u64::from(v.wg * v.cache)),
                // Norms (forward and backward) may take short rows side by side, each step;
                // the backward's paired workgroups go in pairs.
                _ => wgpu_norm::shaders::row_groups(
                    u64::from(p.rows),
                    u64::from(p.rows_per_group * v.rows_side_by_side()),
                    v.paired && v.kernel.stage2().is_some(),
                ),
            };
            // A 2-D grid may hold a few workgroups more than needed, never fewer.
            assert!(
                groups >= needed && groups < needed + u64::from(gx),
                "{at}: grid"
            );
            if v.kernel.stage2().is_some() {
                assert_eq!(
                    u64::from(p.part_rows),
                    needed,
                    "{at}: one partial row a group"
                );
                let saved = d.get(Operand::Rstd).is_some() || d.get(Operand::Rrms).is_some();
                assert_eq!(v.saved, saved, "{at}: compiled for saved statistics or not");
            } else {
                assert!(!v.saved, "{at}");
            }
            last_groups = Some(needed);
            row_steps += 1;
        } else {
            // Stage 2 reduces what the row step before it wrote (nothing, for zero rows).
            assert_eq!(u64::from(p.part_rows), last_groups.unwrap_or(0), "{at}");
            // None of the ops here asks to accumulate; chunks after the first must.
            assert_eq!(
                p.flags & Opt::AccumulateParams.flag() != 0,
                row_steps > 1,
                "{at}: chunks after the first accumulate"
            );
            let cols = u64::from(v.columns_per_group());
            let columns = d.dim / if v.vec4 { 4 } else { 1 };
            assert_eq!(groups, columns.div_ceil(cols), "{at}: columns");
        }
        for o in Operand::ALL {
            let present = d.get(o).is_some();
            assert_eq!(p.flags & o.flag() != 0, present, "{at}: flag of {o}");
        }
        for (i, (bind, slot)) in step.binds.iter().zip(def.slots).enumerate() {
            let b = i + 1;
            match *bind {
                Bind::Operand {
                    operand,
                    offset,
                    size,
                } => {
                    assert_eq!(operand, slot.operand, "{at}: binding {b}");
                    let t = d.get(operand).expect("bound operands are present");
                    assert_eq!(offset % caps.align, 0, "{at}: {operand} binding offset");
                    assert!(size <= caps.max_binding, "{at}: {operand} binding size");
                    assert!(offset + size <= t.buffer.size(), "{at}: {operand} outside");
                    let elem = d.elem(slot.class);
                    let data = offset + u64::from(p.off[b]) * elem;
                    let (start, len) = match slot.extent {
                        Extent::Rows => (r0 * d.dim * elem, u64::from(p.rows) * d.dim * elem),
                        Extent::Dim => (0, d.dim * elem),
                        Extent::PerRow => (r0 * 4, u64::from(p.rows) * 4),
                        Extent::Partials | Extent::RowParts => {
                            unreachable!("partials are the crate's own")
                        }
                    };
                    assert_eq!(data, t.offset + start, "{at}: where {operand} starts");
                    assert!(
                        data + len <= offset + size,
                        "{at}: {operand} past its binding"
                    );
                    if v.vec4 && slot.extent != Extent::PerRow {
                        assert_eq!(p.off[b] % 4, 0, "{at}: vec4 offset of {operand}");
                    }
                }
                Bind::Scratch { size } => {
                    if slot.extent == Extent::RowParts {
                        let parts = u64::from(p.rows) * u64::from(p.parts);
                        assert_eq!(size, parts * 16, "{at}: four f32 a part");
                    } else {
                        assert_eq!(slot.extent, Extent::Partials, "{at}");
                    }
                    assert!(size <= plan.scratch && size <= caps.max_binding, "{at}");
                    assert!(size > 0, "{at}");
                }
                Bind::Absent => {
                    if slot.extent != Extent::Partials {
                        assert!(
                            d.get(slot.operand).is_none(),
                            "{at}: {} unbound",
                            slot.operand
                        );
                        assert!(!slot.required, "{at}");
                    }
                }
            }
        }
        if !column_sums && !v.stats {
            r0 += u64::from(p.rows);
        }
    }
    assert_eq!(r0, d.rows, "{what}: every row once");
}

/// Tensors for `rows x dim` in `act`/`param` storage, each at element offset `off` of its own
/// buffer (with a word to spare).
struct Tensors {
    x: wgpu::Buffer,
    y: wgpu::Buffer,
    r: wgpu::Buffer,
    s: wgpu::Buffer,
    w: wgpu::Buffer,
    b: wgpu::Buffer,
    stats: wgpu::Buffer,
    grads: wgpu::Buffer,
    n: u64,
    rows: u64,
    dim: u64,
    act: DType,
    param: DType,
    off: u64,
}

impl Tensors {
    fn new(rows: u64, dim: u64, act: DType, param: DType, off: u64) -> Self {
        let n = rows * dim;
        let big = |d: DType| buffer((off + n) * d.size() + 4);
        let small = |d: DType| buffer((off + dim) * d.size() + 4);
        Tensors {
            x: big(act),
            y: big(act),
            r: big(act),
            s: big(act),
            w: small(param),
            b: small(param),
            stats: buffer((2 * rows + 2 * off) * 4 + 4),
            grads: buffer((2 * dim + 2 * off) * 4 + 4),
            n,
            rows,
            dim,
            act,
            param,
            off,
        }
    }

    fn rows_of<'a>(&self, b: &'a wgpu::Buffer) -> TensorRef<'a> {
        TensorRef::new(b, self.off * self.act.size(), self.n * self.act.size())
    }

    fn param_of<'a>(&self, b: &'a wgpu::Buffer) -> TensorRef<'a> {
        TensorRef::new(
            b,
            self.off * self.param.size(),
            self.dim * self.param.size(),
        )
    }

    /// The k-th per-row f32 array in `stats`.
    fn stat(&self, k: u64) -> TensorRef<'_> {
        let at = (self.off + k * (self.rows + self.off)) * 4;
        TensorRef::new(&self.stats, at, self.rows * 4)
    }

    /// The k-th dim-long f32 array in `grads`.
    fn grad(&self, k: u64) -> TensorRef<'_> {
        let at = (self.off + k * (self.dim + self.off)) * 4;
        TensorRef::new(&self.grads, at, self.dim * 4)
    }

    fn described<'a>(
        &self,
        kernel: Kernel,
        operands: Vec<(Operand, TensorRef<'a>)>,
    ) -> Described<'a> {
        Described {
            kernel,
            rows: self.rows,
            dim: self.dim,
            act: self.act,
            param: self.param,
            operands,
        }
    }
}

/// Every op of the crate on `t`, with all its operands, planned and checked on `caps`.
fn plan_every_op(what: &str, caps: &Caps, t: &Tensors) {
    let (rows, dim) = (t.rows as usize, t.dim as usize);
    let (x, y, w, b) = (
        t.rows_of(&t.x),
        t.rows_of(&t.y),
        t.param_of(&t.w),
        t.param_of(&t.b),
    );
    let (r, s) = (t.rows_of(&t.r), t.rows_of(&t.s));
    // A row (or, in the backward, two f32 rows of partial sums) too long for one binding is
    // an error; nothing else is.
    let too_long = t.dim * 8 + caps.align > caps.max_binding;
    let run = |name: &str, op: &dyn Fn() -> Result<Plan, Error>, d: Described| {
        let what = format!("{what}: {name}");
        match op() {
            Ok(plan) => {
                check_plan(&what, caps, &d, &plan);
                Some(plan)
            }
            Err(Error::RowTooLarge { .. }) if too_long => None,
            Err(e) => panic!("{what}: {e}"),
        }
    };
    let ln = LayerNorm::new(rows, dim, x, y)
        .dtype(t.act)
        .param_dtype(t.param)
        .weight(w)
        .bias(b)
        .mean(t.stat(0))
        .rstd(t.stat(1))
        .residual(r)
        .residual_out(s);
    use Operand::*;
    let ln_operands = vec![
        (Input, x),
        (Output, y),
        (Weight, w),
        (Bias, b),
        (Mean, t.stat(0)),
        (Rstd, t.stat(1)),
        (Residual, r),
        (ResidualOut, s),
    ];
    run(
        "layer_norm",
        &|| plan(caps, &ln),
        t.described(Kernel::LayerNorm, ln_operands.clone()),
    );
    let rms = RmsNorm::new(rows, dim, x, y)
        .dtype(t.act)
        .param_dtype(t.param)
        .weight(w)
        .rrms(t.stat(0))
        .partial(0.5);
    run(
        "rms_norm",
        &|| plan(caps, &rms),
        t.described(
            Kernel::RmsNorm,
            vec![(Input, x), (Output, y), (Weight, w), (Rrms, t.stat(0))],
        ),
    );
    // Without statistics, few long rows are split over several workgroups.
    let ln_split = LayerNorm {
        mean: None,
        rstd: None,
        ..ln.clone()
    };
    run(
        "layer_norm without statistics",
        &|| plan(caps, &ln_split),
        t.described(
            Kernel::LayerNorm,
            ln_operands
                .into_iter()
                .filter(|(o, _)| !matches!(o, Mean | Rstd))
                .collect(),
        ),
    );
    let rms_split = RmsNorm::new(rows, dim, x, y)
        .dtype(t.act)
        .param_dtype(t.param)
        .residual(r)
        .partial(0.3);
    run(
        "rms_norm without statistics",
        &|| plan(caps, &rms_split),
        t.described(
            Kernel::RmsNorm,
            vec![(Input, x), (Output, y), (Residual, r)],
        ),
    );
    // dx in place over dy.
    let lnb = LayerNormBackward::new(rows, dim, x, y, y)
        .dtype(t.act)
        .param_dtype(t.param)
        .weight(w)
        .saved(t.stat(0), t.stat(1))
        .grad_weight(t.grad(0))
        .grad_bias(t.grad(1));
    let plan_lnb = run(
        "layer_norm_backward",
        &|| plan(caps, &lnb),
        t.described(
            Kernel::LayerNormBackward,
            vec![
                (Input, x),
                (GradOutput, y),
                (GradInput, y),
                (Weight, w),
                (Mean, t.stat(0)),
                (Rstd, t.stat(1)),
                (GradWeight, t.grad(0)),
                (GradBias, t.grad(1)),
            ],
        ),
    );
    assert!(
        plan_lnb
            .iter()
            .flat_map(|p| &p.steps)
            .all(|s| s.variant.kernel != Kernel::LayerNormBackward || s.variant.shared),
        "{what}: dy is read from the buffer dx is written to"
    );
    let rmsb = RmsNormBackward::new(rows, dim, x, r, s)
        .eps(1e-6)
        .dtype(t.act)
        .param_dtype(t.param)
        .weight(w)
        .grad_weight(t.grad(0));
    run(
        "rms_norm_backward",
        &|| plan(caps, &rmsb),
        t.described(
            Kernel::RmsNormBackward,
            vec![
                (Input, x),
                (GradOutput, r),
                (GradInput, s),
                (Weight, w),
                (GradWeight, t.grad(0)),
            ],
        ),
    );
    if t.act == DType::F32 {
        run(
            "copy",
            &|| plan(caps, &CopyOp::new(rows, dim, x, y)),
            t.described(Kernel::Copy, vec![(Input, x), (Output, y)]),
        );
    }
}

/// The GPU tests' grid of shapes.
const GRID: &[(u64, u64)] = &[
    (70000, 1),
    (70000, 5),
    (70000, 64),
    (257, 2),
    (257, 3),
    (257, 7),
    (257, 31),
    (257, 256),
    (257, 1000),
    (257, 1024),
    (257, 1025),
    (3, 4096),
    (3, 4097),
    (3, 12288),
    (1, 65536),
    (3, 65536),
    (1, 1),
];

const STORAGE: [(DType, DType); 5] = [
    (DType::F32, DType::F32),
    (DType::F16, DType::F16),
    (DType::F16, DType::F32),
    (DType::Bf16, DType::Bf16),
    (DType::Bf16, DType::F32),
];

#[test]
fn every_shape_storage_and_device() {
    for (name, caps) in devices() {
        for &(rows, dim) in GRID {
            for (act, param) in STORAGE {
                let t = Tensors::new(rows, dim, act, param, 0);
                plan_every_op(&format!("{name} {rows}x{dim} {act}/{param}"), &caps, &t);
            }
        }
    }
}

#[test]
fn odd_offsets() {
    // Element offsets that break vec4 (1, 3), keep it (4, 68), and cross a binding alignment.
    for (name, caps) in devices() {
        for off in [1, 3, 4, 68, 1000] {
            for &(rows, dim) in &[(9, 7), (33, 1024), (5, 4097), (300, 1000)] {
                for (act, param) in STORAGE {
                    if act == DType::F32 && off % 2 == 1 {
                        continue;
                    }
                    let t = Tensors::new(rows, dim, act, param, off);
                    let what = format!("{name} {rows}x{dim} {act}/{param} offset {off}");
                    plan_every_op(&what, &caps, &t);
                }
            }
        }
    }
}

fn caps_named(name: &str) -> Caps {
    devices().into_iter().find(|(n, _)| *n == name).unwrap().1
}

#[test]
fn vec4_needs_d_and_every_offset_on_four_elements() {
    let caps = caps_named("large GPU");
    let vec4 = |dim, off, act| {
        let t = Tensors::new(2, dim, act, act, off);
        let op = RmsNorm::new(2, dim as usize, t.rows_of(&t.x), t.rows_of(&t.y))
            .dtype(act)
            .weight(t.param_of(&t.w));
        plan(&caps, &op).unwrap().steps[0].variant.vec4
    };
    assert!(vec4(4096, 0, DType::F32));
    assert!(vec4(4096, 4, DType::F32));
    assert!(!vec4(4096, 1, DType::F16));
    assert!(!vec4(4096, 2, DType::F16));
    assert!(vec4(4096, 4, DType::Bf16));
    assert!(!vec4(4097, 0, DType::F32));
    assert!(!vec4(4094, 0, DType::F32));
}

#[test]
fn work_beyond_one_binding_is_split() {
    let caps = caps_named("small bindings");
    // 300 rows of 4000 bytes in 256 KiB bindings: 65 rows a binding, 5 dispatches.
    let t = Tensors::new(300, 1000, DType::F32, DType::F32, 0);
    let op = LayerNorm::new(300, 1000, t.rows_of(&t.x), t.rows_of(&t.y));
    let p = plan(&caps, &op).unwrap();
    let chunk = ((256 << 10) - caps.align) / 4000;
    assert_eq!(p.steps.len() as u64, 300u64.div_ceil(chunk));
    // The backward reduces each chunk's partial sums right after it.
    let op = LayerNormBackward::new(300, 1000, t.rows_of(&t.x), t.rows_of(&t.y), t.rows_of(&t.s))
        .eps(1e-5)
        .grad_weight(t.grad(0));
    let kernels: Vec<Kernel> = plan(&caps, &op)
        .unwrap()
        .steps
        .iter()
        .map(|s| s.variant.kernel)
        .collect();
    let pair = [Kernel::LayerNormBackward, Kernel::ParamGrad];
    assert_eq!(kernels, pair.repeat(kernels.len() / 2));
    assert_eq!(kernels.len() as u64, 2 * 300u64.div_ceil(chunk));
}

#[test]
fn statistics_of_short_16_bit_rows_fit_their_bindings() {
    // D = 1 in f16 is 2 bytes a row, its statistic 4: the statistic's binding sets the chunk.
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: 64 << 10,
        ..wgpu::Limits::default()
    };
    let caps = Caps::new(&limits, wgpu::Features::empty(), NormsOptions::default()).unwrap();
    let rows = 40_000;
    let t = Tensors::new(rows, 1, DType::F16, DType::F16, 0);
    let op = RmsNorm::new(rows as usize, 1, t.rows_of(&t.x), t.rows_of(&t.y))
        .dtype(DType::F16)
        .rrms(t.stat(0));
    let p = plan(&caps, &op).unwrap();
    let d = t.described(
        Kernel::RmsNorm,
        vec![
            (Operand::Input, t.rows_of(&t.x)),
            (Operand::Output, t.rows_of(&t.y)),
            (Operand::Rrms, t.stat(0)),
        ],
    );
    check_plan("f16 D = 1", &caps, &d, &p);
    assert!(
        p.steps.len() >= 3,
        "160 KB of statistics in 64 KiB bindings"
    );
}

#[test]
fn many_rows_take_a_two_dimensional_grid() {
    // The backward's few rows per workgroup: many workgroups per dispatch.
    let caps = caps_named("small bindings");
    let t = Tensors::new(5000, 28, DType::F32, DType::F32, 0);
    let op = RmsNormBackward::new(5000, 28, t.rows_of(&t.x), t.rows_of(&t.y), t.rows_of(&t.s))
        .eps(1e-6)
        .grad_weight(t.grad(0));
    let p = plan(&caps, &op).unwrap();
    assert!(
        p.steps.iter().any(|s| s.grid[1] > 1),
        "{:?}",
        p.steps[0].grid
    );
    // On a large device too, past 65535 workgroups.
    let caps = caps_named("large GPU");
    let rows = 70000 * 64 + 5;
    let t = Tensors::new(rows, 1, DType::F32, DType::F32, 0);
    let op = RmsNorm::new(rows as usize, 1, t.rows_of(&t.x), t.rows_of(&t.y));
    let p = plan(&caps, &op).unwrap();
    assert_eq!(p.steps.len(), 1);
    assert_eq!(p.steps[0].grid, [65535, 2]);
}

#[test]
fn few_rows_reduce_dweight_without_a_tree() {
    // A decode step's backward: one partial row, so every param_grad invocation sums a
    // column alone (no barriers), and the grid covers the columns with full workgroups.
    let caps = caps_named("large GPU");
    let t = Tensors::new(1, 4096, DType::F32, DType::F32, 0);
    let op = RmsNormBackward::new(1, 4096, t.rows_of(&t.x), t.rows_of(&t.y), t.rows_of(&t.s))
        .eps(1e-6)
        .grad_weight(t.grad(0));
    let p = plan(&caps, &op).unwrap();
    let stage2 = &p.steps[1];
    assert_eq!(stage2.variant.kernel, Kernel::ParamGrad);
    assert_eq!(stage2.variant.slices, 1);
    assert_eq!(stage2.params.part_rows, 1);
    assert_eq!(stage2.grid, [1024 / stage2.variant.wg, 1]);
    // Many rows: many partial rows, summed by slices.
    let t = Tensors::new(20000, 4096, DType::F32, DType::F32, 0);
    let op = RmsNormBackward::new(
        20000,
        4096,
        t.rows_of(&t.x),
        t.rows_of(&t.y),
        t.rows_of(&t.s),
    )
    .eps(1e-6)
    .grad_weight(t.grad(0));
    let p = plan(&caps, &op).unwrap();
    assert!(
        p.steps[1].variant.slices > 1,
        "{}",
        p.steps[1].variant.label()
    );
}

#[test]
fn zero_rows() {
    let caps = caps_named("large GPU");
    let t = Tensors::new(0, 8, DType::F32, DType::F32, 0);
    let op = LayerNorm::new(0, 8, t.rows_of(&t.x), t.rows_of(&t.y)).mean(t.stat(0));
    assert!(plan(&caps, &op).unwrap().steps.is_empty());
    // The backward still writes its parameter gradients: sums over no rows.
    let op = LayerNormBackward::new(0, 8, t.rows_of(&t.x), t.rows_of(&t.y), t.rows_of(&t.s))
        .eps(1e-5)
        .grad_weight(t.grad(0));
    let p = plan(&caps, &op).unwrap();
    assert_eq!(p.steps.len(), 1);
    assert_eq!(p.steps[0].variant.kernel, Kernel::ParamGrad);
    assert_eq!(p.steps[0].params.part_rows, 0);
    assert_eq!(p.steps[0].binds[0], Bind::Absent);
    assert_eq!(p.scratch, 0);
}

#[test]
fn plans_are_deterministic_and_sized() {
    let caps = caps_named("WebGPU defaults");
    let t = Tensors::new(3000, 1024, DType::Bf16, DType::F32, 3);
    let op = LayerNormBackward::new(
        3000,
        1024,
        t.rows_of(&t.x),
        t.rows_of(&t.y),
        t.rows_of(&t.s),
    )
    .eps(1e-5)
    .dtype(DType::Bf16)
    .param_dtype(DType::F32)
    .grad_weight(t.grad(0))
    .grad_bias(t.grad(1));
    let a = plan(&caps, &op).unwrap();
    assert_eq!(a, plan(&caps, &op).unwrap());
    // Partial sums: two f32 arrays of one row per workgroup.
    let groups = u64::from(a.steps[0].params.part_rows);
    assert_eq!(a.scratch, groups * 1024 * 4 * 2);
    assert!(
        a.steps[0].variant.wg <= 256,
        "WebGPU allows 256 invocations"
    );
}

#[test]
fn errors_come_from_the_plan() {
    let caps = caps_named("small bindings");
    let t = Tensors::new(3, 4, DType::F32, DType::F32, 0);
    let (x, y) = (t.rows_of(&t.x), t.rows_of(&t.y));
    let err = |op: &dyn Fn() -> Result<Plan, Error>| op().unwrap_err();
    assert_eq!(
        err(&|| plan(&caps, &LayerNorm::new(3, 0, x, y))),
        Error::ZeroDim
    );
    assert!(matches!(
        err(&|| plan(&caps, &LayerNorm::new(4, 4, x, y))),
        Error::WrongSize {
            operand: Operand::Input,
            ..
        }
    ));
    assert!(matches!(
        err(&|| plan(&caps, &RmsNorm::new(3, 4, x, y).eps(f32::NAN))),
        Error::BadEpsilon(_)
    ));
    assert_eq!(
        err(&|| plan(
            &caps,
            &RmsNorm::new(3, 4, x, x).rrms(TensorRef::new(&t.x, 0, 12))
        )),
        Error::Overlap {
            written: Operand::Rrms,
            other: Operand::Input
        }
    );
    // A row that cannot fit one 256 KiB binding.
    let long = buffer(300_000 * 4);
    assert!(matches!(
        err(&|| plan(&caps, &RmsNorm::new(1, 300_000, &long, &long))),
        Error::RowTooLarge { .. }
    ));
    assert!(matches!(
        err(&|| plan(&caps, &RmsNormBackward::new(3, 4, x, x, y))),
        Error::EpsilonNeeded { .. }
    ));
    // An f16 row of 96 Ki elements fits a 256 KiB binding; its f32 weight does not.
    let dim = 96 << 10;
    let t = Tensors::new(1, dim, DType::F16, DType::F32, 0);
    let op = RmsNorm::new(1, dim as usize, t.rows_of(&t.x), t.rows_of(&t.y))
        .dtype(DType::F16)
        .param_dtype(DType::F32)
        .weight(t.param_of(&t.w));
    assert!(matches!(
        err(&|| plan(&caps, &op)),
        Error::RowTooLarge { row_bytes, .. } if row_bytes == dim * 4
    ));
    let op = RmsNorm::new(1, dim as usize, t.rows_of(&t.x), t.rows_of(&t.y)).dtype(DType::F16);
    assert!(plan(&caps, &op).is_ok());
}

#[test]
fn devices_too_small_are_refused() {
    let limits = wgpu::Limits {
        max_compute_invocations_per_workgroup: 32,
        ..wgpu::Limits::default()
    };
    assert!(matches!(
        Caps::new(&limits, wgpu::Features::empty(), NormsOptions::default()),
        Err(Error::UnsupportedDevice(_))
    ));
    let limits = wgpu::Limits {
        max_storage_buffers_per_shader_stage: 4,
        ..wgpu::Limits::default()
    };
    assert!(matches!(
        Caps::new(&limits, wgpu::Features::empty(), NormsOptions::default()),
        Err(Error::UnsupportedDevice(_))
    ));
    // Less workgroup memory than the kernels may declare (tests/shaders.rs measures them);
    // wgpu's smallest compute limit is enough.
    let limits = wgpu::Limits {
        max_compute_workgroup_storage_size: 8192,
        ..wgpu::Limits::default()
    };
    assert!(matches!(
        Caps::new(&limits, wgpu::Features::empty(), NormsOptions::default()),
        Err(Error::UnsupportedDevice(ref m)) if m.contains("workgroup memory")
    ));
    let limits = wgpu::Limits {
        max_compute_workgroup_storage_size: wgpu::Limits::downlevel_defaults()
            .max_compute_workgroup_storage_size,
        ..wgpu::Limits::default()
    };
    assert!(Caps::new(&limits, wgpu::Features::empty(), NormsOptions::default()).is_ok());
    let caps = Caps::new(
        &wgpu::Limits::default(),
        wgpu::Features::SUBGROUP,
        NormsOptions {
            subgroups: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!caps.subgroups);
}

#[test]
fn the_workgroup_cap_bounds_every_variant() {
    let big = wgpu::Limits {
        max_compute_invocations_per_workgroup: 1024,
        max_compute_workgroup_size_x: 1024,
        ..wgpu::Limits::default()
    };
    let caps = |cap| {
        let options = NormsOptions {
            max_workgroup_size: cap,
            ..Default::default()
        };
        Caps::new(&big, wgpu::Features::empty(), options).unwrap()
    };
    assert_eq!(caps(None).max_wg, 1024);
    assert_eq!(caps(Some(wgpu_norm::GL_MAX_WORKGROUP_SIZE)).max_wg, 256);
    assert_eq!(
        caps(Some(300)).max_wg,
        256,
        "rounded down to a power of two"
    );
    assert_eq!(
        caps(Some(1)).max_wg,
        64,
        "never below the kernels' smallest workgroup"
    );
    let capped = caps(Some(256));
    for dim in [4097u64, 8192, 65536] {
        let t = Tensors::new(1, dim, DType::F32, DType::F32, 0);
        let op = LayerNorm::new(1, dim as usize, t.rows_of(&t.x), t.rows_of(&t.y));
        for step in plan(&capped, &op).unwrap().steps {
            assert!(step.variant.wg <= 256, "D = {dim}: {:?}", step.variant);
        }
    }
}

#[test]
fn plan_needs_only_the_op_trait() {
    fn plan_any(caps: &Caps, op: &impl Op) -> usize {
        plan(caps, op).map(|p| p.steps.len()).unwrap_or(0)
    }
    let caps = caps_named("large GPU");
    let t = Tensors::new(2, 8, DType::F32, DType::F32, 0);
    assert_eq!(
        plan_any(&caps, &CopyOp::new(2, 8, t.rows_of(&t.x), t.rows_of(&t.y))),
        1
    );
}

#[test]
fn builders_do_not_undo_each_other() {
    // param_dtype set before dtype stays: the mixed mode in either order.
    let caps = caps_named("large GPU");
    let t = Tensors::new(2, 8, DType::Bf16, DType::F32, 0);
    let (x, y, w) = (t.rows_of(&t.x), t.rows_of(&t.y), t.param_of(&t.w));
    let a = RmsNorm::new(2, 8, x, y)
        .param_dtype(DType::F32)
        .dtype(DType::Bf16)
        .weight(w);
    let b = RmsNorm::new(2, 8, x, y)
        .dtype(DType::Bf16)
        .param_dtype(DType::F32)
        .weight(w);
    let (pa, pb) = (plan(&caps, &a).unwrap(), plan(&caps, &b).unwrap());
    assert_eq!(pa, pb);
    let v = pa.steps[0].variant;
    assert_eq!((v.act, v.param), (DType::Bf16, DType::F32));
    // Without param_dtype, parameters are stored like the activations.
    let c = RmsNorm::new(2, 8, x, y).dtype(DType::Bf16).weight(w);
    assert!(matches!(
        plan(&caps, &c),
        Err(Error::WrongSize {
            operand: Operand::Weight,
            expected: 16,
            ..
        })
    ));
}

#[test]
fn webgpu_forbids_written_bindings_that_alias() {
    // In a browser, y over x (or operands whose bindings meet in an arena) is a typed error
    // before anything is recorded: WebGPU would report the aliasing and drop the dispatch.
    let mut caps = caps_named("WebGPU defaults");
    caps.writable_aliasing = false;
    let (rows, dim) = (3usize, 64usize);
    let bytes = (rows * dim * 4) as u64;
    let x = buffer(bytes);
    let y = buffer(bytes);
    let w = buffer(dim as u64 * 4);
    let t = |b| TensorRef::new(b, 0, bytes);
    let wt = TensorRef::new(&w, 0, dim as u64 * 4);
    let in_place = RmsNorm::new(rows, dim, t(&x), t(&x)).weight(wt);
    assert!(matches!(plan(&caps, &in_place), Err(Error::Unsupported(_))));
    let ln = LayerNorm::new(rows, dim, t(&x), t(&x)).weight(wt);
    assert!(matches!(plan(&caps, &ln), Err(Error::Unsupported(_))));
    // x and y in one arena, 256 bytes apart: their bindings do not meet.
    let arena = buffer(2 * bytes + 256);
    let op = RmsNorm::new(
        rows,
        dim,
        TensorRef::new(&arena, 0, bytes),
        TensorRef::new(&arena, bytes + 256, bytes),
    );
    assert!(plan(&caps, &op).is_ok(), "ranges apart");
    // 16 bytes apart: y's binding starts at the 256-byte boundary before it, inside x's.
    let near = RmsNorm::new(
        rows,
        dim,
        TensorRef::new(&arena, 16, bytes),
        TensorRef::new(&arena, bytes + 32, bytes),
    );
    assert!(matches!(plan(&caps, &near), Err(Error::Unsupported(_))));
    // Apart, and natively, all of it plans.
    assert!(plan(&caps, &RmsNorm::new(rows, dim, t(&x), t(&y)).weight(wt)).is_ok());
    caps.writable_aliasing = true;
    assert!(plan(&caps, &in_place).is_ok());
    assert!(plan(&caps, &near).is_ok());
}

#[test]
fn few_long_rows_are_split_without_statistics() {
    let caps = caps_named("large GPU");
    let t = Tensors::new(1, 8192, DType::F32, DType::F32, 0);
    let (x, y) = (t.rows_of(&t.x), t.rows_of(&t.y));
    let kernels = |p: &Plan| -> Vec<(Kernel, bool, u32)> {
        p.steps
            .iter()
            .map(|s| (s.variant.kernel, s.variant.stats, s.params.parts))
            .collect()
    };
    // One row of 2048 V's: 8 parts of 256, the sums and then the normalization.
    let p = plan(&caps, &RmsNorm::new(1, 8192, x, y)).unwrap();
    assert_eq!(
        kernels(&p),
        [
            (Kernel::RmsNormSplit, true, 8),
            (Kernel::RmsNormSplit, false, 8)
        ]
    );
    assert_eq!(p.scratch, 8 * 16);
    // Saving rrms, or in place: whole rows.
    let p = plan(&caps, &RmsNorm::new(1, 8192, x, y).rrms(t.stat(0))).unwrap();
    assert_eq!(kernels(&p), [(Kernel::RmsNorm, false, 1)]);
    let p = plan(&caps, &LayerNorm::new(1, 8192, x, x)).unwrap();
    assert_eq!(kernels(&p), [(Kernel::LayerNorm, false, 1)]);
    // Rows enough to fill the GPU, a row too short for two parts, or split_groups = 0: both
    // norms take whole rows.
    let plans = |caps: &Caps, rows: u64, dim: u64| {
        let t = Tensors::new(rows, dim, DType::F32, DType::F32, 0);
        let (x, y) = (t.rows_of(&t.x), t.rows_of(&t.y));
        let (r, d) = (rows as usize, dim as usize);
        [
            plan(caps, &LayerNorm::new(r, d, x, y)).unwrap(),
            plan(caps, &RmsNorm::new(r, d, x, y)).unwrap(),
        ]
    };
    let whole = |caps: &Caps, rows: u64, dim: u64| {
        let [ln, rms] = plans(caps, rows, dim);
        assert_eq!(
            kernels(&ln),
            [(Kernel::LayerNorm, false, 1)],
            "{rows}x{dim}"
        );
        assert_eq!(kernels(&rms), [(Kernel::RmsNorm, false, 1)], "{rows}x{dim}");
    };
    whole(&caps, 128, 8192);
    whole(&caps, 1, 2044);
    let never = Caps {
        tuning: wgpu_norm::Tuning {
            split_groups: 0,
            ..Default::default()
        },
        ..caps.clone()
    };
    whole(&never, 1, 8192);
    // 16 rows ask for 8 parts each; the scalar path counts single elements.
    let [_, p] = plans(&caps, 16, 4097);
    assert_eq!(p.steps[0].params.parts, 8);
    assert!(!p.steps[0].variant.vec4);
}

#[test]
fn sixteen_bit_rows_take_as_many_vs_as_f32_rows_or_tuned_twice() {
    let caps = caps_named("large GPU");
    let (rows, dim) = (1024, 4096);
    // (workgroup, cached V's, rows per workgroup) of the forward and the backward.
    let shape = |caps: &Caps, dtype: DType| {
        let t = Tensors::new(rows, dim, dtype, dtype, 0);
        let (x, y) = (t.rows_of(&t.x), t.rows_of(&t.y));
        let (r, d) = (rows as usize, dim as usize);
        let op = RmsNorm::new(r, d, x, y).dtype(dtype);
        let bwd = op.backward(y, t.rows_of(&t.s)).unwrap();
        [plan(caps, &op).unwrap(), plan(caps, &bwd).unwrap()].map(|p| {
            let s = &p.steps[0];
            (s.variant.wg, s.variant.cache, s.params.rows_per_group)
        })
    };
    // f32: 1024 V's of 16 bytes, 8 an invocation; a 16 KiB row a workgroup. The backward:
    // half as many V's an invocation.
    let [fwd, bwd] = shape(&caps, DType::F32);
    assert_eq!((fwd, bwd.0, bwd.1), ((128, 8, 1), 256, 4));
    // 16 bits: V's of 8 bytes, as many an invocation (the registers of f32 rows), and two
    // 8 KiB rows a workgroup (rows counted in bytes).
    for dtype in [DType::F16, DType::Bf16] {
        let [fwd, bwd] = shape(&caps, dtype);
        assert_eq!((fwd, bwd.0, bwd.1), ((128, 8, 2), 256, 4), "{dtype}");
    }
    // Tuned to twice as many (the bytes of f32 rows in flight): half the invocations.
    let twice = Caps {
        tuning: wgpu_norm::Tuning {
            v_per_invocation_16bit: 16,
            ..Default::default()
        },
        ..caps.clone()
    };
    for dtype in [DType::F16, DType::Bf16] {
        let [fwd, bwd] = shape(&twice, dtype);
        assert_eq!((fwd, bwd.0, bwd.1), ((64, 16, 2), 128, 8), "{dtype}");
    }
}

#[test]
fn side_by_side_below_moves_the_short_rows_line() {
    let caps = caps_named("large GPU");
    // (invocations a row, rows side by side) of the forward and the backward (both norms)
    // at `dim` in f32 (vec4).
    let shape = |caps: &Caps, dim: u64| {
        let t = Tensors::new(64, dim, DType::F32, DType::F32, 0);
        let (x, y) = (t.rows_of(&t.x), t.rows_of(&t.y));
        let rms = RmsNorm::new(64, dim as usize, x, y);
        let ln = LayerNorm::new(64, dim as usize, x, y);
        let rms_bwd = rms.backward(y, t.rows_of(&t.s)).unwrap();
        let ln_bwd = ln.backward(y, t.rows_of(&t.s)).unwrap();
        let shapes = [
            plan(caps, &rms).unwrap(),
            plan(caps, &ln).unwrap(),
            plan(caps, &rms_bwd).unwrap(),
            plan(caps, &ln_bwd).unwrap(),
        ]
        .map(|p| {
            let v = p.steps[0].variant;
            (v.row_wg, v.rows_side_by_side())
        });
        assert_eq!(shapes[0], shapes[1], "D = {dim}");
        assert_eq!(shapes[2], shapes[3], "D = {dim}");
        [shapes[0], shapes[2]]
    };
    let below = |side_by_side_below, side_by_side_below_backward| Caps {
        tuning: wgpu_norm::Tuning {
            side_by_side_below,
            side_by_side_below_backward,
            ..Default::default()
        },
        ..caps.clone()
    };
    // The default: the forward's rows of fewer than two V's an invocation of 64 side by
    // side (D = 256: 8 rows of 8 invocations with 8 V's each), the backward's of fewer than
    // one (D = 128); D = 512 alone both ways.
    assert_eq!(shape(&caps, 256), [(8, 8), (64, 1)]);
    assert_eq!(shape(&caps, 128), [(4, 16), (8, 8)]);
    assert_eq!(shape(&caps, 512), [(64, 1), (64, 1)]);
    assert_eq!(shape(&below(2, 1), 256), shape(&caps, 256));
    // Forward 1: D = 256 alone, as before 2026-11-29; D = 128 still side by side.
    assert_eq!(shape(&below(1, 1), 256), [(64, 1), (64, 1)]);
    assert_eq!(shape(&below(1, 1), 128), [(4, 16), (8, 8)]);
    // Backward 2: D = 256 side by side (4 rows of 16 invocations with 4 V's each), the
    // forward's line where it was.
    assert_eq!(shape(&below(2, 2), 256), [(8, 8), (16, 4)]);
    assert_eq!(shape(&below(2, 2), 512), [(64, 1), (64, 1)]);
    // Forward 4: D = 512 side by side (4 rows of 16 with 8 each); backward 4: D = 512 (2 rows
    // of 32 with 4 each).
    assert_eq!(shape(&below(4, 1), 512), [(16, 4), (64, 1)]);
    assert_eq!(shape(&below(4, 4), 512), [(16, 4), (32, 2)]);
    // Forward 8: D = 1024 too. Past 256 V's (128 backward: 32 invocations of 8 or 4) a row
    // takes the whole workgroup whatever the threshold.
    assert_eq!(shape(&below(8, 4), 1024), [(32, 2), (64, 1)]);
    assert_eq!(shape(&below(64, 64), 1028), [(64, 1), (64, 1)]);
    // An output written over its input keeps one row a workgroup whatever the knob.
    let t = Tensors::new(64, 256, DType::F32, DType::F32, 0);
    let x = t.rows_of(&t.x);
    let p = plan(&below(8, 4), &RmsNorm::new(64, 256, x, x)).unwrap();
    assert_eq!(p.steps[0].variant.rows_side_by_side(), 1);
}

#[test]
fn strided_rows_take_their_own_v_per_invocation() {
    let caps = caps_named("large GPU");
    // (strided, workgroup, cached V's, tail) of the forward and the backward of `rows` x `dim`
    // in `dtype`.
    let shape = |caps: &Caps, dtype: DType, rows: u64, dim: u64| {
        let t = Tensors::new(rows, dim, dtype, dtype, 0);
        let (x, y) = (t.rows_of(&t.x), t.rows_of(&t.y));
        let op = RmsNorm::new(rows as usize, dim as usize, x, y).dtype(dtype);
        let bwd = op.backward(y, t.rows_of(&t.s)).unwrap();
        [plan(caps, &op).unwrap(), plan(caps, &bwd).unwrap()].map(|p| {
            let v = p.steps[0].variant;
            (v.strided(), v.wg, v.cache, v.tail())
        })
    };
    let wide = Caps {
        tuning: wgpu_norm::Tuning {
            v_per_invocation_strided: 32,
            ..Default::default()
        },
        ..caps.clone()
    };
    // D = 4097 f32: 1025 strided V's, at least 8 an invocation by default (128 invocations
    // of 9, a cache of exactly 9), 32 tuned (64 of 17: 16 in registers, the tail streamed).
    // The backward keeps half of v_per_invocation (256 of 5).
    assert_eq!(
        shape(&caps, DType::F32, 1024, 4097),
        [(true, 128, 9, false), (true, 256, 5, false)]
    );
    assert_eq!(
        shape(&wide, DType::F32, 1024, 4097),
        [(true, 64, 16, true), (true, 256, 5, false)]
    );
    // 16-bit strided rows scale by the same factor: 8 V's by default, 32 tuned.
    assert_eq!(
        shape(&caps, DType::Bf16, 1024, 4097)[0],
        (true, 128, 9, false)
    );
    assert_eq!(
        shape(&wide, DType::Bf16, 1024, 4097)[0],
        (true, 64, 16, true)
    );
    // A split row's parts have single-element V's, not strided ones: the knob is not theirs.
    let split = |caps: &Caps| {
        let t = Tensors::new(2, 4097, DType::F32, DType::F32, 0);
        let op = RmsNorm::new(2, 4097, t.rows_of(&t.x), t.rows_of(&t.y));
        let p = plan(caps, &op).unwrap();
        assert!(p.steps[0].variant.kernel.is_split());
        p.steps
            .iter()
            .map(|s| (s.variant.wg, s.variant.cache))
            .collect::<Vec<_>>()
    };
    assert_eq!(split(&caps), split(&wide));
    // Rows read four consecutive elements at a time keep the main knob.
    for dtype in [DType::F32, DType::Bf16] {
        assert_eq!(
            shape(&caps, dtype, 1024, 4096),
            shape(&wide, dtype, 1024, 4096),
            "{dtype}"
        );
    }
}

#[test]
fn sixteen_bit_strided_rows_pair_where_their_words_agree() {
    let caps = caps_named("large GPU");
    // Whether the forward (first step) and the backward take paired V's, with x and the
    // residual at element offset `off`, y at `out_off`.
    let paired = |dtype: DType, dim: u64, off: u64, out_off: u64| {
        // Enough rows not to split them over several workgroups.
        let rows = 200;
        let t = Tensors::new(rows, dim, dtype, dtype, off.max(out_off));
        let at = |b, o: u64| TensorRef::new(b, o * dtype.size(), rows * dim * dtype.size());
        let (r, d) = (rows as usize, dim as usize);
        let op = RmsNorm::new(r, d, at(&t.x, off), at(&t.y, out_off))
            .dtype(dtype)
            .residual(at(&t.r, off));
        let fwd = plan(&caps, &op).unwrap().steps[0].variant;
        // The backward's dy and dx where the forward's y is: the same halves, the same answer.
        let bwd = RmsNorm::new(r, d, at(&t.x, off), at(&t.y, out_off))
            .dtype(dtype)
            .backward(at(&t.s, out_off), at(&t.r, out_off))
            .unwrap();
        let bwd = plan(&caps, &bwd).unwrap().steps[0].variant;
        assert_eq!(bwd.paired, fwd.paired, "{dtype} D = {dim}: {}", bwd.label());
        fwd.paired
    };
    for dtype in [DType::Bf16, DType::F16] {
        // Odd D: rows alternate halves, in step in every tensor.
        assert!(paired(dtype, 4097, 0, 0));
        assert!(paired(dtype, 4097, 3, 1));
        assert!(!paired(dtype, 4097, 1, 0), "x and y on other halves");
        assert!(paired(dtype, 7, 2, 0), "short rows side by side");
        // D % 4 == 2: every row on the same half, odd here.
        assert!(paired(dtype, 1026, 1, 1));
        // D % 4 == 0 off vec4 alignment: on word boundaries only.
        assert!(paired(dtype, 64, 2, 2));
        assert!(!paired(dtype, 64, 1, 1));
        // vec4: nothing to pair.
        assert!(!paired(dtype, 64, 0, 4));
    }
    assert!(!paired(DType::F32, 4097, 0, 0), "f32 has no words to share");
}

/// The backward's workgroups over paired rows (`wgpu_norm::shaders::row_groups` and its WGSL
/// twin `step_row`, mirrored here): every row taken once, every workgroup given a row, and all
/// rows of a workgroup of one parity (at odd D, of one phase).
#[test]
fn paired_backward_workgroups_take_rows_of_one_parity() {
    use wgpu_norm::shaders::row_groups;
    for per in 1..6u64 {
        for rows in 0..40u64 {
            let groups = row_groups(rows, per, true);
            let mut seen = vec![0u32; rows as usize];
            for g in 0..groups {
                let taken: Vec<u64> = (0..per)
                    .map(|j| (g / 2) * 2 * per + 2 * j + g % 2)
                    .filter(|&row| row < rows)
                    .collect();
                assert!(
                    !taken.is_empty(),
                    "rows {rows}, {per} a group: group {g} empty"
                );
                assert!(
                    taken.iter().all(|row| row % 2 == g % 2),
                    "rows {rows}, group {g}"
                );
                for row in taken {
                    seen[row as usize] += 1;
                }
            }
            assert!(
                seen.iter().all(|&n| n == 1),
                "rows {rows}, {per} a group: {seen:?}"
            );
            assert!(groups <= rows.div_ceil(per) + 1);
            assert_eq!(row_groups(rows, per, false), rows.div_ceil(per));
        }
    }
}
