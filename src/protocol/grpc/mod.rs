//! gRPC, on HTTP/2 (h2c) listeners of its own, over the same registry,
//! queues and batches as the REST routes: a gRPC request and a REST request
//! can share one batch. The inference listener serves the Open Inference
//! Protocol (`inference.GRPCInferenceService`, here) and TorchServe's
//! inference API; the management listener TorchServe's management API.
//! Both run on [`super::listener`]'s connection loop, with the REST
//! listener's bounds; this module owns which service answers a call.
//!
//! * [`proto`]: the generated messages, services and clients.
//! * [`codec`]: how their messages are read and written: prost, in buffers
//!   sized to them.
//! * [`tensors`]: `ModelInferRequest` ⇄ tensors.
//! * [`repository`]: Triton's repository calls.
//! * [`torchserve`]: TorchServe's `InferenceAPIsService`.
//! * [`management`]: TorchServe's `ManagementAPIsService`.
//! * [`routes`]: which service answers a call, and the time a call's
//!   request message has to arrive.
//! * `tests`: the services driven in-process over fake runners.
//!
//! Readiness follows the REST rules, in `ServerReady`/`ModelReady` and in the
//! standard `grpc.health.v1.Health` service. Errors are gRPC statuses: unknown
//! model `NOT_FOUND`, bad tensors `INVALID_ARGUMENT` naming the input, a
//! full queue `UNAVAILABLE` naming `jobQueueSize`. A call's `grpc-timeout`
//! is its deadline: past it, a queued request is dropped and a running one
//! cancelled, as at `responseTimeout`. A call whose client cancels is
//! dropped like a REST request whose client left.

pub mod codec;
mod management;
pub mod proto;
mod repository;
mod routes;
mod tensors;
mod torchserve;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use super::body::BodyMemory;
use super::{ConnectionLimits, ManagementState, TokenGate};
use crate::config::ServerConfig;
use crate::registry::ModelRegistry;
use crate::telemetry::{ObservedRequest, Protocol, TraceHeaders};
use crate::types::{Error, bounded_message};

use management::TorchServeManagement;
use proto::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use proto::inference::model_metadata_response::TensorMetadata;
use proto::inference::*;
use proto::org::pytorch::serve::grpc::inference::inference_ap_is_service_server::InferenceApIsServiceServer;
use proto::org::pytorch::serve::grpc::management::management_ap_is_service_server::ManagementApIsServiceServer;
use routes::{InferenceRoutes, InferenceServices, ManagementRoutes};
use torchserve::TorchServeInference;

