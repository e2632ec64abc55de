//! KServe's v1 protocol: `GET /v1/models`, `GET /v1/models/{m}` (readiness),
//! `POST /v1/models/{m}:predict` and `:explain` with `{"instances": [...]}` —
//! each instance one row through the model's handler — or `{"inputs": ...}`,
//! and KServe's `{"error": "..."}` bodies.

use std::future::{Future, ready};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures_util::future::{Either, join_all};
use serde_json::Value;

use super::body::{error_reply, json_response, push_json_array, require_object};
use super::request::{ModelCall, ModelTarget, Reply, serve_model};
use super::{Action, AppState};
use crate::codec::{array_items, check_member, object_members, once, parse_once};
use crate::explain::ExplainParams;
use crate::handlers::BodyForm;
use crate::registry::AttachedModel;
use crate::types::{Error, bounded_message};

/// A model's readiness, predictions and explanations (`{m}:predict`), the
/// second of which [`App`](super::App) also matches itself.
pub(super) const MODEL_TARGET: &str = "/v1/models/{target}";

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/models", get(list))
        .route(MODEL_TARGET, any(model_target))
        .method_not_allowed_fallback(method_not_allowed)
}

/// KServe's body for a method a route does not take; axum adds `Allow`.
pub(super) async fn method_not_allowed() -> KServeError {
    KServeError(Error::MethodNotAllowed)
}

async fn list(State(state): State<Arc<AppState>>) -> Response {
    let body = serde_json::json!({ "models": state.registry.model_names() });
    json_response(StatusCode::OK, body.to_string())
}

/// 200 `{"name","ready":true}` when the version (default: the default one)
/// has its `minWorkers` ready — the `/ping` rule — 503 when not, 404 when
/// unknown. Shared by v1 and v2.
pub(super) fn readiness(state: &AppState, name: &str, version: Option<&str>) -> Response {
    match state.registry.version_health(name, version) {
        Ok(health) if health.healthy => json_response(
            StatusCode::OK,
            serde_json::json!({"name": name, "ready": true}).to_string(),
        ),
        Ok(health) => KServeError(Error::Unavailable {
            model: name.to_string(),
            reason: health
                .detail
                .unwrap_or_else(|| format!("version {} is {}", health.version, health.state)),
        })
        .into_response(),
        Err(error) => KServeError(error).into_response(),
    }
}

/// `{name}` (readiness, GET), `{name}:predict` and `{name}:explain` (POST)
/// share one path segment, so each form checks its own method and answers
/// a 405 with its own `Allow`. A plain function returning the future, so
/// that the future axum boxes holds only [`serve_model`]'s.
pub(super) fn model_target(
    state: State<Arc<AppState>>,
    Path(target): Path<String>,
    method: Method,
    request: Request,
) -> impl Future<Output = Response> {
    let action = match target.rsplit_once(':') {
        None if method == Method::GET || method == Method::HEAD => {
            return Either::Left(ready(readiness(&state, &target, None)));
        }
        None => return Either::Left(ready(only(HeaderValue::from_static("GET,HEAD")))),
        Some((name, "predict")) => (name, Action::Predict),
        Some((name, "explain")) => (name, Action::Explain),
        Some(_) => {
            return Either::Left(ready(KServeError(Error::ResourceNotFound).into_response()));
        }
    };
    if method != Method::POST {
        return Either::Left(ready(only(HeaderValue::from_static("POST"))));
    }
    let target = ModelTarget {
        name: action.0,
        version: None,
    };
    Either::Right(serve_model(&state, target, Ok(action.1), request, answer))
}

/// A 405 naming the methods the resource takes.
fn only(allow: HeaderValue) -> Response {
    let mut response = KServeError(Error::MethodNotAllowed).into_response();
    response.headers_mut().insert(header::ALLOW, allow);
    response
}

/// A v1 request body, read member by member: each instance stays a slice
/// of the body, parsed once, by the model's handler.
struct V1Request<'a> {
    instances: Option<Vec<&'a [u8]>>,
    inputs: Option<&'a [u8]>,
    /// Explanation parameters (ortserve's); predictions ignore them, as KServe does.
    parameters: serde_json::Map<String, Value>,
}

