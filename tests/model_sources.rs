//! Model store layouts, versions, model-config.yaml and load failures, each
//! checked through the real server: what loads answers, what cannot load is
//! reported (in `/ping` and with 503s) without affecting the others.

mod common;

use common::*;
use serde_json::json;

const ONE_WORKER: &str = "minWorkers: 1\nmaxWorkers: 1\n";

async fn assert_linear_answers(server: &Server, path: &str) {
    let (status, answer) = server.predict(path, "[[1, 2, 3, 4]]").await;
    assert_eq!(status, 200, "{path}: {answer}");
    assert_close(&answer[0], &linear_expected(&[1.0, 2.0, 3.0, 4.0]), 1e-5);
}

#[tokio::test]
async fn archives_unpacked_archives_directories_and_bare_files_all_load() {
    let store = Store::new();
    store
        .mar("linear.mar", &Manifest::new("linear", "1.0"), "linear", &[("model-config.yaml", ONE_WORKER.as_bytes())])
        .dir_model("plain", "linear", Some(ONE_WORKER))
        .file("bare.onnx", &model_bytes("linear"))
        .file("unpacked/model.onnx", &model_bytes("linear"))
        .file(
            "unpacked/MAR-INF/MANIFEST.json",
            br#"{"model": {"modelName": "lin2", "serializedFile": "model.onnx", "modelVersion": "3.1"}}"#,
        )
        .file("README.txt", b"not a model; ignored");
    let server = Server::healthy(Launch::store(&store, "all")).await;
    for path in [
        "/predictions/linear",
        "/predictions/linear/1.0",
        "/predictions/plain",
        "/predictions/bare",
        "/predictions/lin2/3.1",
    ] {
        assert_linear_answers(&server, path).await;
    }
}

#[tokio::test]
async fn a_python_handler_fails_only_its_model() {
    let store = Store::new();
    store
        .mar(
            "custom.mar",
            &Manifest::new("custom", "1.0").handler("my_handler.py"),
            "linear",
            &[],
        )
        .mar(
            "linear.mar",
            &Manifest::new("linear", "1.0"),
            "linear",
            &[("model-config.yaml", ONE_WORKER.as_bytes())],
        );
    let server = Server::start(Launch::store(&store, "all"));
    let error = failure_of(&server, "custom").await;
    assert!(
        error.contains("handler 'my_handler.py' is custom Python code, which ortserve cannot run"),
        "{error}"
    );
    assert!(error.contains("tensor, image_classifier"), "{error}");
    let response = server.post_json("/predictions/custom", "[[1,2,3,4]]").await;
    assert_eq!(response.headers()["retry-after"], "1");
    assert_error(
        response,
        503,
        "ServiceUnavailableException",
        "custom Python code",
    )
    .await;
    assert_linear_answers(&server, "/predictions/linear").await;
}

#[tokio::test]
async fn built_in_manifest_handlers_and_config_overrides_are_honoured() {
    let store = Store::new();
    let labels = br#"{"0": "r", "1": "g", "2": "b"}"#;
    let config = b"minWorkers: 1\nortserve:\n  imageClassifier:\n    resize: 16\n";
    store
        .mar(
            "color.mar",
            &Manifest::new("color", "1.0").handler("image_classifier"),
            "color_mean",
            &[
                ("index_to_name.json", labels),
                ("model-config.yaml", config),
            ],
        )
        .mar(
            "rescued.mar",
            &Manifest::new("rescued", "1.0").handler("custom.py"),
            "linear",
            &[(
                "model-config.yaml",
                b"minWorkers: 1\nortserve:\n  handler: tensor\n",
            )],
        );
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(16, 16, image::Rgb([0, 0, 255]))
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let (_, answer) = status_json(
        server
            .put_bytes("/predictions/color", png.into_inner())
            .await,
    )
    .await;
    assert_eq!(answer["class"], "b", "{answer}");
    assert_linear_answers(&server, "/predictions/rescued").await;
}

#[tokio::test]
async fn archives_must_hold_onnx_and_names_must_follow_torchserve_rules() {
    let store = Store::new();
    store
        .mar(
            "torch.mar",
            &Manifest::new("torch", "1.0").serialized("model.pt"),
            "linear",
            &[],
        )
        .dir_model("linear", "linear", Some(ONE_WORKER));
    let server = Server::start(Launch::store(
        &store,
        "torch.mar,9lives=linear,remote=https://example.com/m.mar",
    ));
    let ping = server.wait_settled().await;
    let error = |m: &str| {
        ping["models"][m]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{m}: {ping}"))
            .to_string()
    };
    assert!(
        error("torch").contains("serializedFile 'model.pt' is not an ONNX model"),
        "{ping}"
    );
    assert!(
        error("9lives").contains("'9lives' is not a valid model name: it must start with a letter"),
        "{ping}"
    );
    assert!(
        error("remote").contains("ortserve never downloads models"),
        "{ping}"
    );
}

