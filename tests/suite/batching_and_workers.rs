//! Dynamic batching, the bounded queue, deadlines, worker replacement and
//! pool scaling, observed through the real server. The slow test models take
//! their cost from the input value (see tests/models/README.md), so one
//! request can keep a worker busy for a known time while others queue.
//!
//! These tests measure time, so they run one at a time.

use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::future::join_all;
use tokio::io::AsyncWriteExt;

pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `slow_loop` at x iterations of ≈0.15 ms each returns x unchanged.
pub(crate) async fn slow(server: &Server, model: &str, x: u32) -> reqwest::Response {
    server
        .post_json(&format!("/predictions/{model}"), &format!("[[{x}]]"))
        .await
}

/// The batches the scheduler logged for `model`, as (rows, requests), from
/// its debug line `running a batch model=NAME (version V) rows=R requests=N`.
/// A line for the model in any other shape fails the test: a check that
/// silently matched nothing could not fail.
pub(crate) fn batches_of(log: &str, model: &str) -> Vec<(usize, usize)> {
    let prefix = format!("running a batch model={model} (version ");
    log.lines()
        .filter_map(|line| Some(&line[line.find(&prefix)? + prefix.len()..]))
        .map(|rest| {
            let fields = rest.split_once(") ").map(|(_, fields)| fields);
            let parsed = fields.and_then(|fields| {
                let (rows, requests) = fields.split_once(' ')?;
                Some((
                    rows.strip_prefix("rows=")?.parse().ok()?,
                    requests.strip_prefix("requests=")?.parse().ok()?,
                ))
            });
            parsed.unwrap_or_else(|| panic!("unexpected batch line: {rest}"))
        })
        .collect()
}

const MATMUL_ONE_THREAD: &str = "responseTimeout: 1\nortserve:\n  intraOpThreads: 1\n";

pub(crate) fn slow_config(extra: &str) -> String {
    format!("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 1\n{extra}")
}

