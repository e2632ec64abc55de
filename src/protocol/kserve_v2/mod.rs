//! The Open Inference Protocol (KServe v2) over REST: server and model
//! metadata and readiness, Triton's configuration ([`model_config`]) and
//! statistics ([`stats`]) extensions, and inference and explanations with JSON or
//! binary tensors, for every version of every model. Requests carry tensors, so they go to the
//! model as sent, past its handler — except a `BYTES` payload for a handler that reads
//! files (`payload`), and an `argmax` classifier's answer, which replaces the outputs.

mod codec;
mod model_config;
mod payload;
mod stats;

use std::future::{self, Future};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::body::json_response;
use super::kserve_v1::{KServeError, method_not_allowed, readiness};
use super::request::{ModelCall, ModelSegments, Reply, serve_model};
use super::{Action, AppState};
use crate::codec::oip_name;
use crate::codec::{INLINE_PARSE_LIMIT, ReplyShape};
use crate::explain::ExplainParams;
use crate::registry::AttachedModel;
use crate::types::Error;
use bytes::Bytes;
use futures_util::future::{Either, TryFutureExt, join_all};

static INFERENCE_HEADER_CONTENT_LENGTH: HeaderName =
    HeaderName::from_static("inference-header-content-length");

/// Inference, whose routes [`App`](super::App) also matches itself.
pub(super) const INFER: &str = "/v2/models/{model}/infer";
pub(super) const VERSION_INFER: &str = "/v2/models/{model}/versions/{version}/infer";

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models", get(list))
        .route("/v2/models/stats", get(stats::all))
        .route("/v2/models/{model}/stats", get(stats::model))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(stats::version),
        )
        .route(
            "/v2/models/{model}/config",
            get(model_config::default_version),
        )
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(model_config::version),
        )
        .route("/v2/models/{model}", get(metadata_default))
        .route("/v2/models/{model}/ready", get(ready_default))
        .route(INFER, post(infer))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(metadata_version),
        )
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(ready_version),
        )
        .route(VERSION_INFER, post(infer))
        .route("/v2/models/{model}/explain", post(explain))
        .route(
            "/v2/models/{model}/versions/{version}/explain",
            post(explain),
        )
        .method_not_allowed_fallback(method_not_allowed)
}

