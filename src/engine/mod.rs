//! The ONLY module that uses `ort`: loading the ONNX Runtime library, the
//! process-wide environment, execution-provider policy, building sessions,
//! reading their I/O metadata, and converting [`Tensor`]s to and from ORT values.
//!
//! It knows nothing of queues, HTTP or model stores: callers hand it bytes or a
//! path and get back an [`EngineSession`] that runs batches. It imports nothing
//! above it; the registry adapts [`EngineSession`] to the scheduler's `Runner`.
//!
//! [`Tensor`]: crate::types::Tensor

mod convert;
mod session;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

pub use session::{Device, DeviceRequest, EngineSession, OnnxSource, RunControl, SessionOptions};

/// Failures of the engine, from loading the library to running a batch.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("the ONNX Runtime library was not found at {}", path.display())]
    LibraryMissing { path: PathBuf },
    #[error("the file at {} is not a usable ONNX Runtime library: {detail}", path.display())]
    LibraryInvalid { path: PathBuf, detail: String },
    #[error("could not create the ONNX Runtime environment: {0}")]
    Environment(String),
    #[error("the ONNX Runtime environment is not initialised (engine::init was not called)")]
    NotInitialised,
    #[error("ONNX Runtime could not load the model: {0}")]
    Session(String),
    #[error("the CUDA execution provider could not be used: {0}")]
    Cuda(String),
    #[error("{0}")]
    UnsupportedIo(String),
    #[error("{0}")]
    Run(String),
    #[error("the run was cancelled because it passed its deadline")]
    Terminated,
    #[error(
        "output '{output}' has shape {shape:?} for a batch of {rows} rows, so it cannot be split per request; \
         set batchSize: 1 for this model"
    )]
    Unsplittable {
        output: String,
        shape: Vec<usize>,
        rows: usize,
    },
}

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();

/// Loads the ONNX Runtime shared library at `library` and creates the one
/// environment this process may ever have. Returns ORT's build description.
pub fn init(library: &Path) -> Result<String, EngineError> {
    if !library.is_file() {
        return Err(EngineError::LibraryMissing {
            path: library.to_path_buf(),
        });
    }
    let invalid = |detail: String| EngineError::LibraryInvalid {
        path: library.to_path_buf(),
        detail,
    };
    let builder = ort::init_from(library).map_err(|e| invalid(e.to_string()))?;
    let environment = builder
        .with_name("ortserve")
        .with_telemetry(false)
        .build()
        .map_err(|e| EngineError::Environment(e.to_string()))?;
    // A second call (tests in one process) keeps the first environment.
    let _ = ENVIRONMENT.set(environment);
    Ok(ort::info().to_string())
}

fn environment() -> Result<&'static Environment, EngineError> {
    ENVIRONMENT.get().ok_or(EngineError::NotInitialised)
}
