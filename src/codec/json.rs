//! JSON ⇄ tensors without intermediate `serde_json::Value` trees: nested
//! arrays are scanned byte by byte straight into one typed buffer (shape learnt
//! on the way, element count capped before memory grows, floats parsed by
//! [`decimal`] and correctly rounded to the target type), and outputs are
//! written with `itoa`/`zmij` straight into the response buffer. The bodies
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
    let (data, nesting) = scan(json, input, dtype, max_elements, 0)?;
    Ok(Tensor::new(nesting.shape(data.len())?, data))
}

/// The elements of a JSON value whose shape the request declares apart
/// (v2's `shape`, which names `count` elements): read as [`parse_tensor`]
/// reads them, flat or nested (ragged arrays refused), but with no shape
/// built, and with room for `count` reserved up front as far as the value
/// could hold that many (each element takes two bytes or more).
pub fn parse_elements(
    json: &[u8],
    input: &str,
    dtype: DataType,
    max_elements: usize,
    count: usize,
) -> Result<TensorData, String> {
    let capacity = count.min(json.len() / 2 + 1);
    let (data, nesting) = scan(json, input, dtype, max_elements, capacity)?;
    nesting.check(data.len())?;
    Ok(data)
}

/// Scans one value into a typed buffer of `capacity`; returns it with what
/// the nesting said of the shape.
fn scan<'a>(
    json: &'a [u8],
    input: &'a str,
    dtype: DataType,
    max_elements: usize,
    capacity: usize,
) -> Result<(TensorData, ShapeTracker<'a>), String> {
    macro_rules! read {
        ($variant:ident, $t:ty) => {{
            let mut out: Vec<$t> = Vec::with_capacity(capacity);
            let nesting = Scanner {
                bytes: json,
                pos: 0,
                input,
            }
            .read_nested(&mut out, max_elements)?;
            Ok((TensorData::$variant(out), nesting))
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

impl<'a> Scanner<'a> {
    /// Reads nested arrays (or one scalar) of `T` into `out`; returns what
    /// their nesting says of the shape.
    fn read_nested<T: Element>(
        mut self,
        out: &mut Vec<T>,
        max: usize,
    ) -> Result<ShapeTracker<'a>, String> {
        let mut shape = ShapeTracker::new(self.input);
        self.skip_whitespace();
        if self.peek() != Some(b'[') {
            out.push(self.element()?);
            self.expect_end()?;
            return Ok(shape);
        }
        loop {
            self.skip_whitespace();
            match self.peek() {
                Some(b'[') => {
                    self.pos += 1;
                    shape.array_opened()?;
                    continue;
                }
                Some(b']') => {
                    self.pos += 1;
                    if shape.array_ended()? {
                        break;
                    }
                }
                Some(b',') => return Err(self.syntax("a value")),
                Some(_) if shape.inside_array() => {
                    shape.leaf()?;
                    let run = self.read_run(out, max)?;
                    shape.elements_read(run);
                    continue;
                }
                _ => return Err(self.syntax("a value or ']'")),
            }
            self.after_value()?;
        }
        self.expect_end()?;
        Ok(shape)
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
        // `|`, not `||`: on data with random signs a branch on the digit
        // test mispredicted every other number.
        let starts_number = |b: &u8| b.is_ascii_digit() | (*b == b'-');
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

/// Learns the shape of nested arrays as they open and close, and rejects
/// ragged ones. Its bookkeeping lives in fixed arrays on the stack: as
/// `Vec`s it cost two allocations per tensor, more than reading a small
/// tensor's numbers.
struct ShapeTracker<'a> {
    input: &'a str,
    /// Element counts of the arrays open now, outermost first.
    open: [usize; MAX_DEPTH],
    depth: usize,
    /// The length every array at each depth has, once one has ended there.
    dims: [Option<usize>; MAX_DEPTH],
    leaf_depth: Option<usize>,
}

impl<'a> ShapeTracker<'a> {
    fn new(input: &'a str) -> Self {
        ShapeTracker {
            input,
            open: [0; MAX_DEPTH],
            depth: 0,
            dims: [None; MAX_DEPTH],
            leaf_depth: None,
        }
    }

    fn inside_array(&self) -> bool {
        self.depth > 0
    }

    fn array_opened(&mut self) -> Result<(), String> {
        if self.depth == MAX_DEPTH {
            return Err(format!(
                "input '{}' is nested more than {MAX_DEPTH} levels deep",
                self.input
            ));
        }
        self.elements_read(1);
        self.open[self.depth] = 0;
        self.depth += 1;
        Ok(())
    }

    /// Counts `n` elements into the innermost open array, if any.
    fn elements_read(&mut self, n: usize) {
        if let Some(count) = self.depth.checked_sub(1).map(|d| &mut self.open[d]) {
            *count += n;
        }
    }

    /// Closes the innermost open array; true when it was the outermost.
    fn array_ended(&mut self) -> Result<bool, String> {
        self.depth -= 1;
        let (depth, len) = (self.depth, self.open[self.depth]);
        match self.dims[depth] {
            None => self.dims[depth] = Some(len),
            Some(expected) if expected != len => {
                return Err(format!(
                    "input '{}' is ragged: arrays at depth {depth} have lengths {expected} and {len}; \
                     every row must have the same length",
                    self.input
                ));
            }
            Some(_) => {}
        }
        Ok(depth == 0)
    }

    fn leaf(&mut self) -> Result<(), String> {
        match self.leaf_depth {
            None => self.leaf_depth = Some(self.depth),
            Some(d) if d != self.depth => {
                return Err(format!(
                    "input '{}' mixes numbers and arrays at the same level",
                    self.input
                ));
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// The shape the nesting gives `len` elements, if it is rectangular.
    fn shape(&self, len: usize) -> Result<Vec<usize>, String> {
        self.check(len)?;
        Ok(self.dims().collect())
    }

    /// Whether the nesting is rectangular around `len` elements.
    fn check(&self, len: usize) -> Result<(), String> {
        if self.dims().product::<usize>() != len {
            return Err(format!(
                "input '{}' is ragged: its arrays do not form a rectangular tensor",
                self.input
            ));
        }
        Ok(())
    }

    /// Down to the numbers, or without any down to the deepest array that
    /// ended: every array encloses the ones inside it, so the depths that
    /// have a length are the outermost ones.
    fn dims(&self) -> impl Iterator<Item = usize> + '_ {
        let ended = self.dims.iter().take_while(|d| d.is_some()).count();
        let rank = self.leaf_depth.unwrap_or(ended);
        self.dims[..rank].iter().map(|d| d.unwrap_or(0))
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
/// is written without the outer array. An answer of some other number of
/// rows (a model that filters or detects may give none, or several) keeps
/// its outer array: all of its rows, or `[]`.
pub fn write_tensor(out: &mut Vec<u8>, tensor: &Tensor, skip_batch: bool) {
    let shape = if skip_batch && tensor.shape.first() == Some(&1) {
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
                    out.extend_from_slice(zmij::Buffer::new().format_finite(*self).as_bytes());
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
