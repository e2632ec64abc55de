//! OpenTelemetry tracing through the real server, against a loopback fake
//! OTLP/HTTP collector (an axum route that decodes `ExportTraceServiceRequest`
//! protobuf bodies). With `OTEL_EXPORTER_OTLP_ENDPOINT` set, a prediction
//! exports a server span that continues the caller's `traceparent` (or starts
//! a fresh trace without one), child spans for its stages, and a batch
//! `inference` span in its own trace linking every request it served; probes
//! and scrapes make no spans. Without the variable nothing is exported.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

const WAIT: Duration = Duration::from_secs(20);
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// A caller that decided not to sample: nothing of its request is exported.
const UNSAMPLED_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const UNSAMPLED: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
const SERVER_SPAN: &str = "POST /predictions/{model}";
const STAGES: [&str; 3] = ["preprocess", "queue wait", "postprocess"];
const MODEL_CONFIG: &str = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 4\nmaxBatchDelay: 50\n";

/// One exported span and the `service.name` of the resource it came with.
#[derive(Clone)]
struct Exported {
    service: String,
    span: Span,
}

/// What the fake collector received.
#[derive(Default)]
struct Collector {
    /// The content type of every export request, in arrival order.
    content_types: Mutex<Vec<String>>,
    /// Bodies that did not decode as `ExportTraceServiceRequest`.
    undecodable: Mutex<Vec<String>>,
    spans: Mutex<Vec<Exported>>,
}

impl Collector {
    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()
}

fn string_attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attribute(attributes, key) {
        Some(AnyValue::StringValue(text)) => Some(text),
        _ => None,
    }
}

/// `POST /v1/traces`: records every span; answers as a collector does (an
/// empty `ExportTraceServiceResponse` encodes to zero bytes).
async fn receive(
    State(collector): State<Arc<Collector>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    collector
        .content_types
        .lock()
        .unwrap()
        .push(content_type.to_string());
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(error) => {
            collector
                .undecodable
                .lock()
                .unwrap()
                .push(error.to_string());
            return reply(StatusCode::BAD_REQUEST);
        }
    };
    let mut spans = collector.spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.unwrap_or_default();
        let service = string_attribute(&resource.attributes, "service.name")
            .unwrap_or_default()
            .to_string();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(Exported {
                    service: service.clone(),
                    span,
                });
            }
        }
    }
    reply(StatusCode::OK)
}

fn reply(status: StatusCode) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/x-protobuf")
        .body(Body::empty())
        .unwrap()
}

