//! TorchServe's management API over real HTTP: list, describe, scale and
//! set-default on the management port, their errors, the 405 for register and
//! unregister (TorchServe's default), and one listener for both APIs when
//! the addresses are equal.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

const ONE_WORKER: &str = "minWorkers: 1\nmaxWorkers: 1\n";

/// Sends a management call; the status and the body, parsed.
async fn call(server: &Server, method: &str, path: &str) -> (u16, Value) {
    let url = format!("{}{path}", server.management_url());
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let response = server.client.request(method, url).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert!(
        text.ends_with('\n'),
        "Gson-pretty bodies end in a newline: {text:?}"
    );
    (status, serde_json::from_str(&text).unwrap())
}

fn torchserve_error(code: u16, kind: &str, message: &str) -> Value {
    json!({"code": code, "type": kind, "message": message})
}

/// Predictions on `model`, one after another until stopped; each must
/// answer 200. Stopping returns how many were answered.
struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<usize>,
}

impl Traffic {
    fn start(server: &Server, model: &str) -> Traffic {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (client, url) = (
            server.client.clone(),
            server.url(&format!("/predictions/{model}")),
        );
        let running = stop.clone();
        let task = tokio::spawn(async move {
            let mut answered = 0;
            while !running.load(std::sync::atomic::Ordering::Relaxed) {
                let response = client
                    .post(&url)
                    .body("[[1, 2, 3, 4]]")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
                answered += 1;
            }
            answered
        });
        Traffic { stop, task }
    }

    async fn stop(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

#[tokio::test]
async fn list_pages_default_versions_by_name() {
    let store = Store::new();
    for name in ["charlie", "alpha", "bravo"] {
        store.dir_model(name, "linear", Some(ONE_WORKER));
    }
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let entry = |name: &str| json!({"modelName": name, "modelUrl": name});
    let (status, body) = call(&server, "GET", "/models").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"models": [entry("alpha"), entry("bravo"), entry("charlie")]})
    );
    let (_, first) = call(&server, "GET", "/models?limit=2").await;
    assert_eq!(
        first,
        json!({"nextPageToken": "2", "models": [entry("alpha"), entry("bravo")]})
    );
    let (_, rest) = call(&server, "GET", "/models?limit=2&next_page_token=2").await;
    assert_eq!(rest, json!({"models": [entry("charlie")]}));
    let (status, body) = call(&server, "GET", "/models?limit=many").await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        torchserve_error(
            400,
            "BadRequestException",
            "limit must be a whole number; got 'many'"
        )
    );
}

#[tokio::test]
async fn describe_shows_settings_workers_and_queue() {
    let store = Store::new();
    store.dir_model(
        "linear",
        "linear",
        Some(
            "minWorkers: 1\nmaxWorkers: 2\nbatchSize: 4\nmaxBatchDelay: 50\nresponseTimeout: 30\n",
        ),
    );
    let server = Server::healthy(Launch::store(&store, "all").property("job_queue_size=40")).await;
    let (status, body) = call(&server, "GET", "/models/linear").await;
    assert_eq!(status, 200, "{body}");
    let described = &body.as_array().expect("TorchServe answers an array")[..];
    assert_eq!(described.len(), 1);
    let version = &described[0];
    for (field, want) in [
        ("modelName", json!("linear")),
        ("modelVersion", json!("1.0")),
        ("modelUrl", json!("linear")),
        ("minWorkers", json!(1)),
        ("maxWorkers", json!(2)),
        ("batchSize", json!(4)),
        ("maxBatchDelay", json!(50)),
        ("responseTimeout", json!(30)),
        ("deviceType", json!("cpu")),
        ("loadedAtStartup", json!(true)),
        (
            "jobQueueStatus",
            json!({"remainingCapacity": 40, "pendingRequests": 0}),
        ),
    ] {
        assert_eq!(version[field], want, "{field} in {version}");
    }
    assert_eq!(version["ortserve"]["state"], "Ready");
    assert_eq!(version["ortserve"]["default"], true);
    let workers = version["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{version}");
    assert_eq!(workers[0]["status"], "READY");
    assert_eq!(workers[0]["pid"], server.pid());
    let started = workers[0]["startTime"].as_str().unwrap();
    assert!(
        started.len() == 24 && started.starts_with("20") && started.ends_with('Z'),
        "{started}"
    );

    let (status, body) = call(&server, "GET", "/models/nope").await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        torchserve_error(404, "ModelNotFoundException", "Model not found: nope")
    );
    let (status, body) = call(&server, "GET", "/models/linear/9.9").await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        torchserve_error(
            404,
            "ModelVersionNotFoundException",
            "Model version: 9.9 does not exist for model: linear"
        )
    );
}

