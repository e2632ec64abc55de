//! The vocabulary every layer shares: tensors, model identities, the
//! request-path error and server events. It depends on nothing else in the
//! crate.

mod error;
mod event;
mod tensor;

pub use error::Error;
pub use event::{EventQueue, EventSink, Handled, ServerEvent};
pub use tensor::{DataType, Tensor, TensorData};

/// One version of one model, as clients address it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelId {
    pub name: String,
    pub version: String,
}

impl ModelId {
    /// TorchServe's rule for model names: a letter, then letters, digits,
    /// `_`, `-` and `.`.
    pub fn is_valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    }
}

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (version {})", self.name, self.version)
    }
}

/// The inputs of one request, in the model's input order, each with its rows
/// on axis 0.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    pub inputs: Vec<Tensor>,
}

impl InferRequest {
    /// Rows this request occupies in a batch (and in the queue).
    pub fn rows(&self) -> usize {
        self.inputs.first().map_or(1, Tensor::rows)
    }
}

/// The outputs computed for one request, in the model's output order.
#[derive(Debug, Clone, PartialEq)]
pub struct InferResponse {
    pub outputs: Vec<Tensor>,
}

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
