//! Wiring: load ONNX Runtime, register and load the models, bind the
//! listener, serve until SIGTERM/SIGINT.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::ServerConfig;
use crate::engine::{self, EngineError};
use crate::protocol::{self, AppState, BodyLimits};
use crate::registry::ModelRegistry;
use crate::store;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "{0}\n  Pass --onnxruntime-lib PATH (or set ORT_DYLIB_PATH) to libonnxruntime.so from ONNX Runtime 1.31 or newer, \
         or run `make setup` to install ONNX Runtime 1.32.0 into .onnxruntime/"
    )]
    OnnxRuntime(EngineError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {address}: {detail}")]
    Bind { address: String, detail: String },
    #[error("the server stopped unexpectedly: {0}")]
    Serve(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(String),
}

/// Runs the server on a new multi-threaded runtime until it is told to stop.
pub fn run(config: ServerConfig) -> Result<(), StartupError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ortserve-io")
        .build()
        .map_err(|e| StartupError::Runtime(e.to_string()))?;
    runtime.block_on(serve(config))
}

async fn serve(config: ServerConfig) -> Result<(), StartupError> {
    let build = engine::init(&config.onnxruntime_library).map_err(StartupError::OnnxRuntime)?;
    tracing::info!(library = %config.onnxruntime_library.display(), "ONNX Runtime loaded: {build}");
    tracing::info!("effective configuration:\n{}", config.summary());

    let registry = Arc::new(ModelRegistry::new(config.allow_no_models));
    let found = store::discover(config.model_store.as_deref(), &config.load_models);
    registry.load_all(found, &config);

    let limits = BodyLimits {
        max_request_size: config.max_request_size,
        max_response_size: config.max_response_size,
    };
    let app = protocol::inference_router(AppState::new(registry, limits));
    let bind_error = |detail: String| StartupError::Bind {
        address: config.inference_address.to_string(),
        detail,
    };
    let listener = TcpListener::bind(config.inference_address)
        .await
        .map_err(|e| bind_error(e.to_string()))?;
    let address = listener
        .local_addr()
        .map_err(|e| bind_error(e.to_string()))?;
    tracing::info!(%address, "Inference API listening on http://{address}");
    axum::serve(listener, app)
        .with_graceful_shutdown(stop_signal())
        .await
        .map_err(|e| StartupError::Serve(e.to_string()))?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stop signal received; finishing in-flight requests");
}
