//! A worker: one OS thread that starts one [`Runner`] and does nothing but
//! assemble batches, run them and hand each caller its rows. It knows the
//! runner only through the trait: warm-up, one cancellable run per batch.
//! The runner lives in the worker's [`WorkerSlot`], so that while the
//! thread waits for work a request's thread may borrow it for one short
//! batch (`inline`); one batch runs on it at a time, whoever runs it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Instant;

use tokio::sync::oneshot;

use super::queue::{Job, Next};
use super::sequence::{Sequence, Steps};
use super::{
    Canceller, ExitCause, PoolEvent, PoolShared, RunError, Runner, StartTimes, StartedRunner,
};
use crate::telemetry;
use crate::types::{Error, InferResponse, LoadFailure, LoadFailureKind, Tensor};

/// A runner held for one batch, by its worker or a request's thread.
pub(super) type HeldRunner<'a> = MutexGuard<'a, Option<Box<dyn Runner>>>;

/// What the supervisor can see of a worker, and how it cancels its run.
pub(super) struct WorkerSlot {
    pub id: usize,
    /// Which device this worker runs on, as an index into the model's
    /// devices; a replacement takes the lowest free index.
    pub placement: usize,
    /// Set once started; emptied when the thread stops. A request's thread
    /// that panicked inside a run leaves it poisoned: the worker then stops
    /// and is replaced.
    runner: Mutex<Option<Box<dyn Runner>>>,
    /// The runner may run on a request's thread ([`Runner::any_thread`]).
    lendable: AtomicBool,
    running: Mutex<Option<RunningBatch>>,
    /// Set by the supervisor when the worker ignored a cancellation; the
    /// thread then exits as soon as ORT returns.
    abandoned: AtomicBool,
    /// Whether this worker still counts in the pool's live counter. A lock,
    /// not a flag, because retiring decides on the pool's count and then
    /// marks the worker: a loss in between must not take it off twice.
    counted_live: Mutex<bool>,
    /// Whether this worker counts in the pool's ready counter.
    counted_ready: AtomicBool,
}

struct RunningBatch {
    /// The latest of its callers' deadlines: the run is cancelled then.
    deadline: Instant,
    canceller: Canceller,
    cancelled_at: Option<Instant>,
    callers: Vec<Caller>,
}

/// One request of a running batch, waiting for its rows. Its reply is here,
/// not on the worker's stack, so the supervisor can answer it at its
/// deadline while the run goes on (the request tasks keep no timer).
pub(super) struct Caller {
    deadline: Instant,
    /// Taken by whoever answers first: the worker, or the supervisor.
    reply: Option<oneshot::Sender<Result<InferResponse, Error>>>,
}

impl Caller {
    fn answer(&mut self, answer: Result<InferResponse, Error>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(answer);
        }
    }
}

/// What the supervisor's periodic check found for one worker.
pub(super) enum RunCheck {
    Fine,
    /// The run passed its deadline and was just asked to stop.
    Cancelled,
    /// The run was asked to stop long enough ago and is still going.
    Stuck,
}

impl WorkerSlot {
    pub fn new(id: usize, placement: usize) -> WorkerSlot {
        WorkerSlot {
            id,
            placement,
            runner: Mutex::new(None),
            lendable: AtomicBool::new(false),
            running: Mutex::new(None),
            abandoned: AtomicBool::new(false),
            counted_live: Mutex::new(true),
            counted_ready: AtomicBool::new(false),
        }
    }

