//! The bandwidth baseline: host side of `shaders/copy.wgsl`, a plain copy of the same bytes
//! a norm reads and writes. Tests: `tests/copy.rs`.

use crate::dtype::DType;
use crate::error::{Operand, Result};
use crate::kernel::{Access, Class, Kernel, KernelDef, Shape, Slot, rows};
use crate::op::{Launch, Operands, private::Describe};
use crate::tensor::TensorRef;

/// The kernel's bindings, in binding order (1, 2, ...). Always f32: a 16-bit tensor is
/// copied as its bytes.
pub(crate) const KERNEL: KernelDef = KernelDef {
    name: "copy",
    source: include_str!("../shaders/copy.wgsl"),
    slots: &[
        Slot {
            class: Class::F32,
            ..rows(Operand::Input, Access::Read)
        },
        Slot {
            class: Class::F32,
            ..rows(Operand::Output, Access::Write)
        },
    ],
    shape: Shape::Flat,
    includes: &[],
    wgsl_flags: &[],
    flags: 0,
};

/// `output = input` for `rows x dim` f32 (or any data of that many 32-bit words): the
/// bandwidth baseline of the benchmarks, a plain copy of the same bytes.
#[derive(Clone, Debug)]
#[must_use = "an op does nothing until it is recorded (Norms::record) or prepared"]
pub struct CopyOp<'a> {
    pub rows: usize,
    pub dim: usize,
    pub input: TensorRef<'a>,
    pub output: TensorRef<'a>,
}

impl<'a> CopyOp<'a> {
    pub fn new(
        rows: usize,
        dim: usize,
        input: impl Into<TensorRef<'a>>,
        output: impl Into<TensorRef<'a>>,
    ) -> Self {
        CopyOp {
            rows,
            dim,
            input: input.into(),
            output: output.into(),
        }
    }
}

impl Describe for CopyOp<'_> {
    fn launch(&self) -> Result<Launch<'_>> {
        let mut operands = Operands::default();
        operands
            .set(Operand::Input, self.input)
            .set(Operand::Output, self.output);
        Ok(Launch {
            kernel: Kernel::Copy,
            rows: self.rows,
            dim: self.dim,
            eps: 0.0,
            options: 0,
            act: DType::F32,
            param: DType::F32,
            stat_len: None,
            operands,
        })
    }
}
