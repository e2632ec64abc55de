//! KServe's v1 protocol over real HTTP: model listing and readiness,
//! `instances` and `inputs` bodies, image instance forms, and one registry
//! and one batch queue shared with the other protocols.

use std::time::Duration;

use crate::common::*;
use base64::Engine;
use serde_json::json;

const ONE_WORKER: &str = "minWorkers: 1\nmaxWorkers: 1\n";

#[tokio::test]
async fn models_are_listed_and_readiness_follows_min_workers() {
    let store = Store::new();
    store.dir_model("linear", "linear", Some(ONE_WORKER)).mar(
        "custom.mar",
        &Manifest::new("custom", "1.0").handler("custom.py"),
        "linear",
        &[],
    );
    let server = Server::start(Launch::store(&store, "all"));
    server.wait_settled().await;
    let (status, body) = status_json(server.get("/v1/models").await).await;
    assert_eq!(
        (status, body),
        (200, json!({"models": ["custom", "linear"]}))
    );
    let (status, body) = status_json(server.get("/v1/models/linear").await).await;
    assert_eq!(
        (status, body),
        (200, json!({"name": "linear", "ready": true}))
    );
    assert_kserve_error(
        server.get("/v1/models/custom").await,
        503,
        "Model with name custom is not ready",
    )
    .await;
    assert_kserve_error(
        server.get("/v1/models/nope").await,
        404,
        "Model with name nope does not exist.",
    )
    .await;
    let (status, body) = status_json(server.get("/").await).await;
    assert_eq!((status, body), (200, json!({"status": "alive"})));
}