async fn server_metadata() -> Response {
    let body = serde_json::json!({
        "name": "ortserve",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "model_configuration", "statistics", "model_repository"],
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
        Err(error) => KServeError(error).into_response(),
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

/// `{model}` and, on the longer routes, `{version}`.
type ModelPath = Path<ModelSegments>;

pub(super) fn infer(
    state: State<Arc<AppState>>,
    path: ModelPath,
    request: Request,
) -> impl Future<Output = Response> {
    serve(state, path, Action::Predict, request)
}

fn explain(
    state: State<Arc<AppState>>,
    path: ModelPath,
    request: Request,
) -> impl Future<Output = Response> {
    serve(state, path, Action::Explain, request)
}

/// Plain functions returning the future, down to [`serve_model`], so that
/// the future axum boxes holds the request only until it is taken apart.
fn serve(
    State(state): State<Arc<AppState>>,
    Path(segments): ModelPath,
    action: Action,
    request: Request,
) -> impl Future<Output = Response> {
    let header_length = inference_header_length(request.headers());
    let parts = header_length.map(|length| (action, length));
    serve_model(&state, segments.target(), parts, request, answer)
}

/// Tensors in, tensors out; payloads through the handler where it reads
/// files. The common request, tensors parsed here and predicted, has a
/// small future of its own; payloads, explanations and bodies parsed on
/// the blocking pool have a boxed one, so that their state does not ride
/// in every prediction's future.
fn answer(
    call: ModelCall,
    (action, header_length): (Action, Option<usize>),
) -> impl Future<Output = Result<Reply, KServeError>> {
    let ModelCall { model, body } = call;
    let inline = header_length.unwrap_or(body.len()) <= INLINE_PARSE_LIMIT;
    if model.takes_payloads() || action == Action::Explain || !inline {
        return Either::Right(Box::pin(answer_others(model, body, action, header_length)));
    }
    let limit = model.max_tensor_elements();
    let decoded = codec::decode(model.io(), &body, header_length, limit);
    Either::Left(
        future::ready(decoded)
            .and_then(|decoded| predict(model, decoded))
            .map_ok(reply)
            .err_into(),
    )
}

async fn answer_others(
    model: AttachedModel,
    body: Bytes,
    action: Action,
    header_length: Option<usize>,
) -> Result<Reply, KServeError> {
    let payloads = match model.takes_payloads() {
        true => payload::decode(&body, header_length)?,
        false => None,
    };
    let encoded = match payloads {
        Some(payloads) => answer_payloads(&model, payloads, action).await?,
        None => {
            let decoded = decode(&model, body, header_length).await?;
            match action {
                Action::Predict => predict(model, decoded).await?,
                Action::Explain => explain_tensors(&model, decoded).await?,
            }
        }
    };
    Ok(reply(encoded))
}

/// The model's outputs, or the handler's answer where it replaces them
/// (an `argmax` classifier answers the best class, as one output named after
/// the request's input, as TorchServe's KServe v2 envelope names it). The
/// request is taken out of `decoded` before the first await, so the future
/// holds it once, in the pool's future.
fn predict(
    model: AttachedModel,
    decoded: codec::Decoded,
) -> impl Future<Output = Result<codec::Encoded, Error>> {
    let codec::Decoded {
        id,
        binary_output: binary,
        request,
        shape,
        outputs,
        ..
    } = decoded;
    async move {
        let response = model.infer(request).await?;
        let id = id.as_deref();
        if let Some(answer) = model.answer_tensor(&response) {
            let output = codec::NamedOutput {
                name: &model.io().inputs[0].name,
                tensor: &answer?,
                binary,
            };
            return Ok(codec::encode(&model.id, id, &[output], ReplyShape::Batched));
        }
        let chosen = codec::chosen_outputs(model.io(), &response, &outputs);
        Ok(codec::encode(&model.id, id, &chosen, shape))
    }
}

/// One attribution tensor per input, named after it.
async fn explain_tensors(
    model: &AttachedModel,
    decoded: codec::Decoded,
) -> Result<codec::Encoded, Error> {
    let binary = decoded.binary_output;
    let params = ExplainParams::from_json(
        decoded.parameters.iter().map(|(k, v)| (k.as_str(), v)),
        false,
    )?;
    let attributions = model
        .explain_rows(decoded.request, &params, &model.pass_budget())
        .await?;
    let named: Vec<_> = model
        .io()
        .inputs
        .iter()
        .zip(&attributions)
        .map(|(spec, tensor)| codec::NamedOutput {
            name: &spec.name,
            tensor,
            binary,
        })
        .collect();
    Ok(codec::encode(
        &model.id,
        decoded.id.as_deref(),
        &named,
        decoded.shape,
    ))
}

/// Each payload through the handler as one instance, concurrently; the
/// answers (or explanations) as one output named after the input.
async fn answer_payloads(
    model: &AttachedModel,
    payloads: payload::Payloads,
    action: Action,
) -> Result<codec::Encoded, Error> {
    model.check_instances(payloads.elements.len())?;
    let answers: Vec<Vec<u8>> = match action {
        Action::Predict => join_all(
            payloads
                .elements
                .into_iter()
                .map(|(part, form)| model.predict(part, form)),
        )
        .await
        .into_iter()
        .collect::<Result<_, _>>()?,
        Action::Explain => {
            let params = ExplainParams::from_json(
                payloads.parameters.iter().map(|(k, v)| (k.as_str(), v)),
                false,
            )?;
            let budget = model.pass_budget();
            join_all(
                payloads
                    .elements
                    .into_iter()
                    .map(|(part, form)| model.explain(part, form, &params, &budget)),
            )
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect()
        }
    };
    let output = codec::NamedOutput {
        name: &payloads.name,
        tensor: &payload::answers_tensor(&answers),
        binary: payloads.binary_output,
    };
    Ok(codec::encode(
        &model.id,
        payloads.id.as_deref(),
        &[output],
        ReplyShape::Batched,
    ))
}

fn inference_header_length(headers: &HeaderMap) -> Result<Option<usize>, Error> {
    // Found by walking the request's few headers: hashing this long name
    // to look it up cost more (about 250 instructions a request).
    let value = headers
        .iter()
        .find_map(|(name, value)| (name == INFERENCE_HEADER_CONTENT_LENGTH).then_some(value));
    let Some(value) = value else {
        return Ok(None);
    };
    std::str::from_utf8(value.as_bytes().trim_ascii())
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| {
            Error::BadInput(
                "Inference-Header-Content-Length must be a whole number of bytes".into(),
            )
        })
}

/// Decodes the body; a large JSON part is parsed on the blocking pool
/// (binary data is only copied, which is cheap enough to do here).
async fn decode(
    model: &AttachedModel,
    bytes: Bytes,
    header_length: Option<usize>,
) -> Result<codec::Decoded, Error> {
    let limit = model.max_tensor_elements();
    if header_length.unwrap_or(bytes.len()) <= INLINE_PARSE_LIMIT {
        return codec::decode(model.io(), &bytes, header_length, limit);
    }
    let owner = model.clone();
    model
        .offload(move || codec::decode(owner.io(), &bytes, header_length, limit))
        .await?
}

/// JSON alone, or JSON then binary tensors with the JSON part's length in a header.
fn reply(encoded: codec::Encoded) -> Reply {
    if !encoded.has_binary() {
        return Reply::json(encoded.body);
    }
    let json_length = encoded.json_length;
    Reply::with_header(
        encoded.body,
        "application/octet-stream",
        (
            &INFERENCE_HEADER_CONTENT_LENGTH,
            HeaderValue::from(json_length),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_parts_length_is_read_from_its_header_among_others() {
        let length = |pairs: &[(&str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
                headers.append(name, HeaderValue::from_str(value).unwrap());
            }
            inference_header_length(&headers).map_err(|e| e.to_string())
        };
        assert_eq!(length(&[("content-type", "application/json")]), Ok(None));
        let sent = [
            ("content-type", "application/octet-stream"),
            ("Inference-Header-Content-Length", " 126 "),
            ("x-other", "1"),
        ];
        assert_eq!(length(&sent), Ok(Some(126)));
        for bad in ["", "-1", "12 bytes", "1e3"] {
            let error = length(&[("inference-header-content-length", bad)]).unwrap_err();
            assert!(
                error.contains("Inference-Header-Content-Length must be a whole number"),
                "{bad}: {error}"
            );
        }
    }
}
