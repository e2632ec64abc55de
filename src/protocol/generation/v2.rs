//! The Open Inference Protocol's generate extension, as KServe and Triton
//! serve it: `POST /v2/models/{model}[/versions/{version}]/generate` answers
//! `{"model_name", "model_version", "text_output", "finish_reason"}`, and
//! `…/generate_stream` sends one server-sent event per piece of text, then
//! one with the `finish_reason`.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Map, Value, json};

use super::super::AppState;
use super::super::kserve_v1::KServeError;
use super::super::request::{ModelCall, ModelSegments, Reply, serve_model};
use super::{StreamFormat, object, params, streamed, take_string};
use crate::handlers::text_generation::{Finished, GenerateParams};
use crate::types::Error;

const SHAPE: &str = r#"{"text_input": "...", "parameters": {"max_tokens": 20}}"#;

pub(in crate::protocol) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2/models/{model}/generate", post(generate))
        .route("/v2/models/{model}/generate_stream", post(generate_stream))
        .route(
            "/v2/models/{model}/versions/{version}/generate",
            post(generate),
        )
        .route(
            "/v2/models/{model}/versions/{version}/generate_stream",
            post(generate_stream),
        )
}

type ModelPath = Path<ModelSegments>;

fn generate(
    state: State<Arc<AppState>>,
    path: ModelPath,
    request: Request,
) -> impl Future<Output = Response> {
    serve(state, path, false, request)
}

fn generate_stream(
    state: State<Arc<AppState>>,
    path: ModelPath,
    request: Request,
) -> impl Future<Output = Response> {
    serve(state, path, true, request)
}

/// Plain functions returning [`serve_model`]'s future, as inference's are.
fn serve(
    State(state): State<Arc<AppState>>,
    Path(segments): ModelPath,
    stream: bool,
    request: Request,
) -> impl Future<Output = Response> {
    serve_model(&state, segments.target(), Ok(stream), request, answer)
}

async fn answer(call: ModelCall, stream: bool) -> Result<Reply, KServeError> {
    let (prompt, params) = request(&call.body)?;
    let generation = call.model.generate(prompt, params).await?;
    let names = Names {
        model: call.model.id.name.clone(),
        version: call.model.id.version.clone(),
    };
    if stream {
        return Ok(Reply::streamed(
            streamed(generation, Events(names)),
            "text/event-stream",
        ));
    }
    let (text, finished) = generation.collect().await?;
    let mut body = names.object(text);
    body.insert("finish_reason".into(), finished.reason.as_str().into());
    Ok(Reply::json(Value::Object(body).to_string().into_bytes()))
}

fn request(body: &Bytes) -> Result<(String, GenerateParams), Error> {
    let mut map = object(body, SHAPE)?;
    let prompt = take_string(&mut map, "text_input")?
        .ok_or_else(|| Error::BadInput(format!("the body has no 'text_input'; send {SHAPE}")))?;
    map.remove("id");
    let parameters = match map.remove("parameters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(parameters)) => parameters,
        Some(_) => {
            return Err(Error::BadInput(format!(
                "'parameters' must be an object: {SHAPE}"
            )));
        }
    };
    if let Some(key) = map.keys().next() {
        return Err(Error::BadInput(format!(
            "unknown field '{key}'; a generate request has text_input and parameters: {SHAPE}"
        )));
    }
    let mut parameters = parameters;
    // Triton's clients may say which endpoint they meant; the route decides.
    parameters.remove("stream");
    Ok((prompt, params(parameters)?))
}

struct Names {
    model: String,
    version: String,
}

impl Names {
    fn object(&self, text: String) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("model_name".into(), self.model.clone().into());
        map.insert("model_version".into(), self.version.clone().into());
        map.insert("text_output".into(), text.into());
        map
    }
}

/// Server-sent events, one JSON object each.
struct Events(Names);

fn event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

impl StreamFormat for Events {
    fn piece(&mut self, text: &str) -> Bytes {
        event(&Value::Object(self.0.object(text.to_string())))
    }

    fn finish(&mut self, finished: &Finished) -> Option<Bytes> {
        let mut last = self.0.object(String::new());
        last.insert("finish_reason".into(), finished.reason.as_str().into());
        Some(event(&Value::Object(last)))
    }

    fn error(&mut self, error: &Error) -> Option<Bytes> {
        Some(event(&json!({ "error": error.to_string() })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generate_request_names_what_is_wrong() {
        let body = |text: &str| Bytes::copy_from_slice(text.as_bytes());
        let (prompt, params) = request(&body(
            r#"{"text_input": "Hi", "parameters": {"max_tokens": 2, "stream": true}}"#,
        ))
        .unwrap();
        assert_eq!((prompt.as_str(), params.max_new_tokens), ("Hi", Some(2)));
        let error = |text: &str| request(&body(text)).unwrap_err().to_string();
        assert!(error(r#"{"parameters": {}}"#).starts_with("the body has no 'text_input'"));
        assert!(
            error(r#"{"text_input": "a", "prompt": "b"}"#).starts_with("unknown field 'prompt'")
        );
        assert!(
            error(r#"{"text_input": "a", "parameters": {"top_p": "x"}}"#)
                .contains("invalid generation parameter")
        );
        assert!(
            error(r#"{"text_input": "a", "parameters": 3}"#)
                .starts_with("'parameters' must be an object")
        );
    }
}
