//! The Open Inference Protocol (KServe v2) over real HTTP: server and model
//! metadata, readiness, versions, JSON and binary tensors of every datatype,
//! and the reference sample requests.

use crate::common::*;
use half::{bf16, f16};
use serde_json::{Value, json};

const ONE_WORKER: &str = "minWorkers: 1\nmaxWorkers: 1\n";

#[tokio::test]
async fn server_metadata_liveness_and_readiness() {
    let store = Store::new();
    store.dir_model("linear", "linear", Some(ONE_WORKER));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let (status, body) = status_json(server.get("/v2").await).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"name": "ortserve", "version": env!("CARGO_PKG_VERSION"),
               "extensions": ["binary_tensor_data", "model_configuration", "statistics", "model_repository"]})
    );
    assert_eq!(
        status_json(server.get("/v2/health/live").await).await,
        (200, json!({"live": true}))
    );
    assert_eq!(
        status_json(server.get("/v2/health/ready").await).await,
        (200, json!({"ready": true}))
    );
    assert_eq!(
        status_json(server.get("/v2/models").await).await,
        (200, json!({"models": ["linear"]}))
    );
    drop(server);

    // A model that cannot load makes the server not ready, as /ping says.
    store.mar(
        "custom.mar",
        &Manifest::new("custom", "1.0").handler("custom.py"),
        "linear",
        &[],
    );
    let server = Server::start(Launch::store(&store, "all"));
    server.wait_settled().await;
    assert_kserve_error(
        server.get("/v2/health/ready").await,
        503,
        "Server is not ready.",
    )
    .await;
    assert_eq!(server.get("/v2/health/live").await.status(), 200);
    assert_eq!(server.get("/v2/models/linear/ready").await.status(), 200);
    assert_kserve_error(
        server.get("/v2/models/custom/ready").await,
        503,
        "Model with name custom is not ready",
    )
    .await;
}

/// Under `/v1` and `/v2` every answer is KServe's `{"error"}`, which KServe
/// and Triton clients parse, unknown routes and methods included; other
/// paths keep TorchServe's body.
#[tokio::test]
async fn unknown_routes_and_methods_under_kserve_paths_answer_kserve_bodies() {
    let store = Store::new();
    store.dir_model("linear", "linear", Some(ONE_WORKER));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let not_found =
        json!({"error": "Requested resource is not found, please refer to API document."});
    for path in [
        "/v2/foo",
        "/v1/nothing",
        "/v1",
        "/v2/models/linear/nothing",
        "/v2/models/linear/versions/1.0/infer/more",
    ] {
        let (status, body) = status_json(server.get(path).await).await;
        assert_eq!((status, body), (404, not_found.clone()), "GET {path}");
    }
    let not_allowed =
        json!({"error": "Requested method is not allowed, please refer to API document."});
    let client = &server.client;
    for request in [
        client.delete(server.url("/v2/health/live")),
        client.get(server.url("/v2/models/linear/infer")),
        client.put(server.url("/v2/models/linear/config")),
        client.post(server.url("/v2/models/stats")),
        client.post(server.url("/v2")),
        client.delete(server.url("/v1/models")),
    ] {
        let response = request.send().await.unwrap();
        let url = response.url().to_string();
        assert_eq!(
            status_json(response).await,
            (405, not_allowed.clone()),
            "{url}"
        );
    }
    for path in ["/nothing", "/v10/models"] {
        let (status, body) = status_json(server.get(path).await).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["type"], "ResourceNotFoundException", "{path}: {body}");
    }
}

