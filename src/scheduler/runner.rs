//! The seam between the scheduler and whatever computes a batch: the
//! [`Runner`] trait, the handle that cancels one run, and the factory a pool
//! calls to start each worker's runner.
//!
//! It owns only these types. It must not know about ONNX Runtime (the
//! registry adapts the engine's session to [`Runner`]) nor about queues and
//! workers (the rest of the scheduler drives a runner through this trait).

use std::sync::Arc;
use std::time::Duration;

use crate::types::{LoadFailure, ModelIo, Tensor};

/// What a worker drives: inputs in, outputs out, one batch at a time, on the
/// worker's own thread, or lent for one short batch to the thread of the
/// request that completed it when [`any_thread`](Runner::any_thread) says so.
pub trait Runner: Send + 'static {
    /// The model's inputs and outputs, in graph order.
    fn io(&self) -> &ModelIo;

    /// Whether a run may happen on a thread other than the worker's: a CPU
    /// session's may; a GPU session's stays on the thread that chose its
    /// device.
    fn any_thread(&self) -> bool {
        false
    }

    /// The inputs of the warm-up run: by default every dynamic axis 1; a
    /// runner whose model needs consistent inputs (a decoder's first step)
    /// gives those.
    fn warmup_inputs(&self) -> Vec<Tensor> {
        self.io().warmup_inputs()
    }

    /// Readies the next [`run`](Runner::run) and returns the handle that
    /// cancels it. A handle stops only the run it was made for, so a late
    /// cancel cannot reach the batch after it.
    fn canceller(&mut self) -> Result<Canceller, RunError>;

    /// Runs one batch: one tensor per model input, rows on axis 0; returns
    /// one tensor per model output, in graph order. A run not readied by
    /// [`canceller`](Runner::canceller) (the warm-up) cannot be cancelled.
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RunError>;

    /// Runs one batch made of requests of `rows[i]` rows each, stacked in
    /// order on axis 0, and returns each request's outputs; a lone request
    /// gets them whole. This default splits [`run`](Runner::run)'s outputs,
    /// a second copy; a runner that holds its outputs in buffers of its own
    /// copies each request's rows straight out of them instead.
    fn run_requests(
        &mut self,
        inputs: &[Tensor],
        rows: &[usize],
    ) -> Result<Vec<Vec<Tensor>>, RunError> {
        let outputs = self.run(inputs)?;
        split_outputs(outputs, rows, self.io())
    }
}

/// Hands each request its rows of every output.
fn split_outputs(
    outputs: Vec<Tensor>,
    rows: &[usize],
    io: &ModelIo,
) -> Result<Vec<Vec<Tensor>>, RunError> {
    if rows.len() == 1 {
        return Ok(vec![outputs]);
    }
    let total: usize = rows.iter().sum();
    if let Some(i) = outputs.iter().position(|t| t.shape.first() != Some(&total)) {
        return Err(RunError::Unsplittable {
            output: io.outputs[i].name.clone(),
            shape: outputs[i].shape.clone(),
            rows: total,
        });
    }
    let mut per_request: Vec<Vec<Tensor>> = rows
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for output in outputs {
        for (piece, outputs) in output.split_rows(rows).into_iter().zip(&mut per_request) {
            outputs.push(piece);
        }
    }
    Ok(per_request)
}

/// Why a run produced no outputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RunError {
    #[error("the run was cancelled because it passed its deadline")]
    Cancelled,
    #[error("{0}")]
    Failed(String),
    /// Several requests shared the batch, but an output's first axis is not
    /// the batch's rows, so there is no telling whose rows are whose.
    #[error(
        "output '{output}' has shape {shape:?} for a batch of {rows} rows, so it cannot be split per request; \
         set batchSize: 1 for this model"
    )]
    Unsplittable {
        output: String,
        shape: Vec<usize>,
        rows: usize,
    },
}

/// Stops one run from another thread (the supervisor's, at the deadline).
/// The runner decides how: a flag its kernels check, a terminate call.
pub struct Canceller(Box<dyn Fn() + Send>);

impl Canceller {
    pub fn new(cancel: impl Fn() + Send + 'static) -> Canceller {
        Canceller(Box::new(cancel))
    }

    pub fn cancel(&self) {
        (self.0)()
    }
}

/// Where a runner ended up, as its factory reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerDevice {
    /// For logs and describe output, e.g. `cpu` or `cuda:0`.
    pub name: String,
    /// Why it is not on the device that was asked for, when it is not.
    pub fallback_reason: Option<String>,
}

/// How long a worker took to become ready: its runner's start (for ONNX
/// Runtime, the session build) and the warm-up run, when there is one.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StartTimes {
    pub start: Duration,
    pub warmup: Option<Duration>,
}

impl StartTimes {
    /// The slower of the two, part by part: a pool is ready when its slowest
    /// worker is.
    pub fn slowest(self, other: StartTimes) -> StartTimes {
        StartTimes {
            start: self.start.max(other.start),
            warmup: self.warmup.max(other.warmup),
        }
    }
}

/// A freshly started runner and where it runs.
pub struct StartedRunner {
    pub runner: Box<dyn Runner>,
    pub device: RunnerDevice,
}

/// Starts the runner of the worker at the given placement (an index the
/// factory uses to spread workers over devices); the error says why not,
/// and of what kind.
pub type RunnerFactory = Arc<dyn Fn(usize) -> Result<StartedRunner, LoadFailure> + Send + Sync>;
