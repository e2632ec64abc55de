//! ortserve as a KServe serving runtime: KServe's argument names, a model
//! directory served under `--model_name`, and kserve-torchserve's layout
//! read as TorchServe reads it, with the model directory never written to.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::common::*;
use serde::Deserialize;
use serde_json::json;

fn kserve(model_name: &str, model_dir: &Path) -> Launch {
    Launch {
        args: vec![
            format!("--model_name={model_name}"),
            format!("--model_dir={}", model_dir.display()),
            "--http_port=0".into(),
        ],
        no_config_file: true,
        ..Launch::default()
    }
}

/// Every file below `dir` with its size and modification time.
fn listing(dir: &Path) -> BTreeMap<String, (u64, SystemTime)> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                files.insert(
                    entry.path().display().to_string(),
                    (meta.len(), meta.modified().unwrap()),
                );
            }
        }
    }
    files
}

#[tokio::test]
async fn a_model_directory_is_served_under_model_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.onnx"), model_bytes("linear")).unwrap();
    std::fs::write(
        dir.path().join("model-config.yaml"),
        "minWorkers: 1\nbatchSize: 4\n",
    )
    .unwrap();
    let before = listing(dir.path());
    let server = Server::healthy(kserve("sklearn-iris", dir.path())).await;
    assert!(
        server.base.starts_with("http://0.0.0.0:"),
        "KServe listens on all interfaces: {}",
        server.base
    );
    // The log is read by a thread of its own: under load it may lag.
    let applied = server.wait_for_log("batch_size=4", Duration::from_secs(5));
    assert!(!applied.is_empty(), "model-config.yaml applies");
    assert_eq!(
        status_json(server.get("/v1/models").await).await.1,
        json!({"models": ["sklearn-iris"]})
    );
    let (status, body) = server
        .predict(
            "/v1/models/sklearn-iris:predict",
            r#"{"instances": [[1, 2, 3, 4]]}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_close(
        &body["predictions"][0],
        &linear_expected(&[1.0, 2.0, 3.0, 4.0]),
        1e-6,
    );
    assert_eq!(
        server.get("/v2/models/sklearn-iris/ready").await.status(),
        200
    );
    assert_eq!(
        listing(dir.path()),
        before,
        "the model directory is only read"
    );
}

#[tokio::test]
async fn a_single_onnx_file_of_any_name_is_the_model() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("exported-2024.onnx"), model_bytes("linear")).unwrap();
    let server = Server::healthy(kserve("m", dir.path())).await;
    let request = json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]});
    let (status, body) = server
        .predict("/v2/models/m/infer", &request.to_string())
        .await;
    assert_eq!(status, 200, "{body}");
    let output = &body["outputs"][0];
    assert_eq!(
        (&output["name"], &output["shape"]),
        (&json!("y"), &json!([1, 3]))
    );
    assert_close(
        &output["data"],
        &linear_expected(&[1.0, 2.0, 3.0, 4.0]),
        1e-5,
    );
}

