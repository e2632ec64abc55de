//! Work that holds one worker for many runs: a [`Sequence`] (a text
//! generation's decoding loop) gets the worker's runner through [`Steps`] and
//! the worker takes no other job until it returns.
//!
//! It owns only the step-by-step access to a runner: each step is a run the
//! supervisor can cancel at the sequence's deadline, exactly like a batch. It
//! must not know what the steps compute (the handler's loop does).

use std::time::Instant;

use super::worker::WorkerSlot;
use super::{PoolShared, RunError, Runner};
use crate::types::{Error, ModelIo, Tensor};

/// A job that runs many times through one worker's runner, alone.
pub trait Sequence: Send + 'static {
    /// Runs to the end (or to an error) on the worker's thread.
    fn run(self: Box<Self>, steps: &mut Steps<'_>) -> Result<(), Error>;
}

/// One worker's runner, lent to a sequence one run at a time.
pub struct Steps<'a> {
    pub(super) runner: &'a mut dyn Runner,
    pub(super) slot: &'a WorkerSlot,
    pub(super) shared: &'a PoolShared,
    pub(super) deadline: Instant,
    /// Set when the supervisor abandoned a run that ignored cancellation:
    /// the worker must stop once the sequence returns.
    pub(super) abandoned: bool,
}

impl Steps<'_> {
    pub fn io(&self) -> &ModelIo {
        self.runner.io()
    }

    /// One run, cancelled by the supervisor if the sequence's deadline
    /// (`responseTimeout` from when it was queued) passes during it; no run
    /// starts after the deadline.
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, Error> {
        if Instant::now() >= self.deadline || self.abandoned {
            return Err(self.shared.timeout());
        }
        let canceller = self.runner.canceller().map_err(|e| self.error(e))?;
        self.slot.begin(self.deadline, canceller, Vec::new());
        let started = Instant::now();
        let outputs = self.runner.run(inputs);
        self.shared.metrics.batch(1, started.elapsed());
        self.abandoned |= self.slot.end().1;
        outputs.map_err(|e| self.error(e))
    }

    fn error(&self, error: RunError) -> Error {
        match error {
            RunError::Cancelled => self.shared.timeout(),
            other => Error::Inference(other.to_string()),
        }
    }
}
