//! The one error type of the crate.

/// Which operand of a kernel an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operand {
    Input,
    Output,
    Weight,
    Bias,
    Mean,
    Rstd,
    GradOutput,
    GradInput,
    GradWeight,
    GradBias,
    /// The backward pass's own partial-sum buffer.
    Partials,
    /// The residual added to the input before the norm.
    Residual,
    /// Where input + residual is written back.
    ResidualOut,
}

impl std::fmt::Display for Operand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Operand::Input => "input",
            Operand::Output => "output",
            Operand::Weight => "weight",
            Operand::Bias => "bias",
            Operand::Mean => "mean",
            Operand::Rstd => "rstd",
            Operand::GradOutput => "grad_output",
            Operand::GradInput => "grad_input",
            Operand::GradWeight => "grad_weight",
            Operand::GradBias => "grad_bias",
            Operand::Partials => "partial sums",
            Operand::Residual => "residual",
            Operand::ResidualOut => "residual_out",
        })
    }
}

/// Everything that can go wrong. Bad arguments are reported here before anything is
/// recorded, so none of them reaches wgpu's uncaptured-error handler.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    #[error("the normalized dimension D must be at least 1")]
    ZeroDim,

    #[error("epsilon must be finite and >= 0, got {0}")]
    BadEpsilon(f32),

    #[error("{rows} rows x {dim} elements is too large to address")]
    ShapeTooLarge { rows: usize, dim: usize },

    #[error(
        "a row of {dim} f32 ({row_bytes} bytes) does not fit one storage binding of this device \
         (max_storage_buffer_binding_size = {max_binding})"
    )]
    RowTooLarge {
        dim: usize,
        row_bytes: u64,
        max_binding: u64,
    },

    #[error("{operand} is {actual} bytes but must be {expected} bytes ({what})")]
    WrongSize {
        operand: Operand,
        expected: u64,
        actual: u64,
        what: &'static str,
    },

    #[error("{operand}: bytes {offset}..{end} lie outside its buffer of {buffer_size} bytes")]
    OutOfBounds {
        operand: Operand,
        offset: u64,
        end: u64,
        buffer_size: u64,
    },

    #[error("{operand}: byte offset {offset} is not a multiple of its element size, {element}")]
    MisalignedOffset {
        operand: Operand,
        offset: u64,
        element: u64,
    },

    #[error("{operand}: the buffer lacks BufferUsages::STORAGE (it has {usage:?})")]
    MissingUsage {
        operand: Operand,
        usage: wgpu::BufferUsages,
    },

    #[error(
        "{written} overlaps {other} in the same buffer; outputs may only alias the input \
         exactly (in place)"
    )]
    Overlap { written: Operand, other: Operand },

    #[error("{needs} is required with {given}")]
    MissingOperand { needs: Operand, given: Operand },

    #[error("slice of {len} elements is not {rows} rows x {dim} ({what})")]
    SliceLength {
        len: usize,
        rows: usize,
        dim: usize,
        what: &'static str,
    },

    #[error("the pRMSNorm fraction must be in (0, 1], got {0}")]
    BadFraction(f32),

    #[error("the device cannot run these kernels: {0}")]
    UnsupportedDevice(String),

    #[error("{0}")]
    NoAdapter(String),

    #[error("requesting the device failed: {0}")]
    RequestDevice(String),

    #[error("reading results back from the GPU failed: {0}")]
    Readback(String),

    #[error("wgpu-norm internal error (please report): {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
