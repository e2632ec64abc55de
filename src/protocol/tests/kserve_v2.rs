//! The Open Inference Protocol as a service: `/v2/models/{m}[/versions/{v}]/infer`
//! and `/explain` with JSON and binary tensors, and every error as
//! `{"error": "..."}` with KServe's wording.

use axum::body::{Body, Bytes};
use axum::http::{Method, Request, header};

use super::cases::{self, LOAD_FAILURE, QUEUE_FULL, RUN_FAILED, SMALL_QUEUE, TIMEOUT};
use super::{BODY_TIMED_OUT, Server, kserve_error, post, post_stalled, post_streamed};

const INFER: &str = "/v2/models/m/infer";
const INFER_VERSION: &str = "/v2/models/m/versions/1.0/infer";
const NOT_FOUND: &str = "Requested resource is not found, please refer to API document.";
const NOT_ALLOWED: &str = "Requested method is not allowed, please refer to API document.";

/// A JSON request for `x` holding `values`, one per row.
fn json_rows(values: &[f32]) -> String {
    let data: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!(
        r#"{{"id":"r1","inputs":[{{"name":"x","shape":[{},1],"datatype":"FP32","data":[{}]}}]}}"#,
        values.len(),
        data.join(",")
    )
}

/// The JSON answer the echo gives to [`json_rows`].
fn json_answer(values: &[f32]) -> String {
    let data: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!(
        r#"{{"model_name":"m","model_version":"1.0","id":"r1","outputs":[{{"name":"x","datatype":"FP32","shape":[{},1],"data":[{}]}}]}}"#,
        values.len(),
        data.join(",")
    )
    .replace(r#""name":"x""#, r#""name":"y""#)
}

/// A binary request for `x` holding `values`, asking for `y` in binary.
fn binary_request(path: &str, values: &[f32]) -> Request<Body> {
    let header = format!(
        r#"{{"inputs":[{{"name":"x","shape":[{},1],"datatype":"FP32","parameters":{{"binary_data_size":{}}}}}],"outputs":[{{"name":"y","parameters":{{"binary_data":true}}}}]}}"#,
        values.len(),
        values.len() * 4
    );
    let mut body = header.clone().into_bytes();
    body.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    let mut request = post(path, "application/octet-stream", Bytes::from(body));
    request
        .headers_mut()
        .insert("inference-header-content-length", header.len().into());
    request
}

#[tokio::test]
async fn json_tensors_are_echoed_on_both_routes() {
    let server = Server::echo().await;
    for path in [INFER, INFER_VERSION] {
        let reply = server.post_json(path, &json_rows(&[1.5, 2.5])).await;
        reply.assert_json(200, &json_answer(&[1.5, 2.5]));
        assert!(!reply.closes());
    }
}

#[tokio::test]
async fn binary_tensors_are_echoed_in_binary() {
    let server = Server::echo().await;
    let reply = server.send(binary_request(INFER, &[1.5, -2.0])).await;
    let json = r#"{"model_name":"m","model_version":"1.0","outputs":[{"name":"y","datatype":"FP32","shape":[2,1],"parameters":{"binary_data_size":8}}]}"#;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/octet-stream")
    );
    let length = json.len().to_string();
    assert_eq!(
        reply.header("inference-header-content-length"),
        Some(&*length)
    );
    let mut expected = json.as_bytes().to_vec();
    expected.extend([1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()));
    assert_eq!(reply.body, expected);
}

#[tokio::test]
async fn explanations_attribute_the_echo_to_its_input() {
    let server = Server::echo().await;
    let answer = r#"{"model_name":"m","model_version":"1.0","id":"r1","outputs":[{"name":"x","datatype":"FP32","shape":[1,1],"data":[2.0]}]}"#;
    for path in ["/v2/models/m/explain", "/v2/models/m/versions/1.0/explain"] {
        let reply = server.post_json(path, &json_rows(&[2.0])).await;
        reply.assert_json(200, answer);
    }
}

#[tokio::test]
async fn unknown_model_and_version_are_404_and_close_the_unread_body() {
    let server = Server::echo().await;
    let unknown_model = kserve_error("Model with name nope does not exist.");
    let reply = server
        .post_json("/v2/models/nope/infer", &json_rows(&[1.0]))
        .await;
    reply.assert_error(404, &unknown_model);
    assert!(reply.closes());
    let reply = server
        .send(binary_request("/v2/models/nope/explain", &[1.0]))
        .await;
    reply.assert_error(404, &unknown_model);
    assert!(reply.closes());
    let path = "/v2/models/m/versions/9.9/infer";
    let reply = server.post_json(path, &json_rows(&[1.0])).await;
    let message = "Model version: 9.9 does not exist for model: m";
    reply.assert_error(404, &kserve_error(message));
    assert!(reply.closes());
    let reply = server.get("/v2/models/nope").await;
    reply.assert_error(404, &unknown_model);
}