/// Two versions of `m`: 1.0 is the linear model, 2.0 another graph.
fn two_versions() -> Store {
    let store = Store::new();
    store
        .mar(
            "m_v1.mar",
            &Manifest::new("m", "1.0"),
            "linear",
            &[("model-config.yaml", ONE_WORKER.as_bytes())],
        )
        .mar(
            "m_v2.mar",
            &Manifest::new("m", "2.0"),
            "gray_mean",
            &[("model-config.yaml", ONE_WORKER.as_bytes())],
        );
    store
}

#[tokio::test]
async fn set_default_switches_the_version_that_answers() {
    let store = two_versions();
    let server = Server::healthy(Launch::store(&store, "m=m_v1.mar,m=m_v2.mar")).await;
    server.wait_versions_ready("m", &["1.0", "2.0"]).await;
    let (_, all) = call(&server, "GET", "/models/m/all").await;
    let versions: Vec<_> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["modelVersion"].clone())
        .collect();
    assert_eq!(versions, [json!("1.0"), json!("2.0")]);
    let (_, listed) = call(&server, "GET", "/models").await;
    assert_eq!(listed["models"][0]["modelUrl"], "m_v2.mar");

    let (status, body) = call(&server, "PUT", "/models/m/1.0/set-default").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status": "Default version successfully updated for model \"m\" to \"1.0\""})
    );
    let (status, answer) = server.predict("/predictions/m", "[[1, 2, 3, 4]]").await;
    assert_eq!(status, 200, "{answer}");
    assert_close(&answer[0], &linear_expected(&[1.0, 2.0, 3.0, 4.0]), 1e-5);
    let (_, described) = call(&server, "GET", "/models/m").await;
    assert_eq!(described[0]["modelVersion"], "1.0");

    let (status, body) = call(&server, "PUT", "/models/m/3.0/set-default").await;
    assert_eq!(status, 404);
    assert_eq!(body["type"], "ModelVersionNotFoundException");
}

/// A version registered beside a serving one does not take the default,
/// however high: it answers under its own path until `set-default` names
/// it, as in TorchServe (a canary before its traffic).
#[tokio::test]
async fn a_registered_version_leaves_the_default_where_it_was() {
    let store = two_versions();
    let launch = Launch::store(&store, "m=m_v1.mar").property("enable_model_api=true");
    let server = Server::healthy(launch).await;
    let (status, body) = call(&server, "POST", "/models?url=m_v2.mar&synchronous=true").await;
    assert_eq!(status, 200, "{body}");
    let (_, described) = call(&server, "GET", "/models/m").await;
    assert_eq!(described[0]["modelVersion"], "1.0");
    let (status, answer) = server.predict("/predictions/m", "[[1, 2, 3, 4]]").await;
    assert_eq!(status, 200, "{answer}");
    assert_close(&answer[0], &linear_expected(&[1.0, 2.0, 3.0, 4.0]), 1e-5);
    let (status, _) = call(&server, "PUT", "/models/m/2.0/set-default").await;
    assert_eq!(status, 200);
    let (_, described) = call(&server, "GET", "/models/m").await;
    assert_eq!(described[0]["modelVersion"], "2.0");
}

