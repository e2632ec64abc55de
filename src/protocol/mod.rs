//! HTTP adapters: each protocol decodes its wire format into the core types,
//! calls the registry and the model's handler and pool, and encodes the
//! answer or error in its own shape.
//!
//! * [`torchserve`]: TorchServe's inference API (`/ping`, `/predictions`,
//!   `/explanations`, `OPTIONS /`).
//! * [`kserve_v1`]: KServe's v1 protocol (`/v1/models/{m}:predict`, `:explain`).
//! * [`kserve_v2`]: the Open Inference Protocol (`/v2/...`), JSON and binary tensors.
//! * [`management`]: TorchServe's management API (`/models...`), on its own
//!   listener or, when the addresses are equal, on the inference listener.
//! * [`repository`]: KServe's and Triton's model repository routes on the
//!   inference listener (`/v1/models/{m}/load`, `/v2/repository/...`).
//! * [`auth`]: token authorization, on every listener when it is on.
//! * [`grpc`]: the Open Inference Protocol and TorchServe's APIs over gRPC,
//!   on listeners of their own.
//! * [`listener`]: the accept loop and the bounds on every connection,
//!   HTTP/1.1 for the REST listeners and HTTP/2 for gRPC's.
//! * [`request`]: the one skeleton every model request runs — resolve the
//!   model, attach the request to its metrics, read the body, check the
//!   answer's size, and answer errors through the protocol's own error type
//!   (`TorchServeError`, `KServeError`), each an `IntoResponse`. A new front
//!   end brings only its wire format.
//! * [`body`]: reading a request body within its limits, and the memory
//!   all bodies and unsent answers may hold together
//!   (`max_request_memory`), REST and gRPC.
//! * [`app`]: what a listener serves: the router and, on the inference
//!   port, the five prediction routes, matched in front of it.
//!
//! Every request on the inference port passes through one wrapper
//! ([`observed`]: the router's middleware, or [`App`] directly) that
//! opens its telemetry ([`ObservedRequest`]) and stamps its response; the
//! metrics port (and, if configured, the inference port) answers
//! `GET /metrics`. An unknown route is answered in the shape of the
//! protocol its path belongs to: KServe's under `/v1` and `/v2`, where
//! KServe and Triton clients parse it, TorchServe's everywhere else.
//!
//! Adapters never reach into the scheduler's queue or the engine; they run a
//! model only through the [`AttachedModel`](crate::registry::AttachedModel)
//! the skeleton hands them.

mod app;
mod auth;
mod body;
mod generation;
mod grpc;
mod kserve_v1;
mod kserve_v2;
mod listener;
mod management;
mod repository;
mod request;
#[cfg(test)]
mod tests;
mod torchserve;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, middleware};
use futures_util::FutureExt;
use futures_util::future::Either;

use crate::registry::ModelRegistry;
use crate::telemetry::{Metrics, ObservedRequest, Protocol, Rejection, TraceHeaders};
use crate::types::Error;

pub use app::App;
pub use auth::TokenGate;
use auth::{Listener, authorize};
use body::BodyMemory;
pub use grpc::proto as grpc_proto;
pub use grpc::{GrpcControl, serve as serve_grpc, serve_management as serve_grpc_management};
pub use listener::{ClientWaits, ConnectionLimits, WaitingOnClient, serve, serve_http2};
pub use management::ManagementState;
use repository::RepositoryState;

/// Limits on request and response bodies: TorchServe's byte limits, how
/// long a request body may take to arrive, and the memory all request
/// bodies and unsent answers may hold together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    pub max_request_size: usize,
    pub max_response_size: usize,
    pub body_timeout: Duration,
    pub max_request_memory: usize,
}

impl BodyLimits {
    fn check_response(&self, size: usize) -> Result<(), crate::types::Error> {
        if size > self.max_response_size {
            return Err(crate::types::Error::ResponseTooLarge(format!(
                "the answer is {size} bytes, over max_response_size={}; send fewer rows or raise max_response_size",
                self.max_response_size
            )));
        }
        Ok(())
    }
}

/// What a request asks of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Predict,
    /// Attributions: how much each input element drove the prediction.
    Explain,
}

/// What every request handler can reach.
pub struct AppState {
    pub registry: Arc<ModelRegistry>,
    pub limits: BodyLimits,
    /// What request bodies hold, shared with the gRPC listeners.
    pub bodies: Arc<BodyMemory>,
    pub metrics: Arc<Metrics>,
    /// `OPTIONS /`'s body, rendered once.
    api_description: String,
    control: ControlPlane,
}

/// What a server adds around the data plane: token authorization when it
/// is on, and the control plane (the management API, and the repository
/// routes on the inference port).
#[derive(Default, Clone)]
pub struct ControlPlane {
    pub tokens: Option<Arc<TokenGate>>,
    pub management: Option<Arc<ManagementState>>,
}

