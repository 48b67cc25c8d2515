//! Timing recorded GPU work, for the benchmarks, the command-line tool and the browser page.

use std::time::Duration;
#[cfg(not(target_arch = "wasm32"))]
use std::time::Instant;
// std's Instant panics in the browser.
#[cfg(target_arch = "wasm32")]
use web_time::Instant;

use crate::error::{Error, Result};
use crate::norms::Norms;
use crate::op::Op;

/// Where a [`Timer`]'s figures come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// Timestamp queries written into the encoder around the recorded work: GPU time only.
    GpuTimestamps,
    /// Wall clock from submit to the end of `device.poll`: adds submission and wake-up latency.
    WallClock,
}

/// Times work recorded into a command encoder.
pub struct Timer {
    device: wgpu::Device,
    queue: wgpu::Queue,
    queries: Option<(wgpu::QuerySet, wgpu::Buffer, wgpu::Buffer)>,
    /// The queries may be written between passes (else only at a pass's start and end: all
    /// WebGPU allows).
    inside_encoders: bool,
}

impl Timer {
    /// GPU timestamps where the device has `TIMESTAMP_QUERY` ([`Timer::time`] also needs
    /// `TIMESTAMP_QUERY_INSIDE_ENCODERS`), else wall clock.
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Self {
        let features = device.features();
        let queries = features.contains(wgpu::Features::TIMESTAMP_QUERY).then(|| {
            let set = device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("wgpu-norm timer"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-norm timer resolve"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let read = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-norm timer read"),
                size: 16,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            (set, resolve, read)
        });
        Timer {
            device: device.clone(),
            queue: queue.clone(),
            queries,
            inside_encoders: features.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS),
        }
    }

    /// The clock of [`Timer::time`].
    pub fn clock(&self) -> Clock {
        if self.queries.is_some() && self.inside_encoders {
            Clock::GpuTimestamps
        } else {
            Clock::WallClock
        }
    }

    /// The clock of [`Timer::time_op_async`].
    pub fn op_clock(&self) -> Clock {
        if self.queries.is_some() {
            Clock::GpuTimestamps
        } else {
            Clock::WallClock
        }
    }

    /// Records `record` `iters` times into one encoder, submits it, waits, and returns the
    /// total time of the `iters` runs (native only: it blocks).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn time(
        &self,
        iters: u32,
        mut record: impl FnMut(&mut wgpu::CommandEncoder) -> Result<()>,
    ) -> Result<Duration> {
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgpu-norm timed"),
            });
        let queries = self.queries.as_ref().filter(|_| self.inside_encoders);
        if let Some((set, _, _)) = queries {
            encoder.write_timestamp(set, 0);
        }
        for _ in 0..iters {
            record(&mut encoder)?;
        }
        if let Some((set, resolve, read)) = queries {
            encoder.write_timestamp(set, 1);
            encoder.resolve_query_set(set, 0..2, resolve, 0);
            encoder.copy_buffer_to_buffer(resolve, 0, read, 0, 16);
        }
        let start = Instant::now();
        self.queue.submit([encoder.finish()]);
        let wait = |device: &wgpu::Device| {
            device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| Error::Readback(e.to_string()))
        };
        let Some((_, _, read)) = queries else {
            wait(&self.device)?;
            return Ok(start.elapsed());
        };
        // Mapping after the submit: the callback fires in the poll once the GPU is done.
        let (tx, rx) = std::sync::mpsc::channel();
        read.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        wait(&self.device)?;
        rx.recv()
            .map_err(|e| Error::Readback(e.to_string()))?
            .map_err(|e| Error::Readback(e.to_string()))?;
        self.elapsed(read)
    }

    /// Times `iters` runs of `op`, prepared once and recorded into one compute pass, awaiting
    /// the result instead of blocking: what works in a browser (and natively). GPU timestamps
    /// at the pass's start and end where the device has `TIMESTAMP_QUERY` (WebGPU grants no
    /// more), else wall clock from submit until the queue reports the work done.
    pub async fn time_op_async(&self, norms: &Norms, op: &impl Op, iters: u32) -> Result<Duration> {
        // Compile errors are only known later in a browser: await them before preparing.
        norms.warm_async(op).await?;
        let prepared = norms.prepare(op)?;
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgpu-norm timed"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("wgpu-norm timed"),
                timestamp_writes: self.queries.as_ref().map(|(set, _, _)| {
                    wgpu::ComputePassTimestampWrites {
                        query_set: set,
                        beginning_of_pass_write_index: Some(0),
                        end_of_pass_write_index: Some(1),
                    }
                }),
            });
            for _ in 0..iters {
                prepared.record_in(&mut pass);
            }
        }
        if let Some((set, resolve, read)) = &self.queries {
            encoder.resolve_query_set(set, 0..2, resolve, 0);
            encoder.copy_buffer_to_buffer(resolve, 0, read, 0, 16);
        }
        let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
        let start = Instant::now();
        self.queue.submit([encoder.finish()]);
        match &self.queries {
            Some((_, _, read)) => read.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r.map_err(|e| e.to_string()));
            }),
            None => self.queue.on_submitted_work_done(move || {
                let _ = tx.send(Ok(()));
            }),
        }
        // Native: the poll waits and runs the callback. Browser: it returns at once and the
        // browser runs the callback when the GPU is done, which the await waits for.
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Readback(e.to_string()))?;
        rx.receive()
            .await
            .ok_or_else(|| Error::Readback("callback dropped".into()))?
            .map_err(Error::Readback)?;
        let Some((_, _, read)) = &self.queries else {
            return Ok(start.elapsed());
        };
        self.elapsed(read)
    }

    /// The time between the two timestamps in `read`, once it is mapped (unmaps it).
    fn elapsed(&self, read: &wgpu::Buffer) -> Result<Duration> {
        let ticks = {
            let data = read
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::Readback(e.to_string()))?;
            let t: &[u64] = bytemuck::cast_slice(&data);
            t[1].saturating_sub(t[0])
        };
        read.unmap();
        let ns = ticks as f64 * f64::from(self.queue.get_timestamp_period());
        Ok(Duration::from_nanos(ns as u64))
    }
}