impl<'a> V1Request<'a> {
    fn read(body: &'a [u8]) -> Result<Self, String> {
        let (mut instances, mut inputs, mut parameters) = (None, None, None);
        for member in object_members(body) {
            let (key, value) = member?;
            match key.as_ref() {
                // As serde reads an `Option`: null is the same as absent.
                "instances" | "inputs" if value == b"null" => {}
                "instances" => {
                    let items = array_items(value)
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("'instances': {e}"))?;
                    once(&mut instances, "instances", items)?;
                }
                "inputs" => once(&mut inputs, "inputs", value)?,
                "parameters" => parse_once(&mut parameters, "parameters", value)?,
                other => check_member(other, value)?,
            }
        }
        Ok(V1Request {
            instances,
            inputs,
            parameters: parameters.unwrap_or_default(),
        })
    }
}

/// Each instance through the model's handler, answered as
/// `{"predictions": [...]}` or `{"explanations": [...]}`. The body is read
/// into its instances before the first await, so the future holds them
/// and not the call they came in; explanations, rare and long, are boxed
/// so their state does not ride in every prediction's future.
fn answer(call: ModelCall, action: Action) -> impl Future<Output = Result<Reply, KServeError>> {
    let ModelCall { model, body } = call;
    let read = Instances::read(&body);
    async move {
        let instances = read?;
        let mut out = Vec::with_capacity(128);
        match action {
            Action::Predict => {
                out.extend_from_slice(b"{\"predictions\":");
                predict_all(&model, instances, &mut out).await?;
            }
            Action::Explain => {
                out.extend_from_slice(b"{\"explanations\":");
                Box::pin(explain_all(&model, instances, &mut out)).await?;
            }
        }
        out.push(b'}');
        Ok(Reply::json(out))
    }
}

/// A body's instances, each a slice of it, and its explanation parameters.
struct Instances {
    parts: Vec<Bytes>,
    /// `{"inputs": ...}`: answered as is, not as a list.
    single: bool,
    parameters: serde_json::Map<String, Value>,
}

impl Instances {
    fn read(body: &Bytes) -> Result<Instances, Error> {
        require_object(body, "Unrecognized request format")?;
        let request = V1Request::read(body)
            .map_err(|e| Error::BadInput(format!("Unrecognized request format: {e}")))?;
        // Each instance is a slice of the body: no copy.
        let (parts, single) = match (request.instances, request.inputs) {
            (Some(instances), _) => (
                instances.iter().map(|raw| body.slice_ref(raw)).collect(),
                false,
            ),
            (None, Some(inputs)) => (vec![body.slice_ref(inputs)], true),
            (None, None) => {
                return Err(Error::BadInput(
                    r#"Unrecognized request format: expected {"instances": [...]} or {"inputs": ...}"#
                        .into(),
                ));
            }
        };
        Ok(Instances {
            parts,
            single,
            parameters: request.parameters,
        })
    }
}

async fn predict_all(
    model: &AttachedModel,
    instances: Instances,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    model.check_instances(instances.parts.len())?;
    let answers = join_all(
        instances
            .parts
            .into_iter()
            .map(|part| model.predict(part, BodyForm::Instance)),
    )
    .await;
    match (instances.single, answers) {
        (true, mut answers) => out.extend_from_slice(&answers.remove(0)?),
        (false, answers) => push_json_array(out, answers)?,
    }
    Ok(())
}

async fn explain_all(
    model: &AttachedModel,
    instances: Instances,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let params = ExplainParams::from_json(
        instances.parameters.iter().map(|(k, v)| (k.as_str(), v)),
        true,
    )?;
    let budget = model.pass_budget();
    // Before any instance is decoded: all of them are, at once.
    budget.admits(instances.parts.len())?;
    let explained = join_all(
        instances
            .parts
            .into_iter()
            .map(|part| model.explain(part, BodyForm::Instance, &params, &budget)),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<_>, Error>>()?;
    push_json_array(out, explained.into_iter().flatten().map(Ok).collect())
}

/// An error in KServe's shape, `{"error": "..."}`, with KServe's wording
/// for unknown and unready models; v1 and the Open Inference Protocol share it.
pub(super) struct KServeError(pub Error);

impl From<Error> for KServeError {
    fn from(error: Error) -> KServeError {
        KServeError(error)
    }
}

impl IntoResponse for KServeError {
    fn into_response(self) -> Response {
        let message = match &self.0 {
            Error::ModelNotFound(name) => format!("Model with name {name} does not exist."),
            Error::Unavailable { model, reason } => {
                format!("Model with name {model} is not ready: {reason}")
            }
            other => other.to_string(),
        };
        let message = bounded_message(message);
        error_reply(&self.0, serde_json::json!({ "error": message }).to_string())
    }
}
