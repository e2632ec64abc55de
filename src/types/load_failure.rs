//! Why a model version could not load: a kind that operators can count and
//! alert on, and the message that says what to fix.

use std::fmt;

/// What went wrong, in classes an operator acts on differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadFailureKind {
    /// The model store entry: a broken archive, a path outside it, a missing file.
    BadArchive,
    /// `model-config.yaml`, a declaration or the handler choice.
    BadConfig,
    /// ONNX Runtime could not load the graph.
    BadGraph,
    /// The graph loads, but its inputs or outputs do not fit the handler or settings.
    UnsupportedIo,
    /// `deviceType: gpu` and CUDA could not be used.
    CudaUnusable,
    /// Fewer than `minWorkers` were ready within `startupTimeout`.
    StartupTimeout,
    /// The warm-up run at the declared shapes failed.
    WarmupFailed,
    /// Anything else a worker hit while starting (a thread, the library).
    WorkerStart,
}

impl LoadFailureKind {
    /// The label in `/ping`, Events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadFailureKind::BadArchive => "bad_archive",
            LoadFailureKind::BadConfig => "bad_config",
            LoadFailureKind::BadGraph => "bad_graph",
            LoadFailureKind::UnsupportedIo => "unsupported_io",
            LoadFailureKind::CudaUnusable => "cuda_unusable",
            LoadFailureKind::StartupTimeout => "startup_timeout",
            LoadFailureKind::WarmupFailed => "warmup_failed",
            LoadFailureKind::WorkerStart => "worker_start",
        }
    }
}

/// A load failure: its kind and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadFailure {
    pub kind: LoadFailureKind,
    pub message: String,
}

impl LoadFailure {
    pub fn new(kind: LoadFailureKind, message: impl Into<String>) -> LoadFailure {
        LoadFailure {
            kind,
            message: message.into(),
        }
    }

    /// The same failure, its message prefixed (with the artifact it is about).
    pub fn prefixed(self, prefix: &str) -> LoadFailure {
        LoadFailure {
            message: format!("{prefix}: {}", self.message),
            ..self
        }
    }
}

impl fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
