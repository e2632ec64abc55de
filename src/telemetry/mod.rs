//! Logging setup. ONNX Runtime's own log (target `ort`) is filtered to
//! warnings unless `RUST_LOG` says otherwise.
//!
//! Metrics and tracing export will live here too; nothing else in the crate
//! configures subscribers.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

// Target filters match by prefix, so `ort` would also catch `ortserve`.
const DEFAULT_FILTER: &str = "info,ort=warn,ortserve=info";

/// Installs the global subscriber: human-readable lines on stdout.
pub fn init_logging() {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let filter = EnvFilter::new(directives.as_deref().unwrap_or(DEFAULT_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
}
