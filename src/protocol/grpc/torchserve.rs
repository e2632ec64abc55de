//! TorchServe's gRPC inference API (`org.pytorch.serve.grpc.inference.
//! InferenceAPIsService`), on the gRPC inference listener beside the Open
//! Inference Protocol, as TorchServe serves both on 7070:
//!
//! * `Ping` answers `/ping`'s JSON text (with gRPC status OK, as TorchServe);
//! * `Predictions` runs `input["data"]` (or `input["body"]`) as
//!   `/predictions` runs a raw body, on the same queues and batches;
//! * `StreamPredictions` sends a `text_generation` model's text one piece
//!   per message as it is produced (the request as `/predictions` reads
//!   it), and any other model's answer in one message;
//! * `StreamPredictions2` answers each request of the stream in order,
//!   echoing its `sequence_id`; an error goes in that message's `status`, so
//!   one bad request does not end the stream. Models here hold no state
//!   between requests, so a sequence is only an order.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::proto::google::rpc;
use super::proto::org::pytorch::serve::grpc::inference::inference_ap_is_service_server::InferenceApIsService;
use super::proto::org::pytorch::serve::grpc::inference::{
    PredictionResponse, PredictionsRequest, TorchServeHealthResponse,
};
use super::{authorize, check_answer, observed, status, version};
use crate::handlers::BodyForm;
use crate::handlers::text_generation::Emitted;
use crate::protocol::TokenGate;
use crate::protocol::generation;
use crate::protocol::torchserve::health;
use crate::registry::{AttachedModel, ModelRegistry, TextGeneration};
use crate::telemetry::Protocol;
use crate::types::Error;

/// The `input` entries a handler reads its instance from, as TorchServe's
/// handlers do (`data`, else `body`).
const INSTANCE_KEYS: &[&str] = &["data", "body"];

const PREDICTIONS: &str = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions";
const STREAM_PREDICTIONS: &str =
    "/org.pytorch.serve.grpc.inference.InferenceAPIsService/StreamPredictions";

#[derive(Clone)]
pub struct TorchServeInference {
    pub(super) registry: Arc<ModelRegistry>,
    pub(super) tokens: Option<Arc<TokenGate>>,
    /// `max_response_size`.
    pub(super) max_answer: usize,
}

type Answers = BoxStream<'static, Result<PredictionResponse, Status>>;

#[tonic::async_trait]
impl InferenceApIsService for TorchServeInference {
    async fn ping(
        &self,
        request: Request<()>,
    ) -> Result<Response<TorchServeHealthResponse>, Status> {
        self.authorize(&request, true)?;
        let (_, health) = health(&self.registry);
        Ok(Response::new(TorchServeHealthResponse { health }))
    }

    async fn predictions(
        &self,
        request: Request<PredictionsRequest>,
    ) -> Result<Response<PredictionResponse>, Status> {
        self.authorize(&request, false)?;
        let (metadata, _, request) = request.into_parts();
        let prediction = self.predict(&metadata, request).await.map_err(status)?;
        Ok(Response::new(PredictionResponse {
            prediction,
            ..PredictionResponse::default()
        }))
    }

    type StreamPredictionsStream = Answers;

    async fn stream_predictions(
        &self,
        request: Request<PredictionsRequest>,
    ) -> Result<Response<Answers>, Status> {
        self.authorize(&request, false)?;
        let (metadata, _, request) = request.into_parts();
        let work = async {
            let (model, body) = self.model_and_instance(request)?;
            if !model.generates_text() {
                let prediction = model.predict(body, BodyForm::Raw).await?;
                let answer = PredictionResponse {
                    prediction,
                    ..PredictionResponse::default()
                };
                return Ok(futures_util::stream::iter([Ok(answer)]).boxed());
            }
            let generation = generation::start_torchserve(&model, &body).await?;
            Ok(pieces(generation))
        };
        let answers = observed(
            Protocol::GrpcTorchServe,
            STREAM_PREDICTIONS,
            &metadata,
            Box::pin(work),
        )
        .await
        .map_err(status)?;
        Ok(Response::new(answers))
    }

    type StreamPredictions2Stream = Answers;

