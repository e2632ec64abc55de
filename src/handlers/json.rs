//! JSON ⇄ tensors without intermediate `serde_json::Value` trees: nested
//! arrays are parsed straight into one typed buffer (shape learnt on the way,
//! element count capped before memory grows), and outputs are written with
//! `itoa`/`ryu` straight into the response buffer.

use std::fmt;

use half::{bf16, f16};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};

use crate::types::{DataType, Tensor, TensorData};

/// Reads one nested JSON array of `dtype` elements, at most `max_elements`.
pub struct TensorSeed<'a> {
    pub name: &'a str,
    pub dtype: DataType,
    pub max_elements: usize,
}

impl<'de> DeserializeSeed<'de> for TensorSeed<'_> {
    type Value = Tensor;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Tensor, D::Error> {
        macro_rules! read {
            ($variant:ident, $t:ty) => {{
                let mut out: Vec<$t> = Vec::new();
                let mut shape = ShapeTracker::default();
                let seed = Nested {
                    input: self.name,
                    out: &mut out,
                    shape: &mut shape,
                    depth: 0,
                    max: self.max_elements,
                };
                seed.deserialize(deserializer)?;
                let dims = shape
                    .finish(self.name, out.len())
                    .map_err(de::Error::custom)?;
                Ok(Tensor::new(dims, TensorData::$variant(out)))
            }};
        }
        match self.dtype {
            DataType::Bool => read!(Bool, bool),
            DataType::U8 => read!(U8, u8),
            DataType::U16 => read!(U16, u16),
            DataType::U32 => read!(U32, u32),
            DataType::U64 => read!(U64, u64),
            DataType::I8 => read!(I8, i8),
            DataType::I16 => read!(I16, i16),
            DataType::I32 => read!(I32, i32),
            DataType::I64 => read!(I64, i64),
            DataType::F16 => read!(F16, f16),
            DataType::BF16 => read!(BF16, bf16),
            DataType::F32 => read!(F32, f32),
            DataType::F64 => read!(F64, f64),
            DataType::String => read!(String, String),
        }
    }
}

/// Learns the shape of nested arrays and rejects ragged ones.
#[derive(Default)]
struct ShapeTracker {
    dims: Vec<Option<usize>>,
    leaf_depth: Option<usize>,
}

impl ShapeTracker {
    fn array_ended(&mut self, input: &str, depth: usize, len: usize) -> Result<(), String> {
        if self.dims.len() <= depth {
            self.dims.resize(depth + 1, None);
        }
        match self.dims[depth] {
            None => self.dims[depth] = Some(len),
            Some(expected) if expected != len => {
                return Err(format!(
                    "input '{input}' is ragged: arrays at depth {depth} have lengths {expected} and {len}; \
                     every row must have the same length"
                ));
            }
            Some(_) => {}
        }
        Ok(())
    }

    fn leaf(&mut self, input: &str, depth: usize) -> Result<(), String> {
        match self.leaf_depth {
            None => self.leaf_depth = Some(depth),
            Some(d) if d != depth => {
                return Err(format!(
                    "input '{input}' mixes numbers and arrays at the same level"
                ));
            }
            Some(_) => {}
        }
        Ok(())
    }

    fn finish(self, input: &str, len: usize) -> Result<Vec<usize>, String> {
        let rank = self.leaf_depth.unwrap_or(self.dims.len());
        let dims: Vec<usize> = self
            .dims
            .iter()
            .take(rank)
            .map(|d| d.unwrap_or(0))
            .collect();
        if dims.iter().product::<usize>() != len {
            return Err(format!(
                "input '{input}' is ragged: its arrays do not form a rectangular tensor"
            ));
        }
        Ok(dims)
    }
}

/// One level of nesting: an array (recurse) or a leaf element.
struct Nested<'a, T> {
    input: &'a str,
    out: &'a mut Vec<T>,
    shape: &'a mut ShapeTracker,
    depth: usize,
    max: usize,
}