/// A synchronous scale-down answers once the surplus workers are gone, not
/// while they wait out their idle timeout (60 s) with nothing to do.
#[tokio::test]
async fn a_synchronous_scale_down_retires_idle_workers_before_it_answers() {
    let store = Store::new();
    store.dir_model("linear", "linear", Some("minWorkers: 3\nmaxWorkers: 3\n"));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let workers = || async {
        let (_, described) = call(&server, "GET", "/models/linear").await;
        described[0]["workers"].as_array().unwrap().len()
    };
    assert_eq!(workers().await, 3);
    let started = std::time::Instant::now();
    let path = "/models/linear?min_worker=1&max_worker=1&synchronous=true";
    let (status, body) = call(&server, "PUT", path).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"status": "Workers scaled to 1 for model: linear"})
        )
    );
    eventually(Duration::from_secs(5), "one worker left", || async {
        workers().await == 1
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let (status, answer) = server
        .predict("/predictions/linear", "[[1, 2, 3, 4]]")
        .await;
    assert_eq!(status, 200, "{answer}");
}

/// Workers grow and shrink in place while predictions keep being answered.
#[tokio::test]
async fn scaling_changes_workers_in_place_without_failing_requests() {
    let store = Store::new();
    store.dir_model("linear", "linear", Some(ONE_WORKER));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let traffic = Traffic::start(&server, "linear");

    let (status, body) = call(
        &server,
        "PUT",
        "/models/linear?min_worker=3&max_worker=4&synchronous=true",
    )
    .await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"status": "Workers scaled to 3 for model: linear"})
        )
    );
    let (_, described) = call(&server, "GET", "/models/linear").await;
    assert_eq!(described[0]["minWorkers"], 3);
    assert_eq!(described[0]["maxWorkers"], 4);
    let ready = |d: &Value| {
        d[0]["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["status"] == "READY")
            .count()
    };
    assert!(ready(&described) >= 3, "{described}");

    let (status, body) = call(
        &server,
        "PUT",
        "/models/linear/1.0?min_worker=1&max_worker=1",
    )
    .await;
    assert_eq!(
        (status, body),
        (202, json!({"status": "Processing worker updates..."}))
    );
    eventually(
        Duration::from_secs(30),
        "workers retire down to 1",
        || async {
            let (_, described) = call(&server, "GET", "/models/linear").await;
            described[0]["workers"].as_array().unwrap().len() == 1
        },
    )
    .await;
    assert!(traffic.stop().await > 0);
    let (status, ping) = status_json(server.get("/ping").await).await;
    assert_eq!(status, 200, "{ping}");
}

#[tokio::test]
async fn scaling_refuses_bad_parameters_naming_them() {
    let store = Store::new();
    store.dir_model("linear", "linear", Some(ONE_WORKER));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let bad = |message: &str| torchserve_error(400, "BadRequestException", message);
    for (query, message) in [
        (
            "min_worker=2&max_worker=1",
            "max_worker cannot be less than min_worker.".to_string(),
        ),
        (
            "min_worker=0",
            "min_worker must be a whole number from 1 to 1024; got '0'".into(),
        ),
        (
            "min_worker=100000",
            "min_worker must be a whole number from 1 to 1024; got '100000'".into(),
        ),
        (
            "max_worker=-1",
            "max_worker must be a whole number from 1 to 1024; got '-1'".into(),
        ),
        (
            "synchronous=maybe",
            "synchronous must be true or false; got 'maybe'".into(),
        ),
    ] {
        let (status, body) = call(&server, "PUT", &format!("/models/linear?{query}")).await;
        assert_eq!((status, body), (400, bad(&message)), "{query}");
    }
    let (status, body) = call(&server, "PUT", "/models/nope?min_worker=1").await;
    assert_eq!(
        (status, body),
        (
            404,
            torchserve_error(404, "ModelNotFoundException", "Model not found: nope")
        )
    );
    let (_, described) = call(&server, "GET", "/models/linear").await;
    assert_eq!(
        described[0]["minWorkers"], 1,
        "a refused scale changes nothing"
    );
}

#[tokio::test]
async fn register_and_unregister_answer_405_and_options_describes_the_api() {
    let store = Store::new();
    store.dir_model("linear", "linear", Some(ONE_WORKER));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let not_allowed = torchserve_error(
        405,
        "MethodNotAllowedException",
        "Requested method is not allowed, please refer to API document. Registering and \
         unregistering models is off: start ortserve with enable_model_api=true \
         (or --enable-model-api)",
    );
    for (method, path) in [
        ("POST", "/models?url=linear"),
        ("DELETE", "/models/linear"),
        ("DELETE", "/models/linear/1.0"),
    ] {
        let (status, body) = call(&server, method, path).await;
        assert_eq!((status, &body), (405, &not_allowed), "{method} {path}");
    }
    let (status, body) = call(&server, "GET", "/nowhere").await;
    assert_eq!(
        (status, body["type"].clone()),
        (404, json!("ResourceNotFoundException"))
    );
    let (status, description) = call(&server, "OPTIONS", "/").await;
    assert_eq!(status, 200);
    assert_eq!(description["openapi"], "3.0.1");
    let paths: Vec<&String> = description["paths"].as_object().unwrap().keys().collect();
    for path in [
        "/models",
        "/models/{model_name}",
        "/models/{model_name}/{model_version}/set-default",
    ] {
        assert!(paths.contains(&&path.to_string()), "{path} in {paths:?}");
    }
    // The model is untouched.
    let (_, described) = call(&server, "GET", "/models/linear").await;
    assert_eq!(described[0]["ortserve"]["state"], "Ready");
}

