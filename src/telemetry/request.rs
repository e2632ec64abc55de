//! One request's telemetry: its spans (the log span that carries the request
//! id, and the OpenTelemetry server span that joins the caller's trace), its
//! access-log line, and its per-model metrics.
//!
//! The protocol layer wraps each request in an [`ObservedRequest`]; the code
//! that picks the model calls [`attach`], and the scheduler reads the span to
//! link from with [`QueuedTrace::start`]. Both find the request through a
//! task-local scope, so nothing between them has to carry it.
//!
//! It must not decide anything about the request: it only watches it. Nor
//! does it know an HTTP library: the protocol layer hands it the method and
//! path as text and its headers through [`TraceHeaders`].

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::metrics::{ModelMetrics, Protocol, Rejection};
use super::{access_log_enabled, tracing_enabled};
use crate::types::{ModelId, prefix_within};

tokio::task_local! {
    static SCOPE: Arc<RequestScope>;
}

/// What the request's own task learns while it runs.
#[derive(Default)]
struct RequestScope {
    model: OnceLock<Arc<ModelMetrics>>,
    /// A generation's prompt and generated token counts, for the access log.
    tokens: OnceLock<(usize, usize)>,
    /// The server span, for the batch's inference span to link to.
    link: Option<SpanContext>,
}

/// Records that the current request is served by this model version: it is
/// counted in that version's metrics and access-log line from now on.
pub fn attach(metrics: &Arc<ModelMetrics>) {
    let _ = SCOPE.try_with(|scope| {
        if scope.model.set(metrics.clone()).is_ok() {
            metrics.in_flight(1);
        }
    });
}

/// Where a generation reports its token counts for its request's access-log
/// line: taken in the request's task, written from wherever the generation
/// is read (a streamed body is read outside that task).
pub struct TokenReport(Option<Arc<RequestScope>>);

impl TokenReport {
    pub fn current() -> TokenReport {
        TokenReport(SCOPE.try_with(Arc::clone).ok())
    }

    pub fn record(&self, prompt: usize, generated: usize) {
        if let Some(scope) = &self.0 {
            let _ = scope.tokens.set((prompt, generated));
        }
    }
}

/// A request's headers as trace-context propagation reads them (W3C
/// `traceparent`); the protocol layer implements it for its header map.
pub trait TraceHeaders {
    fn get(&self, key: &str) -> Option<&str>;
    fn keys(&self) -> Vec<&str>;
}

/// A request being served, from the first byte to its answer or to the
/// client going away (dropped unfinished: counted as `client_gone`).
pub struct ObservedRequest {
    scope: Arc<RequestScope>,
    protocol: Protocol,
    started: Instant,
    /// Kept only for the access log.
    line: Option<RequestLine>,
    log_span: tracing::Span,
    server_span: tracing::Span,
    finished: bool,
}

/// The access log's view of the request line.
struct RequestLine {
    method: String,
    path: String,
}

/// The most of a request's path an access-log line repeats: a path is a
/// client's text, and hyper lets one run to 64 KiB.
const MAX_LOGGED_PATH: usize = 256;

/// `path` cut to [`MAX_LOGGED_PATH`] bytes, at a character's edge.
fn logged_path(path: &str) -> &str {
    prefix_within(path, MAX_LOGGED_PATH)
}

impl ObservedRequest {
    /// Opens the request's spans; an incoming W3C `traceparent` becomes the
    /// server span's parent. `route` is the matched route template.
    pub fn start(
        protocol: Protocol,
        method: &str,
        path: &str,
        route: &str,
        request_id: &str,
        headers: &dyn TraceHeaders,
    ) -> ObservedRequest {
        let (server_span, link) = if tracing_enabled() {
            server_span(method, route, request_id, headers)
        } else {
            (tracing::Span::none(), None)
        };
        let log_span = tracing::info_span!(target: "ortserve::request", parent: &server_span, "request", request_id);
        ObservedRequest {
            scope: Arc::new(RequestScope {
                model: OnceLock::new(),
                tokens: OnceLock::new(),
                link,
            }),
            protocol,
            started: Instant::now(),
            line: access_log_on().then(|| RequestLine {
                method: method.into(),
                path: logged_path(path).into(),
            }),
            log_span,
            server_span,
            finished: false,
        }
    }

    /// Calls `start` inside the request's spans and scope: a handler that
    /// resolves and attaches its model before its future is first polled
    /// does that here, as `run` does the rest.
    pub fn enter<R>(&self, start: impl FnOnce() -> R) -> R {
        let _server = self.server_span.enter();
        let _log = self.log_span.enter();
        SCOPE.sync_scope(self.scope.clone(), start)
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
        // OpenTelemetry integers are signed; unsigned fields export as text.
        self.server_span
            .record("http.response.status_code", i64::from(status));
        if status >= 500 {
            self.server_span.record("otel.status_code", "ERROR");
        }
        let model = self.scope.model.get();
        if let Some(metrics) = model {
            metrics.request(self.protocol, status, elapsed);
            if let Some(reason) = rejection {
                metrics.rejected(reason);
            }
        }
        self.access_log(Some(status), elapsed, "request served");
    }

