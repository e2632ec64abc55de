//! Text generation over HTTP, for `text_generation` models: TorchServe's
//! `/predictions` (whole, or chunked one piece per chunk), the Open
//! Inference Protocol's `generate` and `generate_stream` (server-sent
//! events), and OpenAI's completions API (`openai`).
//!
//! It owns each protocol's generation request and answer shapes and how a
//! [`TextGeneration`] becomes a streamed body. It must not decode or choose
//! tokens (the handler does) nor queue anything (the registry's model does).

pub(super) mod openai;
mod stream;
pub(super) mod v2;

use axum::body::Bytes;
use serde_json::{Map, Value};

use super::request::Reply;
use crate::handlers::text_generation::GenerateParams;
use crate::registry::{AttachedModel, TextGeneration};
use crate::types::Error;
use stream::{StreamFormat, streamed};

/// Takes a protocol's own keys out of a JSON object; what remains must be
/// generation parameters, so an unknown key is a 400 that names it.
fn params(rest: Map<String, Value>) -> Result<GenerateParams, Error> {
    // The path names the field a wrong type was sent for ("top_k: invalid
    // type: ..."), which serde's own message leaves out.
    serde_path_to_error::deserialize(Value::Object(rest))
        .map_err(|e| Error::BadInput(format!("invalid generation parameter {e}")))
}

/// A JSON object body, or the message saying what to send.
fn object(body: &[u8], shape: &str) -> Result<Map<String, Value>, Error> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::BadInput(format!(
            "the body must be a JSON object: {shape}"
        ))),
        Err(e) => Err(Error::BadInput(format!(
            "the body is not valid JSON ({e}); send {shape}"
        ))),
    }
}

/// Removes `key` as a string, naming it if it is something else.
fn take_string(map: &mut Map<String, Value>, key: &str) -> Result<Option<String>, Error> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Error::BadInput(format!(
            "'{key}' must be a string, not {other}"
        ))),
    }
}

fn take_bool(map: &mut Map<String, Value>, key: &str) -> Result<bool, Error> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(b),
        Some(other) => Err(Error::BadInput(format!(
            "'{key}' must be true or false, not {other}"
        ))),
    }
}

/// TorchServe's `/predictions/{model}` for a text generation model. The body
/// is the prompt as plain text, or a JSON object `{"prompt": …}` with
/// generation parameters beside it; `"stream": true` in that object asks for
/// the text chunk by chunk as it is produced, else it comes whole.
pub(super) async fn torchserve(model: &AttachedModel, body: Bytes) -> Result<Reply, Error> {
    let (prompt, params, stream) = torchserve_request(&body)?;
    let generation = model.generate(prompt, params).await?;
    if stream {
        return Ok(Reply::streamed(
            streamed(generation, PlainChunks),
            PLAIN_TEXT,
        ));
    }
    let (text, _) = generation.collect().await?;
    Ok(Reply::typed(text.into_bytes(), PLAIN_TEXT))
}

/// Starts a generation from a TorchServe body (as [`torchserve`] reads it),
/// for the gRPC API, which decides itself whether to stream.
pub(in crate::protocol) async fn start_torchserve(
    model: &AttachedModel,
    body: &[u8],
) -> Result<TextGeneration, Error> {
    let (prompt, params, _) = torchserve_request(body)?;
    model.generate(prompt, params).await
}

const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

fn torchserve_request(body: &[u8]) -> Result<(String, GenerateParams, bool), Error> {
    const SHAPE: &str =
        r#"the prompt as text, or {"prompt": "...", "max_new_tokens": 20, "stream": true}"#;
    if body.first().is_some_and(|b| *b == b'{') {
        let mut map = object(body, SHAPE)?;
        let prompt = take_string(&mut map, "prompt")?.ok_or_else(|| {
            Error::BadInput(format!("the JSON body has no 'prompt'; send {SHAPE}"))
        })?;
        let stream = take_bool(&mut map, "stream")?;
        return Ok((prompt, params(map)?, stream));
    }
    let prompt = std::str::from_utf8(body)
        .map_err(|_| Error::BadInput(format!("the body is not UTF-8 text; send {SHAPE}")))?;
    Ok((prompt.to_string(), GenerateParams::default(), false))
}

/// TorchServe's streamed answer: each piece of text is one chunk.
struct PlainChunks;

impl StreamFormat for PlainChunks {
    fn piece(&mut self, text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    fn finish(&mut self, _: &crate::handlers::text_generation::Finished) -> Option<Bytes> {
        None
    }

    fn error(&mut self, _: &Error) -> Option<Bytes> {
        // The status is sent; an aborted chunked body is how HTTP says the
        // answer is incomplete.
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchserve_bodies_are_text_or_a_prompt_object() {
        let (prompt, params, stream) = torchserve_request(b"Hello").unwrap();
        assert_eq!((prompt.as_str(), stream), ("Hello", false));
        assert_eq!(params.max_new_tokens, None);
        let (prompt, params, stream) =
            torchserve_request(br#"{"prompt": "Hi", "max_new_tokens": 3, "stream": true}"#)
                .unwrap();
        assert_eq!(
            (prompt.as_str(), stream, params.max_new_tokens),
            ("Hi", true, Some(3))
        );
        let error = |body: &[u8]| torchserve_request(body).unwrap_err().to_string();
        assert!(error(br#"{"max_new_tokens": 3}"#).starts_with("the JSON body has no 'prompt'"));
        assert!(error(br#"{"prompt": 3}"#).starts_with("'prompt' must be a string"));
        assert!(
            error(br#"{"prompt": "a", "stream": "yes"}"#)
                .starts_with("'stream' must be true or false")
        );
        assert!(error(br#"{"prompt": "a", "beams": 2}"#).contains("unknown field `beams`"));
        assert!(
            error(br#"{"prompt": "a", "top_k": -1}"#)
                .starts_with("invalid generation parameter top_k: "),
            "a wrong type names its field"
        );
        assert!(error(b"\xff\xfe").starts_with("the body is not UTF-8 text"));
    }
}
