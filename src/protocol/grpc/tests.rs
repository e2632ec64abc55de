//! The gRPC service driven in-process over the scheduler's fake runner
//! (input `x` `[-1, 1]` FP32 echoed as `y`): statuses and messages for every
//! error a call can meet, typed and raw contents, without a socket.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Request};

use super::proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use super::*;
use crate::registry::testing::{FakeModel, Script, fake_config};
use crate::telemetry::{Metrics, MetricsSettings};
use crate::types::{MAX_MESSAGE, ModelId};

async fn service(script: Script, queue_rows: usize) -> InferenceService {
    let metrics = Metrics::new(&MetricsSettings::default()).expect("default metrics");
    let registry = ModelRegistry::for_tests(false, metrics);
    let mut config = fake_config();
    config.pool.job_queue_size = queue_rows;
    let id = ModelId {
        name: "m".into(),
        version: "1.0".into(),
    };
    let factory = FakeModel::new(script).factory();
    registry
        .serve_fake(id, factory, config)
        .await
        .expect("the fake serves");
    InferenceService::over(registry)
}

impl InferenceService {
    /// The service over `registry`, with the default settings and no
    /// tokens: for the crate's other in-process tests.
    pub(crate) fn over(registry: Arc<ModelRegistry>) -> InferenceService {
        let server = crate::config::ServerConfig::load(&crate::config::Cli::default())
            .expect("the default settings");
        let max_answer = server.max_response_size;
        let management = ManagementState::new(registry.clone(), Arc::new(server));
        InferenceService {
            registry,
            tokens: None,
            management,
            max_answer,
        }
    }
}

fn typed(values: &[f32]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "m".into(),
        id: "call-1".into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![values.len() as i64, 1],
            contents: Some(Box::new(InferTensorContents {
                fp32_contents: values.to_vec(),
                ..InferTensorContents::default()
            })),
            ..InferInputTensor::default()
        }],
        ..ModelInferRequest::default()
    }
}

