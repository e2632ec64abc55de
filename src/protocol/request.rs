//! The one skeleton every model request runs, whatever its protocol: resolve
//! the model and version, attach the request to that version's metrics,
//! read the body within its limits, let the protocol answer, check the
//! answer's size, and write any error in the protocol's shape.
//!
//! An adapter supplies only its wire format: what it checked before the body
//! (`parts`), an `answer` function from the read request to a [`Reply`], and
//! an error type of its own that implements `IntoResponse`. The model it is
//! handed is an [`AttachedModel`], the only handle that runs a model, so a
//! request cannot reach a model without being counted.

use std::future::{Future, ready};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;

use super::AppState;
use super::body::{BodyMemory, RequestBody};
use crate::registry::AttachedModel;
use crate::types::Error;

/// A model request with its body read: what an adapter's `answer` works on.
pub(super) struct ModelCall {
    pub model: AttachedModel,
    pub body: Bytes,
}

/// A successful answer's body and the headers its wire format needs.
pub(super) struct Reply {
    body: ReplyBody,
    content_type: HeaderValue,
    header: Option<(&'static HeaderName, HeaderValue)>,
}

enum ReplyBody {
    Whole(Vec<u8>),
    /// Sent as it is produced (chunked), ending when the generation ends.
    Streamed(Body),
}

/// Marks a response whose body is still being produced after its headers:
/// its telemetry and its connection's in-flight count end with the body
/// (see `UntilSent`).
#[derive(Clone, Copy)]
pub(super) struct Streamed;

/// The headers every model answer carries in its map: its content type and
/// those `stamp` adds. Its length is not among them on the prediction
/// routes [`App`](super::App) matches (hyper writes it from the body); on
/// a routed answer axum adds it, which a binary answer's map, full at six,
/// grows for (only behind a token gate).
const ANSWER_HEADERS: usize = 1 + super::STAMPED_HEADERS;

impl Reply {
    pub fn json(body: Vec<u8>) -> Reply {
        Reply {
            body: ReplyBody::Whole(body),
            content_type: HeaderValue::from_static("application/json"),
            header: None,
        }
    }

    /// A whole answer of another type.
    pub fn typed(body: Vec<u8>, content_type: &'static str) -> Reply {
        Reply {
            body: ReplyBody::Whole(body),
            content_type: HeaderValue::from_static(content_type),
            header: None,
        }
    }

    /// An answer streamed as it is produced.
    pub fn streamed(body: Body, content_type: &'static str) -> Reply {
        Reply {
            body: ReplyBody::Streamed(body),
            content_type: HeaderValue::from_static(content_type),
            header: None,
        }
    }

    /// A body of another type, with one protocol-specific header.
    pub fn with_header(
        body: Vec<u8>,
        content_type: &'static str,
        header: (&'static HeaderName, HeaderValue),
    ) -> Reply {
        Reply {
            body: ReplyBody::Whole(body),
            content_type: HeaderValue::from_static(content_type),
            header: Some(header),
        }
    }

    /// The size of a whole answer, for `max_response_size`; a streamed one
    /// is bounded by what produces it (a generation's token cap).
    fn whole_len(&self) -> usize {
        match &self.body {
            ReplyBody::Whole(body) => body.len(),
            ReplyBody::Streamed(_) => 0,
        }
    }

    /// The answer, a whole one charged to `memory` until it is sent.
    pub fn into_response(self, memory: &Arc<BodyMemory>) -> Response {
        let mut response = match self.body {
            ReplyBody::Whole(body) => Response::new(memory.charge_answer(body).into()),
            ReplyBody::Streamed(body) => {
                let mut response = Response::new(body);
                response.extensions_mut().insert(Streamed);
                response
            }
        };
        // Room at once for every header the answer will carry (its type,
        // its own, those `stamp` adds): a map that fills up reallocates
        // and rehashes what it holds, about 1,800 instructions a binary v2
        // answer paid. Six fit a map of eight slots, whose entries (624
        // bytes) come from glibc's per-thread cache; a seventh would size
        // it to sixteen (1,248 bytes), past it.
        let room = ANSWER_HEADERS + usize::from(self.header.is_some());
        let headers = response.headers_mut();
        *headers = HeaderMap::with_capacity(room);
        headers.insert(header::CONTENT_TYPE, self.content_type);
        if let Some((name, value)) = self.header {
            headers.insert(name.clone(), value);
        }
        response
    }
}

/// A model route's `{model}` segment and, on the longer routes, its
/// `{version}`: read into two fields, not a map, as every model request
/// reads them.
#[derive(serde::Deserialize)]
pub(super) struct ModelSegments {
    model: String,
    version: Option<String>,
}

impl ModelSegments {
    pub fn new(model: String, version: Option<String>) -> ModelSegments {
        ModelSegments { model, version }
    }

    pub fn target(&self) -> ModelTarget<'_> {
        ModelTarget {
            name: &self.model,
            version: self.version.as_deref(),
        }
    }
}

/// Which model a request names; `version` `None` is the default version.
pub(super) struct ModelTarget<'a> {
    pub name: &'a str,
    pub version: Option<&'a str>,
}

/// Serves one model request. Errors come in this order, whatever the
/// protocol: the model and version, then `parts` (what the adapter checked
/// before the body: parameters, headers), then the body, then `answer`'s.
/// An error answered before the body was read closes the connection.
///
/// A plain function returning the future, not an `async fn`: the model is
/// resolved and the request taken apart before the first await, so the
/// future holds neither the request nor its headers, only the body and
/// what the answer needs. With the adapters' handlers written the same
/// way, the future axum boxes per request stays under glibc's 1,032-byte
/// per-thread cache (792 to 984 bytes; 2,208 to 4,424 when each layer was
/// an `async fn` holding the request it was handed).
pub(super) fn serve_model<P, E, F, Fut>(
    state: &AppState,
    target: ModelTarget<'_>,
    parts: Result<P, Error>,
    request: Request,
    answer: F,
) -> impl Future<Output = Response> + use<P, E, F, Fut>
where
    E: From<Error> + IntoResponse,
    F: FnOnce(ModelCall, P) -> Fut,
    Fut: Future<Output = Result<Reply, E>>,
{
    let (head, body) = request.into_parts();
    let mut body = RequestBody::new(body, &head.headers, &state.bodies);
    let started = state
        .registry
        .resolve(target.name, target.version)
        .map(|model| model.attach())
        .and_then(|model| Ok((model, parts?)));
    let (model, parts) = match started {
        Ok(started) => started,
        Err(error) => {
            return Either::Left(ready(body.close_if_unread(E::from(error).into_response())));
        }
    };
    let limits = state.limits;
    Either::Right(async move {
        let bytes = match body.read(&limits).await {
            Ok(bytes) => bytes,
            Err(error) => return body.close_if_unread(E::from(error).into_response()),
        };
        let call = ModelCall { model, body: bytes };
        let reply = answer(call, parts).await.and_then(|reply| {
            limits.check_response(reply.whole_len())?;
            Ok(reply)
        });
        match reply {
            Ok(reply) => reply.into_response(body.memory()),
            Err(error) => body.close_if_unread(error.into_response()),
        }
    })
}