/// `inference_address` = `management_address` (KServe's TorchServe runtime
/// sets both to one port): one listener serves both APIs.
#[tokio::test]
async fn equal_addresses_share_one_listener() {
    let store = Store::new();
    store.dir_model("linear", "linear", Some(ONE_WORKER));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("http://127.0.0.1:{port}");
    let launch = Launch::store(&store, "all")
        .property(&format!("inference_address={address}"))
        .env("ORTSERVE_MANAGEMENT_ADDRESS", &address);
    let server = Server::healthy(launch).await;
    let (status, body) = status_json(server.get("/models").await).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"models": [{"modelName": "linear", "modelUrl": "linear"}]})
    );
    assert!(
        !server.log().contains("Management API listening"),
        "{}",
        server.log()
    );
    // OPTIONS / keeps describing the inference API there.
    let description = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/"))
        .send()
        .await
        .unwrap();
    let description: Value = description.json().await.unwrap();
    assert!(description["paths"]["/predictions/{model_name}"].is_object());
}

/// A server with the model API enabled, serving `linear` from a store that
/// also holds `other` (not loaded) and a broken entry.
async fn model_api_server(store: &Store, extra: &[&str]) -> Server {
    store
        .dir_model("linear", "linear", Some(ONE_WORKER))
        .dir_model("other", "linear", Some(ONE_WORKER))
        .file("broken/model.onnx", b"not a graph");
    let mut launch = Launch::store(store, "linear").property("enable_model_api=true");
    for line in extra {
        launch = launch.property(line);
    }
    Server::healthy(launch).await
}

#[tokio::test]
async fn register_serves_a_store_entry_and_unregister_removes_it() {
    let store = Store::new();
    let server = model_api_server(&store, &[]).await;
    let (status, body) = call(&server, "POST", "/models?url=other&runtime=bogus").await;
    assert_eq!(
        (status, body),
        (
            400,
            torchserve_error(
                400,
                "BadRequestException",
                "Invalid RuntimeType value: bogus"
            )
        )
    );
    let path = "/models?url=other&initial_workers=2&runtime=python";
    let (status, body) = call(&server, "POST", path).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"status": "Model \"other\" Version: 1.0 registered with 2 initial workers"})
        )
    );
    let (status, answer) = server.predict("/predictions/other", "[[1, 2, 3, 4]]").await;
    assert_eq!(status, 200, "{answer}");
    assert_close(&answer[0], &linear_expected(&[1.0, 2.0, 3.0, 4.0]), 1e-5);
    let (_, described) = call(&server, "GET", "/models/other").await;
    assert_eq!(described[0]["minWorkers"], 2);
    assert_eq!(described[0]["loadedAtStartup"], false);
    assert_eq!(status_json(server.get("/ping").await).await.0, 200);

    let (status, body) = call(&server, "POST", "/models?url=other").await;
    assert_eq!(
        (status, body),
        (
            409,
            torchserve_error(
                409,
                "ConflictStatusException",
                "Model version 1.0 is already registered for model other"
            )
        )
    );
    // Under another name, the same entry is another model.
    let (status, _) = call(
        &server,
        "POST",
        "/models?url=other&model_name=twin&synchronous=false",
    )
    .await;
    assert_eq!(status, 202);
    eventually(Duration::from_secs(30), "twin serves", || async {
        server
            .predict("/predictions/twin", "[[1, 2, 3, 4]]")
            .await
            .0
            == 200
    })
    .await;

    let (status, body) = call(&server, "DELETE", "/models/other").await;
    assert_eq!(
        (status, body),
        (200, json!({"status": "Model \"other\" unregistered"}))
    );
    let (status, _) = server.predict("/predictions/other", "[[1, 2, 3, 4]]").await;
    assert_eq!(status, 404);
    let (_, listed) = call(&server, "GET", "/models").await;
    let names: Vec<&str> = listed["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["modelName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["linear", "twin"]);
    let (status, body) = call(&server, "DELETE", "/models/other").await;
    assert_eq!(
        (status, body["message"].clone()),
        (404, json!("Model not found: other"))
    );
}