#[tokio::test]
async fn instances_are_rows_and_inputs_is_a_whole_tensor() {
    let store = Store::new();
    store
        .dir_model("linear", "linear", Some(ONE_WORKER))
        .dir_model("multi", "multi_io", Some(ONE_WORKER));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let rows = [[1.0f32, 2.0, 3.0, 4.0], [0.5, 0.0, -1.0, 2.0]];
    let (status, body) = server
        .predict(
            "/v1/models/linear:predict",
            &json!({"instances": rows}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for (got, x) in body["predictions"].as_array().unwrap().iter().zip(&rows) {
        assert_close(got, &linear_expected(x), 1e-5);
    }
    let (_, body) = server
        .predict(
            "/v1/models/linear:predict",
            &json!({"inputs": rows}).to_string(),
        )
        .await;
    assert_rows_close(
        &body["predictions"],
        &json!([linear_expected(&rows[0]), linear_expected(&rows[1])]),
        1e-5,
    );
    // Several inputs: each instance is an object keyed by input name.
    let instance = json!({"features": vec![1.0; 16], "ids": [2]});
    let (status, body) = server
        .predict(
            "/v1/models/multi:predict",
            &json!({"instances": [instance]}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let prediction = &body["predictions"][0];
    assert_eq!(
        prediction.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["scores", "label"]
    );
    // scores[i] = Σ_j V[i][j]·1 + 2 with V[i][j] = ((i + 2j) % 5 − 2) / 4.
    let scores: Vec<f32> = (0..4)
        .map(|i| {
            (0..16)
                .map(|j| (((i + 2 * j) % 5) as f32 - 2.0) / 4.0)
                .sum::<f32>()
                + 2.0
        })
        .collect();
    assert_close(&prediction["scores"], &scores, 1e-6);
    assert_eq!(prediction["label"], json!(3), "{prediction}");
}

#[tokio::test]
async fn bad_requests_get_kserve_errors() {
    let store = Store::new();
    store.dir_model("linear", "linear", Some(ONE_WORKER));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let cases = [
        ("{not json", 400, "Unrecognized request format"),
        (
            r#"{"instances": 5}"#,
            400,
            "Unrecognized request format: 'instances': expected a list ([...])",
        ),
        (
            r#"{"foo": []}"#,
            400,
            r#"expected {"instances": [...]} or {"inputs": ...}"#,
        ),
        (
            r#"{"instances": [[1, 2, 3]]}"#,
            400,
            "input 'x' expects shape [-1, 4]",
        ),
    ];
    for (body, status, message) in cases {
        assert_kserve_error(
            server.post_json("/v1/models/linear:predict", body).await,
            status,
            message,
        )
        .await;
    }
    assert_kserve_error(
        server.post_json("/v1/models/nope:predict", "{}").await,
        404,
        "Model with name nope does not exist.",
    )
    .await;
}

#[tokio::test]
async fn image_models_take_every_instance_form_users_send() {
    let store = Store::new();
    let config = "minWorkers: 1\nortserve:\n  handler: image_classifier\n  imageClassifier:\n    resize: 28\n    topK: 2\n";
    store.dir_model("mnist", "mnist_cnn", Some(config));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let (png, tensor) = sample_png_and_tensor();
    let encoded = base64::engine::general_purpose::STANDARD.encode(&png);
    // The reference request files, byte for byte.
    let mut answers = Vec::new();
    for file in [
        "torchserve_kserve_v1_mnist_request.json",
        "kserve_sample_torchserve_v1_mnist_request.json",
    ] {
        let body = std::fs::read_to_string(data_dir().join("reference").join(file)).unwrap();
        let (status, answer) = server.predict("/v1/models/mnist:predict", &body).await;
        assert_eq!(status, 200, "{file}: {answer}");
        answers.push(answer["predictions"][0].clone());
    }
    // Both files hold the same PNG: the same answer, and the one the model's
    // logits for that image give (golden: NumPy's mnist_cnn on gray / 255).
    assert_eq!(
        answers[1], answers[0],
        "the two sample files hold one image"
    );
    let logits = floats(&golden("mnist_sample")["v1_png_logits"]);
    assert_classes(&answers[0], &top_classes(&logits, 2), 1e-5);
    for instance in [
        json!({"b64": encoded}),
        json!(encoded),
        json!({"data": encoded, "target": 3}),
        json!(tensor),
    ] {
        let (status, answer) = server
            .predict(
                "/v1/models/mnist:predict",
                &json!({"instances": [instance]}).to_string(),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            answer["predictions"][0], answers[0],
            "every form of the same image gives the same answer"
        );
    }
    assert_kserve_error(
        server
            .post_json(
                "/v1/models/mnist:predict",
                r#"{"instances": [{"image": "x"}]}"#,
            )
            .await,
        400,
        r#"an image instance is {"data": "<base64 image>"} or {"b64": "<base64 image>"}"#,
    )
    .await;
    assert_kserve_error(
        server
            .post_json("/v1/models/mnist:predict", r#"{"instances": ["%%%"]}"#)
            .await,
        400,
        "not valid base64",
    )
    .await;
}

#[tokio::test]
async fn one_registry_one_queue_for_all_three_protocols() {
    let store = Store::new();
    // A batch of 3 rows waits (up to 5 s) until three requests arrive.
    store.dir_model(
        "linear",
        "linear",
        Some("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 3\nmaxBatchDelay: 5000\n"),
    );
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let x = [1.0f32, 2.0, 3.0, 4.0];
    let v2 = json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x}]})
        .to_string();
    let (ts_body, v1_body) = (
        json!([x]).to_string(),
        json!({"instances": [x]}).to_string(),
    );
    let (torchserve, v1, v2) = tokio::join!(
        server.predict("/predictions/linear", &ts_body),
        server.predict("/v1/models/linear:predict", &v1_body),
        server.predict("/v2/models/linear/infer", &v2),
    );
    let want = linear_expected(&x);
    assert_close(&torchserve.1[0], &want, 1e-6);
    assert_close(&v1.1["predictions"][0], &want, 1e-6);
    assert_close(&v2.1["outputs"][0]["data"], &want, 1e-6);
    let batch = server.wait_for_log("running a batch", Duration::from_secs(1));
    assert!(
        batch.contains("rows=3 requests=3"),
        "one batch held all three: {batch}"
    );
}
