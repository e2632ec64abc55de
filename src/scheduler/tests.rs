//! The supervisor's behaviours, driven in-process through the fake runner:
//! start-up and readiness, growth and idle shrink, restarts with backoff,
//! deadlines and stuck workers, retuning in place, and callers who leave.
//!
//! Worker threads and the watchdog run on real time, so each test keeps its
//! durations to tens of milliseconds; the two that wait out the supervisor's
//! fixed 1 s constants (first restart backoff, cancel grace) take about 1 s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fake::{self, FakeModel, Script};
use super::supervisor::restart_delay;
use super::*;
use crate::telemetry::Metrics;
use crate::types::{LoadFailure, LoadFailureKind, Tensor, TensorData};

const LONG: Duration = Duration::from_secs(30);

/// One worker, no batching, no warm-up, limits far away, every batch on
/// the worker's thread.
fn settings() -> PoolSettings {
    PoolSettings {
        min_workers: 1,
        max_workers: 1,
        batch_size: 1,
        max_batch_delay: Duration::ZERO,
        response_timeout: LONG,
        startup_timeout: LONG,
        max_retry_timeout: LONG,
        queue_rows: 100,
        idle_timeout: LONG,
        warmup: false,
        inline_run_limit: Duration::ZERO,
    }
}

async fn start(model: &Arc<FakeModel>, settings: PoolSettings) -> Result<WorkerPool, LoadFailure> {
    let id = ModelId {
        name: "m".into(),
        version: "1".into(),
    };
    let metrics = Metrics::disabled().model(&id);
    let warmup = settings.warmup;
    let (pool, start) = WorkerPool::start(id, settings, model.factory(), metrics).await?;
    assert_eq!(start.device.name, "fake");
    assert_eq!(
        start.times.warmup.is_some(),
        warmup,
        "a warm-up is timed when it runs"
    );
    Ok(pool)
}

fn request(x: f32) -> InferRequest {
    InferRequest {
        inputs: vec![Tensor::new(vec![1, 1], TensorData::F32(vec![x]))],
    }
}

/// What the echoing fake answers to [`request`]`(x)`.
fn echo(x: f32) -> Result<InferResponse, Error> {
    Ok(InferResponse {
        outputs: request(x).inputs,
    })
}

