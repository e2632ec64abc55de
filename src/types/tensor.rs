//! Tensors as every layer sees them: an element type, a shape and one typed
//! buffer. Batching concatenates and splits these along axis 0.

use half::{bf16, f16};

/// The element types ortserve moves between the wire and ONNX Runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    BF16,
    F32,
    F64,
    String,
}

impl DataType {
    /// The ONNX name of the type, used in every message about it.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U8 => "uint8",
            DataType::U16 => "uint16",
            DataType::U32 => "uint32",
            DataType::U64 => "uint64",
            DataType::I8 => "int8",
            DataType::I16 => "int16",
            DataType::I32 => "int32",
            DataType::I64 => "int64",
            DataType::F16 => "float16",
            DataType::BF16 => "bfloat16",
            DataType::F32 => "float32",
            DataType::F64 => "float64",
            DataType::String => "string",
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A flat, row-major buffer of one element type.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    String(Vec<String>),
}

/// Runs `$body` with `$v` bound to the inner `Vec` of whichever variant `$data` is.
#[macro_export]
#[doc(hidden)]
macro_rules! with_tensor_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::types::TensorData::Bool($v) => $body,
            $crate::types::TensorData::U8($v) => $body,
            $crate::types::TensorData::U16($v) => $body,
            $crate::types::TensorData::U32($v) => $body,
            $crate::types::TensorData::U64($v) => $body,
            $crate::types::TensorData::I8($v) => $body,
            $crate::types::TensorData::I16($v) => $body,
            $crate::types::TensorData::I32($v) => $body,
            $crate::types::TensorData::I64($v) => $body,
            $crate::types::TensorData::F16($v) => $body,
            $crate::types::TensorData::BF16($v) => $body,
            $crate::types::TensorData::F32($v) => $body,
            $crate::types::TensorData::F64($v) => $body,
            $crate::types::TensorData::String($v) => $body,
        }
    };
}

/// Like [`with_tensor_data!`], but `$body` yields a `Vec` of the same element
/// type, which is wrapped back into the same variant.
#[macro_export]
#[doc(hidden)]
macro_rules! map_tensor_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::types::TensorData::Bool($v) => $crate::types::TensorData::Bool($body),
            $crate::types::TensorData::U8($v) => $crate::types::TensorData::U8($body),
            $crate::types::TensorData::U16($v) => $crate::types::TensorData::U16($body),
            $crate::types::TensorData::U32($v) => $crate::types::TensorData::U32($body),
            $crate::types::TensorData::U64($v) => $crate::types::TensorData::U64($body),
            $crate::types::TensorData::I8($v) => $crate::types::TensorData::I8($body),
            $crate::types::TensorData::I16($v) => $crate::types::TensorData::I16($body),
            $crate::types::TensorData::I32($v) => $crate::types::TensorData::I32($body),
            $crate::types::TensorData::I64($v) => $crate::types::TensorData::I64($body),
            $crate::types::TensorData::F16($v) => $crate::types::TensorData::F16($body),
            $crate::types::TensorData::BF16($v) => $crate::types::TensorData::BF16($body),
            $crate::types::TensorData::F32($v) => $crate::types::TensorData::F32($body),
            $crate::types::TensorData::F64($v) => $crate::types::TensorData::F64($body),
            $crate::types::TensorData::String($v) => $crate::types::TensorData::String($body),
        }
    };
}