#[tokio::test]
async fn register_refuses_urls_that_would_download_or_escape_and_leaves_nothing() {
    let store = Store::new();
    let server = model_api_server(&store, &[]).await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir(outside.path().join("m")).unwrap();
    std::fs::write(outside.path().join("m/model.onnx"), model_bytes("linear")).unwrap();
    let outside_model = outside.path().join("m").canonicalize().unwrap();
    let cases = [
        ("", "Parameter url is required.".to_string()),
        ("https://example.com/squeezenet.mar", "url 'https://example.com/squeezenet.mar': ortserve never downloads models, so https URLs are refused; copy the archive into the model store and register it by file name".into()),
        ("s3://bucket/m.mar", "url 's3://bucket/m.mar': ortserve never downloads models, so s3 URLs are refused; copy the archive into the model store and register it by file name".into()),
        ("../other", "url '../other': Relative path is not allowed in url: name a model store entry by its file or directory name, or give an absolute path".into()),
        ("/etc/../etc/passwd", "url '/etc/../etc/passwd': '..' is not allowed in a path".into()),
        (
            outside_model.to_str().unwrap(),
            format!("url '{}': the path is outside the model store and allowed_urls does not admit it; add a pattern for it to allowed_urls or copy it into the model store", outside_model.display()),
        ),
        ("other&initial_workers=0", "initial_workers must be a whole number from 1 to 1024; got '0'".into()),
        ("other&model_name=9lives", "model_name '9lives': '9lives' is not a valid model name: it must start with a letter".into()),
    ];
    for (url, message) in cases {
        let (status, body) = call(&server, "POST", &format!("/models?url={url}")).await;
        assert_eq!(status, 400, "{url}: {body}");
        let got = body["message"].as_str().unwrap();
        assert!(
            got.starts_with(&message),
            "{url}:\n got {got}\nwant {message}"
        );
    }
    // A graph that cannot load: a 400 naming the kind, and no trace of it.
    let (status, body) = call(&server, "POST", "/models?url=broken").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("model \"broken\" version 1.0 cannot load (bad_graph)"),
        "{body}"
    );
    let (status, _) = call(&server, "GET", "/models/broken").await;
    assert_eq!(status, 404);
    let (_, listed) = call(&server, "GET", "/models").await;
    assert_eq!(
        listed,
        json!({"models": [{"modelName": "linear", "modelUrl": "linear"}]})
    );
    assert_eq!(status_json(server.get("/ping").await).await.0, 200);
}

#[tokio::test]
async fn allowed_urls_admit_absolute_paths_outside_the_store() {
    let outside = tempfile::tempdir().unwrap();
    let root = outside.path().canonicalize().unwrap();
    std::fs::create_dir(root.join("m")).unwrap();
    std::fs::write(root.join("m/model.onnx"), model_bytes("linear")).unwrap();
    let store = Store::new();
    let pattern = format!("allowed_urls=file://{}/.*", root.display());
    let server = model_api_server(&store, &[&pattern]).await;
    let url = format!("file://{}/m", root.display());
    let (status, body) = call(
        &server,
        "POST",
        &format!("/models?url={url}&model_name=outside"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        server
            .predict("/predictions/outside", "[[1, 2, 3, 4]]")
            .await
            .0,
        200
    );
    let (_, described) = call(&server, "GET", "/models/outside").await;
    assert_eq!(described[0]["ortserve"]["state"], "Ready");
}

#[tokio::test]
async fn unregister_keeps_default_versions_and_declared_models() {
    let store = two_versions();
    let launch = Launch::store(&store, "m=m_v1.mar,m=m_v2.mar").property("enable_model_api=true");
    let server = Server::healthy(launch).await;
    server.wait_versions_ready("m", &["1.0", "2.0"]).await;
    let (status, body) = call(&server, "DELETE", "/models/m").await;
    assert_eq!(
        (status, body),
        (
            403,
            torchserve_error(
                403,
                "InvalidModelVersionException",
                "Cannot remove default version for model m"
            )
        )
    );
    let (status, _) = call(&server, "DELETE", "/models/m/1.0").await;
    assert_eq!(status, 200);
    let (status, _) = call(&server, "DELETE", "/models/m").await;
    assert_eq!(status, 200, "the last version may go");
    drop(server);

    let store = Store::new();
    store.dir_model("linear", "linear", None);
    let volume = ConfigMapVolume::new(&[(
        "linear.yaml",
        "source: linear\nminWorkers: 1\nmaxWorkers: 1\n",
    )]);
    let server =
        Server::healthy(Launch::declared(&store, &volume).property("enable_model_api=true")).await;
    let (status, body) = call(&server, "DELETE", "/models/linear").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["message"],
        "model \"linear\" version 1.0 is declared in linear.yaml; remove or edit that file to unregister it"
    );
    assert_eq!(
        server
            .predict("/predictions/linear", "[[1, 2, 3, 4]]")
            .await
            .0,
        200
    );
}

