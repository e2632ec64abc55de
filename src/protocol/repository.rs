//! The model repository routes on the inference port, as KServe's model
//! server and Triton answer them, so multi-model clients work unchanged:
//!
//! * KServe v1: `POST /v1/models/{m}/load` → `{"name": m, "load": true}`,
//!   `POST /v1/models/{m}/unload` → `{"name": m, "unload": true}`;
//! * the Open Inference Protocol's repository extension:
//!   `POST /v2/repository/index` (every version, its state and why),
//!   `POST /v2/repository/models/{m}/load` and `/unload` (an empty 200).
//!
//! Loading registers the model store entry named `{m}` (or its archive,
//! `{m}.mar`, `{m}.tar.gz`, `{m}.onnx`) under that name, as
//! `POST /models?url=...` does: the management API's rules hold (nothing is
//! downloaded, `enable_model_api` must be on, a declared model stays with
//! its file). Errors are KServe's `{"error": ...}`. A call's body is read
//! as a model request's is: within `max_request_size`,
//! `request_body_timeout` and `max_request_memory`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::BodyLimits;
use super::body::{BodyMemory, RequestBody, json_response};
use super::kserve_v1::KServeError;
use super::management::ManagementState;
use crate::registry::{IndexEntry, Registration};
use crate::types::Error;

/// What the repository calls reach: the management state models are
/// loaded through, and what bounds their bodies.
#[derive(Clone)]
pub(super) struct RepositoryState {
    pub management: Arc<ManagementState>,
    pub limits: BodyLimits,
    pub bodies: Arc<BodyMemory>,
}

pub(super) fn routes<S: Clone + Send + Sync + 'static>(state: RepositoryState) -> Router<S> {
    Router::new()
        // `{target}`, as the v1 model route names the same segment.
        .route("/v1/models/{target}/load", post(v1_load))
        .route("/v1/models/{target}/unload", post(v1_unload))
        .route("/v2/repository/index", post(index))
        .route("/v2/repository/models/{model}/load", post(v2_load))
        .route("/v2/repository/models/{model}/unload", post(v2_unload))
        .with_state(state)
}

type Shared = State<RepositoryState>;
type Answer = Result<Response, RepositoryError>;

/// A repository call's failure, in KServe's shape: the model API switched
/// off (405, naming the setting), or the registry's refusal.
pub(super) enum RepositoryError {
    Disabled,
    Refused(Error),
}

impl From<Error> for RepositoryError {
    fn from(error: Error) -> RepositoryError {
        RepositoryError::Refused(error)
    }
}

impl IntoResponse for RepositoryError {
    fn into_response(self) -> Response {
        match self {
            RepositoryError::Refused(error) => KServeError(error).into_response(),
            RepositoryError::Disabled => {
                let body = json!({
                    "error": "loading and unloading models is disabled; start ortserve with enable_model_api=true (or --enable-model-api)"
                });
                json_response(StatusCode::METHOD_NOT_ALLOWED, body.to_string())
            }
        }
    }
}

async fn v1_load(State(state): Shared, Path(model): Path<String>) -> Answer {
    load(&state.management, &model).await?;
    let body = json!({"name": model, "load": true}).to_string();
    Ok(json_response(StatusCode::OK, body))
}

async fn v1_unload(State(state): Shared, Path(model): Path<String>) -> Answer {
    unload(&state.management, &model).await?;
    let body = json!({"name": model, "unload": true}).to_string();
    Ok(json_response(StatusCode::OK, body))
}

async fn v2_load(State(state): Shared, Path(model): Path<String>, request: Request) -> Response {
    with_body(state, request, |body, state| async move {
        refuse_parameters(&body)?;
        load(&state.management, &model).await?;
        Ok(StatusCode::OK.into_response())
    })
    .await
}

async fn v2_unload(State(state): Shared, Path(model): Path<String>, request: Request) -> Response {
    with_body(state, request, |body, state| async move {
        refuse_parameters(&body)?;
        unload(&state.management, &model).await?;
        Ok(StatusCode::OK.into_response())
    })
    .await
}

async fn index(State(state): Shared, request: Request) -> Response {
    with_body(state, request, index_answer).await
}

/// Answers a call whose body `answer` takes. The body is read within the
/// request limits, so one that never comes is a 408 at
/// `request_body_timeout` rather than a connection held for good; an
/// error that left it unread closes the connection.
async fn with_body<F, Fut>(state: RepositoryState, request: Request, answer: F) -> Response
where
    F: FnOnce(Bytes, RepositoryState) -> Fut,
    Fut: Future<Output = Answer>,
{
    let (head, body) = request.into_parts();
    let mut body = RequestBody::new(body, &head.headers, &state.bodies);
    let answered = match body.read(&state.limits).await {
        Ok(bytes) => answer(bytes, state).await,
        Err(error) => Err(error.into()),
    };
    body.close_if_unread(answered.unwrap_or_else(IntoResponse::into_response))
}

