//! The convenience layer for data in slices: upload, run, read back.

use wgpu::util::DeviceExt;

use crate::DType;
use crate::adapter;
use crate::error::{Error, Result};
use crate::layer_norm::LayerNorm;
use crate::norms::{Norms, NormsOptions};
use crate::rms_norm::RmsNorm;

/// A device of its own with the kernels built for it. For people with data in slices;
/// runtimes that own a device use [`Norms`] directly.
pub struct Gpu {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub norms: Norms,
}

/// The features the crate uses when the adapter has them.
pub const USEFUL_FEATURES: wgpu::Features = wgpu::Features::SUBGROUP
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS);

/// Optional operands of [`Gpu::layer_norm`] and [`Gpu::rms_norm`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SliceOptions<'a> {
    /// `None`: the op's default ([`LayerNorm::DEFAULT_EPS`], [`RmsNorm::DEFAULT_EPS`]).
    pub eps: Option<f32>,
    pub weight: Option<&'a [f32]>,
    /// LayerNorm only.
    pub bias: Option<&'a [f32]>,
    /// How x and y are stored on the GPU: with f16/bf16 the values of `x` are rounded to it,
    /// and y comes back as the stored 16-bit values (weight and bias stay f32: the mixed
    /// mode).
    pub dtype: DType,
}

/// What a slice call returns: `y` and the saved statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalized {
    pub y: Vec<f32>,
    /// LayerNorm: each row's mean. Empty for RMSNorm.
    pub mean: Vec<f32>,
    /// LayerNorm: `1 / sqrt(var + eps)`; RMSNorm: `1 / sqrt(mean(x^2) + eps)`.
    pub rstd: Vec<f32>,
}

impl Gpu {
    /// Picks an adapter with [`adapter::pick_adapter`] and opens a device on it.
    pub fn new() -> Result<Self> {
        pollster::block_on(Self::new_async())
    }

    pub async fn new_async() -> Result<Self> {
        Self::from_adapter(
            adapter::pick_adapter().await?,
            None,
            NormsOptions::default(),
        )
        .await
    }