/// Requests already queued for a model finish when it is unregistered; a
/// model registered meanwhile does not disturb another's traffic.
#[tokio::test]
async fn unregister_lets_queued_requests_finish() {
    let store = Store::new();
    store.dir_model(
        "slow",
        "slow_loop",
        Some("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 1\n"),
    );
    let server = model_api_server(&store, &[]).await;
    let (status, _) = call(&server, "POST", "/models?url=slow").await;
    assert_eq!(status, 200);
    let queued: Vec<_> = (0..3)
        .map(|i| {
            let (client, url) = (server.client.clone(), server.url("/predictions/slow"));
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .body(format!("[[{}]]", 6000 + i))
                    .send()
                    .await
                    .unwrap();
                (response.status().as_u16(), response.text().await.unwrap())
            })
        })
        .collect();
    // All three must have reached the model before it goes: one running,
    // two queued behind it (waiting for one queued let a third still on
    // its way meet the unregistered model, a 404).
    eventually(
        Duration::from_secs(20),
        "two requests queue behind the running one",
        || async {
            let (_, described) = call(&server, "GET", "/models/slow").await;
            described[0]["jobQueueStatus"]["pendingRequests"].as_u64() >= Some(2)
        },
    )
    .await;
    let (status, _) = call(&server, "DELETE", "/models/slow").await;
    assert_eq!(status, 200);
    for (i, request) in queued.into_iter().enumerate() {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, 200, "queued request {i}: {body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer, json!([[6000.0 + i as f64]]), "request {i}");
    }
    assert_eq!(server.predict("/predictions/slow", "[[1]]").await.0, 404);
    assert_eq!(
        server
            .predict("/predictions/linear", "[[1, 2, 3, 4]]")
            .await
            .0,
        200
    );
}

/// KServe v1's repository routes on the inference port: load registers the
/// store entry of that name, unload removes every version; both need
/// `enable_model_api`, as register and unregister do.
#[tokio::test]
async fn kserve_v1_load_and_unload_follow_the_model_api_rules() {
    let store = Store::new();
    let server = model_api_server(&store, &[]).await;
    let (status, body) = status_json(server.post_json("/v1/models/other/load", "").await).await;
    assert_eq!(
        (status, body),
        (200, json!({"name": "other", "load": true}))
    );
    let (status, body) = status_json(
        server
            .post_json(
                "/v1/models/other:predict",
                r#"{"instances": [[1, 2, 3, 4]]}"#,
            )
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = status_json(server.post_json("/v1/models/other/unload", "").await).await;
    assert_eq!(
        (status, body),
        (200, json!({"name": "other", "unload": true}))
    );
    let (status, body) = status_json(server.post_json("/v1/models/other/unload", "").await).await;
    assert_eq!(
        (status, body),
        (
            404,
            json!({"error": "Model with name other does not exist."})
        )
    );
    let (status, body) = status_json(server.post_json("/v1/models/https:x/load", "").await).await;
    assert_eq!(status, 400, "{body}");
    drop(server);

    let store = Store::new();
    store.dir_model("linear", "linear", Some(ONE_WORKER));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let (status, body) = status_json(server.post_json("/v1/models/linear/unload", "").await).await;
    assert_eq!(status, 405);
    assert_eq!(
        body["error"],
        "loading and unloading models is disabled; start ortserve with enable_model_api=true (or --enable-model-api)"
    );
    assert_eq!(
        server
            .predict("/predictions/linear", "[[1, 2, 3, 4]]")
            .await
            .0,
        200
    );
}

/// The curl lines of the management API's page: `(method, url)`, in
/// order. Only the forms the page uses are read: `curl [-X M] URL`.
fn readme_management_calls() -> Vec<(String, String)> {
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/management-api.md"
    ))
    .unwrap();
    page.lines()
        .filter_map(|line| line.trim().strip_prefix("curl "))
        .map(|call| {
            let call = call.split(" #").next().unwrap().trim();
            let (method, url) = match call.strip_prefix("-X ") {
                Some(rest) => rest.split_once(' ').unwrap(),
                None => ("GET", call),
            };
            (method.to_string(), url.trim_matches('"').to_string())
        })
        .collect()
}

