//! Model declarations from a directory laid out exactly as kubelet mounts a
//! ConfigMap: models added, changed, removed and changed several times in
//! quick succession, by `..data` symlink swaps and by polling; bad files
//! refused whole while the model keeps serving; and traffic that never fails
//! through every kind of change.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;
use serde_json::json;

/// Reloads build sessions; keep timing-sensitive tests off a loaded CPU.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(20);

fn store() -> Store {
    let store = Store::new();
    store
        .dir_model("linear", "linear", None)
        .dir_model("linear_copy", "linear", None)
        .dir_model("region", "region_conv", None);
    store
}

fn linear_yaml(extra: &str) -> String {
    format!("source: linear\nminWorkers: 1\nmaxWorkers: 1\n{extra}")
}

/// Whether `answer` is `linear`'s answer for [1, 2, 3, 4], to float tolerance.
fn is_linear_answer(answer: &serde_json::Value) -> bool {
    let want = linear_expected(&[1.0, 2.0, 3.0, 4.0]);
    answer.as_array().is_some_and(|got| {
        got.len() == 3
            && got
                .iter()
                .zip(want)
                .all(|(g, w)| g.as_f64().is_some_and(|g| (g as f32 - w).abs() <= 1e-5))
    })
}

async fn predicts_linear(server: &Server, model: &str) -> bool {
    let (status, answer) = server
        .predict(&format!("/predictions/{model}"), "[1, 2, 3, 4]")
        .await;
    status == 200 && is_linear_answer(&answer)
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[tokio::test]
async fn declarations_follow_kubelet_swaps_add_change_and_remove() {
    let _serial = SERIAL.lock().await;
    let store = store();
    let mut volume = ConfigMapVolume::new(&[("linear.yaml", &linear_yaml(""))]);
    let server = Server::healthy(Launch::declared(&store, &volume)).await;
    assert!(predicts_linear(&server, "linear").await);

    // Add: a new key appears (a new per-key symlink, and a `..data` swap).
    let region = "source: region\nminWorkers: 1\n";
    volume.update(&[("linear.yaml", &linear_yaml("")), ("region.yaml", region)]);
    eventually(WAIT, "region serves", || async {
        server.get("/v1/models/region").await.status() == 200
    })
    .await;
    assert_eq!(server.get("/ping").await.status(), 200);

    // Change: only `..data` moves; every visible file is the same symlink.
    volume.update(&[
        (
            "linear.yaml",
            &linear_yaml("batchSize: 4\nmaxBatchDelay: 7\n"),
        ),
        ("region.yaml", region),
    ]);
    server.wait_for_log("max_batch_delay: 7ms", WAIT);
    assert!(predicts_linear(&server, "linear").await);

    // Remove: the key's symlink goes away.
    volume.update(&[(
        "linear.yaml",
        &linear_yaml("batchSize: 4\nmaxBatchDelay: 7\n"),
    )]);
    eventually(WAIT, "region is gone", || async {
        server.get("/v1/models/region").await.status() == 404
    })
    .await;

    // Several changes in quick succession end in the last one.
    for delay in 11..=15 {
        volume.update(&[(
            "linear.yaml",
            &linear_yaml(&format!("batchSize: 4\nmaxBatchDelay: {delay}\n")),
        )]);
    }
    server.wait_for_log("max_batch_delay: 15ms", WAIT);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = server.log();
    let last = log.rfind("settings applied in place").unwrap();
    assert!(log[last..].contains("max_batch_delay: 15ms"), "{log}");
    assert!(predicts_linear(&server, "linear").await);
    assert_eq!(server.get("/ping").await.status(), 200);
}

#[tokio::test]
async fn polling_catches_changes_no_event_reports() {
    let _serial = SERIAL.lock().await;
    let store = store();
    let volume = ConfigMapVolume::new(&[("linear.yaml", &linear_yaml(""))]);
    let server = Server::healthy(
        Launch::declared(&store, &volume)
            .arg("--model-config-poll-interval")
            .arg("1"),
    )
    .await;
    // A write inside the timestamped directory: the watched top directory
    // sees nothing, so only the periodic re-read can notice it.
    volume.edit_in_place("linear.yaml", &linear_yaml("maxBatchDelay: 42\n"));
    server.wait_for_log("max_batch_delay: 42ms", WAIT);
}

#[tokio::test]
async fn bad_declarations_are_refused_whole_and_the_model_keeps_serving() {
    let _serial = SERIAL.lock().await;
    let store = store();
    let good = linear_yaml("");
    let mut volume = ConfigMapVolume::new(&[("linear.yaml", &good)]);
    let server = Server::healthy(Launch::declared(&store, &volume)).await;
    let bad = [
        (
            "source: linear\nminWorkers: [1\n",
            "linear.yaml: not valid YAML",
        ),
        (
            "source: linear\nminWorker: 2\n",
            "linear.yaml: minWorker: unknown key",
        ),
        (
            "source: linear\nbatchSize: lots\n",
            "linear.yaml: batchSize: expected a whole number",
        ),
        (
            "source: nowhere.mar\n",
            "linear.yaml: source: nowhere.mar: not found in the model store",
        ),
        (
            "source: linear\nortserve:\n  explain:\n    output: 9\n",
            "ortserve.explain.output is 9",
        ),
    ];
    for (n, (text, reason)) in bad.iter().enumerate() {
        volume.update(&[("linear.yaml", text)]);
        server.wait_for_log(reason, WAIT);
        server.wait_for_log(&format!("rejected_total={}", n + 1), WAIT);
        assert!(predicts_linear(&server, "linear").await, "after {text:?}");
        assert_eq!(server.get("/ping").await.status(), 200, "after {text:?}");
    }
    // Fixing the file applies it.
    volume.update(&[("linear.yaml", &linear_yaml("maxBatchDelay: 9\n"))]);
    server.wait_for_log("max_batch_delay: 9ms", WAIT);
}

#[tokio::test]
async fn a_bad_file_at_start_fails_only_its_model() {
    let _serial = SERIAL.lock().await;
    let store = store();
    let volume = ConfigMapVolume::new(&[
        ("linear.yaml", &linear_yaml("")),
        ("broken.yaml", "source: linear\nbatchSize: lots\n"),
    ]);
    let server = Server::start(Launch::declared(&store, &volume));
    let ping = server.wait_settled().await;
    let error = ping["models"]["broken"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("broken.yaml: batchSize: expected a whole number"),
        "{ping}"
    );
    assert!(predicts_linear(&server, "linear").await);
    // The model counts against readiness until its file is fixed.
    assert_eq!(server.get("/ping").await.status(), 500);
}

#[tokio::test]
async fn the_directory_config_properties_is_read_as_server_settings() {
    let _serial = SERIAL.lock().await;
    let store = store();
    let volume = ConfigMapVolume::new(&[
        ("linear.yaml", &linear_yaml("")),
        (
            "config.properties",
            "inference_address=http://127.0.0.1:0\nmax_request_size=64\n",
        ),
    ]);
    let launch = Launch {
        no_config_file: true,
        ..Launch::declared(&store, &volume)
    };
    let server = Server::healthy(launch).await;
    assert!(predicts_linear(&server, "linear").await);
    let big = format!("[{}]", vec!["1.0"; 40].join(","));
    let response = server.post_json("/predictions/linear", &big).await;
    assert_eq!(response.status(), 413);
}

/// Sends requests back to back from `clients` tasks until `stop`; counts
/// answers and failures (anything but the exact linear answer).
fn steady_load(
    server: &Server,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(usize, Vec<String>)>> {
    (0..clients)
        .map(|_| {
            let client = server.client.clone();
            let url = server.url("/predictions/linear");
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failures) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let sent = client.post(&url).body("[1, 2, 3, 4]").send().await;
                    match sent {
                        Ok(response) => {
                            let status = response.status();
                            let text = response.text().await.unwrap_or_default();
                            let answer = serde_json::from_str(&text).unwrap_or_default();
                            if status == 200 && is_linear_answer(&answer) {
                                ok += 1;
                            } else {
                                failures.push(format!("{status}: {text}"));
                            }
                        }
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                (ok, failures)
            })
        })
        .collect()
}

