//! Open Inference Protocol bodies ⇄ tensors, with the binary tensor data
//! extension in both directions. Every size is checked against the body and
//! the model before anything of that size is allocated; binary tensors are
//! copied once, straight from the body into their typed buffer.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use crate::codec::{
    ReplyShape, UnreadValue, WriteJson, append_binary, binary_size, check_datatype, check_member,
    decode_binary, fit_to_model, named_inputs, oip_name, once, parse_elements, parse_member,
    parse_once, request_shape, spec_index, visit_members, write_string,
};
use crate::types::{DataType, Error, InferRequest, InferResponse, ModelId, ModelIo, Tensor};

/// A request's JSON part. Read member by member ([`visit_members`]) so
/// that each input's `data` stays a slice of the body until the scanner
/// parses it: the one pass over the numbers.
pub(super) struct RequestHeader<'a> {
    pub id: Option<String>,
    pub parameters: RequestParameters,
    pub inputs: Vec<InputHeader<'a>>,
    outputs: Vec<OutputHeader<'a>>,
}

/// The request's `parameters`: the one ortserve reads itself, and the
/// rest for those who read more of them (explain). Read member by member,
/// so the common request (no parameters, or only `binary_data_output`)
/// builds no map and hashes no key.
#[derive(Default)]
pub(super) struct RequestParameters {
    /// Whether outputs not named in the request are answered as binary data.
    pub binary_data_output: bool,
    pub others: HashMap<String, Value>,
}

impl RequestParameters {
    fn read(json: UnreadValue<'_, '_>) -> Result<Self, String> {
        let mut parameters = RequestParameters::default();
        json.members("'parameters'", |key, value| {
            let bytes = value.bytes()?;
            match (key.as_ref(), bytes) {
                // The literals themselves: a `Value` for them cost more
                // than the rest of the parameters.
                ("binary_data_output", b"true" | b"false") => {
                    parameters.binary_data_output = bytes == b"true"
                }
                // Any other value leaves answers as JSON, if it is JSON.
                ("binary_data_output", _) => {
                    check_member(&key, bytes)?;
                    parameters.binary_data_output = false
                }
                _ => {
                    let value = parse_member(&key, bytes)?;
                    parameters.others.insert(key.into_owned(), value);
                }
            }
            Ok(())
        })?;
        Ok(parameters)
    }
}

pub(super) struct InputHeader<'a> {
    pub name: Cow<'a, str>,
    pub shape: Vec<i64>,
    pub datatype: Cow<'a, str>,
    pub parameters: InputParameters,
    pub data: Option<&'a [u8]>,
}

/// The one parameter of an input that ortserve reads. The others are
/// checked as JSON and skipped, member by member, as the request's own
/// `parameters` are: a binary request builds no map and hashes no key.
#[derive(Default)]
pub(super) struct InputParameters {
    /// Kept as sent, `null` included, so that a bad size is refused by
    /// name rather than read as absent.
    pub binary_data_size: Option<Value>,
}

impl InputParameters {
    fn read(json: UnreadValue<'_, '_>) -> Result<Self, String> {
        let mut size = None;
        json.members("an input's 'parameters'", |key, value| {
            let bytes = value.bytes()?;
            match key.as_ref() {
                "binary_data_size" => {
                    let value = match plain_size(bytes) {
                        Some(size) => Value::from(size),
                        None => parse_member(&key, bytes)?,
                    };
                    once(&mut size, "binary_data_size", value)
                }
                _ => check_member(&key, bytes),
            }
        })?;
        Ok(InputParameters {
            binary_data_size: size,
        })
    }
}