/// Polls `done` every few milliseconds, for at most three seconds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(3);
    while !done() {
        assert!(Instant::now() < give_up, "still not so: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Sends `count` requests `gap` apart, without waiting for answers, and
/// returns the answers in order. A gap lets the supervisor see each push.
async fn burst(
    pool: &WorkerPool,
    count: usize,
    gap: Duration,
) -> Vec<Result<InferResponse, Error>> {
    let requests = (0..count).map(|i| async move {
        tokio::time::sleep(gap * i as u32).await;
        pool.infer(request(i as f32)).await
    });
    futures_util::future::join_all(requests).await
}

#[tokio::test]
async fn start_returns_once_min_workers_are_warmed_up_and_counts_them_ready() {
    let model = FakeModel::new(Script {
        start_latency: Duration::from_millis(20),
        ..Script::default()
    });
    let settings = PoolSettings {
        min_workers: 2,
        max_workers: 3,
        warmup: true,
        ..settings()
    };
    let pool = start(&model, settings).await.unwrap();
    assert_eq!(model.runs(), vec![vec![0.0], vec![0.0]], "one warm-up each");
    assert_eq!(
        pool.health(),
        PoolHealth {
            ready_workers: 2,
            recovering_workers: 0,
            min_workers: 2
        }
    );
    assert!(pool.health().is_healthy());
    assert_eq!(
        pool.load(),
        PoolLoad {
            queue_rows: 0,
            live_workers: 2,
            ready_workers: 2,
            busy_workers: 0
        }
    );
    assert_eq!(pool.io(), &fake::io());
    assert_eq!(pool.infer(request(7.0)).await, echo(7.0));
}

#[tokio::test]
async fn a_failed_start_or_warm_up_fails_the_pool_with_its_reason() {
    let refuses = FakeModel::new(Script {
        failing_starts: 1,
        ..Script::default()
    });
    let failure = start(&refuses, settings()).await.err().unwrap();
    assert_eq!(
        failure.kind,
        LoadFailureKind::BadGraph,
        "the factory's kind"
    );
    assert!(
        failure.message.contains("failed to start, as scripted"),
        "{failure}"
    );

    let cannot_warm_up = FakeModel::new(Script {
        fail_runs: true,
        ..Script::default()
    });
    let warmup = PoolSettings {
        warmup: true,
        ..settings()
    };
    let failure = start(&cannot_warm_up, warmup).await.err().unwrap();
    assert_eq!(failure.kind, LoadFailureKind::WarmupFailed);
    assert!(
        failure.message.contains("warm-up run") && failure.message.contains("failed, as scripted"),
        "{failure}"
    );
}

#[tokio::test]
async fn start_gives_up_at_startup_timeout() {
    let slow = FakeModel::new(Script {
        start_latency: Duration::from_millis(500),
        ..Script::default()
    });
    let settings = PoolSettings {
        startup_timeout: Duration::from_millis(50),
        ..settings()
    };
    let began = Instant::now();
    let failure = start(&slow, settings).await.err().unwrap();
    assert_eq!(failure.kind, LoadFailureKind::StartupTimeout);
    assert!(
        failure.message.contains("only 0 of 1 workers were ready"),
        "{failure}"
    );
    assert!(began.elapsed() < Duration::from_millis(400));
}

#[tokio::test]
async fn grows_to_max_workers_under_queue_pressure_and_no_further() {
    let model = FakeModel::new(Script {
        run_latency: Duration::from_millis(200),
        ..Script::default()
    });
    let settings = PoolSettings {
        max_workers: 3,
        ..settings()
    };
    let pool = start(&model, settings).await.unwrap();
    // Every worker stays busy while the requests keep arriving.
    let answers = burst(&pool, 6, Duration::from_millis(20)).await;
    let expected: Vec<_> = (0..6).map(|i| echo(i as f32)).collect();
    assert_eq!(answers, expected);
    assert_eq!(pool.load().live_workers, 3);
    assert_eq!(model.starts().len(), 3, "never more than maxWorkers");
}

/// Between the watchdog giving up on a worker and the supervisor restarting
/// it, queue pressure must not fill the gap, or the restart would find the
/// pool whole and go uncounted. The loss is taken as the watchdog takes it,
/// without its `Stuck` event, so the recovery stays open until it is ended;
/// the lost worker is not abandoned either, so it goes on serving, which the
/// product never lets a lost worker do.
#[tokio::test]
async fn growth_waits_while_a_lost_worker_is_recovering() {
    let model = FakeModel::new(Script {
        run_latency: Duration::from_millis(100),
        ..Script::default()
    });
    let settings = PoolSettings {
        max_workers: 2,
        ..settings()
    };
    let pool = start(&model, settings).await.unwrap();
    let slot = pool.shared.slots.read().unwrap()[0].clone();
    pool.shared.lose_worker(&slot);
    assert_eq!(pool.health().recovering_workers, 1);
    let expected: Vec<_> = (0..4).map(|i| echo(i as f32)).collect();
    assert_eq!(burst(&pool, 4, Duration::from_millis(20)).await, expected);
    assert_eq!(model.starts().len(), 1, "no growth while recovering");
    pool.shared.end_recovery();
    assert_eq!(burst(&pool, 4, Duration::from_millis(20)).await, expected);
    // The lost worker no longer counts: one or two more starts, the second
    // possibly after the burst.
    eventually("growth once the recovery ended", || {
        model.starts().len() > 1
    })
    .await;
}

#[tokio::test]
async fn shrinks_back_to_min_workers_when_idle() {
    let model = FakeModel::new(Script {
        run_latency: Duration::from_millis(100),
        ..Script::default()
    });
    let settings = PoolSettings {
        max_workers: 3,
        idle_timeout: Duration::from_millis(30),
        ..settings()
    };
    let pool = start(&model, settings).await.unwrap();
    burst(&pool, 6, Duration::from_millis(20)).await;
    assert!(model.starts().len() > 1, "the burst grew the pool");
    eventually("idle workers above minWorkers retired", || {
        pool.load().live_workers == 1 && pool.load().ready_workers == 1
    })
    .await;
    assert!(pool.health().is_healthy());
    assert_eq!(pool.infer(request(1.0)).await, echo(1.0));
}

#[test]
fn restart_delay_doubles_from_one_second_up_to_the_cap() {
    let delays: Vec<u64> = (1..=9).map(|n| restart_delay(n).as_secs()).collect();
    assert_eq!(delays, vec![0, 1, 2, 4, 8, 16, 30, 30, 30]);
}

#[tokio::test]
async fn a_crashed_worker_is_restarted_with_backoff_and_counts_as_recovering_meanwhile() {
    let model = FakeModel::new(Script::default());
    let settings = PoolSettings {
        max_retry_timeout: Duration::from_millis(600),
        ..settings()
    };
    let pool = start(&model, settings).await.unwrap();
    model.script(|s| {
        s.crash_next_run = true;
        s.failing_starts = 1;
    });
    let answer = pool.infer(request(1.0)).await;
    // Timed from the answer, not the request: the panic hook runs first, and
    // symbolising its backtrace (RUST_BACKTRACE=1 in CI) can take seconds.
    let crash_seen_at = Instant::now();
    assert!(
        matches!(&answer, Err(Error::Inference(m)) if m.contains("stopped before answering")),
        "{answer:?}"
    );
    // The first replacement starts at once and fails; the next waits 1 s.
    eventually("the first replacement was tried", || {
        model.starts().len() == 2
    })
    .await;
    let health = pool.health();
    assert_eq!((health.ready_workers, health.recovering_workers), (0, 1));
    assert!(
        health.is_healthy(),
        "recovering inside maxRetryTimeoutInSec"
    );

    eventually("the recovery outlasted maxRetryTimeoutInSec", || {
        !pool.health().is_healthy()
    })
    .await;
    assert_eq!(
        model.starts().len(),
        2,
        "the second replacement is backing off"
    );

    eventually("the second replacement is ready", || {
        pool.health().ready_workers == 1
    })
    .await;
    let starts = model.starts();
    // The first replacement does not wait; the second waits the 1 s backoff.
    assert!(starts[2] - starts[1] >= Duration::from_secs(1));
    assert!(starts[1].saturating_duration_since(crash_seen_at) < Duration::from_secs(1));
    assert!(pool.health().is_healthy());
    assert_eq!(pool.infer(request(2.0)).await, echo(2.0));
}

#[tokio::test]
async fn a_run_past_its_deadline_is_cancelled_and_its_caller_told() {
    let model = FakeModel::new(Script {
        run_latency: Duration::from_secs(2),
        ..Script::default()
    });
    let settings = PoolSettings {
        response_timeout: Duration::from_millis(100),
        ..settings()
    };
    let pool = start(&model, settings).await.unwrap();
    let began = Instant::now();
    let answer = pool.infer(request(1.0)).await;
    assert!(matches!(answer, Err(Error::Timeout { .. })), "{answer:?}");
    eventually("the run was cancelled", || model.cancelled_runs() == 1).await;
    assert!(
        began.elapsed() < Duration::from_millis(1500),
        "well before the run's 2 s"
    );
    model.script(|s| s.run_latency = Duration::ZERO);
    assert_eq!(pool.infer(request(2.0)).await, echo(2.0));
    assert_eq!(model.starts().len(), 1, "a cancelled run keeps its worker");
}

/// Lowers `responseTimeout` to 100 ms, then sends request `x`: its answer
/// and how long it took.
async fn with_a_short_deadline(
    pool: &WorkerPool,
    settings: PoolSettings,
    x: f32,
) -> (Result<InferResponse, Error>, Duration) {
    pool.retune(PoolSettings {
        response_timeout: Duration::from_millis(100),
        ..settings
    });
    let began = Instant::now();
    let answer = pool.infer(request(x)).await;
    (answer, began.elapsed())
}

#[tokio::test]
async fn a_queued_caller_hears_of_its_deadline_while_the_worker_is_busy() {
    let model = FakeModel::new(Script {
        run_latency: Duration::from_secs(1),
        ..Script::default()
    });
    let settings = settings();
    let pool = start(&model, settings.clone()).await.unwrap();
    let running = pool.infer(request(1.0));
    let queued = async {
        eventually("the worker is busy", || model.runs().len() == 1).await;
        with_a_short_deadline(&pool, settings, 2.0).await
    };
    let (running, (queued, waited)) = tokio::join!(running, queued);
    assert!(matches!(queued, Err(Error::Timeout { .. })), "{queued:?}");
    assert!(
        waited < Duration::from_millis(600),
        "answered by the watchdog, not when the worker was free: {waited:?}"
    );
    assert_eq!(running, echo(1.0));
    assert_eq!(model.runs(), [[1.0]], "the expired request never ran");
}

#[tokio::test]
async fn a_caller_past_its_deadline_in_a_running_batch_is_answered_and_the_rest_get_their_rows() {
    let model = FakeModel::new(Script {
        run_latency: Duration::from_millis(800),
        ..Script::default()
    });
    let settings = PoolSettings {
        batch_size: 2,
        max_batch_delay: Duration::from_millis(300),
        ..settings()
    };
    let pool = start(&model, settings.clone()).await.unwrap();
    let first = pool.infer(request(1.0));
    let second = async {
        // The worker holds the first request and gathers for 300 ms.
        tokio::time::sleep(Duration::from_millis(30)).await;
        with_a_short_deadline(&pool, settings, 2.0).await
    };
    let (first, (second, waited)) = tokio::join!(first, second);
    assert_eq!(model.runs(), [[1.0, 2.0]], "one batch of both");
    assert!(matches!(second, Err(Error::Timeout { .. })), "{second:?}");
    assert!(
        waited < Duration::from_millis(600),
        "answered at its deadline, not when the run ended: {waited:?}"
    );
    assert_eq!(first, echo(1.0), "the run went on for the first caller");
    assert_eq!(model.cancelled_runs(), 0);
}

#[tokio::test]
async fn after_shutdown_what_no_worker_is_left_to_take_is_refused() {
    let model = FakeModel::new(Script::default());
    let pool = start(&model, settings()).await.unwrap();
    // The worker crashes and every replacement fails to start.
    model.script(|s| {
        s.crash_next_run = true;
        s.failing_starts = 100;
    });
    assert!(pool.infer(request(1.0)).await.is_err());
    eventually("the first replacement failed", || {
        model.starts().len() == 2 && pool.load().live_workers == 0
    })
    .await;
    let queued = pool.infer(request(2.0));
    let shut = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        pool.shutdown();
    };
    let (answer, ()) =
        tokio::time::timeout(Duration::from_secs(1), async { tokio::join!(queued, shut) })
            .await
            .expect("answered at shutdown, not at responseTimeout");
    assert!(
        matches!(&answer, Err(Error::Unavailable { reason, .. }) if reason == "the model is being unloaded"),
        "{answer:?}"
    );
}

#[tokio::test]
async fn a_worker_whose_run_ignores_cancellation_is_replaced() {
    let model = FakeModel::new(Script {
        run_latency: Duration::from_millis(2500),
        ignore_cancel: true,
        ..Script::default()
    });
    let settings = PoolSettings {
        response_timeout: Duration::from_millis(100),
        ..settings()
    };
    let pool = start(&model, settings).await.unwrap();
    let began = Instant::now();
    let answer = pool.infer(request(1.0)).await;
    assert!(matches!(answer, Err(Error::Timeout { .. })), "{answer:?}");
    model.script(|s| s.run_latency = Duration::ZERO);
    eventually("a replacement is ready", || {
        model.starts().len() == 2 && pool.load().ready_workers == 1
    })
    .await;
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "replaced while the stuck run still sleeps"
    );
    assert_eq!(
        pool.load().live_workers,
        1,
        "the stuck worker no longer counts"
    );
    assert_eq!(pool.infer(request(2.0)).await, echo(2.0));
}