/// Serves the inference services on `listener` until `closed` turns true,
/// then lets the calls in flight finish. Messages are bounded by
/// `max_request_size` (in) and `max_response_size` (out); connections by
/// `limits`, as the REST listener's are.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<ModelRegistry>,
    control: GrpcControl,
    config: &ServerConfig,
    limits: ConnectionLimits,
    closed: watch::Receiver<bool>,
) {
    let (health, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(follow_readiness(registry.clone(), health));
    let shutdown = {
        let mut closed = closed.clone();
        async move {
            let _ = closed.wait_for(|closed| *closed).await;
        }
    };
    let open_inference = GrpcInferenceServiceServer::new(InferenceService {
        registry: registry.clone(),
        tokens: control.tokens.clone(),
        management: control.management,
        max_answer: config.max_response_size,
    })
    .max_decoding_message_size(config.max_request_size)
    .max_encoding_message_size(config.max_response_size);
    let torchserve = InferenceApIsServiceServer::new(TorchServeInference {
        registry,
        tokens: control.tokens,
        max_answer: config.max_response_size,
    })
    .max_decoding_message_size(config.max_request_size)
    .max_encoding_message_size(config.max_response_size);
    let services = InferenceServices {
        open_inference,
        torchserve,
        health: health_service,
        body_timeout: config.request_body_timeout,
        max_message: config.max_request_size,
        bodies: control.bodies.clone(),
        closed,
    };
    let routes_for = move |waits| InferenceRoutes {
        services: services.clone(),
        waits,
    };
    super::serve_http2(listener, routes_for, limits, control.bodies, shutdown).await;
}

/// Serves TorchServe's management API on `listener`, translated to the
/// management listener's REST `routes`, until the process exits; a call's
/// message must come within `body_timeout` and be at most `max_message`
/// bytes.
pub async fn serve_management(
    listener: TcpListener,
    routes: axum::Router,
    limits: ConnectionLimits,
    body_timeout: Duration,
    max_message: usize,
    bodies: Arc<BodyMemory>,
) {
    let management = ManagementApIsServiceServer::new(TorchServeManagement { routes });
    let routes = ManagementRoutes {
        management,
        body_timeout,
        max_message,
        bodies: bodies.clone(),
    };
    let routes_for = move |_| routes.clone();
    super::serve_http2(listener, routes_for, limits, bodies, std::future::pending()).await;
}

/// How often the standard health service's status is brought up to date.
const HEALTH_PERIOD: Duration = Duration::from_millis(250);

/// Keeps `grpc.health.v1`'s status for the server ("") and both inference
/// services at `/ping`'s readiness: `SERVING` when ready, `NOT_SERVING`
/// while models load, after a failure, and from SIGTERM on.
async fn follow_readiness(
    registry: Arc<ModelRegistry>,
    health: tonic_health::server::HealthReporter,
) {
    use tonic_health::ServingStatus;
    let services = [
        "",
        <GrpcInferenceServiceServer<InferenceService> as NamedService>::NAME,
        <InferenceApIsServiceServer<TorchServeInference> as NamedService>::NAME,
    ];
    let mut last = None;
    loop {
        let ready = registry.health().healthy;
        if last != Some(ready) {
            let status = match ready {
                true => ServingStatus::Serving,
                false => ServingStatus::NotServing,
            };
            for service in services {
                health.set_service_status(service, status).await;
            }
            last = Some(ready);
        }
        tokio::time::sleep(HEALTH_PERIOD).await;
    }
}

/// What the gRPC listeners reach besides the models: the token gate, the
/// management state the repository calls change models through, and the
/// memory request bodies and unsent answers hold, shared with the REST
/// listeners.
pub struct GrpcControl {
    pub tokens: Option<Arc<TokenGate>>,
    pub management: Arc<ManagementState>,
    pub bodies: Arc<BodyMemory>,
}

pub struct InferenceService {
    registry: Arc<ModelRegistry>,
    tokens: Option<Arc<TokenGate>>,
    management: Arc<ManagementState>,
    /// `max_response_size`.
    max_answer: usize,
}

const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        request: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        self.authorize(&request, true)?;
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        request: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        self.authorize(&request, true)?;
        let ready = self.registry.health().healthy;
        Ok(Response::new(ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        self.authorize(&request, true)?;
        let request = request.into_inner();
        let health = self
            .registry
            .version_health(&request.name, version(&request.version))
            .map_err(status)?;
        Ok(Response::new(ModelReadyResponse {
            ready: health.healthy,
        }))
    }

    async fn server_metadata(
        &self,
        request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        self.authorize(&request, false)?;
        Ok(Response::new(ServerMetadataResponse {
            name: "ortserve".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            // What this service answers: Triton's `ModelConfig` and
            // `ModelStatistics` are not in the Open Inference Protocol's
            // proto (REST has them, under `/v2/models/{m}/config` and `/stats`).
            extensions: vec!["model_repository".into()],
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        self.authorize(&request, false)?;
        let request = request.into_inner();
        let model = self
            .registry
            .resolve(&request.name, version(&request.version))
            .map_err(status)?;
        let tensors = |specs: &[crate::types::TensorSpec]| -> Vec<TensorMetadata> {
            specs
                .iter()
                .map(|s| TensorMetadata {
                    name: s.name.clone(),
                    datatype: crate::codec::oip_name(s.dtype).into(),
                    shape: s.shape.clone(),
                })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: request.name.clone(),
            versions: self.registry.versions(&request.name).map_err(status)?,
            platform: "onnxruntime_onnx".into(),
            inputs: tensors(&model.io().inputs),
            outputs: tensors(&model.io().outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        self.authorize(&request, false)?;
        let (metadata, _, call) = request.into_parts();
        let deadline = call_deadline(&metadata)?.map(answer_within);
        let work = Box::pin(self.infer(call, deadline));
        let outcome = observed(Protocol::GrpcV2, MODEL_INFER, &metadata, work).await;
        outcome.map(Response::new).map_err(|error| match (error, deadline) {
            (Error::Timeout { .. }, Some(_)) => Status::deadline_exceeded(
                "the call's deadline (grpc-timeout) passed before the model answered; the request was dropped or its run cancelled",
            ),
            (error, _) => status(error),
        })
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        self.authorize_management(&request)?;
        let index = repository::index(&self.management, request.into_inner());
        Ok(Response::new(index))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        self.authorize_management(&request)?;
        repository::load_model(&self.management, request.into_inner()).await?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        self.authorize_management(&request)?;
        repository::unload_model(&self.management, request.into_inner()).await?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}

impl InferenceService {
    /// Token authorization through the call's metadata, as on REST.
    fn authorize<T>(&self, request: &Request<T>, probe: bool) -> Result<(), Status> {
        authorize(&self.tokens, request, |gate, key| {
            gate.allows_inference(key, probe)
        })
    }

    /// The repository calls change the model set: the management key.
    fn authorize_management<T>(&self, request: &Request<T>) -> Result<(), Status> {
        authorize(&self.tokens, request, TokenGate::allows_management)
    }

    /// Decodes, runs and encodes one call, attached to the model's metrics.
    async fn infer(
        &self,
        call: ModelInferRequest,
        deadline: Option<Duration>,
    ) -> Result<ModelInferResponse, Error> {
        let model = self
            .registry
            .resolve(&call.model_name, version(&call.model_version))?
            .attach();
        let id = call.id.clone();
        let mut decoded = tensors::decode(model.io(), call, model.max_tensor_elements())?;
        let request = std::mem::take(&mut decoded.request);
        let response = match deadline {
            Some(limit) => model.infer_within(request, limit).await?,
            None => model.infer(request).await?,
        };
        let answer = tensors::encode(&model.id, id, model.io(), response, &decoded);
        check_answer(prost::Message::encoded_len(&answer), self.max_answer)?;
        Ok(answer)
    }
}

/// Runs a model call inside its telemetry, as the REST routes' middleware
/// does: metrics under `protocol`, the access log line, and a trace that
/// continues the metadata's `traceparent`. A call dropped before it ends
/// (its client cancelled) is counted as a client that left.
///
/// `work` comes boxed: it holds the call's request and, while it waits,
/// its tensors and its place in the queue, and every wrapper between here
/// and hyper's stream task (the telemetry's scope, tonic's service, the
/// routes) copied all of it when it moved, about 1,800 instructions a
/// `ModelInfer` call under callgrind, against about 100 for the box.
async fn observed<T>(
    protocol: Protocol,
    path: &str,
    metadata: &tonic::metadata::MetadataMap,
    work: Pin<Box<dyn Future<Output = Result<T, Error>> + Send + '_>>,
) -> Result<T, Error> {
    let id = new_request_id(metadata);
    let observed = ObservedRequest::start(protocol, "POST", path, path, &id, &Metadata(metadata));
    let outcome = observed.run(work).await;
    let code = outcome.as_ref().map_or_else(|e| e.status(), |_| 200);
    let rejection = outcome
        .as_ref()
        .err()
        .and_then(crate::telemetry::Rejection::of);
    observed.finish(code, rejection);
    outcome
}

/// An answer of `size` bytes must be within `max_response_size` (`max`).
/// Checked here, inside the call's telemetry, so that it is counted as the
/// rejection it is; tonic's own check comes after the call was counted a
/// success, and answers `OUT_OF_RANGE` naming no setting.
fn check_answer(size: usize, max: usize) -> Result<(), Error> {
    if size > max {
        return Err(Error::ResponseTooLarge(format!(
            "the answer is {size} bytes, over max_response_size={max}; \
             send fewer rows or raise max_response_size"
        )));
    }
    Ok(())
}

/// Token authorization through a call's `authorization` metadata, as the
/// REST routes read the header; `allows` asks the gate for the right key.
fn authorize<T>(
    tokens: &Option<Arc<TokenGate>>,
    request: &Request<T>,
    allows: impl FnOnce(&TokenGate, Option<&[u8]>) -> bool,
) -> Result<(), Status> {
    let Some(gate) = tokens else {
        return Ok(());
    };
    let authorization = request
        .metadata()
        .get("authorization")
        .map(|v| v.as_bytes());
    match allows(gate, authorization) {
        true => Ok(()),
        false => Err(Status::unauthenticated(
            "Token Authorization failed. Token either incorrect, expired, or not provided correctly",
        )),
    }
}

/// An empty version field means the default version.
fn version(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

/// The gRPC status for an error a request can cause.
fn status(error: Error) -> Status {
    let message = bounded_message(error.to_string());
    match error {
        Error::ModelNotFound(_) | Error::VersionNotFound { .. } | Error::ResourceNotFound => {
            Status::not_found(message)
        }
        Error::BadInput(_) => Status::invalid_argument(message),
        // gRPC's own code for a message over a size limit, either way.
        Error::TooLarge(_) | Error::ResponseTooLarge(_) => Status::resource_exhausted(message),
        Error::QueueFull { .. } | Error::MemoryFull { .. } | Error::Unavailable { .. } => {
            Status::unavailable(message)
        }
        Error::Timeout { .. } | Error::BodyTimeout { .. } => Status::deadline_exceeded(message),
        Error::NotImplemented(_) | Error::MethodNotAllowed => Status::unimplemented(message),
        Error::Conflict(_) => Status::already_exists(message),
        Error::DefaultVersionInUse { .. } | Error::ModelApiOff => {
            Status::failed_precondition(message)
        }
        Error::Inference(_) | Error::LoadFailed(_) => Status::internal(message),
    }
}

/// `grpc-timeout` (e.g. `500m`, `2S`): the call's deadline, from now; none
/// without the header, and `INVALID_ARGUMENT` naming it when it is not one.
fn call_deadline(metadata: &tonic::metadata::MetadataMap) -> Result<Option<Duration>, Status> {
    let Some(value) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default();
    match timeout(text) {
        Some(deadline) => Ok(Some(deadline)),
        None => Err(Status::invalid_argument(format!(
            "grpc-timeout '{}' is not a timeout: gRPC's form is one to eight digits \
             and a unit, H, M, S, m, u or n (e.g. 500m)",
            crate::types::excerpt(text)
        ))),
    }
}

/// A `grpc-timeout` value: one to eight ASCII digits, then its unit.
fn timeout(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let well_formed = (1..=8).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
    let amount: u64 = digits.parse().ok().filter(|_| well_formed)?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// How long the run may take for a call with `deadline`: a little less, so
/// that this handler's `DEADLINE_EXCEEDED`, which says what was dropped,
/// reaches the client before its own timer on the same deadline ends the
/// call with a bare one. Both timers start within a round trip of each
/// other; the margin (2%, 1 to 20 ms) settles most ties.
fn answer_within(deadline: Duration) -> Duration {
    let margin = (deadline / 50).clamp(Duration::from_millis(1), Duration::from_millis(20));
    deadline.saturating_sub(margin)
}

/// The caller's `x-request-id` if it is sane, else a new UUID.
fn new_request_id(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string)
}

/// gRPC metadata as trace-context propagation reads it.
struct Metadata<'a>(&'a tonic::metadata::MetadataMap);

impl TraceHeaders for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod timeouts {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        let deadline = |text: &str| {
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert("grpc-timeout", text.parse().unwrap());
            call_deadline(&metadata).map_err(|refused| refused.code())
        };
        assert_eq!(deadline("2S"), Ok(Some(Duration::from_secs(2))));
        assert_eq!(deadline("500m"), Ok(Some(Duration::from_millis(500))));
        assert_eq!(deadline("1H"), Ok(Some(Duration::from_secs(3600))));
        assert_eq!(deadline("250u"), Ok(Some(Duration::from_micros(250))));
        assert_eq!(deadline("0n"), Ok(Some(Duration::ZERO)));
        assert_eq!(
            call_deadline(&tonic::metadata::MetadataMap::new()).ok(),
            Some(None)
        );
        let invalid = Err(tonic::Code::InvalidArgument);
        for malformed in ["x", "S", "5s", "-1S", "+5S", "1x", " 5S", "123456789S"] {
            assert_eq!(deadline(malformed), invalid, "{malformed:?}");
        }
        let refused = call_deadline(&{
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert("grpc-timeout", "5s".parse().unwrap());
            metadata
        })
        .unwrap_err();
        assert_eq!(
            refused.message(),
            "grpc-timeout '5s' is not a timeout: gRPC's form is one to eight digits \
             and a unit, H, M, S, m, u or n (e.g. 500m)"
        );
    }

    #[test]
    fn the_answer_is_due_just_before_the_callers_deadline() {
        assert_eq!(
            answer_within(Duration::from_secs(1)),
            Duration::from_millis(980)
        );
        assert_eq!(
            answer_within(Duration::from_millis(100)),
            Duration::from_millis(98)
        );
        assert_eq!(
            answer_within(Duration::from_millis(10)),
            Duration::from_millis(9)
        );
        assert_eq!(
            answer_within(Duration::from_secs(60)),
            Duration::from_millis(59_980)
        );
        assert_eq!(answer_within(Duration::from_micros(500)), Duration::ZERO);
    }
}
