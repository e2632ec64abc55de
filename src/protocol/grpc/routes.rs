//! Which service answers a gRPC call, and the bound on a call's request:
//! each listener's services are chosen by the service's name in the call's
//! path (`/inference.GRPCInferenceService/ModelInfer`), and a call that
//! sends one message must send it within `request_body_timeout` of its
//! headers, as a REST body must. A call that sent its headers and then
//! nothing would otherwise hold its stream, and its connection, in flight
//! for good. The one call whose client sends messages when it likes
//! (`StreamPredictions2`) is instead not in flight while it waits for the
//! next: a connection holding only such waits is idle, and closed after
//! `keep_alive_timeout` or to make room, as an idle one is. The one answer
//! that never ends by itself, a health `Watch`, ends when the listener
//! closes. It owns no service's behaviour: each answers its own methods,
//! unknown ones included.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use tokio::sync::watch;
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
use crate::protocol::body::{BodyCharge, BodyMemory};
use crate::protocol::{ClientWaits, WaitingOnClient};
use crate::types::{Error, prefix_within};

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
    pub max_message: usize,
    pub bodies: Arc<BodyMemory>,
    /// Turns true when the listener closes: open health watches end then.
    pub closed: watch::Receiver<bool>,
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
            let charge = services.bodies.charge();
            let max_message = services.max_message;
            let request = request.map(|body| ClientPaced::new(body, waits, max_message, charge));
            return services.torchserve.clone().call(request);
        }
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|path| path.split_once('/'))
            .unwrap_or_default();
        let callee = if service == OpenInference::NAME {
            Callee::OpenInference
        } else if service == TorchServe::NAME {
            Callee::TorchServe
        } else if service == H::NAME && method == "Watch" {
            // The one answer that never ends by itself.
            Callee::HealthWatch
        } else if service == H::NAME {
            Callee::Health
        } else {
            return unimplemented(path);
        };
        let charge = services.bodies.charge();
        let (timeout, max_message) = (services.body_timeout, services.max_message);
        let request = request.map(|body| OneMessage::new(body, timeout, max_message, charge));
        match callee {
            Callee::OpenInference => services.open_inference.clone().call(request),
            Callee::TorchServe => services.torchserve.clone().call(request),
            Callee::Health => services.health.clone().call(request),
            Callee::HealthWatch => {
                let answer = services.health.clone().call(request);
                let closed = services.closed.clone();
                Box::pin(async move {
                    let answer = answer.await?;
                    Ok(answer.map(|body| Body::new(EndsWhenClosed::new(body, closed))))
                })
            }
        }
    }
}

enum Callee {
    OpenInference,
    TorchServe,
    Health,
    HealthWatch,
}

/// A health `Watch` answer that ends with `UNAVAILABLE` when the listener
/// closes. The stream never ends by itself, and a closing connection waits
/// for its streams: one open watcher held the process until
/// `shutdown_timeout`. Its client has seen `NOT_SERVING` since SIGTERM.
struct EndsWhenClosed {
    answer: Body,
    /// `None` once the listener has closed.
    closed: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    ended: bool,
}

impl EndsWhenClosed {
    fn new(answer: Body, mut closed: watch::Receiver<bool>) -> EndsWhenClosed {
        let closed = Box::pin(async move {
            // An error means the listener is gone: closed as well.
            let _ = closed.wait_for(|closed| *closed).await;
        });
        EndsWhenClosed {
            answer,
            closed: Some(closed),
            ended: false,
        }
    }
}

impl HttpBody for EndsWhenClosed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(closed) = self.closed.as_mut()
            && closed.as_mut().poll(cx).is_ready()
        {
            self.closed = None;
        }
        // The answer first: a NOT_SERVING sent at the same moment goes out
        // before the end. It never ends by itself, so it cannot hold the end.
        if let Poll::Ready(frame) = Pin::new(&mut self.answer).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.closed.is_some() {
            return Poll::Pending;
        }
        self.ended = true;
        let status = Status::unavailable("the server is shutting down");
        let mut trailers = hyper::HeaderMap::new();
        // Fails only for a message that is not a header value; this one is.
        let _ = status.add_header(&mut trailers);
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.answer.is_end_stream()
    }
}

