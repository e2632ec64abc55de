//! The TorchServe inference API over real HTTP: routes, bodies, headers,
//! the tensor handler for every element type, and bad input.

use crate::common::*;
use serde_json::json;

const ONE_WORKER: &str = "minWorkers: 1\nmaxWorkers: 1\n";

async fn linear_server(store: &Store) -> Server {
    store.dir_model("linear", "linear", Some(ONE_WORKER));
    Server::healthy(Launch::store(store, "all")).await
}

fn is_uuid(value: &str) -> bool {
    value.len() == 36 && value.split('-').map(str::len).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
}

#[tokio::test]
async fn ping_answers_torchserve_healthy_body() {
    let store = Store::new();
    let server = linear_server(&store).await;
    let response = server.get("/ping").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(is_uuid(
        response.headers()["x-request-id"].to_str().unwrap()
    ));
    assert_eq!(
        response.text().await.unwrap(),
        "{\n  \"status\": \"Healthy\"\n}\n"
    );
    // TorchServe accepts any method on /ping.
    let post = server
        .client
        .post(server.url("/ping"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 200);
}

/// One broken model fails readiness (the strict default, for rollouts), unless
/// it is `optional`: then `/ping` stays 200, says "Partial Healthy" and names
/// it, and the other models serve.
/// The prediction routes are answered without axum's router, which wrote
/// `Content-Length` into the answer's headers; hyper writes it instead.
#[tokio::test]
async fn every_prediction_answer_carries_its_length_on_the_wire() {
    let store = Store::new();
    let server = linear_server(&store).await;
    let header = r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}],"parameters":{"binary_data_output":true}}"#;
    let mut binary = header.as_bytes().to_vec();
    binary.extend([1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()));
    let v2 = r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#;
    let requests = [
        (
            "/predictions/linear",
            "[1, 2, 3, 4]".as_bytes().to_vec(),
            None,
        ),
        ("/predictions/linear/1.0", b"[1, 2, 3, 4]".to_vec(), None),
        (
            "/v1/models/linear:predict",
            br#"{"instances":[[1,2,3,4]]}"#.to_vec(),
            None,
        ),
        ("/v2/models/linear/infer", v2.as_bytes().to_vec(), None),
        ("/v2/models/linear/infer", binary, Some(header.len())),
    ];
    for (path, body, header_length) in requests {
        let mut request = server.client.post(server.url(path)).body(body);
        if let Some(length) = header_length {
            request = request.header("inference-header-content-length", length);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert!(
            headers.get("transfer-encoding").is_none(),
            "{path}: {headers:?}"
        );
        let length = headers["content-length"].to_str().unwrap().to_string();
        let body = response.bytes().await.unwrap();
        assert_eq!(length, body.len().to_string(), "{path}");
        assert_eq!(
            headers["cache-control"],
            "no-cache; no-store, must-revalidate, private"
        );
    }
}

