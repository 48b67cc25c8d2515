//! The convenience layer for data in slices: upload, run, read back.

use crate::DType;
use crate::adapter;
use crate::error::{Error, Result};
use crate::layer_norm::LayerNorm;
use crate::layer_norm_backward::LayerNormBackward;
use crate::norms::{Norms, NormsOptions};
use crate::rms_norm::RmsNorm;
use crate::rms_norm_backward::RmsNormBackward;

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

/// Optional operands of the slice calls ([`Gpu::layer_norm`], [`Gpu::rms_norm`] and their
/// backward passes).
#[derive(Clone, Copy, Debug, Default)]
pub struct SliceOptions<'a> {
    /// `None`: the op's default ([`LayerNorm::DEFAULT_EPS`], [`RmsNorm::DEFAULT_EPS`]). The
    /// backward calls recompute the statistics with it, as the forward computed them.
    pub eps: Option<f32>,
    pub weight: Option<&'a [f32]>,
    /// LayerNorm only.
    pub bias: Option<&'a [f32]>,
    /// How x and y (and dy, dx) are stored on the GPU: with f16/bf16 the values of `x` are
    /// rounded to it, and results come back as the stored 16-bit values (weight and bias
    /// stay f32: the mixed mode).
    pub dtype: DType,
}

/// What [`Gpu::layer_norm`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNormOutput {
    pub y: Vec<f32>,
    /// Each row's mean.
    pub mean: Vec<f32>,
    /// Each row's `1 / sqrt(var + eps)`.
    pub rstd: Vec<f32>,
}

/// What [`Gpu::rms_norm`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct RmsNormOutput {
    pub y: Vec<f32>,
    /// Each row's `1 / sqrt(mean(x^2) + eps)`.
    pub rrms: Vec<f32>,
}

/// What the backward slice calls return.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    pub dx: Vec<f32>,
    /// `sum over rows of dy * xhat` (as if the weight were 1 when there is none).
    pub dweight: Vec<f32>,
    /// LayerNorm: `sum over rows of dy`. Empty for RMSNorm.
    pub dbias: Vec<f32>,
}

