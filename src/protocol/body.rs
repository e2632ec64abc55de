//! Request bodies and JSON responses shared by every protocol: reading a body
//! within `max_request_size` without buffering past it, and draining what a
//! client is still sending before an error goes out.

use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use crate::telemetry::Rejection;
use crate::types::Error;

/// How much of an unread body is read and thrown away before an error is
/// sent: a client still uploading then reads the answer instead of a reset
/// connection. Beyond this, the connection is simply closed.
const DISCARD_LIMIT: usize = 8 * 1024 * 1024;
/// How long a request body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// A request body not yet read.
pub struct RequestBody {
    stream: BodyDataStream,
    seen: usize,
}

impl RequestBody {
    pub fn new(body: Body) -> RequestBody {
        RequestBody {
            stream: body.into_data_stream(),
            seen: 0,
        }
    }

    /// Reads the whole body, refusing more than `limit` bytes; nothing past
    /// the limit is ever buffered, and a body that trickles in is cut off.
    pub async fn read(&mut self, headers: &HeaderMap, limit: usize) -> Result<Bytes, Error> {
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
            while let Some(chunk) = self.stream.next().await {
                let chunk = chunk.map_err(|e| {
                    Error::BadInput(format!("could not read the request body: {e}"))
                })?;
                self.seen += chunk.len();
                if self.seen > limit {
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

    /// Reads and drops up to [`DISCARD_LIMIT`] more bytes, for a bounded time,
    /// so that an error answer reaches a client that is still sending.
    pub async fn drain(&mut self) {
        let drain = async {
            while self.seen < DISCARD_LIMIT {
                match self.stream.next().await {
                    Some(Ok(chunk)) => self.seen += chunk.len(),
                    _ => return,
                }
            }
        };
        let _ = tokio::time::timeout(BODY_TIMEOUT, drain).await;
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

/// Adds the `Retry-After` header for errors that carry one, and tells the
/// request's telemetry which rejection (if any) this answer is.
pub fn annotate_error(mut response: Response, error: &Error) -> Response {
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

pub fn status_of(error: &Error) -> StatusCode {
    StatusCode::from_u16(error.status()).expect("error statuses are valid")
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
