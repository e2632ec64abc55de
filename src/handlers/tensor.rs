//! The default handler: JSON tensors in, JSON tensors out. A single-input
//! model takes a nested array (or TorchServe's `{"data": array}`); any model
//! takes an object keyed by input name.
//! Arrays may include the batch axis (rows = its length) or leave it out for
//! one instance, in which case the answer leaves it out too.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::ReplyShape;
use super::json::{parse_tensor, write_named_tensors};
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
                return Err(Error::BadInput(self.usage("the body is not JSON")));
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
        let fields = serde_json::from_slice::<ObjectFields<'_>>(body)
            .map_err(|e| Error::BadInput(format!("invalid request body: {e}")))?
            .0;
        let specs = &self.io.inputs;
        if let [(key, raw)] = fields.as_slice()
            && key == "data"
            && let [spec] = specs.as_slice()
            && spec.name != "data"
        {
            // TorchServe's KServe wrapper form, {"data": [...]}: the one input.
            return Ok(vec![self.parse_one(raw.get().as_bytes(), spec)?]);
        }
        let mut found: Vec<Option<Tensor>> = vec![None; specs.len()];
        for (key, raw) in fields {
            let Some(index) = specs.iter().position(|s| s.name == key) else {
                let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                return Err(Error::BadInput(format!(
                    "unknown input '{key}'; the model's inputs are: {}",
                    names.join(", ")
                )));
            };
            found[index] = Some(self.parse_one(raw.get().as_bytes(), &specs[index])?);
        }
        specs
            .iter()
            .zip(found)
            .map(|(spec, tensor)| {
                tensor.ok_or_else(|| Error::BadInput(format!("input '{}' is missing", spec.name)))
            })
            .collect()
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

/// Checks `tensors` (one per model input, in order) against the declared
/// shapes, and adds the batch axis to a single instance sent without it.
pub fn fit_to_model(
    io: &ModelIo,
    tensors: Vec<Tensor>,
) -> Result<(InferRequest, ReplyShape), Error> {
    let batchable = io.has_batch_axis();
    let mut reply = None;
    let mut inputs = Vec::with_capacity(tensors.len());
    for (spec, mut tensor) in io.inputs.iter().zip(tensors) {
        let this = if tensor.shape.len() == spec.shape.len() {
            ReplyShape::Batched
        } else if tensor.shape.len() + 1 == spec.shape.len() && (batchable || spec.shape[0] == 1) {
            tensor.shape.insert(0, 1);
            ReplyShape::Single
        } else {
            return Err(shape_error(spec, &tensor, None));
        };
        if *reply.get_or_insert(this) != this {
            return Err(Error::BadInput(
                "some inputs include the batch axis and some do not; send all with it or all without it".into(),
            ));
        }
        if let Some(axis) = spec
            .shape
            .iter()
            .zip(&tensor.shape)
            .position(|(&want, &got)| want >= 0 && want as usize != got)
        {
            return Err(shape_error(spec, &tensor, Some(axis)));
        }
        inputs.push(tensor);
    }
    if batchable && inputs.iter().any(|t| t.rows() != inputs[0].rows()) {
        let rows: Vec<String> = io
            .inputs
            .iter()
            .zip(&inputs)
            .map(|(s, t)| format!("{}: {}", s.name, t.rows()))
            .collect();
        return Err(Error::BadInput(format!(
            "all inputs must have the same number of rows along axis 0 (got {})",
            rows.join(", ")
        )));
    }
    Ok((
        InferRequest { inputs },
        reply.unwrap_or(ReplyShape::Batched),
    ))
}

fn shape_error(spec: &TensorSpec, tensor: &Tensor, axis: Option<usize>) -> Error {
    let detail = match axis {
        Some(axis) => format!("axis {axis} must be {}", spec.shape[axis]),
        None => format!(
            "rank {} (or {} without the batch axis)",
            spec.shape.len(),
            spec.shape.len().saturating_sub(1)
        ),
    };
    Error::BadInput(format!(
        "input '{}' expects shape {} (-1 = any size) but got shape {:?}: {detail}",
        spec.name,
        spec.shape_text(),
        tensor.shape
    ))
}

/// Whether `byte` can begin a JSON array, number, string or literal (Python's
/// `NaN`/`Infinity` included).
fn starts_json_value(byte: u8) -> bool {
    byte.is_ascii_digit() || b"[-\"tfnNI".contains(&byte)
}

/// A JSON object's fields in order, values left unparsed.
struct ObjectFields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for ObjectFields<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = ObjectFields<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object keyed by input name")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    fields.push(entry);
                }
                Ok(ObjectFields(fields))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}
