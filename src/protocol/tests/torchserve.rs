//! TorchServe's inference API as a service: `/predictions` and
//! `/explanations` answers and every error in `{"code","type","message"}`.

use axum::http::Method;

use super::cases::{self, LOAD_FAILURE, QUEUE_FULL, RUN_FAILED, SMALL_QUEUE, TIMEOUT};
use super::{BODY_TIMED_OUT, Server, post, post_stalled, post_streamed, torchserve_error};
use crate::registry::testing::{FakeModel, Script};
use crate::types::{DataType, ModelIo, TensorSpec};

const PREDICT: &str = "/predictions/m";
const NOT_FOUND: &str = "Requested resource is not found, please refer to API document.";
const NOT_ALLOWED: &str = "Requested method is not allowed, please refer to API document.";

/// A multipart body with one `data` part per instance.
fn multipart(instances: &[&str]) -> (String, String) {
    let mut body = String::new();
    for instance in instances {
        body.push_str("--B\r\nContent-Disposition: form-data; name=\"data\"\r\n\r\n");
        body.push_str(instance);
        body.push_str("\r\n");
    }
    body.push_str("--B--\r\n");
    ("multipart/form-data; boundary=B".into(), body)
}

#[tokio::test]
async fn predictions_echo_rows_on_every_route_and_method() {
    let server = Server::echo().await;
    for path in [PREDICT, "/predictions/m/1.0"] {
        let reply = server.post_json(path, "[[1.5],[2.5]]").await;
        reply.assert_json(200, "[[1.5],[2.5]]");
        assert!(!reply.closes());
    }
    let put = post(PREDICT, "application/json", "[[4.0]]");
    let (mut parts, body) = put.into_parts();
    parts.method = Method::PUT;
    let reply = server
        .send(axum::http::Request::from_parts(parts, body))
        .await;
    reply.assert_json(200, "[[4.0]]");
    // One instance without its batch axis is answered without it.
    server
        .post_json(PREDICT, "[1.5]")
        .await
        .assert_json(200, "[1.5]");
}

#[tokio::test]
async fn a_body_in_many_chunks_is_read_whole() {
    let server = Server::echo().await;
    for chunk in [1, 3, 64] {
        let reply = server
            .send(post_streamed(PREDICT, "[[1.5],[2.5],[3.5]]", chunk))
            .await;
        reply.assert_json(200, "[[1.5],[2.5],[3.5]]");
    }
}

#[tokio::test]
async fn a_wider_input_is_echoed_row_by_row_and_its_shape_checked() {
    let server = Server::empty(false);
    let spec = |name: &str| TensorSpec {
        name: name.into(),
        dtype: DataType::F32,
        shape: vec![-1, 2],
    };
    let io = ModelIo {
        inputs: vec![spec("pair")],
        outputs: vec![spec("same")],
    };
    let fake = FakeModel::with_io(Script::default(), io);
    server.serve("wide", "1.0", &fake, |_| {}).await;
    let reply = server
        .post_json("/predictions/wide", "[[1.0,-2.5],[3.0,4.0]]")
        .await;
    reply.assert_json(200, "[[1.0,-2.5],[3.0,4.0]]");
    assert_eq!(fake.runs(), [vec![1.0, -2.5, 3.0, 4.0]]);
    let reply = server
        .post_json("/predictions/wide", "[[1.0,2.0,3.0]]")
        .await;
    let message =
        "input 'pair' expects shape [-1, 2] (-1 = any size) but got shape [1, 3]: axis 1 must be 2";
    reply.assert_error(400, &torchserve_error(400, "BadRequestException", message));
}

#[tokio::test]
async fn multipart_instances_are_answered_as_an_array_in_order() {
    let server = Server::echo().await;
    let (content_type, body) = multipart(&["[1.5]", "[-2.0]"]);
    let reply = server.post(PREDICT, &content_type, body).await;
    reply.assert_json(200, "[[1.5],[-2.0]]");
}

#[tokio::test]
async fn explanations_attribute_the_echo_to_its_input() {
    let server = Server::echo().await;
    for path in ["/explanations/m", "/explanations/m/1.0"] {
        let reply = server.post_json(path, "[[2.0]]").await;
        reply.assert_json(200, "[[2.0]]");
    }
}

