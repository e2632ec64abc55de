//! The one error type of the request path. Every failure a caller can see is a
//! variant here, with one HTTP status and one TorchServe exception name, so the
//! protocol adapters only choose the body shape.

/// What went wrong with one inference request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("Model not found: {0}")]
    ModelNotFound(String),
    #[error("Model version: {version} does not exist for model: {model}")]
    VersionNotFound { model: String, version: String },
    /// The request is malformed or does not fit the model; the message names
    /// the field or setting to fix.
    #[error("{0}")]
    BadInput(String),
    /// The request is larger than a configured limit; the message names it.
    #[error("{0}")]
    TooLarge(String),
    #[error(
        "Model \"{model}\" is overloaded: its queue already holds its limit of {capacity} rows \
         (jobQueueSize); retry later or raise jobQueueSize/maxWorkers"
    )]
    QueueFull { model: String, capacity: usize },
    /// The request's body does not fit in what `max_request_memory`
    /// leaves beside the bodies and unsent answers already held.
    #[error(
        "the server is busy: this request's body does not fit in the {limit} bytes that request \
         bodies and unsent answers may hold together (max_request_memory); retry later or raise \
         max_request_memory"
    )]
    MemoryFull { limit: usize },
    #[error("Model \"{model}\" is not available: {reason}")]
    Unavailable { model: String, reason: String },
    #[error(
        "Model \"{model}\" did not answer within responseTimeout={seconds}s; \
         the request was cancelled (raise responseTimeout in model-config.yaml if this is expected)"
    )]
    Timeout { model: String, seconds: u64 },
    #[error("the request body did not arrive within {seconds}s; send it at once")]
    BodyTimeout { seconds: u64 },
    #[error("Prediction failed: {0}")]
    Inference(String),
    #[error("{0}")]
    ResponseTooLarge(String),
    #[error("{0}")]
    NotImplemented(String),
    #[error("Requested resource is not found, please refer to API document.")]
    ResourceNotFound,
    #[error("Requested method is not allowed, please refer to API document.")]
    MethodNotAllowed,
    /// Registering or unregistering while the model API is off: TorchServe's
    /// 405 and its words, then the setting that turns it on.
    #[error(
        "Requested method is not allowed, please refer to API document. Registering and \
         unregistering models is off: start ortserve with enable_model_api=true \
         (or --enable-model-api)"
    )]
    ModelApiOff,
    /// A control-plane change that clashes with the model set as it is
    /// (already registered, owned by a declaration file); the message says why.
    #[error("{0}")]
    Conflict(String),
    /// A registered model could not start; the message names it and why.
    #[error("{0}")]
    LoadFailed(String),
    /// Unregistering a model's default version while others remain.
    #[error("Cannot remove default version for model {model}")]
    DefaultVersionInUse { model: String },
}

impl Error {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Error::ModelNotFound(_) | Error::VersionNotFound { .. } | Error::ResourceNotFound => {
                404
            }
            Error::BadInput(_) => 400,
            Error::BodyTimeout { .. } => 408,
            Error::MethodNotAllowed | Error::ModelApiOff => 405,
            Error::TooLarge(_) => 413,
            Error::Inference(_) | Error::ResponseTooLarge(_) | Error::LoadFailed(_) => 500,
            Error::QueueFull { .. } | Error::MemoryFull { .. } | Error::Unavailable { .. } => 503,
            Error::NotImplemented(_) => 501,
            Error::Timeout { .. } => 504,
            Error::Conflict(_) => 409,
            Error::DefaultVersionInUse { .. } => 403,
        }
    }

    /// TorchServe's `type` field: the Java exception class it would have thrown.
    pub fn torchserve_type(&self) -> &'static str {
        match self {
            Error::ModelNotFound(_) => "ModelNotFoundException",
            Error::VersionNotFound { .. } => "ModelVersionNotFoundException",
            Error::BadInput(_) => "BadRequestException",
            Error::TooLarge(_) => "RequestEntityTooLargeException",
            Error::QueueFull { .. } | Error::MemoryFull { .. } | Error::Unavailable { .. } => {
                "ServiceUnavailableException"
            }
            Error::Timeout { .. } | Error::BodyTimeout { .. } => "RequestTimeoutException",
            Error::Inference(_) | Error::ResponseTooLarge(_) | Error::LoadFailed(_) => {
                "InternalServerException"
            }
            Error::ResourceNotFound => "ResourceNotFoundException",
            Error::NotImplemented(_) => "NotImplementedException",
            Error::MethodNotAllowed | Error::ModelApiOff => "MethodNotAllowedException",
            Error::Conflict(_) => "ConflictStatusException",
            Error::DefaultVersionInUse { .. } => "InvalidModelVersionException",
        }
    }

    /// Seconds a client should wait before retrying, for the `Retry-After` header.
    pub fn retry_after_secs(&self) -> Option<u32> {
        match self {
            Error::QueueFull { .. } | Error::MemoryFull { .. } | Error::Unavailable { .. } => {
                Some(1)
            }
            _ => None,
        }
    }
}
