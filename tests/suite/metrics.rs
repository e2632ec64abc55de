//! `GET /metrics` after known traffic: TorchServe's counters, ortserve's
//! histograms, a rejection of each kind, the state gauges mid-flight, the
//! config-reload counters, and the settings that move or turn it off.
//!
//! The busy-worker scenario measures time, so it runs alone in its test.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;

/// `name{labels}` for a model version, labels in Prometheus' order.
fn sample(name: &str, model: &str, extra: &[(&str, &str)]) -> String {
    let mut labels: Vec<(&str, &str)> = vec![("model", model), ("version", "1.0")];
    labels.extend(extra.iter().filter(|(k, _)| *k != "le"));
    labels.sort();
    // A histogram's bucket bound comes last.
    labels.extend(extra.iter().filter(|(k, _)| *k == "le"));
    let text: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", text.join(","))
}

const LINEAR_ROW: &str = "[[1, 2, 3, 4]]";

/// The status of a JSON POST.
async fn status(server: &Server, path: &str, body: &str) -> u16 {
    server.post_json(path, body).await.status().as_u16()
}

fn value(metrics: &BTreeMap<String, f64>, key: &str) -> f64 {
    *metrics
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key}; have:\n{}", dump(metrics)))
}

fn dump(metrics: &BTreeMap<String, f64>) -> String {
    metrics
        .iter()
        .filter(|(k, _)| !k.contains("_bucket"))
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn hostname_label(metrics: &BTreeMap<String, f64>) -> String {
    let key = metrics
        .keys()
        .find(|k| k.starts_with("ts_inference_requests_total{"))
        .expect("a TorchServe counter");
    key.split("hostname=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn known_traffic_gives_exact_counts_histograms_and_rejections() {
    let store = Store::new();
    store
        .dir_model(
            "linear",
            "linear",
            Some("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 1\njobQueueSize: 4\n"),
        )
        .dir_model(
            "slow",
            "slow_loop",
            Some("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 1\njobQueueSize: 2\n"),
        )
        .dir_model(
            "hasty",
            "slow_loop",
            Some("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 1\nresponseTimeout: 1\n"),
        );
    let server = Server::healthy(Launch::store(&store, "all")).await;

    // linear: three answers, one bad input, one request over the queue.
    for _ in 0..3 {
        assert_eq!(
            status(&server, "/predictions/linear", LINEAR_ROW).await,
            200
        );
    }
    assert_eq!(
        status(&server, "/predictions/linear", "[[1, 2]]").await,
        400
    );
    let five_rows = "[[1,2,3,4],[1,2,3,4],[1,2,3,4],[1,2,3,4],[1,2,3,4]]";
    assert_eq!(status(&server, "/predictions/linear", five_rows).await, 413);
    // A KServe v2 request is labelled with its protocol.
    let v2 = r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#;
    assert_eq!(status(&server, "/v2/models/linear/infer", v2).await, 200);

    // slow: one run holds the worker, two fill the queue, the next is refused;
    // the gauges are read while that is so.
    let busy = server.post_json("/predictions/slow", "[[13000]]");
    let rest = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let queued = futures_util::future::join(
            server.post_json("/predictions/slow", "[[1]]"),
            server.post_json("/predictions/slow", "[[2]]"),
        );
        let refused_then_scraped = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let refused = server
                .post_json("/predictions/slow", "[[3]]")
                .await
                .status();
            (refused, server.metrics().await)
        };
        let ((b, c), (refused, during)) = tokio::join!(queued, refused_then_scraped);
        (
            b.status().as_u16(),
            c.status().as_u16(),
            refused.as_u16(),
            during,
        )
    };
    let (a, (b, c, refused, during)) = tokio::join!(busy, rest);
    assert_eq!((a.status().as_u16(), b, c, refused), (200, 200, 200, 503));
    assert_eq!(
        value(&during, &sample("ortserve_queue_rows", "slow", &[])),
        2.0
    );
    assert_eq!(
        value(
            &during,
            &sample("ortserve_workers", "slow", &[("state", "busy")])
        ),
        1.0
    );
    assert_eq!(
        value(
            &during,
            &sample("ortserve_workers", "slow", &[("state", "idle")])
        ),
        0.0
    );
    assert_eq!(
        value(&during, &sample("ortserve_requests_in_flight", "slow", &[])),
        3.0
    );

    // hasty: a run past responseTimeout.
    assert_eq!(
        status(&server, "/predictions/hasty", "[[20000]]").await,
        504
    );

    // slow again: a client that gives up before its answer.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(server.url("/predictions/slow"))
        .header("content-type", "application/json")
        .body("[[8000]]")
        .send()
        .await;
    assert!(gave_up.is_err(), "the client should have timed out");
    eventually(
        Duration::from_secs(10),
        "the abandoned request is counted",
        || async {
            server.metrics().await.get(&sample(
                "ortserve_rejections_total",
                "slow",
                &[("reason", "client_gone")],
            )) == Some(&1.0)
        },
    )
    .await;

    let m = server.metrics().await;
    let host = hostname_label(&m);
    let ts = |name: &str, model: &str| {
        format!("{name}{{hostname=\"{host}\",model_name=\"{model}\",model_version=\"1.0\"}}")
    };
    // TorchServe's counters: every request that reached the model.
    assert_eq!(
        value(&m, &ts("ts_inference_requests_total", "linear")),
        6.0,
        "{}",
        dump(&m)
    );
    assert_eq!(value(&m, &ts("ts_inference_requests_total", "slow")), 5.0);
    assert!(value(&m, &ts("ts_inference_latency_microseconds", "slow")) > 2_000_000.0);
    assert!(value(&m, &ts("ts_queue_latency_microseconds", "slow")) > 1_000_000.0);

    // Request durations by protocol and status class.
    let duration = |model: &str, protocol: &str, class: &str| {
        let labels = [("protocol", protocol), ("status_class", class)];
        value(
            &m,
            &sample("ortserve_request_duration_seconds_count", model, &labels),
        )
    };
    assert_eq!(duration("linear", "torchserve", "2xx"), 3.0);
    assert_eq!(duration("linear", "torchserve", "4xx"), 2.0);
    assert_eq!(duration("linear", "kserve_v2", "2xx"), 1.0);
    assert_eq!(duration("slow", "torchserve", "2xx"), 3.0);
    assert_eq!(duration("slow", "torchserve", "5xx"), 1.0);
    assert_eq!(duration("hasty", "torchserve", "5xx"), 1.0);

    // Each rejection kind, once, where it happened.
    for (model, reason) in [
        ("linear", "bad_input"),
        ("linear", "too_large"),
        ("slow", "queue_full"),
        ("slow", "client_gone"),
        ("hasty", "timeout"),
    ] {
        let key = sample("ortserve_rejections_total", model, &[("reason", reason)]);
        assert_eq!(value(&m, &key), 1.0, "{key}");
    }
    let rejections: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("ortserve_rejections_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(rejections, 5.0, "{}", dump(&m));

    // linear ran four one-row batches (three TorchServe, one v2); its
    // handler pre-processed the five TorchServe bodies and post-processed three.
    let linear = |name: &str| value(&m, &sample(name, "linear", &[]));
    assert_eq!(linear("ortserve_batch_rows_count"), 4.0);
    assert_eq!(linear("ortserve_batch_rows_sum"), 4.0);
    assert_eq!(linear("ortserve_compute_seconds_count"), 4.0);
    assert_eq!(linear("ortserve_queue_wait_seconds_count"), 4.0);
    assert_eq!(linear("ortserve_preprocess_seconds_count"), 5.0);
    assert_eq!(linear("ortserve_postprocess_seconds_count"), 3.0);
    let le_one_row = sample("ortserve_batch_rows_bucket", "linear", &[("le", "1")]);
    assert_eq!(value(&m, &le_one_row), 4.0);
    // slow's queued requests waited about as long as the busy run took.
    let waited = value(&m, &sample("ortserve_queue_wait_seconds_sum", "slow", &[]));
    assert!(waited > 1.0, "slow waited {waited}s in all");

    // State gauges once idle.
    for model in ["linear", "slow", "hasty"] {
        assert_eq!(value(&m, &sample("ortserve_model_ready", model, &[])), 1.0);
        assert_eq!(
            value(&m, &sample("ortserve_workers_ready", model, &[])),
            1.0
        );
        assert_eq!(value(&m, &sample("ortserve_workers_min", model, &[])), 1.0);
        assert_eq!(value(&m, &sample("ortserve_queue_rows", model, &[])), 0.0);
        assert_eq!(
            value(&m, &sample("ortserve_requests_in_flight", model, &[])),
            0.0
        );
        assert_eq!(
            value(
                &m,
                &sample("ortserve_model_device", model, &[("device", "cpu")])
            ),
            1.0
        );
    }
}

#[tokio::test]
async fn probes_and_unknown_models_are_not_counted() {
    let store = Store::new();
    store.dir_model("linear", "linear", Some("minWorkers: 1\n"));
    let server = Server::healthy(Launch::store(&store, "all").env("RUST_LOG", "info")).await;
    for path in [
        "/ping",
        "/v2/health/ready",
        "/v1/models/linear",
        "/v2/models/linear/ready",
    ] {
        assert_eq!(server.get(path).await.status(), 200, "{path}");
    }
    assert_eq!(
        status(&server, "/predictions/nothing", LINEAR_ROW).await,
        404
    );
    let m = server.metrics().await;
    let counted =
        |k: &str| k.starts_with("ts_inference_requests_total") || k.contains("request_duration");
    assert!(
        m.iter().all(|(k, v)| !counted(k) || *v == 0.0),
        "{}",
        dump(&m)
    );
    // At info, one access line per request, and none for probes. The log
    // reaches this process through a pipe, so wait for the line first.
    server.wait_for_log("path=/predictions/nothing", Duration::from_secs(10));
    let log = server.log();
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ortserve::access"))
        .collect();
    assert_eq!(access.len(), 1, "{log}");
    assert!(
        access[0].contains("path=/predictions/nothing status=404"),
        "{log}"
    );
}

#[tokio::test]
async fn metrics_can_move_to_the_inference_port_take_buckets_or_be_off() {
    let store = Store::new();
    store.dir_model("linear", "linear", Some("minWorkers: 1\n"));

    let launch = Launch::store(&store, "all")
        .property("metrics_on_inference_port=true")
        .property("metrics_latency_buckets=0.5, 1");
    let server = Server::healthy(launch).await;
    assert_eq!(
        status(&server, "/predictions/linear", LINEAR_ROW).await,
        200
    );
    let response = server.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let m = parse_metrics(&response.text().await.unwrap());
    let bucket = |le: &str| sample("ortserve_compute_seconds_bucket", "linear", &[("le", le)]);
    assert_eq!(value(&m, &bucket("0.5")), 1.0);
    assert_eq!(value(&m, &bucket("+Inf")), 1.0);
    assert!(!m.contains_key(&bucket("0.0005")), "{}", dump(&m));
    drop(server);

    // Off (TorchServe's enable_metrics_api): no listener, no route.
    let server =
        Server::healthy(Launch::store(&store, "all").property("enable_metrics_api=false")).await;
    assert_eq!(
        status(&server, "/predictions/linear", LINEAR_ROW).await,
        200
    );
    assert_eq!(server.get("/metrics").await.status(), 404);
    assert!(
        !server.log().contains("Metrics API listening"),
        "{}",
        server.log()
    );
    drop(server);

    let (code, output) = run_to_exit(
        Launch::store(&store, "all").property("metrics_batch_buckets=8,4"),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("metrics_batch_buckets=8,4: expected comma-separated positive numbers in increasing order"),
        "{output}"
    );
}

#[tokio::test]
async fn config_reloads_are_counted_applied_and_rejected() {
    let store = Store::new();
    store.dir_model("linear", "linear", None);
    let declaration = "source: linear\nminWorkers: 1\nmaxWorkers: 1\n";
    let mut volume = ConfigMapVolume::new(&[("linear.yaml", declaration)]);
    let server = Server::healthy(Launch::declared(&store, &volume)).await;
    let reloads = |result: &str| format!("ortserve_config_reloads_total{{result=\"{result}\"}}");
    // At 0 from the start, so that a dashboard's increase() sees the first reload.
    let at_start = server.metrics().await;
    assert_eq!(value(&at_start, &reloads("applied")), 0.0);
    assert_eq!(value(&at_start, &reloads("rejected")), 0.0);
    // What runs: this build and the ONNX Runtime `make setup` installs.
    let build = format!(
        "ortserve_build_info{{onnxruntime=\"1.32.0\",revision=\"{}\",version=\"{}\"}}",
        env!("ORTSERVE_GIT_REVISION"),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&at_start, &build), 1.0, "{}", dump(&at_start));

    volume.update(&[(
        "linear.yaml",
        "source: linear\nminWorkers: 1\nmaxWorkers: 2\n",
    )]);
    eventually(Duration::from_secs(20), "the retune is counted", || async {
        server.metrics().await.get(&reloads("applied")) == Some(&1.0)
    })
    .await;
    volume.update(&[("linear.yaml", "source: linear\nminWorkers: many\n")]);
    eventually(
        Duration::from_secs(20),
        "the bad file is counted",
        || async { server.metrics().await.get(&reloads("rejected")) == Some(&1.0) },
    )
    .await;
    assert_eq!(value(&server.metrics().await, &reloads("applied")), 1.0);
}

