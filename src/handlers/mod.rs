//! Pre- and post-processing kinds: how one request body becomes model input
//! tensors, and how the model's outputs become the answer.
//!
//! * `tensor` (default): JSON arrays in and out, any element type.
//! * `image_classifier`: image bytes in, `{"class","probability"}`, TorchServe's
//!   `{"label": probability}` map or the best class out.
//! * `text_generation`: a prompt in, text out piece by piece, from a decoder
//!   in Optimum's signature; its loop runs on a worker as a `Sequence`.
//!
//! Handlers are pure functions of bytes and tensors: they never queue or
//! know which protocol the request came in on, and only `text_generation`'s
//! loop runs the model, through the steps its worker lends it. They read and
//! write tensors through [`codec`](crate::codec), and own nothing of the
//! tensor wire format themselves.

mod image;
mod tensor;
pub mod text_generation;

use std::sync::Arc;

use crate::codec::{INLINE_PARSE_LIMIT, ReplyShape};
use crate::config::{HandlerName, OrtserveOptions};
use crate::store::SideFiles;
use crate::types::{Error, InferRequest, InferResponse, ModelIo, Tensor};

pub use image::ImageClassifier;
pub use tensor::TensorHandler;
use text_generation::TextGenerator;

/// What a body is: TorchServe's raw body (or multipart part), or one KServe
/// v1 instance (a JSON value: a tensor, or for image models a base64 image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyForm {
    Raw,
    Instance,
}

/// A model's pre/post-processing: its kind, plus JSON tensors for callers
/// that send tensors directly (KServe instances) whatever the kind.
pub struct Handler {
    kind: Kind,
    tensors: TensorHandler,
}

enum Kind {
    Tensor,
    ImageClassifier(ImageClassifier),
    TextGeneration(Arc<TextGenerator>),
}

impl Handler {
    /// Builds the handler `name` for a model with inputs/outputs `io`.
    pub fn new(
        name: HandlerName,
        options: &OrtserveOptions,
        io: &ModelIo,
        files: &SideFiles,
    ) -> Result<Handler, String> {
        let kind = match name {
            HandlerName::Tensor => Kind::Tensor,
            HandlerName::TextGeneration => Kind::TextGeneration(Arc::new(TextGenerator::new(
                io,
                &options.text_generation,
                files,
            )?)),
            HandlerName::ImageClassifier => {
                let labels = match &files.labels {
                    Some(file) => image::parse_labels(&file.origin, &file.text)?,
                    None => Default::default(),
                };
                Kind::ImageClassifier(ImageClassifier::new(io, &options.image_classifier, labels)?)
            }
        };
        Ok(Handler {
            kind,
            tensors: TensorHandler::new(io, options.max_tensor_elements),
        })
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

    /// Whether requests carry payloads (image files) rather than tensors, so a
    /// protocol that sends tensors hands such a model its bytes whole.
    pub fn takes_payloads(&self) -> bool {
        matches!(self.kind, Kind::ImageClassifier(_))
    }

    /// The answer as a tensor, for protocols whose answers are tensors, when
    /// the handler's answer replaces the model's outputs there (the image
    /// classifier's `argmax`); `None` otherwise.
    pub fn answer_tensor(&self, response: &InferResponse) -> Option<Result<Tensor, Error>> {
        match &self.kind {
            Kind::Tensor | Kind::TextGeneration(_) => None,
            Kind::ImageClassifier(h) => h.best_classes(response),
        }
    }

    /// The text generator, for a `text_generation` model.
    pub fn text_generator(&self) -> Option<&Arc<TextGenerator>> {
        match &self.kind {
            Kind::TextGeneration(generator) => Some(generator),
            _ => None,
        }
    }

    /// True when preprocessing `body` is heavy enough for the blocking pool.
    pub fn is_heavy(&self, body: &[u8]) -> bool {
        match self.kind {
            Kind::Tensor | Kind::TextGeneration(_) => body.len() > INLINE_PARSE_LIMIT,
            Kind::ImageClassifier(_) => true,
        }
    }

    /// Turns one request body (or multipart part) into model inputs.
    pub fn preprocess(
        &self,
        body: &[u8],
        form: BodyForm,
    ) -> Result<(InferRequest, ReplyShape), Error> {
        match (&self.kind, form) {
            (Kind::Tensor, _) => self.tensors.preprocess(body),
            (Kind::TextGeneration(_), _) => Err(Error::BadInput(
                "this model generates text: send prompts to /predictions/{model}, \
                 /v2/models/{model}/generate or /openai/v1/completions"
                    .into(),
            )),
            (Kind::ImageClassifier(h), BodyForm::Raw) => h.preprocess(body),
            (Kind::ImageClassifier(h), BodyForm::Instance) => match image::instance_image(body)? {
                Some(image) => h.preprocess(&image),
                None => self.tensors.preprocess(body),
            },
        }
    }

    /// Appends the answer for one request to `out`.
    pub fn postprocess(
        &self,
        response: &InferResponse,
        shape: ReplyShape,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        match &self.kind {
            Kind::Tensor | Kind::TextGeneration(_) => {
                self.tensors.postprocess(response, shape, out);
                Ok(())
            }
            Kind::ImageClassifier(h) => h.postprocess(response, out),
        }
    }
}
