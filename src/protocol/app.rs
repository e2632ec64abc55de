//! What an HTTP listener serves: axum's router and, on the inference
//! listener, the prediction routes every model request takes, matched here
//! before the router is asked.
//!
//! axum's router cost a prediction about 6,500 instructions and 17
//! allocations (callgrind; docs/performance.md): finding the route, the
//! parameters' list and reference-counted strings, the request's extension
//! map, a boxed clone of the route's service at each layer, and the
//! `Content-Length` header it writes into the answer's map (hyper writes
//! the same header from the body's length when the map has none).
//! The five prediction routes (TorchServe's `/predictions`, KServe v1's
//! `:predict`, v2's `infer`, with and without a version) are matched by
//! their own patterns, the constants the router is built from, and call the
//! same handlers. Anything unusual in the path (an empty segment, a
//! percent-escape to decode), another method, or a token gate in front of
//! the routes leaves the request to the router, which answers it as it
//! always did; a test sends the same requests both ways and compares the
//! answers.
//!
//! It owns no state and must not answer anything itself: every answer comes
//! from a protocol's handler, wrapped in the same telemetry as a routed one.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::Method;
use axum::response::Response;
use axum::routing::future::RouteFuture;
use futures_util::future::Either;
use tower_service::Service;

use super::request::ModelSegments;
use super::{AppState, kserve_v1, kserve_v2, observed, torchserve};

/// A listener's service: the router, and in front of it, on the inference
/// listener, the prediction routes.
#[derive(Clone)]
pub struct App {
    router: Router,
    /// Set when the prediction routes are matched here: on the inference
    /// (or shared) listener, with no token gate in front of the routes.
    predictions: Option<Arc<AppState>>,
}

impl From<Router> for App {
    fn from(router: Router) -> App {
        App {
            router,
            predictions: None,
        }
    }
}

impl App {
    /// `router` with the prediction routes matched in front of it, unless
    /// `state` has a token gate (which the router's layer applies).
    pub(super) fn with_predictions(router: Router, state: Arc<AppState>) -> App {
        let predictions = state.control.tokens.is_none().then_some(state);
        App {
            router,
            predictions,
        }
    }

    /// The same app with every request left to the router, as a token
    /// gate leaves them: what the matched routes are compared against.
    #[cfg(test)]
    pub(super) fn routed_only(&self) -> App {
        App::from(self.router.clone())
    }

    pub fn answer(&self, request: Request) -> Answer {
        if let Some(state) = &self.predictions {
            let path = request.uri().path();
            if let Some((route, segments)) = Prediction::find(request.method(), path) {
                let state = state.clone();
                let future = observed(
                    state.clone(),
                    request,
                    Some(route.pattern),
                    move |request| route.kind.serve(state, segments, request),
                );
                return Answer::Matched(Box::pin(future));
            }
        }
        Answer::Routed(self.router.clone().call(request))
    }
}

/// For in-process tests and anything else that drives a tower service.
impl Service<Request> for App {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Answer {
        self.answer(request)
    }
}

/// An answer on its way: from a prediction route matched here, or from
/// the router. Named rather than boxed, as the listener holds it.
// The router's variant is the larger by 300 bytes, in hyper's connection
// state, which is made once a connection; boxing it would add an
// allocation to every routed request.
#[allow(clippy::large_enum_variant)]
pub enum Answer {
    Matched(Pin<Box<dyn Future<Output = Response> + Send>>),
    Routed(RouteFuture<Infallible>),
}

impl Future for Answer {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            Answer::Matched(future) => future.as_mut().poll(cx).map(Ok),
            Answer::Routed(future) => Pin::new(future).poll(cx),
        }
    }
}

/// One prediction route: its pattern (the router's) and the adapter whose
/// handler serves it.
#[derive(Clone, Copy)]
struct Prediction {
    pattern: &'static str,
    kind: Adapter,
}

#[derive(Clone, Copy)]
enum Adapter {
    TorchServe,
    KServeV1,
    KServeV2,
}

const PREDICTIONS: [Prediction; 5] = [
    Prediction::new(torchserve::PREDICTIONS, Adapter::TorchServe),
    Prediction::new(torchserve::VERSION_PREDICTIONS, Adapter::TorchServe),
    Prediction::new(kserve_v1::MODEL_TARGET, Adapter::KServeV1),
    Prediction::new(kserve_v2::INFER, Adapter::KServeV2),
    Prediction::new(kserve_v2::VERSION_INFER, Adapter::KServeV2),
];

impl Prediction {
    const fn new(pattern: &'static str, kind: Adapter) -> Prediction {
        Prediction { pattern, kind }
    }

    /// The prediction route `method` and `path` take, with the path's
    /// parameters, or `None` for the router to decide.
    fn find(method: &Method, path: &str) -> Option<(Prediction, Segments)> {
        PREDICTIONS
            .into_iter()
            .filter(|route| route.kind.takes(method))
            .find_map(|route| Some((route, segments(route.pattern, path)?)))
    }
}