#[tokio::test]
async fn a_failed_model_fails_readiness_unless_it_is_optional() {
    let broken = |optional: bool| {
        let store = Store::new();
        store.dir_model("linear", "linear", Some(ONE_WORKER));
        store.file("broken/model.onnx", b"not a graph");
        store.file(
            "broken/model-config.yaml",
            format!("ortserve:\n  optional: {optional}\n").as_bytes(),
        );
        store
    };
    let store = broken(false);
    let server = Server::start(Launch::store(&store, "all"));
    failure_of(&server, "broken").await;
    let (status, body) = status_json(server.get("/ping").await).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["models"]["broken"]["state"], "Failed", "{body}");
    assert_eq!(body["models"]["broken"]["kind"], "bad_graph", "{body}");
    let failures = server.metrics().await;
    assert_eq!(
        failures[r#"ortserve_model_load_failures_total{kind="bad_graph",model="broken",version="1.0"}"#],
        1.0
    );
    assert_eq!(server.get("/v2/health/ready").await.status(), 503);
    drop(server);

    let store = broken(true);
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let (status, body) = status_json(server.get("/ping").await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "Partial Healthy", "{body}");
    assert_eq!(
        body["models"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["broken"],
        "only the failed optional model is named: {body}"
    );
    assert!(body["models"]["broken"]["error"].is_string(), "{body}");
    assert_eq!(server.get("/v2/health/ready").await.status(), 200);
    let (status, _) = server.predict("/predictions/linear", "[1, 2, 3, 4]").await;
    assert_eq!(status, 200);
    let (status, _) = server.predict("/predictions/broken", "[1, 2, 3, 4]").await;
    assert_eq!(status, 503);
}

/// A model configured at start counts for readiness while it loads: `/ping`
/// answers 500 naming it "Loading" until its worker is warmed up, then 200.
/// `slow_warmup` loops 2000 times on the zeros a warm-up run feeds (about
/// 0.3 s on a fast core), and answers other inputs at once.
#[tokio::test]
async fn ping_is_unhealthy_while_a_model_loads_then_healthy() {
    let store = Store::new();
    store
        .dir_model("linear", "linear", Some(ONE_WORKER))
        .dir_model("warm", "slow_warmup", Some(ONE_WORKER));
    let server = Server::start(Launch::store(&store, "all"));
    let (status, body) = status_json(server.get("/ping").await).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["status"], "Unhealthy", "{body}");
    assert_eq!(body["models"]["warm"]["state"], "Loading", "{body}");
    assert_eq!(body["models"]["warm"]["readyWorkers"], 0, "{body}");
    // Loading until it is healthy, with no other state in between.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let body = loop {
        let (status, body) = status_json(server.get("/ping").await).await;
        if status == 200 {
            break body;
        }
        assert_eq!(body["models"]["warm"]["state"], "Loading", "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "never healthy; log:\n{}",
            server.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(body, json!({"status": "Healthy"}));
    assert!(
        server.log().contains("model ready model=warm"),
        "{}",
        server.log()
    );
    let (status, answer) = server.predict("/predictions/warm", "[[3]]").await;
    assert_eq!((status, answer), (200, json!([[3.0]])));
}

#[tokio::test]
async fn api_description_is_openapi_for_the_inference_endpoints() {
    let store = Store::new();
    let server = linear_server(&store).await;
    let response = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/"))
        .send()
        .await
        .unwrap();
    let (status, doc) = status_json(response).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.1");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for path in [
        "/",
        "/ping",
        "/predictions/{model_name}",
        "/predictions/{model_name}/{model_version}",
        "/explanations/{model_name}",
        "/explanations/{model_name}/{model_version}",
        "/v1/models/{model_name}:predict",
        "/v1/models/{model_name}:explain",
        "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/versions/{model_version}/infer",
        "/v2/models/{model_name}/explain",
        "/v2/models/{model_name}/versions/{model_version}/explain",
    ] {
        assert!(paths.contains(&path), "{path} missing from {paths:?}");
    }
    let (_, legacy) = status_json(server.get("/api-description").await).await;
    assert_eq!(legacy, doc);
}

