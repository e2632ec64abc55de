//! OpenAI's completions API, as KServe's LLM runtimes serve it under
//! `/openai/v1`: `POST /openai/v1/completions` (whole, or with
//! `"stream": true` as server-sent events ending in `data: [DONE]`) and
//! `GET /openai/v1/models`. The `model` field names an ortserve model.
//! Errors are OpenAI's `{"error": {"message", "type", "param", "code"}}`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use super::super::AppState;
use super::super::body::{RequestBody, error_reply, json_response};
use super::super::request::Reply;
use super::{StreamFormat, object, params, streamed, take_bool, take_string};
use crate::handlers::text_generation::{Finished, GenerateParams};
use crate::types::{Error, bounded_message};

const SHAPE: &str = r#"{"model": "NAME", "prompt": "...", "max_tokens": 16}"#;

pub(in crate::protocol) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/openai/v1/completions", post(completions))
        .route("/openai/v1/models", get(models))
}

/// An error in OpenAI's shape, which its clients raise as typed exceptions.
pub(in crate::protocol) struct OpenAiError(pub Error);

impl From<Error> for OpenAiError {
    fn from(error: Error) -> OpenAiError {
        OpenAiError(error)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        error_reply(&self.0, error_object(&self.0).to_string())
    }
}

fn error_object(error: &Error) -> Value {
    let kind = if error.status() >= 500 {
        "server_error"
    } else {
        "invalid_request_error"
    };
    let message = bounded_message(error.to_string());
    json!({ "error": { "message": message, "type": kind, "param": null, "code": null } })
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    let data: Vec<Value> = state
        .registry
        .model_names()
        .into_iter()
        .map(|id| json!({ "id": id, "object": "model", "created": 0, "owned_by": "ortserve" }))
        .collect();
    json_response(
        StatusCode::OK,
        json!({ "object": "list", "data": data }).to_string(),
    )
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut body = RequestBody::new(body, &headers, &state.bodies);
    let outcome = async {
        let bytes = body.read(&state.limits).await?;
        let request = Completion::parse(&bytes)?;
        let model = state.registry.resolve(&request.model, None)?.attach();
        let generation = model.generate(request.prompt, request.params).await?;
        let names = Names {
            id: format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: request.model,
        };
        if request.stream {
            let format = Chunks {
                names,
                include_usage: request.include_usage,
            };
            return Ok(Reply::streamed(
                streamed(generation, format),
                "text/event-stream",
            ));
        }
        let (text, finished) = generation.collect().await?;
        let mut answer = names.object(choice(&text, Some(&finished)));
        answer.insert("usage".into(), usage(&finished));
        Ok::<_, OpenAiError>(Reply::json(Value::Object(answer).to_string().into_bytes()))
    };
    match outcome.await {
        Ok(reply) => reply.into_response(body.memory()),
        Err(error) => body.close_if_unread(error.into_response()),
    }
}

/// A completions request, checked.
#[derive(Debug)]
struct Completion {
    model: String,
    prompt: String,
    stream: bool,
    include_usage: bool,
    params: GenerateParams,
}

impl Completion {
    fn parse(body: &Bytes) -> Result<Completion, Error> {
        let mut map = object(body, SHAPE)?;
        let model = take_string(&mut map, "model")?
            .ok_or_else(|| Error::BadInput(format!("the body has no 'model'; send {SHAPE}")))?;
        let prompt = prompt(map.remove("prompt"))?;
        let stream = take_bool(&mut map, "stream")?;
        let include_usage = match map.remove("stream_options") {
            Some(Value::Object(mut options)) => take_bool(&mut options, "include_usage")?,
            _ => false,
        };
        map.remove("user");
        refuse_unsupported(&mut map)?;
        Ok(Completion {
            model,
            prompt,
            stream,
            include_usage,
            params: params(map)?,
        })
    }
}

/// One prompt: a string, or a list holding one string.
fn prompt(value: Option<Value>) -> Result<String, Error> {
    match value {
        Some(Value::String(prompt)) => Ok(prompt),
        Some(Value::Array(mut list)) if list.len() == 1 && list[0].is_string() => {
            Ok(list.pop().and_then(|v| v.as_str().map(String::from)).unwrap_or_default())
        }
        None => Err(Error::BadInput(format!("the body has no 'prompt'; send {SHAPE}"))),
        Some(_) => Err(Error::BadInput(
            "'prompt' must be a string (or a list of one string); token-id prompts and batches are not supported".into(),
        )),
    }
}

