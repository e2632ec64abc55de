//! `ModelInferRequest` ⇄ tensors: typed `contents` or `raw_input_contents`
//! in, the model's inputs out (through the same fitting as REST); outputs
//! back as raw bytes when the request sent raw bytes (as tritonclient does)
//! or as typed `contents` where the type has a field, as the client chose.
//! Every count is checked against the shape and `maxTensorElements` before
//! a buffer of that size exists.

use super::proto::inference::model_infer_request::InferInputTensor;
use super::proto::inference::model_infer_response::InferOutputTensor;
use super::proto::inference::{InferTensorContents, ModelInferRequest, ModelInferResponse};
use crate::codec::{
    ReplyShape, append_binary, check_datatype, decode_binary, fit_to_model, named_inputs, oip_name,
    request_shape, spec_index,
};
use crate::types::{
    DataType, Error, InferRequest, InferResponse, ModelId, ModelIo, Tensor, TensorData,
};

/// A decoded `ModelInfer` call.
pub struct Decoded {
    pub request: InferRequest,
    pub shape: ReplyShape,
    /// The model outputs to answer, by index, in the client's order.
    pub outputs: Vec<usize>,
    /// The client sent raw bytes, so it reads them back.
    pub raw: bool,
}

pub fn decode(
    io: &ModelIo,
    call: ModelInferRequest,
    max_elements: usize,
) -> Result<Decoded, Error> {
    let raw = !call.raw_input_contents.is_empty();
    if raw && call.raw_input_contents.len() != call.inputs.len() {
        return Err(Error::BadInput(format!(
            "raw_input_contents has {} entries but there are {} inputs; send one per input",
            call.raw_input_contents.len(),
            call.inputs.len()
        )));
    }
    let mut raw_contents = call.raw_input_contents.into_iter();
    let named = call.inputs.iter().map(|input| {
        let bytes = raw_contents.next();
        (input.name.as_str(), (input, bytes))
    });
    let tensors = named_inputs(io, named, |(input, bytes), spec| {
        decode_input(input, bytes.as_deref(), spec.dtype, max_elements)
    })?;
    let (request, shape) = fit_to_model(io, tensors)?;
    let outputs = match call.outputs.is_empty() {
        true => (0..io.outputs.len()).collect(),
        false => call
            .outputs
            .iter()
            .map(|o| spec_index(&io.outputs, &o.name, "output"))
            .collect::<Result<_, _>>()?,
    };
    Ok(Decoded {
        request,
        shape,
        outputs,
        raw,
    })
}

fn decode_input(
    input: &InferInputTensor,
    raw: Option<&[u8]>,
    expected: DataType,
    max_elements: usize,
) -> Result<Tensor, Error> {
    let bad = |message: String| Error::BadInput(format!("input '{}': {message}", input.name));
    check_datatype(&input.datatype, expected).map_err(bad)?;
    let (shape, count) = request_shape(&input.shape, max_elements).map_err(bad)?;
    // Triton refuses both as well: which of the two is meant is a guess.
    let typed = input.contents.as_deref();
    if raw.is_some() && typed.is_some_and(|c| filled_fields(c).next().is_some()) {
        return Err(bad(
            "has typed contents, and raw_input_contents are used: send every input's \
             values one way, all in raw_input_contents or all in contents"
                .into(),
        ));
    }
    let data = match (raw, typed) {
        (Some(bytes), _) => decode_binary(bytes, expected, count).map_err(bad)?,
        (None, Some(contents)) => typed_contents(contents, expected).map_err(bad)?,
        (None, None) => return Err(bad("has neither contents nor raw_input_contents".into())),
    };
    if data.len() != count {
        return Err(bad(format!(
            "shape {shape:?} has {count} elements but the contents hold {}",
            data.len()
        )));
    }
    Ok(Tensor::new(shape, data))
}

/// The `contents` field the datatype travels in, converted where the wire
/// type is wider than the element (INT8 in `int_contents`), range-checked.
fn typed_contents(contents: &InferTensorContents, dtype: DataType) -> Result<TensorData, String> {
    fn narrow<W: Copy + std::fmt::Display, N: TryFrom<W>>(
        values: &[W],
        what: &str,
    ) -> Result<Vec<N>, String> {
        values
            .iter()
            .map(|&v| N::try_from(v).map_err(|_| format!("{v} does not fit {what}")))
            .collect()
    }
    if let Some(field) = contents_field(dtype)
        && let Some(stray) = filled_fields(contents).find(|filled| *filled != field)
    {
        return Err(format!(
            "a {} tensor's values go in contents.{field}, and contents.{stray} was sent",
            oip_name(dtype)
        ));
    }
    Ok(match dtype {
        DataType::Bool => TensorData::Bool(contents.bool_contents.clone()),
        DataType::I8 => TensorData::I8(narrow(&contents.int_contents, "INT8")?),
        DataType::I16 => TensorData::I16(narrow(&contents.int_contents, "INT16")?),
        DataType::I32 => TensorData::I32(contents.int_contents.clone()),
        DataType::I64 => TensorData::I64(contents.int64_contents.clone()),
        DataType::U8 => TensorData::U8(narrow(&contents.uint_contents, "UINT8")?),
        DataType::U16 => TensorData::U16(narrow(&contents.uint_contents, "UINT16")?),
        DataType::U32 => TensorData::U32(contents.uint_contents.clone()),
        DataType::U64 => TensorData::U64(contents.uint64_contents.clone()),
        DataType::F32 => TensorData::F32(contents.fp32_contents.clone()),
        DataType::F64 => TensorData::F64(contents.fp64_contents.clone()),
        DataType::String => TensorData::String(
            contents
                .bytes_contents
                .iter()
                .map(|b| String::from_utf8(b.clone()))
                .collect::<Result<_, _>>()
                .map_err(|_| "BYTES elements must be UTF-8 text".to_string())?,
        ),
        DataType::F16 | DataType::BF16 => {
            return Err(format!(
                "{} has no typed contents field; send it in raw_input_contents",
                oip_name(dtype)
            ));
        }
    })
}

