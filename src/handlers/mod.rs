//! Pre- and post-processing kinds: how one request body becomes model input
//! tensors, and how the model's outputs become the answer.
//!
//! * `tensor` (default): JSON arrays in and out, any element type.
//! * `image_classifier`: image bytes in, `{"class","probability"}` out.
//!
//! Handlers are pure functions of bytes and tensors: they never queue, run
//! the model or know which protocol the request came in on.

mod image;
pub mod json;
mod tensor;

use crate::config::{HandlerName, OrtserveOptions};
use crate::store::ExtraFile;
use crate::types::{Error, InferRequest, InferResponse, ModelIo};

pub use image::ImageClassifier;
pub use tensor::TensorHandler;

/// Bodies larger than this are parsed on the blocking pool, so big JSON
/// does not stall the async workers; small ones are cheaper to parse in place.
const INLINE_PARSE_LIMIT: usize = 64 * 1024;

/// Whether the answer keeps the batch axis the request had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyShape {
    Batched,
    /// The request was one instance without a batch axis.
    Single,
}

pub enum Handler {
    Tensor(TensorHandler),
    ImageClassifier(ImageClassifier),
}

impl Handler {
    /// Builds the handler `name` for a model with inputs/outputs `io`.
    pub fn new(
        name: HandlerName,
        options: &OrtserveOptions,
        io: &ModelIo,
        labels: Option<&ExtraFile>,
    ) -> Result<Handler, String> {
        match name {
            HandlerName::Tensor => Ok(Handler::Tensor(TensorHandler::new(
                io,
                options.max_tensor_elements,
            ))),
            HandlerName::ImageClassifier => {
                let labels = match labels {
                    Some(file) => image::parse_labels(&file.origin, &file.text)?,
                    None => Default::default(),
                };
                ImageClassifier::new(io, &options.image_classifier, labels)
                    .map(Handler::ImageClassifier)
            }
        }
    }

    /// Picks the handler: the model's `ortserve.handler`, else the MANIFEST's
    /// handler when it names a built-in one, else `tensor`. A MANIFEST naming
    /// custom Python code is refused.
    pub fn choose(
        configured: Option<HandlerName>,
        manifest: Option<&str>,
    ) -> Result<HandlerName, String> {
        match (configured, manifest) {
            (Some(name), _) => Ok(name),
            (None, None) => Ok(HandlerName::Tensor),
            (None, Some(handler)) => HandlerName::from_torchserve(handler).ok_or_else(|| {
                format!(
                    "the MANIFEST's handler '{handler}' is custom Python code, which ortserve cannot run; \
                     use a built-in handler ({}) by setting ortserve.handler in model-config.yaml",
                    HandlerName::ALL.join(", ")
                )
            }),
        }
    }

    /// True when preprocessing `body` is heavy enough for the blocking pool.
    pub fn is_heavy(&self, body: &[u8]) -> bool {
        match self {
            Handler::Tensor(_) => body.len() > INLINE_PARSE_LIMIT,
            Handler::ImageClassifier(_) => true,
        }
    }

    pub fn preprocess(&self, body: &[u8]) -> Result<(InferRequest, ReplyShape), Error> {
        match self {
            Handler::Tensor(h) => h.preprocess(body),
            Handler::ImageClassifier(h) => h.preprocess(body),
        }
    }

    /// Appends the answer for one request to `out`.
    pub fn postprocess(
        &self,
        response: &InferResponse,
        shape: ReplyShape,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        match self {
            Handler::Tensor(h) => {
                h.postprocess(response, shape, out);
                Ok(())
            }
            Handler::ImageClassifier(h) => h.postprocess(response, out),
        }
    }
}