/// Triton's configuration and statistics extensions, over plain HTTP (the
/// real tritonclient reads them in tests/real_clients.rs).
#[tokio::test]
async fn model_config_and_statistics_have_triton_shapes() {
    let store = Store::new();
    store.dir_model(
        "linear",
        "linear",
        Some("minWorkers: 1\nmaxWorkers: 2\nbatchSize: 4\nmaxBatchDelay: 7\n"),
    );
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let (status, config) = status_json(server.get("/v2/models/linear/config").await).await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(
        config,
        json!({
            "name": "linear",
            "platform": "onnxruntime_onnx",
            "backend": "onnxruntime",
            "version_policy": {"all": {}},
            "max_batch_size": 4,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
            "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [3]}],
            "instance_group": [{"name": "linear", "count": 2, "kind": "KIND_CPU"}],
            "dynamic_batching": {"preferred_batch_size": [], "max_queue_delay_microseconds": 7000},
        })
    );
    assert_eq!(
        status_json(server.get("/v2/models/linear/versions/1.0/config").await).await,
        (200, config)
    );

    let infer = r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}"#;
    for _ in 0..3 {
        assert_eq!(
            server.predict("/v2/models/linear/infer", infer).await.0,
            200
        );
    }
    let (status, stats) = status_json(server.get("/v2/models/linear/stats").await).await;
    assert_eq!(status, 200, "{stats}");
    let model = &stats["model_stats"][0];
    assert_eq!(
        (&model["name"], &model["version"]),
        (&json!("linear"), &json!("1.0"))
    );
    let counts = |field: &str| model["inference_stats"][field]["count"].as_u64().unwrap();
    assert_eq!(counts("success"), 3, "{stats}");
    assert_eq!(counts("fail"), 0, "{stats}");
    assert_eq!(counts("queue"), 3, "{stats}");
    assert_eq!(counts("compute_infer"), 3, "{stats}");
    assert_eq!(model["inference_count"], 3, "{stats}");
    assert_eq!(model["execution_count"], 3, "{stats}");
    assert!(model["last_inference"].as_u64().unwrap() > 0, "{stats}");
    assert!(
        model["inference_stats"]["success"]["ns"].as_u64().unwrap() > 0,
        "{stats}"
    );
    for path in ["/v2/models/stats", "/v2/models/linear/versions/1.0/stats"] {
        let (status, body) = status_json(server.get(path).await).await;
        assert_eq!((status, &body["model_stats"][0]), (200, model), "{path}");
    }

    assert_kserve_error(
        server.get("/v2/models/nope/stats").await,
        404,
        "Model with name nope does not exist.",
    )
    .await;
    for path in [
        "/v2/models/linear/versions/9/stats",
        "/v2/models/linear/versions/9/config",
        "/v2/models/nope/config",
    ] {
        let (status, body) = status_json(server.get(path).await).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
}

#[tokio::test]
async fn model_metadata_comes_from_the_graph_for_every_version() {
    let store = Store::new();
    store
        .mar(
            "m1.mar",
            &Manifest::new("m", "1.0"),
            "linear",
            &[("model-config.yaml", ONE_WORKER.as_bytes())],
        )
        .mar(
            "m2.mar",
            &Manifest::new("m", "2.0"),
            "multi_io",
            &[("model-config.yaml", ONE_WORKER.as_bytes())],
        );
    let server = Server::healthy(Launch::store(&store, "all")).await;
    server.wait_versions_ready("m", &["1.0"]).await;
    let (status, body) = status_json(server.get("/v2/models/m").await).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({
            "name": "m", "versions": ["1.0", "2.0"], "platform": "onnxruntime_onnx",
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 16]}, {"name": "ids", "datatype": "INT64", "shape": [-1, 1]}],
            "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 4]}, {"name": "label", "datatype": "INT64", "shape": [-1]}],
        })
    );
    let (_, v1) = status_json(server.get("/v2/models/m/versions/1.0").await).await;
    assert_eq!(
        v1["inputs"],
        json!([{"name": "x", "datatype": "FP32", "shape": [-1, 4]}])
    );
    assert_eq!(
        status_json(server.get("/v2/models/m/versions/1.0/ready").await).await,
        (200, json!({"name": "m", "ready": true}))
    );
    assert_kserve_error(
        server.get("/v2/models/m/versions/9.0").await,
        404,
        "Model version: 9.0 does not exist for model: m",
    )
    .await;
    assert_kserve_error(
        server.get("/v2/models/nope").await,
        404,
        "Model with name nope does not exist.",
    )
    .await;
    // Inference on a version.
    let request = json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]});
    let (status, body) = server
        .predict("/v2/models/m/versions/1.0/infer", &request.to_string())
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["model_name"], &body["model_version"]),
        (&json!("m"), &json!("1.0"))
    );
    assert_close(
        &body["outputs"][0]["data"],
        &linear_expected(&[1.0, 2.0, 3.0, 4.0]),
        1e-6,
    );
}