    /// Opens a device on `adapter` with its full limits (or `limits`) and the
    /// [`USEFUL_FEATURES`] it has.
    pub async fn from_adapter(
        adapter: wgpu::Adapter,
        limits: Option<wgpu::Limits>,
        options: NormsOptions,
    ) -> Result<Self> {
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("wgpu-norm"),
                required_features: adapter.features() & USEFUL_FEATURES,
                required_limits: limits.unwrap_or_else(|| adapter.limits()),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::RequestDevice(e.to_string()))?;
        let norms = Norms::with_options(&device, options)?;
        Ok(Gpu {
            adapter,
            device,
            queue,
            norms,
        })
    }

    /// One line naming the adapter in use.
    pub fn describe(&self) -> String {
        adapter::describe(&self.adapter.get_info())
    }

    /// A storage buffer holding `data` (usable as a source and destination of copies too).
    pub fn upload(&self, label: &str, data: &[f32]) -> wgpu::Buffer {
        // wgpu rejects zero-sized bindings; an empty tensor gets 4 bytes nobody reads.
        let bytes: &[u8] = if data.is_empty() {
            &[0; 4]
        } else {
            bytemuck::cast_slice(data)
        };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// A storage buffer holding `data` stored as `dtype` (padded to whole words).
    pub fn upload_as(&self, label: &str, data: &[f32], dtype: DType) -> wgpu::Buffer {
        let mut bytes = dtype.encode(data);
        bytes.resize(bytes.len().next_multiple_of(4).max(4), 0);
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// An uninitialised storage buffer of `len` f32.
    pub fn storage(&self, label: &str, len: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (len.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Reads `len` f32 from the start of each buffer (which needs `COPY_SRC`).
    ///
    /// Storage buffers cannot be mapped, so each is copied into a `MAP_READ` staging buffer in
    /// one submission; `map_async` then asks for the staging memory, `device.poll` waits for the
    /// GPU to finish (and runs the map callbacks), and the callbacks' results arrive through a
    /// channel. On native the poll blocks; on the web it returns at once and the `await` waits.
    pub async fn read_async(&self, buffers: &[(&wgpu::Buffer, usize)]) -> Result<Vec<Vec<f32>>> {
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgpu-norm readback"),
            });
        let staging: Vec<_> = buffers
            .iter()
            .map(|&(src, len)| {
                let size = (len.max(1) * 4) as u64;
                let dst = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgpu-norm staging"),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                if len > 0 {
                    encoder.copy_buffer_to_buffer(src, 0, &dst, 0, size);
                }
                dst
            })
            .collect();
        self.queue.submit([encoder.finish()]);
        let mut receivers = Vec::new();
        for dst in &staging {
            let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
            dst.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
            receivers.push(rx);
        }
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Readback(e.to_string()))?;
        let mut out = Vec::new();
        for ((dst, rx), &(_, len)) in staging.iter().zip(receivers).zip(buffers) {
            match rx.receive().await {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(Error::Readback(e.to_string())),
                None => return Err(Error::Readback("map callback dropped".into())),
            }
            let data = dst
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::Readback(e.to_string()))?;
            out.push(bytemuck::cast_slice::<u8, f32>(&data)[..len].to_vec());
            drop(data);
            dst.unmap();
        }
        Ok(out)
    }

    /// LayerNorm of `x` (rows of `dim`), with each row's mean and rstd.
    pub fn layer_norm(&self, x: &[f32], dim: usize, opts: &SliceOptions) -> Result<Normalized> {
        pollster::block_on(self.layer_norm_async(x, dim, opts))
    }

    pub async fn layer_norm_async(
        &self,
        x: &[f32],
        dim: usize,
        opts: &SliceOptions<'_>,
    ) -> Result<Normalized> {
        self.run(x, dim, opts, true).await
    }

    /// RMSNorm of `x` (rows of `dim`), with each row's rrms.
    pub fn rms_norm(&self, x: &[f32], dim: usize, opts: &SliceOptions) -> Result<Normalized> {
        pollster::block_on(self.rms_norm_async(x, dim, opts))
    }

    pub async fn rms_norm_async(
        &self,
        x: &[f32],
        dim: usize,
        opts: &SliceOptions<'_>,
    ) -> Result<Normalized> {
        self.run(x, dim, opts, false).await
    }

    async fn run(
        &self,
        x: &[f32],
        dim: usize,
        opts: &SliceOptions<'_>,
        layer: bool,
    ) -> Result<Normalized> {
        if dim == 0 {
            return Err(Error::ZeroDim);
        }
        if !x.len().is_multiple_of(dim) {
            return Err(Error::SliceLength {
                len: x.len(),
                rows: x.len() / dim,
                dim,
                what: "x must hold whole rows",
            });
        }
        if !layer && opts.bias.is_some() {
            return Err(Error::SliceLength {
                len: opts.bias.map_or(0, <[f32]>::len),
                rows: 0,
                dim,
                what: "RMSNorm takes no bias",
            });
        }
        for p in [opts.weight, opts.bias].into_iter().flatten() {
            if p.len() != dim {
                return Err(Error::SliceLength {
                    len: p.len(),
                    rows: 1,
                    dim,
                    what: "weight and bias hold dim elements",
                });
            }
        }
        let rows = x.len() / dim;
        let dt = opts.dtype;
        let xb = self.upload_as("wgpu-norm x", x, dt);
        // Whole words for 16-bit y too (`storage` counts f32).
        let yb = self.storage("wgpu-norm y", (x.len() * dt.size() as usize).div_ceil(4));
        let wb = opts.weight.map(|w| self.upload("wgpu-norm weight", w));
        let bb = opts.bias.map(|b| self.upload("wgpu-norm bias", b));
        let mb = self.storage("wgpu-norm mean", rows);
        let rb = self.storage("wgpu-norm rstd", rows);
        let n = x.len() as u64 * dt.size();
        let s = (rows * 4) as u64;
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgpu-norm slices"),
            });
        if layer {
            let mut op = LayerNorm::new(
                rows,
                dim,
                crate::TensorRef::new(&xb, 0, n),
                crate::TensorRef::new(&yb, 0, n),
            )
            .dtype(dt)
            .param_dtype(DType::F32)
            .mean(crate::TensorRef::new(&mb, 0, s))
            .rstd(crate::TensorRef::new(&rb, 0, s));
            op.eps = opts.eps.unwrap_or(LayerNorm::DEFAULT_EPS);
            op.weight = wb.as_ref().map(crate::TensorRef::from);
            op.bias = bb.as_ref().map(crate::TensorRef::from);
            self.norms.layer_norm(&mut encoder, &op)?;
        } else {
            let mut op = RmsNorm::new(
                rows,
                dim,
                crate::TensorRef::new(&xb, 0, n),
                crate::TensorRef::new(&yb, 0, n),
            )
            .dtype(dt)
            .param_dtype(DType::F32)
            .rrms(crate::TensorRef::new(&rb, 0, s));
            op.eps = opts.eps.unwrap_or(RmsNorm::DEFAULT_EPS);
            op.weight = wb.as_ref().map(crate::TensorRef::from);
            self.norms.rms_norm(&mut encoder, &op)?;
        }
        self.queue.submit([encoder.finish()]);
        let y_bytes = x.len() * dt.size() as usize;
        let mut out = self
            .read_async(&[
                (&yb, y_bytes.div_ceil(4)),
                (&mb, if layer { rows } else { 0 }),
                (&rb, rows),
            ])
            .await?
            .into_iter();
        let (y, mean, rstd) = (out.next(), out.next(), out.next());
        let y: Vec<u8> = y
            .unwrap_or_default()
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        Ok(Normalized {
            y: dt.decode(&y[..y_bytes]),
            mean: mean.unwrap_or_default(),
            rstd: rstd.unwrap_or_default(),
        })
    }
}
