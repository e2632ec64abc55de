//! The Open Inference Protocol (KServe v2) over REST: server and model
//! metadata and readiness, and inference with JSON or binary tensors, for
//! every version of every model. Requests carry tensors, so they go to the
//! model as sent, past its handler.

mod codec;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};

use super::AppState;
use super::body::{RequestBody, json_response};
use super::kserve_v1::{error_response, readiness};
use crate::handlers::INLINE_PARSE_LIMIT;
use crate::types::Error;
use codec::oip_name;

static INFERENCE_HEADER_CONTENT_LENGTH: HeaderName =
    HeaderName::from_static("inference-header-content-length");

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models", get(list))
        .route("/v2/models/{model}", get(metadata_default))
        .route("/v2/models/{model}/ready", get(ready_default))
        .route("/v2/models/{model}/infer", post(infer_default))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(metadata_version),
        )
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(ready_version),
        )
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_version),
        )
}

async fn server_metadata() -> Response {
    let body = serde_json::json!({
        "name": "ortserve",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    });
    json_response(StatusCode::OK, body.to_string())
}

/// The process answers: it is live.
async fn live() -> Response {
    json_response(StatusCode::OK, r#"{"live":true}"#)
}

/// Ready by `/ping`'s rule: every model's default version has `minWorkers`.
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.registry.health().healthy {
        json_response(StatusCode::OK, r#"{"ready":true}"#)
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":"Server is not ready."}"#,
        )
    }
}

async fn list(State(state): State<Arc<AppState>>) -> Response {
    json_response(
        StatusCode::OK,
        serde_json::json!({ "models": state.registry.model_names() }).to_string(),
    )
}

async fn metadata_default(state: State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    metadata(state, &model, None)
}

async fn metadata_version(
    state: State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    metadata(state, &model, Some(&version))
}

/// Names, datatypes and shapes (-1 for dynamic axes) as the graph declares them.
fn metadata(State(state): State<Arc<AppState>>, name: &str, version: Option<&str>) -> Response {
    let answer = state.registry.resolve(name, version).and_then(|model| {
        let tensors = |specs: &[crate::types::TensorSpec]| -> Vec<serde_json::Value> {
            specs
                .iter()
                .map(|s| serde_json::json!({"name": s.name, "datatype": oip_name(s.dtype), "shape": s.shape}))
                .collect()
        };
        let io = model.io();
        Ok(serde_json::json!({
            "name": name,
            "versions": state.registry.versions(name)?,
            "platform": "onnxruntime_onnx",
            "inputs": tensors(&io.inputs),
            "outputs": tensors(&io.outputs),
        }))
    });
    match answer {
        Ok(body) => json_response(StatusCode::OK, body.to_string()),
        Err(error) => error_response(&error),
    }
}

async fn ready_default(state: State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    readiness(&state, &model, None)
}

async fn ready_version(
    state: State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    readiness(&state, &model, Some(&version))
}

async fn infer_default(
    state: State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer(state, &model, None, headers, body).await
}

async fn infer_version(
    state: State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer(state, &model, Some(&version), headers, body).await
}

async fn infer(
    State(state): State<Arc<AppState>>,
    name: &str,
    version: Option<&str>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut body = RequestBody::new(body);
    let outcome = async {
        let model = state.registry.resolve(name, version)?;
        let header_length = match headers.get(&INFERENCE_HEADER_CONTENT_LENGTH) {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| {
                        Error::BadInput(
                            "Inference-Header-Content-Length must be a whole number of bytes"
                                .into(),
                        )
                    })?,
            ),
        };
        let bytes = body.read(&headers, state.limits.max_request_size).await?;
        // A large JSON part is parsed on the blocking pool; binary data is
        // only copied, which is cheap enough to do here.
        let json_length = header_length.unwrap_or(bytes.len());
        let decoded = if json_length > INLINE_PARSE_LIMIT {
            let model = model.clone();
            let offloaded = model.clone();
            offloaded
                .offload(move || {
                    codec::decode(
                        model.io(),
                        &bytes,
                        header_length,
                        model.max_tensor_elements(),
                    )
                })
                .await??
        } else {
            codec::decode(
                model.io(),
                &bytes,
                header_length,
                model.max_tensor_elements(),
            )?
        };
        let response = model.infer(decoded.request).await?;
        let encoded = codec::encode(
            &model.id,
            decoded.id.as_deref(),
            model.io(),
            &response,
            decoded.shape,
            &decoded.outputs,
        );
        state
            .limits
            .check_response(encoded.json.len() + encoded.binary.len())?;
        Ok::<_, Error>(encoded)
    };
    match outcome.await {
        Ok(encoded) if encoded.binary.is_empty() => json_response(StatusCode::OK, encoded.json),
        Ok(encoded) => binary_response(encoded),
        Err(error) => {
            body.drain().await;
            error_response(&error)
        }
    }
}

/// JSON then binary tensors, with the JSON part's length in a header.
fn binary_response(encoded: codec::Encoded) -> Response {
    let json_length = encoded.json.len();
    let mut body = encoded.json;
    body.extend_from_slice(&encoded.binary);
    let mut response = json_response(StatusCode::OK, body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        INFERENCE_HEADER_CONTENT_LENGTH.clone(),
        HeaderValue::from(json_length),
    );
    response
}