impl Gpu {
    /// Picks an adapter with [`adapter::pick_adapter`] and opens a device on it (native only:
    /// in the browser, [`Gpu::new_async`]).
    #[cfg(not(target_arch = "wasm32"))]
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
        self.upload_bytes(label, bytemuck::cast_slice(data))
    }

    /// A storage buffer holding `data` stored as `dtype` (padded to whole words).
    pub fn upload_as(&self, label: &str, data: &[f32], dtype: DType) -> wgpu::Buffer {
        self.upload_bytes(label, &dtype.encode(data))
    }

    /// Through the queue rather than `create_buffer_init`, which panics where its mapping fails
    /// (a lost device); wgpu rejects zero-sized bindings, so an empty tensor gets 4 bytes.
    fn upload_bytes(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        let size = (bytes.len() as u64).next_multiple_of(4).max(4);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut padded = bytes.to_vec();
        padded.resize(size as usize, 0);
        self.queue.write_buffer(&buffer, 0, &padded);
        buffer
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
    #[cfg(not(target_arch = "wasm32"))]
    pub fn layer_norm(
        &self,
        x: &[f32],
        dim: usize,
        opts: &SliceOptions,
    ) -> Result<LayerNormOutput> {
        pollster::block_on(self.layer_norm_async(x, dim, opts))
    }

    pub async fn layer_norm_async(
        &self,
        x: &[f32],
        dim: usize,
        opts: &SliceOptions<'_>,
    ) -> Result<LayerNormOutput> {
        let [y, mean, rstd] = self.run(Pass::Forward, true, x, None, dim, opts).await?;
        Ok(LayerNormOutput { y, mean, rstd })
    }

    /// RMSNorm of `x` (rows of `dim`), with each row's rrms.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn rms_norm(&self, x: &[f32], dim: usize, opts: &SliceOptions) -> Result<RmsNormOutput> {
        pollster::block_on(self.rms_norm_async(x, dim, opts))
    }

    pub async fn rms_norm_async(
        &self,
        x: &[f32],
        dim: usize,
        opts: &SliceOptions<'_>,
    ) -> Result<RmsNormOutput> {
        let [y, _, rrms] = self.run(Pass::Forward, false, x, None, dim, opts).await?;
        Ok(RmsNormOutput { y, rrms })
    }

    /// The gradients of [`Gpu::layer_norm`] with the same `x` and options, for the output
    /// gradient `dy` (the statistics are recomputed with `opts.eps`).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn layer_norm_backward(
        &self,
        x: &[f32],
        dy: &[f32],
        dim: usize,
        opts: &SliceOptions,
    ) -> Result<Gradients> {
        pollster::block_on(self.layer_norm_backward_async(x, dy, dim, opts))
    }

    pub async fn layer_norm_backward_async(
        &self,
        x: &[f32],
        dy: &[f32],
        dim: usize,
        opts: &SliceOptions<'_>,
    ) -> Result<Gradients> {
        let [dx, dweight, dbias] = self
            .run(Pass::Backward, true, x, Some(dy), dim, opts)
            .await?;
        Ok(Gradients { dx, dweight, dbias })
    }

    /// The gradients of [`Gpu::rms_norm`] with the same `x` and options, for the output
    /// gradient `dy` (rrms is recomputed with `opts.eps`).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn rms_norm_backward(
        &self,
        x: &[f32],
        dy: &[f32],
        dim: usize,
        opts: &SliceOptions,
    ) -> Result<Gradients> {
        pollster::block_on(self.rms_norm_backward_async(x, dy, dim, opts))
    }

    pub async fn rms_norm_backward_async(
        &self,
        x: &[f32],
        dy: &[f32],
        dim: usize,
        opts: &SliceOptions<'_>,
    ) -> Result<Gradients> {
        let [dx, dweight, _] = self
            .run(Pass::Backward, false, x, Some(dy), dim, opts)
            .await?;
        Ok(Gradients {
            dx,
            dweight,
            dbias: Vec::new(),
        })
    }

    /// Uploads, records one op, reads back three results: y, mean, rstd/rrms (forward) or
    /// dx, dweight, dbias (backward); those the op does not make are empty.
    async fn run(
        &self,
        pass: Pass,
        layer: bool,
        x: &[f32],
        dy: Option<&[f32]>,
        dim: usize,
        opts: &SliceOptions<'_>,
    ) -> Result<[Vec<f32>; 3]> {
        // A loss is reported through the device-lost callback, which wgpu calls when polled.
        let _ = self.device.poll(wgpu::PollType::Poll);
        if let Some(why) = self.norms.device_lost() {
            return Err(Error::DeviceLost(why));
        }
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
        if let Some(dy) = dy.filter(|dy| dy.len() != x.len()) {
            return Err(Error::SliceLength {
                len: dy.len(),
                rows: x.len() / dim,
                dim,
                what: "dy must have the shape of x",
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
        let n = x.len() as u64 * dt.size();
        // Whole words for 16-bit tensors (`storage` counts f32).
        let words = (x.len() * dt.size() as usize).div_ceil(4);
        let t = |b| crate::TensorRef::new(b, 0, n);
        let xb = self.upload_as("wgpu-norm x", x, dt);
        let wb = opts.weight.map(|w| self.upload("wgpu-norm weight", w));
        let bb = opts.bias.map(|b| self.upload("wgpu-norm bias", b));
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgpu-norm slices"),
            });
        // Three outputs and how many f32 words each holds.
        let (outputs, lens) = match pass {
            Pass::Forward => {
                let yb = self.storage("wgpu-norm y", words);
                let mb = self.storage("wgpu-norm mean", rows);
                let rb = self.storage("wgpu-norm rstd", rows);
                let s = (rows * 4) as u64;
                let (stat_m, stat_r) = (
                    crate::TensorRef::new(&mb, 0, s),
                    crate::TensorRef::new(&rb, 0, s),
                );
                if layer {
                    let mut op = LayerNorm::new(rows, dim, t(&xb), t(&yb))
                        .dtype(dt)
                        .param_dtype(DType::F32)
                        .eps(opts.eps.unwrap_or(LayerNorm::DEFAULT_EPS))
                        .mean(stat_m)
                        .rstd(stat_r);
                    op.weight = wb.as_ref().map(crate::TensorRef::from);
                    op.bias = bb.as_ref().map(crate::TensorRef::from);
                    // Compiled and awaited first: in a browser a pipeline's errors are only
                    // known later, and recording alone would drop them.
                    self.norms.warm_async(&op).await?;
                    self.norms.record(&mut encoder, &op)?;
                } else {
                    let mut op = RmsNorm::new(rows, dim, t(&xb), t(&yb))
                        .dtype(dt)
                        .param_dtype(DType::F32)
                        .eps(opts.eps.unwrap_or(RmsNorm::DEFAULT_EPS))
                        .rrms(stat_r);
                    op.weight = wb.as_ref().map(crate::TensorRef::from);
                    // Compiled and awaited first: in a browser a pipeline's errors are only
                    // known later, and recording alone would drop them.
                    self.norms.warm_async(&op).await?;
                    self.norms.record(&mut encoder, &op)?;
                }
                ([yb, mb, rb], [words, if layer { rows } else { 0 }, rows])
            }
            Pass::Backward => {
                let dyb = self.upload_as("wgpu-norm dy", dy.unwrap_or_default(), dt);
                let dxb = self.storage("wgpu-norm dx", words);
                let dwb = self.storage("wgpu-norm dweight", dim);
                let dbb = self.storage("wgpu-norm dbias", dim);
                if layer {
                    let mut op = LayerNormBackward::new(rows, dim, t(&xb), t(&dyb), t(&dxb))
                        .dtype(dt)
                        .param_dtype(DType::F32)
                        .eps(opts.eps.unwrap_or(LayerNorm::DEFAULT_EPS))
                        .grad_weight(&dwb)
                        .grad_bias(&dbb);
                    op.weight = wb.as_ref().map(crate::TensorRef::from);
                    // Compiled and awaited first: in a browser a pipeline's errors are only
                    // known later, and recording alone would drop them.
                    self.norms.warm_async(&op).await?;
                    self.norms.record(&mut encoder, &op)?;
                } else {
                    let mut op = RmsNormBackward::new(rows, dim, t(&xb), t(&dyb), t(&dxb))
                        .dtype(dt)
                        .param_dtype(DType::F32)
                        .eps(opts.eps.unwrap_or(RmsNorm::DEFAULT_EPS))
                        .grad_weight(&dwb);
                    op.weight = wb.as_ref().map(crate::TensorRef::from);
                    // Compiled and awaited first: in a browser a pipeline's errors are only
                    // known later, and recording alone would drop them.
                    self.norms.warm_async(&op).await?;
                    self.norms.record(&mut encoder, &op)?;
                }
                ([dxb, dwb, dbb], [words, dim, if layer { dim } else { 0 }])
            }
        };
        self.queue.submit([encoder.finish()]);
        let [a, b, c] = &outputs;
        let mut out = self
            .read_async(&[(a, lens[0]), (b, lens[1]), (c, lens[2])])
            .await?
            .into_iter();
        let mut next = || out.next().unwrap_or_default();
        // The first result is in the storage type.
        let first: Vec<u8> = next().iter().flat_map(|w| w.to_le_bytes()).collect();
        Ok([
            dt.decode(&first[..x.len() * dt.size() as usize]),
            next(),
            next(),
        ])
    }
}

/// Which pass a slice call runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Forward,
    Backward,
}