/// A size written as plain digits (`16`), read without `serde_json`'s
/// machinery (about 400 instructions a binary request); `None` leaves
/// anything else, errors included, to it.
fn plain_size(value: &[u8]) -> Option<u64> {
    // Nineteen digits or fewer cannot overflow a u64; a leading zero is
    // not JSON, and serde_json says so.
    let plain = match value {
        [b'0'] => true,
        [b'1'..=b'9', rest @ ..] => rest.len() < 19 && rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    plain.then(|| {
        value
            .iter()
            .fold(0u64, |n, digit| n * 10 + u64::from(digit - b'0'))
    })
}

impl<'a> RequestHeader<'a> {
    fn read(json: &'a [u8]) -> Result<Self, String> {
        let (mut id, mut parameters, mut inputs, mut outputs) = (None, None, None, None);
        visit_members(json, |key, value| match key.as_ref() {
            "id" => parse_once(&mut id, "id", value.bytes()?),
            "parameters" => once(
                &mut parameters,
                "parameters",
                RequestParameters::read(value)?,
            ),
            "inputs" => once(&mut inputs, "inputs", InputHeader::read_all(value)?),
            "outputs" => parse_once(&mut outputs, "outputs", value.bytes()?),
            other => check_member(other, value.bytes()?),
        })?;
        Ok(RequestHeader {
            id: id.flatten(),
            parameters: parameters.unwrap_or_default(),
            inputs: inputs.ok_or("missing field `inputs`")?,
            outputs: outputs.unwrap_or_default(),
        })
    }
}

impl<'a> InputHeader<'a> {
    fn read_all(inputs: UnreadValue<'a, '_>) -> Result<Vec<Self>, String> {
        let mut read = Vec::new();
        inputs.items("'inputs'", |input| {
            read.push(InputHeader::read(input)?);
            Ok(())
        })?;
        Ok(read)
    }

    fn read(input: UnreadValue<'a, '_>) -> Result<Self, String> {
        let string = |field: &str, value: UnreadValue<'a, '_>| {
            value.string().map_err(|e| format!("'{field}': {e}"))
        };
        let (mut name, mut shape, mut datatype, mut parameters, mut data) =
            (None, None, None, None, None);
        input.members("an input", |key, value| match key.as_ref() {
            "name" => once(&mut name, "name", string("name", value)?),
            "datatype" => once(&mut datatype, "datatype", string("datatype", value)?),
            "shape" => once(&mut shape, "shape", read_shape(value.bytes()?)?),
            "parameters" => once(&mut parameters, "parameters", InputParameters::read(value)?),
            "data" => {
                let value = value.bytes()?;
                once(&mut data, "data", (value != b"null").then_some(value))
            }
            other => check_member(other, value.bytes()?),
        })?;
        let missing = |field: &str| format!("an input is missing field `{field}`");
        Ok(InputHeader {
            name: name.ok_or_else(|| missing("name"))?,
            shape: shape.ok_or_else(|| missing("shape"))?,
            datatype: datatype.ok_or_else(|| missing("datatype"))?,
            parameters: parameters.unwrap_or_default(),
            data: data.flatten(),
        })
    }
}

fn read_shape(value: &[u8]) -> Result<Vec<i64>, String> {
    if let Some(shape) = plain_shape(value) {
        return Ok(shape);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(value);
    let shape = shape_or_dimension(&mut deserializer).map_err(|e| e.to_string())?;
    deserializer.end().map_err(|e| e.to_string())?;
    Ok(shape)
}

/// The common shape, a short list of plain integers (`[1,4]`), read
/// without `serde_json`'s machinery (about 500 instructions a request);
/// `None` leaves anything else, errors included, to it.
fn plain_shape(value: &[u8]) -> Option<Vec<i64>> {
    const SHORT: usize = 8;
    let inner = value.strip_prefix(b"[")?.strip_suffix(b"]")?;
    let mut shape = Vec::with_capacity(SHORT);
    for item in inner.split(|&b| b == b',') {
        let item = item.trim_ascii();
        let (negative, digits) = match item.strip_prefix(b"-") {
            Some(digits) => (true, digits),
            None => (false, item),
        };
        let plain = match digits {
            // `-0` is left to `serde_json`, which reads it as a float.
            [b'0'] => !negative,
            [b'1'..=b'9', rest @ ..] => rest.len() < 18 && rest.iter().all(u8::is_ascii_digit),
            _ => false,
        };
        if !plain || shape.len() == SHORT {
            return None;
        }
        // Eighteen digits or fewer cannot overflow an i64.
        let magnitude = digits
            .iter()
            .fold(0i64, |n, digit| n * 10 + i64::from(digit - b'0'));
        shape.push(if negative { -magnitude } else { magnitude });
    }
    Some(shape)
}

/// A shape, or one bare dimension as TorchServe's samples send it
/// (`"shape": -1`). Read by a visitor of its own: serde's untagged enums
/// buffer the value and try each variant, five allocations a request.
fn shape_or_dimension<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    const NOT_A_SHAPE: &str = "an input's 'shape' must be a list of whole numbers";
    struct Shape;
    impl<'de> serde::de::Visitor<'de> for Shape {
        type Value = Vec<i64>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(NOT_A_SHAPE)
        }
        fn visit_i64<E: serde::de::Error>(self, dimension: i64) -> Result<Vec<i64>, E> {
            Ok(vec![dimension])
        }
        fn visit_u64<E: serde::de::Error>(self, dimension: u64) -> Result<Vec<i64>, E> {
            i64::try_from(dimension)
                .map(|d| vec![d])
                .map_err(|_| E::custom(NOT_A_SHAPE))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<i64>, A::Error> {
            let mut shape = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(8));
            while let Some(dimension) = seq.next_element()? {
                shape.push(dimension);
            }
            Ok(shape)
        }
    }
    d.deserialize_any(Shape)
        .map_err(|_| serde::de::Error::custom(NOT_A_SHAPE))
}

