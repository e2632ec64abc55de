//! A generation as a response body that is sent as it is produced, and the
//! body wrapper that finishes a streamed request's telemetry when its last
//! byte goes out.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::handlers::text_generation::{Emitted, Finished};
use crate::registry::TextGeneration;
use crate::telemetry::ObservedRequest;
use crate::types::Error;

/// How a protocol writes a generation's events.
pub(super) trait StreamFormat: Send + 'static {
    fn piece(&mut self, text: &str) -> Bytes;
    /// What follows the last piece, if anything.
    fn finish(&mut self, finished: &Finished) -> Option<Bytes>;
    /// An error after the headers went out: an event saying so, or `None`
    /// to break off the body (the client sees an incomplete answer).
    fn error(&mut self, error: &Error) -> Option<Bytes>;
}

/// The body that sends `generation`'s events as `format` writes them.
/// Dropping it (the client left) drops the generation, which stops it.
pub(super) fn streamed(generation: TextGeneration, format: impl StreamFormat) -> Body {
    let events = futures_util::stream::unfold(Some((generation, format)), |state| async move {
        let (mut generation, mut format) = state?;
        loop {
            let bytes = match generation.next().await? {
                Ok(Emitted::Text(piece)) => format.piece(&piece),
                Ok(Emitted::Finished(finished)) => match format.finish(&finished) {
                    Some(bytes) => bytes,
                    None => continue,
                },
                Err(error) => {
                    tracing::warn!(%error, "generation failed after its answer began");
                    return Some(match format.error(&error) {
                        Some(bytes) => (Ok(bytes), None),
                        None => (Err(error), None),
                    });
                }
            };
            return Some((Ok::<_, Error>(bytes), Some((generation, format))));
        }
    });
    Body::from_stream(events)
}

/// A streamed response body that finishes its request's telemetry (metrics,
/// access log) at its end; dropped before that, the request counts as
/// abandoned by its client.
pub(in crate::protocol) struct ObservedBody {
    inner: Body,
    observed: Option<ObservedRequest>,
    status: u16,
}

impl ObservedBody {
    pub fn new(inner: Body, observed: ObservedRequest, status: u16) -> ObservedBody {
        ObservedBody {
            inner,
            observed: Some(observed),
            status,
        }
    }
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None))
            && let Some(observed) = self.observed.take()
        {
            observed.finish(self.status, None);
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