#[tokio::test]
async fn versions_route_and_the_default_is_explicit_or_highest() {
    let store = Store::new();
    // Each version is a different graph, so the answer shows which one ran.
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
        )
        .dir_model(
            "m_v10",
            "multi_io",
            Some("minWorkers: 1\nortserve:\n  version: \"10.0\"\n"),
        );
    let gray = json!([[vec![vec![0.5f32; 8]; 8]]]).to_string();
    let multi = json!({"features": [vec![0; 16]], "ids": [[2]]}).to_string();
    let server = Server::healthy(Launch::store(&store, "m=m_v1.mar,m=m_v2.mar,m=m_v10")).await;
    server.wait_versions_ready("m", &["1.0", "2.0"]).await;
    assert_linear_answers(&server, "/predictions/m/1.0").await;
    let (_, answer) = server.predict("/predictions/m/2.0", &gray).await;
    assert_eq!(answer, json!([[0.5, -0.5]]));
    // 10.0 > 2.0 numerically, so it is the default.
    let (_, answer) = server.predict("/predictions/m", &multi).await;
    assert_eq!(answer["scores"], json!([[2.0, 2.0, 2.0, 2.0]]), "{answer}");
    drop(server);

    // `models=` in config.properties can name the default, as in TorchServe.
    let launch = Launch::store(&store, "m=m_v1.mar,m=m_v2.mar,m=m_v10")
        .property(r#"models={"m": {"2.0": {"defaultVersion": true}}}"#);
    let server = Server::healthy(launch).await;
    let (_, answer) = server.predict("/predictions/m", &gray).await;
    assert_eq!(answer, json!([[0.5, -0.5]]));
}

#[tokio::test]
async fn a_bad_model_config_fails_that_model_naming_file_key_and_values() {
    let store = Store::new();
    store
        .dir_model("typo", "linear", Some("batchSize: eight\n"))
        .dir_model("device", "linear", Some("deviceType: tpu\n"))
        .dir_model("section", "linear", Some("ortserve:\n  topK: 3\n"))
        .dir_model("linear", "linear", Some(ONE_WORKER));
    let server = Server::start(Launch::store(&store, "all"));
    assert!(
        failure_of(&server, "typo")
            .await
            .contains("typo/model-config.yaml: batchSize: expected a whole number, got eight")
    );
    assert!(
        failure_of(&server, "device")
            .await
            .contains("device/model-config.yaml: deviceType: expected one of cpu, gpu; got tpu")
    );
    let error = failure_of(&server, "section").await;
    assert!(
        error
            .contains("section/model-config.yaml: ortserve: unknown field `topK`, expected one of"),
        "{error}"
    );
    assert_error(
        server.post_json("/predictions/typo", "[[1,2,3,4]]").await,
        503,
        "ServiceUnavailableException",
        "batchSize",
    )
    .await;
    assert_linear_answers(&server, "/predictions/linear").await;
}

#[tokio::test]
async fn unservable_graphs_fail_with_the_reason() {
    let store = Store::new();
    store
        .dir_model("zipmap", "zipmap", Some(ONE_WORKER))
        .dir_model(
            "fixed2",
            "fixed_batch",
            Some("minWorkers: 1\nbatchSize: 2\n"),
        )
        .dir_model("fixed1", "fixed_batch", Some(ONE_WORKER));
    let server = Server::start(Launch::store(&store, "all"));
    let error = failure_of(&server, "zipmap").await;
    assert!(
        error.contains("output 'probabilities' is a seq(map(int64, float32)), not a tensor"),
        "{error}"
    );
    let error = failure_of(&server, "fixed2").await;
    assert!(
        error.contains(
            "batchSize is 2 but 'x' has shape [1, 4], without a dynamic first (batch) axis"
        ),
        "{error}"
    );
    assert_linear_answers(&server, "/predictions/fixed1").await;
    // A fixed batch of 1 (torch.onnx.export's default) also takes one instance
    // without the batch axis, and answers without it.
    let (_, single) = server.predict("/predictions/fixed1", "[1, 2, 3, 4]").await;
    assert_close(&single, &linear_expected(&[1.0, 2.0, 3.0, 4.0]), 1e-5);
    assert_error(
        server
            .post_json("/predictions/fixed1", "[[1,2,3,4],[1,2,3,4]]")
            .await,
        400,
        "BadRequestException",
        "input 'x' expects shape [1, 4] (-1 = any size) but got shape [2, 4]: axis 0 must be 1",
    )
    .await;
}

#[tokio::test]
async fn warm_up_runs_before_a_model_counts_as_ready() {
    let store = Store::new();
    store
        .dir_model("strict", "reshape_by_value", Some(ONE_WORKER))
        .dir_model(
            "lenient",
            "reshape_by_value",
            Some("minWorkers: 1\nortserve:\n  warmup: false\n"),
        );
    let server = Server::start(Launch::store(&store, "all"));
    let error = failure_of(&server, "strict").await;
    assert!(
        error.contains("the warm-up run at the declared input shapes failed"),
        "{error}"
    );
    let (status, answer) = server.predict("/predictions/lenient", "[2, 3]").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]));
}

