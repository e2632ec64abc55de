//! ortserve in a cluster, against a loopback fake Kubernetes API server (no
//! API server runs on these machines). The fake answers with JSON in the
//! shape the real API serves — a `ConfigMapList`, a watch stream of
//! `{"type", "object"}` lines, created `events.k8s.io/v1` Events — written
//! from the API reference, not recorded from a live cluster. The client side
//! is the real `kube` crate inside the real binary, configured through
//! `KUBECONFIG` and the downward-API variables a Pod would have.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, patch, post};
use serde_json::{Value, json};
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(20);

/// What the fake API server saw and what it serves.
struct FakeApi {
    /// Every Event created or patched, as sent.
    events: Mutex<Vec<Value>>,
    /// Query strings of ConfigMap list and watch calls.
    configmap_queries: Mutex<Vec<HashMap<String, String>>>,
    configmaps: Value,
    watch_lines: broadcast::Sender<String>,
}

fn json_reply(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn create_event(
    State(api): State<Arc<FakeApi>>,
    Path(namespace): Path<String>,
    body: Bytes,
) -> Response {
    let mut event: Value = serde_json::from_slice(&body).unwrap();
    event["metadata"]["namespace"] = json!(namespace);
    api.events.lock().unwrap().push(event.clone());
    json_reply(StatusCode::CREATED, &event)
}

async fn patch_event(
    State(api): State<Arc<FakeApi>>,
    Path((_, _)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let event: Value = serde_json::from_slice(&body).unwrap();
    api.events.lock().unwrap().push(event.clone());
    json_reply(StatusCode::OK, &event)
}

async fn list_or_watch_configmaps(
    State(api): State<Arc<FakeApi>>,
    Path(_): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    api.configmap_queries.lock().unwrap().push(query.clone());
    if query.get("watch").map(String::as_str) != Some("true") {
        return json_reply(StatusCode::OK, &api.configmaps);
    }
    let lines = api.watch_lines.subscribe();
    let stream = futures_util::stream::unfold(lines, |mut lines| async move {
        let line = lines.recv().await.ok()?;
        Some((
            Ok::<_, std::convert::Infallible>(Bytes::from(line + "\n")),
            lines,
        ))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn configmap(data: Value, resource_version: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "models",
            "namespace": "models",
            "uid": "6f1c2f9e-0c4b-4b8e-9d53-0d8a1e7a2b10",
            "resourceVersion": resource_version,
            "creationTimestamp": "2026-11-29T10:00:00Z",
            "labels": {"app": "ortserve"},
        },
        "data": data,
    })
}

/// Starts the fake API server; returns it, its kubeconfig and a temp dir
/// that must outlive the test.
async fn fake_api(configmaps: Value) -> (Arc<FakeApi>, tempfile::TempDir) {
    let (watch_lines, _) = broadcast::channel(16);
    let api = Arc::new(FakeApi {
        events: Mutex::default(),
        configmap_queries: Mutex::default(),
        configmaps,
        watch_lines,
    });
    let app = Router::new()
        .route(
            "/apis/events.k8s.io/v1/namespaces/{ns}/events",
            post(create_event),
        )
        .route(
            "/apis/events.k8s.io/v1/namespaces/{ns}/events/{name}",
            patch(patch_event),
        )
        .route(
            "/api/v1/namespaces/{ns}/configmaps",
            get(list_or_watch_configmaps),
        )
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{address}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: models\n\
         current-context: fake\nusers:\n- name: fake\n  user:\n    token: not-a-real-token\n"
    );
    std::fs::write(dir.path().join("kubeconfig"), kubeconfig).unwrap();
    (api, dir)
}

/// The Pod's downward-API variables and the kubeconfig.
fn in_cluster(launch: Launch, kube_dir: &tempfile::TempDir) -> Launch {
    launch
        .env(
            "KUBECONFIG",
            &kube_dir.path().join("kubeconfig").display().to_string(),
        )
        .env("POD_NAME", "ortserve-0")
        .env("POD_NAMESPACE", "models")
        .env("POD_UID", "0b7c4d5e-6f70-4a8b-9c0d-1e2f3a4b5c6d")
}

fn reasons(api: &FakeApi) -> Vec<String> {
    api.events
        .lock()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn event_with(api: &FakeApi, reason: &str) -> Option<Value> {
    api.events
        .lock()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == reason)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_are_recorded_on_the_pod() {
    let (api, kube_dir) = fake_api(json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {"resourceVersion": "1"}, "items": []})).await;
    let store = Store::new();
    store
        .dir_model("linear", "linear", Some("minWorkers: 1\n"))
        .dir_model("zipmap", "zipmap", None);
    let mut volume = ConfigMapVolume::new(&[("declared.yaml", "source: linear\nname: declared\n")]);
    let launch = in_cluster(Launch::store(&store, "linear,zipmap"), &kube_dir)
        .arg("--model-config-dir")
        .arg(&volume.path().display().to_string())
        .arg("--drain-delay")
        .arg("0");
    let server = Server::start(launch);
    server.wait_settled().await;
    volume.update(&[(
        "declared.yaml",
        "source: linear\nname: declared\nminWorker: 3\n",
    )]);
    server.wait_for_log("model declaration rejected", WAIT);
    server.signal("TERM");
    eventually(WAIT, "the four kinds of event", || async {
        let seen = reasons(&api);
        [
            "ModelLoaded",
            "ModelLoadFailed",
            "ConfigRejected",
            "Draining",
        ]
        .iter()
        .all(|r| seen.iter().any(|s| s == r))
    })
    .await;

    let loaded = event_with(&api, "ModelLoaded").unwrap();
    assert_eq!(loaded["type"], "Normal");
    assert_eq!(loaded["action"], "Load");
    assert_eq!(loaded["reportingController"], "ortserve");
    assert_eq!(loaded["reportingInstance"], "ortserve-0");
    assert_eq!(loaded["metadata"]["namespace"], "models");
    assert_eq!(
        (
            &loaded["regarding"]["kind"],
            &loaded["regarding"]["name"],
            &loaded["regarding"]["namespace"],
            &loaded["regarding"]["uid"]
        ),
        (
            &json!("Pod"),
            &json!("ortserve-0"),
            &json!("models"),
            &json!("0b7c4d5e-6f70-4a8b-9c0d-1e2f3a4b5c6d")
        )
    );
    let failed = event_with(&api, "ModelLoadFailed").unwrap();
    assert_eq!(failed["type"], "Warning");
    let note = failed["note"].as_str().unwrap();
    assert!(
        note.starts_with("model zipmap version 1.0 failed to load"),
        "{note}"
    );
    let rejected = event_with(&api, "ConfigRejected").unwrap();
    let note = rejected["note"].as_str().unwrap();
    assert!(
        note.contains("declared.yaml") && note.contains("minWorker: unknown key"),
        "{note}"
    );
    assert_eq!(event_with(&api, "Draining").unwrap()["type"], "Normal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmaps_declare_models_through_the_api() {
    let first = configmap(
        json!({"linear.yaml": "source: linear\nminWorkers: 1\n"}),
        "10",
    );
    let list = json!({
        "apiVersion": "v1",
        "kind": "ConfigMapList",
        "metadata": {"resourceVersion": "10"},
        "items": [first],
    });
    let (api, kube_dir) = fake_api(list).await;
    let store = Store::new();
    store
        .dir_model("linear", "linear", None)
        .dir_model("region", "region_conv", None);
    let launch = Launch::default()
        .arg("--model-store")
        .arg(&store.path().display().to_string())
        .arg("--configmap-selector")
        .arg("app=ortserve");
    let server = Server::healthy(in_cluster(launch, &kube_dir)).await;
    let (status, answer) = server.predict("/predictions/linear", "[1, 2, 3, 4]").await;
    assert_eq!(status, 200, "{answer}");
    assert_close(&answer, &linear_expected(&[1.0, 2.0, 3.0, 4.0]), 1e-5);
    let queries = api.configmap_queries.lock().unwrap().clone();
    assert_eq!(
        queries[0].get("labelSelector").map(String::as_str),
        Some("app=ortserve")
    );

    // A watch event adds a key: the new model loads with no volume sync.
    eventually(WAIT, "the watch is open", || async {
        api.configmap_queries
            .lock()
            .unwrap()
            .iter()
            .any(|q| q.get("watch").map(String::as_str) == Some("true"))
    })
    .await;
    let both = configmap(
        json!({"linear.yaml": "source: linear\nminWorkers: 1\n", "region.yaml": "source: region\nminWorkers: 1\n"}),
        "11",
    );
    let line = json!({"type": "MODIFIED", "object": both}).to_string();
    api.watch_lines.send(line).unwrap();
    eventually(WAIT, "region serves", || async {
        server.get("/v1/models/region").await.status() == 200
    })
    .await;
    // Deleting the ConfigMap removes its models.
    let line = json!({"type": "DELETED", "object": configmap(json!({}), "12")}).to_string();
    api.watch_lines.send(line).unwrap();
    eventually(WAIT, "both models are gone", || async {
        server.get("/v1/models/region").await.status() == 404
            && server.get("/v1/models/linear").await.status() == 404
    })
    .await;
}

#[tokio::test]
async fn outside_a_cluster_there_is_no_kubernetes_noise() {
    let store = Store::new();
    store.dir_model("linear", "linear", None);
    let server = Server::healthy(Launch::store(&store, "all").env("POD_NAME", "")).await;
    let log = server.log();
    assert!(
        !log.contains("Kubernetes") && !log.contains("kube"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_both_mounted_and_watched_declares_each_model_once() {
    let declaration = "source: linear\nminWorkers: 1\nbatchSize: 4\n";
    let list = json!({
        "apiVersion": "v1",
        "kind": "ConfigMapList",
        "metadata": {"resourceVersion": "10"},
        "items": [configmap(json!({"linear.yaml": declaration}), "10")],
    });
    let (api, kube_dir) = fake_api(list).await;
    let store = Store::new();
    store.dir_model("linear", "linear", None);
    // The same ConfigMap, mounted as kubelet mounts it.
    let volume = ConfigMapVolume::new(&[("linear.yaml", declaration)]);
    let launch = Launch::default()
        .arg("--model-store")
        .arg(&store.path().display().to_string())
        .arg("--model-config-dir")
        .arg(&volume.path().display().to_string())
        .arg("--configmap-selector")
        .arg("app=ortserve");
    let server = Server::healthy(in_cluster(launch, &kube_dir)).await;
    let (status, answer) = server.predict("/predictions/linear", "[1, 2, 3, 4]").await;
    assert_eq!(status, 200, "{answer}");
    assert_close(&answer, &linear_expected(&[1.0, 2.0, 3.0, 4.0]), 1e-5);
    eventually(WAIT, "the watch is open", || async {
        api.configmap_queries
            .lock()
            .unwrap()
            .iter()
            .any(|q| q.get("watch").map(String::as_str) == Some("true"))
    })
    .await;
    // An edit arrives through the API first; the mounted copy lags, as
    // kubelet's sync does. The API's copy wins, with no conflict.
    let edited = configmap(
        json!({"linear.yaml": "source: linear\nminWorkers: 1\nbatchSize: 8\n"}),
        "11",
    );
    let line = json!({"type": "MODIFIED", "object": edited}).to_string();
    api.watch_lines.send(line).unwrap();
    let retuned = server.wait_for_log("settings applied in place", WAIT);
    assert!(retuned.contains("batch_size: 8"), "{retuned}");
    let log = server.log();
    assert!(!log.contains("model declaration rejected"), "{log}");
    assert!(
        !log.contains("already provides this model version"),
        "{log}"
    );
    assert!(
        !reasons(&api).iter().any(|r| r == "ConfigRejected"),
        "no ConfigRejected Event: {:?}",
        reasons(&api)
    );
    let loaded = reasons(&api).iter().filter(|r| *r == "ModelLoaded").count();
    assert_eq!(loaded, 1, "one model, loaded once: {:?}", reasons(&api));
}