/// The management listener's one service, TorchServe's management API.
#[derive(Clone)]
pub(super) struct ManagementRoutes {
    pub management: Management,
    pub body_timeout: Duration,
    pub max_message: usize,
    pub bodies: Arc<BodyMemory>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ManagementRoutes {
    type Response = hyper::Response<Body>;
    type Error = Infallible;
    type Future = GrpcAnswer;

    fn call(&self, request: hyper::Request<Incoming>) -> GrpcAnswer {
        use tower_service::Service;
        let charge = self.bodies.charge();
        let (timeout, max_message) = (self.body_timeout, self.max_message);
        let request = request.map(|body| OneMessage::new(body, timeout, max_message, charge));
        self.management.clone().call(request)
    }
}

fn unimplemented(path: &str) -> GrpcAnswer {
    // A long path is named by its start, cut at a character's edge.
    let named = prefix_within(path, MAX_PATH_SHOWN);
    let status = Status::unimplemented(format!("no service answers {named}"));
    Box::pin(std::future::ready(Ok(status.into_http())))
}

/// A call's request body that must end within its timeout. The timer is
/// made only when the body is not already there (most come with their
/// headers); past it the body fails with `DEADLINE_EXCEEDED` naming
/// `request_body_timeout`, which tonic answers the call with. Its bytes
/// are charged to `max_request_memory` as they arrive, until the call is
/// done with its message; one that does not fit fails the body with
/// `UNAVAILABLE` naming the setting. A message whose prefix announces more
/// than `max_request_size` fails it with `RESOURCE_EXHAUSTED` naming that.
pub(super) struct OneMessage {
    body: Incoming,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    charge: BodyCharge,
    framing: MessageFraming,
}

impl OneMessage {
    fn new(
        body: Incoming,
        timeout: Duration,
        max_message: usize,
        charge: BodyCharge,
    ) -> OneMessage {
        OneMessage {
            body,
            timeout,
            timer: None,
            charge,
            framing: MessageFraming::new(max_message),
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
            let this = &mut *self;
            return Poll::Ready(charged(frame, &mut this.charge, &mut this.framing));
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

/// A frame of a call's body as tonic takes it: an error as a status, and
/// data charged to `max_request_memory`, the body failing with
/// `UNAVAILABLE` when it does not fit, and followed through `framing`, the
/// body failing with `RESOURCE_EXHAUSTED` at a message over
/// `max_request_size` (before tonic, whose own check answers
/// `OUT_OF_RANGE` without naming the setting).
fn charged(
    frame: Option<Result<Frame<Bytes>, hyper::Error>>,
    charge: &mut BodyCharge,
    framing: &mut MessageFraming,
) -> Option<Result<Frame<Bytes>, Status>> {
    let frame = frame?.map_err(|error| Status::from_error(error.into()));
    if let Some(data) = frame.as_ref().ok().and_then(Frame::data_ref) {
        let total = charge.bytes() + data.len();
        if let Err(full) = charge.grow_to(total) {
            return Some(Err(super::status(full)));
        }
        if let Err(over) = framing.feed(data) {
            return Some(Err(super::status(over)));
        }
    }
    Some(frame)
}

/// The request body of a call whose client sends messages when it likes:
/// while the service waits for the next one (the body has nothing to
/// give), the stream is marked as waiting on its client. The service
/// reads the body only when it has answered what came before, so a wait
/// here is a wait with nothing to do. What `max_request_memory` is
/// charged for is the message not yet whole: tonic asks for more only
/// once it has decoded every whole message it holds.
pub(super) struct ClientPaced {
    body: Incoming,
    waits: ClientWaits,
    waiting: Option<WaitingOnClient>,
    charge: BodyCharge,
    framing: MessageFraming,
}

impl ClientPaced {
    fn new(
        body: Incoming,
        waits: ClientWaits,
        max_message: usize,
        charge: BodyCharge,
    ) -> ClientPaced {
        ClientPaced {
            body,
            waits,
            waiting: None,
            charge,
            framing: MessageFraming::new(max_message),
        }
    }
}

impl HttpBody for ClientPaced {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let unfinished = self.framing.unfinished;
        self.charge.shrink_to(unfinished);
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let Poll::Ready(frame) = polled else {
            if self.waiting.is_none() {
                self.waiting = Some(self.waits.waiting());
            }
            return Poll::Pending;
        };
        self.waiting = None;
        let this = &mut *self;
        Poll::Ready(charged(frame, &mut this.charge, &mut this.framing))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Where a stream of gRPC messages stands: each message is a five-byte
/// prefix (a flag, then its length as four big-endian bytes) and the
/// message; `unfinished` counts the bytes of the one not yet whole. No
/// message may announce more than `max_message` bytes.
struct MessageFraming {
    prefix: [u8; GRPC_PREFIX],
    prefix_seen: usize,
    message_left: usize,
    unfinished: usize,
    max_message: usize,
}

const GRPC_PREFIX: usize = 5;

impl MessageFraming {
    fn new(max_message: usize) -> MessageFraming {
        MessageFraming {
            prefix: [0; GRPC_PREFIX],
            prefix_seen: 0,
            message_left: 0,
            unfinished: 0,
            max_message,
        }
    }

    /// Follows `data`; a message announced over `max_message` is an error.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), Error> {
        while !data.is_empty() {
            let taken = if self.prefix_seen < GRPC_PREFIX {
                let taken = (GRPC_PREFIX - self.prefix_seen).min(data.len());
                self.prefix[self.prefix_seen..self.prefix_seen + taken]
                    .copy_from_slice(&data[..taken]);
                self.prefix_seen += taken;
                if self.prefix_seen == GRPC_PREFIX {
                    let [_, length @ ..] = self.prefix;
                    self.message_left = u32::from_be_bytes(length) as usize;
                    if self.message_left > self.max_message {
                        return Err(Error::TooLarge(format!(
                            "the request message is {} bytes, over max_request_size={}; \
                             raise max_request_size in config.properties",
                            self.message_left, self.max_message
                        )));
                    }
                }
                taken
            } else {
                let taken = self.message_left.min(data.len());
                self.message_left -= taken;
                taken
            };
            self.unfinished += taken;
            data = &data[taken..];
            if self.prefix_seen == GRPC_PREFIX && self.message_left == 0 {
                self.prefix_seen = 0;
                self.unfinished = 0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(length: u32) -> Vec<u8> {
        let mut framed = vec![0];
        framed.extend_from_slice(&length.to_be_bytes());
        framed.resize(GRPC_PREFIX + length as usize, 7);
        framed
    }

    #[test]
    fn framing_counts_the_bytes_of_the_message_not_yet_whole() {
        let mut framing = MessageFraming::new(300);
        let stream = [message(10), message(0), message(300)].concat();
        // Whole messages, then one cut in its prefix and in its body.
        framing.feed(&stream[..15]).unwrap();
        assert_eq!(framing.unfinished, 0);
        framing.feed(&stream[15..20]).unwrap();
        assert_eq!(framing.unfinished, 0);
        framing.feed(&stream[20..23]).unwrap();
        assert_eq!(framing.unfinished, 3);
        framing.feed(&stream[23..100]).unwrap();
        assert_eq!(framing.unfinished, 80);
        framing.feed(&stream[100..]).unwrap();
        assert_eq!(framing.unfinished, 0);
        // One frame with a whole message and the start of the next.
        let two = [message(4), message(20)].concat();
        framing.feed(&two[..12]).unwrap();
        assert_eq!(framing.unfinished, 3);
        framing.feed(&two[12..]).unwrap();
        assert_eq!(framing.unfinished, 0);
    }

    #[test]
    fn a_message_announced_over_the_limit_is_refused_at_its_prefix() {
        let mut framing = MessageFraming::new(300);
        let over = message(301);
        // The prefix in two pieces: refused once its length is whole.
        framing.feed(&over[..3]).unwrap();
        let error = framing.feed(&over[3..5]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the request message is 301 bytes, over max_request_size=300; \
             raise max_request_size in config.properties"
        );
        assert!(matches!(error, Error::TooLarge(_)));
    }

    /// A path is outside text: one whose 200th byte falls inside a
    /// character is still named by its start, not repeated whole.
    #[tokio::test]
    async fn an_unknown_calls_answer_names_at_most_the_start_of_its_path() {
        let path = format!("/{}{}", "a".repeat(MAX_PATH_SHOWN - 2), "é".repeat(1000));
        let answer = unimplemented(&path).await.unwrap();
        let message = answer.headers()["grpc-message"].to_str().unwrap();
        let shown = format!(
            "no%20service%20answers%20/{}",
            "a".repeat(MAX_PATH_SHOWN - 2)
        );
        assert_eq!(message, shown);
    }
}
