//! Graceful drain on SIGTERM under steady load: readiness turns off at once
//! on every readiness endpoint while liveness stays up and requests are
//! still served for the drain delay; then new connections stop, a request
//! still running and the requests queued behind it finish, every request the
//! server counted as accepted got a correct answer, and the process exits 0.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

/// One request's outcome and when it ended.
enum Outcome {
    Correct,
    /// An HTTP answer that is not the right prediction: a failure.
    Wrong(String),
    /// No HTTP answer at all (connection refused or closed): when, in
    /// seconds since the Unix epoch (the clock the server's log uses), and why.
    NoAnswer(f64, String),
}

/// Whether `text` is `linear`'s answer for [1, 2, 3, 4], to float tolerance.
fn is_linear_answer(text: &str) -> bool {
    let want = linear_expected(&[1.0, 2.0, 3.0, 4.0]);
    serde_json::from_str::<Vec<f32>>(text)
        .is_ok_and(|got| got.len() == 3 && got.iter().zip(want).all(|(g, w)| (g - w).abs() <= 1e-5))
}

fn steady_load(
    server: &Server,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Outcome>>> {
    (0..4)
        .map(|_| {
            let (client, url, stop) = (
                server.client.clone(),
                server.url("/predictions/linear"),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let outcome = match client.post(&url).body("[1, 2, 3, 4]").send().await {
                        Ok(response) => {
                            let status = response.status();
                            match response.text().await {
                                Ok(text) if status == 200 && is_linear_answer(&text) => {
                                    Outcome::Correct
                                }
                                Ok(text) => Outcome::Wrong(format!("{status}: {text}")),
                                Err(e) => Outcome::Wrong(format!("{status}, body cut: {e}")),
                            }
                        }
                        Err(e) => {
                            let at = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap()
                                .as_secs_f64();
                            // Refused: back off a little instead of spinning.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            Outcome::NoAnswer(at, format!("{e:?}"))
                        }
                    };
                    outcomes.push(outcome);
                }
                outcomes
            })
        })
        .collect()
}

/// A sample of the metrics port, or 0 when it has not been written yet.
fn sample(metrics: &BTreeMap<String, f64>, name: &str, labels: &str) -> f64 {
    metrics
        .get(&format!("{name}{{{labels}}}"))
        .copied()
        .unwrap_or(0.0)
}

/// Requests the server holds for `model`: received and not yet answered.
async fn in_flight(server: &Server, model: &str) -> f64 {
    let labels = format!("model=\"{model}\",version=\"1.0\"");
    sample(
        &server.metrics().await,
        "ortserve_requests_in_flight",
        &labels,
    )
}

/// Waits until the log has a line containing `needle`, without blocking
/// the runtime the load runs on.
async fn logged(server: &Server, needle: &str) {
    eventually(Duration::from_secs(30), needle, || async {
        server.log().contains(needle)
    })
    .await;
}

