//! The per-model-version job queue. It alone owns queued jobs; request tasks
//! `push`, worker threads take batches with `next_batch`, and a request task
//! whose push made a batch ready may `take_ready` it to run on its own
//! thread. Jobs whose client has gone, or whose deadline has passed, are
//! dropped here, before compute.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::sequence::Sequence;
use crate::telemetry::QueuedTrace;
use crate::types::{Error, InferRequest, InferResponse};

/// One request waiting for a worker.
pub(super) struct Job {
    pub request: InferRequest,
    pub rows: usize,
    pub deadline: Instant,
    /// Run as soon as a worker takes it first, with whatever compatible jobs
    /// are already queued, instead of waiting `maxBatchDelay` for more.
    pub eager: bool,
    pub reply: oneshot::Sender<Result<InferResponse, Error>>,
    pub queued_at: Instant,
    pub trace: QueuedTrace,
    /// Set for a job that holds a worker for many runs (its `request` is
    /// then empty): it is taken alone, never batched.
    pub sequence: Option<Box<dyn Sequence>>,
}

impl Job {
    /// The caller is gone or has been answered with a timeout.
    fn is_dead(&self) -> bool {
        self.is_dead_at(Instant::now())
    }

    fn is_dead_at(&self, now: Instant) -> bool {
        self.reply.is_closed() || self.deadline <= now
    }

    /// Jobs batch together when every input has the same non-batch dims.
    fn fits_with(&self, other: &Job) -> bool {
        self.sequence.is_none()
            && other.sequence.is_none()
            && self
                .request
                .inputs
                .iter()
                .zip(&other.request.inputs)
                .all(|(a, b)| a.shape.get(1..) == b.shape.get(1..))
    }
}

/// What [`BatchQueue::push`] found.
pub(super) struct Pushed {
    /// More rows wait than the workers can take: the pool should grow.
    pub grow: bool,
    /// The job made a batch ready and no worker was woken for it.
    pub batch_ready: bool,
}

/// What a worker gets from [`BatchQueue::next_batch`].
pub(super) enum Next {
    Batch(Vec<Job>),
    /// Nothing arrived within the idle timeout.
    Idle,
    /// The queue is closed and empty: the worker should stop.
    Closed,
}

/// How long after its last batch a free worker keeps polling for jobs
/// (see `BatchQueue::poll_interval`).
const POLLING_WINDOW: Duration = Duration::from_millis(100);

/// How a worker gathers a batch (TorchServe's `batchSize`/`maxBatchDelay`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Batching {
    pub max_rows: usize,
    pub max_delay: Duration,
    pub idle_timeout: Duration,
}

/// What a queue enforces; [`BatchQueue::retune`] changes it in place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct QueueLimits {
    pub capacity_rows: usize,
    /// `responseTimeout`, for the message of a job that expires queued.
    pub timeout_secs: u64,
    pub batching: Batching,
}

struct State {
    limits: QueueLimits,
    jobs: VecDeque<Job>,
    rows: usize,
    closed: bool,
    /// Workers blocked waiting for a first job.
    idle_workers: usize,
    /// Of those, the ones that look for jobs every `maxBatchDelay` on their
    /// own (see `BatchQueue::poll_interval`): a job that does not fill a batch
    /// need not wake them.
    polling_workers: usize,
    /// When a worker last took a batch: workers poll only while this is
    /// recent, so an idle model does not wake them.
    last_batch: Option<Instant>,
    /// For each worker holding a partial batch: the rows it still needs. It
    /// is woken when that many are queued, not for every job (each wake-up is
    /// a context switch), and otherwise at its `maxBatchDelay`.
    gather_needs: Vec<usize>,
    /// How many retunes there have been: a worker waiting for a job when
    /// one comes is told it is idle at once, so that a pool scaled down
    /// sheds its idle workers now, not after `idle_timeout`.
    retunes: u64,
}

pub(super) struct BatchQueue {
    model: String,
    state: Mutex<State>,
    job_ready: Condvar,
    batch_open: Condvar,
}

impl BatchQueue {
    pub fn new(model: String, limits: QueueLimits) -> BatchQueue {
        BatchQueue {
            model,
            state: Mutex::new(State {
                limits,
                jobs: VecDeque::new(),
                rows: 0,
                closed: false,
                idle_workers: 0,
                polling_workers: 0,
                last_batch: None,
                gather_needs: Vec::new(),
                retunes: 0,
            }),
            job_ready: Condvar::new(),
            batch_open: Condvar::new(),
        }
    }

