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
    /// Whether several events may share one frame (a write) without being
    /// read as one: true for server-sent events, false for chunks that are
    /// each one piece.
    fn merges_events(&self) -> bool;
}

/// The body that sends `generation`'s events as `format` writes them.
/// Dropping it (the client left) drops the generation, which stops it.
pub(super) fn streamed(generation: TextGeneration, format: impl StreamFormat) -> Body {
    let frames = futures_util::stream::unfold(Some((generation, format)), |state| async move {
        let (mut generation, mut format) = state?;
        let frame = next_frame(&mut generation, &mut format).await?;
        Some((frame, Some((generation, format))))
    });
    Body::from_stream(frames)
}

/// The next frame to send: one event, or with a format whose events stand
/// apart in the byte stream (server-sent events) every event ready now. A
/// model that outpaces the connection then costs one write for several
/// pieces instead of one each. `None` at the end.
async fn next_frame(
    generation: &mut TextGeneration,
    format: &mut impl StreamFormat,
) -> Option<Result<Bytes, Error>> {
    let mut frame = Vec::new();
    let mut event = generation.next().await;
    while let Some(next) = event {
        match next {
            Ok(Emitted::Text(piece)) => frame.extend_from_slice(&format.piece(&piece)),
            Ok(Emitted::Finished(finished)) => {
                frame.extend_from_slice(&format.finish(&finished).unwrap_or_default());
            }
            Err(error) => {
                tracing::warn!(%error, "generation failed after its answer began");
                match format.error(&error) {
                    // The generation has ended: the next call finds nothing.
                    Some(bytes) => frame.extend_from_slice(&bytes),
                    None => return Some(Err(error)),
                }
            }
        }
        event = match (frame.is_empty(), format.merges_events()) {
            (true, _) => generation.next().await,
            (false, true) => generation.try_next(),
            (false, false) => None,
        };
    }
    (!frame.is_empty()).then(|| Ok(Bytes::from(frame)))
}