#[tokio::test]
async fn unknown_model_and_version_are_404_and_close_the_unread_body() {
    let server = Server::echo().await;
    let reply = server.post_json("/predictions/nope", "[[1.0]]").await;
    let body = torchserve_error(404, "ModelNotFoundException", "Model not found: nope");
    reply.assert_error(404, &body);
    assert!(reply.closes());
    let reply = server.post_json("/explanations/nope", "[[1.0]]").await;
    reply.assert_error(404, &body);
    let reply = server.post_json("/predictions/m/9.9", "[[1.0]]").await;
    let message = "Model version: 9.9 does not exist for model: m";
    reply.assert_error(
        404,
        &torchserve_error(404, "ModelVersionNotFoundException", message),
    );
    assert!(reply.closes());
}

#[tokio::test]
async fn a_loading_or_failed_model_is_503_with_its_reason() {
    let message = "Model \"m\" is not available: version 1.0 is still loading";
    let reply = cases::loading().post_json(PREDICT, "[[1.0]]").await;
    reply.assert_retry_later(&torchserve_error(
        503,
        "ServiceUnavailableException",
        message,
    ));
    assert!(reply.closes());
    let message =
        format!("Model \"m\" is not available: version 1.0 failed to load: {LOAD_FAILURE}");
    let reply = cases::failed()
        .post_json("/predictions/m/1.0", "[[1.0]]")
        .await;
    reply.assert_retry_later(&torchserve_error(
        503,
        "ServiceUnavailableException",
        &message,
    ));
}