impl<'de, T: Element> DeserializeSeed<'de> for Nested<'_, T> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, T: Element> Visitor<'de> for Nested<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "nested arrays of {} values for input '{}'",
            T::DTYPE,
            self.input
        )
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut len = 0;
        while seq
            .next_element_seed(Nested {
                input: self.input,
                out: &mut *self.out,
                shape: &mut *self.shape,
                depth: self.depth + 1,
                max: self.max,
            })?
            .is_some()
        {
            len += 1;
        }
        self.shape
            .array_ended(self.input, self.depth, len)
            .map_err(de::Error::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(T::from_u64(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(T::from_i64(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(T::from_f64(v))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.push(T::from_bool(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.push(T::from_str(v))
    }
}

impl<T: Element> Nested<'_, T> {
    fn push<E: de::Error>(self, value: Result<T, String>) -> Result<(), E> {
        let value = value
            .map_err(|why| E::custom(format!("input '{}' is {}: {why}", self.input, T::DTYPE)))?;
        if self.out.len() >= self.max {
            return Err(E::custom(format!(
                "input '{}' has more than {} elements, the limit set by ortserve.maxTensorElements",
                self.input, self.max
            )));
        }
        self.shape.leaf(self.input, self.depth).map_err(E::custom)?;
        self.out.push(value);
        Ok(())
    }
}

/// Conversion of one JSON scalar into an element type, with range checks.
trait Element: Sized {
    const DTYPE: DataType;
    fn from_u64(v: u64) -> Result<Self, String> {
        Err(format!("got the number {v}"))
    }
    fn from_i64(v: i64) -> Result<Self, String> {
        Err(format!("got the number {v}"))
    }
    fn from_f64(v: f64) -> Result<Self, String> {
        Err(format!("got the number {v}"))
    }
    fn from_bool(v: bool) -> Result<Self, String> {
        Err(format!("got {v}"))
    }
    fn from_str(v: &str) -> Result<Self, String> {
        Err(format!("got the string {v:?}"))
    }
}

macro_rules! integer_element {
    ($($t:ty => $dtype:ident),*) => {$(
        impl Element for $t {
            const DTYPE: DataType = DataType::$dtype;
            fn from_u64(v: u64) -> Result<Self, String> {
                <$t>::try_from(v).map_err(|_| format!("{v} is out of range"))
            }
            fn from_i64(v: i64) -> Result<Self, String> {
                <$t>::try_from(v).map_err(|_| format!("{v} is out of range"))
            }
            fn from_f64(v: f64) -> Result<Self, String> {
                if v.fract() == 0.0 && v >= <$t>::MIN as f64 && v <= <$t>::MAX as f64 {
                    Ok(v as $t)
                } else {
                    Err(format!("{v} is not a whole number in range"))
                }
            }
        }
    )*};
}
integer_element!(u8 => U8, u16 => U16, u32 => U32, u64 => U64, i8 => I8, i16 => I16, i32 => I32, i64 => I64);

macro_rules! float_element {
    ($($t:ty => $dtype:ident, $from_f64:expr),*) => {$(
        impl Element for $t {
            const DTYPE: DataType = DataType::$dtype;
            fn from_u64(v: u64) -> Result<Self, String> {
                Ok($from_f64(v as f64))
            }
            fn from_i64(v: i64) -> Result<Self, String> {
                Ok($from_f64(v as f64))
            }
            fn from_f64(v: f64) -> Result<Self, String> {
                Ok($from_f64(v))
            }
        }
    )*};
}
float_element!(
    f32 => F32, |v: f64| v as f32,
    f64 => F64, |v: f64| v,
    f16 => F16, f16::from_f64,
    bf16 => BF16, bf16::from_f64
);

impl Element for bool {
    const DTYPE: DataType = DataType::Bool;
    fn from_bool(v: bool) -> Result<Self, String> {
        Ok(v)
    }
    fn from_u64(v: u64) -> Result<Self, String> {
        match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(format!("got the number {v}; use true/false (or 0/1)")),
        }
    }
}

impl Element for String {
    const DTYPE: DataType = DataType::String;
    fn from_str(v: &str) -> Result<Self, String> {
        Ok(v.to_string())
    }
}

/// Appends `tensor` as nested JSON arrays; with `skip_batch`, its single row
/// is written without the outer array.
pub fn write_tensor(out: &mut Vec<u8>, tensor: &Tensor, skip_batch: bool) {
    let shape = if skip_batch && !tensor.shape.is_empty() {
        &tensor.shape[1..]
    } else {
        &tensor.shape[..]
    };
    crate::with_tensor_data!(&tensor.data, v => write_nested(out, shape, v))
}

fn write_nested<T: WriteJson>(out: &mut Vec<u8>, shape: &[usize], data: &[T]) {
    let Some((&len, inner)) = shape.split_first() else {
        data[0].write_json(out);
        return;
    };
    let stride: usize = inner.iter().product();
    out.push(b'[');
    for i in 0..len {
        if i > 0 {
            out.push(b',');
        }
        if inner.is_empty() {
            data[i].write_json(out);
        } else {
            write_nested(out, inner, &data[i * stride..(i + 1) * stride]);
        }
    }
    out.push(b']');
}

/// Writes one element as a JSON value; non-finite floats become `null`.
pub trait WriteJson {
    fn write_json(&self, out: &mut Vec<u8>);
}

macro_rules! write_integer {
    ($($t:ty),*) => {$(
        impl WriteJson for $t {
            fn write_json(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(itoa::Buffer::new().format(*self).as_bytes());
            }
        }
    )*};
}
write_integer!(u8, u16, u32, u64, i8, i16, i32, i64);

impl WriteJson for f32 {
    fn write_json(&self, out: &mut Vec<u8>) {
        if self.is_finite() {
            out.extend_from_slice(ryu::Buffer::new().format_finite(*self).as_bytes());
        } else {
            out.extend_from_slice(b"null");
        }
    }
}

impl WriteJson for f64 {
    fn write_json(&self, out: &mut Vec<u8>) {
        if self.is_finite() {
            out.extend_from_slice(ryu::Buffer::new().format_finite(*self).as_bytes());
        } else {
            out.extend_from_slice(b"null");
        }
    }
}

impl WriteJson for f16 {
    fn write_json(&self, out: &mut Vec<u8>) {
        self.to_f32().write_json(out);
    }
}

impl WriteJson for bf16 {
    fn write_json(&self, out: &mut Vec<u8>) {
        self.to_f32().write_json(out);
    }
}

impl WriteJson for bool {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if *self { b"true" } else { b"false" });
    }
}

impl WriteJson for String {
    fn write_json(&self, out: &mut Vec<u8>) {
        write_string(out, self);
    }
}

/// Appends `s` as a JSON string literal.
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, dtype: DataType) -> Result<Tensor, String> {
        let mut de = serde_json::Deserializer::from_str(text);
        TensorSeed {
            name: "x",
            dtype,
            max_elements: 8,
        }
        .deserialize(&mut de)
        .map_err(|e| e.to_string())
    }

    #[test]
    fn nested_arrays_become_shaped_buffers() {
        let t = parse("[[1, 2.5], [3, -4]]", DataType::F32).unwrap();
        assert_eq!(t.shape, vec![2, 2]);
        assert_eq!(t.data, TensorData::F32(vec![1.0, 2.5, 3.0, -4.0]));
        let t = parse("[[true, 0], [1, false]]", DataType::Bool).unwrap();
        assert_eq!(t.data, TensorData::Bool(vec![true, false, true, false]));
        let t = parse(r#"[["a"], ["b"]]"#, DataType::String).unwrap();
        assert_eq!(t.shape, vec![2, 1]);
        assert_eq!(parse("[[], []]", DataType::I64).unwrap().shape, vec![2, 0]);
        let scalar = parse("7", DataType::I64).unwrap();
        assert_eq!(
            (scalar.shape, scalar.data),
            (vec![], TensorData::I64(vec![7]))
        );
    }

    #[test]
    fn bad_elements_name_the_input_and_type() {
        let e = parse("[1.5]", DataType::I64).unwrap_err();
        assert!(
            e.starts_with("input 'x' is int64: 1.5 is not a whole number in range"),
            "{e}"
        );
        let e = parse("[300]", DataType::U8).unwrap_err();
        assert!(
            e.starts_with("input 'x' is uint8: 300 is out of range"),
            "{e}"
        );
        let e = parse(r#"["a"]"#, DataType::F32).unwrap_err();
        assert!(
            e.starts_with("input 'x' is float32: got the string \"a\""),
            "{e}"
        );
        let e = parse("[[1, 2], [3]]", DataType::F32).unwrap_err();
        assert!(e.starts_with("input 'x' is ragged"), "{e}");
        let e = parse("[[1], 2]", DataType::F32).unwrap_err();
        assert!(e.contains("mixes numbers and arrays"), "{e}");
        let e = parse("{}", DataType::F32).unwrap_err();
        assert!(
            e.contains("expected nested arrays of float32 values for input 'x'"),
            "{e}"
        );
    }

    #[test]
    fn element_cap_stops_parsing_early() {
        let e = parse("[1,2,3,4,5,6,7,8,9]", DataType::F32).unwrap_err();
        assert!(
            e.contains("more than 8 elements, the limit set by ortserve.maxTensorElements"),
            "{e}"
        );
    }

    #[test]
    fn writes_nested_json() {
        let t = Tensor::new(
            vec![1, 2, 2],
            TensorData::F32(vec![1.0, 0.5, f32::NAN, -2.0]),
        );
        let mut out = Vec::new();
        write_tensor(&mut out, &t, false);
        assert_eq!(String::from_utf8(out).unwrap(), "[[[1.0,0.5],[null,-2.0]]]");
        let mut out = Vec::new();
        write_tensor(&mut out, &t, true);
        assert_eq!(String::from_utf8(out).unwrap(), "[[1.0,0.5],[null,-2.0]]");
        let s = Tensor::new(vec![2], TensorData::String(vec!["a\"b".into(), "c".into()]));
        let mut out = Vec::new();
        write_tensor(&mut out, &s, false);
        assert_eq!(String::from_utf8(out).unwrap(), r#"["a\"b","c"]"#);
    }
}
