//! The supervisor: the one task that owns a pool's worker set. It starts
//! `minWorkers` and replaces failed workers with backoff, adds workers under
//! queue pressure, applies retunes, replaces a worker whose cancelled run
//! does not stop, and describes the workers when asked. It learns
//! everything from [`PoolEvent`]s; nothing else changes the set, which it
//! publishes to `PoolShared::slots`. After shutdown it keeps going until the
//! last worker has stopped, starting none.
//!
//! Beside it, the pool's watchdog thread checks the queue and the running
//! batches periodically: it answers callers past their deadline (queued or
//! running), cancels runs past their deadline and reports a run that
//! ignores its cancellation. It is an OS thread, not a task, because a run
//! on a request's thread (`inline`) holds up that async runtime thread, and
//! on a one-thread runtime a task could not cancel it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use super::worker::{self, RunCheck, WorkerSlot};
use super::{ExitCause, PoolEvent, PoolShared, WorkerReport, worker_start};
use crate::types::ModelId;

/// How often the supervisor looks for callers and runs past their deadline:
/// also how late, at most, a caller hears of its `responseTimeout`.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(100);
/// How long a cancelled run may take to stop before its worker is replaced.
const CANCEL_GRACE: Duration = Duration::from_secs(1);
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);

/// The one owner of the worker set: starts, replaces, grows and watches
/// workers, driven by [`PoolEvent`]s and a periodic check of running batches.
pub(super) struct Supervisor {
    shared: Arc<PoolShared>,
    slots: HashMap<usize, Arc<WorkerSlot>>,
    /// What the management API shows of each worker, by id.
    reports: BTreeMap<usize, WorkerReport>,
    failures_in_a_row: u32,
    /// Shut down: no worker is started or replaced any more.
    stopping: bool,
}

impl Supervisor {
    pub(super) fn new(shared: Arc<PoolShared>) -> Supervisor {
        Supervisor {
            shared,
            slots: HashMap::new(),
            reports: BTreeMap::new(),
            failures_in_a_row: 0,
            stopping: false,
        }
    }

    pub(super) fn mark_ready(&mut self, id: usize) {
        if let Some(report) = self.reports.get_mut(&id) {
            report.ready = true;
        }
    }

    pub(super) async fn run(mut self, mut events: mpsc::UnboundedReceiver<PoolEvent>) {
        loop {
            match events.recv().await {
                None => return,
                Some(PoolEvent::Shutdown) => self.stopping = true,
                Some(event) => self.handle(event),
            }
            if self.stopping && self.slots.is_empty() {
                // Nothing is left to take what is still queued.
                self.shared.queue.fail_all();
                return;
            }
        }
    }

    fn handle(&mut self, event: PoolEvent) {
        let model = self.shared.model.clone();
        match event {
            PoolEvent::Ready { id, device, times } => {
                self.mark_ready(id);
                self.failures_in_a_row = 0;
                self.shared.end_recovery();
                self.raise_health_min();
                tracing::info!(model = %model, worker = id, device = device.name, fallback = device.fallback_reason.as_deref(), start_ms = times.start.as_millis() as u64, warmup_ms = times.warmup.map(|t| t.as_millis() as u64), "worker ready");
            }
            PoolEvent::Exited { id, cause } => {
                self.slots.remove(&id);
                self.publish_slots();
                self.reports.remove(&id);
                if let Some(reason) = exit_failure(&model, id, cause)
                    && !self.stopping
                {
                    tracing::error!(model = %model, worker = id, reason, "worker failed; restarting it");
                    self.restart_later();
                }
            }
            PoolEvent::Grow | PoolEvent::RestartDue | PoolEvent::Retuned if self.stopping => {}
            PoolEvent::Grow => {
                self.shared.grow_requested.store(false, Ordering::Release);
                // No growth while a lost worker is being replaced or starts
                // are failing: restarts own that, and count it.
                let below_max = self.shared.live_workers.load(Ordering::Acquire)
                    < self.shared.settings().max_workers;
                if below_max && self.failures_in_a_row == 0 && self.shared.recovering_workers() == 0
                {
                    let id = self.spawn_worker();
                    tracing::info!(model = %model, worker = id, "queue pressure: adding a worker");
                }
            }
            PoolEvent::RestartDue => {
                if self.shared.live_workers.load(Ordering::Acquire)
                    < self.shared.settings().min_workers
                {
                    self.shared.metrics.worker_restarted();
                    self.spawn_worker();
                } else {
                    // Whole again (a retune lowered minWorkers): nothing is
                    // recovering, and growth may go on.
                    self.shared.end_recovery();
                }
            }
            PoolEvent::Retuned => {
                let min = self.shared.settings().min_workers;
                while self.shared.live_workers.load(Ordering::Acquire) < min {
                    self.spawn_worker();
                }
                self.raise_health_min();
                tracing::info!(model = %model, settings = ?*self.shared.settings(), "settings applied in place");
            }
            PoolEvent::Stuck { id } => {
                if let Some(report) = self.reports.get_mut(&id) {
                    report.ready = false;
                }
                if !self.stopping {
                    self.restart_later();
                }
            }
            PoolEvent::Report(reply) => {
                let _ = reply.send(self.reports.values().cloned().collect());
            }
            PoolEvent::Shutdown => {}
        }
    }