/// `{"ready": true}` lists only the versions that serve.
async fn index_answer(body: Bytes, state: RepositoryState) -> Answer {
    let state = &state.management;
    let only_ready = match body.iter().all(u8::is_ascii_whitespace) {
        true => false,
        false => {
            let request: Value = serde_json::from_slice(&body)
                .map_err(|e| Error::BadInput(format!("the index request is not JSON: {e}")))?;
            match request.get("ready") {
                None => false,
                Some(Value::Bool(ready)) => *ready,
                Some(_) => {
                    return Err(Error::BadInput("\"ready\" must be true or false".into()).into());
                }
            }
        }
    };
    let entries: Vec<Value> = index_entries(state, only_ready)
        .into_iter()
        .map(|entry| {
            let mut body = json!({
                "name": entry.id.name,
                "version": entry.id.version,
                "state": entry.state,
            });
            if let Some(reason) = entry.reason {
                body["reason"] = reason.into();
            }
            body
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        Value::from(entries).to_string(),
    ))
}

/// Every version, with its state in Triton's words (`READY`, `LOADING`,
/// `UNAVAILABLE`); with `only_ready`, only the versions that serve.
pub(super) fn index_entries(state: &ManagementState, only_ready: bool) -> Vec<IndexEntry> {
    state
        .registry
        .index()
        .into_iter()
        .filter(|entry| entry.ready || !only_ready)
        .map(|entry| IndexEntry {
            state: match entry.state {
                "Ready" => "READY",
                "Loading" => "LOADING",
                _ => "UNAVAILABLE",
            },
            ..entry
        })
        .collect()
}

/// Registers the store entry named `model`; one already serving is left
/// as it is (a load is idempotent).
pub(super) async fn load(state: &ManagementState, model: &str) -> Result<(), RepositoryError> {
    allowed(state)?;
    if state.registry.resolve(model, None).is_ok() {
        return Ok(());
    }
    let registration = Registration {
        url: store_entry(state, model),
        model_name: Some(model.to_string()),
        ..Registration::default()
    };
    state
        .registry
        .register_model(&state.server, registration, true)
        .await?;
    Ok(())
}

/// The store entry a model name means: the entry of that name, else its
/// archive (`{m}.mar`, `{m}.tar.gz`, `{m}.onnx`), as TorchServe's and
/// KServe's stores name them. Only plain names are looked up.
fn store_entry(state: &ManagementState, model: &str) -> String {
    let plain = !model.is_empty() && !model.contains(['/', '\\']) && model != "." && model != "..";
    let store = state.server.model_store.as_deref().filter(|_| plain);
    let candidates = [
        model.to_string(),
        format!("{model}.mar"),
        format!("{model}.tar.gz"),
        format!("{model}.onnx"),
    ];
    store
        .and_then(|store| candidates.into_iter().find(|c| store.join(c).exists()))
        .unwrap_or_else(|| model.to_string())
}

pub(super) async fn unload(state: &ManagementState, model: &str) -> Result<(), RepositoryError> {
    allowed(state)?;
    Ok(state.registry.unregister_all(model).await?)
}

/// The management API's switch: loading and unloading need it on.
fn allowed(state: &ManagementState) -> Result<(), RepositoryError> {
    match state.server.model_api.enabled {
        true => Ok(()),
        false => Err(RepositoryError::Disabled),
    }
}

/// Triton's load may carry a model configuration or files to override the
/// repository's: ortserve loads only what the store holds, as it is. An
/// unload's `unload_dependents` is accepted: no model here has dependents.
fn refuse_parameters(body: &[u8]) -> Result<(), Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| Error::BadInput(format!("the request body is not JSON: {e}")))?;
    let names = request
        .get("parameters")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|parameters| parameters.keys().map(String::as_str));
    refuse_parameter_names(names)
}

/// The parameter names of a load or unload, refused unless ignorable.
pub(super) fn refuse_parameter_names<'a>(
    names: impl Iterator<Item = &'a str>,
) -> Result<(), Error> {
    let refused: Vec<&str> = names.filter(|key| *key != "unload_dependents").collect();
    match refused.is_empty() {
        true => Ok(()),
        false => Err(Error::BadInput(format!(
            "parameters {refused:?} are not supported: ortserve loads the model store's entry as it is"
        ))),
    }
}