/// The typed contents' field a datatype's values travel in; none for FP16
/// and BF16, which have none.
fn contents_field(dtype: DataType) -> Option<&'static str> {
    Some(match dtype {
        DataType::Bool => "bool_contents",
        DataType::I8 | DataType::I16 | DataType::I32 => "int_contents",
        DataType::I64 => "int64_contents",
        DataType::U8 | DataType::U16 | DataType::U32 => "uint_contents",
        DataType::U64 => "uint64_contents",
        DataType::F32 => "fp32_contents",
        DataType::F64 => "fp64_contents",
        DataType::String => "bytes_contents",
        DataType::F16 | DataType::BF16 => return None,
    })
}

/// The names of the typed contents' fields that hold values.
fn filled_fields(contents: &InferTensorContents) -> impl Iterator<Item = &'static str> {
    let c = contents;
    [
        ("bool_contents", c.bool_contents.is_empty()),
        ("int_contents", c.int_contents.is_empty()),
        ("int64_contents", c.int64_contents.is_empty()),
        ("uint_contents", c.uint_contents.is_empty()),
        ("uint64_contents", c.uint64_contents.is_empty()),
        ("fp32_contents", c.fp32_contents.is_empty()),
        ("fp64_contents", c.fp64_contents.is_empty()),
        ("bytes_contents", c.bytes_contents.is_empty()),
    ]
    .into_iter()
    .filter_map(|(name, empty)| (!empty).then_some(name))
}

/// The answer: each chosen output's name, type and shape, and its data as
/// raw bytes or typed contents.
pub fn encode(
    model: &ModelId,
    id: String,
    io: &ModelIo,
    response: InferResponse,
    decoded: &Decoded,
) -> ModelInferResponse {
    let mut answer = ModelInferResponse {
        model_name: model.name.clone(),
        model_version: model.version.clone(),
        id,
        ..ModelInferResponse::default()
    };
    let mut outputs: Vec<Option<Tensor>> = response.outputs.into_iter().map(Some).collect();
    // Room for exactly the answer's tensors: a `Vec` would make room for
    // four at the first push, 1,248 bytes for one output.
    answer.outputs.reserve_exact(decoded.outputs.len());
    if decoded.raw {
        answer
            .raw_output_contents
            .reserve_exact(decoded.outputs.len());
    }
    for &index in &decoded.outputs {
        let Some(tensor) = outputs[index].take() else {
            continue;
        };
        let mut shape: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
        if decoded.shape == ReplyShape::Single && !shape.is_empty() {
            shape.remove(0);
        }
        let raw = decoded.raw || matches!(tensor.data, TensorData::F16(_) | TensorData::BF16(_));
        let mut output = InferOutputTensor {
            name: io.outputs[index].name.clone(),
            datatype: oip_name(tensor.data.dtype()).to_string(),
            shape,
            ..InferOutputTensor::default()
        };
        if raw {
            let mut bytes = Vec::new();
            append_binary(&mut bytes, &tensor.data);
            answer.raw_output_contents.push(bytes);
        } else {
            output.contents = Some(contents_of(tensor.data));
        }
        answer.outputs.push(output);
    }
    answer
}

/// Typed contents for a type that has a field (not FP16/BF16).
fn contents_of(data: TensorData) -> InferTensorContents {
    let mut contents = InferTensorContents::default();
    match data {
        TensorData::Bool(v) => contents.bool_contents = v,
        TensorData::I8(v) => contents.int_contents = v.into_iter().map(i32::from).collect(),
        TensorData::I16(v) => contents.int_contents = v.into_iter().map(i32::from).collect(),
        TensorData::I32(v) => contents.int_contents = v,
        TensorData::I64(v) => contents.int64_contents = v,
        TensorData::U8(v) => contents.uint_contents = v.into_iter().map(u32::from).collect(),
        TensorData::U16(v) => contents.uint_contents = v.into_iter().map(u32::from).collect(),
        TensorData::U32(v) => contents.uint_contents = v,
        TensorData::U64(v) => contents.uint64_contents = v,
        TensorData::F32(v) => contents.fp32_contents = v,
        TensorData::F64(v) => contents.fp64_contents = v,
        TensorData::String(v) => {
            contents.bytes_contents = v.into_iter().map(String::into_bytes).collect()
        }
        TensorData::F16(_) | TensorData::BF16(_) => {
            unreachable!("FP16 and BF16 are always answered as raw bytes")
        }
    }
    contents
}
