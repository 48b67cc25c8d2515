//! [`TensorRef`]: where an operand lives in the caller's buffer.

/// A byte range of a caller's buffer holding one operand, densely packed f32 in row-major
/// order. The size must be exactly what the operation needs (`rows * dim * 4` for the input
/// and output, `dim * 4` for weight and bias, `rows * 4` for saved statistics), so a shape
/// mistake is an error rather than a silent read of neighbouring data.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset into `buffer`; a multiple of 4.
    pub offset: u64,
    /// Length in bytes.
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

    /// The whole buffer.
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