async fn infer(
    service: &InferenceService,
    call: ModelInferRequest,
) -> Result<ModelInferResponse, Status> {
    service
        .model_infer(Request::new(call))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn typed_contents_come_back_typed_and_raw_back_raw() {
    let service = service(Script::default(), 100).await;
    let answer = infer(&service, typed(&[1.5, -2.0])).await.unwrap();
    assert_eq!(
        (
            answer.model_name.as_str(),
            answer.model_version.as_str(),
            answer.id.as_str()
        ),
        ("m", "1.0", "call-1")
    );
    let [output] = &answer.outputs[..] else {
        panic!("{answer:?}")
    };
    assert_eq!(
        (
            output.name.as_str(),
            output.datatype.as_str(),
            &output.shape[..]
        ),
        ("y", "FP32", &[2, 1][..])
    );
    assert_eq!(output.contents.as_ref().unwrap().fp32_contents, [1.5, -2.0]);
    assert!(answer.raw_output_contents.is_empty());

    let mut raw = typed(&[]);
    raw.inputs[0].contents = None;
    raw.inputs[0].shape = vec![1, 1];
    raw.raw_input_contents = vec![7.25f32.to_le_bytes().to_vec().into()];
    let answer = infer(&service, raw).await.unwrap();
    assert_eq!(answer.raw_output_contents, [7.25f32.to_le_bytes().to_vec()]);
    assert_eq!(answer.outputs[0].contents, None);
}

#[tokio::test]
async fn every_error_is_its_status_with_a_message_naming_the_cause() {
    let service = service(Script::default(), 100).await;
    let expect = |result: Result<ModelInferResponse, Status>, code: Code, message: &str| {
        let status = result.expect_err("an error");
        assert_eq!((status.code(), status.message()), (code, message));
    };
    let mut unknown = typed(&[1.0]);
    unknown.model_name = "nowhere".into();
    expect(
        infer(&service, unknown).await,
        Code::NotFound,
        "Model not found: nowhere",
    );
    let mut version = typed(&[1.0]);
    version.model_version = "9".into();
    expect(
        infer(&service, version).await,
        Code::NotFound,
        "Model version: 9 does not exist for model: m",
    );
    let mut datatype = typed(&[1.0]);
    datatype.inputs[0].datatype = "INT32".into();
    expect(
        infer(&service, datatype).await,
        Code::InvalidArgument,
        "input 'x': datatype is INT32 but the model takes FP32",
    );
    let mut count = typed(&[1.0, 2.0]);
    count.inputs[0].shape = vec![3, 1];
    expect(
        infer(&service, count).await,
        Code::InvalidArgument,
        "input 'x': shape [3, 1] has 3 elements but the contents hold 2",
    );
    let mut output = typed(&[1.0]);
    output.outputs = vec![InferRequestedOutputTensor {
        name: "z".into(),
        ..Default::default()
    }];
    expect(
        infer(&service, output).await,
        Code::InvalidArgument,
        "unknown output 'z'; the model's outputs are: y",
    );
    let mut half = typed(&[]);
    half.inputs[0].datatype = "FP16".into();
    let fp16 = infer(&service, half).await.unwrap_err();
    assert_eq!(fp16.code(), Code::InvalidArgument, "{fp16:?}");
}

#[tokio::test]
async fn contents_are_sent_one_way_in_the_field_their_datatype_names() {
    let service = service(Script::default(), 100).await;
    let refused = |result: Result<ModelInferResponse, Status>| {
        let status = result.expect_err("an error");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        status.message().to_string()
    };
    // Typed contents beside raw ones: raw used to win, silently.
    let mut both = typed(&[0.0]);
    both.raw_input_contents = vec![7.25f32.to_le_bytes().to_vec().into()];
    assert_eq!(
        refused(infer(&service, both).await),
        "input 'x': has typed contents, and raw_input_contents are used: send every \
         input's values one way, all in raw_input_contents or all in contents"
    );
    // Values in another type's field are named, not counted as none.
    let mut ints = typed(&[]);
    ints.inputs[0].shape = vec![2, 1];
    ints.inputs[0].contents = Some(Box::new(InferTensorContents {
        int_contents: vec![1, 2],
        ..InferTensorContents::default()
    }));
    assert_eq!(
        refused(infer(&service, ints).await),
        "input 'x': a FP32 tensor's values go in contents.fp32_contents, and \
         contents.int_contents was sent"
    );
    // An empty contents message beside raw bytes is no contents.
    let mut empty = typed(&[]);
    empty.inputs[0].shape = vec![1, 1];
    empty.raw_input_contents = vec![7.25f32.to_le_bytes().to_vec().into()];
    let answer = infer(&service, empty).await.unwrap();
    assert_eq!(answer.raw_output_contents, [7.25f32.to_le_bytes().to_vec()]);
}

#[tokio::test]
async fn a_status_quotes_at_most_a_kilobyte_of_the_call() {
    let service = service(Script::default(), 100).await;
    let mut unknown = typed(&[1.0]);
    unknown.model_name = "a".repeat(100_000);
    let status = infer(&service, unknown).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let message = status.message();
    assert!(message.starts_with("Model not found: aaaa"), "{message}");
    assert!(message.ends_with('…'), "{message}");
    assert_eq!(message.len(), MAX_MESSAGE + '…'.len_utf8());
    // A cut inside a character backs off to its start.
    let euros = bounded_message("€".repeat(1000));
    assert_eq!(euros.len(), 1023 + '…'.len_utf8(), "three bytes a euro");
    assert_eq!(bounded_message("short".into()), "short");
}

#[tokio::test]
async fn an_answer_over_max_response_size_is_refused_and_counted() {
    let mut service = service(Script::default(), 100).await;
    service.max_answer = 40;
    let answer = infer(&service, typed(&[1.0])).await.unwrap();
    let size = prost::Message::encoded_len(&answer);
    assert!(size <= 40, "{size}");
    let status = infer(&service, typed(&[1.0; 8])).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status
            .message()
            .ends_with("over max_response_size=40; send fewer rows or raise max_response_size"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_full_queue_is_unavailable_naming_job_queue_size() {
    let script = Script {
        run_latency: Duration::from_millis(300),
        ..Script::default()
    };
    let service = Arc::new(service(script, 1).await);
    let running = tokio::spawn({
        let service = service.clone();
        async move { infer(&service, typed(&[1.0])).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let queued = tokio::spawn({
        let service = service.clone();
        async move { infer(&service, typed(&[2.0])).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = infer(&service, typed(&[3.0])).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(
        refused.message().contains("(jobQueueSize)"),
        "{}",
        refused.message()
    );
    assert!(running.await.unwrap().is_ok() && queued.await.unwrap().is_ok());
}

#[tokio::test]
async fn the_calls_deadline_ends_it_deadline_exceeded() {
    let script = Script {
        run_latency: Duration::from_secs(2),
        ..Script::default()
    };
    let service = service(script, 100).await;
    let mut call = Request::new(typed(&[1.0]));
    call.metadata_mut()
        .insert("grpc-timeout", "200m".parse().unwrap());
    let status = service.model_infer(call).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("the call's deadline (grpc-timeout) passed"),
        "{status:?}"
    );
}

#[tokio::test]
async fn the_repository_index_lists_versions_in_tritons_words() {
    let service = service(Script::default(), 100).await;
    let all = service
        .repository_index(Request::new(RepositoryIndexRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<_> = all
        .models
        .iter()
        .map(|m| (m.name.as_str(), m.version.as_str(), m.state.as_str()))
        .collect();
    assert_eq!(listed, [("m", "1.0", "READY")]);
}

#[tokio::test]
async fn repository_loads_name_the_setting_that_allows_them() {
    let service = service(Script::default(), 100).await;
    let load = RepositoryModelLoadRequest {
        model_name: "other".into(),
        ..RepositoryModelLoadRequest::default()
    };
    let refused = service
        .repository_model_load(Request::new(load))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("enable_model_api=true"),
        "{refused:?}"
    );
    let mut unload = RepositoryModelUnloadRequest {
        model_name: "m".into(),
        ..RepositoryModelUnloadRequest::default()
    };
    unload
        .parameters
        .insert("config".into(), ModelRepositoryParameter::default());
    let refused = service
        .repository_model_unload(Request::new(unload))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("[\"config\"]"), "{refused:?}");
}

mod torchserve {
    use std::collections::HashMap;

    use futures_util::StreamExt;

    use super::super::proto::org::pytorch::serve::grpc::inference::PredictionsRequest;
    use super::super::proto::org::pytorch::serve::grpc::inference::inference_ap_is_service_server::InferenceApIsService;
    use super::super::torchserve::TorchServeInference;
    use super::*;

    async fn torchserve() -> TorchServeInference {
        let service = service(Script::default(), 100).await;
        TorchServeInference {
            registry: service.registry,
            tokens: None,
            max_answer: service.max_answer,
        }
    }

    fn predictions(model: &str, key: &str, body: &str) -> PredictionsRequest {
        PredictionsRequest {
            model_name: model.into(),
            input: HashMap::from([(key.to_string(), body.as_bytes().to_vec())]),
            ..PredictionsRequest::default()
        }
    }

    #[tokio::test]
    async fn ping_answers_the_rest_pings_text() {
        let service = torchserve().await;
        let health = service.ping(Request::new(())).await.unwrap().into_inner();
        assert_eq!(health.health, "{\n  \"status\": \"Healthy\"\n}\n");
    }

    #[tokio::test]
    async fn predictions_run_the_data_entry_as_a_raw_body() {
        let service = torchserve().await;
        for key in ["data", "body"] {
            let call = Request::new(predictions("m", key, "[[1.5],[2.5]]"));
            let answer = service.predictions(call).await.unwrap().into_inner();
            assert_eq!(answer.prediction, b"[[1.5],[2.5]]");
        }
        let call = Request::new(predictions("m", "image", "[[1.5]]"));
        let refused = service.predictions(call).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains("input[\"data\"]"), "{refused:?}");
        let call = Request::new(predictions("nope", "data", "[[1.5]]"));
        let refused = service.predictions(call).await.unwrap_err();
        assert_eq!(
            (refused.code(), refused.message()),
            (Code::NotFound, "Model not found: nope")
        );
    }

    #[tokio::test]
    async fn stream_predictions_answers_once() {
        let service = torchserve().await;
        let call = Request::new(predictions("m", "data", "[[3.0]]"));
        let answers: Vec<_> = service
            .stream_predictions(call)
            .await
            .unwrap()
            .into_inner()
            .collect()
            .await;
        let [Ok(only)] = &answers[..] else {
            panic!("one answer, not {answers:?}");
        };
        assert_eq!(only.prediction, b"[[3.0]]");
    }
}
