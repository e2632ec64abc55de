//! KServe's v1 protocol as a service: `:predict` and `:explain` answers,
//! readiness, and every error as `{"error": "..."}` with KServe's wording.

use axum::http::Method;

use super::cases::{self, LOAD_FAILURE, QUEUE_FULL, RUN_FAILED, SMALL_QUEUE, TIMEOUT};
use super::{BODY_TIMED_OUT, Server, kserve_error, post, post_stalled, post_streamed};

const PREDICT: &str = "/v1/models/m:predict";
const EXPLAIN: &str = "/v1/models/m:explain";
const NOT_FOUND: &str = "Requested resource is not found, please refer to API document.";
const NOT_ALLOWED: &str = "Requested method is not allowed, please refer to API document.";

#[tokio::test]
async fn instances_are_predicted_one_row_each() {
    let server = Server::echo().await;
    let reply = server
        .post_json(PREDICT, r#"{"instances": [[1.5], [2.5]]}"#)
        .await;
    reply.assert_json(200, r#"{"predictions":[[1.5],[2.5]]}"#);
    // `inputs` is answered as is, not as a list.
    let reply = server.post_json(PREDICT, r#"{"inputs": [[1.5]]}"#).await;
    reply.assert_json(200, r#"{"predictions":[[1.5]]}"#);
}

#[tokio::test]
async fn explanations_attribute_the_echo_to_its_input() {
    let server = Server::echo().await;
    let reply = server.post_json(EXPLAIN, r#"{"instances": [[2.0]]}"#).await;
    reply.assert_json(200, r#"{"explanations":[[2.0]]}"#);
}

#[tokio::test]
async fn readiness_is_200_for_a_serving_model_and_503_while_loading() {
    let server = Server::echo().await;
    let reply = server.get("/v1/models/m").await;
    reply.assert_json(200, r#"{"name":"m","ready":true}"#);
    let message = "Model with name m is not ready: version 1.0 is Loading";
    cases::loading()
        .get("/v1/models/m")
        .await
        .assert_retry_later(&kserve_error(message));
    let reply = server.get("/v1/models/nope").await;
    reply.assert_error(404, &kserve_error("Model with name nope does not exist."));
    server
        .get("/v1/models")
        .await
        .assert_json(200, r#"{"models":["m"]}"#);
}

#[tokio::test]
async fn an_unknown_model_is_404_and_closes_the_unread_body() {
    let server = Server::echo().await;
    for path in ["/v1/models/nope:predict", "/v1/models/nope:explain"] {
        let reply = server.post_json(path, r#"{"instances": [[1.0]]}"#).await;
        reply.assert_error(404, &kserve_error("Model with name nope does not exist."));
        assert!(reply.closes());
    }
}

#[tokio::test]
async fn a_loading_or_failed_model_is_503_with_its_reason() {
    let body = r#"{"instances": [[1.0]]}"#;
    let reply = cases::loading().post_json(PREDICT, body).await;
    let message = "Model with name m is not ready: version 1.0 is still loading";
    reply.assert_retry_later(&kserve_error(message));
    assert!(reply.closes());
    let reply = cases::failed().post_json(EXPLAIN, body).await;
    let message =
        format!("Model with name m is not ready: version 1.0 failed to load: {LOAD_FAILURE}");
    reply.assert_retry_later(&kserve_error(&message));
}

#[tokio::test]
async fn bad_input_is_400_naming_what_to_fix() {
    let server = Server::echo().await;
    let reply = server.post_json(PREDICT, "[[1.0]]").await;
    let message = "Unrecognized request format: the body must be a JSON object ({...})";
    reply.assert_error(400, &kserve_error(message));
    assert!(!reply.closes(), "the body was read");
    let reply = server.post_json(PREDICT, r#"{"rows": [[1.0]]}"#).await;
    let message =
        r#"Unrecognized request format: expected {"instances": [...]} or {"inputs": ...}"#;
    reply.assert_error(400, &kserve_error(message));
    let reply = server.post_json(PREDICT, r#"{"instances": 3}"#).await;
    let message = "Unrecognized request format: 'instances': expected a list ([...])";
    reply.assert_error(400, &kserve_error(message));
    let reply = server
        .post_json(PREDICT, r#"{"instances": [[1.0]], "parameters": null}"#)
        .await;
    let message = "Unrecognized request format: 'parameters': invalid type: null, expected a map \
                   at line 1 column 4";
    reply.assert_error(400, &kserve_error(message));
    let reply = server
        .post_json(PREDICT, r#"{"instances": [{"z": [1.0]}]}"#)
        .await;
    let message = "unknown input 'z'; the model's inputs are: x";
    reply.assert_error(400, &kserve_error(message));
}

#[tokio::test]
async fn a_body_over_max_request_size_is_413_before_it_is_read() {
    let server = Server::echo()
        .await
        .with_limits(|l| l.max_request_size = 16);
    let body = r#"{"instances": [[1.0], [2.0]]}"#;
    let message = format!(
        "the request body is {} bytes, over max_request_size=16; raise max_request_size in config.properties",
        body.len()
    );
    let reply = server.post_json(PREDICT, body).await;
    reply.assert_error(413, &kserve_error(&message));
    assert!(reply.closes());
    let reply = server.send(post_streamed(EXPLAIN, body, 4)).await;
    let message = "the request body is at least 20 bytes, over max_request_size=16; \
                   raise max_request_size in config.properties";
    reply.assert_error(413, &kserve_error(message));
    assert!(reply.closes());
}

#[tokio::test]
async fn a_body_that_stalls_is_408_at_the_body_timeout() {
    let server = cases::short_body_timeout().await;
    let reply = server.send(post_stalled(PREDICT, "{\"instances\":")).await;
    reply.assert_error(408, &kserve_error(BODY_TIMED_OUT));
    assert!(reply.closes());
}

#[tokio::test]
async fn more_instances_or_rows_than_the_queue_holds_are_413() {
    let server = cases::small_queue().await;
    let reply = server
        .post_json(PREDICT, r#"{"instances": [[1.0], [2.0], [3.0]]}"#)
        .await;
    let message = format!(
        "the request has 3 instances but model \"m\" queues at most {SMALL_QUEUE} rows \
         (jobQueueSize); send fewer instances per request or raise jobQueueSize"
    );
    reply.assert_error(413, &kserve_error(&message));
    let reply = server
        .post_json(PREDICT, r#"{"inputs": [[1.0], [2.0], [3.0]]}"#)
        .await;
    let message = format!(
        "the request has 3 rows but model \"m\" queues at most {SMALL_QUEUE} rows; \
         split the request or raise jobQueueSize"
    );
    reply.assert_error(413, &kserve_error(&message));
}

#[tokio::test]
async fn a_full_queue_is_503_with_retry_after() {
    let request = || post(PREDICT, "application/json", r#"{"instances": [[1.0]]}"#);
    let reply = cases::while_queue_full(request).await;
    reply.assert_retry_later(&kserve_error(QUEUE_FULL));
}

#[tokio::test]
async fn a_model_slower_than_response_timeout_is_504() {
    let server = cases::too_slow().await;
    let reply = server.post_json(PREDICT, r#"{"instances": [[1.0]]}"#).await;
    reply.assert_error(504, &kserve_error(TIMEOUT));
}

#[tokio::test]
async fn a_failed_run_is_500() {
    let server = cases::failing().await;
    let reply = server.post_json(PREDICT, r#"{"instances": [[1.0]]}"#).await;
    reply.assert_error(500, &kserve_error(RUN_FAILED));
}

#[tokio::test]
async fn an_answer_over_max_response_size_is_500() {
    let server = Server::echo()
        .await
        .with_limits(|l| l.max_response_size = 25);
    let reply = server.post_json(PREDICT, r#"{"instances": [[1.0]]}"#).await;
    reply.assert_json(200, r#"{"predictions":[[1.0]]}"#);
    let reply = server
        .post_json(PREDICT, r#"{"instances": [[1.5], [2.5]]}"#)
        .await;
    let message = "the answer is 29 bytes, over max_response_size=25; \
                   send fewer rows or raise max_response_size";
    reply.assert_error(500, &kserve_error(message));
}

#[tokio::test]
async fn other_methods_are_405_with_allow() {
    let server = Server::echo().await;
    let expected = kserve_error(NOT_ALLOWED);
    for (method, path, allow) in [
        (Method::GET, PREDICT, "POST"),
        (Method::PUT, EXPLAIN, "POST"),
        (Method::POST, "/v1/models/m", "GET,HEAD"),
        (Method::DELETE, "/v1/models", "GET,HEAD"),
    ] {
        let reply = server.call(method.clone(), path).await;
        reply.assert_error(405, &expected);
        assert_eq!(reply.header("allow"), Some(allow), "{method} {path}");
    }
}

#[tokio::test]
async fn unknown_routes_are_404_in_kserve_shape() {
    let server = Server::echo().await;
    let expected = kserve_error(NOT_FOUND);
    for path in ["/v1", "/v1/nothing", "/v1/models/m/extra"] {
        server.get(path).await.assert_error(404, &expected);
    }
    let reply = server.post_json("/v1/models/m:train", "{}").await;
    reply.assert_error(404, &expected);
}