impl TensorData {
    pub fn dtype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::U8(_) => DataType::U8,
            TensorData::U16(_) => DataType::U16,
            TensorData::U32(_) => DataType::U32,
            TensorData::U64(_) => DataType::U64,
            TensorData::I8(_) => DataType::I8,
            TensorData::I16(_) => DataType::I16,
            TensorData::I32(_) => DataType::I32,
            TensorData::I64(_) => DataType::I64,
            TensorData::F16(_) => DataType::F16,
            TensorData::BF16(_) => DataType::BF16,
            TensorData::F32(_) => DataType::F32,
            TensorData::F64(_) => DataType::F64,
            TensorData::String(_) => DataType::String,
        }
    }

    pub fn len(&self) -> usize {
        with_tensor_data!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty buffer of `dtype` with room for `capacity` elements.
    pub fn with_capacity(dtype: DataType, capacity: usize) -> TensorData {
        match dtype {
            DataType::Bool => TensorData::Bool(Vec::with_capacity(capacity)),
            DataType::U8 => TensorData::U8(Vec::with_capacity(capacity)),
            DataType::U16 => TensorData::U16(Vec::with_capacity(capacity)),
            DataType::U32 => TensorData::U32(Vec::with_capacity(capacity)),
            DataType::U64 => TensorData::U64(Vec::with_capacity(capacity)),
            DataType::I8 => TensorData::I8(Vec::with_capacity(capacity)),
            DataType::I16 => TensorData::I16(Vec::with_capacity(capacity)),
            DataType::I32 => TensorData::I32(Vec::with_capacity(capacity)),
            DataType::I64 => TensorData::I64(Vec::with_capacity(capacity)),
            DataType::F16 => TensorData::F16(Vec::with_capacity(capacity)),
            DataType::BF16 => TensorData::BF16(Vec::with_capacity(capacity)),
            DataType::F32 => TensorData::F32(Vec::with_capacity(capacity)),
            DataType::F64 => TensorData::F64(Vec::with_capacity(capacity)),
            DataType::String => TensorData::String(Vec::with_capacity(capacity)),
        }
    }

    /// A buffer of `len` zeros (false, empty strings).
    pub fn zeros(dtype: DataType, len: usize) -> TensorData {
        let mut data = TensorData::with_capacity(dtype, len);
        with_tensor_data!(&mut data, v => v.resize(len, Default::default()));
        data
    }

    /// Appends a copy of `other`'s elements; both must be the same type.
    fn extend_from(&mut self, other: &TensorData) {
        macro_rules! extend {
            ($($variant:ident),*) => {
                match (self, other) {
                    $((TensorData::$variant(a), TensorData::$variant(b)) => a.extend_from_slice(b),)*
                    (a, b) => unreachable!("concatenating {} with {}", a.dtype(), b.dtype()),
                }
            };
        }
        extend!(
            Bool, U8, U16, U32, U64, I8, I16, I32, I64, F16, BF16, F32, F64, String
        )
    }
}

/// A dense tensor. Axis 0 is the batch axis wherever the model has one.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: TensorData) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }

    pub fn dtype(&self) -> DataType {
        self.data.dtype()
    }

    /// Number of rows along the batch axis (1 for a scalar).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Elements per row.
    fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Stacks tensors of one type and equal non-batch dims along axis 0, with
    /// exactly one copy of each element.
    pub fn concat_rows(parts: &[&Tensor]) -> Tensor {
        let first = parts[0];
        let rows: usize = parts.iter().map(|t| t.rows()).sum();
        let mut data = TensorData::with_capacity(first.dtype(), rows * first.row_len());
        for part in parts {
            data.extend_from(&part.data);
        }
        let mut shape = first.shape.clone();
        shape[0] = rows;
        Tensor { shape, data }
    }

    /// Splits along axis 0 into consecutive pieces of `rows[i]` rows each.
    pub fn split_rows(self, rows: &[usize]) -> Vec<Tensor> {
        if rows.len() == 1 {
            return vec![self];
        }
        let row_len = self.row_len();
        let mut pieces = Vec::with_capacity(rows.len());
        let mut start = 0;
        for &n in rows {
            let mut shape = self.shape.clone();
            shape[0] = n;
            let range = start * row_len..(start + n) * row_len;
            let data = map_tensor_data!(&self.data, v => v[range.clone()].to_vec());
            pieces.push(Tensor { shape, data });
            start += n;
        }
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_then_split_restores_parts() {
        let a = Tensor::new(vec![1, 2], TensorData::F32(vec![1.0, 2.0]));
        let b = Tensor::new(vec![2, 2], TensorData::F32(vec![3.0, 4.0, 5.0, 6.0]));
        let joined = Tensor::concat_rows(&[&a, &b]);
        assert_eq!(joined.shape, vec![3, 2]);
        assert_eq!(
            joined.data,
            TensorData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        );
        assert_eq!(joined.split_rows(&[1, 2]), vec![a, b]);
    }

    #[test]
    fn strings_concat_and_split() {
        let a = Tensor::new(vec![1], TensorData::String(vec!["x".into()]));
        let b = Tensor::new(vec![1], TensorData::String(vec!["y".into()]));
        let joined = Tensor::concat_rows(&[&a, &b]);
        assert_eq!(joined.split_rows(&[1, 1]), vec![a, b]);
    }

    #[test]
    fn zeros_has_requested_length() {
        assert_eq!(
            TensorData::zeros(DataType::I64, 3),
            TensorData::I64(vec![0; 3])
        );
        assert_eq!(TensorData::zeros(DataType::Bool, 2).len(), 2);
    }
}
