//! The default handler: JSON tensors in, JSON tensors out. A single-input
//! model takes a nested array (or TorchServe's `{"data": array}`); any model
//! takes an object keyed by input name.
//! Arrays may include the batch axis (rows = its length) or leave it out for
//! one instance, in which case the answer leaves it out too.

use crate::codec::{
    ReplyShape, fit_to_model, named_inputs, object_members, parse_tensor, write_named_tensors,
};
use crate::types::{Error, InferRequest, InferResponse, ModelIo, Tensor, TensorSpec};

pub struct TensorHandler {
    io: ModelIo,
    max_elements: usize,
}

impl TensorHandler {
    pub fn new(io: &ModelIo, max_elements: usize) -> TensorHandler {
        TensorHandler {
            io: io.clone(),
            max_elements,
        }
    }

    pub fn preprocess(&self, body: &[u8]) -> Result<(InferRequest, ReplyShape), Error> {
        let single_input = self.io.inputs.len() == 1;
        let tensors = match body.iter().find(|b| !b.is_ascii_whitespace()) {
            None => return Err(Error::BadInput(self.usage("the request body is empty"))),
            Some(b'{') => self.parse_object(body)?,
            Some(b) if !starts_json_value(*b) => {
                let what = match image_format(body) {
                    Some(format) => format!(
                        "the body is a {format} image, but this model's handler is tensor \
                         (for images, set ortserve.handler: image_classifier in its model-config.yaml)"
                    ),
                    None => "the body is not JSON".into(),
                };
                return Err(Error::BadInput(self.usage(&what)));
            }
            Some(_) if single_input => vec![self.parse_one(body, &self.io.inputs[0])?],
            Some(_) => {
                return Err(Error::BadInput(
                    self.usage("a bare array only fits a single-input model"),
                ));
            }
        };
        fit_to_model(&self.io, tensors)
    }

    pub fn postprocess(&self, response: &InferResponse, shape: ReplyShape, out: &mut Vec<u8>) {
        let skip_batch = shape == ReplyShape::Single;
        write_named_tensors(out, &self.io.outputs, &response.outputs, skip_batch);
    }

    fn parse_one(&self, json: &[u8], spec: &TensorSpec) -> Result<Tensor, Error> {
        parse_tensor(json, &spec.name, spec.dtype, self.max_elements).map_err(Error::BadInput)
    }

    /// `{"input_name": nested array, ...}`, returned in model input order.
    fn parse_object(&self, body: &[u8]) -> Result<Vec<Tensor>, Error> {
        let fields = object_members(body)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::BadInput(format!("invalid request body: {e}")))?;
        if let [(key, raw)] = fields.as_slice()
            && key == "data"
            && let [spec] = self.io.inputs.as_slice()
            && spec.name != "data"
        {
            // TorchServe's KServe wrapper form, {"data": [...]}: the one input.
            return Ok(vec![self.parse_one(raw, spec)?]);
        }
        let named = fields.iter().map(|(key, raw)| (key.as_ref(), *raw));
        named_inputs(&self.io, named, |raw, spec| self.parse_one(raw, spec))
    }

    fn usage(&self, problem: &str) -> String {
        let inputs: Vec<String> = self
            .io
            .inputs
            .iter()
            .map(|s| format!("'{}' {} {}", s.name, s.dtype, s.shape_text()))
            .collect();
        format!(
            "{problem}; this model takes JSON: a nested array for a single-input model, or an object \
             keyed by input name (inputs: {})",
            inputs.join(", ")
        )
    }
}

/// Whether `byte` can begin a JSON array, number, string or literal (Python's
/// `NaN`/`Infinity` included).
fn starts_json_value(byte: u8) -> bool {
    byte.is_ascii_digit() || b"[-\"tfnNI".contains(&byte)
}

/// The image format a body starts like, by its magic bytes: the mistake of
/// sending an image to a tensor model deserves a message that says so.
fn image_format(body: &[u8]) -> Option<&'static str> {
    const MAGIC: [(&[u8], &str); 5] = [
        (b"\x89PNG", "PNG"),
        (b"\xFF\xD8\xFF", "JPEG"),
        (b"GIF8", "GIF"),
        (b"BM", "BMP"),
        (b"RIFF", "WebP"),
    ];
    MAGIC
        .iter()
        .find(|(magic, _)| body.starts_with(magic))
        .map(|(_, format)| *format)
}
