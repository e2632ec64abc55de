//! Token authorization over real HTTP: every protocol and listener with no
//! key, the wrong scope's key and the right one; probes and scrapes open
//! (or closed when asked); a rotated key file taking effect without a
//! restart; TorchServe's generated `key_file.json`; keys never logged.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

const REFUSED: &str =
    "Token Authorization failed. Token either incorrect, expired, or not provided correctly";
const LINEAR: &str = "[[1, 2, 3, 4]]";

fn key_file(dir: &std::path::Path, inference: &str, management: &str) -> std::path::PathBuf {
    let path = dir.join("keys.json");
    let body = json!({
        "management": {"key": management, "expiration time": "2030-01-01T00:00:00Z"},
        "inference": {"key": inference},
        "API": {"key": "api-key-unused"},
    });
    // Written whole then renamed, as kubelet swaps a Secret's files.
    let staging = dir.join("keys.json.new");
    std::fs::write(&staging, body.to_string()).unwrap();
    std::fs::rename(staging, &path).unwrap();
    path
}

/// A server whose keys come from a file in `dir`, and its model store.
fn server_with_keys(dir: &std::path::Path, extra: &[&str]) -> (Server, Store) {
    let store = Store::new();
    store.dir_model("linear", "linear", Some("minWorkers: 1\nmaxWorkers: 1\n"));
    let keys = key_file(dir, "inference-key-1", "management-key-1");
    let mut launch = Launch::store(&store, "all")
        .arg("--token-key-file")
        .arg(keys.to_str().unwrap());
    for line in extra {
        launch = launch.property(line);
    }
    (Server::start(launch), store)
}

