//! Graceful drain on SIGTERM under steady load: readiness turns off at once
//! on every readiness endpoint while liveness stays up and requests are
//! still served for the drain delay; then new connections stop, a request
//! still running finishes, every request the server accepted got a correct
//! answer, and the process exits 0.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// One request's outcome and when it ended.
enum Outcome {
    Correct,
    /// An HTTP answer that is not the right prediction: a failure.
    Wrong(String),
    /// No HTTP answer at all (connection refused or closed): the server did
    /// not accept this request.
    NotAccepted(Instant),
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
                                Ok(text) if status == 200 && text == "[2.5,7.0,11.5]" => {
                                    Outcome::Correct
                                }
                                Ok(text) => Outcome::Wrong(format!("{status}: {text}")),
                                Err(e) => Outcome::Wrong(format!("{status}, body cut: {e}")),
                            }
                        }
                        Err(_) => {
                            // Refused: back off a little instead of spinning.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            Outcome::NotAccepted(Instant::now())
                        }
                    };
                    outcomes.push(outcome);
                }
                outcomes
            })
        })
        .collect()
}

#[tokio::test]
async fn sigterm_drains_every_accepted_request_and_exits_zero() {
    let store = Store::new();
    store
        .dir_model("linear", "linear", Some("minWorkers: 1\nmaxWorkers: 1\n"))
        .dir_model("slow", "slow_loop", Some("minWorkers: 1\nmaxWorkers: 1\n"));
    let launch = Launch::store(&store, "all")
        .arg("--drain-delay")
        .arg("1")
        .arg("--shutdown-timeout")
        .arg("10");
    let mut server = Server::healthy(launch).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = steady_load(&server, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    server.signal("TERM");
    let signalled = Instant::now();
    // Readiness is off at once, everywhere; liveness stays up.
    eventually(
        Duration::from_millis(200),
        "/ping turns unready",
        || async { server.get("/ping").await.status() == 500 },
    )
    .await;
    let (_, ping) = status_json(server.get("/ping").await).await;
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
    // A long request that is still running when the listener closes (the
    // drain delay is 1 s; this one takes about 1 s).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let long = {
        let (client, url) = (server.client.clone(), server.url("/predictions/slow"));
        tokio::spawn(async move { client.post(url).body("[7000]").send().await })
    };
    assert!(
        signalled.elapsed() < Duration::from_secs(1),
        "the test itself was too slow"
    );

    let code = tokio::task::spawn_blocking(move || {
        let code = server.wait_exit(Duration::from_secs(15));
        (code, server)
    });
    let (code, server) = code.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(code, Some(0), "{}", server.log());
    let answer = long
        .await
        .unwrap()
        .expect("the running request was answered");
    assert_eq!(status_json(answer).await, (200, json!([7000.0])));

    let (mut correct, mut wrong, mut early_refusals) = (0, Vec::new(), 0);
    for client in clients {
        for outcome in client.await.unwrap() {
            match outcome {
                Outcome::Correct => correct += 1,
                Outcome::Wrong(text) => wrong.push(text),
                Outcome::NotAccepted(at)
                    if at.duration_since(signalled) < Duration::from_secs(1) =>
                {
                    early_refusals += 1
                }
                Outcome::NotAccepted(_) => {}
            }
        }
    }
    assert!(wrong.is_empty(), "accepted requests that failed: {wrong:?}");
    assert_eq!(
        early_refusals, 0,
        "connections refused during the drain delay"
    );
    assert!(correct > 50, "only {correct} requests answered");
    let log = server.log();
    assert!(
        log.contains("readiness is off; still serving during the drain delay"),
        "{log}"
    );
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