#[tokio::test]
async fn prometheus_mode_adds_torchserve_frontend_counters_in_its_format() {
    let store = Store::new();
    store.dir_model("linear", "linear", Some("minWorkers: 1\n"));
    let launch = Launch::store(&store, "all")
        .property("metrics_mode=prometheus")
        .env("HOSTNAME", "pod-7");
    let server = Server::healthy(launch).await;
    let (succeeded, missing) = (3, 2);
    for _ in 0..succeeded {
        assert_eq!(
            status(&server, "/predictions/linear", LINEAR_ROW).await,
            200
        );
    }
    assert_eq!(
        status(&server, "/predictions/nothing", LINEAR_ROW).await,
        404
    );
    assert_eq!(server.get("/v2/foo").await.status(), 404);
    let text = scrape(&server).await;
    for line in [
        format!(r#"Requests2XX{{Level="Host",Hostname="pod-7",}} {succeeded}.0"#),
        format!(r#"Requests4XX{{Level="Host",Hostname="pod-7",}} {missing}.0"#),
        r#"Requests5XX{Level="Host",Hostname="pod-7",} 0.0"#.to_string(),
        "# TYPE Requests2XX counter".to_string(),
        format!(
            r#"ts_inference_requests_total{{model_name="linear",model_version="1.0",hostname="pod-7",}} {succeeded}.0"#
        ),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line} in:\n{text}"
        );
    }
    assert!(matches_postman_check(&text), "{text}");
    // Prometheus still reads every sample, in both formats.
    let m = parse_metrics(&text);
    assert_eq!(
        value(&m, &sample("ortserve_compute_seconds_count", "linear", &[])),
        3.0
    );
    drop(server);

    // TorchServe's default, `log`: today's text, without the frontend counters.
    let launch = Launch::store(&store, "all").property("metrics_mode=log");
    let server = Server::healthy(launch).await;
    assert_eq!(
        status(&server, "/predictions/linear", LINEAR_ROW).await,
        200
    );
    let text = scrape(&server).await;
    assert!(!text.contains("Requests2XX"), "{text}");
    assert!(!matches_postman_check(&text), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("ts_inference_requests_total{hostname=") && l.ends_with("} 1")),
        "{text}"
    );
}

async fn scrape(server: &Server) -> String {
    let response = reqwest::get(server.metrics_url()).await.unwrap();
    response.text().await.unwrap()
}