/// Sends `method path` with `key` (if any) to `base`; status, headers, body.
async fn send(
    server: &Server,
    base: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = server.client.request(method, format!("{base}{path}"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if path.contains("infer") {
        request = request
            .body(r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#);
    } else if path.contains(":predict") {
        request = request.body(r#"{"instances": [[1, 2, 3, 4]]}"#);
    } else if path.starts_with("/predictions") || path.starts_with("/explanations") {
        request = request.body(LINEAR);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

/// The status of a prediction on `linear` with `key`.
async fn predict_with(server: &Server, key: Option<&str>) -> u16 {
    send(server, &server.base, "POST", "/predictions/linear", key)
        .await
        .0
}

fn torchserve_refusal() -> Value {
    json!({"code": 400, "type": "InvalidKeyException", "message": REFUSED})
}

#[tokio::test]
async fn every_protocol_and_listener_needs_its_scopes_key() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _store) = server_with_keys(dir.path(), &[]);
    let inference = server.base.clone();
    let management = server.management_url();
    eventually(Duration::from_secs(60), "healthy", || async {
        server.get("/ping").await.status() == 200
    })
    .await;

    let torchserve_routes = [
        ("POST", "/predictions/linear"),
        ("POST", "/explanations/linear"),
    ];
    for (method, path) in torchserve_routes {
        for key in [None, Some("wrong"), Some("management-key-1")] {
            let (status, _, body) = send(&server, &inference, method, path, key).await;
            assert_eq!(status, 400, "{method} {path} with {key:?}");
            assert_eq!(
                serde_json::from_str::<Value>(&body).unwrap(),
                torchserve_refusal()
            );
        }
        let (status, _, body) =
            send(&server, &inference, method, path, Some("inference-key-1")).await;
        assert_eq!(status, 200, "{method} {path}: {body}");
    }
    for path in ["/v1/models/linear:predict", "/v2/models/linear/infer"] {
        for key in [None, Some("management-key-1")] {
            let (status, headers, body) = send(&server, &inference, "POST", path, key).await;
            assert_eq!(
                (status, body.as_str()),
                (401, json!({"error": REFUSED}).to_string().as_str()),
                "{path}"
            );
            assert_eq!(headers["www-authenticate"], "Bearer");
        }
        let (status, _, body) =
            send(&server, &inference, "POST", path, Some("inference-key-1")).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    for key in [None, Some("inference-key-1")] {
        let (status, _, body) = send(&server, &management, "GET", "/models", key).await;
        assert_eq!(status, 400, "{key:?}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            torchserve_refusal()
        );
    }
    let (status, _, _) = send(
        &server,
        &management,
        "GET",
        "/models",
        Some("management-key-1"),
    )
    .await;
    assert_eq!(status, 200);

    // Probes and scrapes stay open.
    for path in [
        "/ping",
        "/v2/health/ready",
        "/v2/models/linear/ready",
        "/v1/models/linear",
    ] {
        let (status, _, body) = send(&server, &inference, "GET", path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let scrape = server
        .client
        .get(server.metrics_url())
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.status(), 200);
    let log = server.log();
    for key in ["inference-key-1", "management-key-1", "api-key-unused"] {
        assert!(!log.contains(key), "a key reached the log");
    }
}

#[tokio::test]
async fn a_rotated_key_file_takes_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _store) = server_with_keys(dir.path(), &[]);
    eventually(
        Duration::from_secs(60),
        "served with the first key",
        || async { predict_with(&server, Some("inference-key-1")).await == 200 },
    )
    .await;
    key_file(dir.path(), "inference-key-2", "management-key-2");
    eventually(
        Duration::from_secs(20),
        "the second key in force",
        || async { predict_with(&server, Some("inference-key-2")).await == 200 },
    )
    .await;
    let status = predict_with(&server, Some("inference-key-1")).await;
    assert_eq!(status, 400, "the old key no longer works");
    // A broken file keeps the keys in force.
    std::fs::write(dir.path().join("keys.json"), "{not json").unwrap();
    server.wait_for_log(
        "token key file unreadable; the keys in force stay",
        Duration::from_secs(20),
    );
    let status = predict_with(&server, Some("inference-key-2")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn probes_need_the_key_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _store) = server_with_keys(dir.path(), &["token_open_probes=false"]);
    let base = server.base.clone();
    eventually(Duration::from_secs(60), "healthy with the key", || async {
        send(&server, &base, "GET", "/ping", Some("inference-key-1"))
            .await
            .0
            == 200
    })
    .await;
    let (status, _, body) = send(&server, &base, "GET", "/ping", None).await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (400, torchserve_refusal())
    );
    let (status, _, _) = send(&server, &base, "GET", "/v2/health/ready", None).await;
    assert_eq!(status, 401);
}

/// `disable_token_authorization=false` with no key file: TorchServe's own
/// `key_file.json` in the working directory, readable by its owner only.
#[tokio::test]
async fn asking_for_tokens_without_a_key_file_writes_torchserve_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new();
    store.dir_model("linear", "linear", Some("minWorkers: 1\nmaxWorkers: 1\n"));
    let mut launch = Launch::store(&store, "all").property("disable_token_authorization=false");
    launch.working_dir = Some(dir.path().to_path_buf());
    let server = Server::start(launch);
    let file = dir.path().join("key_file.json");
    eventually(Duration::from_secs(20), "key_file.json written", || async {
        file.exists()
    })
    .await;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let keys: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let inference = keys["inference"]["key"].as_str().unwrap().to_string();
    assert_eq!(inference.len(), 32);
    assert_ne!(inference, keys["management"]["key"].as_str().unwrap());
    eventually(
        Duration::from_secs(60),
        "served with the generated key",
        || async { predict_with(&server, Some(&inference)).await == 200 },
    )
    .await;
    assert_eq!(predict_with(&server, None).await, 400);
    assert!(
        !server.log().contains(&inference),
        "the generated key reached the log"
    );
}

/// Every route of every listener: without a key a refusal in the route's
/// protocol's shape, with the wrong scope's key the same, with its own key
/// anything but a refusal.
#[tokio::test]
async fn every_route_checks_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _store) = server_with_keys(dir.path(), &["enable_model_api=true"]);
    eventually(Duration::from_secs(60), "healthy", || async {
        server.get("/ping").await.status() == 200
    })
    .await;
    let (inference, management) = (server.base.clone(), server.management_url());
    let inference_key = "inference-key-1";
    let management_key = "management-key-1";
    let routes = [
        (&inference, "OPTIONS", "/", inference_key),
        (&inference, "GET", "/api-description", inference_key),
        (&inference, "POST", "/predictions/linear/1.0", inference_key),
        (
            &inference,
            "POST",
            "/explanations/linear/1.0",
            inference_key,
        ),
        (
            &inference,
            "POST",
            "/v1/models/linear:explain",
            inference_key,
        ),
        (&inference, "GET", "/v2/models/linear", inference_key),
        (
            &inference,
            "GET",
            "/v2/models/linear/versions/1.0",
            inference_key,
        ),
        (&inference, "GET", "/v2/models/linear/config", inference_key),
        (&inference, "GET", "/v2/models/stats", inference_key),
        (
            &inference,
            "POST",
            "/v2/models/linear/versions/1.0/infer",
            inference_key,
        ),
        (
            &inference,
            "POST",
            "/v2/models/linear/explain",
            inference_key,
        ),
        (&inference, "POST", "/v2/repository/index", management_key),
        (&inference, "POST", "/v1/models/linear/load", management_key),
        (
            &inference,
            "POST",
            "/v2/repository/models/linear/load",
            management_key,
        ),
        (&management, "OPTIONS", "/", management_key),
        (&management, "GET", "/models", management_key),
        (&management, "GET", "/models/linear/all", management_key),
        (
            &management,
            "PUT",
            "/models/linear?min_worker=1",
            management_key,
        ),
        (
            &management,
            "PUT",
            "/models/linear/1.0/set-default",
            management_key,
        ),
        (&management, "POST", "/models?url=linear", management_key),
    ];
    let refused = |status: u16, body: &str| {
        (status == 400 || status == 401) && body.contains("Token Authorization failed")
    };
    for (base, method, path, key) in routes {
        let other = match key == inference_key {
            true => management_key,
            false => inference_key,
        };
        for wrong in [None, Some(other)] {
            let (status, _, body) = send(&server, base, method, path, wrong).await;
            assert!(
                refused(status, &body),
                "{method} {path} with {wrong:?}: {status} {body}"
            );
            let kserve = path.starts_with("/v1") || path.starts_with("/v2");
            assert_eq!(status, if kserve { 401 } else { 400 }, "{method} {path}");
        }
        let (status, _, body) = send(&server, base, method, path, Some(key)).await;
        assert!(
            !refused(status, &body),
            "{method} {path} with its key: {status} {body}"
        );
    }
}
