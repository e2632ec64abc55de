//! The protocols driven as services: each request goes through
//! [`inference_app`] in-process (tower's `oneshot`: no socket, no
//! process) over a registry of the scheduler's fake runners, and each test
//! checks the status, the exact body and the headers a client would see.
//!
//! The fake echoes its input (`x` `[-1, 1]` f32 → `y`), so every success
//! has an exact numeric answer. Its workers run on real threads, so the
//! slow cases keep their latencies to tens of milliseconds; the timeout
//! cases pause the test's clock once the model serves, so waiting out a
//! 1 s `responseTimeout` or body timeout takes no time (the fake's threads
//! sleep on the real clock, which pausing does not touch).
//!
//! * [`torchserve`]: `/predictions`, `/explanations`, TorchServe's routes.
//! * [`kserve_v1`]: `/v1/models/{m}:predict`, `:explain`, readiness.
//! * [`kserve_v2`]: `/v2/models/{m}[/versions/{v}]/infer`, JSON and binary.
//! * [`health`]: `/ping` and the v2 readiness endpoints.
//! * [`cases`]: the model states and scripts every protocol's error cases share.
//! * [`allocations`]: allocations per request, counted, per protocol.
//! * [`routes`]: the prediction routes matched without the router answer
//!   as through it.

mod allocations;
mod cases;
mod health;
mod kserve_v1;
mod kserve_v2;
mod routes;
mod torchserve;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::{App, AppState, BodyLimits, inference_app};
use crate::config::ModelConfig;
use crate::registry::ModelRegistry;
use crate::registry::testing::fake_config;
use crate::registry::testing::{FakeModel, Script};
use crate::telemetry::{Metrics, MetricsSettings};
use crate::types::{LoadFailure, LoadFailureKind, ModelId};

/// The model every test serves, and its version.
pub(super) const MODEL: &str = "m";
pub(super) const VERSION: &str = "1.0";

/// TorchServe's byte limits, and a body timeout no test reaches.
fn default_limits() -> BodyLimits {
    BodyLimits {
        max_request_size: 6_553_500,
        max_response_size: 6_553_500,
        body_timeout: Duration::from_secs(30),
        max_request_memory: 64 * 6_553_500,
    }
}

pub(super) fn id(name: &str, version: &str) -> ModelId {
    ModelId {
        name: name.into(),
        version: version.into(),
    }
}

/// A registry and the limits its router runs with.
pub(super) struct Server {
    pub registry: Arc<ModelRegistry>,
    limits: BodyLimits,
    metrics: Arc<Metrics>,
}

impl Server {
    /// No models (so `/ping` is unhealthy unless `allow_empty`).
    pub fn empty(allow_empty: bool) -> Server {
        let metrics = Metrics::new(&MetricsSettings::default()).expect("default metrics");
        Server {
            registry: ModelRegistry::for_tests(allow_empty, metrics.clone()),
            limits: default_limits(),
            metrics,
        }
    }

    /// [`MODEL`] [`VERSION`] served by a fake that follows `script`, with
    /// [`fake_config`] changed by `tweak`.
    pub async fn with_model(
        script: Script,
        tweak: impl FnOnce(&mut ModelConfig),
    ) -> (Server, Arc<FakeModel>) {
        let server = Server::empty(false);
        let fake = server.add(MODEL, VERSION, script, tweak).await;
        (server, fake)
    }

    /// [`MODEL`] [`VERSION`] answering at once.
    pub async fn echo() -> Server {
        Server::with_model(Script::default(), |_| {}).await.0
    }

    /// Serves another version through its own fake.
    pub async fn add(
        &self,
        name: &str,
        version: &str,
        script: Script,
        tweak: impl FnOnce(&mut ModelConfig),
    ) -> Arc<FakeModel> {
        let fake = FakeModel::new(script);
        self.serve(name, version, &fake, tweak).await;
        fake
    }

    /// Serves another version through `fake`.
    pub async fn serve(
        &self,
        name: &str,
        version: &str,
        fake: &Arc<FakeModel>,
        tweak: impl FnOnce(&mut ModelConfig),
    ) {
        let mut config = fake_config();
        tweak(&mut config);
        self.registry
            .serve_fake(id(name, version), fake.factory(), config)
            .await
            .expect("the fake model loads");
    }

    /// A version that failed to load with `message`.
    pub fn add_failed(&self, name: &str, version: &str, message: &str) {
        let failure = LoadFailure::new(LoadFailureKind::BadGraph, message);
        self.registry.add_failed_version(id(name, version), failure);
    }

    pub fn with_limits(mut self, tweak: impl FnOnce(&mut BodyLimits)) -> Server {
        tweak(&mut self.limits);
        self
    }

