//! Short batches run on the thread of the request that completes them.
//!
//! Handing a batch to a worker thread and its answers back costs two context
//! switches a batch; for a model whose run takes a few microseconds they
//! cost more than the run. So when a request makes a batch ready (full, or
//! urgent), and batches of that size recently ran within
//! `ortserve.inlineRunMicros`, the request's own thread borrows an idle
//! worker's runner and runs the batch itself, as that worker would: the same
//! session (no second copy of the model), registered in the worker's slot so
//! the watchdog still answers callers and cancels the run at its deadline.
//! A batch that is larger than any recent short run, a model whose last run
//! was slow, a GPU session or a busy worker leaves the batch to a worker
//! thread, as before.
//!
//! It owns [`ShortRuns`], the evidence that batches are short. It must not
//! reach into the queue's state (it takes batches through `BatchQueue`'s
//! API) nor decide anything about a worker's life (the supervisor does).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::PoolShared;
use super::queue::Job;
use super::worker;

/// The largest batch, in input elements, that ran within the limit since the
/// last run that did not; zero when there is no such evidence (no run yet,
/// the last run was slow, or the limit is zero).
pub(super) struct ShortRuns {
    limit_micros: AtomicU64,
    elements: AtomicUsize,
}

impl ShortRuns {
    pub fn new(limit: Duration) -> ShortRuns {
        let runs = ShortRuns {
            limit_micros: AtomicU64::new(0),
            elements: AtomicUsize::new(0),
        };
        runs.set_limit(limit);
        runs
    }

    /// A new limit forgets the evidence gathered under the old one.
    pub fn set_limit(&self, limit: Duration) {
        let micros = u64::try_from(limit.as_micros()).unwrap_or(u64::MAX);
        self.limit_micros.store(micros, Ordering::Release);
        self.elements.store(0, Ordering::Release);
    }

    /// Notes how long a batch of `elements` input elements took to run.
    pub fn record(&self, elements: usize, took: Duration) {
        let limit = Duration::from_micros(self.limit_micros.load(Ordering::Acquire));
        if took <= limit && !limit.is_zero() {
            self.elements.fetch_max(elements, Ordering::AcqRel);
        } else if self.elements.load(Ordering::Acquire) != 0 {
            self.elements.store(0, Ordering::Release);
        }
    }

    /// Whether a request's thread may try to run a batch at all.
    pub fn any(&self) -> bool {
        self.elements.load(Ordering::Acquire) != 0
    }

    fn allow(&self, elements: usize) -> bool {
        elements <= self.elements.load(Ordering::Acquire)
    }
}

/// Runs the batch a push found ready on this thread, with an idle worker's
/// runner, or hands a batch larger than recent short runs back to the queue
/// and a worker. False if no runner could be lent (all busy, or not
/// lendable) or the batch was no longer there to take: a worker must then
/// be woken for it.
pub(super) fn run_here(shared: &PoolShared) -> bool {
    let Some(slot) = idle_slot(shared) else {
        return false;
    };
    let Some(held) = slot.lend() else {
        return false;
    };
    let Some(jobs) = shared.queue.take_ready() else {
        // A worker took the jobs first, or a sequence or a gathering worker
        // is ahead of them: a wake-up is spurious at worst.
        return false;
    };
    if !shared.short_runs.allow(batch_elements(&jobs)) {
        drop(held);
        shared.queue.requeue(jobs);
        return true;
    }
    let _ended = EndOnPanic(&slot);
    // A replaced worker's thread notices by itself and stops (see `worker`).
    let _abandoned = worker::run_batch(held, jobs, &slot, shared);
    true
}

/// Lets the callers of a run that panicked on this thread go at once (they
/// are told the worker stopped) instead of at their deadline; the poisoned
/// runner makes its worker stop and be replaced at its next batch.
struct EndOnPanic<'a>(&'a worker::WorkerSlot);

impl Drop for EndOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            drop(self.0.end());
        }
    }
}

/// A worker whose runner may be lent and is free now; cloned out of the
/// list so the supervisor can change the list during the run.
fn idle_slot(shared: &PoolShared) -> Option<Arc<worker::WorkerSlot>> {
    let slots = shared.slots.read().unwrap_or_else(|e| e.into_inner());
    slots.iter().find(|slot| slot.lend().is_some()).cloned()
}

fn batch_elements(jobs: &[Job]) -> usize {
    jobs.iter()
        .flat_map(|job| &job.request.inputs)
        .map(|t| t.data.len())
        .sum()
}
