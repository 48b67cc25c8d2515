//! Timing recorded GPU work, for the benchmarks and the command-line tool.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

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
}

impl Timer {
    /// GPU timestamps where the device has `TIMESTAMP_QUERY_INSIDE_ENCODERS`, else wall clock.
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Self {
        let wanted =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        let queries = device.features().contains(wanted).then(|| {
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
        }
    }

    pub fn clock(&self) -> Clock {
        if self.queries.is_some() {
            Clock::GpuTimestamps
        } else {
            Clock::WallClock
        }
    }

    /// Records `record` `iters` times into one encoder, submits it, waits, and returns the
    /// total time of the `iters` runs.
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
        if let Some((set, _, _)) = &self.queries {
            encoder.write_timestamp(set, 0);
        }
        for _ in 0..iters {
            record(&mut encoder)?;
        }
        if let Some((set, resolve, read)) = &self.queries {
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
        let Some((_, _, read)) = &self.queries else {
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
