//! TorchServe's inference API, as its clients call it: `OPTIONS /`, `/ping`,
//! `/predictions/{model}[/{version}]` and `/explanations/{model}[/{version}]`
//! with a raw or multipart body, and its `{"code","type","message"}` error
//! bodies.

use std::collections::HashMap;
use std::future::{Future, ready};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use futures_util::future::{Either, join_all};

use super::AppState;
use super::body::{close_connection, error_reply, json_response, push_json_array};
use super::request::{ModelCall, ModelSegments, Reply, serve_model};
use crate::explain::ExplainParams;
use crate::handlers::BodyForm;
use crate::registry::{AttachedModel, ModelRegistry};
use crate::types::{Error, bounded_message};

/// Multipart field names that carry an instance (TorchServe's raw body is `body`).
const INSTANCE_FIELDS: &[&str] = &["data", "body"];

/// The prediction routes, which [`App`](super::App) also matches itself.
pub(super) const PREDICTIONS: &str = "/predictions/{model}";
pub(super) const VERSION_PREDICTIONS: &str = "/predictions/{model}/{version}";

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/",
            get(alive)
                .options(api_description)
                .fallback(method_not_allowed),
        )
        .route(
            "/api-description",
            get(api_description).fallback(method_not_allowed),
        )
        // TorchServe answers /ping whatever the method; GET, POST and PUT
        // are what its clients send, and what the description documents.
        .route(
            "/ping",
            get(ping).post(ping).put(ping).fallback(method_not_allowed),
        )
        .route(PREDICTIONS, upload(predict))
        .route(VERSION_PREDICTIONS, upload(predict))
        .route("/explanations/{model}", upload(explain))
        .route("/explanations/{model}/{version}", upload(explain))
}

/// POST, or PUT as `curl -T` sends it (the API doc's examples); any other
/// method is a 405 whose `Allow` header names these two.
fn upload<H, T>(handler: H) -> MethodRouter<Arc<AppState>>
where
    H: axum::handler::Handler<T, Arc<AppState>>,
    T: 'static,
{
    post(handler.clone())
        .put(handler)
        .fallback(method_not_allowed)
}

async fn api_description(State(state): State<Arc<AppState>>) -> Response {
    json_response(StatusCode::OK, state.api_description.clone())
}