/// Fields OpenAI has that ortserve does not implement: accepted at their
/// neutral value, refused (naming them) otherwise.
fn refuse_unsupported(map: &mut Map<String, Value>) -> Result<(), Error> {
    let neutral = [
        ("n", json!(1)),
        ("best_of", json!(1)),
        ("echo", json!(false)),
        ("logprobs", Value::Null),
        ("suffix", Value::Null),
        ("presence_penalty", json!(0)),
        ("frequency_penalty", json!(0)),
    ];
    for (key, neutral) in neutral {
        let value = map.remove(key).unwrap_or(Value::Null);
        let numerically_equal = value.as_f64().is_some() && value.as_f64() == neutral.as_f64();
        if !value.is_null() && value != neutral && !numerically_equal {
            return Err(Error::BadInput(format!(
                "'{key}' is not supported by ortserve (got {value})"
            )));
        }
    }
    match map.remove("logit_bias") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(bias)) if bias.is_empty() => Ok(()),
        Some(_) => Err(Error::BadInput(
            "'logit_bias' is not supported by ortserve".into(),
        )),
    }
}

struct Names {
    id: String,
    created: u64,
    model: String,
}

impl Names {
    fn object(&self, choice: Value) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("id".into(), self.id.clone().into());
        map.insert("object".into(), "text_completion".into());
        map.insert("created".into(), self.created.into());
        map.insert("model".into(), self.model.clone().into());
        map.insert("choices".into(), Value::Array(vec![choice]));
        map
    }
}

fn choice(text: &str, finished: Option<&Finished>) -> Value {
    json!({
        "text": text,
        "index": 0,
        "logprobs": null,
        "finish_reason": finished.map(|f| f.reason.as_str()),
    })
}

fn usage(finished: &Finished) -> Value {
    json!({
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.new_tokens,
        "total_tokens": finished.prompt_tokens + finished.new_tokens,
    })
}

/// Server-sent `text_completion` chunks, then `data: [DONE]`.
struct Chunks {
    names: Names,
    include_usage: bool,
}

fn event(value: Value) -> String {
    format!("data: {value}\n\n")
}

const DONE: &str = "data: [DONE]\n\n";

impl StreamFormat for Chunks {
    fn piece(&mut self, text: &str) -> Bytes {
        Bytes::from(event(Value::Object(self.names.object(choice(text, None)))))
    }

    fn finish(&mut self, finished: &Finished) -> Option<Bytes> {
        let mut out = event(Value::Object(self.names.object(choice("", Some(finished)))));
        if self.include_usage {
            let mut last = self.names.object(Value::Null);
            last.insert("choices".into(), Value::Array(Vec::new()));
            last.insert("usage".into(), usage(finished));
            out.push_str(&event(Value::Object(last)));
        }
        out.push_str(DONE);
        Some(Bytes::from(out))
    }

    fn error(&mut self, error: &Error) -> Option<Bytes> {
        Some(Bytes::from(event(error_object(error)) + DONE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Completion, String> {
        Completion::parse(&Bytes::copy_from_slice(text.as_bytes())).map_err(|e| e.to_string())
    }

    #[test]
    fn completion_requests_are_checked_field_by_field() {
        let request = parse(r#"{"model": "lm", "prompt": ["Hi"], "max_tokens": 4, "stream": true, "n": 1, "stream_options": {"include_usage": true}}"#).unwrap();
        assert_eq!(
            (request.model.as_str(), request.prompt.as_str()),
            ("lm", "Hi")
        );
        assert!(request.stream && request.include_usage);
        assert_eq!(request.params.max_new_tokens, Some(4));
        assert!(
            parse(r#"{"prompt": "a"}"#)
                .unwrap_err()
                .starts_with("the body has no 'model'")
        );
        assert!(
            parse(r#"{"model": "lm", "prompt": [1, 2]}"#)
                .unwrap_err()
                .starts_with("'prompt' must be a string")
        );
        assert_eq!(
            parse(r#"{"model": "lm", "prompt": "a", "n": 2}"#).unwrap_err(),
            "'n' is not supported by ortserve (got 2)"
        );
        assert!(
            parse(r#"{"model": "lm", "prompt": "a", "echo": true}"#)
                .unwrap_err()
                .starts_with("'echo' is not supported")
        );
        assert!(
            parse(r#"{"model": "lm", "prompt": "a", "beam_width": 2}"#)
                .unwrap_err()
                .contains("unknown field `beam_width`")
        );
    }

    #[test]
    fn errors_have_openais_shape() {
        let body = error_object(&Error::ModelNotFound("lm".into()));
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["message"], "Model not found: lm");
    }
}
