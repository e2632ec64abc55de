//! A generation as a response body that is sent as it is produced.

use axum::body::{Body, Bytes};

use crate::handlers::text_generation::{Emitted, Finished};
use crate::registry::TextGeneration;
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
