//! TorchServe's own regression checks (pytorch/serve `test/postman/`: the
//! inference, KServe v1, KServe v2 and explanation collections), rewritten:
//! the same requests — raw file bodies with no `Content-Type`, the upstream
//! sample files — and the same assertions (exact text, exact JSON, the
//! top-5 label map within 1 %, response sizes, the `Requests2XX` line), on
//! our own models, whose expected answers come from the plain tensor route
//! on the same weights. docs/differences-from-torchserve.md lists the
//! upstream requests that do not apply here and why.

use crate::common::*;
use serde_json::{Value, json};

const DIGITS: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

/// The MNIST example's preprocessing here: the 28×28 PNG's pixels / 255.
const GRAY_28: &str = "    resize: 28\n    mean: [0]\n    std: [1]\n";

/// `mnist` answers like TorchServe's MNIST example (the digit only), on the
/// v2 sample's input (`input-0`, N×28×28); `top5` answers like TorchServe's
/// `image_classifier` (a top-5 label map); `cnn` is the same weights behind
/// the plain tensor handler, which gives the expected answers.
async fn server() -> Server {
    let store = Store::new();
    let classifier = |answer: &str| {
        format!(
            "minWorkers: 1\nmaxWorkers: 1\nortserve:\n  handler: image_classifier\n  imageClassifier:\n{GRAY_28}    answer: {answer}\n"
        )
    };
    store
        .dir_model("mnist", "mnist_v2", Some(&classifier("argmax")))
        .dir_model("top5", "mnist_cnn", Some(&classifier("torchserve")))
        .dir_model("cnn", "mnist_cnn", Some("minWorkers: 1\nmaxWorkers: 1\n"));
    let labels: serde_json::Map<String, Value> = DIGITS
        .iter()
        .enumerate()
        .map(|(i, label)| (i.to_string(), json!(["n0", label])))
        .collect();
    store.file(
        "top5/index_to_name.json",
        Value::Object(labels).to_string().as_bytes(),
    );
    Server::healthy(Launch::store(&store, "all").property("metrics_mode=prometheus")).await
}

/// Postman's request: the file's bytes as the whole body, no headers.
async fn post_file(server: &Server, path: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.url(path))
        .body(body)
        .send()
        .await
        .unwrap()
}

/// The model's ten scores for one 28×28 image, through the tensor route.
async fn logits(server: &Server, image: &Value) -> Vec<f32> {
    let (status, answer) = server
        .predict("/predictions/cnn", &json!([image]).to_string())
        .await;
    assert_eq!(status, 200, "{answer}");
    let flat: Vec<f32> = answer
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| match v {
            Value::Array(row) => row.clone(),
            other => vec![other.clone()],
        })
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(flat.len(), 10, "{answer}");
    flat
}

fn argmax(scores: &[f32]) -> usize {
    (0..scores.len()).fold(0, |best, i| if scores[i] > scores[best] { i } else { best })
}

/// A PNG as the pixels / 255 the models see, 28 rows of 28.
fn pixels(png: &[u8]) -> Value {
    let gray = image::load_from_memory(png).unwrap().into_luma8();
    json!(
        (0..28)
            .map(|y| (0..28)
                .map(|x| gray.get_pixel(x, y)[0] as f32 / 255.0)
                .collect::<Vec<_>>())
            .collect::<Vec<_>>()
    )
}

fn reference(file: &str) -> Vec<u8> {
    std::fs::read(data_dir().join("reference").join(file)).unwrap()
}

/// The PNG inside the v2 BYTES sample (a different digit from the v1 one).
fn bytes_sample_png() -> Vec<u8> {
    let sample: Value =
        serde_json::from_slice(&reference("torchserve_kserve_v2_mnist_bytes_request.json"))
            .unwrap();
    let data = sample["inputs"][0]["data"][0].as_str().unwrap();
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data).unwrap()
}