#[derive(Deserialize)]
struct OutputHeader<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default)]
    parameters: OutputParameters,
}

/// The one parameter of a requested output that ortserve reads; a value
/// other than `true` or `false` leaves the request's default, as before.
#[derive(Default, Deserialize)]
#[serde(expecting = "an object of parameters")]
struct OutputParameters {
    binary_data: Option<Value>,
}

/// One output to return, and whether as binary data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputChoice {
    pub index: usize,
    pub binary: bool,
}

/// A decoded inference request.
pub struct Decoded {
    pub id: Option<String>,
    /// Whether outputs not named in the request are answered as binary data.
    pub binary_output: bool,
    /// The request's other parameters, for those who read more of them
    /// (explain).
    pub parameters: HashMap<String, Value>,
    pub request: InferRequest,
    pub shape: ReplyShape,
    pub outputs: Vec<OutputChoice>,
}

/// Splits a body into its JSON header, parsed, and the binary data after it.
pub(super) fn decode_header(
    body: &[u8],
    header_length: Option<usize>,
) -> Result<(RequestHeader<'_>, &[u8]), Error> {
    let bad = |message: String| Error::BadInput(message);
    let (json, binary) = match header_length {
        Some(n) if n > body.len() => {
            return Err(bad(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            )));
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    super::super::body::require_object(json, "invalid inference request")?;
    let header =
        RequestHeader::read(json).map_err(|e| bad(format!("invalid inference request: {e}")))?;
    Ok((header, binary))
}

/// Decodes a request body. `header_length` is `Inference-Header-Content-Length`:
/// the JSON part's length when binary tensors follow it.
pub fn decode(
    io: &ModelIo,
    body: &[u8],
    header_length: Option<usize>,
    max_elements: usize,
) -> Result<Decoded, Error> {
    let bad = |message: String| Error::BadInput(message);
    let (header, mut binary) = decode_header(body, header_length)?;
    let named = header
        .inputs
        .iter()
        .map(|input| (input.name.as_ref(), input));
    let tensors = named_inputs(io, named, |input, spec| {
        decode_input(input, spec.dtype, &mut binary, max_elements)
    })?;
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes of binary data follow the JSON but no input claims them (binary_data_size)",
            binary.len()
        )));
    }
    let (request, shape) = fit_to_model(io, tensors)?;
    let binary_output = header.parameters.binary_data_output;
    let outputs = choose_outputs(io, &header.outputs, binary_output)?;
    Ok(Decoded {
        id: header.id,
        binary_output,
        parameters: header.parameters.others,
        request,
        shape,
        outputs,
    })
}