#[tokio::test]
async fn unknown_paths_and_methods_get_torchserve_errors() {
    let store = Store::new();
    let server = linear_server(&store).await;
    // GET / is KServe's liveness answer; other methods get TorchServe's 405.
    let response = server.client.post(server.url("/")).send().await.unwrap();
    assert_eq!(
        response.text().await.unwrap(),
        "{\n  \"code\": 405,\n  \"type\": \"MethodNotAllowedException\",\n  \"message\": \
         \"Requested method is not allowed, please refer to API document.\"\n}\n"
    );
    for path in ["/nothing", "/predictions", "/predictions/linear/1.0/extra"] {
        assert_error(
            server.get(path).await,
            404,
            "ResourceNotFoundException",
            "Requested resource is not found, please refer to API document.",
        )
        .await;
    }
    // A large body sent to an unknown model still gets the 404, not a reset.
    let large = format!("[{}]", ["[1,2,3,4]"; 200_000].join(","));
    assert_error(
        server.post_json("/predictions/nope", &large).await,
        404,
        "ModelNotFoundException",
        "Model not found: nope",
    )
    .await;
    let options = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/predictions/linear"))
        .send()
        .await
        .unwrap();
    assert_error(
        options,
        405,
        "MethodNotAllowedException",
        "Requested method is not allowed",
    )
    .await;
    assert_error(
        server.post_json("/predictions/%FF", "[]").await,
        400,
        "BadRequestException",
        "UTF-8",
    )
    .await;
    assert_error(
        server.post_json("/predictions/linear/9.9", "[]").await,
        404,
        "ModelVersionNotFoundException",
        "Model version: 9.9 does not exist for model: linear",
    )
    .await;
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_echoes_the_callers() {
    let store = Store::new();
    let server = linear_server(&store).await;
    for response in [
        server.get("/ping").await,
        server.get("/nothing").await,
        server.get("/").await,
        server.post_json("/predictions/linear", "[[1,2,3,4]]").await,
        server.post_json("/predictions/linear", "not json").await,
    ] {
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(is_uuid(&id), "{id}");
        assert_eq!(
            response.headers()["cache-control"],
            "no-cache; no-store, must-revalidate, private"
        );
    }
    let response = server
        .client
        .get(server.url("/ping"))
        .header("x-request-id", "trace-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-123");
}

#[tokio::test]
async fn raw_bodies_predict_what_the_model_computes() {
    let store = Store::new();
    let server = linear_server(&store).await;
    let rows = [[1.0f32, 2.0, 3.0, 4.0], [0.5, -1.0, 2.0, 0.0]];
    // `curl -T file` sends a PUT; `--data-binary` a POST: both predict.
    let body = serde_json::to_vec(&rows).unwrap();
    let put = server.put_bytes("/predictions/linear", body.clone()).await;
    let post = server
        .client
        .post(server.url("/predictions/linear/1.0"))
        .body(body)
        .send()
        .await
        .unwrap();
    for response in [put, post] {
        assert_eq!(response.headers()["content-type"], "application/json");
        let (status, answer) = status_json(response).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer.as_array().unwrap().len(), 2);
        for (got, x) in answer.as_array().unwrap().iter().zip(&rows) {
            assert_close(got, &linear_expected(x), 1e-5);
        }
    }
    // One instance without the batch axis is answered without it too.
    let (_, single) = server.predict("/predictions/linear", "[1, 2, 3, 4]").await;
    assert_close(&single, &linear_expected(&rows[0]), 1e-5);
}

#[tokio::test]
async fn multipart_parts_are_instances_answered_in_order() {
    let store = Store::new();
    let server = linear_server(&store).await;
    let form = reqwest::multipart::Form::new()
        .part(
            "data",
            reqwest::multipart::Part::bytes(b"[1, 0, 0, 0]".to_vec()).file_name("a.json"),
        )
        .part(
            "data",
            reqwest::multipart::Part::bytes(b"[0, 0, 0, 2]".to_vec()).file_name("b.json"),
        );
    let response = server.post_multipart("/predictions/linear", form).await;
    let (status, answer) = status_json(response).await;
    assert_eq!(status, 200, "{answer}");
    assert_close(&answer[0], &linear_expected(&[1.0, 0.0, 0.0, 0.0]), 1e-6);
    assert_close(&answer[1], &linear_expected(&[0.0, 0.0, 0.0, 2.0]), 1e-6);

    let one = reqwest::multipart::Form::new().part(
        "data",
        reqwest::multipart::Part::bytes(b"[1, 0, 0, 0]".to_vec()),
    );
    let (_, answer) = status_json(
        server
            .client
            .post(server.url("/predictions/linear"))
            .multipart(one)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_close(&answer, &linear_expected(&[1.0, 0.0, 0.0, 0.0]), 1e-6);

    let unknown = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(b"[1,0,0,0]".to_vec()),
    );
    let response = server
        .client
        .post(server.url("/predictions/linear"))
        .multipart(unknown)
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        400,
        "BadRequestException",
        "unknown multipart field 'image'",
    )
    .await;
}