    /// Judges readiness by a raised `minWorkers` once that many are ready.
    fn raise_health_min(&self) {
        let min = self.shared.settings().min_workers;
        if self.shared.ready_workers.load(Ordering::Acquire) >= min {
            self.shared.health_min.store(min, Ordering::Release);
        }
    }

    fn publish_slots(&self) {
        let slots = self.slots.values().cloned().collect();
        *self.shared.slots.write().unwrap_or_else(|e| e.into_inner()) = slots;
    }

    /// Starts a worker thread on the lowest free placement; returns its id.
    pub(super) fn spawn_worker(&mut self) -> usize {
        let shared = &self.shared;
        let id = shared.next_worker.fetch_add(1, Ordering::AcqRel);
        let placement = (0..)
            .find(|p| self.slots.values().all(|s| s.placement != *p))
            .expect("a free index");
        shared.live_workers.fetch_add(1, Ordering::AcqRel);
        let slot = Arc::new(WorkerSlot::new(id, placement));
        self.slots.insert(id, slot.clone());
        self.publish_slots();
        let report = WorkerReport {
            id,
            started: SystemTime::now(),
            ready: false,
        };
        self.reports.insert(id, report);
        let thread_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{}-w{id}", shared.model.name))
            .spawn(move || worker::run(slot, thread_shared));
        if let Err(e) = spawned {
            // Thread creation fails only when the OS is out of resources;
            // report it as a failed start so the restart backoff applies.
            if let Some(slot) = self.slots.get(&id) {
                slot.uncount(shared);
            }
            let _ = shared.events.send(PoolEvent::Exited {
                id,
                cause: ExitCause::StartFailed(worker_start(format!(
                    "cannot start a worker thread: {e}"
                ))),
            });
        }
        id
    }

    /// Schedules a replacement worker: at once after one failure, then with
    /// doubling delays up to [`MAX_RESTART_BACKOFF`].
    fn restart_later(&mut self) {
        self.failures_in_a_row += 1;
        self.shared.begin_recovery(0);
        let delay = restart_delay(self.failures_in_a_row);
        let events = self.shared.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(PoolEvent::RestartDue);
        });
    }
}

/// Starts the pool's watchdog thread; it stops once the pool is gone.
pub(super) fn start_watchdog(shared: &Arc<PoolShared>) -> std::io::Result<()> {
    let pool = Arc::downgrade(shared);
    std::thread::Builder::new()
        .name(format!("watch-{}", shared.model.name))
        .spawn(move || watch(pool))
        .map(drop)
}

/// Every [`WATCHDOG_PERIOD`]: answers callers past their deadline, queued or
/// running; cancels runs past their deadline; gives up on workers whose
/// cancelled run does not stop (one long ORT kernel ignores the terminate
/// flag) and tells the supervisor to replace them.
fn watch(pool: Weak<PoolShared>) {
    loop {
        std::thread::sleep(WATCHDOG_PERIOD);
        let Some(shared) = pool.upgrade() else {
            return;
        };
        shared.queue.purge();
        let slots = shared
            .slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for slot in slots {
            match slot.check(Instant::now(), CANCEL_GRACE, &shared) {
                RunCheck::Fine => {}
                RunCheck::Cancelled => {
                    tracing::warn!(model = %shared.model, worker = slot.id, "a run passed its deadline (responseTimeout, or a gRPC call's own); cancelling it")
                }
                RunCheck::Stuck => {
                    shared.lose_worker(&slot);
                    tracing::error!(model = %shared.model, worker = slot.id, "a cancelled run did not stop; replacing its worker");
                    let _ = shared.events.send(PoolEvent::Stuck { id: slot.id });
                }
            }
        }
    }
}

/// How long to wait before replacing a worker after `failures_in_a_row`
/// failures: nothing after the first, then 1 s, 2 s, 4 s … up to
/// [`MAX_RESTART_BACKOFF`].
pub(super) fn restart_delay(failures_in_a_row: u32) -> Duration {
    match failures_in_a_row {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1 << (n - 2).min(5)).min(MAX_RESTART_BACKOFF),
    }
}

/// Logs an exit; returns the failure reason if the worker must be replaced.
fn exit_failure(model: &ModelId, id: usize, cause: ExitCause) -> Option<String> {
    match cause {
        ExitCause::StartFailed(failure) => Some(failure.message),
        ExitCause::Panicked => Some("the worker thread panicked".into()),
        ExitCause::Retired => {
            tracing::info!(model = %model, worker = id, "idle worker above minWorkers stopped");
            None
        }
        ExitCause::Closed => None,
        ExitCause::AbandonedRunEnded => {
            tracing::info!(model = %model, worker = id, "a replaced worker's run finally ended; its thread stopped");
            None
        }
    }
}
