//! Open Inference Protocol bodies ⇄ tensors, with the binary tensor data
//! extension in both directions. Every size is checked against the body and
//! the model before anything of that size is allocated; binary tensors are
//! copied once, straight from the body into their typed buffer.

use std::collections::HashMap;

use half::{bf16, f16};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::codec::{
    ReplyShape, WriteJson, fit_to_model, named_inputs, parse_tensor, spec_index, write_string,
};
use crate::types::{
    DataType, Error, InferRequest, InferResponse, ModelId, ModelIo, Tensor, TensorData,
};

#[cfg(target_endian = "big")]
compile_error!(
    "the binary tensor extension is little-endian; ortserve copies tensors as they are in memory"
);

/// The OIP name of an element type.
pub fn oip_name(dtype: DataType) -> &'static str {
    match dtype {
        DataType::Bool => "BOOL",
        DataType::U8 => "UINT8",
        DataType::U16 => "UINT16",
        DataType::U32 => "UINT32",
        DataType::U64 => "UINT64",
        DataType::I8 => "INT8",
        DataType::I16 => "INT16",
        DataType::I32 => "INT32",
        DataType::I64 => "INT64",
        DataType::F16 => "FP16",
        DataType::BF16 => "BF16",
        DataType::F32 => "FP32",
        DataType::F64 => "FP64",
        DataType::String => "BYTES",
    }
}

const ALL_TYPES: &str =
    "BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BF16, BYTES";

fn element_size(dtype: DataType) -> Option<usize> {
    Some(match dtype {
        DataType::Bool | DataType::U8 | DataType::I8 => 1,
        DataType::U16 | DataType::I16 | DataType::F16 | DataType::BF16 => 2,
        DataType::U32 | DataType::I32 | DataType::F32 => 4,
        DataType::U64 | DataType::I64 | DataType::F64 => 8,
        DataType::String => return None,
    })
}

#[derive(Deserialize)]
pub(super) struct RequestHeader<'a> {
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: HashMap<String, Value>,
    #[serde(borrow)]
    pub inputs: Vec<InputHeader<'a>>,
    #[serde(default)]
    outputs: Vec<OutputHeader>,
}

#[derive(Deserialize)]
pub(super) struct InputHeader<'a> {
    pub name: String,
    #[serde(deserialize_with = "shape_or_dimension")]
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: HashMap<String, Value>,
    #[serde(borrow)]
    pub data: Option<&'a RawValue>,
}

/// A shape, or one bare dimension as TorchServe's samples send it
/// (`"shape": -1`).
fn shape_or_dimension<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Shape {
        Dimension(i64),
        Shape(Vec<i64>),
    }
    Shape::deserialize(d)
        .map(|shape| match shape {
            Shape::Dimension(d) => vec![d],
            Shape::Shape(shape) => shape,
        })
        .map_err(|_| serde::de::Error::custom("an input's 'shape' must be a list of whole numbers"))
}

#[derive(Deserialize)]
struct OutputHeader {
    name: String,
    #[serde(default)]
    parameters: HashMap<String, Value>,
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
    /// The request's parameters, for those who read more of them (explain).
    pub parameters: HashMap<String, Value>,
    pub request: InferRequest,
    pub shape: ReplyShape,
    pub outputs: Vec<OutputChoice>,
}

