//! The ONLY module that uses `ort`: loading the ONNX Runtime library, the
//! process-wide environment, execution-provider policy, building sessions,
//! reading their I/O metadata, and converting [`Tensor`]s to and from ORT values.
//!
//! It knows nothing of queues, HTTP or model stores: callers hand it bytes or a
//! path and get back an [`EngineSession`] that runs batches.
//!
//! [`Tensor`]: crate::types::Tensor

mod convert;
mod session;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

pub use session::{
    Device, DeviceRequest, EngineSession, OnnxSource, OptimizationLevel, RunControl, SessionOptions,
};

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

/// CUDA device ordinals this process can see, for spreading workers over
/// them: `CUDA_VISIBLE_DEVICES` when set (CUDA renumbers those from 0), else
/// the `/dev/nvidiaN` nodes the device plugin mounted, else just device 0.
pub fn visible_cuda_devices() -> Vec<i32> {
    let count = match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(list) => list.split(',').filter(|s| !s.trim().is_empty()).count(),
        Err(_) => std::fs::read_dir("/dev")
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|e| {
                        let name = e.file_name();
                        let name = name.to_string_lossy();
                        name.strip_prefix("nvidia")
                            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    })
                    .count()
            })
            .unwrap_or(0),
    };
    (0..count.max(1) as i32).collect()
}