fn decode_input(
    input: &InputHeader<'_>,
    expected: DataType,
    binary: &mut &[u8],
    max_elements: usize,
) -> Result<Tensor, Error> {
    let bad = |message: String| Error::BadInput(format!("input '{}': {message}", input.name));
    check_datatype(&input.datatype, expected).map_err(bad)?;
    let (shape, count) = request_shape(&input.shape, max_elements).map_err(bad)?;
    let data = match (&input.parameters.binary_data_size, input.data) {
        (Some(_), Some(_)) => {
            return Err(bad("has both 'data' and binary_data_size; send one".into()));
        }
        (Some(size), None) => {
            let size = size
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| {
                    bad(format!(
                        "binary_data_size must be a whole number of bytes, got {size}"
                    ))
                })?;
            if size > binary.len() {
                return Err(bad(format!(
                    "binary_data_size is {size} but only {} bytes of binary data remain",
                    binary.len()
                )));
            }
            let (bytes, rest) = binary.split_at(size);
            *binary = rest;
            decode_binary(bytes, expected, count).map_err(bad)?
        }
        (None, Some(raw)) => {
            let data = parse_elements(raw, &input.name, expected, max_elements, count)
                .map_err(Error::BadInput)?;
            if data.len() != count {
                return Err(bad(format!(
                    "shape {shape:?} has {count} elements but 'data' has {}",
                    data.len()
                )));
            }
            data
        }
        (None, None) => {
            return Err(bad(
                "'data' is missing (or binary_data_size for binary data)".into(),
            ));
        }
    };
    Ok(Tensor::new(shape, data))
}

fn choose_outputs(
    io: &ModelIo,
    requested: &[OutputHeader<'_>],
    binary_default: bool,
) -> Result<Vec<OutputChoice>, Error> {
    if requested.is_empty() {
        return Ok((0..io.outputs.len())
            .map(|index| OutputChoice {
                index,
                binary: binary_default,
            })
            .collect());
    }
    requested
        .iter()
        .map(|output| {
            let index = spec_index(&io.outputs, &output.name, "output")?;
            let binary = output
                .parameters
                .binary_data
                .as_ref()
                .and_then(Value::as_bool)
                .unwrap_or(binary_default);
            Ok(OutputChoice { index, binary })
        })
        .collect()
}

/// An encoded response in one buffer: the JSON part, then the binary
/// tensors (maybe none).
pub struct Encoded {
    pub body: Vec<u8>,
    /// Where the JSON part ends (`Inference-Header-Content-Length`).
    pub json_length: usize,
}

impl Encoded {
    /// Whether binary tensor data follows the JSON part.
    pub fn has_binary(&self) -> bool {
        self.body.len() > self.json_length
    }
}

/// One tensor of a response, under the name it is answered with.
pub struct NamedOutput<'a> {
    pub name: &'a str,
    pub tensor: &'a Tensor,
    pub binary: bool,
}

/// The outputs `choices` picks from a model's response.
pub fn chosen_outputs<'a>(
    io: &'a ModelIo,
    response: &'a InferResponse,
    choices: &[OutputChoice],
) -> Vec<NamedOutput<'a>> {
    choices
        .iter()
        .map(|c| NamedOutput {
            name: &io.outputs[c.index].name,
            tensor: &response.outputs[c.index],
            binary: c.binary,
        })
        .collect()
}