impl AppState {
    pub fn new(
        registry: Arc<ModelRegistry>,
        limits: BodyLimits,
        metrics: Arc<Metrics>,
    ) -> Arc<AppState> {
        AppState::with_control(registry, limits, metrics, ControlPlane::default())
    }

    /// As [`new`](Self::new), with a control plane.
    pub fn with_control(
        registry: Arc<ModelRegistry>,
        limits: BodyLimits,
        metrics: Arc<Metrics>,
        control: ControlPlane,
    ) -> Arc<AppState> {
        let api_description =
            include_str!("inference_openapi.json").replace("%VERSION%", env!("CARGO_PKG_VERSION"));
        Arc::new(AppState {
            registry,
            bodies: BodyMemory::new(limits.max_request_memory),
            limits,
            metrics,
            api_description,
            control,
        })
    }
}

/// The inference listener's routes: all three protocols on one port, the
/// repository routes when there is a control plane, and `GET /metrics` too
/// when `with_metrics` (KServe-style scraping); the prediction routes
/// matched in front of the router.
pub fn inference_app(state: Arc<AppState>, with_metrics: bool) -> App {
    let routes = inference_routes(&state, with_metrics);
    App::with_predictions(served(state.clone(), routes, Listener::Inference), state)
}

/// The management listener's routes: TorchServe's management API.
pub fn management_router(state: Arc<AppState>) -> Router {
    let mut routes = Router::new();
    if let Some(management) = &state.control.management {
        routes = management::routes(management.clone())
            .merge(management::description_routes(management.clone()));
    }
    served(state, routes, Listener::Management)
}

/// One listener for both (`inference_address` = `management_address`, as
/// KServe's TorchServe runtime sets them): TorchServe's `ALL` connector.
pub fn shared_app(state: Arc<AppState>, with_metrics: bool) -> App {
    let mut routes = inference_routes(&state, with_metrics);
    if let Some(management) = &state.control.management {
        routes = routes.merge(management::routes(management.clone()));
    }
    App::with_predictions(served(state.clone(), routes, Listener::Shared), state)
}

fn inference_routes(state: &AppState, with_metrics: bool) -> Router<Arc<AppState>> {
    let mut router = torchserve::routes()
        .merge(kserve_v1::routes())
        .merge(kserve_v2::routes())
        .merge(generation::v2::routes())
        .merge(generation::openai::routes());
    if let Some(management) = &state.control.management {
        router = router.merge(repository::routes(RepositoryState {
            management: management.clone(),
            limits: state.limits,
            bodies: state.bodies.clone(),
        }));
    }
    match with_metrics {
        true => router.route("/metrics", get(scrape)),
        false => router,
    }
}

/// Routes with the unknown-route answer, the state, token authorization
/// when it is on, and every request's telemetry around them all.
fn served(state: Arc<AppState>, routes: Router<Arc<AppState>>, listener: Listener) -> Router {
    let mut router = routes.fallback(not_found).with_state(state.clone());
    if let Some(gate) = &state.control.tokens {
        router = router.layer(middleware::from_fn_with_state(
            (gate.clone(), listener),
            authorize,
        ));
    }
    router.layer(middleware::from_fn_with_state(state, observe))
}

/// A route no protocol has, answered in the shape its path's clients parse.
async fn not_found(uri: Uri) -> Response {
    match kserve_protocol(uri.path()) {
        Some(_) => kserve_v1::KServeError(Error::ResourceNotFound).into_response(),
        None => torchserve::TorchServeError(Error::ResourceNotFound).into_response(),
    }
}

/// The metrics listener's one route.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    let router = Router::new()
        .route("/metrics", get(scrape))
        .with_state(state.clone());
    match &state.control.tokens {
        Some(gate) => router.layer(middleware::from_fn_with_state(
            (gate.clone(), Listener::Metrics),
            authorize,
        )),
        None => router,
    }
}