#[tokio::test]
async fn every_element_type_round_trips_exactly() {
    let store = Store::new();
    store.dir_model("types", "identity_types", Some(ONE_WORKER));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let inputs = json!({
        "x_bool": [[true, false]],
        "x_u8": [[0, 255]],
        "x_u16": [[0, 65535]],
        "x_u32": [[0, 4294967295u64]],
        "x_u64": [[0, 18446744073709551615u64]],
        "x_i8": [[-128, 127]],
        "x_i16": [[-32768, 32767]],
        "x_i32": [[-2147483648i64, 2147483647]],
        "x_i64": [[-9223372036854775808i64, 9223372036854775807i64]],
        "x_f16": [[0.5, -65504.0]],
        "x_bf16": [[1.5, -3.0]],
        "x_f32": [[0.1, -2.5e-8]],
        "x_f64": [[0.1, 1e300]],
        "x_str": [["héllo", "with \"quotes\""]],
    });
    let (status, outputs) = server
        .predict("/predictions/types", &inputs.to_string())
        .await;
    assert_eq!(status, 200, "{outputs}");
    for (name, value) in inputs.as_object().unwrap() {
        let output = name.replacen("x_", "y_", 1);
        assert_eq!(outputs[&output], *value, "{output}");
    }
}

#[tokio::test]
async fn several_inputs_and_outputs_use_objects_keyed_by_name() {
    let store = Store::new();
    store.dir_model("multi", "multi_io", Some(ONE_WORKER));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let features: Vec<f32> = (0..16).map(|j| j as f32 / 4.0).collect();
    let body = json!({"ids": [[3]], "features": [features]});
    let (status, answer) = server
        .predict("/predictions/multi", &body.to_string())
        .await;
    assert_eq!(status, 200, "{answer}");
    let scores: Vec<f32> = (0..4)
        .map(|i| {
            let dot: f32 = (0..16)
                .map(|j| (((i + 2 * j) % 5) as f32 - 2.0) / 4.0 * features[j])
                .sum();
            dot + 3.0
        })
        .collect();
    assert_close(&answer["scores"][0], &scores, 1e-5);
    let best = (0..4)
        .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
        .unwrap();
    assert_eq!(answer["label"], json!([best]));
    assert_eq!(
        answer.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["scores", "label"]
    );
}