#[tokio::test]
async fn traffic_never_fails_and_readiness_never_flaps_through_reloads() {
    let _serial = SERIAL.lock().await;
    let store = store();
    let mut volume = ConfigMapVolume::new(&[("linear.yaml", &linear_yaml(""))]);
    let server = Server::healthy(Launch::declared(&store, &volume)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = steady_load(&server, 4, stop.clone());
    let unready = Arc::new(AtomicUsize::new(0));
    let prober = {
        let (client, url, stop, unready) = (
            server.client.clone(),
            server.url("/ping"),
            stop.clone(),
            unready.clone(),
        );
        tokio::spawn(async move {
            let mut probes = 0;
            while !stop.load(Ordering::Relaxed) {
                let status = client.get(&url).send().await.map(|r| r.status().as_u16());
                if status.ok() != Some(200) {
                    unready.fetch_add(1, Ordering::Relaxed);
                }
                probes += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            probes
        })
    };
    // In place: more workers, batching on. Anew: another engine option, then
    // another model file, then back to the first.
    let steps = [
        (
            "source: linear\nminWorkers: 2\nmaxWorkers: 2\nbatchSize: 4\nmaxBatchDelay: 2\n",
            "settings applied in place",
        ),
        (
            "source: linear\nminWorkers: 2\nmaxWorkers: 2\nortserve:\n  interOpThreads: 2\n",
            "switched to the new sessions",
        ),
        ("source: linear_copy\n", "switched to the new sessions"),
        ("source: linear\n", "switched to the new sessions"),
    ];
    let mut expected_switches = 0;
    for (text, applied) in steps {
        let before = count(&server.log(), applied);
        volume.update(&[("linear.yaml", text)]);
        let log_has = || count(&server.log(), applied) > before;
        eventually(WAIT, applied, || async { log_has() }).await;
        if applied.starts_with("switched") {
            expected_switches += 1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut answered, mut failures) = (0, Vec::new());
    for client in clients {
        let (ok, failed) = client.await.unwrap();
        answered += ok;
        failures.extend(failed);
    }
    let probes = prober.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(answered > 100, "only {answered} requests answered");
    assert_eq!(
        unready.load(Ordering::Relaxed),
        0,
        "/ping was not 200 in some of {probes} probes"
    );
    assert_eq!(
        count(&server.log(), "switched to the new sessions"),
        expected_switches
    );
}

#[tokio::test]
async fn a_removed_model_finishes_its_in_flight_and_queued_requests() {
    let _serial = SERIAL.lock().await;
    let store = store();
    store.dir_model("slow", "slow_loop", None);
    let slow = "source: slow\nminWorkers: 1\nmaxWorkers: 1\n";
    let mut volume = ConfigMapVolume::new(&[("slow.yaml", slow)]);
    let server = Server::healthy(Launch::declared(&store, &volume)).await;
    // ≈0.5 s each on the only worker: the first runs, the second queues.
    let requests: Vec<_> = [3000, 3001]
        .into_iter()
        .map(|x| {
            let (client, url) = (server.client.clone(), server.url("/predictions/slow"));
            tokio::spawn(async move { client.post(url).body(format!("[{x}]")).send().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    volume.update(&[]);
    server.wait_for_log("model removed", WAIT);
    assert_eq!(server.get("/v1/models/slow").await.status(), 404);
    for (request, x) in requests.into_iter().zip([3000.0, 3001.0]) {
        let response = request.await.unwrap().unwrap();
        assert_eq!(status_json(response).await, (200, json!([x])));
    }
}

/// Requests `server` holds for model `name` (version 1.0): received, not yet
/// answered, by the metrics port's gauge.
async fn in_flight(server: &Server, name: &str) -> f64 {
    let key = format!("ortserve_requests_in_flight{{model=\"{name}\",version=\"1.0\"}}");
    server.metrics().await.get(&key).copied().unwrap_or(0.0)
}

/// POSTs `[[x]]` to model `name` in a task of its own.
fn post_x(server: &Server, name: &str, x: f64) -> tokio::task::JoinHandle<(f64, u16, String)> {
    let (client, url) = (
        server.client.clone(),
        server.url(&format!("/predictions/{name}")),
    );
    tokio::spawn(async move {
        let response = client.post(url).body(format!("[[{x}]]")).send().await;
        let response = response.expect("an answer, not a dropped request");
        let status = response.status().as_u16();
        (x, status, response.text().await.unwrap_or_default())
    })
}

/// `source` switched to a different graph while slow requests queue on the
/// only worker: the requests the old version took are answered by the old
/// graph (`slow_loop`, y = x), those sent after the switch by the new one
/// (`slow_loop_neg`, y = −x), and none is lost.
#[tokio::test]
async fn a_source_switch_serves_queued_requests_on_the_old_graph_and_later_ones_on_the_new() {
    let _serial = SERIAL.lock().await;
    let store = store();
    store
        .dir_model("slow", "slow_loop", None)
        .dir_model("slow_neg", "slow_loop_neg", None);
    let declaration =
        |source: &str| format!("source: {source}\nminWorkers: 1\nmaxWorkers: 1\nbatchSize: 1\n");
    let mut volume = ConfigMapVolume::new(&[("m.yaml", &declaration("slow"))]);
    let server = Server::healthy(Launch::declared(&store, &volume)).await;
    // About 0.2 s each on a fast core (1 s on a slow one): one runs, two queue.
    let before: Vec<_> = [1200.0, 1201.0, 1202.0]
        .into_iter()
        .map(|x| post_x(&server, "m", x))
        .collect();
    eventually(WAIT, "three requests are in", || async {
        in_flight(&server, "m").await == 3.0
    })
    .await;
    volume.update(&[("m.yaml", &declaration("slow_neg"))]);
    let switched = "switched to the new sessions";
    eventually(WAIT, switched, || async { server.log().contains(switched) }).await;
    assert!(
        in_flight(&server, "m").await >= 1.0,
        "every old request was answered before the switch: nothing queued across it"
    );
    let after: Vec<_> = [1.0, 2.0]
        .into_iter()
        .map(|x| post_x(&server, "m", x))
        .collect();
    for (requests, sign, graph) in [(before, 1.0, "old"), (after, -1.0, "new")] {
        for request in requests {
            let (x, status, text) = request.await.unwrap();
            let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            assert_eq!(
                (status, answer),
                (200, json!([[sign * x]])),
                "[[{x}]] on the {graph} graph: {text}"
            );
        }
    }
}

/// A model added by a declaration never counts against `/ping` before it is
/// ready: while `slow_warmup` warms up (registered and answering "not
/// ready"), `/ping` stays 200; then the model serves.
#[tokio::test]
async fn a_model_added_by_reload_never_fails_ping_while_it_loads() {
    let _serial = SERIAL.lock().await;
    let store = store();
    store.dir_model("warm", "slow_warmup", None);
    let mut volume = ConfigMapVolume::new(&[("linear.yaml", &linear_yaml(""))]);
    let server = Server::healthy(Launch::declared(&store, &volume)).await;
    volume.update(&[
        ("linear.yaml", &linear_yaml("")),
        ("warm.yaml", "source: warm\nminWorkers: 1\nmaxWorkers: 1\n"),
    ]);
    let model = || async { server.get("/v1/models/warm").await.status().as_u16() };
    let deadline = std::time::Instant::now() + WAIT;
    let (mut while_loading, mut state) = (Vec::new(), model().await);
    while state != 200 {
        assert!(
            [404, 503].contains(&state),
            "/v1/models/warm answered {state}"
        );
        let ping = server.get("/ping").await.status().as_u16();
        let next = model().await;
        // Loading both before and after this probe: it was taken while loading.
        if state == 503 && next == 503 {
            while_loading.push(ping);
        }
        state = next;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            std::time::Instant::now() < deadline,
            "warm never became ready; log:\n{}",
            server.log()
        );
    }
    assert!(
        !while_loading.is_empty(),
        "no /ping was taken while warm loaded; log:\n{}",
        server.log()
    );
    assert!(
        while_loading.iter().all(|&status| status == 200),
        "/ping while warm loaded: {while_loading:?}"
    );
    assert_eq!(server.get("/ping").await.status(), 200);
    let (status, answer) = server.predict("/predictions/warm", "[[3]]").await;
    assert_eq!((status, answer), (200, json!([[3.0]])));
}
