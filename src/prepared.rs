//! [`Prepared`]: an op whose validation, pipelines, parameters and bind groups are done once.

use crate::norms::begin_pass;

/// One dispatch, ready to record.
#[derive(Clone, Debug)]
pub(crate) struct PreparedStep {
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group: wgpu::BindGroup,
    pub grid: [u32; 2],
}

impl PreparedStep {
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.grid[0], self.grid[1], 1);
    }
}

/// An op prepared by [`crate::Norms::prepare`] for callers that run the same shapes on the
/// same buffers every step (a decode loop, a training step): everything that can be done
/// once is, and recording is what a hand-written wgpu dispatch with a reused bind group
/// costs, for each of its dispatches (one for a forward norm; a backward with dweight has
/// two). It holds its buffers alive; the data in them may change between recordings, the
/// buffers and shapes may not (prepare again for new ones). `Send + Sync`, cheap to clone.
#[derive(Clone, Debug)]
pub struct Prepared {
    name: &'static str,
    steps: Vec<PreparedStep>,
}

impl Prepared {
    pub(crate) fn new(name: &'static str, steps: Vec<PreparedStep>) -> Self {
        Prepared { name, steps }
    }

    /// Records the op into `encoder`, in a compute pass of its own. Nothing is submitted.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        if self.steps.is_empty() {
            return;
        }
        let mut pass = begin_pass(encoder, self.name);
        self.record_in(&mut pass);
    }

    /// Records the op into the caller's compute pass (many ops in one pass cost one pass).
    pub fn record_in(&self, pass: &mut wgpu::ComputePass<'_>) {
        for step in &self.steps {
            step.record(pass);
        }
    }

    /// Dispatches recorded each time (0 for an op with nothing to do).
    pub fn dispatches(&self) -> usize {
        self.steps.len()
    }
}