    /// Answers the callers whose deadline passed with a timeout, cancels an
    /// overdue run, and abandons a run that ignores cancellation. Decided
    /// under the run lock, so a run that ends at the same moment is either
    /// abandoned before it ends or not at all, and each caller is answered
    /// once, by the supervisor or by the worker.
    pub fn check(&self, now: Instant, grace: std::time::Duration, shared: &PoolShared) -> RunCheck {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let Some(run) = running.as_mut() else {
            return RunCheck::Fine;
        };
        for caller in &mut run.callers {
            if caller.deadline <= now && caller.reply.is_some() {
                caller.answer(Err(shared.timeout()));
            }
        }
        match run.cancelled_at {
            None if now >= run.deadline => {
                run.canceller.cancel();
                run.cancelled_at = Some(now);
                RunCheck::Cancelled
            }
            Some(at) if now.duration_since(at) >= grace && !self.is_abandoned() => {
                self.abandoned.store(true, Ordering::Release);
                RunCheck::Stuck
            }
            _ => RunCheck::Fine,
        }
    }

    fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    fn install(&self, runner: Box<dyn Runner>) {
        self.lendable.store(runner.any_thread(), Ordering::Release);
        *self.runner.lock().unwrap_or_else(|e| e.into_inner()) = Some(runner);
    }

