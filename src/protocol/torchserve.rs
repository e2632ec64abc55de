//! TorchServe's inference API, as its clients call it: `OPTIONS /`, `/ping`,
//! `/predictions/{model}[/{version}]` with a raw or multipart body, and its
//! `{"code","type","message"}` error bodies.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use std::time::Duration;

use axum::body::BodyDataStream;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, options};
use futures_util::StreamExt;
use futures_util::future::join_all;

use super::AppState;
use crate::registry::ServingModel;
use crate::types::Error;

/// Multipart field names that carry an instance (TorchServe's raw body is `body`).
const INSTANCE_FIELDS: &[&str] = &["data", "body"];

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", options(api_description).fallback(method_not_allowed))
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
    let mut stream = body.into_data_stream();
    let outcome = async {
        let model = state.registry.resolve(model, version)?;
        let body = read_body(&headers, &mut stream, state.limits.max_request_size).await?;
        let instances = split_instances(&headers, body).await?;
        let answer = answer_all(&model, instances).await?;
        if answer.len() > state.limits.max_response_size {
            return Err(Error::ResponseTooLarge(format!(
                "the answer is {} bytes, over max_response_size={}; send fewer rows or raise max_response_size",
                answer.len(),
                state.limits.max_response_size
            )));
        }
        Ok(answer)
    };
    match outcome.await {
        Ok(answer) => json_response(StatusCode::OK, answer),
        Err(error) => {
            // Read what the client is still sending, so it gets this answer
            // rather than a connection reset.
            discard(&mut stream, 0).await;
            error_response(&error)
        }
    }
}

/// How much of an unread body is read and thrown away before an error is
/// sent: a client still uploading then reads the answer instead of a reset
/// connection. Beyond this, the connection is simply closed.
const DISCARD_LIMIT: usize = 8 * 1024 * 1024;
/// How long a request body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads the whole body, refusing more than `limit` bytes; nothing past the
/// limit is ever buffered, and a body that trickles in is cut off.
async fn read_body(
    headers: &HeaderMap,
    stream: &mut BodyDataStream,
    limit: usize,
) -> Result<Bytes, Error> {
    let too_large = |size: String| {
        Error::TooLarge(format!(
            "the request body is {size} bytes, over max_request_size={limit}; raise max_request_size in config.properties"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(length) = declared.filter(|&n| n > limit) {
        return Err(too_large(length.to_string()));
    }
    let read = async {
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut received = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| Error::BadInput(format!("could not read the request body: {e}")))?;
            received += chunk.len();
            if received > limit {
                return Err(too_large("more than that".into()));
            }
            chunks.push(chunk);
        }
        Ok(match chunks.len() {
            1 => chunks.pop().expect("one chunk"),
            _ => Bytes::from(chunks.concat()),
        })
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .unwrap_or(Err(Error::BodyTimeout {
            seconds: BODY_TIMEOUT.as_secs(),
        }))
}

/// Reads and drops up to [`DISCARD_LIMIT`] more bytes, for a bounded time.
async fn discard(stream: &mut BodyDataStream, mut seen: usize) {
    let drain = async {
        while seen < DISCARD_LIMIT {
            match stream.next().await {
                Some(Ok(chunk)) => seen += chunk.len(),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(BODY_TIMEOUT, drain).await;
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
        return model.predict(only.clone()).await;
    }
    let answers = join_all(instances.into_iter().map(|body| model.predict(body))).await;
    let mut out = Vec::with_capacity(
        answers
            .iter()
            .map(|a| a.as_ref().map_or(0, Vec::len) + 1)
            .sum::<usize>()
            + 2,
    );
    out.push(b'[');
    for (i, answer) in answers.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&answer?);
    }
    out.push(b']');
    Ok(out)
}

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut response = (status, body.into()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// TorchServe's error body, pretty-printed as Gson prints it.
pub(super) fn error_response(error: &Error) -> Response {
    let status = StatusCode::from_u16(error.status()).expect("error statuses are valid");
    let body = serde_json::json!({
        "code": error.status(),
        "type": error.torchserve_type(),
        "message": error.to_string(),
    });
    let text = serde_json::to_string_pretty(&body).expect("JSON values serialise") + "\n";
    let mut response = json_response(status, text);
    if let Some(seconds) = error.retry_after_secs() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}
