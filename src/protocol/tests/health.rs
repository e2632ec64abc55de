//! Readiness as a service: `/ping` (Healthy, Unhealthy with every model's
//! state, Partial Healthy naming failed optional models) and the Open
//! Inference Protocol's server and model readiness.

use axum::http::Method;

use super::cases::{self, LOAD_FAILURE};
use super::{MODEL, Reply, Server, kserve_error};
use crate::registry::testing::Script;

const HEALTHY: &str = "{\n  \"status\": \"Healthy\"\n}\n";

/// `/ping`'s detail for one model, as its pretty-printed body nests it.
fn detail(name: &str, fields: &[(&str, &str)]) -> String {
    let lines: Vec<String> = fields
        .iter()
        .map(|(key, value)| format!("      \"{key}\": {value}"))
        .collect();
    format!("    \"{name}\": {{\n{}\n    }}", lines.join(",\n"))
}

fn ping_body(status: &str, models: &[String], draining: bool) -> String {
    let models = match models {
        [] => "{}".to_string(),
        _ => format!("{{\n{}\n  }}", models.join(",\n")),
    };
    let draining = if draining {
        ",\n  \"draining\": true"
    } else {
        ""
    };
    format!("{{\n  \"status\": \"{status}\",\n  \"models\": {models}{draining}\n}}\n")
}

#[tokio::test]
async fn ping_is_healthy_when_every_model_serves_whatever_the_method() {
    let server = Server::echo().await;
    for method in [Method::GET, Method::POST, Method::PUT] {
        server.call(method, "/ping").await.assert_json(200, HEALTHY);
    }
}

#[tokio::test]
async fn ping_is_unhealthy_while_a_model_loads() {
    let reply = cases::loading().get("/ping").await;
    let model = detail(
        MODEL,
        &[
            ("version", "\"1.0\""),
            ("state", "\"Loading\""),
            ("readyWorkers", "0"),
            ("minWorkers", "1"),
        ],
    );
    reply.assert_json(500, &ping_body("Unhealthy", &[model], false));
}

#[tokio::test]
async fn ping_is_unhealthy_with_the_failure_of_a_model_that_failed() {
    let server = cases::failed();
    server.add("ok", "1.0", Script::default(), |_| {}).await;
    let reply = server.get("/ping").await;
    let failed = detail(
        MODEL,
        &[
            ("version", "\"1.0\""),
            ("state", "\"Failed\""),
            ("readyWorkers", "0"),
            ("minWorkers", "1"),
            ("error", &format!("\"{LOAD_FAILURE}\"")),
            ("kind", "\"bad_graph\""),
        ],
    );
    let ok = detail(
        "ok",
        &[
            ("version", "\"1.0\""),
            ("state", "\"Ready\""),
            ("readyWorkers", "1"),
            ("minWorkers", "1"),
        ],
    );
    reply.assert_json(500, &ping_body("Unhealthy", &[failed, ok], false));
}

#[tokio::test]
async fn ping_is_partially_healthy_naming_only_failed_optional_models() {
    let server = Server::echo().await;
    let factory = crate::registry::testing::FakeModel::new(Script {
        failing_starts: 1,
        ..Script::default()
    })
    .factory();
    let mut config = crate::registry::testing::fake_config();
    config.session.ortserve.optional = true;
    let failure = server
        .registry
        .serve_fake(super::id("extra", "2.0"), factory, config)
        .await
        .expect_err("its worker fails to start");
    let message = "fake.onnx: the fake runner failed to start, as scripted";
    assert_eq!(failure.message, message);
    let extra = detail(
        "extra",
        &[
            ("version", "\"2.0\""),
            ("state", "\"Failed\""),
            ("readyWorkers", "0"),
            ("minWorkers", "1"),
            ("error", &format!("\"{message}\"")),
            ("kind", "\"bad_graph\""),
        ],
    );
    let reply = server.get("/ping").await;
    reply.assert_json(200, &ping_body("Partial Healthy", &[extra], false));
    server
        .get("/v2/health/ready")
        .await
        .assert_json(200, r#"{"ready":true}"#);
}

#[tokio::test]
async fn ping_without_models_is_unhealthy_unless_allowed() {
    let reply = Server::empty(false).get("/ping").await;
    reply.assert_json(500, &ping_body("Unhealthy", &[], false));
    Server::empty(true)
        .get("/ping")
        .await
        .assert_json(200, HEALTHY);
}

#[tokio::test]
async fn draining_turns_every_readiness_answer_unhealthy() {
    let server = Server::echo().await;
    server.registry.start_draining();
    let model = detail(
        MODEL,
        &[
            ("version", "\"1.0\""),
            ("state", "\"Ready\""),
            ("readyWorkers", "1"),
            ("minWorkers", "1"),
        ],
    );
    let reply = server.get("/ping").await;
    reply.assert_json(500, &ping_body("Unhealthy", &[model], true));
    assert_server_not_ready(server.get("/v2/health/ready").await);
    let message = "Model with name m is not ready: the server is shutting down";
    server
        .get("/v2/models/m/ready")
        .await
        .assert_retry_later(&kserve_error(message));
    // Traffic is still served.
    let reply = server.post_json("/predictions/m", "[[1.0]]").await;
    reply.assert_json(200, "[[1.0]]");
}

fn assert_server_not_ready(reply: Reply) {
    reply.assert_json(503, r#"{"error":"Server is not ready."}"#);
}

#[tokio::test]
async fn v2_server_readiness_follows_ping() {
    let server = Server::echo().await;
    let ready = server.get("/v2/health/ready").await;
    ready.assert_json(200, r#"{"ready":true}"#);
    let live = server.get("/v2/health/live").await;
    live.assert_json(200, r#"{"live":true}"#);
    assert_server_not_ready(cases::loading().get("/v2/health/ready").await);
    assert_server_not_ready(cases::failed().get("/v2/health/ready").await);
}

#[tokio::test]
async fn v2_model_readiness_is_200_503_or_404() {
    let server = Server::echo().await;
    let ready = r#"{"name":"m","ready":true}"#;
    for path in ["/v2/models/m/ready", "/v2/models/m/versions/1.0/ready"] {
        server.get(path).await.assert_json(200, ready);
    }
    let reply = server.get("/v2/models/m/versions/9.9/ready").await;
    let message = "Model version: 9.9 does not exist for model: m";
    reply.assert_error(404, &kserve_error(message));
    let reply = server.get("/v2/models/nope/ready").await;
    reply.assert_error(404, &kserve_error("Model with name nope does not exist."));
    let reply = cases::loading().get("/v2/models/m/ready").await;
    let message = "Model with name m is not ready: version 1.0 is Loading";
    reply.assert_retry_later(&kserve_error(message));
    let reply = cases::failed().get("/v2/models/m/versions/1.0/ready").await;
    let message = format!("Model with name m is not ready: {LOAD_FAILURE}");
    reply.assert_retry_later(&kserve_error(&message));
}
