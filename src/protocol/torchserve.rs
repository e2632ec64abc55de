//! TorchServe's inference API, as its clients call it: `OPTIONS /`, `/ping`,
//! `/predictions/{model}[/{version}]` with a raw or multipart body, and its
//! `{"code","type","message"}` error bodies.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{any, get};
use futures_util::future::join_all;

use super::AppState;
use super::body::{RequestBody, json_response, push_json_array, status_of, with_retry_after};
use crate::handlers::BodyForm;
use crate::registry::ServingModel;
use crate::types::Error;

/// Multipart field names that carry an instance (TorchServe's raw body is `body`).
const INSTANCE_FIELDS: &[&str] = &["data", "body"];

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/",
            get(alive)
                .options(api_description)
                .fallback(method_not_allowed),
        )
        .route("/api-description", get(api_description))
        .route("/ping", any(ping))
        .route(
            "/predictions/{model}",
            any(predict_default).options(method_not_allowed),
        )
        .route(
            "/predictions/{model}/{version}",
            any(predict_version).options(method_not_allowed),
        )
        .fallback(not_found)
}

async fn api_description(State(state): State<Arc<AppState>>) -> Response {
    json_response(StatusCode::OK, state.api_description.clone())
}

/// KServe's v1 liveness answer (its SDK's `is_server_live` reads it);
/// TorchServe answers `GET /` with 405.
async fn alive() -> Response {
    json_response(StatusCode::OK, r#"{"status":"alive"}"#)
}

async fn method_not_allowed() -> Response {
    error_response(&Error::MethodNotAllowed)
}

async fn not_found() -> Response {
    error_response(&Error::ResourceNotFound)
}

/// Readiness, answered from counters only: it never waits on a queue.
async fn ping(State(state): State<Arc<AppState>>) -> Response {
    let report = state.registry.health();
    if report.healthy {
        return json_response(StatusCode::OK, "{\n  \"status\": \"Healthy\"\n}\n");
    }
    let mut models = serde_json::Map::new();
    for (name, health) in &report.models {
        let mut detail = serde_json::json!({
            "version": health.version,
            "state": health.state,
            "readyWorkers": health.ready_workers,
            "minWorkers": health.min_workers,
        });
        if let Some(reason) = &health.detail {
            detail["error"] = reason.clone().into();
        }
        models.insert(name.clone(), detail);
    }
    let body = serde_json::json!({ "status": "Unhealthy", "models": models });
    let text = serde_json::to_string_pretty(&body).expect("JSON values serialise") + "\n";
    json_response(StatusCode::INTERNAL_SERVER_ERROR, text)
}

async fn predict_default(
    state: State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match path {
        Ok(Path(model)) => predict(state, &model, None, headers, body).await,
        Err(rejection) => error_response(&Error::BadInput(rejection.body_text())),
    }
}

async fn predict_version(
    state: State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match path {
        Ok(Path((model, version))) => predict(state, &model, Some(&version), headers, body).await,
        Err(rejection) => error_response(&Error::BadInput(rejection.body_text())),
    }
}

async fn predict(
    State(state): State<Arc<AppState>>,
    model: &str,
    version: Option<&str>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut body = RequestBody::new(body);
    let outcome = async {
        let model = state.registry.resolve(model, version)?;
        let bytes = body.read(&headers, state.limits.max_request_size).await?;
        let instances = split_instances(&headers, bytes).await?;
        let answer = answer_all(&model, instances).await?;
        state.limits.check_response(answer.len())?;
        Ok(answer)
    };
    match outcome.await {
        Ok(answer) => json_response(StatusCode::OK, answer),
        Err(error) => {
            body.drain().await;
            error_response(&error)
        }
    }
}

/// One instance for a raw body; one per `data` part for a multipart body.
async fn split_instances(headers: &HeaderMap, body: Bytes) -> Result<Vec<Bytes>, Error> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        return Ok(vec![body]);
    }
    let bad =
        |e: multer::Error| Error::BadInput(format!("malformed multipart/form-data body: {e}"));
    let boundary = multer::parse_boundary(content_type).map_err(bad)?;
    let stream =
        futures_util::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut instances = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_string();
        if !INSTANCE_FIELDS.contains(&name.as_str()) {
            return Err(Error::BadInput(format!(
                "unknown multipart field '{name}'; send each instance as a part named 'data' (curl -F data=@file)"
            )));
        }
        instances.push(field.bytes().await.map_err(bad)?);
    }
    if instances.is_empty() {
        return Err(Error::BadInput(
            "the multipart body has no parts; send each instance as a part named 'data'".into(),
        ));
    }
    Ok(instances)
}

/// Runs every instance through the model concurrently (so they can share a
/// batch) and answers in order: one answer as is, several as a JSON array.
async fn answer_all(model: &Arc<ServingModel>, instances: Vec<Bytes>) -> Result<Vec<u8>, Error> {
    if let [only] = instances.as_slice() {
        return model.predict(only.clone(), BodyForm::Raw).await;
    }
    let answers = join_all(
        instances
            .into_iter()
            .map(|body| model.predict(body, BodyForm::Raw)),
    )
    .await;
    let mut out = Vec::new();
    push_json_array(&mut out, answers)?;
    Ok(out)
}

/// TorchServe's error body, pretty-printed as Gson prints it.
pub(super) fn error_response(error: &Error) -> Response {
    let body = serde_json::json!({
        "code": error.status(),
        "type": error.torchserve_type(),
        "message": error.to_string(),
    });
    let text = serde_json::to_string_pretty(&body).expect("JSON values serialise") + "\n";
    with_retry_after(json_response(status_of(error), text), error)
}