#[tokio::test]
async fn concurrent_requests_of_mixed_sizes_are_batched_and_answered_exactly() {
    let _serial = SERIAL.lock().await;
    let store = Store::new();
    store
        .dir_model("linear", "linear", Some("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 16\nmaxBatchDelay: 20\njobQueueSize: 1000\n"))
        .dir_model(
            "mnist",
            "mnist_cnn",
            // 96 callers of 1–3 rows can queue 192 rows at once: room for all
            // of them, or a slow worker turns this test into a 503 test.
            Some("minWorkers: 1\nmaxWorkers: 2\nbatchSize: 8\nmaxBatchDelay: 10\njobQueueSize: 1000\n"),
        );
    let server = Server::healthy(Launch::store(&store, "all")).await;

    let rows_of = |i: usize| -> Vec<[f32; 4]> {
        (0..1 + i % 4)
            .map(|r| std::array::from_fn(|j| ((i * 7 + r * 3 + j) % 11) as f32 - 5.0))
            .collect()
    };
    let requests = (0..200).map(|i| {
        let server = &server;
        async move {
            let rows = rows_of(i);
            let (status, answer) = server
                .predict(
                    "/predictions/linear",
                    &serde_json::to_string(&rows).unwrap(),
                )
                .await;
            (rows, status, answer)
        }
    });
    for (rows, status, answer) in join_all(requests).await {
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            answer.as_array().unwrap().len(),
            rows.len(),
            "each caller gets exactly its rows"
        );
        for (got, x) in answer.as_array().unwrap().iter().zip(&rows) {
            assert_close(got, &linear_expected(x), 1e-5);
        }
    }
    // Every request ran in exactly one batch, and some batch held several:
    // the scheduler logs each batch as it starts, so once all answers are in,
    // the lines are written (the harness may still be reading them).
    let total_rows: usize = (0..200).map(|i| rows_of(i).len()).sum();
    let deadline = Instant::now() + Duration::from_secs(10);
    let batches = loop {
        let batches = batches_of(&server.log(), "linear");
        let requests: usize = batches.iter().map(|&(_, n)| n).sum();
        if requests >= 200 || Instant::now() > deadline {
            break batches;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (rows, requests) = batches
        .iter()
        .fold((0, 0), |(r, n), &(rows, requests)| (r + rows, n + requests));
    assert_eq!(
        (rows, requests),
        (total_rows, 200),
        "rows and requests over all logged batches: {batches:?}"
    );
    assert!(
        batches.iter().any(|&(_, requests)| requests > 1),
        "no batch held more than one request: {batches:?}"
    );

    // The CNN: every answer in a mixed concurrent load equals its answer alone.
    let image = |i: usize, rows: usize| -> Vec<Vec<Vec<Vec<f32>>>> {
        (0..rows)
            .map(|r| {
                vec![
                    (0..28)
                        .map(|h| {
                            (0..28)
                                .map(|w| ((i * 5 + r + h * 3 + w) % 13) as f32 / 13.0)
                                .collect()
                        })
                        .collect(),
                ]
            })
            .collect()
    };
    let body = |i: usize| serde_json::to_string(&image(i, 1 + i % 3)).unwrap();
    let mut alone = Vec::new();
    for i in 0..12 {
        let (status, answer) = server.predict("/predictions/mnist", &body(i)).await;
        assert_eq!(status, 200, "{answer}");
        alone.push(answer);
    }
    let together = join_all((0..96).map(|k| {
        let server = &server;
        async move {
            (
                k % 12,
                server.predict("/predictions/mnist", &body(k % 12)).await,
            )
        }
    }))
    .await;
    for (i, (status, answer)) in together {
        assert_eq!(status, 200, "{answer}");
        assert_rows_close(&answer, &alone[i], 1e-5);
    }
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_while_ping_stays_prompt() {
    let _serial = SERIAL.lock().await;
    let store = Store::new();
    store.dir_model("slow", "slow_loop", Some(&slow_config("jobQueueSize: 2\n")));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let busy = async {
        let response = slow(&server, "slow", 20_000).await; // ≈3 s on the only worker
        (response, Instant::now())
    };
    let queued = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b = slow(&server, "slow", 1);
        let c = slow(&server, "slow", 2);
        let rejected = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let response = slow(&server, "slow", 3).await;
            assert_eq!(response.headers()["retry-after"], "1");
            assert_error(
                response,
                503,
                "ServiceUnavailableException",
                "queue already holds its limit of 2 rows (jobQueueSize)",
            )
            .await;
            // Probes never wait on the queue, on any protocol: all of them
            // are answered while the busy run still holds the only worker.
            for _ in 0..5 {
                for probe in [
                    "/ping",
                    "/v2/health/ready",
                    "/v2/health/live",
                    "/v1/models/slow",
                    "/v2/models/slow/ready",
                ] {
                    assert_eq!(server.get(probe).await.status(), 200, "{probe}");
                }
            }
            Instant::now()
        };
        let (b, c, probes_done) = tokio::join!(b, c, rejected);
        (status_json(b).await, status_json(c).await, probes_done)
    };
    let ((a, busy_done), (b, c, probes_done)) = tokio::join!(busy, queued);
    assert!(
        probes_done < busy_done,
        "the probes were answered only after the busy run ended: they waited on the queue"
    );
    assert_eq!(status_json(a).await, (200, serde_json::json!([[20000.0]])));
    assert_eq!(b, (200, serde_json::json!([[1.0]])));
    assert_eq!(c, (200, serde_json::json!([[2.0]])));
}

