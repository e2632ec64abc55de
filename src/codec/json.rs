//! JSON ⇄ tensors without intermediate `serde_json::Value` trees: nested
//! arrays are scanned byte by byte straight into one typed buffer (shape learnt
//! on the way, element count capped before memory grows, floats parsed by
//! [`decimal`] and correctly rounded to the target type), and outputs are
//! written with `itoa`/`ryu` straight into the response buffer. The bodies
//! around the tensors are read by [`members`], which hands the tensors over
//! unparsed.

mod decimal;
mod members;

pub use members::{
    UnreadValue, array_items, check_member, object_members, once, parse_member, parse_once,
    read_string, visit_members,
};

use half::{bf16, f16};

use crate::types::{DataType, Tensor, TensorData, TensorSpec};

/// Deeper nesting than any tensor rank ONNX models use is refused early.
const MAX_DEPTH: usize = 32;

/// Parses one JSON value — nested arrays of `dtype` elements, or a single
/// element for a scalar — into a tensor of at most `max_elements` elements.
/// Errors name the input.
pub fn parse_tensor(
    json: &[u8],
    input: &str,
    dtype: DataType,
    max_elements: usize,
) -> Result<Tensor, String> {
    macro_rules! read {
        ($variant:ident, $t:ty) => {{
            let mut out: Vec<$t> = Vec::new();
            let shape = Scanner {
                bytes: json,
                pos: 0,
                input,
            }
            .read_nested(&mut out, max_elements)?;
            Ok(Tensor::new(shape, TensorData::$variant(out)))
        }};
    }
    match dtype {
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

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
    input: &'a str,
}

impl Scanner<'_> {
    /// Reads nested arrays (or one scalar) of `T` into `out`; returns the shape.
    fn read_nested<T: Element>(
        mut self,
        out: &mut Vec<T>,
        max: usize,
    ) -> Result<Vec<usize>, String> {
        self.skip_whitespace();
        if self.peek() != Some(b'[') {
            out.push(self.element()?);
            self.expect_end()?;
            return Ok(Vec::new());
        }
        let mut shape = ShapeTracker::default();
        // Element counts of the arrays currently open, outermost first.
        let mut open: Vec<usize> = Vec::new();
        loop {
            self.skip_whitespace();
            match self.peek() {
                Some(b'[') => {
                    self.pos += 1;
                    if let Some(count) = open.last_mut() {
                        *count += 1;
                    }
                    if open.len() == MAX_DEPTH {
                        return Err(format!(
                            "input '{}' is nested more than {MAX_DEPTH} levels deep",
                            self.input
                        ));
                    }
                    open.push(0);
                    continue;
                }
                Some(b']') => {
                    self.pos += 1;
                    let count = open.pop().expect("inside an array");
                    shape.array_ended(self.input, open.len(), count)?;
                    if open.is_empty() {
                        break;
                    }
                }
                Some(b',') => return Err(self.syntax("a value")),
                Some(_) if !open.is_empty() => {
                    shape.leaf(self.input, open.len())?;
                    *open.last_mut().expect("inside an array") += self.read_run(out, max)?;
                    continue;
                }
                _ => return Err(self.syntax("a value or ']'")),
            }
            self.after_value()?;
        }
        self.expect_end()?;
        shape.finish(self.input, out.len())
    }

    /// Reads a run of elements, `v, v, …`, into `out` and returns how many:
    /// the inner loop of every tensor, kept free of the shape bookkeeping.
    /// It stops before the `]` that ends the row, or before a `[` after a
    /// comma, which the caller then reads (and refuses as ragged).
    fn read_run<T: Element>(&mut self, out: &mut Vec<T>, max: usize) -> Result<usize, String> {
        let start = out.len();
        loop {
            if out.len() >= max {
                return Err(format!(
                    "input '{}' has more than {max} elements, the limit set by ortserve.maxTensorElements",
                    self.input
                ));
            }
            out.push(self.element()?);
            // `,` or `, ` and the next number: what nearly every separator is.
            if let Some(skip) = self.next_number() {
                self.pos += skip;
                continue;
            }
            self.after_value()?;
            if matches!(self.peek(), Some(b']' | b'[')) {
                return Ok(out.len() - start);
            }
        }
    }

    /// The length of a `,` or `, ` that a number's first byte follows.
    #[inline]
    fn next_number(&self) -> Option<usize> {
        let starts_number = |b: &u8| b.is_ascii_digit() || *b == b'-';
        match self.bytes.get(self.pos..self.pos + 3)? {
            [b',', next, _] if starts_number(next) => Some(1),
            [b',', b' ', next] if starts_number(next) => Some(2),
            _ => None,
        }
    }

    /// After a value: a comma followed by another value, or the closing `]`.
    fn after_value(&mut self) -> Result<(), String> {
        self.skip_whitespace();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                self.skip_whitespace();
                match self.peek() {
                    Some(b']') | None => Err(self.syntax("a value after ','")),
                    Some(_) => Ok(()),
                }
            }
            Some(b']') => Ok(()),
            _ => Err(self.syntax("',' or ']'")),
        }
    }

    #[inline]
    fn element<T: Element>(&mut self) -> Result<T, String> {
        let start = self.pos;
        T::scan(self).map_err(|why| {
            let token =
                String::from_utf8_lossy(&self.bytes[start..self.token_end(start)]).into_owned();
            format!(
                "input '{}' is {}: {why} (got {token})",
                self.input,
                T::DTYPE
            )
        })
    }

    fn token_end(&self, start: usize) -> usize {
        let rest = &self.bytes[start..];
        start
            + rest
                .iter()
                .position(|b| matches!(b, b',' | b']' | b'[') || b.is_ascii_whitespace())
                .unwrap_or(rest.len())
                .min(40)
    }

    fn expect_end(&mut self) -> Result<(), String> {
        self.skip_whitespace();
        if self.pos == self.bytes.len() {
            Ok(())
        } else {
            Err(self.syntax("the end of the value"))
        }
    }

    fn syntax(&self, expected: &str) -> String {
        match self.peek() {
            None => format!(
                "invalid JSON for input '{}': the value ends early (expected {expected})",
                self.input
            ),
            Some(b) => format!(
                "invalid JSON for input '{}' at byte {}: expected {expected}, found '{}'",
                self.input, self.pos, b as char
            ),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.pos += 1;
        }
    }

    /// A float token; `nan`/`inf`/`infinity` are accepted (Python writes them).
    /// Inlined into each row's loop: as a call, the `Result` went through
    /// memory once a number.
    #[inline(always)]
    fn float<F: decimal::Decimal>(&mut self) -> Result<F, String> {
        let (value, length) = decimal::parse::<F>(&self.bytes[self.pos..]).ok_or("not a number")?;
        self.pos += length;
        Ok(value)
    }

    /// A JSON integer token as (negative, magnitude), or `None` if the token
    /// has a fraction or exponent (the cursor is then left where it was).
    fn integer(&mut self) -> Result<Option<(bool, u64)>, String> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        let mut pos = start + negative as usize;
        let mut magnitude: u64 = 0;
        let digits_start = pos;
        while let Some(digit) = self.bytes.get(pos).filter(|b| b.is_ascii_digit()) {
            magnitude = magnitude
                .checked_mul(10)
                .and_then(|m| m.checked_add((digit - b'0') as u64))
                .ok_or("out of range")?;
            pos += 1;
        }
        if matches!(self.bytes.get(pos), Some(b'.' | b'e' | b'E')) {
            return Ok(None);
        }
        if pos == digits_start {
            return Err("not a number".into());
        }
        self.pos = pos;
        Ok(Some((negative, magnitude)))
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

