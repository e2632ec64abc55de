//! Queues, dynamic batching and worker threads for one model version.
//!
//! A [`WorkerPool`] owns a [`BatchQueue`](queue::BatchQueue) counted in rows
//! and up to `maxWorkers` worker threads, each driving one [`Runner`] that a
//! [`RunnerFactory`] started. A supervisor task (`supervisor`) owns the worker set: it starts
//! `minWorkers` (warmed up) before the pool counts as ready, adds workers under
//! queue pressure and replaces failed ones with backoff; a watchdog thread
//! beside it cancels runs that pass their deadline. A request whose batch is
//! short runs it on its own thread with an idle worker's runner (`inline`).
//! Request tasks only call [`WorkerPool::infer`]; `/ping` only reads
//! [`WorkerPool::health`], which never touches the queue.
//!
//! It records its own timings (queue wait, `run()`, batch rows, restarts)
//! into the version's [`ModelMetrics`]; the metrics scrape reads
//! [`WorkerPool::load`], which takes the queue's lock briefly.
//!
//! It must not know about HTTP, handlers, model files or ONNX Runtime: it
//! receives ready tensors and a [`RunnerFactory`]. The registry adapts the
//! engine's session to [`Runner`]; the tests drive a scriptable fake instead.

#[cfg(test)]
pub(crate) mod fake;
mod inline;
mod queue;
mod runner;
mod sequence;
mod supervisor;
#[cfg(test)]
mod tests;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use crate::telemetry::{ModelMetrics, QueuedTrace};
use crate::types::{
    Error, InferRequest, InferResponse, LoadFailure, LoadFailureKind, ModelId, ModelIo,
};
use inline::ShortRuns;
use queue::{BatchQueue, Batching, Job, QueueLimits};
pub use runner::{
    Canceller, RunError, Runner, RunnerDevice, RunnerFactory, StartTimes, StartedRunner,
};
pub use sequence::{Sequence, Steps};
use supervisor::Supervisor;
use worker::WorkerSlot;

/// The model-config.yaml settings a pool runs by; all of them can change in
/// place ([`WorkerPool::retune`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    pub min_workers: usize,
    pub max_workers: usize,
    pub batch_size: usize,
    pub max_batch_delay: Duration,
    pub response_timeout: Duration,
    pub startup_timeout: Duration,
    pub max_retry_timeout: Duration,
    pub queue_rows: usize,
    pub idle_timeout: Duration,
    pub warmup: bool,
    /// Batches of a size whose recent runs took at most this long run on the
    /// thread of the request that completes them (`inline`); zero: never.
    pub inline_run_limit: Duration,
}

impl PoolSettings {
    fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            capacity_rows: self.queue_rows,
            timeout_secs: self.response_timeout.as_secs(),
            batching: Batching {
                max_rows: self.batch_size,
                // batchSize 1 means no waiting, as in TorchServe.
                max_delay: if self.batch_size > 1 {
                    self.max_batch_delay
                } else {
                    Duration::ZERO
                },
                idle_timeout: self.idle_timeout,
            },
        }
    }
}

/// A snapshot for `/ping`: TorchServe counts a recovering worker as healthy
/// until it has been recovering for `maxRetryTimeoutInSec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolHealth {
    pub ready_workers: usize,
    pub recovering_workers: usize,
    pub min_workers: usize,
}

impl PoolHealth {
    pub fn is_healthy(&self) -> bool {
        self.ready_workers + self.recovering_workers >= self.min_workers
    }
}

/// A snapshot for the metrics scrape: what the pool is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLoad {
    pub queue_rows: usize,
    pub live_workers: usize,
    pub ready_workers: usize,
    pub busy_workers: usize,
}

enum PoolEvent {
    Ready {
        id: usize,
        device: RunnerDevice,
        times: StartTimes,
    },
    Exited {
        id: usize,
        cause: ExitCause,
    },
    Grow,
    RestartDue,
    /// The settings changed: start or retire workers to fit them.
    Retuned,
    /// The watchdog gave up on a worker whose cancelled run does not stop.
    Stuck {
        id: usize,
    },
    /// A description of every worker is wanted.
    Report(oneshot::Sender<Vec<WorkerReport>>),
    Shutdown,
}

/// One worker, as the management API describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerReport {
    pub id: usize,
    pub started: SystemTime,
    /// Started and not being replaced.
    pub ready: bool,
}

#[derive(Debug)]
enum ExitCause {
    StartFailed(LoadFailure),
    Panicked,
    Retired,
    Closed,
    AbandonedRunEnded,
}