#[tokio::test]
async fn the_kserve_torchserve_layout_loads_as_torchserve_would() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    // KServe's own sample config: port 8085, model_store=/mnt/models/model-store,
    // and a model_snapshot naming mnist.mar with minWorkers 1.
    std::fs::copy(
        data_dir().join("reference/kserve_sample_torchserve_v1_config.properties"),
        dir.path().join("config/config.properties"),
    )
    .unwrap();
    let store_dir = dir.path().join("model-store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let store = Store::new();
    let config = b"ortserve:\n  handler: image_classifier\n  imageClassifier:\n    resize: 28\n";
    store.mar(
        "mnist.mar",
        &Manifest::new("mnist", "1.0"),
        "mnist_cnn",
        &[("model-config.yaml", config)],
    );
    std::fs::copy(store.path().join("mnist.mar"), store_dir.join("mnist.mar")).unwrap();
    let before = listing(dir.path());

    let server = Server::healthy(kserve("mnist", dir.path())).await;
    let log = server.log();
    assert!(
        log.contains(&format!(
            "config file: {}/config/config.properties",
            dir.path().display()
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("model_store: {}", store_dir.display())),
        "{log}"
    );
    assert!(
        log.contains("load_models: mnist=mnist.mar\n"),
        "the snapshot's model: {log}"
    );
    assert!(
        !server.base.ends_with(":8085"),
        "served where KServe sends traffic, not TorchServe's 8085"
    );
    let sample = std::fs::read_to_string(
        data_dir().join("reference/kserve_sample_torchserve_v1_mnist_request.json"),
    )
    .unwrap();
    let (status, body) = server.predict("/v1/models/mnist:predict", &sample).await;
    assert_eq!(status, 200, "{body}");
    // The handler's default topK is 1: the best class and its probability,
    // as the model's logits for the sample's image give them (golden:
    // NumPy's mnist_cnn on gray / 255).
    let logits = floats(&golden("mnist_sample")["v1_png_logits"]);
    assert_classes(&body["predictions"][0], &top_classes(&logits, 1), 1e-5);
    assert_eq!(
        listing(dir.path()),
        before,
        "the model directory is only read"
    );
}

#[tokio::test]
async fn model_dir_defaults_to_mnt_models() {
    let launch = Launch {
        args: vec!["--model_name=m".into(), "--http_port=0".into()],
        no_config_file: true,
        ..Launch::default()
    };
    let server = Server::start(launch);
    let ping = server.wait_settled().await;
    let error = ping["models"]["m"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("/mnt/models"), "{ping}");
}

/// A file of the repository, for the examples shipped with it.
fn repository_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

#[tokio::test]
async fn the_kserve_examples_work_against_the_demo_model() {
    // kubernetes/isvc-config.yaml's ConfigMap, mounted as the InferenceService does.
    let manifests = repository_file("kubernetes/isvc-config.yaml");
    let config_map: serde_yaml_ng::Value = serde_yaml_ng::Deserializer::from_str(&manifests)
        .map(|doc| serde_yaml_ng::Value::deserialize(doc).unwrap())
        .find(|doc| doc["kind"] == "ConfigMap")
        .unwrap();
    let config = tempfile::tempdir().unwrap();
    let properties = config.path().join("config.properties");
    std::fs::write(
        &properties,
        config_map["data"]["config.properties"].as_str().unwrap(),
    )
    .unwrap();
    let model_dir = demo_dir().join("model-store/digits_v2");
    let launch =
        kserve("digits-tuned", &model_dir).arg(&format!("--ts-config={}", properties.display()));
    let server = Server::healthy(launch).await;
    assert!(
        server.log().contains("job_queue_size: 200"),
        "{}",
        server.log()
    );

    let expected: serde_json::Value =
        serde_json::from_str(&repository_file("demo/samples/expected.json")).unwrap();
    let (status, answer) = server
        .predict(
            "/v1/models/digits-tuned:predict",
            &repository_file("kubernetes/samples/digits-v1.json"),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let prediction = &answer["predictions"][0];
    let want = &expected["sample.png"]["2.0"];
    assert_eq!(prediction["class"], want["class"]);
    assert_close(
        &json!([prediction["probability"]]),
        &[want["probability"].as_f64().unwrap() as f32],
        1e-6,
    );

    let (status, answer) = server
        .predict(
            "/v2/models/digits-tuned/infer",
            &repository_file("kubernetes/samples/digits-v2.json"),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["id"], "digits-sample");
    let output = &answer["outputs"][0];
    assert_eq!(
        (&output["name"], &output["shape"]),
        (&json!("logits"), &json!([1, 10]))
    );
    let logits: Vec<f64> = output["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let best = (0..10)
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
        .unwrap();
    assert_eq!(best.to_string(), want["class"].as_str().unwrap());
    // The v1 answer's probability is the softmax of these same logits.
    let logits: Vec<f32> = logits.iter().map(|&l| l as f32).collect();
    assert_classes(prediction, &top_classes(&logits, 1), 1e-5);
}