    /// The access-log line: method, path, status, time, model and version.
    fn access_log(&self, status: Option<u16>, elapsed: Duration, message: &str) {
        let Some(line) = &self.line else {
            return;
        };
        let id = self.scope.model.get().map(|m| m.id());
        let (name, version) = id.map_or(("", ""), |id| (id.name.as_str(), id.version.as_str()));
        let tokens = self.scope.tokens.get();
        let (prompt_tokens, generated_tokens) = (tokens.map(|t| t.0), tokens.map(|t| t.1));
        self.log_span.in_scope(|| {
            tracing::info!(target: "ortserve::access", method = %line.method, path = %line.path, status, duration_us = elapsed.as_micros() as u64, model = %name, version = %version, prompt_tokens, generated_tokens, "{message}");
        });
    }
}

/// The server span, child of the caller's `traceparent`, and its context
/// for the batch's inference span to link to.
fn server_span(
    method: &str,
    route: &str,
    request_id: &str,
    headers: &dyn TraceHeaders,
) -> (tracing::Span, Option<SpanContext>) {
    let span = tracing::info_span!(
        target: "ortserve::otel",
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = route,
        http.response.status_code = Empty,
        ortserve.request_id = request_id,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    let _ = span.set_parent(parent);
    let link = span.context().span().span_context().clone();
    (span, Some(link))
}

impl Drop for ObservedRequest {
    fn drop(&mut self) {
        let Some(metrics) = self.scope.model.get() else {
            return;
        };
        metrics.in_flight(-1);
        if self.finished {
            return;
        }
        let elapsed = self.started.elapsed();
        metrics.abandoned(elapsed);
        self.access_log(
            None,
            elapsed,
            "dropped before the answer (client disconnected)",
        );
    }
}

/// Whether access-log lines are written: on in the settings and not
/// filtered out by `RUST_LOG`.
fn access_log_on() -> bool {
    access_log_enabled() && tracing::enabled!(target: "ortserve::access", tracing::Level::INFO)
}

/// A queued request's share of tracing: the span that measures its queue
/// wait (ended when a worker takes it) and the server span the batch links
/// to. Empty, one word in the queued job, when tracing is off.
pub struct QueuedTrace(Option<Box<Traced>>);

struct Traced {
    wait: tracing::Span,
    link: Option<SpanContext>,
}

impl QueuedTrace {
    /// Called by the request's task as it queues the request.
    pub fn start() -> QueuedTrace {
        if !tracing_enabled() {
            return QueuedTrace(None);
        }
        QueuedTrace(Some(Box::new(Traced {
            wait: tracing::info_span!(target: "ortserve::otel", "queue wait"),
            link: SCOPE.try_with(|s| s.link.clone()).ok().flatten(),
        })))
    }

    /// Whether there is anything to end or link to.
    pub fn is_traced(&self) -> bool {
        self.0.is_some()
    }
}

/// The span of one `run()` on a worker thread, linked to the server span of
/// every request in the batch. Ends each request's queue-wait span.
pub fn batch_span(model: &ModelId, rows: usize, traces: Vec<QueuedTrace>) -> tracing::Span {
    let traced: Vec<Traced> = traces.into_iter().filter_map(|t| t.0.map(|b| *b)).collect();
    // Sampled with the requests it serves: a batch of unsampled requests
    // makes no span (the span itself would be sampled as a new root).
    let sampled = traced
        .iter()
        .any(|t| t.link.as_ref().is_some_and(SpanContext::is_sampled));
    if !sampled {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: "ortserve::otel",
        "inference",
        ortserve.model = %model.name,
        ortserve.version = %model.version,
        // OpenTelemetry integers are signed; unsigned fields export as text.
        ortserve.batch_rows = rows as i64,
        ortserve.batch_requests = traced.len() as i64,
    );
    for trace in traced {
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

struct HeaderExtractor<'a>(&'a dyn TraceHeaders);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_path_is_cut_at_a_character_edge() {
        assert_eq!(logged_path("/ping"), "/ping");
        let long = format!("/models/{}", "z".repeat(60_000));
        assert_eq!(logged_path(&long).len(), MAX_LOGGED_PATH);
        // 'é' is two bytes: the cut falls inside one at 256 and backs off.
        let accented = format!("/{}", "é".repeat(200));
        assert_eq!(logged_path(&accented).len(), 255);
        assert!(accented.starts_with(logged_path(&accented)));
    }
}