    /// Rows waiting now (for the metrics scrape).
    pub fn rows(&self) -> usize {
        self.lock().rows
    }

    /// Applies new limits to what is queued and to the next batches; a batch
    /// being gathered finishes under the old ones. Workers waiting for a job
    /// are told they are idle, to retire if the pool now has too many.
    pub fn retune(&self, limits: QueueLimits) {
        let mut state = self.lock();
        state.limits = limits;
        state.retunes += 1;
        drop(state);
        self.batch_open.notify_all();
        self.job_ready.notify_all();
    }

    /// Queues a job, if it fits, under one acquisition of the lock: the
    /// limits it is admitted by are the ones it is queued under. Says whether
    /// the pool should grow: more rows wait than the workers gathering batches
    /// and the idle workers can take. Idle workers that were signalled but
    /// have not woken yet still count as idle, so a burst is judged by its
    /// size, not by wake-up timing.
    ///
    /// With `caller_may_run`, a batch this job makes ready (full, or urgent)
    /// wakes no worker: the caller is told to [`take_ready`](Self::take_ready)
    /// it and run it itself, or else [`wake_worker`](Self::wake_worker).
    ///
    /// Workers are signalled after the lock is released: a worker woken
    /// while this thread still held it would block on the lock at once, and
    /// on a busy core each of those is two more context switches.
    pub fn push(&self, job: Job, caller_may_run: bool) -> Result<Pushed, Error> {
        let mut state = self.lock();
        self.admit(&mut state, job.rows)?;
        let batching = state.limits.batching;
        let urgent = job.eager || job.sequence.is_some() || batching.max_delay.is_zero();
        let plain = job.sequence.is_none();
        state.rows += job.rows;
        state.jobs.push_back(job);
        let open_batch = state.gather_needs.iter().any(|&need| state.rows >= need);
        let gathering_room: usize = state.gather_needs.iter().sum();
        // Rows the gathering workers will take need no other worker, and a
        // polling worker finds a partial batch by itself within its delay.
        let unclaimed = state.rows.saturating_sub(gathering_room);
        let batch_ready = caller_may_run
            && plain
            && state.gather_needs.is_empty()
            && (urgent || unclaimed >= batching.max_rows);
        let wake_idle = !batch_ready
            && state.idle_workers > 0
            && unclaimed > 0
            && (urgent || state.polling_workers == 0 || unclaimed >= batching.max_rows);
        let idle_room = state.idle_workers.saturating_mul(batching.max_rows);
        let grow = state.rows > gathering_room.saturating_add(idle_room);
        drop(state);
        if open_batch {
            self.batch_open.notify_all();
        }
        if wake_idle {
            self.job_ready.notify_one();
        }
        Ok(Pushed { grow, batch_ready })
    }

    /// The batch a [`push`](Self::push) found ready, for its caller to run:
    /// the first live job and compatible ones up to `batchSize` rows. None if
    /// a worker took the jobs meanwhile, one is gathering a batch, or the
    /// first job is a sequence (those run on a worker's thread only).
    pub fn take_ready(&self) -> Option<Vec<Job>> {
        let mut state = self.lock();
        let batching = state.limits.batching;
        let front = state.jobs.front()?;
        let urgent = front.eager || batching.max_delay.is_zero();
        if front.sequence.is_some()
            || !state.gather_needs.is_empty()
            || !(urgent || state.rows >= batching.max_rows)
        {
            return None;
        }
        let first = self.pop_live(&mut state)?;
        if first.sequence.is_some() {
            state.rows += first.rows;
            state.jobs.push_front(first);
            return None;
        }
        let mut rows = first.rows;
        let mut batch = vec![first];
        self.take_compatible(&mut state, &mut batch, &mut rows, batching.max_rows);
        state.last_batch = Some(Instant::now());
        Some(batch)
    }

    /// Puts a taken batch back at the front, in order, and wakes a worker
    /// for it: a batch its taker cannot run after all.
    pub fn requeue(&self, batch: Vec<Job>) {
        let mut state = self.lock();
        for job in batch.into_iter().rev() {
            state.rows += job.rows;
            state.jobs.push_front(job);
        }
        drop(state);
        self.wake_worker();
    }