/// Encodes a response into one buffer, sized up front for the JSON header
/// and every binary tensor, so that the tensors are copied once, straight
/// into the bytes that go on the wire.
pub fn encode(
    model: &ModelId,
    id: Option<&str>,
    outputs: &[NamedOutput<'_>],
    shape: ReplyShape,
) -> Encoded {
    let binary_length: usize = outputs
        .iter()
        .filter(|o| o.binary)
        .map(|o| binary_size(&o.tensor.data))
        .sum();
    let mut body = Vec::with_capacity(header_estimate(outputs) + binary_length);
    write_header(&mut body, model, id, outputs, shape);
    let json_length = body.len();
    // A no-op unless JSON `data` outgrew the estimate.
    body.reserve_exact(binary_length);
    for output in outputs.iter().filter(|o| o.binary) {
        append_binary(&mut body, &output.tensor.data);
    }
    Encoded { body, json_length }
}

/// Bytes enough for the JSON part when every output is binary: JSON `data`
/// is costly to write anyway, a regrowth more is noise there.
fn header_estimate(outputs: &[NamedOutput<'_>]) -> usize {
    let per_output = |o: &NamedOutput<'_>| 96 + o.name.len() + 21 * o.tensor.shape.len();
    256 + outputs.iter().map(per_output).sum::<usize>()
}

fn write_header(
    json: &mut Vec<u8>,
    model: &ModelId,
    id: Option<&str>,
    outputs: &[NamedOutput<'_>],
    shape: ReplyShape,
) {
    json.extend_from_slice(b"{\"model_name\":");
    write_string(json, &model.name);
    json.extend_from_slice(b",\"model_version\":");
    write_string(json, &model.version);
    if let Some(id) = id {
        json.extend_from_slice(b",\"id\":");
        write_string(json, id);
    }
    json.extend_from_slice(b",\"outputs\":[");
    for (i, output) in outputs.iter().enumerate() {
        if i > 0 {
            json.push(b',');
        }
        write_output_header(json, output, shape);
    }
    json.extend_from_slice(b"]}");
}

/// One output's JSON: its data inline, or the size of its binary data.
fn write_output_header(json: &mut Vec<u8>, output: &NamedOutput<'_>, shape: ReplyShape) {
    let tensor = output.tensor;
    let dims = if shape == ReplyShape::Single && tensor.shape.first() == Some(&1) {
        &tensor.shape[1..]
    } else {
        &tensor.shape[..]
    };
    json.extend_from_slice(b"{\"name\":");
    write_string(json, output.name);
    json.extend_from_slice(b",\"datatype\":\"");
    json.extend_from_slice(oip_name(tensor.dtype()).as_bytes());
    json.extend_from_slice(b"\",\"shape\":");
    write_dims(json, dims);
    if output.binary {
        json.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
        json.extend_from_slice(
            itoa::Buffer::new()
                .format(binary_size(&tensor.data))
                .as_bytes(),
        );
        json.push(b'}');
    } else {
        json.extend_from_slice(b",\"data\":");
        crate::with_tensor_data!(&tensor.data, v => write_flat(json, v));
    }
    json.push(b'}');
}

/// A flat JSON array, written straight from the tensor's buffer.
fn write_flat<T: WriteJson>(json: &mut Vec<u8>, values: &[T]) {
    json.push(b'[');
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            json.push(b',');
        }
        value.write_json(json);
    }
    json.push(b']');
}

fn write_dims(json: &mut Vec<u8>, dims: &[usize]) {
    json.push(b'[');
    for (i, dim) in dims.iter().enumerate() {
        if i > 0 {
            json.push(b',');
        }
        json.extend_from_slice(itoa::Buffer::new().format(*dim).as_bytes());
    }
    json.push(b']');
}

#[cfg(test)]
mod tests;

/// Generated request bodies: a decoded request or a 4xx, never a panic,
/// whatever the JSON part, the binary part or the header length say.
#[cfg(test)]
mod properties;