fn post_slow(
    server: &Server,
    x: u32,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let (client, url) = (server.client.clone(), server.url("/predictions/slow"));
    tokio::spawn(async move { client.post(url).body(format!("[{x}]")).send().await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_accepted_request_and_exits_zero() {
    let store = Store::new();
    store
        .dir_model("linear", "linear", Some("minWorkers: 1\nmaxWorkers: 1\n"))
        .dir_model(
            "slow",
            "slow_loop",
            Some("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 1\n"),
        );
    let launch = Launch::store(&store, "all")
        .arg("--drain-delay")
        .arg("1")
        .arg("--shutdown-timeout")
        .arg("20");
    let mut server = Server::healthy(launch).await;

    // `slow_loop`'s cost per iteration on this machine, measured with no
    // other load, so the long request below (sent under load, so slower
    // still) outlasts the 1 s drain delay by a second or more on any CPU.
    let started = Instant::now();
    let calibration = post_slow(&server, 500).await.unwrap().unwrap();
    assert_eq!(status_json(calibration).await, (200, json!([500.0])));
    let per_iteration = started.elapsed().as_secs_f64() / 500.0;
    let long_x = ((2.0 / per_iteration) as u32).clamp(1000, 100_000);

    let stop = Arc::new(AtomicBool::new(false));
    let clients = steady_load(&server, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A long request on the only `slow` worker and two queued behind it,
    // all accepted before the signal.
    let long = post_slow(&server, long_x);
    eventually(
        Duration::from_secs(10),
        "the long request is in",
        || async { in_flight(&server, "slow").await == 1.0 },
    )
    .await;
    let queued = [post_slow(&server, 1), post_slow(&server, 2)];
    eventually(Duration::from_secs(10), "two requests queue", || async {
        in_flight(&server, "slow").await == 3.0
    })
    .await;

    server.signal("TERM");
    // Readiness is off at once, everywhere: before the server says it is
    // draining, it has turned readiness off. Liveness stays up.
    logged(
        &server,
        "readiness is off; still serving during the drain delay",
    )
    .await;
    let (status, ping) = status_json(server.get("/ping").await).await;
    assert_eq!(status, 500, "{ping}");
    assert_eq!(
        (&ping["status"], &ping["draining"]),
        (&json!("Unhealthy"), &json!(true))
    );
    for path in [
        "/v2/health/ready",
        "/v1/models/linear",
        "/v2/models/linear/ready",
    ] {
        let (status, body) = status_json(server.get(path).await).await;
        assert_eq!(status, 503, "{path}: {body}");
    }
    assert_eq!(server.get("/v2/health/live").await.status(), 200);

    // The listener closes after the drain delay; the load then stops, and
    // the server's own counts are read while the slow requests still keep
    // it up.
    let closing = "drain delay over: no new connections";
    logged(&server, closing).await;
    stop.store(true, Ordering::Relaxed);
    // The server writes that line, then closes the listener and idle
    // connections: no request may go unanswered before it, by the server's
    // own clock (a client sees a failure only after it happened).
    let closed_at = log_time(server.log().lines().find(|l| l.contains(closing)).unwrap());
    let (mut correct, mut wrong, mut early_refusals) = (0.0, Vec::new(), Vec::new());
    for client in clients {
        for outcome in client.await.unwrap() {
            match outcome {
                Outcome::Correct => correct += 1.0,
                Outcome::Wrong(text) => wrong.push(text),
                Outcome::NoAnswer(at, why) if at < closed_at => {
                    early_refusals.push(format!("{:.6} s early: {why}", closed_at - at))
                }
                Outcome::NoAnswer(..) => {}
            }
        }
    }
    // The server must still be up: the slow requests are not answered yet.
    let scraped = server.client.get(server.metrics_url()).send().await;
    let text = match scraped {
        Ok(response) => response.text().await.unwrap(),
        Err(e) => panic!(
            "the server stopped while it still held requests ({e}); log:\n{}",
            server.log()
        ),
    };
    let metrics = parse_metrics(&text);
    let slow = "model=\"slow\",version=\"1.0\"";
    assert_eq!(
        sample(&metrics, "ortserve_requests_in_flight", slow),
        3.0,
        "the long request and the two queued behind it are still in the server after the listener closed"
    );
    let linear = "model=\"linear\",version=\"1.0\"";
    let accepted = metrics
        .iter()
        .filter(|(key, _)| {
            key.starts_with("ts_inference_requests_total{") && key.contains("model_name=\"linear\"")
        })
        .map(|(_, count)| count)
        .sum::<f64>();
    let answered_2xx = sample(
        &metrics,
        "ortserve_request_duration_seconds_count",
        "model=\"linear\",protocol=\"torchserve\",status_class=\"2xx\",version=\"1.0\"",
    );
    assert!(wrong.is_empty(), "accepted requests that failed: {wrong:?}");
    assert!(
        early_refusals.is_empty(),
        "requests refused during the drain delay: {early_refusals:?}"
    );
    assert_eq!(sample(&metrics, "ortserve_requests_in_flight", linear), 0.0);
    assert_eq!(
        (accepted, answered_2xx),
        (correct, correct),
        "requests the server accepted (and answered 200) against correct answers received"
    );
    assert!(correct > 50.0, "only {correct} requests answered");

    let (code, server) = tokio::task::spawn_blocking(move || {
        let code = server.wait_exit(Duration::from_secs(60));
        (code, server)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{}", server.log());
    let answer = long
        .await
        .unwrap()
        .expect("the running request was answered");
    assert_eq!(status_json(answer).await, (200, json!([long_x as f64])));
    for (request, x) in queued.into_iter().zip([1.0, 2.0]) {
        let answer = request
            .await
            .unwrap()
            .expect("a request queued behind the running one was answered");
        assert_eq!(status_json(answer).await, (200, json!([x])));
    }
    let log = server.log();
    assert!(log.contains("stopped"), "{log}");
}

#[tokio::test]
async fn the_shutdown_timeout_bounds_how_long_a_stuck_request_keeps_the_process() {
    let store = Store::new();
    store.dir_model("slow", "slow_loop", Some("minWorkers: 1\nmaxWorkers: 1\n"));
    let launch = Launch::store(&store, "all")
        .arg("--drain-delay")
        .arg("0")
        .arg("--shutdown-timeout")
        .arg("1");
    let mut server = Server::healthy(launch).await;
    // About 10 s of work: far beyond the shutdown timeout.
    let running = {
        let (client, url) = (server.client.clone(), server.url("/predictions/slow"));
        tokio::spawn(async move { client.post(url).body("[70000]").send().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal("TERM");
    let started = Instant::now();
    let (code, server) =
        tokio::task::spawn_blocking(move || (server.wait_exit(Duration::from_secs(8)), server))
            .await
            .unwrap();
    assert_eq!(code, Some(0), "{}", server.log());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        server
            .log()
            .contains("still running at the shutdown timeout")
    );
    running.abort();
}

/// SIGTERM with a gRPC call in flight: readiness off over gRPC, the call
/// answered, new calls refused once the listener closes, an open health
/// `Watch` ended then, exit 0.
#[tokio::test]
async fn sigterm_drains_grpc_calls_too() {
    let store = Store::new();
    store.dir_model(
        "slow",
        "slow_loop",
        Some("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 1\n"),
    );
    let launch = Launch::store(&store, "all").arg("--drain-delay").arg("2");
    let mut server = Server::healthy(launch).await;
    let (address, pid) = (server.grpc_address(), server.pid().to_string());
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/triton_grpc_drain.py");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python())
            .arg(script)
            .args([&address, &pid])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}\n{}", server.log());
    assert!(
        text.contains("grpc refused after the listener closed: ok")
            && text.contains("grpc health Watch ended when the listener closed: ok"),
        "{text}"
    );
    assert_eq!(
        server.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        server.log()
    );
}