/// Reading one JSON element as an element type, with range checks.
trait Element: Sized {
    const DTYPE: DataType;
    fn scan(scanner: &mut Scanner<'_>) -> Result<Self, String>;
}

macro_rules! integer_element {
    ($($t:ty => $dtype:ident),*) => {$(
        impl Element for $t {
            const DTYPE: DataType = DataType::$dtype;
            fn scan(scanner: &mut Scanner<'_>) -> Result<Self, String> {
                match scanner.integer()? {
                    Some((false, m)) => <$t>::try_from(m).map_err(|_| "out of range".to_string()),
                    Some((true, m)) => i128::from(m)
                        .checked_neg()
                        .and_then(|v| <$t>::try_from(v).ok())
                        .ok_or_else(|| "out of range".to_string()),
                    None => {
                        let v: f64 = scanner.float()?;
                        if v.fract() == 0.0 && v >= <$t>::MIN as f64 && v <= <$t>::MAX as f64 {
                            Ok(v as $t)
                        } else {
                            Err("not a whole number in range".into())
                        }
                    }
                }
            }
        }
    )*};
}
integer_element!(u8 => U8, u16 => U16, u32 => U32, u64 => U64, i8 => I8, i16 => I16, i32 => I32, i64 => I64);

impl Element for f32 {
    const DTYPE: DataType = DataType::F32;
    #[inline(always)]
    fn scan(scanner: &mut Scanner<'_>) -> Result<Self, String> {
        scanner.float()
    }
}

impl Element for f64 {
    const DTYPE: DataType = DataType::F64;
    #[inline(always)]
    fn scan(scanner: &mut Scanner<'_>) -> Result<Self, String> {
        scanner.float()
    }
}

impl Element for f16 {
    const DTYPE: DataType = DataType::F16;
    fn scan(scanner: &mut Scanner<'_>) -> Result<Self, String> {
        scanner.float::<f64>().map(f16::from_f64)
    }
}

impl Element for bf16 {
    const DTYPE: DataType = DataType::BF16;
    fn scan(scanner: &mut Scanner<'_>) -> Result<Self, String> {
        scanner.float::<f64>().map(bf16::from_f64)
    }
}

impl Element for bool {
    const DTYPE: DataType = DataType::Bool;
    fn scan(scanner: &mut Scanner<'_>) -> Result<Self, String> {
        let rest = &scanner.bytes[scanner.pos..];
        let (value, length) = if rest.starts_with(b"true") {
            (true, 4)
        } else if rest.starts_with(b"false") {
            (false, 5)
        } else {
            match scanner.integer()? {
                Some((false, 0)) => return Ok(false),
                Some((false, 1)) => return Ok(true),
                _ => return Err("use true/false (or 0/1)".into()),
            }
        };
        scanner.pos += length;
        Ok(value)
    }
}

impl Element for String {
    const DTYPE: DataType = DataType::String;
    fn scan(scanner: &mut Scanner<'_>) -> Result<Self, String> {
        if scanner.peek() != Some(b'"') {
            return Err("expected a string".into());
        }
        // serde_json handles escapes; the stream reports how far it read.
        let mut strings = serde_json::Deserializer::from_slice(&scanner.bytes[scanner.pos..])
            .into_iter::<String>();
        let value = strings
            .next()
            .ok_or("expected a string")?
            .map_err(|e| format!("invalid string: {e}"))?;
        scanner.pos += strings.byte_offset();
        Ok(value)
    }
}

/// Writes one tensor as a nested array, or several as an object keyed by
/// their names (in `specs` order) — how the tensor handler answers, and how
/// explanations are shown.
pub fn write_named_tensors(
    out: &mut Vec<u8>,
    specs: &[TensorSpec],
    tensors: &[Tensor],
    skip_batch: bool,
) {
    if let [only] = tensors {
        write_tensor(out, only, skip_batch);
        return;
    }
    out.push(b'{');
    for (i, (spec, tensor)) in specs.iter().zip(tensors).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, &spec.name);
        out.push(b':');
        write_tensor(out, tensor, skip_batch);
    }
    out.push(b'}');
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

macro_rules! write_float {
    ($($t:ty),*) => {$(
        impl WriteJson for $t {
            fn write_json(&self, out: &mut Vec<u8>) {
                if self.is_finite() {
                    out.extend_from_slice(ryu::Buffer::new().format_finite(*self).as_bytes());
                } else {
                    out.extend_from_slice(b"null");
                }
            }
        }
    )*};
}
write_float!(f32, f64);

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
mod tests;

/// Generated inputs: any bytes give a tensor or a message, never a panic;
/// what parses is consistent, and real arrays come back exactly.
#[cfg(test)]
mod properties;