    async fn stream_predictions2(
        &self,
        request: Request<Streaming<PredictionsRequest>>,
    ) -> Result<Response<Answers>, Status> {
        self.authorize(&request, false)?;
        let (metadata, _, incoming) = request.into_parts();
        let state = Some((self.clone(), metadata, incoming));
        let answers = futures_util::stream::unfold(state, |state| async move {
            let (service, metadata, mut incoming) = state?;
            match incoming.message().await {
                Ok(Some(request)) => {
                    let answer = service.answer_in_sequence(&metadata, request).await;
                    Some((Ok(answer), Some((service, metadata, incoming))))
                }
                Ok(None) => None,
                Err(broken) => Some((Err(broken), None)),
            }
        });
        Ok(Response::new(answers.boxed()))
    }
}

impl TorchServeInference {
    fn authorize<T>(&self, request: &Request<T>, probe: bool) -> Result<(), Status> {
        authorize(&self.tokens, request, |gate, key| {
            gate.allows_inference(key, probe)
        })
    }

    /// The model a request names, counted for this request, and its instance.
    fn model_and_instance(
        &self,
        request: PredictionsRequest,
    ) -> Result<(AttachedModel, Bytes), Error> {
        let model = self
            .registry
            .resolve(&request.model_name, version(&request.model_version))?
            .attach();
        Ok((model, instance(request.input)?))
    }

    /// One prediction, counted and logged under its own request id.
    async fn predict(
        &self,
        metadata: &MetadataMap,
        request: PredictionsRequest,
    ) -> Result<Vec<u8>, Error> {
        let work = async {
            let (model, body) = self.model_and_instance(request)?;
            if model.generates_text() {
                let (text, _) = generation::start_torchserve(&model, &body)
                    .await?
                    .collect()
                    .await?;
                return Ok(text.into_bytes());
            }
            let prediction = model.predict(body, BodyForm::Raw).await?;
            // The answer's `prediction` field: a tag, a length, the bytes.
            let size = 1 + prost::length_delimiter_len(prediction.len()) + prediction.len();
            check_answer(size, self.max_answer)?;
            Ok(prediction)
        };
        observed(
            Protocol::GrpcTorchServe,
            PREDICTIONS,
            metadata,
            Box::pin(work),
        )
        .await
    }

    /// A stream's answer to one of its requests: the prediction, or the
    /// error in `status`, under the request's `sequence_id`.
    async fn answer_in_sequence(
        &self,
        metadata: &MetadataMap,
        mut request: PredictionsRequest,
    ) -> PredictionResponse {
        let sequence_id = request.sequence_id.take();
        let outcome = match sequence_id {
            None => Err(status(Error::BadInput(
                "sequence_id is required on every StreamPredictions2 request".into(),
            ))),
            Some(_) => self.predict(metadata, request).await.map_err(status),
        };
        match outcome {
            Ok(prediction) => PredictionResponse {
                prediction,
                sequence_id,
                status: None,
            },
            Err(refused) => PredictionResponse {
                prediction: Vec::new(),
                sequence_id,
                status: Some(rpc::Status {
                    code: refused.code() as i32,
                    message: refused.message().to_string(),
                    details: Vec::new(),
                }),
            },
        }
    }
}

/// A generation's text, one message per piece; a failure after the first
/// piece ends the stream with its status.
fn pieces(generation: TextGeneration) -> Answers {
    futures_util::stream::unfold(Some(generation), |generation| async move {
        let mut generation = generation?;
        loop {
            match generation.next().await? {
                Ok(Emitted::Text(piece)) => {
                    let answer = PredictionResponse {
                        prediction: piece.into_bytes(),
                        ..PredictionResponse::default()
                    };
                    return Some((Ok(answer), Some(generation)));
                }
                Ok(Emitted::Finished(_)) => {}
                Err(error) => return Some((Err(status(error)), None)),
            }
        }
    })
    .boxed()
}

/// The instance in a request's `input` map.
fn instance(mut input: HashMap<String, Vec<u8>>) -> Result<Bytes, Error> {
    INSTANCE_KEYS
        .iter()
        .find_map(|key| input.remove(*key))
        .map(Bytes::from)
        .ok_or_else(|| {
            Error::BadInput(
                "the request's input has no \"data\" entry; send the instance as \
                 input[\"data\"] (or input[\"body\"]), as TorchServe's handlers read it"
                    .into(),
            )
        })
}