#[tokio::test]
async fn json_tensors_nested_or_flat_with_id_outputs_and_parameters() {
    let store = Store::new();
    store.dir_model("multi", "multi_io", Some(ONE_WORKER));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let features: Vec<f32> = (0..32).map(|i| (i % 7) as f32 - 3.0).collect();
    let flat = json!({
        "id": "request-42",
        "parameters": {"priority": 1, "note": "any", "flag": true},
        "inputs": [
            {"name": "features", "shape": [2, 16], "datatype": "FP32", "data": features, "parameters": {"x": "y"}},
            {"name": "ids", "shape": [2, 1], "datatype": "INT64", "data": [1, 5]},
        ],
        "outputs": [{"name": "label"}, {"name": "scores"}],
    });
    let mut nested = flat.clone();
    nested["inputs"][0]["data"] = json!([features[..16], features[16..]]);
    let scores = |row: usize, id: f32| -> Vec<f32> {
        (0..4)
            .map(|i| {
                (0..16)
                    .map(|j| (((i + 2 * j) % 5) as f32 - 2.0) / 4.0 * features[row * 16 + j])
                    .sum::<f32>()
                    + id
            })
            .collect()
    };
    let (s0, s1) = (scores(0, 1.0), scores(1, 5.0));
    let argmax = |s: &[f32]| (0..4).max_by(|&a, &b| s[a].total_cmp(&s[b])).unwrap();
    for request in [flat, nested] {
        let (status, body) = server
            .predict("/v2/models/multi/infer", &request.to_string())
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["id"], "request-42");
        assert_eq!(
            body["outputs"][0],
            json!({"name": "label", "datatype": "INT64", "shape": [2], "data": [argmax(&s0), argmax(&s1)]})
        );
        assert_eq!(body["outputs"][1]["shape"], json!([2, 4]));
        assert_close(
            &body["outputs"][1]["data"],
            &[s0.clone(), s1.clone()].concat(),
            1e-5,
        );
    }
}

/// Every datatype of `identity_types`: the JSON values, and their OIP names.
fn every_type() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("bool", "BOOL", json!([true, false])),
        ("u8", "UINT8", json!([0, 255])),
        ("u16", "UINT16", json!([1, 65535])),
        ("u32", "UINT32", json!([2, 4294967295u64])),
        ("u64", "UINT64", json!([3, 18446744073709551615u64])),
        ("i8", "INT8", json!([-128, 127])),
        ("i16", "INT16", json!([-32768, 32767])),
        ("i32", "INT32", json!([-2147483648i64, 2147483647])),
        (
            "i64",
            "INT64",
            json!([-9223372036854775808i64, 9223372036854775807i64]),
        ),
        ("f16", "FP16", json!([0.5, -65504.0])),
        ("bf16", "BF16", json!([1.5, -3.0])),
        ("f32", "FP32", json!([0.1, -2.5e-8])),
        ("f64", "FP64", json!([0.1, 1e300])),
        ("str", "BYTES", json!(["héllo", ""])),
    ]
}

/// Little-endian bytes of a JSON element list, as the binary extension sends them.
fn binary_of(datatype: &str, values: &Value) -> Vec<u8> {
    let items = values.as_array().unwrap();
    let mut out = Vec::new();
    for v in items {
        match datatype {
            "BOOL" => out.push(v.as_bool().unwrap() as u8),
            "UINT8" => out.push(v.as_u64().unwrap() as u8),
            "UINT16" => out.extend((v.as_u64().unwrap() as u16).to_le_bytes()),
            "UINT32" => out.extend((v.as_u64().unwrap() as u32).to_le_bytes()),
            "UINT64" => out.extend(v.as_u64().unwrap().to_le_bytes()),
            "INT8" => out.extend((v.as_i64().unwrap() as i8).to_le_bytes()),
            "INT16" => out.extend((v.as_i64().unwrap() as i16).to_le_bytes()),
            "INT32" => out.extend((v.as_i64().unwrap() as i32).to_le_bytes()),
            "INT64" => out.extend(v.as_i64().unwrap().to_le_bytes()),
            "FP16" => out.extend(f16::from_f64(v.as_f64().unwrap()).to_le_bytes()),
            "BF16" => out.extend(bf16::from_f64(v.as_f64().unwrap()).to_le_bytes()),
            "FP32" => out.extend((v.as_f64().unwrap() as f32).to_le_bytes()),
            "FP64" => out.extend(v.as_f64().unwrap().to_le_bytes()),
            "BYTES" => {
                let s = v.as_str().unwrap();
                out.extend((s.len() as u32).to_le_bytes());
                out.extend(s.as_bytes());
            }
            other => panic!("{other}"),
        }
    }
    out
}