/// Every curl example on the management API's page, run in order
/// against a server with the models they name: each answers 2xx.
#[tokio::test]
async fn the_readme_management_examples_all_succeed() {
    let calls = readme_management_calls();
    assert!(calls.len() >= 10, "{calls:?}");
    let store = Store::new();
    let linear = |version: &str| Manifest::new("linear", version);
    let config: &[(&str, &[u8])] = &[("model-config.yaml", ONE_WORKER.as_bytes())];
    store
        .mar("linear_v1.mar", &linear("1.0"), "linear", config)
        .mar("linear_v2.mar", &linear("2.0"), "linear", config)
        .mar(
            "squeezenet.mar",
            &Manifest::new("squeezenet", "1.0"),
            "linear",
            config,
        );
    let launch = Launch::store(&store, "linear_v1.mar,linear_v2.mar").arg("--enable-model-api");
    let server = Server::healthy(launch).await;
    server.wait_versions_ready("linear", &["1.0", "2.0"]).await;
    let management = server.management_url();
    for (method, url) in calls {
        let url = url
            .replace("http://localhost:8081", &management)
            .replace("localhost:8081", management.trim_start_matches("http://"))
            .replace("localhost:8080", server.base.trim_start_matches("http://"));
        let url = match url.starts_with("http") {
            true => url,
            false => format!("http://{url}"),
        };
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = server
            .client
            .request(method.clone(), &url)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(status.is_success(), "{method} {url}: {status} {body}");
    }
}

/// Two registrations of one model at once: one wins (200), the other is
/// told it lost (409); re-registering and unregistering under another
/// model's traffic fails none of its requests.
#[tokio::test]
async fn concurrent_changes_are_serialised_and_other_traffic_never_fails() {
    let store = Store::new();
    let server = model_api_server(&store, &[]).await;
    let traffic = Traffic::start(&server, "linear");
    let (first, second) = tokio::join!(
        call(&server, "POST", "/models?url=other"),
        call(&server, "POST", "/models?url=other"),
    );
    let mut statuses = [first.0, second.0];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{first:?} {second:?}");
    for _ in 0..3 {
        assert_eq!(call(&server, "DELETE", "/models/other").await.0, 200);
        assert_eq!(call(&server, "POST", "/models?url=other").await.0, 200);
        assert_eq!(
            server
                .predict("/predictions/other", "[[1, 2, 3, 4]]")
                .await
                .0,
            200
        );
    }
    assert!(traffic.stop().await > 0);
}

/// A declared model scaled through the API keeps that scale until its
/// declaration file changes; then the file's settings apply again.
#[tokio::test]
async fn scaling_a_declared_model_lasts_until_its_file_changes() {
    let store = Store::new();
    store.dir_model("linear", "linear", None);
    let declaration = |delay: u32| {
        format!("source: linear\nminWorkers: 1\nmaxWorkers: 1\nmaxBatchDelay: {delay}\n")
    };
    let mut volume = ConfigMapVolume::new(&[("linear.yaml", &declaration(5))]);
    let server = Server::healthy(Launch::declared(&store, &volume)).await;
    let (status, _) = call(
        &server,
        "PUT",
        "/models/linear?min_worker=2&max_worker=2&synchronous=true",
    )
    .await;
    assert_eq!(status, 200);
    let workers = |d: &Value| {
        (
            d[0]["minWorkers"].clone(),
            d[0]["workers"].as_array().unwrap().len(),
        )
    };
    // An unchanged declaration (the directory is polled) keeps the scale.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, described) = call(&server, "GET", "/models/linear").await;
    assert_eq!(workers(&described), (json!(2), 2), "{described}");

    volume.update(&[("linear.yaml", &declaration(6))]);
    eventually(
        Duration::from_secs(30),
        "the file's settings apply again",
        || async {
            let (_, described) = call(&server, "GET", "/models/linear").await;
            described[0]["minWorkers"] == 1 && described[0]["maxBatchDelay"] == 6
        },
    )
    .await;
}
