//! Request bodies and JSON responses shared by every protocol: reading a body
//! within `max_request_size` without buffering past it and within the body
//! timeout, the memory all bodies and unsent answers together may hold
//! (`max_request_memory`, [`BodyMemory`]), closing the connection after an
//! error that left a body unread, and holding something (telemetry, the
//! connection's in-flight count) until a streamed answer's last byte is
//! sent.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::body::{Body, BodyDataStream, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{FutureExt, StreamExt};
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::BodyLimits;
use crate::telemetry::Rejection;
use crate::types::Error;

/// The memory that request bodies and unsent answers hold together,
/// across every listener, bounded by `max_request_memory`: a body is
/// charged as its bytes arrive (its declared length at once), and the
/// charge is given back when the request is done with it. A body that
/// would take the total past the bound is refused (503) rather than read,
/// so many slow or stalled uploads cannot add up to more memory than the
/// bound, each within `max_request_size`. An answer is charged from when
/// it is made until its bytes are freed, once written to its client: it
/// is never refused (the work is done), but while answers that clients do
/// not read fill the bound, new bodies are refused, and with them the
/// requests that would make more answers.
pub struct BodyMemory {
    /// Bodies' and answers' bytes.
    held: AtomicUsize,
    /// Answers' bytes, a part of `held`.
    answers: AtomicUsize,
    limit: usize,
}

impl BodyMemory {
    pub fn new(limit: usize) -> Arc<BodyMemory> {
        Arc::new(BodyMemory {
            held: AtomicUsize::new(0),
            answers: AtomicUsize::new(0),
            limit,
        })
    }

    /// `answer`'s bytes, charged until the last of them is freed (pieces
    /// of it included): written to the client, or dropped with its
    /// connection.
    pub fn charge_answer<T>(self: &Arc<BodyMemory>, answer: T) -> Bytes
    where
        T: AsRef<[u8]> + Send + 'static,
    {
        let bytes = answer.as_ref().len();
        self.held.fetch_add(bytes, Ordering::AcqRel);
        self.answers.fetch_add(bytes, Ordering::AcqRel);
        Bytes::from_owner(ChargedAnswer {
            answer,
            memory: self.clone(),
            bytes,
        })
    }

    /// The bytes of answers charged now, a part of [`held`](Self::held).
    pub fn answers(&self) -> usize {
        self.answers.load(Ordering::Acquire)
    }

    /// A charge of nothing yet, for one request's body.
    pub fn charge(self: &Arc<BodyMemory>) -> BodyCharge {
        BodyCharge {
            memory: self.clone(),
            bytes: 0,
        }
    }

    /// The bytes charged now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// The bytes of request bodies charged now: what is held beside the
    /// answers.
    pub fn bodies(&self) -> usize {
        self.held().saturating_sub(self.answers())
    }

    /// The most that may be charged (`max_request_memory`).
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// One body's part of [`BodyMemory`], given back when dropped.
pub struct BodyCharge {
    memory: Arc<BodyMemory>,
    bytes: usize,
}

impl BodyCharge {
    /// Grows the charge to `total` bytes, or refuses (and stays as it
    /// was) when bodies would then hold more than `max_request_memory`.
    pub fn grow_to(&mut self, total: usize) -> Result<(), Error> {
        let more = total.saturating_sub(self.bytes);
        if more == 0 {
            return Ok(());
        }
        let limit = self.memory.limit;
        self.memory
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(more).filter(|&after| after <= limit)
            })
            .map_err(|_| Error::MemoryFull { limit })?;
        self.bytes = total;
        Ok(())
    }

    /// Shrinks the charge to `total` bytes, giving back the rest.
    pub fn shrink_to(&mut self, total: usize) {
        let less = self.bytes.saturating_sub(total);
        if less > 0 {
            self.memory.held.fetch_sub(less, Ordering::AcqRel);
            self.bytes = total;
        }
    }

    /// The bytes charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for BodyCharge {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