/// State every worker thread and request task of one pool shares.
struct PoolShared {
    model: ModelId,
    settings: RwLock<PoolSettings>,
    /// The `minWorkers` readiness is judged by. A raised `minWorkers` counts
    /// only once that many workers are ready, so a retune never flaps `/ping`.
    health_min: AtomicUsize,
    queue: BatchQueue,
    factory: RunnerFactory,
    events: mpsc::UnboundedSender<PoolEvent>,
    io: OnceLock<ModelIo>,
    live_workers: AtomicUsize,
    ready_workers: AtomicUsize,
    /// Workers inside a batch (gathering counts as idle).
    busy_workers: AtomicUsize,
    metrics: Arc<ModelMetrics>,
    grow_requested: AtomicBool,
    /// When each lost worker began recovering, oldest first.
    recovering: Mutex<Vec<Instant>>,
    next_worker: AtomicUsize,
    /// Every live worker's slot, as the supervisor last published them: for
    /// the watchdog, and for request threads that borrow an idle runner.
    slots: RwLock<Vec<Arc<WorkerSlot>>>,
    short_runs: ShortRuns,
}

/// How a pool's start went: where its first worker runs and how long its
/// slowest worker took.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolStart {
    pub device: RunnerDevice,
    pub times: StartTimes,
}

/// The workers and queue of one model version.
pub struct WorkerPool {
    shared: Arc<PoolShared>,
}

impl WorkerPool {
    /// Starts `minWorkers` workers and returns once all are warmed up, with
    /// where the first one runs and how long the slowest took, or fails with
    /// the first worker's error (or at `startupTimeout`).
    pub async fn start(
        model: ModelId,
        settings: PoolSettings,
        factory: RunnerFactory,
        metrics: Arc<ModelMetrics>,
    ) -> Result<(WorkerPool, PoolStart), LoadFailure> {
        let (events, mut receiver) = mpsc::unbounded_channel();
        let min_workers = settings.min_workers;
        let shared = Arc::new(PoolShared {
            queue: BatchQueue::new(model.name.clone(), settings.queue_limits()),
            short_runs: ShortRuns::new(settings.inline_run_limit),
            slots: RwLock::new(Vec::new()),
            model,
            health_min: AtomicUsize::new(min_workers),
            settings: RwLock::new(settings),
            factory,
            events,
            io: OnceLock::new(),
            live_workers: AtomicUsize::new(0),
            ready_workers: AtomicUsize::new(0),
            busy_workers: AtomicUsize::new(0),
            metrics,
            grow_requested: AtomicBool::new(false),
            recovering: Mutex::new(Vec::new()),
            next_worker: AtomicUsize::new(0),
        });
        let pool = WorkerPool { shared };
        let mut supervisor = Supervisor::new(pool.shared.clone());
        for _ in 0..min_workers {
            supervisor.spawn_worker();
        }
        match pool.await_start(&mut receiver).await {
            Ok((start, ready)) => {
                for id in ready {
                    supervisor.mark_ready(id);
                }
                supervisor::start_watchdog(&pool.shared).map_err(|e| {
                    worker_start(format!("cannot start the pool's watchdog thread: {e}"))
                })?;
                tokio::spawn(supervisor.run(receiver));
                Ok((pool, start))
            }
            Err(reason) => {
                pool.shared.queue.close();
                Err(reason)
            }
        }
    }

    async fn await_start(
        &self,
        receiver: &mut mpsc::UnboundedReceiver<PoolEvent>,
    ) -> Result<(PoolStart, Vec<usize>), LoadFailure> {
        let settings = self.shared.settings().clone();
        let deadline = tokio::time::Instant::now() + settings.startup_timeout;
        let mut ready = Vec::new();
        let mut first = None;
        let mut slowest = StartTimes::default();
        while ready.len() < settings.min_workers {
            let event = tokio::time::timeout_at(deadline, receiver.recv())
                .await
                .map_err(|_| {
                    LoadFailure::new(
                        LoadFailureKind::StartupTimeout,
                        format!(
                            "only {} of {} workers were ready within startupTimeout={}s",
                            ready.len(),
                            settings.min_workers,
                            settings.startup_timeout.as_secs()
                        ),
                    )
                })?;
            match event {
                Some(PoolEvent::Ready { id, device, times }) => {
                    ready.push(id);
                    first.get_or_insert(device);
                    slowest = slowest.slowest(times);
                }
                Some(PoolEvent::Exited {
                    cause: ExitCause::StartFailed(reason),
                    ..
                }) => return Err(reason),
                Some(PoolEvent::Exited { cause, .. }) => {
                    return Err(worker_start(format!(
                        "a worker stopped during start-up: {cause:?}"
                    )));
                }
                Some(_) => {}
                None => {
                    return Err(worker_start(
                        "the pool's event channel closed during start-up".into(),
                    ));
                }
            }
        }
        let device = first.expect("minWorkers is at least 1");
        Ok((
            PoolStart {
                device,
                times: slowest,
            },
            ready,
        ))
    }