/// The race between an idle worker retiring and the watchdog losing it,
/// played in one order: the loss first. The worker must not leave the live
/// count a second time, or the pool would count one worker too few.
#[tokio::test]
async fn a_worker_already_lost_cannot_retire_a_second_time() {
    let model = FakeModel::new(Script::default());
    let settings = PoolSettings {
        min_workers: 2,
        max_workers: 2,
        ..settings()
    };
    let pool = start(&model, settings).await.unwrap();
    let slot = pool.shared.slots.read().unwrap()[0].clone();
    slot.uncount(&pool.shared);
    assert_eq!(pool.load().live_workers, 1);
    assert!(!slot.retire_above(&pool.shared, 0), "it left already");
    assert_eq!(pool.load().live_workers, 1, "taken off the count once");
}

#[tokio::test]
async fn retune_starts_and_retires_workers_in_place() {
    let model = FakeModel::new(Script::default());
    let one = PoolSettings {
        idle_timeout: Duration::from_millis(30),
        ..settings()
    };
    let pool = start(&model, one.clone()).await.unwrap();
    let two = PoolSettings {
        min_workers: 2,
        max_workers: 2,
        batch_size: 4,
        ..one.clone()
    };
    pool.retune(two.clone());
    assert_eq!(pool.settings(), two);
    eventually("a second worker is ready and counted", || {
        pool.health().ready_workers == 2 && pool.health().min_workers == 2
    })
    .await;

    pool.retune(one.clone());
    eventually("the surplus worker retired", || {
        pool.load().live_workers == 1 && pool.health().min_workers == 1
    })
    .await;
    assert_eq!(
        model.starts().len(),
        2,
        "the first worker was never restarted"
    );
    assert_eq!(pool.settings(), one);
    assert_eq!(pool.infer(request(3.0)).await, echo(3.0));
}