/// An answer's bytes and their charge, given back when they are freed.
struct ChargedAnswer<T> {
    answer: T,
    memory: Arc<BodyMemory>,
    bytes: usize,
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for ChargedAnswer<T> {
    fn as_ref(&self) -> &[u8] {
        self.answer.as_ref()
    }
}

impl<T> Drop for ChargedAnswer<T> {
    fn drop(&mut self) {
        self.memory.answers.fetch_sub(self.bytes, Ordering::AcqRel);
        self.memory.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A request body not yet read. What it read stays charged to the
/// process's [`BodyMemory`] until it is dropped, which the model routes do
/// once the answer is made.
pub struct RequestBody {
    stream: BodyDataStream,
    /// The request's `Content-Length`, read when the headers are at hand.
    declared: Option<u64>,
    seen: usize,
    finished: bool,
    charge: BodyCharge,
}

impl RequestBody {
    pub fn new(body: Body, headers: &HeaderMap, memory: &Arc<BodyMemory>) -> RequestBody {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        RequestBody {
            stream: body.into_data_stream(),
            declared,
            seen: 0,
            finished: false,
            charge: memory.charge(),
        }
    }

    /// Reads the whole body, refusing more than `max_request_size` bytes: a
    /// declared `Content-Length` over it is refused before a byte is read
    /// (so no `100 Continue` goes out), nothing past it is ever buffered, and
    /// a body that trickles in is cut off at the body timeout. A body that
    /// does not fit in what `max_request_memory` has left is refused too,
    /// a declared one before a byte is read.
    pub async fn read(&mut self, limits: &BodyLimits) -> Result<Bytes, Error> {
        let limit = limits.max_request_size;
        let too_large = |size: String| {
            Error::TooLarge(format!(
                "the request body is {size} bytes, over max_request_size={limit}; raise max_request_size in config.properties"
            ))
        };
        if let Some(length) = self.declared {
            if length > limit as u64 {
                return Err(too_large(length.to_string()));
            }
            self.charge.grow_to(length as usize)?;
        }
        let read = async {
            let mut chunks = Chunks::None;
            while let Some(chunk) = self.stream.next().await {
                let chunk = chunk.map_err(|e| {
                    Error::BadInput(format!("could not read the request body: {e}"))
                })?;
                self.seen += chunk.len();
                if self.seen > limit {
                    return Err(too_large(format!("at least {}", self.seen)));
                }
                self.charge.grow_to(self.seen)?;
                chunks.push(chunk);
            }
            self.finished = true;
            Ok(chunks.into_bytes())
        };
        tokio::pin!(read);
        // A body that came with its headers (most do) is read at once, with
        // no timer made and dropped for it.
        if let Some(read) = read.as_mut().now_or_never() {
            return read;
        }
        tokio::time::timeout(limits.body_timeout, read)
            .await
            .unwrap_or(Err(Error::BodyTimeout {
                seconds: limits.body_timeout.as_secs(),
            }))
    }

    /// The memory this body is charged to, which its answer is charged to
    /// as well.
    pub fn memory(&self) -> &Arc<BodyMemory> {
        &self.charge.memory
    }

    /// Marks an error answer to close the connection when the body was not
    /// read to its end: the client may still be sending it, and the next
    /// request could not be told apart from the rest of this one.
    pub fn close_if_unread(&self, response: Response) -> Response {
        match self.finished {
            true => response,
            false => close_connection(response),
        }
    }
}

/// A body's chunks as they arrive. Most bodies come in one, kept as it is
/// rather than in a list of one; more are joined once the last is in.
enum Chunks {
    None,
    One(Bytes),
    Many(Vec<Bytes>),
}

impl Chunks {
    fn push(&mut self, chunk: Bytes) {
        *self = match std::mem::replace(self, Chunks::None) {
            Chunks::None => Chunks::One(chunk),
            Chunks::One(first) => Chunks::Many(vec![first, chunk]),
            Chunks::Many(mut chunks) => {
                chunks.push(chunk);
                Chunks::Many(chunks)
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Chunks::None => Bytes::new(),
            Chunks::One(only) => only,
            Chunks::Many(chunks) => chunks.concat().into(),
        }
    }
}

/// Marks a response to close the connection after it is sent.
pub fn close_connection(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Refuses a body that is not a JSON object: serde would otherwise read a
/// request struct from an array, by position.
pub fn require_object(json: &[u8], context: &str) -> Result<(), Error> {
    match json.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err(Error::BadInput(format!(
            "{context}: the body must be a JSON object ({{...}})"
        ))),
    }
}

/// A response with `Content-Type: application/json`.
pub fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut response = (status, body.into()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An error answer: its status, a protocol's JSON body for it, the
/// `Retry-After` header where the error carries one, and the rejection (if
/// any) for the request's telemetry.
pub fn error_reply(error: &Error, body: String) -> Response {
    let status = StatusCode::from_u16(error.status()).expect("error statuses are valid");
    let mut response = json_response(status, body);
    if let Some(seconds) = error.retry_after_secs() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Some(rejection) = Rejection::of(error) {
        response.extensions_mut().insert(rejection);
    }
    response
}

/// Appends answers as one JSON array, in order; the first error wins.
pub fn push_json_array(
    out: &mut Vec<u8>,
    answers: Vec<Result<Vec<u8>, Error>>,
) -> Result<(), Error> {
    out.push(b'[');
    for (i, answer) in answers.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&answer?);
    }
    out.push(b']');
    Ok(())
}

/// A response body that runs `at_end` once its last frame is sent; dropped
/// before that (the client left, the connection broke), `at_end` is dropped
/// unrun. For a streamed answer, whose handler returned with its headers.
pub struct UntilSent<F: FnOnce() + Send + Unpin + 'static> {
    inner: Body,
    at_end: Option<F>,
}

impl<F: FnOnce() + Send + Unpin + 'static> UntilSent<F> {
    pub fn wrap(inner: Body, at_end: F) -> Body {
        Body::new(UntilSent {
            inner,
            at_end: Some(at_end),
        })
    }
}

impl<F: FnOnce() + Send + Unpin + 'static> HttpBody for UntilSent<F> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None))
            && let Some(at_end) = self.at_end.take()
        {
            at_end();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_refused_past_the_bound_and_given_back_when_dropped() {
        let memory = BodyMemory::new(1_000);
        let mut first = memory.charge();
        let mut second = memory.charge();
        first.grow_to(600).unwrap();
        first.grow_to(400).unwrap();
        assert_eq!((first.bytes(), memory.held()), (600, 600));
        assert_eq!(second.grow_to(401), Err(Error::MemoryFull { limit: 1_000 }));
        assert_eq!((second.bytes(), memory.held()), (0, 600));
        second.grow_to(400).unwrap();
        assert_eq!(memory.held(), 1_000);
        first.shrink_to(100);
        assert_eq!((first.bytes(), memory.held()), (100, 500));
        drop(first);
        assert_eq!(memory.held(), 400);
        drop(second);
        assert_eq!(memory.held(), 0);
    }
}