    /// Wakes one idle worker: for a batch [`push`](Self::push) left to its
    /// caller, who could not run it.
    pub fn wake_worker(&self) {
        self.job_ready.notify_one();
    }

    /// Refuses a job of `rows` rows that can never fit (`jobQueueSize`), that
    /// does not fit now, or that comes after [`close`](Self::close).
    fn admit(&self, state: &mut State, rows: usize) -> Result<(), Error> {
        let capacity = state.limits.capacity_rows;
        if rows > capacity {
            return Err(Error::TooLarge(format!(
                "the request has {rows} rows but model \"{}\" queues at most {capacity} rows; \
                 split the request or raise jobQueueSize",
                self.model
            )));
        }
        if state.closed {
            return Err(self.unloading());
        }
        if state.rows + rows > capacity {
            // Jobs whose callers left or timed out must not hold the space.
            self.purge_dead(state);
            if state.rows + rows > capacity {
                return Err(Error::QueueFull {
                    model: self.model.clone(),
                    capacity,
                });
            }
        }
        Ok(())
    }

    /// How many retunes there have been; a worker starts from this count.
    pub fn retunes(&self) -> u64 {
        self.lock().retunes
    }

    /// Blocks the calling worker thread until it has a batch: the first live
    /// job, plus compatible jobs up to `max_rows`, waiting at most `max_delay`
    /// for them after the first. `Idle` with no job for `idle_timeout`, or
    /// at once with none queued after a retune the worker has not seen (its
    /// count, `seen_retunes`, is brought up to date): a retune while it was
    /// busy or starting counts too.
    pub fn next_batch(&self, seen_retunes: &mut u64) -> Next {
        let mut state = self.lock();
        let batching = state.limits.batching;
        let free_since = Instant::now();
        let first = loop {
            if let Some(job) = self.pop_live(&mut state) {
                break job;
            }
            if state.closed {
                return Next::Closed;
            }
            if state.retunes != *seen_retunes {
                *seen_retunes = state.retunes;
                return Next::Idle;
            }
            let poll = Self::poll_interval(&state);
            state.idle_workers += 1;
            state.polling_workers += usize::from(poll.is_some());
            let (guard, wait) = self
                .job_ready
                .wait_timeout(state, poll.unwrap_or(batching.idle_timeout))
                .unwrap_or_else(|e| e.into_inner());
            state = guard;
            state.idle_workers -= 1;
            state.polling_workers -= usize::from(poll.is_some());
            let quiet = state.jobs.is_empty() && free_since.elapsed() >= batching.idle_timeout;
            if wait.timed_out() && quiet {
                return Next::Idle;
            }
        };
        if first.sequence.is_some() {
            return Next::Batch(vec![first]);
        }
        let delay = if first.eager {
            Duration::ZERO
        } else {
            batching.max_delay
        };
        // A batch waits `maxBatchDelay` from when its first job and a free
        // worker met, whether the worker was woken or found it polling.
        let gather_until = first.queued_at.max(free_since) + delay;
        let mut rows = first.rows;
        let mut batch = vec![first];
        let taken_at = loop {
            self.take_compatible(&mut state, &mut batch, &mut rows, batching.max_rows);
            let now = Instant::now();
            if rows >= batching.max_rows || now >= gather_until || state.closed {
                break now;
            }
            let need = batching.max_rows - rows;
            state.gather_needs.push(need);
            state = self
                .batch_open
                .wait_timeout(state, gather_until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            let mine = state
                .gather_needs
                .iter()
                .position(|&n| n == need)
                .expect("pushed above");
            state.gather_needs.swap_remove(mine);
        };
        state.last_batch = Some(taken_at);
        // Jobs this batch could not take may be waiting for another worker.
        let wake_idle = !state.jobs.is_empty() && state.idle_workers > 0;
        drop(state);
        if wake_idle {
            self.job_ready.notify_one();
        }
        Next::Batch(batch)
    }

    /// How often a free worker looks for jobs by itself, if it does. A worker
    /// woken for a first job that cannot fill its batch would only go back
    /// to sleep until the batch fills: two context switches a batch where
    /// one will do, and on a busy core they cost more than the batch's run.
    /// So while batches come (one taken within [`POLLING_WINDOW`]), a free
    /// worker wakes every `maxBatchDelay` instead and pushes wake it only
    /// for a full batch or an urgent job; the first job still waits at most
    /// `maxBatchDelay`. Without batching, or once the model goes quiet, it
    /// waits to be woken.
    fn poll_interval(state: &State) -> Option<Duration> {
        let batching = state.limits.batching;
        let busy = state
            .last_batch
            .is_some_and(|at| at.elapsed() < POLLING_WINDOW);
        (busy && batching.max_rows > 1 && !batching.max_delay.is_zero() && !state.closed)
            .then_some(batching.max_delay)
    }

    /// Answers jobs whose deadline passed while queued and drops those whose
    /// caller left: the supervisor's periodic sweep, so a caller hears of its
    /// `responseTimeout` while every worker is busy or none is running.
    pub fn purge(&self) {
        let mut state = self.lock();
        let now = Instant::now();
        if state.jobs.iter().any(|job| job.is_dead_at(now)) {
            self.purge_dead(&mut state);
        }
    }

    /// Refuses everything still queued: after shutdown, once no worker is
    /// left to take it.
    pub fn fail_all(&self) {
        let jobs = {
            let mut state = self.lock();
            state.rows = 0;
            std::mem::take(&mut state.jobs)
        };
        for job in jobs {
            let _ = job.reply.send(Err(self.unloading()));
        }
    }

    fn unloading(&self) -> Error {
        Error::Unavailable {
            model: self.model.clone(),
            reason: "the model is being unloaded".into(),
        }
    }

    /// Stops accepting jobs; workers drain what is queued, then stop.
    pub fn close(&self) {
        self.lock().closed = true;
        self.job_ready.notify_all();
        self.batch_open.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking worker cannot leave the queue half-updated: every
        // mutation is a single push/remove plus a counter.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pop_live(&self, state: &mut State) -> Option<Job> {
        while let Some(job) = state.jobs.pop_front() {
            state.rows -= job.rows;
            if let Some(job) = self.keep_if_live(job, state.limits.timeout_secs) {
                return Some(job);
            }
        }
        None
    }

    fn take_compatible(
        &self,
        state: &mut State,
        batch: &mut Vec<Job>,
        rows: &mut usize,
        max_rows: usize,
    ) {
        let mut i = 0;
        while i < state.jobs.len() && *rows < max_rows {
            let candidate = &state.jobs[i];
            if !candidate.is_dead()
                && (*rows + candidate.rows > max_rows || !candidate.fits_with(&batch[0]))
            {
                i += 1;
                continue;
            }
            let job = state.jobs.remove(i).expect("index checked above");
            state.rows -= job.rows;
            if let Some(job) = self.keep_if_live(job, state.limits.timeout_secs) {
                *rows += job.rows;
                batch.push(job);
            }
        }
    }

    fn purge_dead(&self, state: &mut State) {
        let jobs = std::mem::take(&mut state.jobs);
        let timeout_secs = state.limits.timeout_secs;
        state.jobs = jobs
            .into_iter()
            .filter_map(|job| self.keep_if_live(job, timeout_secs))
            .collect();
        state.rows = state.jobs.iter().map(|j| j.rows).sum();
    }

    /// Drops a job whose client disconnected, and fails one whose deadline
    /// passed while it waited, so neither reaches the model.
    fn keep_if_live(&self, job: Job, timeout_secs: u64) -> Option<Job> {
        if job.reply.is_closed() {
            tracing::debug!(model = %self.model, "request dropped before compute: client disconnected");
            return None;
        }
        if job.deadline <= Instant::now() {
            tracing::debug!(model = %self.model, "request dropped before compute: responseTimeout passed in the queue");
            let _ = job.reply.send(Err(Error::Timeout {
                model: self.model.clone(),
                seconds: timeout_secs,
            }));
            return None;
        }
        Some(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Tensor, TensorData};

    fn job(rows: usize, width: usize) -> (Job, oneshot::Receiver<Result<InferResponse, Error>>) {
        let (reply, rx) = oneshot::channel();
        let input = Tensor::new(vec![rows, width], TensorData::F32(vec![0.0; rows * width]));
        let job = Job {
            request: InferRequest {
                inputs: vec![input],
            },
            rows,
            deadline: Instant::now() + Duration::from_secs(60),
            eager: false,
            reply,
            queued_at: Instant::now(),
            trace: QueuedTrace::start(),
            sequence: None,
        };
        (job, rx)
    }

    fn queue(capacity_rows: usize, timeout_secs: u64, batching: Batching) -> BatchQueue {
        let limits = QueueLimits {
            capacity_rows,
            timeout_secs,
            batching,
        };
        BatchQueue::new("m".into(), limits)
    }

    const NO_WAIT: Batching = Batching {
        max_rows: 4,
        max_delay: Duration::ZERO,
        idle_timeout: Duration::from_millis(10),
    };

    fn batch_rows(next: Next) -> Vec<usize> {
        match next {
            Next::Batch(jobs) => jobs.iter().map(|j| j.rows).collect(),
            _ => panic!("expected a batch"),
        }
    }

    #[test]
    fn pressure_is_rows_beyond_what_idle_workers_take() {
        let q = queue(100, 1, NO_WAIT);
        // No idle worker: any queued row is pressure.
        assert!(q.push(job(1, 1).0, false).unwrap().grow);
        // The waiter must stay idle until a job comes, however late this
        // thread sees it waiting.
        let (q, waiter) = waiting_worker(|next| matches!(next, Next::Batch(_)));
        let (a, _ra) = job(4, 1);
        let (b, _rb) = job(1, 1);
        // One idle worker takes up to 4 rows: 4 is fine, the 5th is pressure,
        // whether or not the worker has woken up yet.
        assert!(!q.push(a, false).unwrap().grow);
        assert!(q.push(b, false).unwrap().grow);
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn departed_callers_do_not_hold_queue_space() {
        let q = queue(2, 1, NO_WAIT);
        let (gone, rx) = job(2, 1);
        q.push(gone, false).unwrap();
        drop(rx);
        let (kept, _r) = job(2, 1);
        assert!(
            q.push(kept, false).is_ok(),
            "the departed job's rows are reclaimed"
        );
        assert_eq!(batch_rows(q.next_batch(&mut 0)), vec![2]);
    }

    #[test]
    fn full_queue_rejects_by_rows() {
        let q = queue(3, 1, NO_WAIT);
        let (a, _ra) = job(2, 1);
        let (b, _rb) = job(2, 1);
        q.push(a, false).unwrap();
        assert!(matches!(
            q.push(b, false),
            Err(Error::QueueFull { capacity: 3, .. })
        ));
    }

    #[test]
    fn admission_at_the_exact_capacity_boundary() {
        let q = queue(4, 1, NO_WAIT);
        let (a, _ra) = job(3, 1);
        let (b, _rb) = job(1, 1);
        let (c, _rc) = job(1, 1);
        q.push(a, false).unwrap();
        assert!(q.push(b, false).is_ok(), "exactly full is admitted");
        assert!(matches!(
            q.push(c, false),
            Err(Error::QueueFull { capacity: 4, .. })
        ));
        assert_eq!(q.rows(), 4, "a refused job leaves no rows behind");
    }

    #[test]
    fn a_job_larger_than_the_whole_queue_is_too_large_not_full() {
        let q = queue(4, 1, NO_WAIT);
        let (fits, _rf) = job(4, 1);
        let (over, _ro) = job(5, 1);
        assert!(
            matches!(q.push(over, false), Err(Error::TooLarge(m)) if m.contains("queues at most 4 rows"))
        );
        assert!(
            q.push(fits, false).is_ok(),
            "a job of exactly jobQueueSize rows fits"
        );
        assert_eq!(q.rows(), 4);
    }

    /// A queue (`idle_timeout` 60 s) whose one worker waits for a first job
    /// on another thread, which answers whether `next_batch` gave what
    /// `expected` wants.
    fn waiting_worker(
        expected: fn(Next) -> bool,
    ) -> (std::sync::Arc<BatchQueue>, std::thread::JoinHandle<bool>) {
        let patient = Batching {
            idle_timeout: Duration::from_secs(60),
            ..NO_WAIT
        };
        let q = std::sync::Arc::new(queue(100, 1, patient));
        let waiter = {
            let q = q.clone();
            std::thread::spawn(move || expected(q.next_batch(&mut 0)))
        };
        let since = Instant::now();
        while q.lock().idle_workers == 0 {
            assert!(since.elapsed() < Duration::from_secs(10), "never waited");
            std::thread::yield_now();
        }
        (q, waiter)
    }

    #[test]
    fn batches_compatible_jobs_up_to_max_rows_in_order() {
        let q = queue(100, 1, NO_WAIT);
        let mut receivers = Vec::new();
        for (rows, width) in [(1, 4), (2, 8), (2, 4), (1, 4), (1, 4)] {
            let (j, rx) = job(rows, width);
            receivers.push(rx);
            q.push(j, false).unwrap();
        }
        // First job (width 4) takes the next width-4 jobs until 4 rows; the
        // width-8 job is left for the next batch.
        assert_eq!(batch_rows(q.next_batch(&mut 0)), vec![1, 2, 1]);
        assert_eq!(
            batch_rows(q.next_batch(&mut 0)),
            vec![2],
            "width 8 never mixes with width 4"
        );
        assert_eq!(batch_rows(q.next_batch(&mut 0)), vec![1]);
        assert!(matches!(q.next_batch(&mut 0), Next::Idle));
    }

    /// A pool scaled down must not keep its idle workers until their
    /// `idle_timeout`: a retune tells a waiting worker it is idle at once.
    #[test]
    fn a_retune_tells_waiting_workers_they_are_idle() {
        let since = Instant::now();
        let (q, waiter) = waiting_worker(|next| matches!(next, Next::Idle));
        let limits = q.lock().limits;
        q.retune(limits);
        assert!(waiter.join().unwrap(), "idle, not a batch");
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "not at its timeout"
        );
    }

    /// A retune while the worker was busy or starting: it is idle as soon
    /// as it looks for a job, not after `idle_timeout` (60 s here).
    #[test]
    fn a_retune_the_worker_has_not_seen_makes_it_idle_at_once() {
        let patient = Batching {
            idle_timeout: Duration::from_secs(60),
            ..NO_WAIT
        };
        let q = queue(100, 1, patient);
        let mut seen = q.retunes();
        let limits = q.lock().limits;
        q.retune(limits);
        let since = Instant::now();
        assert!(matches!(q.next_batch(&mut seen), Next::Idle));
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "not at its timeout"
        );
        assert_eq!(seen, q.retunes(), "seen now");
        let (a, _ra) = job(1, 1);
        q.push(a, false).unwrap();
        assert_eq!(batch_rows(q.next_batch(&mut seen)), vec![1]);
    }

    #[test]
    fn oversized_job_runs_alone() {
        let q = queue(100, 1, NO_WAIT);
        let (big, _r1) = job(9, 1);
        let (small, _r2) = job(1, 1);
        q.push(big, false).unwrap();
        q.push(small, false).unwrap();
        assert_eq!(batch_rows(q.next_batch(&mut 0)), vec![9]);
        assert_eq!(batch_rows(q.next_batch(&mut 0)), vec![1]);
    }

    #[test]
    fn jobs_of_departed_clients_never_reach_a_batch() {
        let q = queue(100, 1, NO_WAIT);
        let (gone, rx) = job(1, 1);
        drop(rx);
        let (kept, _r) = job(2, 1);
        q.push(gone, false).unwrap();
        q.push(kept, false).unwrap();
        assert_eq!(batch_rows(q.next_batch(&mut 0)), vec![2]);
    }

    #[test]
    fn expired_jobs_are_answered_with_a_timeout() {
        let q = queue(100, 7, NO_WAIT);
        let (mut expired, mut rx) = job(1, 1);
        expired.deadline = Instant::now();
        q.push(expired, false).unwrap();
        assert!(matches!(q.next_batch(&mut 0), Next::Idle));
        assert_eq!(
            rx.try_recv().unwrap(),
            Err(Error::Timeout {
                model: "m".into(),
                seconds: 7
            })
        );
    }

    #[test]
    fn gathering_waits_for_late_rows() {
        let waiting = Batching {
            max_rows: 2,
            max_delay: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
        };
        let q = std::sync::Arc::new(queue(100, 1, waiting));
        let (first, _r1) = job(1, 1);
        q.push(first, false).unwrap();
        let pusher = {
            let q = q.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                let (late, r2) = job(1, 1);
                q.push(late, false).unwrap();
                r2
            })
        };
        assert_eq!(batch_rows(q.next_batch(&mut 0)), vec![1, 1]);
        drop(pusher.join());
    }

    /// A queue whose worker has just taken a batch, and that worker waiting
    /// for the next one on another thread, registered as polling.
    fn polling_worker(
        max_delay: Duration,
    ) -> (
        std::sync::Arc<BatchQueue>,
        std::thread::JoinHandle<Vec<usize>>,
    ) {
        let patient = Batching {
            max_rows: 4,
            max_delay,
            idle_timeout: Duration::from_secs(60),
        };
        let q = std::sync::Arc::new(queue(100, 60, patient));
        let (mut started, _r) = job(1, 1);
        started.eager = true;
        q.push(started, false).unwrap();
        assert_eq!(batch_rows(q.next_batch(&mut 0)), vec![1]);
        let worker = {
            let q = q.clone();
            std::thread::spawn(move || batch_rows(q.next_batch(&mut 0)))
        };
        let since = Instant::now();
        while q.lock().polling_workers == 0 {
            assert!(since.elapsed() < Duration::from_secs(10), "never polled");
            std::thread::sleep(Duration::from_millis(1));
        }
        (q, worker)
    }

    #[test]
    fn a_polling_worker_finds_a_partial_batch_within_its_delay() {
        // Nobody wakes it for one row of four: it finds the row itself, after
        // waiting `maxBatchDelay` for more, not after `idle_timeout` (60 s).
        let (q, worker) = polling_worker(Duration::from_millis(50));
        let (lone, _r) = job(1, 1);
        let pushed = Instant::now();
        q.push(lone, false).unwrap();
        assert_eq!(worker.join().unwrap(), vec![1]);
        let waited = pushed.elapsed();
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert!(waited < Duration::from_secs(30), "{waited:?}");
    }

    #[test]
    fn a_full_batch_or_an_urgent_job_wakes_a_polling_worker() {
        // Its poll comes every 40 s: an answer well before that was woken.
        let (q, worker) = polling_worker(Duration::from_secs(40));
        let receivers: Vec<_> = (0..4)
            .map(|_| {
                let (j, r) = job(1, 1);
                q.push(j, false).unwrap();
                r
            })
            .collect();
        let started = Instant::now();
        assert_eq!(worker.join().unwrap(), vec![1, 1, 1, 1]);
        assert!(started.elapsed() < Duration::from_secs(20));
        drop(receivers);

        let (q, worker) = polling_worker(Duration::from_secs(40));
        let (mut eager, _r) = job(2, 1);
        eager.eager = true;
        q.push(eager, false).unwrap();
        assert_eq!(worker.join().unwrap(), vec![2]);
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn a_quiet_model_stops_its_workers_polling() {
        // Past the polling window a free worker waits to be woken.
        let (q, worker) = polling_worker(Duration::from_millis(20));
        while q.lock().polling_workers > 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(q.lock().idle_workers, 1);
        let (lone, _r) = job(1, 1);
        q.push(lone, false).unwrap();
        assert_eq!(worker.join().unwrap(), vec![1]);
    }

    #[test]
    fn an_eager_job_takes_what_is_queued_without_waiting() {
        let waiting = Batching {
            max_rows: 8,
            max_delay: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
        };
        let q = queue(100, 1, waiting);
        let (mut eager, _r1) = job(3, 1);
        eager.eager = true;
        let (queued, _r2) = job(2, 1);
        q.push(eager, false).unwrap();
        q.push(queued, false).unwrap();
        let started = Instant::now();
        assert_eq!(batch_rows(q.next_batch(&mut 0)), vec![3, 2]);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn retuned_limits_apply_to_the_next_push_and_batch() {
        let q = queue(2, 1, NO_WAIT);
        let (big, _rb) = job(2, 1);
        q.push(big, false).unwrap();
        let (refused, _rr) = job(1, 1);
        assert!(q.push(refused, false).is_err());
        let wider = Batching {
            max_rows: 1,
            ..NO_WAIT
        };
        q.retune(QueueLimits {
            capacity_rows: 10,
            timeout_secs: 1,
            batching: wider,
        });
        let (a, _ra) = job(1, 1);
        q.push(a, false).unwrap();
        // The 2-row job runs alone (over max_rows 1), then the 1-row job.
        assert_eq!(batch_rows(q.next_batch(&mut 0)), vec![2]);
        assert_eq!(batch_rows(q.next_batch(&mut 0)), vec![1]);
    }

    #[test]
    fn closed_queue_drains_then_stops() {
        let q = queue(100, 1, NO_WAIT);
        let (a, _r) = job(1, 1);
        q.push(a, false).unwrap();
        q.close();
        assert!(q.push(job(1, 1).0, false).is_err());
        assert_eq!(batch_rows(q.next_batch(&mut 0)), vec![1]);
        assert!(matches!(q.next_batch(&mut 0), Next::Closed));
    }
}
