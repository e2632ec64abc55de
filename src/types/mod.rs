//! The vocabulary every layer shares: tensors, model identities, the
//! request-path error and server events. It depends on nothing else in the
//! crate.

mod error;
mod event;
mod load_failure;
mod tensor;

pub use error::Error;
pub use event::{EventQueue, EventSink, Handled, ServerEvent};
pub use load_failure::{LoadFailure, LoadFailureKind};
pub use tensor::{DataType, Tensor, TensorData};

/// One version of one model, as clients address it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelId {
    pub name: String,
    pub version: String,
}

impl ModelId {
    /// The longest model name accepted (names become metric labels, log
    /// fields and paths, so they are bounded like any input).
    pub const MAX_NAME_LEN: usize = 255;
    /// The longest version accepted.
    pub const MAX_VERSION_LEN: usize = 64;

    /// TorchServe's rule for model names: a letter, then letters, digits,
    /// `_`, `-` and `.`; at most [`MAX_NAME_LEN`](Self::MAX_NAME_LEN) bytes.
    pub fn is_valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        name.len() <= Self::MAX_NAME_LEN
            && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    }

    /// Why `name` is not a model name, if it is not; the name is quoted
    /// short, since it may be anything.
    pub fn check_name(name: &str) -> Result<(), String> {
        if Self::is_valid_name(name) {
            return Ok(());
        }
        Err(format!(
            "'{}' is not a valid model name: it must start with a letter, contain only letters, digits, \
             '_', '-' and '.', and be at most {} characters",
            excerpt(name),
            Self::MAX_NAME_LEN
        ))
    }

    /// Why `version` is not a version, if it is not: a letter or digit, then
    /// letters, digits, `.`, `_`, `-` and `+`, at most
    /// [`MAX_VERSION_LEN`](Self::MAX_VERSION_LEN) bytes. So a version is
    /// never a path (`..`, `/`) and always fits a URL segment and a label.
    pub fn check_version(version: &str) -> Result<(), String> {
        let mut chars = version.chars();
        let valid = version.len() <= Self::MAX_VERSION_LEN
            && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
        if valid {
            return Ok(());
        }
        Err(format!(
            "'{}' is not a valid model version: it must start with a letter or digit, contain only \
             letters, digits, '.', '_', '-' and '+', and be at most {} characters (e.g. \"2.0\")",
            excerpt(version),
            Self::MAX_VERSION_LEN
        ))
    }
}

/// How much of a text from outside (a file, a request) a message quotes.
const EXCERPT_CHARS: usize = 40;

/// Outside text for a message or a log line: escaped, and cut to a short
/// prefix, so a file or request can never write a whole foreign line (or a
/// megabyte) into the log.
pub fn excerpt(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    for c in chars.by_ref().take(EXCERPT_CHARS) {
        out.extend(c.escape_debug());
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// How many values of a list from outside a message quotes.
const EXCERPT_VALUES: usize = 8;

/// A list from outside (a shape, a window) for a message: its first few
/// values, and how many there are when that is not all of them.
pub fn list_excerpt<T: std::fmt::Debug>(values: &[T]) -> String {
    if values.len() <= EXCERPT_VALUES {
        return format!("{values:?}");
    }
    let shown = format!("{:?}", &values[..EXCERPT_VALUES]);
    let open = shown.strip_suffix(']').unwrap_or(&shown);
    format!("{open}, … ({} values)]", values.len())
}

/// The most of an error's message an answer carries: a message may quote a
/// request's text (a model name in its path, a key, a shape) of any length,
/// and an answer must not repeat a megabyte back. On gRPC it travels in
/// the trailers, percent-encoded (up to three bytes a byte), and gRPC's
/// clients drop an answer whose headers pass 16 KiB.
pub const MAX_MESSAGE: usize = 1024;

/// `message` cut to [`MAX_MESSAGE`] bytes at a character's edge, ending in
/// `…` where it was cut: every protocol's error answers go through it.
pub fn bounded_message(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        message.truncate(prefix_within(&message, MAX_MESSAGE).len());
        message.push('…');
    }
    message
}

/// The longest prefix of `text` within `max_bytes` that ends at a
/// character's edge: for a bound on outside text that must be kept as is.
pub fn prefix_within(text: &str, max_bytes: usize) -> &str {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (version {})", self.name, self.version)
    }
}

/// The inputs of one request, in the model's input order, each with its rows
/// on axis 0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InferRequest {
    pub inputs: Vec<Tensor>,
}