/// Serves the fake collector on `listener`.
fn serve_collector(listener: tokio::net::TcpListener) -> Arc<Collector> {
    let collector = Arc::new(Collector::default());
    let app = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(collector.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    collector
}

/// The fake collector on a free port, and its endpoint URL.
async fn collector() -> (Arc<Collector>, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    (serve_collector(listener), endpoint)
}

fn linear_store() -> Store {
    let store = Store::new();
    store.dir_model("linear", "linear", Some(MODEL_CONFIG));
    store
}

/// The OTEL variables every launch gets apart from the endpoint: a short
/// batch delay so spans arrive quickly, and a recognisable service name.
fn otel_settings(launch: Launch) -> Launch {
    launch
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_SERVICE_NAME", "ortserve-test")
}

/// POSTs one prediction (with `traceparent` if given); asserts it answers
/// 200 and returns its `x-request-id`.
async fn predict(server: &Server, traceparent: Option<&str>) -> String {
    let mut request = server
        .client
        .post(server.url("/predictions/linear"))
        .header("content-type", "application/json")
        .body("[[1, 2, 3, 4]]");
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.send().await.expect("POST");
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let (status, answer) = status_json(response).await;
    assert_eq!(status, 200, "{answer}");
    id
}

fn describe(spans: &[Exported]) -> String {
    spans
        .iter()
        .map(|e| {
            let s = &e.span;
            let links: Vec<String> = s
                .links
                .iter()
                .map(|l| format!("{}/{}", hex(&l.trace_id), hex(&l.span_id)))
                .collect();
            format!(
                "  {:?} kind={} trace={} span={} parent={} links={links:?} service={:?}",
                s.name,
                s.kind,
                hex(&s.trace_id),
                hex(&s.span_id),
                hex(&s.parent_span_id),
                e.service
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls the collector until `check` passes on what it received; past
/// `WAIT`, fails with `check`'s reason, every span received and the server
/// log (export errors show there). `eventually` is not used because its
/// timeout message cannot say which span is missing.
async fn wait_for_spans(
    collector: &Collector,
    server: &Server,
    check: impl Fn(&[Exported]) -> Result<(), String>,
) -> Vec<Exported> {
    let deadline = Instant::now() + WAIT;
    loop {
        let spans = collector.spans();
        match check(&spans) {
            Ok(()) => return spans,
            Err(why) if Instant::now() >= deadline => panic!(
                "{why}\nspans received:\n{}\nserver log:\n{}",
                describe(&spans),
                server.log()
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn ensure(ok: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(why()) }
}

/// The server span whose `ortserve.request_id` is `request_id`.
fn server_span<'a>(spans: &'a [Exported], request_id: &str) -> Result<&'a Span, String> {
    spans
        .iter()
        .map(|e| &e.span)
        .find(|s| string_attribute(&s.attributes, "ortserve.request_id") == Some(request_id))
        .ok_or_else(|| format!("no span has ortserve.request_id = {request_id:?}"))
}

/// Name, kind and status of a prediction's server span.
fn check_server_span(span: &Span) -> Result<(), String> {
    ensure(span.name == SERVER_SPAN, || {
        format!("server span named {:?}, want {SERVER_SPAN:?}", span.name)
    })?;
    ensure(span.kind == SpanKind::Server as i32, || {
        format!(
            "server span {:?} has kind {}, want SERVER",
            span.name, span.kind
        )
    })?;
    let status = attribute(&span.attributes, "http.response.status_code");
    ensure(status == Some(&AnyValue::IntValue(200)), || {
        format!("server span http.response.status_code = {status:?}, want int 200")
    })
}

/// Some `inference` span links to `span`; returns it.
fn inference_linking<'a>(spans: &'a [Exported], span: &Span) -> Result<&'a Span, String> {
    spans
        .iter()
        .map(|e| &e.span)
        .find(|s| {
            s.name == "inference"
                && s.links
                    .iter()
                    .any(|l| l.trace_id == span.trace_id && l.span_id == span.span_id)
        })
        .ok_or_else(|| {
            format!(
                "no inference span links to server span {}/{}",
                hex(&span.trace_id),
                hex(&span.span_id)
            )
        })
}

/// The request sent with `TRACEPARENT`: its server span continues that
/// trace, has the three stage spans as children, and a root `inference`
/// span in another trace links to it.
fn check_traced(spans: &[Exported], request_id: &str) -> Result<(), String> {
    let server = server_span(spans, request_id)?;
    ensure(hex(&server.trace_id) == TRACE_ID, || {
        format!("traced server span is in trace {}", hex(&server.trace_id))
    })?;
    ensure(hex(&server.parent_span_id) == PARENT_ID, || {
        format!(
            "traced server span's parent is {:?}",
            hex(&server.parent_span_id)
        )
    })?;
    check_server_span(server)?;
    for stage in STAGES {
        let child = spans.iter().any(|e| {
            e.span.name == stage
                && e.span.parent_span_id == server.span_id
                && hex(&e.span.trace_id) == TRACE_ID
        });
        ensure(child, || {
            format!("no {stage:?} span is a child of the traced server span")
        })?;
    }
    let batch = inference_linking(spans, server)?;
    ensure(batch.parent_span_id.is_empty(), || {
        format!("inference span has parent {}", hex(&batch.parent_span_id))
    })?;
    ensure(hex(&batch.trace_id) != TRACE_ID, || {
        "the inference span is in the caller's trace, not its own".to_string()
    })
}

/// Requests sent without `traceparent`: each server span is a root in a
/// trace of its own, and some `inference` span links to each.
fn check_untraced(spans: &[Exported], request_ids: &[String]) -> Result<(), String> {
    let mut traces = vec![TRACE_ID.to_string()];
    for id in request_ids {
        let server = server_span(spans, id)?;
        check_server_span(server)?;
        ensure(server.parent_span_id.is_empty(), || {
            format!(
                "untraced server span has parent {}",
                hex(&server.parent_span_id)
            )
        })?;
        let trace = hex(&server.trace_id);
        ensure(!traces.contains(&trace), || {
            format!("untraced server span reuses trace {trace}")
        })?;
        traces.push(trace);
        inference_linking(spans, server)?;
    }
    Ok(())
}

/// What holds for every span and export request once traffic is done.
fn check_all(collector: &Collector, spans: &[Exported]) {
    let names = describe(spans);
    for e in spans {
        assert_eq!(e.service, "ortserve-test", "service.name; spans:\n{names}");
        assert!(
            !["/ping", "/v2/health", "/metrics"]
                .iter()
                .any(|p| e.span.name.contains(p)),
            "a probe or scrape made span {:?}; spans:\n{names}",
            e.span.name
        );
        // Only predictions were served (besides probes), so every server
        // span is a prediction's.
        if e.span.kind == SpanKind::Server as i32 {
            assert_eq!(e.span.name, SERVER_SPAN, "spans:\n{names}");
        }
    }
    let content_types = collector.content_types.lock().unwrap().clone();
    assert!(
        content_types.iter().all(|t| t == "application/x-protobuf"),
        "export content types: {content_types:?}"
    );
    let undecodable = collector.undecodable.lock().unwrap().clone();
    assert!(
        undecodable.is_empty(),
        "undecodable exports: {undecodable:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_export_linked_spans_and_probes_export_none() {
    let (collector, endpoint) = collector().await;
    let store = linear_store();
    let launch =
        otel_settings(Launch::store(&store, "all")).env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
    let server = Server::healthy(launch.property("metrics_on_inference_port=true")).await;
    server.metrics().await;
    for _ in 0..3 {
        for probe in ["/ping", "/v2/health/ready", "/v2/health/live", "/metrics"] {
            assert_eq!(server.get(probe).await.status(), 200, "{probe}");
        }
    }
    let traced = predict(&server, Some(TRACEPARENT)).await;
    predict(&server, Some(UNSAMPLED)).await;
    // Sent together so they may share a batch: its inference span must then
    // link to each of them.
    let (a, b, c) = tokio::join!(
        predict(&server, None),
        predict(&server, None),
        predict(&server, None)
    );
    let untraced = [a, b, c];
    let spans = wait_for_spans(&collector, &server, |spans| {
        check_traced(spans, &traced)?;
        check_untraced(spans, &untraced)
    })
    .await;
    check_all(&collector, &spans);
    assert!(
        spans
            .iter()
            .all(|e| hex(&e.span.trace_id) != UNSAMPLED_TRACE_ID
                && e.span
                    .links
                    .iter()
                    .all(|l| hex(&l.trace_id) != UNSAMPLED_TRACE_ID)),
        "an unsampled request was exported or linked:\n{}",
        describe(&spans)
    );
}

/// The variables that send an OTLP/HTTP exporter's requests for any address
/// to `collector` as an HTTP proxy: the exporter's client (reqwest) honours
/// `http_proxy`, so the fake collector also sees what goes to the default
/// endpoint, http://localhost:4318, whatever listens there.
fn through_proxy(launch: Launch, collector: &str) -> Launch {
    launch
        .env("http_proxy", collector)
        .env("HTTP_PROXY", collector)
        .env("no_proxy", "")
        .env("NO_PROXY", "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported() {
    // The harness passes the test's own environment on to the server.
    assert!(
        std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
            && std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none(),
        "unset OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_TRACES_ENDPOINT to run this test"
    );
    let (collector, proxy) = collector().await;
    let store = linear_store();

    // The control: with the default endpoint named explicitly, spans reach
    // the fake collector through the proxy. So an exporter built without the
    // variable (which would send to that same default) is seen below.
    let control = Server::healthy(through_proxy(
        otel_settings(Launch::store(&store, "all"))
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")
            .env("OTEL_SERVICE_NAME", "ortserve-control"),
        &proxy,
    ))
    .await;
    let traced = predict(&control, Some(TRACEPARENT)).await;
    wait_for_spans(&collector, &control, |spans| {
        let server_span = server_span(spans, &traced)?;
        ensure(
            spans.iter().any(|e| e.service == "ortserve-control"),
            || "no span from the control server".into(),
        )?;
        check_server_span(server_span)
    })
    .await;
    // Killed: a late export of the control's is told apart by its service.
    drop(control);

    // The same route, no endpoint variable: nothing may arrive.
    let server = Server::healthy(through_proxy(
        otel_settings(Launch::store(&store, "all")),
        &proxy,
    ))
    .await;
    predict(&server, Some(TRACEPARENT)).await;
    predict(&server, None).await;
    // Ten times the batch delay: anything exported would have arrived.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let from_server: Vec<Exported> = collector
        .spans()
        .into_iter()
        .filter(|e| e.service != "ortserve-control")
        .collect();
    assert!(
        from_server.is_empty(),
        "exported without an endpoint; spans:\n{}",
        describe(&from_server)
    );
}

/// A gRPC call's `traceparent` metadata is continued as a REST header is:
/// its server span is in the caller's trace, under the caller's span, and
/// the batch's `inference` span links to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_continues_the_traceparent_in_its_metadata() {
    use ortserve::protocol::grpc_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
    use ortserve::protocol::grpc_proto::inference::model_infer_request::InferInputTensor;
    use ortserve::protocol::grpc_proto::inference::{InferTensorContents, ModelInferRequest};

    let (collector, endpoint) = collector().await;
    let store = linear_store();
    let launch =
        otel_settings(Launch::store(&store, "all")).env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
    let server = Server::healthy(launch).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_address()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut call = tonic::Request::new(ModelInferRequest {
        model_name: "linear".into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, 4],
            contents: Some(Box::new(InferTensorContents {
                fp32_contents: vec![1.0, 2.0, 3.0, 4.0],
                ..InferTensorContents::default()
            })),
            ..InferInputTensor::default()
        }],
        ..ModelInferRequest::default()
    });
    call.metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().unwrap());
    call.metadata_mut()
        .insert("x-request-id", "grpc-traced".parse().unwrap());
    let mut client = GrpcInferenceServiceClient::new(channel);
    client
        .model_infer(call)
        .await
        .expect("the call is answered");
    wait_for_spans(&collector, &server, |spans| {
        let span = server_span(spans, "grpc-traced")?;
        ensure(
            span.name == "POST /inference.GRPCInferenceService/ModelInfer",
            || format!("the gRPC server span is named {:?}", span.name),
        )?;
        ensure(
            hex(&span.trace_id) == TRACE_ID && hex(&span.parent_span_id) == PARENT_ID,
            || "the gRPC server span does not continue the traceparent".to_string(),
        )?;
        inference_linking(spans, span).map(|_| ())
    })
    .await;
}
