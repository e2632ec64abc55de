//! One request's telemetry: its spans (the log span that carries the request
//! id, and the OpenTelemetry server span that joins the caller's trace), its
//! access-log line, and its per-model metrics.
//!
//! The protocol layer wraps each request in an [`ObservedRequest`]; the code
//! that picks the model calls [`attach`], and the scheduler reads the span to
//! link from with [`QueuedTrace::start`]. Both find the request through a
//! task-local scope, so nothing between them has to carry it.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::http::{HeaderMap, Method};
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::metrics::{ModelMetrics, Protocol, Rejection};
use super::{access_log_enabled, tracing_enabled};
use crate::types::ModelId;

tokio::task_local! {
    static SCOPE: Arc<RequestScope>;
}

/// What the request's own task learns while it runs.
#[derive(Default)]
struct RequestScope {
    model: OnceLock<(ModelId, Arc<ModelMetrics>)>,
    /// The server span, for the batch's inference span to link to.
    link: Option<SpanContext>,
}

/// Records that the current request is served by this model version: it is
/// counted in that version's metrics and access-log line from now on.
pub fn attach(model: &ModelId, metrics: &Arc<ModelMetrics>) {
    let _ = SCOPE.try_with(|scope| {
        if scope.model.set((model.clone(), metrics.clone())).is_ok() {
            metrics.in_flight(1);
        }
    });
}

/// A request being served, from the first byte to its answer or to the
/// client going away (dropped unfinished: counted as `client_gone`).
pub struct ObservedRequest {
    scope: Arc<RequestScope>,
    protocol: Protocol,
    started: Instant,
    method: Method,
    path: String,
    log_span: tracing::Span,
    server_span: tracing::Span,
    finished: bool,
}

impl ObservedRequest {
    /// Opens the request's spans; an incoming W3C `traceparent` becomes the
    /// server span's parent. `route` is the matched route template.
    pub fn start(
        protocol: Protocol,
        method: &Method,
        path: &str,
        route: &str,
        request_id: &str,
        headers: &HeaderMap,
    ) -> ObservedRequest {
        let server_span = tracing::info_span!(
            target: "ortserve::otel",
            "request",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
            http.request.method = %method,
            http.route = route,
            http.response.status_code = Empty,
            ortserve.request_id = request_id,
        );
        let mut link = None;
        if tracing_enabled() {
            let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.extract(&HeaderExtractor(headers))
            });
            let _ = server_span.set_parent(parent);
            link = Some(server_span.context().span().span_context().clone());
        }
        let log_span = tracing::info_span!(target: "ortserve::request", parent: &server_span, "request", request_id);
        ObservedRequest {
            scope: Arc::new(RequestScope {
                model: OnceLock::new(),
                link,
            }),
            protocol,
            started: Instant::now(),
            method: method.clone(),
            // Only the access log reads it: no copy per request without one.
            path: if access_log_enabled() {
                path.to_string()
            } else {
                String::new()
            },
            log_span,
            server_span,
            finished: false,
        }
    }

    /// Runs the request inside its spans and scope.
    pub async fn run<F: Future>(&self, work: F) -> F::Output {
        SCOPE
            .scope(self.scope.clone(), work)
            .instrument(self.log_span.clone())
            .instrument(self.server_span.clone())
            .await
    }

    /// Records the answer: metrics, the server span's status, the access log.
    pub fn finish(mut self, status: u16, rejection: Option<Rejection>) {
        self.finished = true;
        let elapsed = self.started.elapsed();
        self.server_span
            .record("http.response.status_code", i64::from(status));
        let model = self.scope.model.get();
        if let Some((_, metrics)) = model {
            metrics.request(self.protocol, status, elapsed);
            if let Some(reason) = rejection {
                metrics.rejected(reason);
            }
        }
        if access_log_enabled() {
            let (name, version) =
                model.map_or(("", ""), |(id, _)| (id.name.as_str(), id.version.as_str()));
            self.log_span.in_scope(|| {
                tracing::info!(target: "ortserve::access", method = %self.method, path = %self.path, status, duration_us = elapsed.as_micros() as u64, model = %name, version = %version, "request served");
            });
        }
    }
}

impl Drop for ObservedRequest {
    fn drop(&mut self) {
        let Some((_, metrics)) = self.scope.model.get() else {
            return;
        };
        metrics.in_flight(-1);
        if self.finished {
            return;
        }
        metrics.abandoned(self.started.elapsed());
        if access_log_enabled() {
            self.log_span.in_scope(|| {
                tracing::info!(target: "ortserve::access", method = %self.method, path = %self.path, "client disconnected before the answer");
            });
        }
    }
}

/// A queued request's share of tracing: the span that measures its queue
/// wait (ended when a worker takes it) and the server span the batch links
/// to. Empty, and free, when tracing is off.
pub struct QueuedTrace {
    wait: tracing::Span,
    link: Option<SpanContext>,
}

impl QueuedTrace {
    /// Called by the request's task as it queues the request.
    pub fn start() -> QueuedTrace {
        if !tracing_enabled() {
            return QueuedTrace {
                wait: tracing::Span::none(),
                link: None,
            };
        }
        QueuedTrace {
            wait: tracing::info_span!(target: "ortserve::otel", "queue wait"),
            link: SCOPE.try_with(|s| s.link.clone()).ok().flatten(),
        }
    }
}

/// The span of one `run()` on a worker thread, linked to the server span of
/// every request in the batch. Ends each request's queue-wait span.
pub fn batch_span(model: &ModelId, rows: usize, traces: Vec<QueuedTrace>) -> tracing::Span {
    if !tracing_enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: "ortserve::otel",
        "inference",
        ortserve.model = %model.name,
        ortserve.version = %model.version,
        // OpenTelemetry integers are signed; unsigned fields export as text.
        ortserve.batch_rows = rows as i64,
        ortserve.batch_requests = traces.len() as i64,
    );
    for trace in traces {
        drop(trace.wait);
        if let Some(link) = trace.link {
            span.add_link(link);
        }
    }
    span
}

/// The span around pre-processing; none when tracing is off.
pub fn preprocess_span() -> tracing::Span {
    if !tracing_enabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(target: "ortserve::otel", "preprocess")
}

/// The span around post-processing; none when tracing is off.
pub fn postprocess_span() -> tracing::Span {
    if !tracing_enabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(target: "ortserve::otel", "postprocess")
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