/// KServe's v1 liveness answer (its SDK's `is_server_live` reads it);
/// TorchServe answers `GET /` with 405.
async fn alive() -> Response {
    json_response(StatusCode::OK, r#"{"status":"alive"}"#)
}

async fn method_not_allowed() -> TorchServeError {
    TorchServeError(Error::MethodNotAllowed)
}

/// Readiness, answered from counters only: it never waits on a queue.
async fn ping(State(state): State<Arc<AppState>>) -> Response {
    let (code, text) = health(&state.registry);
    json_response(code, text)
}

/// `/ping`'s status and body (gRPC's `Ping` answers the same text).
pub(super) fn health(registry: &ModelRegistry) -> (StatusCode, String) {
    let report = registry.health();
    if report.healthy && report.failed_optional.is_empty() {
        return (StatusCode::OK, "{\n  \"status\": \"Healthy\"\n}\n".into());
    }
    // Healthy with failed optional models: TorchServe's "Partial Healthy",
    // naming only those; unhealthy: every model's state.
    let shown = |name: &String| !report.healthy || report.failed_optional.contains(name);
    let mut models = serde_json::Map::new();
    for (name, health) in report.models.iter().filter(|(name, _)| shown(name)) {
        let mut detail = serde_json::json!({
            "version": health.version,
            "state": health.state,
            "readyWorkers": health.ready_workers,
            "minWorkers": health.min_workers,
        });
        if let Some(reason) = &health.detail {
            detail["error"] = reason.clone().into();
        }
        if let Some(kind) = health.failure_kind {
            detail["kind"] = kind.into();
        }
        models.insert(name.clone(), detail);
    }
    let (status, code) = match report.healthy {
        true => ("Partial Healthy", StatusCode::OK),
        false => ("Unhealthy", StatusCode::INTERNAL_SERVER_ERROR),
    };
    let mut body = serde_json::json!({ "status": status, "models": models });
    if report.draining {
        body["draining"] = true.into();
    }
    let text = serde_json::to_string_pretty(&body).expect("JSON values serialise") + "\n";
    (code, text)
}

/// `{model}` and, on the longer routes, `{version}`.
type ModelPath = Result<Path<ModelSegments>, PathRejection>;

pub(super) fn predict(
    state: State<Arc<AppState>>,
    path: ModelPath,
    request: Request,
) -> impl Future<Output = Response> {
    serve(state, path, None, request)
}

/// Explanation parameters come as a query (`?target=3&method=occlusion`).
fn explain(
    state: State<Arc<AppState>>,
    path: ModelPath,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    request: Request,
) -> impl Future<Output = Response> {
    let params = query
        .map_err(|rejection| Error::BadInput(rejection.body_text()))
        .and_then(|Query(query)| ExplainParams::from_query(&query));
    serve(state, path, Some(params.map(Box::new)), request)
}

/// Predictions, or with `explain` explanations, for every instance of a
/// body. Plain functions returning the future, down to [`serve_model`], so
/// that the future axum boxes holds the request only until it is taken
/// apart.
fn serve(
    State(state): State<Arc<AppState>>,
    path: ModelPath,
    explain: Option<Result<Box<ExplainParams>, Error>>,
    request: Request,
) -> impl Future<Output = Response> {
    let Path(segments) = match path {
        Ok(path) => path,
        Err(rejection) => {
            let error = TorchServeError(Error::BadInput(rejection.body_text()));
            return Either::Left(ready(close_connection(error.into_response())));
        }
    };
    // Read now, while the headers are at hand; refused, if at all, only
    // once the body has been read, as before the headers were let go.
    let boundary = multipart_boundary(request.headers());
    let parts = explain
        .transpose()
        .map(|explain| Parts { explain, boundary });
    Either::Right(serve_model(
        &state,
        segments.target(),
        parts,
        request,
        answer,
    ))
}

/// What a prediction needs from the request besides its body.
struct Parts {
    /// Boxed: rare, and large beside the rest of a prediction's future.
    explain: Option<Box<ExplainParams>>,
    /// A multipart body's boundary; `None` for a raw body.
    boundary: Result<Option<String>, Error>,
}

/// The hot path, one raw body predicted, in a small future; generations,
/// multipart bodies and explanations in a boxed one, so their state does
/// not ride in every prediction's.
fn answer(call: ModelCall, parts: Parts) -> impl Future<Output = Result<Reply, TorchServeError>> {
    let ModelCall { model, body } = call;
    let one_raw_body = matches!(parts.boundary, Ok(None)) && parts.explain.is_none();
    if one_raw_body && !model.generates_text() {
        return Either::Left(async move {
            let answer = model.predict(body, BodyForm::Raw).await?;
            Ok(Reply::json(answer))
        });
    }
    Either::Right(Box::pin(answer_others(model, body, parts)))
}

/// Every instance's answer, or with explanation parameters its
/// attributions; a text generator's answer to a prediction.
async fn answer_others(
    model: AttachedModel,
    body: Bytes,
    parts: Parts,
) -> Result<Reply, TorchServeError> {
    if parts.explain.is_none() && model.generates_text() {
        return Ok(super::generation::torchserve(&model, body).await?);
    }
    // One instance for a raw body; one per `data` part for a multipart body.
    let instances = match parts.boundary? {
        None => vec![body],
        Some(boundary) => multipart_instances(body, boundary).await?,
    };
    let answer = match &parts.explain {
        None => answer_all(&model, instances).await?,
        Some(params) => explain_all(&model, instances, params).await?,
    };
    Ok(Reply::json(answer))
}

/// The boundary of a `multipart/form-data` body; `None` for any other.
fn multipart_boundary(headers: &HeaderMap) -> Result<Option<String>, Error> {
    const MULTIPART: &[u8] = b"multipart/form-data";
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let prefix = content_type.as_bytes().get(..MULTIPART.len());
    if !prefix.is_some_and(|p| p.eq_ignore_ascii_case(MULTIPART)) {
        return Ok(None);
    }
    multer::parse_boundary(content_type)
        .map(Some)
        .map_err(malformed_multipart)
}

fn malformed_multipart(e: multer::Error) -> Error {
    Error::BadInput(format!("malformed multipart/form-data body: {e}"))
}

async fn multipart_instances(body: Bytes, boundary: String) -> Result<Vec<Bytes>, Error> {
    let stream =
        futures_util::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut instances = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(malformed_multipart)? {
        let name = field.name().unwrap_or("").to_string();
        if !INSTANCE_FIELDS.contains(&name.as_str()) {
            return Err(Error::BadInput(format!(
                "unknown multipart field '{name}'; send each instance as a part named 'data' (curl -F data=@file)"
            )));
        }
        instances.push(field.bytes().await.map_err(malformed_multipart)?);
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
async fn answer_all(model: &AttachedModel, instances: Vec<Bytes>) -> Result<Vec<u8>, Error> {
    if let [only] = instances.as_slice() {
        return model.predict(only.clone(), BodyForm::Raw).await;
    }
    model.check_instances(instances.len())?;
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

/// Explains every instance concurrently; answers one array with an entry
/// per instance, as TorchServe does even for one.
async fn explain_all(
    model: &AttachedModel,
    instances: Vec<Bytes>,
    params: &ExplainParams,
) -> Result<Vec<u8>, Error> {
    let budget = model.pass_budget();
    // Before any instance is decoded: all of them are, at once.
    budget.admits(instances.len())?;
    let explained = join_all(
        instances
            .into_iter()
            .map(|body| model.explain(body, BodyForm::Raw, params, &budget)),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<_>, Error>>()?;
    let mut out = Vec::new();
    push_json_array(&mut out, explained.into_iter().flatten().map(Ok).collect())?;
    Ok(out)
}

/// An error in TorchServe's shape: `{"code","type","message"}`,
/// pretty-printed as Gson prints it.
pub(super) struct TorchServeError(pub Error);

impl From<Error> for TorchServeError {
    fn from(error: Error) -> TorchServeError {
        TorchServeError(error)
    }
}

impl IntoResponse for TorchServeError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "code": self.0.status(),
            "type": self.0.torchserve_type(),
            "message": bounded_message(self.0.to_string()),
        });
        let text = serde_json::to_string_pretty(&body).expect("JSON values serialise") + "\n";
        error_reply(&self.0, text)
    }
}

/// Generated multipart bodies: the instances or a 400, never a panic.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// The instances of a body as [`answer_others`] splits it.
    fn split(content_type: &str, body: Vec<u8>) -> Result<Vec<Bytes>, Error> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        let Some(boundary) = multipart_boundary(&headers)? else {
            return Ok(vec![Bytes::from(body)]);
        };
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(multipart_instances(Bytes::from(body), boundary))
    }

    #[test]
    fn multipart_is_told_by_its_content_type_in_any_case() {
        let boundary = |content_type: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
            multipart_boundary(&headers).map_err(|e| e.to_string())
        };
        assert_eq!(
            boundary("Multipart/Form-Data; boundary=B"),
            Ok(Some("B".into()))
        );
        assert_eq!(boundary("application/json"), Ok(None));
        assert_eq!(boundary("multipart/form"), Ok(None));
        let e = boundary("multipart/form-data").unwrap_err();
        assert!(e.contains("malformed multipart/form-data body"), "{e}");
    }

    /// Multipart-shaped bodies: boundaries, part headers and data, in any order.
    fn multipart_like() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"--B\r\n".to_vec()),
            Just(b"--B--\r\n".to_vec()),
            Just(b"Content-Disposition: form-data; name=\"data\"\r\n\r\n".to_vec()),
            Just(b"Content-Disposition: form-data; name=\"other\"\r\n\r\n".to_vec()),
            Just(b"\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..16),
        ];
        proptest::collection::vec(piece, 0..10).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn multipart_bodies_give_instances_or_a_400(body in multipart_like()) {
            match split("multipart/form-data; boundary=B", body) {
                Ok(instances) => prop_assert!(!instances.is_empty()),
                Err(error) => prop_assert_eq!(error.status(), 400, "{}", error),
            }
        }

        #[test]
        fn any_content_type_and_body_give_instances_or_a_400(
            content_type in "multipart/form-data[; a-z=\"]{0,20}",
            body in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            if let Err(error) = split(&content_type, body) {
                prop_assert_eq!(error.status(), 400, "{}", error);
            }
        }
    }
}
