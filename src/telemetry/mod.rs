//! Logs, metrics and traces. Nothing else in the crate configures a
//! subscriber, owns a metric family or talks to an OpenTelemetry exporter.
//!
//! * Logs: `tracing` lines as text or JSON ([`LogFormat`]); ONNX Runtime's
//!   own log (target `ort`) at warnings unless `RUST_LOG` says otherwise.
//! * [`metrics`]: Prometheus families and per-model-version handles.
//! * [`request`]: one request's spans, access-log line and metrics.
//! * `simpleclient`: TorchServe's flavour of the Prometheus text format.
//! * [`findings`]: warnings and errors kept for `ortserve check`'s report
//!   instead of printed.
//! * Traces: exported over OTLP/HTTP only when `OTEL_EXPORTER_OTLP_ENDPOINT`
//!   (or `..._TRACES_ENDPOINT`) is set. The trace spans all have the target
//!   `ortserve::otel`, which the log output never shows, so with export off
//!   they are disabled at their call sites and cost nothing.
//!
//! It must not know about models beyond their ids, nor about HTTP routing.

pub mod findings;
pub mod metrics;
pub mod request;
mod simpleclient;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

pub use metrics::{
    Metrics, MetricsSettings, ModelMetrics, Protocol, Rejection, Timed, VersionGauges,
    VersionStatistics,
};
pub use request::{ObservedRequest, QueuedTrace, TokenReport, TraceHeaders, attach, batch_span};

// Target filters match by prefix, so `ort` would also catch `ortserve`.
const DEFAULT_FILTER: &str = "info,ort=warn,ortserve=info";
/// Appended to every log filter: trace spans are for the exporter only.
const NO_TRACE_SPANS_IN_LOGS: &str = "ortserve::otel=off";
const TRACE_TARGET: &str = "ortserve::otel";

/// How long the last spans may hold up the exit (a collector may be gone).
const TRACE_FLUSH: Duration = Duration::from_secs(2);

static TRACING: AtomicBool = AtomicBool::new(false);
static ACCESS_LOG: AtomicBool = AtomicBool::new(true);

/// Whether spans are exported (an OTLP endpoint is configured).
fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

fn access_log_enabled() -> bool {
    ACCESS_LOG.load(Ordering::Relaxed)
}

/// `access_log` in config.properties: one line per request, or none.
pub fn set_access_log(enabled: bool) {
    ACCESS_LOG.store(enabled, Ordering::Relaxed);
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, with the request span's fields.
    Json,
}

/// What must be flushed before the process exits.
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered; called once, at exit.
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(e) = provider.shutdown_with_timeout(TRACE_FLUSH)
        {
            tracing::warn!("could not flush the last trace spans: {e}");
        }
    }
}

/// Installs the global subscriber: the log output, and span export when the
/// environment asks for it.
pub fn init(format: LogFormat) -> Telemetry {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let filter = EnvFilter::new(format!(
        "{},{NO_TRACE_SPANS_IN_LOGS}",
        directives.as_deref().unwrap_or(DEFAULT_FILTER)
    ));
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let (provider, export_error) = match tracer_provider() {
        Ok(provider) => (provider, None),
        Err(e) => (None, Some(e)),
    };
    let logs = Registry::default().with(logs.with_filter(filter));
    // Two stacks rather than an `Option` layer: an absent layer would make
    // every call site "sometimes" enabled, so disabled spans and events
    // would be built and filtered one by one on the request path.
    match &provider {
        Some(provider) => logs
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("ortserve"))
                    .with_filter(Targets::new().with_target(TRACE_TARGET, tracing::Level::TRACE)),
            )
            .init(),
        None => logs.init(),
    }
    if let Some(e) = export_error {
        tracing::error!("trace export is off: {e}");
    }
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        TRACING.store(true, Ordering::Relaxed);
        tracing::info!("exporting trace spans over OTLP/HTTP");
    }
    Telemetry {
        tracer_provider: provider,
    }
}

/// An OTLP/HTTP exporter configured by the standard `OTEL_*` variables
/// (endpoint, headers, timeout, sampler, batch delays), when an endpoint is
/// set and the SDK is not disabled.
fn tracer_provider() -> Result<Option<SdkTracerProvider>, String> {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    if disabled
        || !(set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    {
        return Ok(None);
    }
    for name in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ] {
        if let Ok(protocol) = std::env::var(name)
            && protocol != "http/protobuf"
        {
            return Err(format!(
                "{name}={protocol}: ortserve exports over http/protobuf only; unset it or set http/protobuf"
            ));
        }
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named_in_attributes = std::env::var("OTEL_RESOURCE_ATTRIBUTES")
        .is_ok_and(|attributes| attributes.contains("service.name="));
    if !set("OTEL_SERVICE_NAME") && !named_in_attributes {
        resource = resource.with_service_name("ortserve");
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}
