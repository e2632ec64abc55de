//! Token authorization, TorchServe's scheme: `Authorization: Bearer <key>`,
//! the inference key on inference routes (every protocol, explanations
//! included) and the management key on management routes and the model
//! repository routes. Probes and
//! scrapes stay open unless `token_open_probes=false`, so kubelets and
//! Prometheus keep working.
//!
//! A refusal is TorchServe's 400 `InvalidKeyException` on TorchServe's
//! routes, and a 401 `{"error": ...}` with `WWW-Authenticate: Bearer` under
//! `/v1` and `/v2`, where KServe's clients read it. Keys are compared in
//! constant time and never logged.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::watch;

use super::body::json_response;
use super::{is_probe, kserve_protocol};
use crate::config::TokenKeys;

const REFUSED: &str =
    "Token Authorization failed. Token either incorrect, expired, or not provided correctly";

/// Which listener a check guards: it decides which key a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Inference,
    Management,
    /// Inference and management on one port: `/models…` needs the
    /// management key, the rest the inference key.
    Shared,
    Metrics,
}

/// The keys in force and what stays open.
pub struct TokenGate {
    keys: watch::Receiver<Arc<TokenKeys>>,
    open_probes: bool,
}

impl TokenGate {
    pub fn new(keys: watch::Receiver<Arc<TokenKeys>>, open_probes: bool) -> Arc<TokenGate> {
        Arc::new(TokenGate { keys, open_probes })
    }

    /// Whether an inference call with this `Authorization` value may go on
    /// (`probe`: a health check, open unless `token_open_probes=false`);
    /// gRPC asks this of its metadata.
    pub(super) fn allows_inference(&self, authorization: Option<&[u8]>, probe: bool) -> bool {
        if self.open_probes && probe {
            return true;
        }
        let keys = self.keys.borrow().clone();
        authorization
            .and_then(|value| value.strip_prefix(b"Bearer "))
            .is_some_and(|given| same_key(given, keys.inference.as_bytes()))
    }

    /// Whether a call that changes or describes the model set (gRPC's
    /// management service and repository calls) may go on: the management
    /// key, as on REST.
    pub(super) fn allows_management(&self, authorization: Option<&[u8]>) -> bool {
        let keys = self.keys.borrow().clone();
        authorization
            .and_then(|value| value.strip_prefix(b"Bearer "))
            .is_some_and(|given| same_key(given, keys.management.as_bytes()))
    }
}

/// Passes an authorized request on; answers any other with a refusal.
pub(super) async fn authorize(
    State((gate, listener)): State<(Arc<TokenGate>, Listener)>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if gate.open_probes && is_probe(request.method(), path) {
        return next.run(request).await;
    }
    let keys = gate.keys.borrow().clone();
    let wanted = match needs_management_key(listener, path) {
        true => &keys.management,
        false => &keys.inference,
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    if given.is_some_and(|given| same_key(given, wanted.as_bytes())) {
        return next.run(request).await;
    }
    refusal(path)
}

/// The management API, and the repository routes (which change the model
/// set) on whatever listener they are, need the management key.
fn needs_management_key(listener: Listener, path: &str) -> bool {
    let repository = path.starts_with("/v2/repository/")
        || (path.starts_with("/v1/models/")
            && (path.ends_with("/load") || path.ends_with("/unload")));
    match listener {
        Listener::Management => true,
        Listener::Shared => repository || path == "/models" || path.starts_with("/models/"),
        Listener::Inference => repository,
        Listener::Metrics => false,
    }
}

/// Whether two keys are equal, in time that depends on their lengths only.
fn same_key(given: &[u8], wanted: &[u8]) -> bool {
    let mut difference = u8::from(given.len() != wanted.len());
    for (i, want) in wanted.iter().enumerate() {
        difference |= want ^ given.get(i).copied().unwrap_or(!want);
    }
    difference == 0
}

fn refusal(path: &str) -> Response {
    if kserve_protocol(path).is_some() {
        let body = serde_json::json!({ "error": REFUSED }).to_string();
        let mut response = json_response(StatusCode::UNAUTHORIZED, body);
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    let body = serde_json::json!({
        "code": 400,
        "type": "InvalidKeyException",
        "message": REFUSED,
    });
    let text = serde_json::to_string_pretty(&body).expect("JSON values serialise") + "\n";
    json_response(StatusCode::BAD_REQUEST, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_only_when_equal() {
        assert!(same_key(b"abc123", b"abc123"));
        for other in [&b"abc124"[..], b"abc12", b"abc1234", b"", b"ABC123"] {
            assert!(!same_key(other, b"abc123"), "{other:?}");
        }
    }

    #[test]
    fn a_shared_listener_asks_the_management_key_for_models_routes_only() {
        assert!(needs_management_key(Listener::Shared, "/models"));
        assert!(needs_management_key(Listener::Shared, "/models/m/1.0"));
        assert!(!needs_management_key(Listener::Shared, "/modelsx"));
        assert!(!needs_management_key(Listener::Shared, "/predictions/m"));
        assert!(needs_management_key(Listener::Management, "/"));
        assert!(!needs_management_key(Listener::Inference, "/models"));
        assert!(needs_management_key(
            Listener::Inference,
            "/v2/repository/index"
        ));
        assert!(needs_management_key(
            Listener::Inference,
            "/v1/models/m/unload"
        ));
        assert!(!needs_management_key(
            Listener::Inference,
            "/v1/models/m:predict"
        ));
    }
}
