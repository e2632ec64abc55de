//! The prediction routes [`App`](super::App) matches itself answer as the
//! router does: the same requests sent both ways, over models whose names
//! are other routes' words, with every method and the paths a router
//! treats specially, give the same status, body and headers.

use axum::body::Body;
use axum::http::{Method, Request};

use super::{Reply, Server, VERSION, send};
use crate::registry::testing::Script;

/// Paths under each prediction route's prefix, and the body each sends.
const CASES: &[(&str, &str)] = &[
    ("/predictions/m", "[[1.5]]"),
    ("/predictions/m/1.0", "[[1.5]]"),
    ("/predictions/m/9.9", "[[1.5]]"),
    ("/predictions/nope", "[[1.5]]"),
    ("/predictions/stats", "[[1.5]]"),
    ("/predictions/m/", "[[1.5]]"),
    ("/predictions//1.0", "[[1.5]]"),
    ("/predictions/%6D", "[[1.5]]"),
    ("/predictions/m/1.0/x", "[[1.5]]"),
    ("/predictions/m", "[[1.5], oops"),
    ("/v1/models/m:predict", r#"{"instances":[[1.5]]}"#),
    ("/v1/models/m:explain", r#"{"instances":[[1.5]]}"#),
    ("/v1/models/m:other", r#"{"instances":[[1.5]]}"#),
    ("/v1/models/m", r#"{"instances":[[1.5]]}"#),
    ("/v1/models/stats:predict", r#"{"instances":[[1.5]]}"#),
    ("/v1/models/nope:predict", r#"{"instances":[[1.5]]}"#),
    ("/v1/models/m%3Apredict", r#"{"instances":[[1.5]]}"#),
    ("/v1/models/m:predict", r#"{"instances":"#),
    ("/v2/models/m/infer", V2_BODY),
    ("/v2/models/m/versions/1.0/infer", V2_BODY),
    ("/v2/models/m/versions/9.9/infer", V2_BODY),
    ("/v2/models/stats/infer", V2_BODY),
    ("/v2/models/versions/infer", V2_BODY),
    ("/v2/models/infer/infer", V2_BODY),
    ("/v2/models/m/versions/infer", V2_BODY),
    ("/v2/models/m/infer/", V2_BODY),
    ("/v2/models//infer", V2_BODY),
    ("/v2/models/m/infer", r#"{"inputs":[]}"#),
];

const V2_BODY: &str = r#"{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1.5]}]}"#;

fn request(method: &Method, path: &str, body: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("x-request-id", "same")
        .body(Body::from(body.to_string()))
        .expect("a valid request")
}

/// Status, body and every header but the length, which the router writes
/// into the map and hyper writes on the wire otherwise.
fn seen(reply: &Reply) -> (u16, String, Vec<(String, String)>) {
    let mut headers: Vec<(String, String)> = reply
        .headers
        .iter()
        .filter(|(name, _)| *name != "content-length")
        .map(|(name, value)| (name.to_string(), format!("{value:?}")))
        .collect();
    headers.sort();
    (reply.status.as_u16(), reply.text().to_string(), headers)
}

#[tokio::test]
async fn prediction_routes_answer_as_the_router_does() {
    let server = Server::echo().await;
    for name in ["stats", "versions", "infer"] {
        server.add(name, VERSION, Script::default(), |_| {}).await;
    }
    let app = server.app();
    let routed = app.routed_only();
    let methods = [
        Method::POST,
        Method::PUT,
        Method::GET,
        Method::DELETE,
        Method::PATCH,
    ];
    let mut answered = 0;
    for (path, body) in CASES {
        for method in &methods {
            let direct = send(app.clone(), request(method, path, body)).await;
            let via_router = send(routed.clone(), request(method, path, body)).await;
            assert_eq!(seen(&direct), seen(&via_router), "{method} {path}");
            if let Some(length) = direct.header("content-length") {
                assert_eq!(length, direct.body.len().to_string(), "{method} {path}");
            }
            answered += usize::from(direct.status.is_success());
        }
    }
    // The echo answered on every route of its own: the cases reach models.
    assert!(answered >= 8, "only {answered} successful answers");
}

/// The matched routes' handlers attach their model before their future is
/// first polled; that must happen inside the request's telemetry scope, or
/// the model's metrics never hear of the request.
#[tokio::test]
async fn matched_predictions_are_counted_as_routed_ones_are() {
    let server = Server::echo().await;
    let app = server.app();
    for app in [app.clone(), app.routed_only()] {
        for (path, body) in [
            ("/predictions/m", "[[1.5]]"),
            ("/v1/models/m:predict", r#"{"instances":[[1.5]]}"#),
            ("/v2/models/m/infer", V2_BODY),
            ("/v2/models/m/infer", r#"{"inputs":[]}"#),
        ] {
            send(app.clone(), request(&Method::POST, path, body)).await;
        }
    }
    let text = server.metrics.render(&server.registry.gauges());
    let counted: Vec<&str> = text
        .lines()
        .filter(|line| {
            line.starts_with("ortserve_request_duration_seconds_count{")
                || (line.starts_with("ortserve_rejections_total{")
                    && line.contains(r#"reason="bad_input""#))
        })
        .collect();
    assert_eq!(counted.len(), 5, "{text}");
    for line in counted {
        assert!(line.ends_with(" 2"), "once each way: {line}");
    }
}
