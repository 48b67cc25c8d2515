//! [`Op`]: what every op of the crate gives the launch path, with its operands by name.

use crate::dtype::DType;
use crate::error::{Operand, Result};
use crate::kernel::Kernel;
use crate::tensor::TensorRef;

/// An operation the crate's kernels can record: [`crate::LayerNorm`], [`crate::RmsNorm`],
/// their backward passes, and [`crate::CopyOp`]. Record it with [`crate::Norms::record`],
/// prepare it once with [`crate::Norms::prepare`], or inspect its [`crate::Plan`].
///
/// Sealed: each op checks its own rules (which operands go together, its options) when it
/// describes itself, and the rest is shared.
pub trait Op: private::Describe {}

pub(crate) mod private {
    /// Each op's own rules, and its description in the shared terms.
    pub trait Describe {
        fn launch(&self) -> crate::Result<super::Launch<'_>>;
    }
}

impl<T: private::Describe> Op for T {}

/// An op's operands, keyed by [`Operand`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Operands<'a>([Option<TensorRef<'a>>; Operand::ALL.len()]);

impl<'a> Operands<'a> {
    pub fn get(&self, operand: Operand) -> Option<TensorRef<'a>> {
        self.0[operand as usize]
    }

    /// Sets `operand` (to nothing when `t` is None).
    pub fn set(&mut self, operand: Operand, t: impl Into<Option<TensorRef<'a>>>) -> &mut Self {
        self.0[operand as usize] = t.into();
        self
    }

    /// The present operands, in [`Operand::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Operand, TensorRef<'a>)> + '_ {
        Operand::ALL
            .iter()
            .filter_map(|&o| self.get(o).map(|t| (o, t)))
    }
}

/// One op described for the shared launch path.
#[derive(Clone, Debug)]
pub struct Launch<'a> {
    /// The row kernel (the backward's stage 2 follows from it).
    pub kernel: Kernel,
    pub rows: usize,
    pub dim: usize,
    pub eps: f32,
    /// [`crate::kernel::Opt`] bits.
    pub options: u32,
    /// Storage of activations and parameters.
    pub act: DType,
    pub param: DType,
    /// Elements at the start of each row that enter the statistics (pRMSNorm); `dim` if None.
    pub stat_len: Option<usize>,
    pub operands: Operands<'a>,
}

/// Checks that `needs` is present when `given` is.
pub(crate) fn requires(operands: &Operands, given: Operand, needs: Operand) -> Result<()> {
    if operands.get(given).is_some() && operands.get(needs).is_none() {
        return Err(crate::Error::MissingOperand { needs, given });
    }
    Ok(())
}