/// Prometheus text exposition, with gauges read from the registry now.
async fn scrape(State(state): State<Arc<AppState>>) -> Response {
    let memory = &state.bodies;
    state
        .metrics
        .request_memory(memory.bodies(), memory.answers(), memory.limit());
    let text = state.metrics.render(&state.registry.gauges());
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps every routed request in its telemetry: [`observed`], with the
/// route the router matched.
fn observe(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> impl Future<Output = Response> + Send {
    observed(state, request, None, |request| next.run(request))
}

/// Wraps a request in its telemetry (spans, metrics, access log; for
/// probes and scrapes, only a debug line) and stamps the response. `route`
/// names the route when the caller matched it ([`App`]'s prediction
/// routes), else the router's match is read from the request; `run`
/// answers the request, and is called inside the request's telemetry
/// scope, since a handler attaches its model before its future is polled.
///
/// A plain function returning the future, not an `async fn`: everything it
/// reads from the request is read before the request moves on, so the
/// future holds only what the answer needs (448 bytes, against 1,472
/// for the `async fn`, which kept the request twice and the probe branch's
/// state beside the rest). It is boxed with the request's parts (by
/// `from_fn`, or by [`App`]); under 1,032 bytes in all, that box comes
/// from glibc's per-thread cache instead of its arena.
fn observed<R, F>(
    state: Arc<AppState>,
    request: Request,
    route: Option<&'static str>,
    run: R,
) -> impl Future<Output = Response> + Send
where
    R: FnOnce(Request) -> F,
    F: Future<Output = Response> + Send + 'static,
{
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.to_str().is_ok())
        .cloned()
        .unwrap_or_else(new_request_id);
    let path = request.uri().path();
    if is_probe(request.method(), path) {
        return Either::Left(probe(request, run, id));
    }
    // A fixed name for unrouted paths keeps span names few.
    let route = route.unwrap_or_else(|| {
        request
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str)
    });
    let observed = ObservedRequest::start(
        protocol_of(path),
        request.method().as_str(),
        path,
        route,
        id.to_str().unwrap_or_default(),
        request.headers(),
    );
    // Boxed: each wrapper `run` puts around it (task-local scope, two spans)
    // moved the whole request and route future, 13 copies a request (about
    // 550 instructions under callgrind against 100 for the box).
    let answer = Box::pin(observed.enter(|| run(request)));
    Either::Right(async move {
        let response = observed.run(answer).await;
        let rejection = response.extensions().get::<Rejection>().copied();
        let status = response.status().as_u16();
        let response = if response.extensions().get::<request::Streamed>().is_some() {
            // Finished when the last byte is sent; dropped early, it counts
            // the request as abandoned by its client.
            response.map(|body| body::UntilSent::wrap(body, move || observed.finish(status, None)))
        } else {
            observed.finish(status, rejection);
            response
        };
        // Unlike TorchServe, probes and scrapes (answered above) are left
        // out of `Requests2XX`…: a kubelet's would drown the traffic in the
        // count.
        state.metrics.response(status);
        stamp(response, id)
    })
}

/// The trace context (W3C `traceparent`) comes in the request's headers.
impl TraceHeaders for HeaderMap {
    fn get(&self, key: &str) -> Option<&str> {
        HeaderMap::get(self, key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        HeaderMap::keys(self).map(HeaderName::as_str).collect()
    }
}

/// A probe or scrape: served with no span, logged at debug only. What the
/// log line needs is read before the request moves on, as in [`observed`].
fn probe<F>(
    request: Request,
    run: impl FnOnce(Request) -> F,
    id: HeaderValue,
) -> impl Future<Output = Response> + Send
where
    F: Future<Output = Response> + Send,
{
    let logged = tracing::enabled!(target: "ortserve::access", tracing::Level::DEBUG)
        .then(|| (request.method().clone(), request.uri().clone()));
    // `map`, not an `async` block awaiting it: a block would hold the
    // route's future twice (captured, and again while awaited).
    run(request).map(move |response| {
        if let Some((method, uri)) = logged {
            tracing::debug!(target: "ortserve::access", %method, path = uri.path(), status = response.status().as_u16(), "probe");
        }
        stamp(response, id)
    })
}

/// Kubelet probes, KServe readiness checks and scrapes: frequent, cheap,
/// and of no interest in traces or the access log.
fn is_probe(method: &Method, path: &str) -> bool {
    if path == "/ping" {
        return true;
    }
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    matches!(
        path,
        "/" | "/metrics"
            | "/v2"
            | "/v2/health/live"
            | "/v2/health/ready"
            | "/v1/models"
            | "/v2/models"
    ) || (path.starts_with("/v1/models/") && !path.contains(':'))
        || (path.starts_with("/v2/models/") && path.ends_with("/ready"))
}

fn protocol_of(path: &str) -> Protocol {
    if path.starts_with("/openai/") {
        return Protocol::OpenAi;
    }
    kserve_protocol(path).unwrap_or(Protocol::TorchServe)
}

/// The KServe protocol whose prefix (`/v1`, `/v2`) the path is under.
fn kserve_protocol(path: &str) -> Option<Protocol> {
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    if under("/v1") {
        Some(Protocol::KServeV1)
    } else if under("/v2") {
        Some(Protocol::KServeV2)
    } else {
        None
    }
}

/// The headers [`stamp`] adds to every answer.
const STAMPED_HEADERS: usize = 4;

/// Gives every response an `x-request-id` (the caller's, if it sent a sane
/// one, so logs join up; else a new UUID) and TorchServe's no-cache headers.
fn stamp(mut response: Response, id: HeaderValue) -> Response {
    let headers = response.headers_mut();
    // Room for these four at once: a map that fills up reallocates and
    // rehashes what it holds. (`reserve` counts from the map's length, not
    // its free room: asking for one more than needed grew a binary v2
    // answer's map, made with room for exactly its six, to sixteen slots.)
    headers.reserve(STAMPED_HEADERS);
    headers.insert(X_REQUEST_ID.clone(), id);
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache; no-store, must-revalidate, private"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::EXPIRES,
        HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 UTC"),
    );
    response
}

fn new_request_id() -> HeaderValue {
    let mut buffer = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}