#[tokio::test]
async fn every_datatype_round_trips_as_json_and_as_binary() {
    let store = Store::new();
    store.dir_model("types", "identity_types", Some(ONE_WORKER));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let types = every_type();

    // JSON in, JSON out (FP16 and BF16 as JSON numbers, unlike KServe's server).
    let inputs: Vec<Value> = types
        .iter()
        .map(|(suffix, datatype, data)| json!({"name": format!("x_{suffix}"), "shape": [1, 2], "datatype": datatype, "data": data}))
        .collect();
    let (status, body) = server
        .predict(
            "/v2/models/types/infer",
            &json!({"inputs": inputs}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for (suffix, datatype, data) in &types {
        let output = body["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == format!("y_{suffix}"))
            .unwrap();
        assert_eq!(
            output,
            &json!({"name": format!("y_{suffix}"), "datatype": datatype, "shape": [1, 2], "data": data})
        );
    }

    // Binary in, binary out.
    let mut binary = Vec::new();
    let inputs: Vec<Value> = types
        .iter()
        .map(|(suffix, datatype, data)| {
            let bytes = binary_of(datatype, data);
            let size = bytes.len();
            binary.extend(bytes);
            json!({"name": format!("x_{suffix}"), "shape": [1, 2], "datatype": datatype, "parameters": {"binary_data_size": size}})
        })
        .collect();
    let header = json!({"inputs": inputs, "parameters": {"binary_data_output": true}}).to_string();
    let response = server
        .client
        .post(server.url("/v2/models/types/infer"))
        .header("inference-header-content-length", header.len())
        .header("content-type", "application/octet-stream")
        .body([header.as_bytes(), &binary].concat())
        .send()
        .await
        .unwrap();
    let (body, bytes) = binary_parts(response).await;
    let mut rest = &bytes[..];
    for output in body["outputs"].as_array().unwrap() {
        let size = output["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
        let (data, tail) = rest.split_at(size);
        rest = tail;
        let (_, datatype, values) = types
            .iter()
            .find(|(s, _, _)| output["name"] == format!("y_{s}"))
            .unwrap();
        assert_eq!(data, binary_of(datatype, values), "{output}");
        assert!(output.get("data").is_none());
    }
    assert!(rest.is_empty());
}

#[tokio::test]
async fn malformed_binary_framing_is_refused_before_allocation() {
    let store = Store::new();
    store.dir_model("linear", "linear", Some(ONE_WORKER));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let header = json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}).to_string();
    let send = |length: String, body: Vec<u8>| {
        server
            .client
            .post(server.url("/v2/models/linear/infer"))
            .header("inference-header-content-length", length)
            .body(body)
            .send()
    };
    let cases = [
        (
            send("99999999".into(), [header.as_bytes(), &[0; 16]].concat())
                .await
                .unwrap(),
            "Inference-Header-Content-Length is 99999999",
        ),
        (
            send(
                header.len().to_string(),
                [header.as_bytes(), &[0; 4]].concat(),
            )
            .await
            .unwrap(),
            "binary_data_size is 16 but only 4 bytes",
        ),
        (
            send("x".into(), header.as_bytes().to_vec()).await.unwrap(),
            "Inference-Header-Content-Length must be a whole number",
        ),
    ];
    for (response, message) in cases {
        assert_kserve_error(response, 400, message).await;
    }
    let one = |data: f32| {
        [
            header.as_bytes(),
            &[1.0f32, 2.0, 3.0, data]
                .iter()
                .flat_map(|f| f.to_le_bytes())
                .collect::<Vec<_>>(),
        ]
        .concat()
    };
    let (status, body) = status_json(send(header.len().to_string(), one(4.0)).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_close(
        &body["outputs"][0]["data"],
        &linear_expected(&[1.0, 2.0, 3.0, 4.0]),
        1e-6,
    );
}

#[tokio::test]
async fn the_reference_v2_sample_runs_and_matches_the_other_protocols() {
    let store = Store::new();
    store
        .dir_model("mnist", "mnist_v2", Some(ONE_WORKER))
        .dir_model("cnn", "mnist_cnn", Some(ONE_WORKER));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let sample = std::fs::read_to_string(
        data_dir().join("reference/torchserve_kserve_v2_mnist_tensor_request.json"),
    )
    .unwrap();
    let (status, body) = server.predict("/v2/models/mnist/infer", &sample).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "d3b15cad-50a2-4eaf-80ce-8b0a428bd298");
    assert_eq!(body["outputs"][0]["shape"], json!([1, 10]));
    // The same pixels through TorchServe's route on the same weights.
    let request: Value = serde_json::from_str(&sample).unwrap();
    let image = &request["inputs"][0]["data"];
    let (_, torchserve) = server
        .predict("/predictions/cnn", &json!([[image[0]]]).to_string())
        .await;
    assert_close(
        &body["outputs"][0]["data"],
        &torchserve[0]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect::<Vec<_>>(),
        1e-6,
    );
    // Upstream samples for other models get 400s that name what is wrong
    // (the bert sample's bare `"shape": 150` is read as [150]).
    for (file, message) in [
        (
            "torchserve_kserve_v2_mnist_bytes_request.json",
            "unknown input '312a4eb0-0ca7-4803-a101-a6d2c18486fe'; the model's inputs are: input-0",
        ),
        (
            "torchserve_kserve_v2_bert_tensor_request.json",
            "unknown input 'input_ids'; the model's inputs are: input-0",
        ),
    ] {
        let body = std::fs::read_to_string(data_dir().join("reference").join(file)).unwrap();
        assert_kserve_error(
            server.post_json("/v2/models/mnist/infer", &body).await,
            400,
            message,
        )
        .await;
    }
}