#[tokio::test]
async fn cuda_is_strict_unless_cpu_fallback_is_allowed() {
    // The test library is ONNX Runtime's CPU build, which has no CUDA provider.
    let store = Store::new();
    store
        .dir_model("strict", "linear", Some("minWorkers: 1\ndeviceType: gpu\n"))
        .dir_model(
            "fallback",
            "linear",
            Some(
                "minWorkers: 1\ndeviceType: gpu\ndeviceIds: [0]\nortserve:\n  cpuFallback: true\n",
            ),
        );
    let server = Server::start(Launch::store(&store, "all"));
    let error = failure_of(&server, "strict").await;
    assert!(
        error.contains("the CUDA execution provider could not be used"),
        "{error}"
    );
    assert_linear_answers(&server, "/predictions/fallback").await;
    let warning = server.wait_for_log(
        "serving on CPU because CPU fallback is allowed",
        std::time::Duration::from_secs(5),
    );
    assert!(warning.contains("WARN"), "{warning}");
    assert_eq!(
        server.log().matches("serving on CPU because").count(),
        1,
        "one warning per model"
    );
}

#[tokio::test]
async fn no_models_is_unhealthy_unless_allowed() {
    let store = Store::new();
    let server = Server::start(Launch::store(&store, "all"));
    let (status, body) = status_json(server.get("/ping").await).await;
    assert_eq!(
        (status, body),
        (500, json!({"status": "Unhealthy", "models": {}}))
    );
    drop(server);
    let server = Server::start(Launch::store(&store, "all").arg("--allow-no-models"));
    assert_eq!(server.get("/ping").await.status(), 200);
}

/// `linear` in Triton's repository layout, configured as Triton's model
/// configuration guide shows: batching, two CPU instances, a specific
/// version policy, and a warm-up setting that has no equivalent here.
const TRITON_LINEAR: &str = r#"
name: "linear"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "x"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output [
  {
    name: "y"
    data_type: TYPE_FP32
    dims: [ 3 ]
  }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 2000
}
instance_group [
  {
    count: 2
    kind: KIND_CPU
  }
]
version_policy: { specific { versions: [ 1, 3 ] } }
model_warmup [ { name: "zeros" batch_size: 1 } ]
"#;

fn triton_repository() -> Store {
    let store = Store::new();
    store.file("linear/config.pbtxt", TRITON_LINEAR.as_bytes());
    for version in ["1", "2", "3"] {
        store.file(
            &format!("linear/{version}/model.onnx"),
            &model_bytes("linear"),
        );
    }
    store
        .file(
            "mismatched/config.pbtxt",
            b"platform: \"onnxruntime_onnx\"\nmax_batch_size: 4\ninput [ { name: \"wrong\" data_type: TYPE_FP32 dims: [ 4 ] } ]\n",
        )
        .file("mismatched/1/model.onnx", &model_bytes("linear"));
    store
}

#[tokio::test]
async fn triton_model_repositories_serve_their_versions_with_their_settings() {
    let store = triton_repository();
    let server = Server::start(Launch::store(&store, "all"));
    let reason = failure_of(&server, "mismatched").await;
    assert!(
        reason.contains(
            "config.pbtxt declares input 'wrong', which the graph does not have (its inputs: x)"
        ),
        "{reason}"
    );
    server.wait_versions_ready("linear", &["1", "3"]).await;
    let (status, metadata) = status_json(server.get("/v2/models/linear").await).await;
    assert_eq!(status, 200);
    assert_eq!(
        metadata["versions"],
        serde_json::json!(["1", "3"]),
        "version_policy specific [1, 3]"
    );
    for version in ["1", "3"] {
        assert_linear_answers(&server, &format!("/predictions/linear/{version}")).await;
    }
    assert_eq!(
        server
            .get("/v2/models/linear/versions/2/ready")
            .await
            .status(),
        404
    );
    let log = server.log();
    let ready = log
        .lines()
        .find(|l| l.contains("model ready") && l.contains("model=linear"))
        .unwrap();
    assert!(
        ready.contains("workers=2") && ready.contains("batch_size=8"),
        "{ready}"
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("model_warmup") && l.contains("no equivalent"))
            .count(),
        1,
        "one warning for the setting with no equivalent:\n{log}"
    );
}

#[tokio::test]
async fn kserve_serves_a_triton_repository_from_its_model_dir() {
    let store = triton_repository();
    let launch = Launch {
        args: vec![
            "--model_name=linear".into(),
            format!("--model_dir={}", store.path().display()),
            "--http_port=0".into(),
        ],
        no_config_file: true,
        ..Launch::default()
    };
    let server = Server::start(launch);
    server.wait_versions_ready("linear", &["3"]).await;
    let body =
        r#"{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}"#;
    let (status, answer) = server.predict("/v2/models/linear/infer", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["model_version"], "3",
        "the default is the highest served version"
    );
    assert_close(
        &answer["outputs"][0]["data"],
        &linear_expected(&[1.0, 2.0, 3.0, 4.0]),
        1e-5,
    );
}