#[tokio::test]
async fn bad_input_is_400_naming_what_to_fix() {
    let server = Server::echo().await;
    let usage = "this model takes JSON: a nested array for a single-input model, or an object \
                 keyed by input name (inputs: 'x' float32 [-1, 1])";
    let reply = server.post_json(PREDICT, "<x/>").await;
    let message = format!("the body is not JSON; {usage}");
    reply.assert_error(400, &torchserve_error(400, "BadRequestException", &message));
    assert!(!reply.closes(), "the body was read");
    let reply = server.post_json(PREDICT, "not json").await;
    let message = "input 'x' is float32: not a number (got not)";
    reply.assert_error(400, &torchserve_error(400, "BadRequestException", message));
    let reply = server.post_json(PREDICT, r#"{"z": [[1.0]]}"#).await;
    let message = "unknown input 'z'; the model's inputs are: x";
    reply.assert_error(400, &torchserve_error(400, "BadRequestException", message));
    let reply = server
        .post(PREDICT, "multipart/form-data; boundary=B", "--B--\r\n")
        .await;
    let message = "the multipart body has no parts; send each instance as a part named 'data'";
    reply.assert_error(400, &torchserve_error(400, "BadRequestException", message));
    let reply = server.post_json("/predictions/%FF", "[[1.0]]").await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(
        reply.text().contains("\"type\": \"BadRequestException\""),
        "{reply:?}"
    );
    assert!(reply.closes());
}

#[tokio::test]
async fn bad_explanation_parameters_are_400() {
    let server = Server::echo().await;
    let reply = server
        .post_json("/explanations/m?method=guess", "[[1.0]]")
        .await;
    let message = "unknown explanation method 'guess'; use one of occlusion, feature_ablation, shapley_sampling";
    reply.assert_error(400, &torchserve_error(400, "BadRequestException", message));
    assert!(reply.closes(), "refused before the body was read");
}

#[tokio::test]
async fn a_body_over_max_request_size_is_413_before_it_is_read() {
    let server = Server::echo()
        .await
        .with_limits(|l| l.max_request_size = 16);
    let body = "[[1.0],[2.0],[3.0],[4.0]]";
    let message = format!(
        "the request body is {} bytes, over max_request_size=16; raise max_request_size in config.properties",
        body.len()
    );
    let reply = server.post_json(PREDICT, body).await;
    let expected = torchserve_error(413, "RequestEntityTooLargeException", &message);
    reply.assert_error(413, &expected);
    assert!(reply.closes());
    // Without a Content-Length, the limit holds while the body is read.
    let reply = server.send(post_streamed(PREDICT, body, 4)).await;
    let message = "the request body is at least 20 bytes, over max_request_size=16; \
                   raise max_request_size in config.properties";
    let expected = torchserve_error(413, "RequestEntityTooLargeException", message);
    reply.assert_error(413, &expected);
    assert!(reply.closes());
}

#[tokio::test]
async fn a_body_that_stalls_is_408_at_the_body_timeout() {
    let server = cases::short_body_timeout().await;
    let reply = server.send(post_stalled(PREDICT, "[[1.0],")).await;
    let expected = torchserve_error(408, "RequestTimeoutException", BODY_TIMED_OUT);
    reply.assert_error(408, &expected);
    assert!(reply.closes());
}

#[tokio::test]
async fn more_rows_or_instances_than_the_queue_holds_are_413() {
    let server = cases::small_queue().await;
    let reply = server.post_json(PREDICT, "[[1.0],[2.0],[3.0]]").await;
    let message = format!(
        "the request has 3 rows but model \"m\" queues at most {SMALL_QUEUE} rows; \
         split the request or raise jobQueueSize"
    );
    let expected = torchserve_error(413, "RequestEntityTooLargeException", &message);
    reply.assert_error(413, &expected);
    let (content_type, body) = multipart(&["[1.0]", "[2.0]", "[3.0]"]);
    let reply = server.post(PREDICT, &content_type, body).await;
    let message = format!(
        "the request has 3 instances but model \"m\" queues at most {SMALL_QUEUE} rows \
         (jobQueueSize); send fewer instances per request or raise jobQueueSize"
    );
    let expected = torchserve_error(413, "RequestEntityTooLargeException", &message);
    reply.assert_error(413, &expected);
}

#[tokio::test]
async fn a_full_queue_is_503_with_retry_after() {
    let reply = cases::while_queue_full(|| post(PREDICT, "application/json", "[[1.0]]")).await;
    reply.assert_retry_later(&torchserve_error(
        503,
        "ServiceUnavailableException",
        QUEUE_FULL,
    ));
}

#[tokio::test]
async fn a_model_slower_than_response_timeout_is_504() {
    let reply = cases::too_slow().await.post_json(PREDICT, "[[1.0]]").await;
    reply.assert_error(
        504,
        &torchserve_error(504, "RequestTimeoutException", TIMEOUT),
    );
}

#[tokio::test]
async fn a_failed_run_is_500() {
    let reply = cases::failing().await.post_json(PREDICT, "[[1.0]]").await;
    reply.assert_error(
        500,
        &torchserve_error(500, "InternalServerException", RUN_FAILED),
    );
    assert!(!reply.closes());
}

#[tokio::test]
async fn an_answer_over_max_response_size_is_500() {
    let server = Server::echo()
        .await
        .with_limits(|l| l.max_response_size = 10);
    server
        .post_json(PREDICT, "[[1.0]]")
        .await
        .assert_json(200, "[[1.0]]");
    let reply = server.post_json(PREDICT, "[[1.5],[2.5]]").await;
    let message = "the answer is 13 bytes, over max_response_size=10; \
                   send fewer rows or raise max_response_size";
    reply.assert_error(
        500,
        &torchserve_error(500, "InternalServerException", message),
    );
}

#[tokio::test]
async fn other_methods_are_405_with_allow() {
    let server = Server::echo().await;
    let expected = torchserve_error(405, "MethodNotAllowedException", NOT_ALLOWED);
    for (method, path) in [
        (Method::GET, PREDICT),
        (Method::OPTIONS, "/predictions/m/1.0"),
        (Method::DELETE, "/explanations/m"),
        (Method::POST, "/"),
        (Method::DELETE, "/ping"),
    ] {
        let reply = server.call(method.clone(), path).await;
        reply.assert_error(405, &expected);
        assert!(
            reply.header("allow").is_some(),
            "{method} {path}: {reply:?}"
        );
    }
    let reply = server.get(PREDICT).await;
    assert_eq!(reply.header("allow"), Some("POST,PUT"));
}

#[tokio::test]
async fn unknown_routes_are_404_in_torchserve_shape() {
    let server = Server::echo().await;
    let expected = torchserve_error(404, "ResourceNotFoundException", NOT_FOUND);
    for path in [
        "/nothing",
        "/predictions",
        "/predictions/m/1.0/extra",
        "/v3/models",
    ] {
        server.get(path).await.assert_error(404, &expected);
        let reply = server.post_json(path, "[[1.0]]").await;
        reply.assert_error(404, &expected);
    }
}

#[tokio::test]
async fn the_callers_request_id_is_echoed() {
    let server = Server::echo().await;
    let mut request = post(PREDICT, "application/json", "[[1.0]]");
    request
        .headers_mut()
        .insert("x-request-id", "trace-123".parse().unwrap());
    let reply = server.send(request).await;
    assert_eq!(reply.header("x-request-id"), Some("trace-123"));
    let generated = server.get("/nothing").await;
    let id = generated.header("x-request-id").unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
}