/// inference_api_test_collection, the image_classifier entries: the answer is
/// one JSON object of exactly the top-5 labels (same keys, best first), each
/// probability within 1 % of the expected one.
#[tokio::test]
async fn inference_suite_image_classifier_answers_the_top5_label_map() {
    let server = server().await;
    let (png, _) = sample_png_and_tensor();
    let scores = logits(&server, &pixels(&png)).await;
    let exps: Vec<f32> = scores.iter().map(|s| s.exp()).collect();
    let sum: f32 = exps.iter().sum();
    let mut ranked: Vec<usize> = (0..10).collect();
    ranked.sort_by(|&a, &b| exps[b].total_cmp(&exps[a]));

    let response = post_file(&server, "/predictions/top5", png).await;
    let (status, answer) = status_json(response).await;
    assert_eq!(status, 200, "{answer}");
    let map = answer.as_object().expect("a single JSON object");
    let keys: Vec<&str> = map.keys().map(String::as_str).collect();
    let expected: Vec<&str> = ranked[..5].iter().map(|&i| DIGITS[i]).collect();
    assert_eq!(keys, expected, "{answer}");
    for &i in &ranked[..5] {
        let want = exps[i] / sum;
        let got = map[DIGITS[i]].as_f64().unwrap() as f32;
        assert!(
            (got - want).abs() < want * 0.01,
            "{}: {got} vs {want}",
            DIGITS[i]
        );
    }
}

/// inference_api_test_collection, the mnist entries: the body is exactly the
/// digit, as text; the 404 checks of the upstream-derived collection (JSON
/// bodies with `type` and `message`); and the "Model Metrics" item.
#[tokio::test]
async fn inference_suite_mnist_answers_the_digit_as_text_and_unknowns_are_json_404s() {
    let server = server().await;
    let (png, _) = sample_png_and_tensor();
    let digit = argmax(&logits(&server, &pixels(&png)).await);
    let response = post_file(&server, "/predictions/mnist", png.clone()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), digit.to_string());

    for path in ["/predictions/squeezenet0_0", "/predictions/mnist/0.0"] {
        let (status, body) = status_json(post_file(&server, path, png.clone()).await).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            body["type"].is_string() && body["message"].is_string(),
            "{body}"
        );
    }

    // "Model Metrics": the Requests2XX line, in TorchServe's format.
    let metrics = reqwest::get(server.metrics_url())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(matches_postman_check(&metrics), "{metrics}");
}

/// kf_api_test_collection with kf_inference_data: `:predict` deep-equals
/// `{"predictions": [digit]}`; `:explain` answers one top-level key.
#[tokio::test]
async fn kserve_v1_suite_predicts_the_digit_and_explains() {
    let server = server().await;
    let (png, _) = sample_png_and_tensor();
    let digit = argmax(&logits(&server, &pixels(&png)).await);
    let sample = reference("torchserve_kserve_v1_mnist_request.json");
    let (status, body) =
        status_json(post_file(&server, "/v1/models/mnist:predict", sample.clone()).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"predictions": [digit]}));

    let (status, body) =
        status_json(post_file(&server, "/v1/models/mnist:explain", sample).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    assert_eq!(body["explanations"][0][0].as_array().unwrap().len(), 28);
}

/// kfv2_api_test_collection with kfv2_inference_data: `/infer` deep-equals
/// the envelope's answer (the digit as INT64, named after the input, the id
/// echoed, no other keys); `/explain` answers four top-level keys.
#[tokio::test]
async fn kserve_v2_suite_infers_the_digit_and_explains() {
    let server = server().await;
    let sample = reference("torchserve_kserve_v2_mnist_tensor_request.json");
    let image = serde_json::from_slice::<Value>(&sample).unwrap()["inputs"][0]["data"][0].clone();
    let digit = argmax(&logits(&server, &image).await);
    let (status, body) =
        status_json(post_file(&server, "/v2/models/mnist/infer", sample.clone()).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({
            "id": "d3b15cad-50a2-4eaf-80ce-8b0a428bd298",
            "model_name": "mnist",
            "model_version": "1.0",
            "outputs": [{"name": "input-0", "shape": [1], "datatype": "INT64", "data": [digit]}]
        })
    );

    let (status, body) =
        status_json(post_file(&server, "/v2/models/mnist/explain", sample).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_object().unwrap().len(), 4, "{body}");
}