    /// The runner, for a request's thread, if it may run there and is free
    /// now: its worker is not running a batch and has not been replaced.
    pub(super) fn lend(&self) -> Option<HeldRunner<'_>> {
        if !self.lendable.load(Ordering::Acquire) || self.is_abandoned() {
            return None;
        }
        self.runner.try_lock().ok().filter(|held| held.is_some())
    }

    /// The runner, for the worker's own thread: it waits while a request's
    /// thread runs a batch on it. Why the worker must stop instead, if it
    /// must: it was replaced, or a run on a request's thread panicked.
    fn hold(&self) -> Result<HeldRunner<'_>, ExitCause> {
        let held = match self.runner.try_lock() {
            Ok(held) => held,
            Err(TryLockError::WouldBlock) => self.runner.lock().map_err(|_| ExitCause::Panicked)?,
            Err(TryLockError::Poisoned(_)) => return Err(ExitCause::Panicked),
        };
        if self.is_abandoned() || held.is_none() {
            return Err(ExitCause::AbandonedRunEnded);
        }
        Ok(held)
    }

    /// Frees the runner (an ORT session and its memory) once the worker stops.
    fn drop_runner(&self) {
        self.runner.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn mark_ready(&self, shared: &PoolShared) {
        if !self.counted_ready.swap(true, Ordering::AcqRel) {
            shared.ready_workers.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Removes this worker from the pool's counters, exactly once.
    pub fn uncount(&self, shared: &PoolShared) {
        self.uncount_ready(shared);
        if std::mem::take(&mut *self.live_mark()) {
            shared.live_workers.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether the worker is in the live count; a poisoned lock is taken as
    /// it is, since the flag is written whole.
    fn live_mark(&self) -> MutexGuard<'_, bool> {
        self.counted_live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn uncount_ready(&self, shared: &PoolShared) {
        if self.counted_ready.swap(false, Ordering::AcqRel) {
            shared.ready_workers.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Leaves the pool if more than `keep` workers are live (`minWorkers`
    /// when idle, `maxWorkers` after a retune lowered it). Decided atomically
    /// so concurrent leavers cannot overshoot; a worker already off the count
    /// (lost to the watchdog) does not leave it again. Visible to the
    /// scheduler's tests, which play that race.
    pub(super) fn retire_above(&self, shared: &PoolShared, keep: usize) -> bool {
        let mut counted = self.live_mark();
        if !*counted {
            return false;
        }
        let permitted = shared
            .live_workers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| {
                (live > keep).then(|| live - 1)
            })
            .is_ok();
        if permitted {
            // The update above already took this worker off the live count.
            *counted = false;
            drop(counted);
            self.uncount_ready(shared);
        }
        permitted
    }

    /// Marks a run started, with the callers that wait for it (none for a
    /// sequence's step, whose one caller waits for the whole sequence).
    pub(super) fn begin(&self, deadline: Instant, canceller: Canceller, callers: Vec<Caller>) {
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(RunningBatch {
            deadline,
            canceller,
            cancelled_at: None,
            callers,
        });
    }

    /// Marks the run finished: its callers (those the supervisor has not
    /// answered), and true if the worker was abandoned meanwhile.
    pub(super) fn end(&self) -> (Vec<Caller>, bool) {
        let run = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        (
            run.map(|r| r.callers).unwrap_or_default(),
            self.is_abandoned(),
        )
    }
}

/// Tells the supervisor how the thread ended, also when it panics.
struct ExitReport<'a> {
    slot: &'a Arc<WorkerSlot>,
    shared: &'a PoolShared,
    cause: ExitCause,
}

impl Drop for ExitReport<'_> {
    fn drop(&mut self) {
        let cause = if self.slot.is_abandoned() {
            ExitCause::AbandonedRunEnded
        } else {
            std::mem::replace(&mut self.cause, ExitCause::Closed)
        };
        match cause {
            // A ready worker lost: recovering before it leaves the counts.
            ExitCause::Panicked => self.shared.lose_worker(self.slot),
            _ => self.slot.uncount(self.shared),
        }
        self.slot.drop_runner();
        let _ = self.shared.events.send(PoolEvent::Exited {
            id: self.slot.id,
            cause,
        });
    }
}

/// The thread body: start and warm a runner, then serve batches.
pub(super) fn run(slot: Arc<WorkerSlot>, shared: Arc<PoolShared>) {
    let mut report = ExitReport {
        slot: &slot,
        shared: &shared,
        cause: ExitCause::Panicked,
    };
    // A retune while this worker starts applies to it too.
    let mut seen_retunes = shared.queue.retunes();
    let (StartedRunner { runner, device }, times) = match start_runner(&shared, slot.placement) {
        Ok(started) => started,
        Err(reason) => {
            report.cause = ExitCause::StartFailed(reason);
            return;
        }
    };
    shared.io.get_or_init(|| runner.io().clone());
    slot.install(runner);
    slot.mark_ready(&shared);
    let _ = shared.events.send(PoolEvent::Ready {
        id: slot.id,
        device,
        times,
    });
    report.cause = loop {
        match shared.queue.next_batch(&mut seen_retunes) {
            Next::Batch(jobs) => {
                let held = match slot.hold() {
                    Ok(held) => held,
                    Err(cause) => {
                        shared.queue.requeue(jobs);
                        break cause;
                    }
                };
                if run_batch(held, jobs, &slot, &shared) {
                    break ExitCause::AbandonedRunEnded;
                }
                let max = shared.settings().max_workers;
                if slot.retire_above(&shared, max) {
                    break ExitCause::Retired;
                }
            }
            Next::Idle if slot.is_abandoned() => break ExitCause::AbandonedRunEnded,
            Next::Idle if slot.retire_above(&shared, shared.settings().min_workers) => {
                break ExitCause::Retired;
            }
            Next::Idle => {}
            Next::Closed => break ExitCause::Closed,
        }
    };
}

fn start_runner(
    shared: &PoolShared,
    placement: usize,
) -> Result<(StartedRunner, StartTimes), LoadFailure> {
    let began = Instant::now();
    let mut started = (shared.factory)(placement)?;
    let mut times = StartTimes {
        start: began.elapsed(),
        warmup: None,
    };
    if shared.settings().warmup {
        let began = Instant::now();
        let inputs = started.runner.warmup_inputs();
        started.runner.run(&inputs).map_err(|e| {
            LoadFailure::new(
                LoadFailureKind::WarmupFailed,
                format!("the warm-up run at the declared input shapes failed: {e}"),
            )
        })?;
        times.warmup = Some(began.elapsed());
    }
    Ok((started, times))
}

/// Runs one batch and answers its callers; returns true if the worker was
/// abandoned during the run and must stop. The runner is let go before the
/// callers are answered, so that a caller's next request finds it free.
pub(super) fn run_batch(
    mut held: HeldRunner<'_>,
    mut jobs: Vec<Job>,
    slot: &WorkerSlot,
    shared: &PoolShared,
) -> bool {
    let runner = held.as_deref_mut().expect("a held runner is set");
    if let Some(sequence) = jobs[0].sequence.take() {
        let job = jobs.pop().expect("a sequence is batched alone");
        return run_sequence(runner, job, sequence, slot, shared);
    }
    let deadline = jobs
        .iter()
        .map(|j| j.deadline)
        .max()
        .expect("a batch is never empty");
    let started = Instant::now();
    let mut rows = Vec::with_capacity(jobs.len());
    let mut callers = Vec::with_capacity(jobs.len());
    let mut requests = Vec::with_capacity(jobs.len());
    // Stays unallocated when tracing is off.
    let mut traces = Vec::new();
    for job in jobs {
        shared.metrics.queue_wait(started - job.queued_at);
        rows.push(job.rows);
        callers.push(Caller {
            deadline: job.deadline,
            reply: Some(job.reply),
        });
        requests.push(job.request);
        if job.trace.is_traced() {
            traces.push(job.trace);
        }
    }
    let total_rows = rows.iter().sum::<usize>();
    let span = telemetry::batch_span(&shared.model, total_rows, traces);
    let _in_span = span.enter();
    tracing::debug!(model = %shared.model, rows = total_rows, requests = rows.len(), "running a batch");
    let _busy = BusyGuard::enter(shared);
    let mut abandoned = false;
    let outcome = match runner.canceller() {
        Ok(canceller) => {
            let inputs = assemble(requests);
            let elements = inputs.iter().map(|t| t.data.len()).sum();
            slot.begin(deadline, canceller, callers);
            // Timed from the batch's start: assembling and splitting the rows are part of it.
            let result = runner.run_requests(&inputs, &rows);
            let took = started.elapsed();
            shared.metrics.batch(total_rows, took);
            shared.short_runs.record(elements, took);
            (callers, abandoned) = slot.end();
            drop(held);
            result
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok(per_request) => {
            for (caller, outputs) in callers.iter_mut().zip(per_request) {
                caller.answer(Ok(InferResponse { outputs }));
            }
        }
        Err(e) => {
            let error = match e {
                RunError::Cancelled => shared.timeout(),
                e => Error::Inference(e.to_string()),
            };
            for caller in &mut callers {
                caller.answer(Err(error.clone()));
            }
        }
    }
    abandoned
}

/// Lends the runner to a sequence until it ends and answers its caller;
/// returns true if the worker was abandoned during one of its runs.
fn run_sequence(
    runner: &mut dyn Runner,
    job: Job,
    sequence: Box<dyn Sequence>,
    slot: &WorkerSlot,
    shared: &PoolShared,
) -> bool {
    shared.metrics.queue_wait(job.queued_at.elapsed());
    let _busy = BusyGuard::enter(shared);
    let mut steps = Steps {
        runner,
        slot,
        shared,
        deadline: job.deadline,
        abandoned: false,
    };
    let outcome = sequence.run(&mut steps);
    let _ = job.reply.send(outcome.map(|()| InferResponse {
        outputs: Vec::new(),
    }));
    steps.abandoned
}

/// Counts the worker as busy for the length of a batch, also when it panics.
struct BusyGuard<'a>(&'a PoolShared);

impl<'a> BusyGuard<'a> {
    fn enter(shared: &'a PoolShared) -> BusyGuard<'a> {
        shared.busy_workers.fetch_add(1, Ordering::AcqRel);
        BusyGuard(shared)
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.busy_workers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One tensor per model input: a lone request's own tensors, or all the
/// requests' rows stacked with one copy.
fn assemble(mut requests: Vec<crate::types::InferRequest>) -> Vec<Tensor> {
    if requests.len() == 1 {
        return requests.pop().expect("one request").inputs;
    }
    (0..requests[0].inputs.len())
        .map(|i| {
            let parts: Vec<&Tensor> = requests.iter().map(|r| &r.inputs[i]).collect();
            Tensor::concat_rows(&parts)
        })
        .collect()
}
