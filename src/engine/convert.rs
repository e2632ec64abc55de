//! Conversions between [`Tensor`] and ORT values, and between ORT's type
//! descriptions and [`TensorSpec`]. Inputs are borrowed, never copied (except
//! strings, which ORT must own); outputs are copied out once.

use ort::session::SessionInputValue;
use ort::value::{DynValue, TensorElementType, TensorRef, ValueRef, ValueType};

use super::EngineError;
use crate::types::{DataType, Tensor, TensorData, TensorSpec};

pub(super) fn data_type(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::U8,
        TensorElementType::Uint16 => DataType::U16,
        TensorElementType::Uint32 => DataType::U32,
        TensorElementType::Uint64 => DataType::U64,
        TensorElementType::Int8 => DataType::I8,
        TensorElementType::Int16 => DataType::I16,
        TensorElementType::Int32 => DataType::I32,
        TensorElementType::Int64 => DataType::I64,
        TensorElementType::Float16 => DataType::F16,
        TensorElementType::Bfloat16 => DataType::BF16,
        TensorElementType::Float32 => DataType::F32,
        TensorElementType::Float64 => DataType::F64,
        TensorElementType::String => DataType::String,
        _ => return None,
    })
}

/// Describes one graph input or output, or says why ortserve cannot serve it.
pub(super) fn tensor_spec(
    kind: &str,
    name: &str,
    ty: &ValueType,
) -> Result<TensorSpec, EngineError> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => {
            let dtype = data_type(*ty).ok_or_else(|| {
                EngineError::UnsupportedIo(format!(
                    "{kind} '{name}' has element type {ty}, which ortserve does not serve \
                     (supported: bool, (u)int8-64, float16, bfloat16, float32, float64, string)"
                ))
            })?;
            Ok(TensorSpec {
                name: name.to_string(),
                dtype,
                shape: shape.iter().copied().collect(),
            })
        }
        other => Err(EngineError::UnsupportedIo(format!(
            "{kind} '{name}' is a {}, not a tensor; ortserve serves tensor inputs and outputs only \
             (for a scikit-learn classifier, export it with zipmap=False)",
            onnx_type_name(other)
        ))),
    }
}

/// ONNX's spelling of a value type, e.g. `seq(map(int64, float32))`.
fn onnx_type_name(ty: &ValueType) -> String {
    let element =
        |t: TensorElementType| data_type(t).map_or_else(|| t.to_string(), |d| d.name().to_string());
    match ty {
        ValueType::Tensor { ty, .. } => element(*ty),
        ValueType::Sequence(inner) => format!("seq({})", onnx_type_name(inner)),
        ValueType::Map { key, value } => format!("map({}, {})", element(*key), element(*value)),
        ValueType::Optional(inner) => format!("optional({})", onnx_type_name(inner)),
    }
}

/// Borrows `tensor` as an ORT input value.
pub(super) fn input_value(tensor: &Tensor) -> Result<SessionInputValue<'_>, EngineError> {
    let shape: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
    macro_rules! view {
        ($v:expr) => {
            TensorRef::from_array_view((shape, $v.as_slice()))
                .map(SessionInputValue::from)
                .map_err(run_error)
        };
    }
    match &tensor.data {
        TensorData::Bool(v) => view!(v),
        TensorData::U8(v) => view!(v),
        TensorData::U16(v) => view!(v),
        TensorData::U32(v) => view!(v),
        TensorData::U64(v) => view!(v),
        TensorData::I8(v) => view!(v),
        TensorData::I16(v) => view!(v),
        TensorData::I32(v) => view!(v),
        TensorData::I64(v) => view!(v),
        TensorData::F16(v) => view!(v),
        TensorData::BF16(v) => view!(v),
        TensorData::F32(v) => view!(v),
        TensorData::F64(v) => view!(v),
        TensorData::String(v) => ort::value::Tensor::from_string_array((shape, v.as_slice()))
            .map(SessionInputValue::from)
            .map_err(run_error),
    }
}

/// Copies one ORT output into a [`Tensor`].
pub(super) fn output_tensor(name: &str, value: &ValueRef<'_>) -> Result<Tensor, EngineError> {
    let value: &DynValue = value;
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(EngineError::UnsupportedIo(format!(
            "output '{name}' is not a tensor"
        )));
    };
    macro_rules! copy {
        ($variant:ident, $t:ty) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(run_error)?;
            (
                shape.iter().map(|&d| d as usize).collect(),
                TensorData::$variant(data.to_vec()),
            )
        }};
    }
    let (shape, data): (Vec<usize>, TensorData) = match ty {
        TensorElementType::Bool => copy!(Bool, bool),
        TensorElementType::Uint8 => copy!(U8, u8),
        TensorElementType::Uint16 => copy!(U16, u16),
        TensorElementType::Uint32 => copy!(U32, u32),
        TensorElementType::Uint64 => copy!(U64, u64),
        TensorElementType::Int8 => copy!(I8, i8),
        TensorElementType::Int16 => copy!(I16, i16),
        TensorElementType::Int32 => copy!(I32, i32),
        TensorElementType::Int64 => copy!(I64, i64),
        TensorElementType::Float16 => copy!(F16, half::f16),
        TensorElementType::Bfloat16 => copy!(BF16, half::bf16),
        TensorElementType::Float32 => copy!(F32, f32),
        TensorElementType::Float64 => copy!(F64, f64),
        TensorElementType::String => {
            let (shape, data) = value.try_extract_strings().map_err(run_error)?;
            (
                shape.iter().map(|&d| d as usize).collect(),
                TensorData::String(data),
            )
        }
        other => {
            return Err(EngineError::UnsupportedIo(format!(
                "output '{name}' has element type {other}, which ortserve does not serve"
            )));
        }
    };
    Ok(Tensor::new(shape, data))
}

fn run_error<R>(e: ort::Error<R>) -> EngineError {
    EngineError::Run(e.to_string())
}