    /// The model's inputs and outputs, as its first runner reported them.
    pub fn io(&self) -> &ModelIo {
        self.shared
            .io
            .get()
            .expect("a started pool has a ready worker")
    }

    /// Queues one request and waits for its outputs, at most `responseTimeout`.
    /// Dropping the returned future (client gone) drops the request before
    /// compute.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, Error> {
        self.submit(request, false, None).await
    }

    /// As [`infer`](Self::infer), within `limit` when that is shorter than
    /// `responseTimeout` (a gRPC call's deadline): past it, a queued request
    /// is dropped and a running one cancelled as at `responseTimeout`.
    pub async fn infer_within(
        &self,
        request: InferRequest,
        limit: Duration,
    ) -> Result<InferResponse, Error> {
        self.submit(request, false, Some(limit)).await
    }

    /// As [`infer`](Self::infer), but a worker that takes this request first
    /// runs it with what is already queued instead of waiting `maxBatchDelay`
    /// for more rows: for a caller whose request is as big as it can make it
    /// (an explanation's batch of perturbed copies), waiting only adds delay.
    pub async fn infer_now(&self, request: InferRequest) -> Result<InferResponse, Error> {
        self.submit(request, true, None).await
    }

    async fn submit(
        &self,
        request: InferRequest,
        eager: bool,
        limit: Option<Duration>,
    ) -> Result<InferResponse, Error> {
        let shared = &self.shared;
        let rows = request.rows();
        if rows == 0 {
            return Err(Error::BadInput(
                "the request has no rows (its first axis is empty); send at least one".into(),
            ));
        }
        request.check_strings(self.io())?;
        let response_timeout = shared.settings().response_timeout;
        let queued_at = Instant::now();
        let deadline = queued_at + limit.map_or(response_timeout, |l| l.min(response_timeout));
        let (reply, answer) = oneshot::channel();
        let job = Job {
            request,
            rows,
            deadline,
            eager,
            reply,
            queued_at,
            trace: QueuedTrace::start(),
            sequence: None,
        };
        let pushed = shared.queue.push(job, shared.short_runs.any())?;
        if pushed.grow {
            shared.request_growth();
        }
        if pushed.batch_ready && !inline::run_here(shared) {
            shared.queue.wake_worker();
        }
        // `responseTimeout` needs no timer here: the supervisor's watchdog
        // answers a caller whose deadline passed, queued or running, within
        // its period (a timer costs every prediction about 2 % of its work).
        // A call's own deadline (gRPC's) keeps one: its client is waiting
        // for `DEADLINE_EXCEEDED` on the dot.
        let answered = match limit {
            None => answer.await,
            Some(_) => match tokio::time::timeout_at(deadline.into(), answer).await {
                Ok(answered) => answered,
                Err(_) => return Err(shared.timeout()),
            },
        };
        answered.unwrap_or_else(|_| {
            Err(Error::Inference(
                "the worker stopped before answering".into(),
            ))
        })
    }

    /// Queues a sequence that will hold one worker for all its runs, counted
    /// as one row against `jobQueueSize` while it waits; refused at once when
    /// the queue is full. Its deadline is `responseTimeout` from now. The
    /// receiver answers when it ends; dropping it drops a sequence that has
    /// not started.
    pub fn start_sequence(
        &self,
        sequence: Box<dyn Sequence>,
    ) -> Result<oneshot::Receiver<Result<InferResponse, Error>>, Error> {
        let shared = &self.shared;
        let queued_at = Instant::now();
        let (reply, answer) = oneshot::channel();
        let job = Job {
            request: InferRequest { inputs: Vec::new() },
            rows: 1,
            deadline: queued_at + shared.settings().response_timeout,
            eager: true,
            reply,
            queued_at,
            trace: QueuedTrace::start(),
            sequence: Some(sequence),
        };
        if shared.queue.push(job, false)?.grow {
            shared.request_growth();
        }
        Ok(answer)
    }

    pub fn health(&self) -> PoolHealth {
        let shared = &self.shared;
        // Read before the recovering workers: a lost worker's recovery is
        // recorded before it leaves the ready count (`lose_worker`), so a
        // worker missing from this count is seen recovering.
        let ready_workers = shared.ready_workers.load(Ordering::Acquire);
        PoolHealth {
            ready_workers,
            recovering_workers: shared.recovering_workers(),
            min_workers: shared.health_min.load(Ordering::Acquire),
        }
    }

    pub fn load(&self) -> PoolLoad {
        let shared = &self.shared;
        PoolLoad {
            queue_rows: shared.queue.rows(),
            live_workers: shared.live_workers.load(Ordering::Acquire),
            ready_workers: shared.ready_workers.load(Ordering::Acquire),
            busy_workers: shared.busy_workers.load(Ordering::Acquire),
        }
    }

    /// Every worker, from the supervisor that owns them; none once it stopped.
    pub async fn workers(&self) -> Vec<WorkerReport> {
        let (reply, report) = oneshot::channel();
        if self.shared.events.send(PoolEvent::Report(reply)).is_err() {
            return Vec::new();
        }
        report.await.unwrap_or_default()
    }

    /// The settings in force.
    pub fn settings(&self) -> PoolSettings {
        self.shared.settings().clone()
    }

    /// Applies new settings without stopping: the queue takes its new limits
    /// at once, the supervisor starts workers up to a raised `minWorkers` and
    /// surplus workers above `maxWorkers` retire after their current batch.
    pub fn retune(&self, settings: PoolSettings) {
        let shared = &self.shared;
        let limits = settings.queue_limits();
        if settings.inline_run_limit != shared.settings().inline_run_limit {
            shared.short_runs.set_limit(settings.inline_run_limit);
        }
        if settings.min_workers <= shared.health_min.load(Ordering::Acquire) {
            shared
                .health_min
                .store(settings.min_workers, Ordering::Release);
        }
        *shared.settings.write().unwrap_or_else(|e| e.into_inner()) = settings;
        // Last: the workers it wakes judge whether to retire by the new
        // settings, which must be in place by then.
        shared.queue.retune(limits);
        let _ = shared.events.send(PoolEvent::Retuned);
    }

    /// Stops taking requests; queued ones are still answered, then workers stop.
    pub fn shutdown(&self) {
        self.shared.queue.close();
        let _ = self.shared.events.send(PoolEvent::Shutdown);
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl PoolShared {
    fn settings(&self) -> RwLockReadGuard<'_, PoolSettings> {
        self.settings.read().unwrap_or_else(|e| e.into_inner())
    }

    /// What a caller whose deadline passed is told.
    fn timeout(&self) -> Error {
        Error::Timeout {
            model: self.model.name.clone(),
            seconds: self.settings().response_timeout.as_secs(),
        }
    }

    fn request_growth(&self) {
        let below_max = self.live_workers.load(Ordering::Acquire) < self.settings().max_workers;
        if below_max && !self.grow_requested.swap(true, Ordering::AcqRel) {
            let _ = self.events.send(PoolEvent::Grow);
        }
    }

    /// Starts the retry window for each worker missing below `minWorkers`,
    /// counting `leaving` live workers as gone already. A replacement that
    /// fails again keeps its first failure time, so the window is not
    /// extended by retries (TorchServe's `recoveryStartTS`).
    fn begin_recovery(&self, leaving: usize) {
        let live = self.live_workers.load(Ordering::Acquire);
        let missing = self
            .settings()
            .min_workers
            .saturating_sub(live.saturating_sub(leaving));
        let mut recovering = self.recovering.lock().unwrap_or_else(|e| e.into_inner());
        if recovering.len() < missing {
            recovering.push(Instant::now());
        }
    }

    /// Takes a worker the pool gives up on off the counts, recovering from
    /// now: first the recovery, then the counts, so that `/ping` never sees
    /// the worker missing and not recovering, and a request that sees the
    /// room it leaves cannot grow the pool ahead of its restart.
    fn lose_worker(&self, slot: &worker::WorkerSlot) {
        self.begin_recovery(1);
        slot.uncount(self);
    }

    /// Lost workers still within `maxRetryTimeoutInSec` of their loss.
    fn recovering_workers(&self) -> usize {
        let now = Instant::now();
        let limit = self.settings().max_retry_timeout;
        let recovering = self.recovering.lock().unwrap_or_else(|e| e.into_inner());
        recovering
            .iter()
            .filter(|since| now.duration_since(**since) < limit)
            .count()
    }

    fn end_recovery(&self) {
        let mut recovering = self.recovering.lock().unwrap_or_else(|e| e.into_inner());
        if !recovering.is_empty() {
            recovering.remove(0);
        }
    }
}

fn worker_start(message: String) -> LoadFailure {
    LoadFailure::new(LoadFailureKind::WorkerStart, message)
}