impl Decoded {
    /// Whether outputs not named in the request are answered as binary data.
    pub fn binary_output(&self) -> bool {
        flag(&self.parameters, "binary_data_output")
    }
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
        serde_json::from_slice(json).map_err(|e| bad(format!("invalid inference request: {e}")))?;
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
        .map(|input| (input.name.as_str(), input));
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
    let binary_default = flag(&header.parameters, "binary_data_output");
    let outputs = choose_outputs(io, &header.outputs, binary_default)?;
    Ok(Decoded {
        id: header.id,
        parameters: header.parameters,
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
    if input.datatype != oip_name(expected) {
        return Err(if ALL_TYPES.split(", ").any(|t| t == input.datatype) {
            bad(format!(
                "datatype is {} but the model takes {}",
                input.datatype,
                oip_name(expected)
            ))
        } else {
            bad(format!(
                "unknown datatype {:?}; use one of {ALL_TYPES}",
                input.datatype
            ))
        });
    }
    let shape: Vec<usize> = input
        .shape
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| {
                bad(format!(
                    "shape {:?} has a negative dimension; a request's shape gives each axis's actual size",
                    input.shape
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= max_elements)
        .ok_or_else(|| {
            bad(format!(
                "shape {shape:?} has more than {max_elements} elements, the limit set by ortserve.maxTensorElements"
            ))
        })?;
    let data = match (input.parameters.get("binary_data_size"), input.data) {
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
            let parsed = parse_tensor(raw.get().as_bytes(), &input.name, expected, max_elements)
                .map_err(Error::BadInput)?;
            if parsed.data.len() != count {
                return Err(bad(format!(
                    "shape {shape:?} has {count} elements but 'data' has {}",
                    parsed.data.len()
                )));
            }
            parsed.data
        }
        (None, None) => {
            return Err(bad(
                "'data' is missing (or binary_data_size for binary data)".into(),
            ));
        }
    };
    Ok(Tensor::new(shape, data))
}

/// One copy from the body into a typed buffer, after checking the size.
fn decode_binary(bytes: &[u8], dtype: DataType, count: usize) -> Result<TensorData, String> {
    let Some(size) = element_size(dtype) else {
        return decode_bytes_elements(bytes, count).map(TensorData::String);
    };
    if bytes.len() != count * size {
        return Err(format!(
            "binary_data_size is {} bytes but the shape needs {count} × {size} = {} bytes",
            bytes.len(),
            count * size
        ));
    }
    Ok(match dtype {
        DataType::Bool => TensorData::Bool(
            bytes
                .iter()
                .map(|&b| match b {
                    0 => Ok(false),
                    1 => Ok(true),
                    other => Err(format!("BOOL bytes must be 0 or 1, found {other}")),
                })
                .collect::<Result<_, _>>()?,
        ),
        DataType::U8 => TensorData::U8(bytes.to_vec()),
        DataType::I8 => TensorData::I8(bytemuck::pod_collect_to_vec(bytes)),
        DataType::U16 => TensorData::U16(bytemuck::pod_collect_to_vec(bytes)),
        DataType::I16 => TensorData::I16(bytemuck::pod_collect_to_vec(bytes)),
        DataType::F16 => TensorData::F16(bytemuck::pod_collect_to_vec::<u8, f16>(bytes)),
        DataType::BF16 => TensorData::BF16(bytemuck::pod_collect_to_vec::<u8, bf16>(bytes)),
        DataType::U32 => TensorData::U32(bytemuck::pod_collect_to_vec(bytes)),
        DataType::I32 => TensorData::I32(bytemuck::pod_collect_to_vec(bytes)),
        DataType::F32 => TensorData::F32(bytemuck::pod_collect_to_vec(bytes)),
        DataType::U64 => TensorData::U64(bytemuck::pod_collect_to_vec(bytes)),
        DataType::I64 => TensorData::I64(bytemuck::pod_collect_to_vec(bytes)),
        DataType::F64 => TensorData::F64(bytemuck::pod_collect_to_vec(bytes)),
        DataType::String => unreachable!("handled above"),
    })
}

/// BYTES: each element a 4-byte little-endian length, then that many bytes.
fn decode_bytes_elements(bytes: &[u8], count: usize) -> Result<Vec<String>, String> {
    let elements = split_bytes_elements(bytes)?;
    if elements.len() != count {
        return Err(format!(
            "the shape has {count} elements but the BYTES data holds {}",
            elements.len()
        ));
    }
    elements
        .into_iter()
        .map(|element| {
            std::str::from_utf8(element)
                .map(str::to_string)
                .map_err(|_| {
                    "BYTES elements must be UTF-8 text (they become ONNX string tensors)"
                        .to_string()
                })
        })
        .collect()
}

/// The elements of binary BYTES data, each a slice of it.
pub(super) fn split_bytes_elements(mut bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut elements = Vec::new();
    while !bytes.is_empty() {
        let (length, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or("BYTES data ends inside an element's 4-byte length")?;
        let length = u32::from_le_bytes(*length) as usize;
        if length > rest.len() {
            return Err(format!(
                "a BYTES element claims {length} bytes but only {} remain",
                rest.len()
            ));
        }
        let (element, rest) = rest.split_at(length);
        elements.push(element);
        bytes = rest;
    }
    Ok(elements)
}

pub(super) fn flag(parameters: &HashMap<String, Value>, key: &str) -> bool {
    parameters
        .get(key)
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn choose_outputs(
    io: &ModelIo,
    requested: &[OutputHeader],
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
                .get("binary_data")
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

/// How many bytes [`append_binary`] writes for `data`.
fn binary_size(data: &TensorData) -> usize {
    match data {
        TensorData::String(v) => v.iter().map(|s| 4 + s.len()).sum(),
        _ => data.len() * element_size(data.dtype()).expect("only strings vary in size"),
    }
}

fn append_binary(out: &mut Vec<u8>, data: &TensorData) {
    match data {
        TensorData::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
        TensorData::String(v) => {
            for s in v {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
        TensorData::U8(v) => out.extend_from_slice(v),
        TensorData::I8(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
        TensorData::U16(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
        TensorData::I16(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
        TensorData::F16(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
        TensorData::BF16(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
        TensorData::U32(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
        TensorData::I32(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
        TensorData::F32(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
        TensorData::U64(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
        TensorData::I64(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
        TensorData::F64(v) => out.extend_from_slice(bytemuck::cast_slice(v)),
    }
}

#[cfg(test)]
mod tests;

/// Generated request bodies: a decoded request or a 4xx, never a panic,
/// whatever the JSON part, the binary part or the header length say.
#[cfg(test)]
mod properties;