#[tokio::test]
async fn a_loading_or_failed_model_is_503_with_its_reason() {
    let reply = cases::loading().post_json(INFER, &json_rows(&[1.0])).await;
    let message = "Model with name m is not ready: version 1.0 is still loading";
    reply.assert_retry_later(&kserve_error(message));
    assert!(reply.closes());
    let reply = cases::failed()
        .send(binary_request(INFER_VERSION, &[1.0]))
        .await;
    let message =
        format!("Model with name m is not ready: version 1.0 failed to load: {LOAD_FAILURE}");
    reply.assert_retry_later(&kserve_error(&message));
}

#[tokio::test]
async fn bad_json_tensors_are_400_naming_the_field() {
    let server = Server::echo().await;
    let wrong_name = json_rows(&[1.0]).replace(r#""name":"x""#, r#""name":"z""#);
    let reply = server.post_json(INFER, &wrong_name).await;
    let message = "unknown input 'z'; the model's inputs are: x";
    reply.assert_error(400, &kserve_error(message));
    assert!(!reply.closes(), "the body was read");
    let wrong_type = json_rows(&[1.0]).replace("FP32", "INT32");
    let reply = server.post_json(INFER, &wrong_type).await;
    reply.assert_error(
        400,
        &kserve_error("input 'x': datatype is INT32 but the model takes FP32"),
    );
    let wrong_count = json_rows(&[1.0]).replace("[1.0]", "[1.0,2.0]");
    let reply = server.post_json(INFER, &wrong_count).await;
    reply.assert_error(
        400,
        &kserve_error("input 'x': shape [1, 1] has 1 elements but 'data' has 2"),
    );
}

#[tokio::test]
async fn a_malformed_envelope_is_400_naming_the_member() {
    let server = Server::echo().await;
    let input = r#"{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}"#;
    for (body, problem) in [
        (r#"{"id": "a"}"#.to_string(), "missing field `inputs`"),
        (
            format!(r#"{{"inputs": [{input}], "inputs": [{input}]}}"#),
            "duplicate field `inputs`",
        ),
        (
            format!(r#"{{"inputs": [{input}], "parameters": null}}"#),
            "'parameters': expected an object ({...})",
        ),
        (
            r#"{"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": null}]}"#
                .to_string(),
            "input 'x': 'data' is missing (or binary_data_size for binary data)",
        ),
        (
            r#"{"inputs": [{"name": "x", "datatype": "FP32", "data": [1.0]}]}"#.to_string(),
            "an input is missing field `shape`",
        ),
        (
            format!(r#"{{"inputs": [{input}], "extra": [1, ]}}"#),
            "'extra': expected value at line 1 column 5",
        ),
        (
            format!(r#"{{"inputs": [{input}] "outputs": []}}"#),
            "expected ',' or '}' at byte 79, found '\"'",
        ),
    ] {
        let reply = server.post_json(INFER, &body).await;
        let message = match problem.starts_with("input 'x'") {
            true => problem.to_string(),
            false => format!("invalid inference request: {problem}"),
        };
        reply.assert_error(400, &kserve_error(&message));
    }
}

#[tokio::test]
async fn bad_binary_framing_is_400() {
    let server = Server::echo().await;
    let mut request = binary_request(INFER, &[1.0]);
    request
        .headers_mut()
        .insert("inference-header-content-length", "many".parse().unwrap());
    let reply = server.send(request).await;
    let message = "Inference-Header-Content-Length must be a whole number of bytes";
    reply.assert_error(400, &kserve_error(message));
    let mut request = binary_request(INFER, &[1.0]);
    let length = request.headers()["content-length"]
        .to_str()
        .unwrap()
        .to_string();
    request
        .headers_mut()
        .insert("inference-header-content-length", 100_000.into());
    let reply = server.send(request).await;
    let message =
        format!("Inference-Header-Content-Length is 100000 but the body has only {length} bytes");
    reply.assert_error(400, &kserve_error(&message));
    // Two rows declared, one row's bytes sent.
    let mut request = binary_request(INFER, &[1.0, 2.0]);
    let body = std::mem::take(request.body_mut());
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .unwrap()
        .to_bytes();
    let short = bytes.slice(..bytes.len() - 4);
    request
        .headers_mut()
        .insert("content-length", short.len().into());
    *request.body_mut() = Body::from(short);
    let reply = server.send(request).await;
    reply.assert_error(
        400,
        &kserve_error("input 'x': binary_data_size is 8 but only 4 bytes of binary data remain"),
    );
}

#[tokio::test]
async fn a_body_over_max_request_size_is_413_before_it_is_read() {
    let server = Server::echo()
        .await
        .with_limits(|l| l.max_request_size = 16);
    let body = json_rows(&[1.0]);
    let message = format!(
        "the request body is {} bytes, over max_request_size=16; raise max_request_size in config.properties",
        body.len()
    );
    let reply = server.post_json(INFER, &body).await;
    reply.assert_error(413, &kserve_error(&message));
    assert!(reply.closes());
    let reply = server.send(post_streamed(INFER, &body, 4)).await;
    let message = "the request body is at least 20 bytes, over max_request_size=16; \
                   raise max_request_size in config.properties";
    reply.assert_error(413, &kserve_error(message));
    assert!(reply.closes());
}

#[tokio::test]
async fn a_body_that_stalls_is_408_at_the_body_timeout() {
    let server = cases::short_body_timeout().await;
    let reply = server.send(post_stalled(INFER, "{\"inputs\":")).await;
    reply.assert_error(408, &kserve_error(BODY_TIMED_OUT));
    assert!(reply.closes());
}

#[tokio::test]
async fn more_rows_than_the_queue_holds_are_413() {
    let server = cases::small_queue().await;
    let message = format!(
        "the request has 3 rows but model \"m\" queues at most {SMALL_QUEUE} rows; \
         split the request or raise jobQueueSize"
    );
    let reply = server.post_json(INFER, &json_rows(&[1.0, 2.0, 3.0])).await;
    reply.assert_error(413, &kserve_error(&message));
    let reply = server.send(binary_request(INFER, &[1.0, 2.0, 3.0])).await;
    reply.assert_error(413, &kserve_error(&message));
}

#[tokio::test]
async fn a_full_queue_is_503_with_retry_after() {
    let reply = cases::while_queue_full(|| binary_request(INFER, &[1.0])).await;
    reply.assert_retry_later(&kserve_error(QUEUE_FULL));
}

#[tokio::test]
async fn a_model_slower_than_response_timeout_is_504() {
    let server = cases::too_slow().await;
    let reply = server.post_json(INFER_VERSION, &json_rows(&[1.0])).await;
    reply.assert_error(504, &kserve_error(TIMEOUT));
}

#[tokio::test]
async fn a_failed_run_is_500() {
    let server = cases::failing().await;
    let reply = server.post_json(INFER, &json_rows(&[1.0])).await;
    reply.assert_error(500, &kserve_error(RUN_FAILED));
    let reply = server.send(binary_request(INFER, &[1.0])).await;
    reply.assert_error(500, &kserve_error(RUN_FAILED));
}

#[tokio::test]
async fn an_answer_over_max_response_size_is_500() {
    let limit = json_answer(&[1.0]).len();
    let server = Server::echo()
        .await
        .with_limits(|l| l.max_response_size = limit);
    let reply = server.post_json(INFER, &json_rows(&[1.0])).await;
    reply.assert_json(200, &json_answer(&[1.0]));
    let reply = server.post_json(INFER, &json_rows(&[1.5, 2.5])).await;
    let message = format!(
        "the answer is {} bytes, over max_response_size={limit}; \
         send fewer rows or raise max_response_size",
        json_answer(&[1.5, 2.5]).len()
    );
    reply.assert_error(500, &kserve_error(&message));
}

#[tokio::test]
async fn other_methods_are_405_with_allow() {
    let server = Server::echo().await;
    let expected = kserve_error(NOT_ALLOWED);
    for (method, path) in [
        (Method::GET, INFER),
        (Method::PUT, INFER_VERSION),
        (Method::DELETE, "/v2/models/m/explain"),
        (Method::POST, "/v2/health/ready"),
    ] {
        let reply = server.call(method.clone(), path).await;
        reply.assert_error(405, &expected);
        assert!(
            reply.header("allow").is_some(),
            "{method} {path}: {reply:?}"
        );
    }
    let reply = server.get(INFER).await;
    assert_eq!(reply.header("allow"), Some("POST"));
}

#[tokio::test]
async fn unknown_routes_are_404_in_kserve_shape() {
    let server = Server::echo().await;
    let expected = kserve_error(NOT_FOUND);
    for path in [
        "/v2/nothing",
        "/v2/models/m/versions/1.0/extra",
        "/v2/models/m/train",
    ] {
        server.get(path).await.assert_error(404, &expected);
        let request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .unwrap();
        server.send(request).await.assert_error(404, &expected);
    }
}