    pub fn app(&self) -> App {
        let state = AppState::new(self.registry.clone(), self.limits, self.metrics.clone());
        inference_app(state, false)
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(&self, request: Request<Body>) -> Reply {
        send(self.app(), request).await
    }

    /// A POST with its `Content-Length`, as a client sends one.
    pub async fn post(&self, path: &str, content_type: &str, body: impl Into<Bytes>) -> Reply {
        self.send(post(path, content_type, body)).await
    }

    pub async fn post_json(&self, path: &str, body: &str) -> Reply {
        self.post(path, "application/json", body.to_string()).await
    }

    pub async fn call(&self, method: Method, path: &str) -> Reply {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .expect("a valid request");
        self.send(request).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path).await
    }

    /// Rows waiting in [`MODEL`]'s queue.
    pub fn queued_rows(&self) -> usize {
        let gauges = self.registry.gauges();
        gauges.iter().map(|g| g.queue_rows).sum()
    }
}

/// A POST carrying `Content-Length`.
pub(super) fn post(path: &str, content_type: &str, body: impl Into<Bytes>) -> Request<Body> {
    let body: Bytes = body.into();
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .expect("a valid request")
}

/// A POST whose body comes in chunks, with no `Content-Length` (chunked).
pub(super) fn post_streamed(path: &str, body: &str, chunk: usize) -> Request<Body> {
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .as_bytes()
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .expect("a valid request")
}

/// A POST whose body sends `start` and then stalls, never ending.
pub(super) fn post_stalled(path: &str, start: &str) -> Request<Body> {
    use futures_util::StreamExt;
    let first = Ok::<_, std::io::Error>(Bytes::copy_from_slice(start.as_bytes()));
    let stalled = futures_util::stream::iter([first]).chain(futures_util::stream::pending());
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stalled))
        .expect("a valid request")
}

/// The shortest body timeout a message can name (whole seconds).
pub(super) const BODY_TIMEOUT: Duration = Duration::from_secs(1);
pub(super) const BODY_TIMED_OUT: &str =
    "the request body did not arrive within 1s; send it at once";

/// Runs one request through an app and reads the whole answer; checks
/// the headers every answer carries.
pub(super) async fn send(app: App, request: Request<Body>) -> Reply {
    let response = app.oneshot(request).await.expect("apps are infallible");
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .expect("the body is readable")
        .to_bytes();
    let reply = Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    };
    reply.assert_stamped();
    reply
}

/// What came back.
#[derive(Debug)]
pub(super) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a UTF-8 body")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("an ASCII header"))
    }

    /// Status, `Content-Type: application/json` and the exact body.
    #[track_caller]
    pub fn assert_json(&self, status: u16, body: &str) {
        assert_eq!(
            (self.status.as_u16(), self.text()),
            (status, body),
            "{self:?}"
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
    }

    /// As [`assert_json`](Self::assert_json), for an error that carries no
    /// `Retry-After`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, body: &str) {
        self.assert_json(status, body);
        assert_eq!(self.header("retry-after"), None, "{self:?}");
    }

    /// A 503 that tells the client when to retry.
    #[track_caller]
    pub fn assert_retry_later(&self, body: &str) {
        self.assert_json(503, body);
        assert_eq!(self.header("retry-after"), Some("1"), "{self:?}");
    }

    /// Whether the answer closes the connection (its body was left unread).
    pub fn closes(&self) -> bool {
        self.header("connection") == Some("close")
    }

    /// Every answer's request id (a UUID unless the caller sent one) and
    /// TorchServe's no-cache headers.
    #[track_caller]
    fn assert_stamped(&self) {
        let id = self.header("x-request-id").expect("an x-request-id");
        assert!(!id.is_empty());
        assert_eq!(
            self.header("cache-control"),
            Some("no-cache; no-store, must-revalidate, private")
        );
        assert_eq!(self.header("pragma"), Some("no-cache"));
        assert_eq!(
            self.header("expires"),
            Some("Thu, 01 Jan 1970 00:00:00 UTC")
        );
    }
}

/// A JSON string's contents, escaped as serde_json writes them.
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// TorchServe's error body: Gson's pretty print, and a newline.
pub(super) fn torchserve_error(code: u16, kind: &str, message: &str) -> String {
    format!(
        "{{\n  \"code\": {code},\n  \"type\": \"{kind}\",\n  \"message\": \"{}\"\n}}\n",
        escape(message)
    )
}

/// KServe's error body.
pub(super) fn kserve_error(message: &str) -> String {
    format!("{{\"error\":\"{}\"}}", escape(message))
}

/// Polls `done` every few milliseconds, for at most three seconds.
pub(super) async fn eventually(what: &str, done: impl Fn() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(3);
    while !done() {
        assert!(Instant::now() < give_up, "still not so: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