#[tokio::test]
async fn bad_input_gets_400s_that_name_the_problem() {
    let store = Store::new();
    store.dir_model(
        "linear",
        "linear",
        Some("minWorkers: 1\nmaxWorkers: 1\nortserve:\n  maxTensorElements: 8\n"),
    );
    store.dir_model("multi", "multi_io", Some(ONE_WORKER));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let cases: &[(&str, &str, &str)] = &[
        (
            "linear",
            "[[1, 2, 3, 4]",
            "invalid JSON for input 'x': the value ends early",
        ),
        (
            "linear",
            "[[1, 2, 3]]",
            "input 'x' expects shape [-1, 4] (-1 = any size) but got shape [1, 3]: axis 1 must be 4",
        ),
        (
            "linear",
            "[[[1, 2, 3, 4]]]",
            "input 'x' expects shape [-1, 4] (-1 = any size) but got shape [1, 1, 4]",
        ),
        (
            "linear",
            r#"[["a", 2, 3, 4]]"#,
            "input 'x' is float32: not a number (got \"a\")",
        ),
        ("linear", "[[1, 2, 3, 4], [1, 2]]", "input 'x' is ragged"),
        (
            "linear",
            "[[1,2,3,4],[1,2,3,4],[1,2,3,4]]",
            "more than 8 elements, the limit set by ortserve.maxTensorElements",
        ),
        ("linear", "", "the request body is empty"),
        (
            "linear",
            "x=1",
            "the body is not JSON; this model takes JSON",
        ),
        (
            "linear",
            "{\"y\": [[1,2,3,4]]}",
            "unknown input 'y'; the model's inputs are: x",
        ),
        (
            "multi",
            "[[1]]",
            "a bare array only fits a single-input model",
        ),
        ("multi", "{\"ids\": [[1]]}", "input 'features' is missing"),
        (
            "multi",
            "{\"ids\": [[1.5]], \"features\": [[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]]}",
            "input 'ids' is int64: not a whole number in range (got 1.5)",
        ),
        (
            "multi",
            "{\"ids\": [[1],[2]], \"features\": [[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]]}",
            "all inputs must have the same number of rows along axis 0 (got features: 1, ids: 2)",
        ),
    ];
    for (model, body, message) in cases {
        let response = server
            .post_json(&format!("/predictions/{model}"), body)
            .await;
        assert_error(response, 400, "BadRequestException", message).await;
    }
    // The server and the other model are unaffected.
    let (status, answer) = server
        .predict("/predictions/linear", "[[1, 2, 3, 4]]")
        .await;
    assert_eq!(status, 200);
    assert_close(&answer[0], &linear_expected(&[1.0, 2.0, 3.0, 4.0]), 1e-5);
}

#[tokio::test]
async fn bodies_over_max_request_size_get_413_before_buffering() {
    let store = Store::new();
    store.dir_model("linear", "linear", Some(ONE_WORKER));
    let server =
        Server::healthy(Launch::store(&store, "all").property("max_request_size=1000")).await;
    let big = format!("[{}]", ["[1,2,3,4]"; 200].join(","));
    assert!(big.len() > 1000);
    let response = server.post_json("/predictions/linear", &big).await;
    assert_error(
        response,
        413,
        "RequestEntityTooLargeException",
        "over max_request_size=1000",
    )
    .await;
    // Without a Content-Length (chunked), the limit still holds while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.as_bytes().chunks(100).map(|c| Ok(c.to_vec())).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let response = server
        .client
        .post(server.url("/predictions/linear"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        413,
        "RequestEntityTooLargeException",
        "max_request_size=1000",
    )
    .await;
    let (status, _) = server.predict("/predictions/linear", "[[1,2,3,4]]").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn responses_over_max_response_size_are_refused() {
    let store = Store::new();
    store.dir_model("linear", "linear", Some(ONE_WORKER));
    let server =
        Server::healthy(Launch::store(&store, "all").property("max_response_size=50")).await;
    let (status, _) = server.predict("/predictions/linear", "[[0,0,0,0]]").await;
    assert_eq!(status, 200);
    let rows = format!("[{}]", ["[1,2,3,4]"; 10].join(","));
    assert_error(
        server.post_json("/predictions/linear", &rows).await,
        500,
        "InternalServerException",
        "over max_response_size=50",
    )
    .await;
}

#[tokio::test]
async fn mnist_shaped_cnn_matches_the_numpy_reference() {
    let store = Store::new();
    store.dir_model("mnist", "mnist_cnn", Some(ONE_WORKER));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(models_dir().join("golden/mnist_cnn.json")).unwrap())
            .unwrap();
    let batch: Vec<Vec<Vec<Vec<f32>>>> = (0..4)
        .map(|n| {
            vec![
                (0..28)
                    .map(|h| {
                        (0..28)
                            .map(|w| ((n * 31 + h * 28 + w) % 17) as f32 / 17.0)
                            .collect()
                    })
                    .collect(),
            ]
        })
        .collect();
    let (status, answer) = server
        .predict(
            "/predictions/mnist",
            &serde_json::to_string(&batch).unwrap(),
        )
        .await;
    assert_eq!(status, 200);
    assert_rows_close(&answer, &golden["logits"], 1e-4);
}