/// TorchServe's KServe v2 BYTES sample: the image as base64 under an
/// arbitrary input name with `shape: [-1]`, and the same file raw in the
/// binary extension, both answered by the handler as one output.
#[tokio::test]
async fn kserve_v2_bytes_payloads_go_through_the_handler() {
    let server = server().await;
    let png = bytes_sample_png();
    let digit = argmax(&logits(&server, &pixels(&png)).await) as i64;
    let name = "312a4eb0-0ca7-4803-a101-a6d2c18486fe";
    let sample = reference("torchserve_kserve_v2_mnist_bytes_request.json");
    let (status, body) =
        status_json(post_file(&server, "/v2/models/mnist/infer", sample).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["outputs"],
        json!([{"name": name, "shape": [1], "datatype": "INT64", "data": [digit]}])
    );

    // Binary: two files, each a 4-byte length and the PNG's own bytes.
    let mut data = Vec::new();
    for _ in 0..2 {
        data.extend_from_slice(&(png.len() as u32).to_le_bytes());
        data.extend_from_slice(&png);
    }
    let header = json!({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
        "parameters": {"binary_data_size": data.len()}}]})
    .to_string();
    let response = reqwest::Client::new()
        .post(server.url("/v2/models/top5/infer"))
        .header("inference-header-content-length", header.len())
        .body([header.as_bytes(), &data].concat())
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(response).await;
    assert_eq!(status, 200, "{body}");
    let output = &body["outputs"][0];
    assert_eq!(
        (&output["name"], &output["datatype"], &output["shape"]),
        (&json!("image"), &json!("BYTES"), &json!([2]))
    );
    let first: Value = serde_json::from_str(output["data"][0].as_str().unwrap()).unwrap();
    assert_eq!(first.as_object().unwrap().len(), 5, "{first}");
    assert_eq!(
        first.as_object().unwrap().keys().next().unwrap(),
        DIGITS[digit as usize]
    );

    // What cannot be a payload is a 400 that says why, never a parser message.
    for (request, message) in [
        (
            json!({"inputs": [{"name": "x", "shape": -1, "datatype": "BYTES", "data": [1]}]}),
            "input 'x': a BYTES payload is a string (the file in base64) or a list of them",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [3], "datatype": "BYTES", "data": ["aGk="]}]}),
            "input 'x': shape [3] has 3 elements but 1 payloads were sent",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}]}),
            "the body is not an image this model can read",
        ),
    ] {
        assert_kserve_error(
            server
                .post_json("/v2/models/mnist/infer", &request.to_string())
                .await,
            400,
            message,
        )
        .await;
    }
}

/// explanation_api_test_collection: `/explanations/mnist` with the raw PNG
/// answers a JSON value of size 1 (one instance's attributions).
#[tokio::test]
async fn explanation_suite_answers_one_instance() {
    let server = server().await;
    let (png, _) = sample_png_and_tensor();
    let (status, body) = status_json(post_file(&server, "/explanations/mnist", png).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 1, "{body}");
}

/// KServe v1's wrapper form for a tensor model: `{"instances": [{"data":
/// [...]}]}` is the one input, and an instance's `target` picks the class
/// an explanation explains.
#[tokio::test]
async fn kserve_v1_data_instances_reach_tensor_models() {
    let server = server().await;
    let (png, _) = sample_png_and_tensor();
    let image = json!([pixels(&png)]);
    let scores = logits(&server, &image[0]).await;
    let request = json!({"instances": [{"data": image}]}).to_string();
    let (status, body) = server.predict("/v1/models/cnn:predict", &request).await;
    assert_eq!(status, 200, "{body}");
    assert_close(&json!(body["predictions"][0]), &scores, 1e-6);

    let explain = |target: usize| json!({"instances": [{"data": image, "target": target}]});
    let (_, zero) = server
        .predict("/v1/models/cnn:explain", &explain(0).to_string())
        .await;
    let (_, nine) = server
        .predict("/v1/models/cnn:explain", &explain(9).to_string())
        .await;
    assert_eq!(zero["explanations"].as_array().unwrap().len(), 1, "{zero}");
    assert_ne!(
        zero, nine,
        "the instance's target chooses what is explained"
    );
}
