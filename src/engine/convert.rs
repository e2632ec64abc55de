//! Conversions between [`Tensor`] and ORT values, and between ORT's type
//! descriptions and [`TensorSpec`]. Inputs are borrowed, never copied (except
//! strings, which ORT must own); outputs are copied out once, each request's
//! rows straight into that request's own buffer.

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

/// Copies one ORT output into each request's tensor: request `i` gets the
/// next `requests[i]` rows, copied once, straight out of ORT's buffer. A lone
/// request gets the whole output, whatever its shape.
pub(super) fn output_rows(
    name: &str,
    value: &ValueRef<'_>,
    requests: &[usize],
) -> Result<Vec<Tensor>, EngineError> {
    let value: &DynValue = value;
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(EngineError::UnsupportedIo(format!(
            "output '{name}' is not a tensor"
        )));
    };
    macro_rules! copy {
        ($variant:ident, $t:ty) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(run_error)?;
            RowSplit::new(name, shape, requests)?.copy(data, TensorData::$variant)
        }};
    }
    Ok(match ty {
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
            // ORT hands strings out as owned values already: move them on.
            let (shape, data) = value.try_extract_strings().map_err(run_error)?;
            RowSplit::new(name, shape, requests)?.hand_out(data, TensorData::String)
        }
        other => {
            return Err(EngineError::UnsupportedIo(format!(
                "output '{name}' has element type {other}, which ortserve does not serve"
            )));
        }
    })
}

/// How one output's rows divide among the requests of a batch.
#[derive(Debug)]
struct RowSplit<'a> {
    shape: Vec<usize>,
    requests: &'a [usize],
}

impl<'a> RowSplit<'a> {
    /// Fails when several requests share the batch but the output's first
    /// axis is not the batch's rows: there is no way to tell whose rows are whose.
    fn new(name: &str, shape: &[i64], requests: &'a [usize]) -> Result<RowSplit<'a>, EngineError> {
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let rows: usize = requests.iter().sum();
        if requests.len() > 1 && shape.first() != Some(&rows) {
            return Err(EngineError::Unsplittable {
                output: name.to_string(),
                shape,
                rows,
            });
        }
        Ok(RowSplit { shape, requests })
    }

    /// The shape of request `i`'s piece. The last request takes the
    /// output's own, so a lone request's answer costs no copy of it (an
    /// allocation on the worker thread, freed on another, is one of the
    /// dearer kinds).
    fn piece_shape(&mut self, i: usize) -> Vec<usize> {
        let mut shape = if i + 1 == self.requests.len() {
            std::mem::take(&mut self.shape)
        } else {
            self.shape.clone()
        };
        if self.requests.len() > 1 {
            shape[0] = self.requests[i];
        }
        shape
    }

    /// Copies each request's rows out of `data` into a buffer of its own.
    fn copy<T: Clone>(mut self, data: &[T], wrap: fn(Vec<T>) -> TensorData) -> Vec<Tensor> {
        let mut rest = data;
        (0..self.requests.len())
            .map(|i| {
                let shape = self.piece_shape(i);
                let (piece, after) = rest.split_at(shape.iter().product());
                rest = after;
                Tensor::new(shape, wrap(piece.to_vec()))
            })
            .collect()
    }

    /// Moves each request's rows out of an owned buffer.
    fn hand_out<T>(mut self, data: Vec<T>, wrap: fn(Vec<T>) -> TensorData) -> Vec<Tensor> {
        let mut rest = data.into_iter();
        (0..self.requests.len())
            .map(|i| {
                let shape = self.piece_shape(i);
                let piece = rest.by_ref().take(shape.iter().product()).collect();
                Tensor::new(shape, wrap(piece))
            })
            .collect()
    }
}

fn run_error<R>(e: ort::Error<R>) -> EngineError {
    EngineError::Run(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_gets_exactly_its_rows() {
        let data: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let split = RowSplit::new("y", &[6, 2], &[1, 3, 2]).unwrap();
        let pieces = split.copy(&data, TensorData::F32);
        let expected = [
            Tensor::new(vec![1, 2], TensorData::F32(vec![0.0, 1.0])),
            Tensor::new(
                vec![3, 2],
                TensorData::F32(vec![2.0, 3.0, 4.0, 5.0, 6.0, 7.0]),
            ),
            Tensor::new(vec![2, 2], TensorData::F32(vec![8.0, 9.0, 10.0, 11.0])),
        ];
        assert_eq!(pieces, expected);
    }

    #[test]
    fn strings_move_to_their_requests() {
        let data: Vec<String> = ["a", "b", "c"].map(String::from).into();
        let split = RowSplit::new("s", &[3], &[2, 1]).unwrap();
        let pieces = split.hand_out(data, TensorData::String);
        assert_eq!(
            pieces[0].data,
            TensorData::String(vec!["a".into(), "b".into()])
        );
        assert_eq!(pieces[1].shape, vec![1]);
        assert_eq!(pieces[1].data, TensorData::String(vec!["c".into()]));
    }

    #[test]
    fn a_lone_request_gets_the_whole_output_whatever_its_shape() {
        let split = RowSplit::new("y", &[3], &[2]).unwrap();
        let pieces = split.copy(&[1i64, 2, 3], TensorData::I64);
        assert_eq!(
            pieces,
            [Tensor::new(vec![3], TensorData::I64(vec![1, 2, 3]))]
        );
    }

    #[test]
    fn an_output_without_the_batch_rows_cannot_be_split() {
        let error = RowSplit::new("y", &[3, 1], &[1, 1]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "output 'y' has shape [3, 1] for a batch of 2 rows, so it cannot be split per request; \
             set batchSize: 1 for this model"
        );
    }
}