#[tokio::test]
async fn requests_whose_client_left_never_reach_the_runner() {
    let model = FakeModel::new(Script {
        run_latency: Duration::from_millis(150),
        ..Script::default()
    });
    let pool = start(&model, settings()).await.unwrap();
    let first = pool.infer(request(1.0));
    let abandoned = async {
        eventually("the worker is busy", || model.runs().len() == 1).await;
        let gone = tokio::time::timeout(Duration::from_millis(10), pool.infer(request(2.0))).await;
        assert!(gone.is_err(), "the worker is still busy with the first");
        pool.infer(request(3.0)).await
    };
    let (first, last) = tokio::join!(first, abandoned);
    assert_eq!((first, last), (echo(1.0), echo(3.0)));
    assert_eq!(model.runs(), vec![vec![1.0], vec![3.0]]);
}

#[tokio::test]
async fn a_failed_run_answers_its_callers_and_keeps_the_worker() {
    let model = FakeModel::new(Script {
        fail_runs: true,
        ..Script::default()
    });
    let pool = start(&model, settings()).await.unwrap();
    assert_eq!(
        pool.infer(request(1.0)).await,
        Err(Error::Inference(
            "the fake runner failed, as scripted".into()
        ))
    );
    model.script(|s| s.fail_runs = false);
    assert_eq!(pool.infer(request(2.0)).await, echo(2.0));
    assert_eq!(model.starts().len(), 1);
    assert_eq!(pool.health().ready_workers, 1);
}