#[tokio::test]
async fn response_timeout_cancels_the_run_and_frees_the_worker() {
    let _serial = SERIAL.lock().await;
    let store = Store::new();
    store.dir_model(
        "slow",
        "slow_loop",
        Some(&slow_config("responseTimeout: 1\n")),
    );
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let start = Instant::now();
    let response = slow(&server, "slow", 200_000).await; // ≈30 s if not cancelled
    let elapsed = start.elapsed();
    assert_error(
        response,
        504,
        "RequestTimeoutException",
        "did not answer within responseTimeout=1s",
    )
    .await;
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    // The worker is not wedged: the next request is served at once.
    let start = Instant::now();
    assert_eq!(
        status_json(slow(&server, "slow", 5).await).await,
        (200, serde_json::json!([[5.0]]))
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    server.wait_for_log(
        "a run passed its deadline (responseTimeout, or a gRPC call's own); cancelling it",
        Duration::from_secs(2),
    );
    assert!(
        !server.log().contains("replacing its worker"),
        "ORT honoured the cancellation"
    );
    assert_eq!(server.get("/ping").await.status(), 200);
}

#[tokio::test]
async fn a_run_that_ignores_cancellation_gets_its_worker_replaced() {
    let _serial = SERIAL.lock().await;
    let store = Store::new();
    // One MatMul node cannot be interrupted part-way (n = 8000 takes ≈6 s on
    // one thread, well past the 1 s timeout plus the 1 s cancellation grace).
    store.dir_model(
        "matmul",
        "slow_matmul",
        Some(&slow_config(MATMUL_ONE_THREAD)),
    );
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let response = slow(&server, "matmul", 8000).await;
    assert_error(
        response,
        504,
        "RequestTimeoutException",
        "responseTimeout=1s",
    )
    .await;
    // Generous: the suite's other modules load the same two cores.
    server.wait_for_log(
        "a cancelled run did not stop; replacing its worker",
        Duration::from_secs(30),
    );
    // While the old thread still computes, a fresh worker serves new requests
    // and /ping counts the recovering worker as healthy (maxRetryTimeoutInSec).
    assert_eq!(server.get("/ping").await.status(), 200);
    let start = Instant::now();
    assert_eq!(
        status_json(slow(&server, "matmul", 3).await).await,
        (200, serde_json::json!([[3.0]]))
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    server.wait_for_log(
        "a replaced worker's run finally ended",
        Duration::from_secs(60),
    );
    let metrics = server.metrics().await;
    let sample = |name: &str, extra: &str| {
        metrics[&format!("{name}{{model=\"matmul\",{extra}version=\"1.0\"}}")]
    };
    assert_eq!(sample("ortserve_worker_restarts_total", ""), 1.0);
    assert_eq!(
        sample("ortserve_rejections_total", "reason=\"timeout\","),
        1.0
    );
    assert_eq!(sample("ortserve_workers_ready", ""), 1.0);
}

#[tokio::test]
async fn a_worker_that_cannot_restart_turns_ping_unhealthy_after_max_retry_timeout() {
    let _serial = SERIAL.lock().await;
    let store = Store::new();
    store.dir_model(
        "matmul",
        "slow_matmul",
        Some(&slow_config(&format!(
            "{MATMUL_ONE_THREAD}maxRetryTimeoutInSec: 3\n"
        ))),
    );
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let model_file = store.path().join("matmul/model.onnx");
    std::fs::remove_file(&model_file).unwrap();
    assert_eq!(slow(&server, "matmul", 8000).await.status(), 504);
    // Recovery begins when the stuck worker is replaced; its restarts then
    // fail (no model file) at about 0, 1 and 3 s.
    let replaced = log_time(&server.wait_for_log("replacing its worker", Duration::from_secs(5)));
    server.wait_for_log("worker failed; restarting it", Duration::from_secs(5));
    // Probe /ping until the server's own clock is 4 s past the replacement,
    // then judge each probe by when the server answered it (its debug line
    // `probe method=GET path="/ping" status=…`), not by when this loaded test
    // thread saw the answer.
    let pings = |log: &str| -> Vec<(f64, u16)> {
        log.lines()
            .filter(|l| l.contains(" probe ") && l.contains(r#"path="/ping" "#))
            .map(|l| {
                let status = l.split("status=").nth(1).and_then(|s| s.get(..3));
                (log_time(l) - replaced, status.unwrap().parse().unwrap())
            })
            .filter(|&(at, _)| at >= 0.0)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let unhealthy = loop {
        let (status, ping) = status_json(server.get("/ping").await).await;
        let past = pings(&server.log())
            .last()
            .is_some_and(|&(at, _)| at >= 4.0);
        if status == 500 && past {
            break ping;
        }
        assert!(
            Instant::now() < deadline,
            "never turned unhealthy; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        unhealthy["models"]["matmul"]["readyWorkers"], 0,
        "{unhealthy}"
    );
    let pings = pings(&server.log());
    // Inside the retry window the model still counts as healthy...
    let inside: Vec<_> = pings.iter().filter(|&&(at, _)| at < 2.95).collect();
    assert!(!inside.is_empty(), "no probe inside the window: {pings:?}");
    assert!(
        inside.iter().all(|&&(_, status)| status == 200),
        "unhealthy inside maxRetryTimeoutInSec=3: {pings:?}"
    );
    // ...and after it, unhealthy: the window runs from the first failure, and
    // the failed retries (at 1 and 3 s) do not extend it.
    let after: Vec<_> = pings.iter().filter(|&&(at, _)| at >= 3.5).collect();
    assert!(!after.is_empty(), "no probe after the window: {pings:?}");
    assert!(
        after.iter().all(|&&(_, status)| status == 500),
        "still healthy past maxRetryTimeoutInSec=3: {pings:?}"
    );
    // Restarts continue with backoff; once the file is back, it recovers.
    std::fs::write(&model_file, model_bytes("slow_matmul")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    while server.get("/ping").await.status() != 200 {
        assert!(
            Instant::now() < deadline,
            "never recovered; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        status_json(slow(&server, "matmul", 2).await).await,
        (200, serde_json::json!([[2.0]]))
    );
}

#[tokio::test]
async fn a_request_whose_client_left_is_dropped_before_compute() {
    let _serial = SERIAL.lock().await;
    let store = Store::new();
    store.dir_model("slow", "slow_loop", Some(&slow_config("")));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let busy = slow(&server, "slow", 13_000); // ≈2 s
    let abandoned_then_next = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // This request would take ≈15 s; its client hangs up while it is queued.
        let address = server.base.trim_start_matches("http://").to_string();
        let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
        let body = "[[100000]]";
        let head = format!(
            "POST /predictions/slow HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        socket
            .write_all(format!("{head}{body}").as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(socket);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let response = slow(&server, "slow", 4).await;
        status_json(response).await
    };
    let (busy, next) = tokio::join!(busy, abandoned_then_next);
    assert_eq!(busy.status(), 200);
    assert_eq!(next, (200, serde_json::json!([[4.0]])));
    assert_dropped_before_compute(&server, "the abandoned request");
}

/// Two batches of `slow` ran, the busy one and the next; the request whose
/// client left in between never did (batchSize 1, so it could not have
/// shared one), and the log says it was dropped.
pub(crate) fn assert_dropped_before_compute(server: &Server, what: &str) {
    // The next request's answer can arrive before its batch's log line has
    // been read off the server's stdout: wait for that line first.
    let give_up = std::time::Instant::now() + Duration::from_secs(5);
    while batches_of(&server.log(), "slow").len() < 2 && std::time::Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        batches_of(&server.log(), "slow"),
        [(1, 1), (1, 1)],
        "{what} was computed:\n{}",
        server.log()
    );
    assert!(
        server
            .log()
            .contains("request dropped before compute: client disconnected"),
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn the_pool_grows_under_pressure_and_shrinks_when_idle() {
    let _serial = SERIAL.lock().await;
    let store = Store::new();
    let config = "minWorkers: 1\nmaxWorkers: 2\nbatchSize: 1\nortserve:\n  intraOpThreads: 1\n  workerIdleTimeoutSec: 1\n";
    store.dir_model("slow", "slow_loop", Some(config));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let answers = join_all((0..4).map(|i| slow(&server, "slow", 5000 + i))).await;
    for (i, response) in answers.into_iter().enumerate() {
        assert_eq!(
            status_json(response).await,
            (200, serde_json::json!([[(5000 + i) as f64]]))
        );
    }
    server.wait_for_log("queue pressure: adding a worker", Duration::from_secs(1));
    assert_eq!(
        server
            .log()
            .matches("queue pressure: adding a worker")
            .count(),
        1,
        "maxWorkers caps growth"
    );
    server.wait_for_log(
        "idle worker above minWorkers stopped",
        Duration::from_secs(10),
    );
    assert_eq!(server.get("/ping").await.status(), 200);
    assert_eq!(status_json(slow(&server, "slow", 1).await).await.0, 200);
}

/// Voluntary context switches so far of the server's threads whose name
/// starts with `prefix` (`/proc/PID/task/*/status`).
fn voluntary_switches(pid: u32, prefix: &str) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with(prefix))
        })
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .filter_map(|status| {
            let line = status
                .lines()
                .find(|l| l.starts_with("voluntary_ctxt_switches:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// The hand-off to the worker thread and back, counted rather than timed:
/// a worker woken for every request sleeps again after each, so its
/// switches count the hand-offs. One intra-op thread: ONNX Runtime's pool
/// threads would inherit the worker's name. The lent model allows the
/// longest runs a setting may: on a loaded machine a run of this model can
/// take more than the default 50 µs, and the default is the benchmark's to
/// judge.
#[tokio::test]
async fn short_runs_stay_on_the_requests_thread_unless_inline_runs_are_off() {
    let _serial = SERIAL.lock().await;
    let store = Store::new();
    let config = |micros: u32| {
        format!(
            "minWorkers: 1\nmaxWorkers: 1\nortserve:\n  intraOpThreads: 1\n  inlineRunMicros: {micros}\n"
        )
    };
    store
        .dir_model("lent", "linear", Some(&config(1000)))
        .dir_model("handed", "linear", Some(&config(0)));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    const REQUESTS: u64 = 200;
    let mut switches = Vec::new();
    for model in ["lent", "handed"] {
        let path = format!("/predictions/{model}");
        // The first run is the worker's: it shows how long a run takes.
        server.predict(&path, "[[1, 2, 3, 4]]").await;
        let thread = format!("{model}-w");
        let before = voluntary_switches(server.pid(), &thread);
        for i in 0..REQUESTS {
            let x = [i as f32, 1.0, -2.0, 0.5];
            let body = format!("[[{}, {}, {}, {}]]", x[0], x[1], x[2], x[3]);
            let (status, answer) = server.predict(&path, &body).await;
            assert_eq!(status, 200, "{model}: {answer}");
            assert_close(&answer[0], &linear_expected(&x), 1e-4);
        }
        switches.push(voluntary_switches(server.pid(), &thread) - before);
    }
    println!("worker sleeps in {REQUESTS} requests (lent, handed): {switches:?}");
    let compute = server.metrics().await;
    let compute: Vec<_> = compute
        .iter()
        .filter(|(name, _)| name.starts_with("ortserve_compute_seconds") && name.contains("lent"))
        .collect();
    assert!(
        switches[0] < REQUESTS / 10,
        "lent: the worker slept {} times in {REQUESTS} requests; run times: {compute:?}",
        switches[0]
    );
    // A worker preempted between answering and sleeping may find the next
    // request without sleeping: most, not all.
    assert!(
        switches[1] >= REQUESTS * 9 / 10,
        "handed: the worker slept {} times in {REQUESTS} requests",
        switches[1]
    );
}
