//! [`TensorRef`]: where an operand lives in the caller's buffer.

/// A byte range of a caller's buffer holding one operand, densely packed in row-major order,
/// in the operand's storage type ([`crate::DType`]): the op's `dtype` for x, y, dy, dx and
/// the residual stream, its `param_dtype` for weight and bias, and always f32 for saved
/// statistics and parameter gradients.
///
/// Offsets and sizes are in bytes, and the size must be exactly what the op needs, so that
/// a shape mistake is an error rather than a silent read of neighbouring data:
///
/// | operand | size in bytes | offset a multiple of |
/// |---|---|---|
/// | x, y, dy, dx, residual | `rows * dim * e` | `e` |
/// | weight, bias | `dim * p` | `p` |
/// | dweight, dbias | `dim * 4` | 4 |
/// | mean, rstd, rrms | `rows * 4` | 4 |
///
/// with `e` and `p` the element sizes of `dtype` and `param_dtype`: 4 for f32, 2 for f16 and
/// bf16. A 16-bit tensor may start and end in the middle of a 32-bit word (odd element
/// offsets and odd sizes work), but the buffer must hold the whole word: a tensor ending at
/// byte `k` needs a buffer of at least `k` rounded up to 4 bytes (the other half is never
/// written). Every buffer needs `BufferUsages::STORAGE`.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset into `buffer`; a multiple of the element size.
    pub offset: u64,
    /// Length in bytes: elements times the element size.
    pub size: u64,
}

impl<'a> TensorRef<'a> {
    pub fn new(buffer: &'a wgpu::Buffer, offset: u64, size: u64) -> Self {
        TensorRef {
            buffer,
            offset,
            size,
        }
    }

    /// The whole buffer (its size must be exactly what the op needs).
    pub fn whole(buffer: &'a wgpu::Buffer) -> Self {
        TensorRef::new(buffer, 0, buffer.size())
    }

    pub(crate) fn end(&self) -> u64 {
        self.offset.saturating_add(self.size)
    }
}

impl<'a> From<&'a wgpu::Buffer> for TensorRef<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        TensorRef::whole(buffer)
    }
}

impl<'a> From<wgpu::BufferSlice<'a>> for TensorRef<'a> {
    fn from(slice: wgpu::BufferSlice<'a>) -> Self {
        TensorRef::new(slice.buffer(), slice.offset(), slice.size())
    }
}
