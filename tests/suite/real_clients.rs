//! The ecosystem's own clients against the real server: KServe's Python SDK
//! (REST, v1 and v2, and gRPC) and Triton's `tritonclient.http` and
//! `tritonclient.grpc` (JSON and binary, every datatype, model configuration,
//! statistics, the model repository and error bodies). The scripts
//! live in tests/clients/ and run in the venv that `make test` installs from
//! requirements-dev.txt.

use std::process::Command;

use crate::common::*;

async fn client_store() -> (Store, Server) {
    let store = Store::new();
    let image = "minWorkers: 1\nortserve:\n  handler: image_classifier\n  imageClassifier:\n    resize: 28\n";
    store
        .dir_model("linear", "linear", Some("minWorkers: 1\n"))
        .dir_model("mnist", "mnist_cnn", Some(image))
        .dir_model("mnist_v2", "mnist_v2", Some("minWorkers: 1\n"))
        .dir_model("types", "identity_types", Some("minWorkers: 1\n"))
        // Only triton_http.py sends it traffic: it asserts exact statistics.
        .dir_model(
            "batched",
            "linear",
            Some("minWorkers: 1\nmaxWorkers: 2\nbatchSize: 4\nmaxBatchDelay: 5\n"),
        );
    let server = Server::healthy(Launch::store(&store, "all")).await;
    (store, server)
}

pub(crate) fn run(script: &str, args: &[&str]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let output = Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .expect("run the client script");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{script} failed:\n{text}");
    assert!(text.contains(": ok"), "{text}");
}

#[tokio::test]
async fn kserve_python_sdk_speaks_v1_and_v2() {
    let (_store, server) = client_store().await;
    let data = data_dir();
    let golden = models_dir().join("golden/mnist_sample.json");
    let server_url = server.base.clone();
    tokio::task::spawn_blocking(move || {
        run(
            "kserve_sdk.py",
            &[
                &server_url,
                data.to_str().unwrap(),
                golden.to_str().unwrap(),
            ],
        )
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn tritonclient_http_speaks_json_and_binary() {
    let (_store, server) = client_store().await;
    let address = server.base.trim_start_matches("http://").to_string();
    tokio::task::spawn_blocking(move || run("triton_http.py", &[&address]))
        .await
        .unwrap();
}

/// tritonclient's repository calls: index, load, unload, and their errors.
#[tokio::test]
async fn tritonclient_http_drives_the_model_repository() {
    let store = Store::new();
    store
        .dir_model("linear", "linear", Some("minWorkers: 1\n"))
        .dir_model("spare", "linear", Some("minWorkers: 1\n"))
        .dir_model("declared", "linear", None);
    let volume = ConfigMapVolume::new(&[("declared.yaml", "source: declared\nminWorkers: 1\n")]);
    let launch = Launch::declared(&store, &volume)
        .arg("--models")
        .arg("linear")
        .arg("--enable-model-api");
    let server = Server::healthy(launch).await;
    let address = server.base.trim_start_matches("http://").to_string();
    tokio::task::spawn_blocking(move || run("triton_repository.py", &[&address]))
        .await
        .unwrap();
}

/// tritonclient.grpc's repository calls (Triton's RepositoryIndex,
/// RepositoryModelLoad, RepositoryModelUnload): exact index, unload, load
/// back, and the refused `config` override.
#[tokio::test]
async fn tritonclient_grpc_drives_the_model_repository() {
    let store = Store::new();
    store
        .dir_model("linear", "linear", Some("minWorkers: 1\n"))
        .dir_model("spare", "linear", Some("minWorkers: 1\n"));
    let server = Server::healthy(Launch::store(&store, "all").arg("--enable-model-api")).await;
    let address = server.grpc_address();
    tokio::task::spawn_blocking(move || run("triton_grpc_repository.py", &[&address]))
        .await
        .unwrap();
}

/// KServe's SDK gRPC client (kserve.InferenceGRPCClient): health, exact
/// answers on FP32 and every datatype it decodes, NOT_FOUND.
#[tokio::test]
async fn kserve_python_sdk_speaks_grpc() {
    let store = Store::new();
    store
        .dir_model("linear", "linear", Some("minWorkers: 1\n"))
        .dir_model("types", "identity_types", Some("minWorkers: 1\n"));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let address = server.grpc_address();
    tokio::task::spawn_blocking(move || run("kserve_grpc.py", &[&address]))
        .await
        .unwrap();
}

/// tritonclient.grpc (and the generated stubs, for typed contents) against
/// the gRPC listener: the same models, readiness and errors as REST.
#[tokio::test]
async fn tritonclient_grpc_speaks_the_open_inference_protocol() {
    let store = Store::new();
    store
        .dir_model(
            "linear",
            "linear",
            Some("minWorkers: 1\njobQueueSize: 6000\n"),
        )
        .dir_model("types", "identity_types", Some("minWorkers: 1\n"))
        .dir_model(
            "slow",
            "slow_loop",
            Some("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 1\nresponseTimeout: 60\n"),
        );
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let address = server.grpc_address();
    tokio::task::spawn_blocking(move || run("triton_grpc.py", &[&address]))
        .await
        .unwrap();
    // responseTimeout is 60 s: only the call's own deadline cancels the run.
    let log = server.log();
    assert!(
        log.contains(
            "a run passed its deadline (responseTimeout, or a gRPC call's own); cancelling it"
        ),
        "the slow run was not cancelled:\n{log}"
    );
}