impl Adapter {
    /// The methods that reach the handler; others get the router's 405.
    fn takes(self, method: &Method) -> bool {
        match self {
            // POST, or PUT as `curl -T` sends it.
            Adapter::TorchServe => method == Method::POST || method == Method::PUT,
            Adapter::KServeV1 | Adapter::KServeV2 => method == Method::POST,
        }
    }

    /// The handler's future, one type for the three adapters: `observed`
    /// boxes it, sized by the largest, so a handler future that grows
    /// past about 1,000 bytes takes every protocol's box past glibc's
    /// per-thread cache (the allocation guard's large budgets catch it; v1
    /// awaiting a lone instance without `join_all` did).
    fn serve(
        self,
        state: Arc<AppState>,
        segments: Segments,
        request: Request,
    ) -> impl Future<Output = Response> + Send + 'static {
        let [model, version] = segments;
        let model = model.unwrap_or_default();
        match self {
            Adapter::TorchServe => Either::Left(Either::Left(torchserve::predict(
                State(state),
                Ok(Path(ModelSegments::new(model, version))),
                request,
            ))),
            Adapter::KServeV1 => {
                let method = request.method().clone();
                Either::Left(Either::Right(kserve_v1::model_target(
                    State(state),
                    Path(model),
                    method,
                    request,
                )))
            }
            Adapter::KServeV2 => Either::Right(kserve_v2::infer(
                State(state),
                Path(ModelSegments::new(model, version)),
                request,
            )),
        }
    }
}

/// A route's parameters in order (`{model}`, then `{version}`).
type Segments = [Option<String>; 2];

/// `path`'s parameters if it has `pattern`'s shape: the same text around
/// each `{parameter}`, and for each a plain non-empty segment. A parameter
/// to percent-decode is left to the router, which decodes it.
///
/// Bytes are compared in loops of its own rather than with `str::split`
/// and `find`, whose searchers cost more to set up than these paths take
/// to walk (about 700 instructions a request under callgrind).
fn segments(pattern: &str, path: &str) -> Option<Segments> {
    let mut found: Segments = [None, None];
    let (mut pattern, mut path) = (pattern.as_bytes(), path.as_bytes());
    for slot in &mut found {
        let Some(open) = pattern.iter().position(|&b| b == b'{') else {
            break;
        };
        path = path.strip_prefix(&pattern[..open])?;
        let end = path.iter().position(|&b| b == b'/' || b == b'%');
        let (part, rest) = path.split_at(end.unwrap_or(path.len()));
        if part.is_empty() || rest.first() == Some(&b'%') {
            return None;
        }
        // Whole UTF-8 characters: the segment ends at an ASCII byte.
        *slot = Some(String::from_utf8(part.to_vec()).ok()?);
        path = rest;
        let close = pattern.iter().position(|&b| b == b'}')?;
        pattern = &pattern[close + 1..];
    }
    (path == pattern).then_some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(pattern: &str, path: &str) -> Option<Vec<String>> {
        segments(pattern, path).map(|found| found.into_iter().flatten().collect())
    }

    #[test]
    fn a_path_of_the_patterns_shape_gives_its_parameters_in_order() {
        let both = found(torchserve::VERSION_PREDICTIONS, "/predictions/tiny/2.0");
        assert_eq!(both, Some(vec!["tiny".to_string(), "2.0".to_string()]));
        let one = found(kserve_v2::INFER, "/v2/models/tiny/infer");
        assert_eq!(one, Some(vec!["tiny".to_string()]));
        let target = found(kserve_v1::MODEL_TARGET, "/v1/models/tiny:predict");
        assert_eq!(target, Some(vec!["tiny:predict".to_string()]));
    }

    #[test]
    fn any_other_shape_is_left_to_the_router() {
        for path in [
            "/predictions",
            "/predictions/",
            "/predictions/tiny/",
            "/predictions//1",
            "/predictions/tiny/1/2",
            "/predictions/ti%6Ey",
            "predictions/tiny",
            "/prediction/tiny",
        ] {
            assert!(
                found(torchserve::PREDICTIONS, path).is_none()
                    && found(torchserve::VERSION_PREDICTIONS, path).is_none(),
                "{path}"
            );
        }
        assert!(found(kserve_v2::INFER, "/v2/models/tiny/infers").is_none());
        assert!(found(kserve_v2::VERSION_INFER, "/v2/models/tiny/versions/1/ready").is_none());
    }

    #[test]
    fn each_protocol_takes_its_handlers_methods_only() {
        let find =
            |method: Method, path: &str| Prediction::find(&method, path).map(|r| r.0.pattern);
        assert_eq!(
            find(Method::PUT, "/predictions/m"),
            Some(torchserve::PREDICTIONS)
        );
        assert_eq!(find(Method::GET, "/predictions/m"), None);
        assert_eq!(find(Method::PUT, "/v2/models/m/infer"), None);
        assert_eq!(find(Method::GET, "/v1/models/m"), None);
        assert_eq!(
            find(Method::POST, "/v2/models/m/versions/1/infer"),
            Some(kserve_v2::VERSION_INFER)
        );
    }
}
