//! Which service answers a gRPC call, and the bound on a call's request:
//! each listener's services are chosen by the service's name in the call's
//! path (`/inference.GRPCInferenceService/ModelInfer`), and a call that
//! sends one message must send it within `request_body_timeout` of its
//! headers, as a REST body must. A call that sent its headers and then
//! nothing would otherwise hold its stream, and its connection, in flight
//! for good. The one call whose client sends messages when it likes
//! (`StreamPredictions2`) is instead not in flight while it waits for the
//! next: a connection holding only such waits is idle, and closed after
//! `keep_alive_timeout` or to make room, as an idle one is. It owns no
//! service's behaviour: each answers its own methods, unknown ones
//! included.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use tokio::time::Sleep;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

use super::InferenceService;
use super::management::TorchServeManagement;
use super::proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use super::proto::org::pytorch::serve::grpc::inference::inference_ap_is_service_server::InferenceApIsServiceServer;
use super::proto::org::pytorch::serve::grpc::management::management_ap_is_service_server::ManagementApIsServiceServer;
use super::torchserve::TorchServeInference;
use crate::protocol::{ClientWaits, WaitingOnClient};
use crate::types::Error;

type OpenInference = GrpcInferenceServiceServer<InferenceService>;
type TorchServe = InferenceApIsServiceServer<TorchServeInference>;
type Management = ManagementApIsServiceServer<TorchServeManagement>;

/// The one method whose request is a stream of messages, sent whenever its
/// client likes: it is not held to the timeout, and waits out of flight.
const STREAMED_REQUESTS: &str =
    "/org.pytorch.serve.grpc.inference.InferenceAPIsService/StreamPredictions2";
/// How much of an unknown call's path its `UNIMPLEMENTED` answer repeats.
const MAX_PATH_SHOWN: usize = 200;

type GrpcAnswer = Pin<Box<dyn Future<Output = Result<hyper::Response<Body>, Infallible>> + Send>>;

/// The inference listener's services: the Open Inference Protocol,
/// TorchServe's inference API and the standard health service (`H`). One
/// comparison of names, where tonic's own server went through axum's
/// router and its tower layers (about 6,000 instructions a call under
/// callgrind).
#[derive(Clone)]
pub(super) struct InferenceServices<H> {
    pub open_inference: OpenInference,
    pub torchserve: TorchServe,
    pub health: H,
    pub body_timeout: Duration,
}

/// One connection's routes: the services, and the connection's mark for a
/// stream that waits on its client.
pub(super) struct InferenceRoutes<H> {
    pub services: InferenceServices<H>,
    pub waits: ClientWaits,
}

impl<H> hyper::service::Service<hyper::Request<Incoming>> for InferenceRoutes<H>
where
    H: tower_service::Service<
            hyper::Request<OneMessage>,
            Response = hyper::Response<Body>,
            Error = Infallible,
            Future = GrpcAnswer,
        > + NamedService
        + Clone,
{
    type Response = hyper::Response<Body>;
    type Error = Infallible;
    type Future = GrpcAnswer;

    fn call(&self, request: hyper::Request<Incoming>) -> GrpcAnswer {
        use tower_service::Service;
        let services = &self.services;
        let path = request.uri().path();
        if path == STREAMED_REQUESTS {
            let waits = self.waits.clone();
            let request = request.map(|body| ClientPaced::new(body, waits));
            return services.torchserve.clone().call(request);
        }
        let service = path
            .strip_prefix('/')
            .and_then(|path| path.split_once('/'))
            .map_or("", |(service, _)| service);
        let callee = if service == OpenInference::NAME {
            Callee::OpenInference
        } else if service == TorchServe::NAME {
            Callee::TorchServe
        } else if service == H::NAME {
            Callee::Health
        } else {
            return unimplemented(path);
        };
        let request = request.map(|body| OneMessage::new(body, services.body_timeout));
        match callee {
            Callee::OpenInference => services.open_inference.clone().call(request),
            Callee::TorchServe => services.torchserve.clone().call(request),
            Callee::Health => services.health.clone().call(request),
        }
    }
}

enum Callee {
    OpenInference,
    TorchServe,
    Health,
}

/// The management listener's one service, TorchServe's management API.
#[derive(Clone)]
pub(super) struct ManagementRoutes {
    pub management: Management,
    pub body_timeout: Duration,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ManagementRoutes {
    type Response = hyper::Response<Body>;
    type Error = Infallible;
    type Future = GrpcAnswer;

    fn call(&self, request: hyper::Request<Incoming>) -> GrpcAnswer {
        use tower_service::Service;
        let request = request.map(|body| OneMessage::new(body, self.body_timeout));
        self.management.clone().call(request)
    }
}

fn unimplemented(path: &str) -> GrpcAnswer {
    // A path is ASCII; a long one is named by its start.
    let named = path.get(..MAX_PATH_SHOWN).unwrap_or(path);
    let status = Status::unimplemented(format!("no service answers {named}"));
    Box::pin(std::future::ready(Ok(status.into_http())))
}

/// A call's request body that must end within its timeout. The timer is
/// made only when the body is not already there (most come with their
/// headers); past it the body fails with `DEADLINE_EXCEEDED` naming
/// `request_body_timeout`, which tonic answers the call with.
pub(super) struct OneMessage {
    body: Incoming,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl OneMessage {
    fn new(body: Incoming, timeout: Duration) -> OneMessage {
        OneMessage {
            body,
            timeout,
            timer: None,
        }
    }
}

impl HttpBody for OneMessage {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(
                frame.map(|frame| frame.map_err(|error| Status::from_error(error.into()))),
            );
        }
        let timeout = self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        std::task::ready!(timer.as_mut().poll(cx));
        let late = Error::BodyTimeout {
            seconds: timeout.as_secs(),
        };
        let message = format!("{late} (request_body_timeout)");
        Poll::Ready(Some(Err(Status::deadline_exceeded(message))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The request body of a call whose client sends messages when it likes:
/// while the service waits for the next one (the body has nothing to
/// give), the stream is marked as waiting on its client. The service
/// reads the body only when it has answered what came before, so a wait
/// here is a wait with nothing to do.
pub(super) struct ClientPaced {
    body: Incoming,
    waits: ClientWaits,
    waiting: Option<WaitingOnClient>,
}

impl ClientPaced {
    fn new(body: Incoming, waits: ClientWaits) -> ClientPaced {
        ClientPaced {
            body,
            waits,
            waiting: None,
        }
    }
}

impl HttpBody for ClientPaced {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if polled.is_pending() {
            if self.waiting.is_none() {
                self.waiting = Some(self.waits.waiting());
            }
        } else {
            self.waiting = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