impl InferRequest {
    /// Rows this request occupies in a batch (and in the queue).
    pub fn rows(&self) -> usize {
        self.inputs.first().map_or(1, Tensor::rows)
    }

    /// Refuses a NUL byte in a string input: ONNX Runtime's strings are C
    /// strings, so it would fail the whole batch it joined; it is the
    /// caller's error, named as such.
    pub fn check_strings(&self, io: &ModelIo) -> Result<(), Error> {
        for (tensor, spec) in self.inputs.iter().zip(&io.inputs) {
            let TensorData::String(values) = &tensor.data else {
                continue;
            };
            if let Some(index) = values.iter().position(|v| v.as_bytes().contains(&0)) {
                return Err(Error::BadInput(format!(
                    "input '{}': element {index} contains a NUL byte, which ONNX Runtime strings cannot hold",
                    spec.name
                )));
            }
        }
        Ok(())
    }
}

/// The outputs computed for one request, in the model's output order.
#[derive(Debug, Clone, PartialEq)]
pub struct InferResponse {
    pub outputs: Vec<Tensor>,
}

/// Axes a tensor from outside (a request, a `config.pbtxt`) may have: more
/// than any model takes (numpy allows 64), few enough that a message can
/// quote a whole shape.
pub const MAX_RANK: usize = 64;

/// One model input or output as the graph declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DataType,
    /// Declared dimensions; -1 marks a dynamic axis.
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// The declared shape as users read it, e.g. `[-1, 4]`.
    pub fn shape_text(&self) -> String {
        format!("{:?}", self.shape)
    }
}

/// A model's inputs and outputs, in graph order.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelIo {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl ModelIo {
    /// True when every input and output has a dynamic axis 0, so requests can
    /// be stacked into one batch along it.
    pub fn has_batch_axis(&self) -> bool {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .all(|spec| spec.shape.first() == Some(&-1))
    }

    /// The first input or output that prevents batching, for error messages.
    pub fn batch_blocker(&self) -> Option<&TensorSpec> {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .find(|spec| spec.shape.first() != Some(&-1))
    }

    /// Zero-filled inputs at the declared shape (dynamic axes as 1), used to
    /// warm a session up before it takes traffic.
    pub fn warmup_inputs(&self) -> Vec<Tensor> {
        self.inputs
            .iter()
            .map(|spec| {
                let shape: Vec<usize> = spec.shape.iter().map(|&d| d.max(1) as usize).collect();
                let len = shape.iter().product();
                Tensor::new(shape, TensorData::zeros(spec.dtype, len))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions_are_bounded_and_never_paths() {
        assert!(ModelId::check_name("resnet-18_v1.2").is_ok());
        assert!(ModelId::check_name(&"a".repeat(255)).is_ok());
        let long = ModelId::check_name(&"a".repeat(5_000_000)).unwrap_err();
        assert!(long.len() < 300, "the message quotes only a prefix: {long}");
        assert!(ModelId::check_name("9lives").is_err());
        for good in ["1.0", "2", "v3", "1.0.0-rc.1+build5"] {
            assert!(ModelId::check_version(good).is_ok(), "{good}");
        }
        for bad in ["../../x", "..", ".1", "1/2", "", "a b", &"1".repeat(65)] {
            assert!(ModelId::check_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn excerpts_are_short_and_escaped() {
        assert_eq!(excerpt("key"), "key");
        assert_eq!(excerpt("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        let cut = excerpt(&"x".repeat(1000));
        assert_eq!(cut, format!("{}…", "x".repeat(40)));
    }

    #[test]
    fn list_excerpts_quote_the_first_values_and_count_the_rest() {
        assert_eq!(list_excerpt(&[1, 2, 3]), "[1, 2, 3]");
        assert_eq!(list_excerpt::<i64>(&[]), "[]");
        assert_eq!(
            list_excerpt(&[7; 1_000_000]),
            "[7, 7, 7, 7, 7, 7, 7, 7, … (1000000 values)]"
        );
    }

    #[test]
    fn a_prefix_within_a_bound_ends_at_a_character() {
        assert_eq!(prefix_within("short", 256), "short");
        assert_eq!(prefix_within("abcdef", 3), "abc");
        // "é" is two bytes: a cut in its middle steps back before it.
        assert_eq!(prefix_within("aé", 2), "a");
        assert_eq!(prefix_within("aé", 3), "aé");
    }
}