#[tokio::test]
async fn outputs_that_cannot_be_split_per_request_fail_the_batch_clearly() {
    let model = FakeModel::new(Script {
        extra_output_row: true,
        ..Script::default()
    });
    let settings = PoolSettings {
        batch_size: 2,
        max_batch_delay: Duration::from_secs(1),
        ..settings()
    };
    let pool = start(&model, settings).await.unwrap();
    let answers = burst(&pool, 2, Duration::ZERO).await;
    assert_eq!(model.runs(), vec![vec![0.0, 1.0]], "one batch of both");
    for answer in answers {
        assert!(
            matches!(&answer, Err(Error::Inference(m)) if m.contains("output 'y' has shape [3, 1] for a batch of 2 rows")),
            "{answer:?}"
        );
    }
}

/// A sequence of `steps` runs through the fake, each echoing `x + step`.
struct Counting {
    steps: usize,
    ran: std::sync::mpsc::Sender<f32>,
}

impl Sequence for Counting {
    fn run(self: Box<Self>, steps: &mut Steps<'_>) -> Result<(), Error> {
        for step in 0..self.steps {
            let outputs = steps.run(&request(step as f32).inputs)?;
            let TensorData::F32(y) = &outputs[0].data else {
                unreachable!("the fake echoes f32")
            };
            let _ = self.ran.send(y[0]);
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_sequence_holds_one_worker_alone_for_all_its_runs() {
    let model = FakeModel::new(Script {
        run_latency: Duration::from_millis(5),
        ..Script::default()
    });
    let pool = start(&model, settings()).await.unwrap();
    let (ran, seen) = std::sync::mpsc::channel();
    let done = pool
        .start_sequence(Box::new(Counting { steps: 4, ran }))
        .unwrap();
    // Queued behind the sequence, it runs only once the sequence has ended.
    let after = pool.infer(request(9.0)).await;
    assert_eq!(after, echo(9.0));
    assert!(done.await.unwrap().is_ok());
    assert_eq!(seen.try_iter().collect::<Vec<_>>(), [0.0, 1.0, 2.0, 3.0]);
    assert_eq!(model.runs(), [[0.0], [1.0], [2.0], [3.0], [9.0]]);
}

#[tokio::test]
async fn a_full_queue_refuses_a_sequence_and_its_deadline_ends_it() {
    let model = FakeModel::new(Script {
        run_latency: Duration::from_millis(40),
        ..Script::default()
    });
    let pool = start(
        &model,
        PoolSettings {
            queue_rows: 1,
            response_timeout: Duration::from_millis(150),
            ..settings()
        },
    )
    .await
    .unwrap();
    let (ran, _seen) = std::sync::mpsc::channel();
    let running = pool
        .start_sequence(Box::new(Counting {
            steps: 100,
            ran: ran.clone(),
        }))
        .unwrap();
    eventually("the sequence runs", || !model.runs().is_empty()).await;
    let waiting = pool
        .start_sequence(Box::new(Counting {
            steps: 1,
            ran: ran.clone(),
        }))
        .unwrap();
    let refused = pool.start_sequence(Box::new(Counting { steps: 1, ran }));
    assert!(matches!(refused, Err(Error::QueueFull { capacity: 1, .. })));
    assert!(matches!(running.await.unwrap(), Err(Error::Timeout { .. })));
    assert!(
        model.runs().len() < 10,
        "the deadline ended it: {} runs",
        model.runs().len()
    );
    drop(waiting);
}

/// A limit far above the fake's runs (microseconds) and far below its
/// scripted slow ones.
const SHORT: Duration = Duration::from_millis(20);

/// [`settings`] with batches run on the request's thread once short.
fn inline(limit: Duration) -> PoolSettings {
    PoolSettings {
        inline_run_limit: limit,
        ..settings()
    }
}

fn on_worker(thread: &str) -> bool {
    thread.starts_with("m-w")
}

/// Where each run ran, one letter a run: `w` a worker's thread, `r` the
/// request's.
fn run_places(model: &FakeModel) -> String {
    let place = |thread: &String| if on_worker(thread) { 'w' } else { 'r' };
    model.run_threads().iter().map(place).collect()
}

fn rows(values: &[f32]) -> InferRequest {
    let shape = vec![values.len(), 1];
    InferRequest {
        inputs: vec![Tensor::new(shape, TensorData::F32(values.to_vec()))],
    }
}

#[tokio::test]
async fn once_runs_are_known_to_be_short_the_requests_thread_runs_them() {
    let model = FakeModel::new(Script::default());
    let pool = start(&model, inline(SHORT)).await.unwrap();
    for x in [1.0, 2.0, 3.0] {
        assert_eq!(pool.infer(request(x)).await, echo(x));
    }
    assert_eq!(run_places(&model), "wrr", "{:?}", model.run_threads());
}

#[tokio::test]
async fn a_zero_limit_or_a_runner_bound_to_its_thread_keeps_every_run_on_the_worker() {
    for (limit, worker_thread_only) in [(Duration::ZERO, false), (SHORT, true)] {
        let model = FakeModel::new(Script {
            worker_thread_only,
            ..Script::default()
        });
        let pool = start(&model, inline(limit)).await.unwrap();
        for x in [1.0, 2.0, 3.0] {
            assert_eq!(pool.infer(request(x)).await, echo(x));
        }
        assert_eq!(run_places(&model), "www", "limit {limit:?}");
    }
}

#[tokio::test]
async fn a_slow_run_or_a_larger_batch_goes_back_to_the_worker() {
    let model = FakeModel::new(Script::default());
    let settings = PoolSettings {
        batch_size: 4,
        ..inline(SHORT)
    };
    let pool = start(&model, settings).await.unwrap();
    let three = rows(&[3.0, 3.5, 4.0]);
    let answers = [
        pool.infer(request(1.0)).await,
        pool.infer(request(2.0)).await,
        // Three times the elements of any short run so far: the worker's.
        pool.infer(three.clone()).await,
        pool.infer(three.clone()).await,
    ];
    let three_echoed = Ok(InferResponse {
        outputs: three.inputs,
    });
    assert_eq!(
        answers,
        [echo(1.0), echo(2.0), three_echoed.clone(), three_echoed]
    );
    model.script(|s| s.run_latency = SHORT * 2);
    assert_eq!(pool.infer(request(5.0)).await, echo(5.0));
    model.script(|s| s.run_latency = Duration::ZERO);
    for x in [6.0, 7.0] {
        assert_eq!(pool.infer(request(x)).await, echo(x));
    }
    // The slow run was not foreseen; the run after it was the worker's.
    assert_eq!(run_places(&model), "wrwrrwr", "{:?}", model.run_threads());
}

#[tokio::test]
async fn a_run_on_the_requests_thread_is_cancelled_at_its_deadline() {
    let model = FakeModel::new(Script::default());
    let pool = start(&model, inline(SHORT)).await.unwrap();
    assert_eq!(pool.infer(request(1.0)).await, echo(1.0));
    model.script(|s| s.run_latency = Duration::from_secs(5));
    let began = Instant::now();
    // The run holds up this test's only runtime thread: only the watchdog's
    // own thread can cancel it.
    let answer = pool
        .infer_within(request(2.0), Duration::from_millis(100))
        .await;
    assert!(matches!(answer, Err(Error::Timeout { .. })), "{answer:?}");
    assert_eq!(model.cancelled_runs(), 1);
    assert!(began.elapsed() < Duration::from_secs(2), "well before 5 s");
    assert_eq!(run_places(&model), "wr");
    model.script(|s| s.run_latency = Duration::ZERO);
    assert_eq!(pool.infer(request(3.0)).await, echo(3.0));
    assert_eq!(model.starts().len(), 1, "a cancelled run keeps its worker");
}

#[tokio::test]
async fn a_worker_whose_lent_run_ignores_cancellation_is_replaced_and_stops() {
    let model = FakeModel::new(Script::default());
    let pool = start(&model, inline(SHORT)).await.unwrap();
    assert_eq!(pool.infer(request(1.0)).await, echo(1.0));
    model.script(|s| {
        s.run_latency = Duration::from_millis(2500);
        s.ignore_cancel = true;
    });
    let answer = pool
        .infer_within(request(2.0), Duration::from_millis(100))
        .await;
    assert!(matches!(answer, Err(Error::Timeout { .. })), "{answer:?}");
    model.script(|s| {
        s.run_latency = Duration::ZERO;
        s.ignore_cancel = false;
    });
    eventually("a replacement is ready", || {
        model.starts().len() == 2 && pool.load().ready_workers == 1
    })
    .await;
    // The slow run left no evidence: this batch wakes a worker, and the
    // replaced one hands it on and stops.
    assert_eq!(pool.infer(request(3.0)).await, echo(3.0));
    let threads = model.run_threads();
    assert_eq!(threads[2], "m-w1", "{threads:?}");
    let give_up = Instant::now() + Duration::from_secs(3);
    while pool.workers().await.len() != 1 {
        assert!(Instant::now() < give_up, "the replaced worker still runs");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
