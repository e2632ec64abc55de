//! Allocations per request, counted: the guard `make test` keeps over what
//! the benchmark measures but a test must not time. The test binary's
//! allocator counts the allocations a thread makes while it has armed the
//! count; a request runs wholly on the test's thread (a current-thread
//! runtime: routing, body, parsing, the queue's task, encoding), while the
//! fake's worker threads go uncounted. Batches are kept off the request's
//! thread (`inlineRunMicros: 0`) so that the fake's own allocations, which
//! an ORT session does not share, stay uncounted too.
//!
//! Two things are held: no protocol allocates per number (a row of 784
//! numbers allocates no more often than a row of one, bar the doublings of
//! a growing buffer; binary tensors are copied once in and once out), and each
//! protocol's count for a one-number request stays within its budget, as
//! does its count of allocations too large for glibc's per-thread cache. A budget
//! is today's count with a little room; raise it only with a reason. gRPC's
//! `ModelInfer` is counted the same way, through tonic's generated service
//! in-process (its HTTP/2, h2's and hyper's, is not in the count).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use axum::body::{Body, Bytes};
use axum::http::Request;
use http_body_util::{BodyExt, Collected, Full};
use prost::Message;
use tower::ServiceExt;

use super::{Server, post};
use crate::config::ModelConfig;
use crate::protocol::grpc::InferenceService;
use crate::protocol::grpc::proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::protocol::grpc::proto::inference::model_infer_request::InferInputTensor;
use crate::protocol::grpc::proto::inference::{ModelInferRequest, ModelInferResponse};
use crate::registry::testing::{FakeModel, Script};
use crate::types::{DataType, ModelIo, TensorSpec};

struct CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

thread_local! {
    /// What this thread allocated since it armed the count; `None` when not armed.
    static COUNT: Cell<Option<Allocations>> = const { Cell::new(None) };
}

/// The largest request glibc serves from its per-thread cache; larger ones
/// take its arena's slower path (several times the instructions).
const THREAD_CACHE_MAX: usize = 1032;

fn note(bytes: usize) {
    // `try_with`: a thread being torn down may still allocate.
    let _ = COUNT.try_with(|count| {
        if let Some(so_far) = count.get() {
            count.set(Some(Allocations {
                count: so_far.count + 1,
                bytes: so_far.bytes + bytes,
                large: so_far.large + usize::from(bytes > THREAD_CACHE_MAX),
            }));
        }
    });
}

// SAFETY: every call is passed on to `System` unchanged; counting touches
// only a const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// What one request allocated on the test's thread.
#[derive(Debug, Clone, Copy)]
struct Allocations {
    count: usize,
    bytes: usize,
    /// Allocations past [`THREAD_CACHE_MAX`].
    large: usize,
}

/// One protocol's request: one row of `width` numbers for the echo model
/// served as `model` (`x` `[-1, width]` f32 → `y`).
struct Route {
    name: &'static str,
    request: fn(model: &str, width: usize) -> Request<Body>,
    /// Allocations for a one-number request, at most (2026-12-04, last: 16, 22,
    /// 21 and 24: the prediction routes are matched without axum's router,
    /// its parameter list, extension map and boxed service clones; before
    /// that 33, 39, 38 and 41: a body that comes in one chunk is kept without a list
    /// to hold it; before that 34, 40, 39 and 42: TorchServe predicts a raw
    /// body without putting it in a one-element list first; later: 35,
    /// 40, 39 and 42: the JSON reader keeps its nesting bookkeeping on the
    /// stack, v2 reads elements without building the shape it was given,
    /// and TorchServe tells a multipart body without lowercasing a copy of
    /// its `Content-Type`; earlier that day 37, 41, 41 and 41: a binary
    /// answer's header map is made with room for its seventh header rather
    /// than grown to it, two allocations fewer; on 2026-12-03 adapters moved
    /// the request's headers rather than clone them, from 40, 44, 44 and 47).
    budget: usize,
    /// Of those, allocations past glibc's per-thread cache, at most
    /// (2026-12-04, last: none; until then a binary answer's header map, sized
    /// to 12 entries for its seven headers with the length; the handler's
    /// boxed future was one more before the adapters returned their
    /// futures from plain functions, and the `observe` middleware's future
    /// one more before it held the request only once).
    large_budget: usize,
}

const ROUTES: [Route; 4] = [
    Route {
        name: "TorchServe /predictions",
        request: torchserve,
        budget: 16,
        large_budget: 0,
    },
    Route {
        name: "KServe v1 :predict",
        request: kserve_v1,
        budget: 22,
        large_budget: 0,
    },
    Route {
        name: "v2 JSON",
        request: v2_json,
        budget: 21,
        large_budget: 0,
    },
    Route {
        name: "v2 binary",
        request: v2_binary,
        budget: 24,
        large_budget: 0,
    },
];

/// An MNIST-shaped row's worth of numbers.
const WIDE: usize = 784;

fn row(width: usize) -> String {
    let numbers: Vec<String> = (0..width).map(|i| format!("{}.5", i % 10)).collect();
    format!("[{}]", numbers.join(","))
}

fn torchserve(model: &str, width: usize) -> Request<Body> {
    let body = format!("[{}]", row(width));
    post(&format!("/predictions/{model}"), "application/json", body)
}

fn kserve_v1(model: &str, width: usize) -> Request<Body> {
    let body = format!(r#"{{"instances": [{}]}}"#, row(width));
    post(
        &format!("/v1/models/{model}:predict"),
        "application/json",
        body,
    )
}

fn v2_json(model: &str, width: usize) -> Request<Body> {
    let body = format!(
        r#"{{"inputs":[{{"name":"x","shape":[1,{width}],"datatype":"FP32","data":{}}}]}}"#,
        row(width)
    );
    post(
        &format!("/v2/models/{model}/infer"),
        "application/json",
        body,
    )
}

fn v2_binary(model: &str, width: usize) -> Request<Body> {
    let header = format!(
        r#"{{"inputs":[{{"name":"x","shape":[1,{width}],"datatype":"FP32","parameters":{{"binary_data_size":{}}}}}],"outputs":[{{"name":"y","parameters":{{"binary_data":true}}}}]}}"#,
        width * 4
    );
    let mut body = header.clone().into_bytes();
    body.extend((0..width).flat_map(|i| (i as f32 + 0.5).to_le_bytes()));
    let path = format!("/v2/models/{model}/infer");
    let mut request = post(&path, "application/octet-stream", Bytes::from(body));
    request
        .headers_mut()
        .insert("inference-header-content-length", header.len().into());
    request
}

/// Echo models one number wide (`narrow`) and [`WIDE`] numbers wide (`wide`).
async fn server() -> Server {
    let server = Server::empty(false);
    for (name, width) in [("narrow", 1), ("wide", WIDE as i64)] {
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            dtype: DataType::F32,
            shape: vec![-1, width],
        };
        let io = ModelIo {
            inputs: vec![spec("x")],
            outputs: vec![spec("y")],
        };
        let fake = FakeModel::with_io(Script::default(), io);
        let on_worker_threads = |config: &mut ModelConfig| {
            config.pool.inline_run_limit = std::time::Duration::ZERO;
        };
        server.serve(name, "1.0", &fake, on_worker_threads).await;
    }
    server
}

/// Allocations a buffer that grows by doubling may add between one number
/// and [`WIDE`]: fewer than one per number by far.
const GROWTH: usize = 16;

/// The fewest allocations of five identical calls, after one that warms up
/// what is made once (metric series, the queue's buffers). Each call's
/// request is made before the count is armed, and its answer checked after.
async fn fewest<R, T, F: Future<Output = T>>(
    make: impl Fn() -> R,
    call: impl Fn(R) -> F,
    check: impl Fn(T),
) -> Allocations {
    check(call(make()).await);
    let mut fewest: Option<Allocations> = None;
    for _ in 0..5 {
        let request = make();
        let none = Allocations {
            count: 0,
            bytes: 0,
            large: 0,
        };
        COUNT.with(|count| count.set(Some(none)));
        let answer = call(request).await;
        let these = COUNT.with(|count| count.take()).expect("armed");
        check(answer);
        if fewest.is_none_or(|f| these.count < f.count) {
            fewest = Some(these);
        }
    }
    fewest.expect("five calls")
}

async fn allocations(server: &Server, route: &Route, model: &str, width: usize) -> Allocations {
    let app = server.app();
    fewest(
        || (route.request)(model, width),
        |request| super::send(app.clone(), request),
        |reply| assert_eq!(reply.status, 200, "{}: {}", route.name, reply.text()),
    )
    .await
}

/// Allocations for a one-number gRPC `ModelInfer` call with raw contents, at
/// most (2026-12-05: 40; 41 with tonic's own codec). It goes through tonic's
/// generated service, the codec and ortserve's call path, as on the gRPC
/// listener; HTTP/2 itself (h2 and hyper) is not in the count.
const MODEL_INFER_BUDGET: usize = 41;
/// Of those, allocations past glibc's per-thread cache, at most (2026-12-05:
/// 2, the generated service's boxed future among them; 6 before that day:
/// tonic's codec's two 8 KiB buffers, which [`crate::protocol::grpc::codec`]
/// replaces, and the request's and the answer's lists of tensors, each
/// with room for four 312-byte tensors until the input's typed contents
/// were boxed and the answer's list sized).
const MODEL_INFER_LARGE_BUDGET: usize = 2;

/// One `ModelInfer` call with a row of `width` numbers as raw contents, as
/// tritonclient sends it, framed as on the wire.
fn model_infer(model: &str, width: usize) -> hyper::Request<Full<Bytes>> {
    let call = ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, width as i64],
            ..InferInputTensor::default()
        }],
        raw_input_contents: vec![row_bytes(width).into()],
        ..ModelInferRequest::default()
    };
    let message = call.encode_to_vec();
    let mut framed = vec![0];
    framed.extend(u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend(message);
    hyper::Request::post("/inference.GRPCInferenceService/ModelInfer")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(framed)))
        .expect("a valid call")
}

/// The row [`model_infer`] sends, as little-endian `f32`s: the echo model's answer.
fn row_bytes(width: usize) -> Vec<u8> {
    (0..width).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

async fn grpc_allocations(server: &Server, model: &str, width: usize) -> Allocations {
    let service = GrpcInferenceServiceServer::new(InferenceService::over(server.registry.clone()));
    let call = |request| {
        let service = service.clone();
        async move {
            let answer = service.oneshot(request).await.expect("infallible");
            answer
                .into_body()
                .collect()
                .await
                .expect("a readable answer")
        }
    };
    let check = |answer: Collected<Bytes>| {
        let status = answer.trailers().and_then(|t| t.get("grpc-status"));
        assert_eq!(status.map(|s| s.as_bytes()), Some(&b"0"[..]), "{answer:?}");
        let framed = answer.to_bytes();
        let message = ModelInferResponse::decode(&framed[5..]).expect("a ModelInferResponse");
        assert_eq!(message.raw_output_contents, [row_bytes(width)]);
    };
    fewest(|| model_infer(model, width), call, check).await
}

#[tokio::test]
async fn no_protocol_allocates_per_number() {
    let server = server().await;
    for route in &ROUTES {
        let one = allocations(&server, route, "narrow", 1).await;
        let wide = allocations(&server, route, "wide", WIDE).await;
        println!("{}: 1 number {one:?}, {WIDE} numbers {wide:?}", route.name);
        assert!(
            wide.count <= one.count + GROWTH,
            "{}: {} allocations for a row of {WIDE} numbers against {} for one",
            route.name,
            wide.count,
            one.count
        );
    }
}

#[tokio::test]
async fn one_number_requests_stay_within_their_budgets() {
    let server = server().await;
    for route in &ROUTES {
        let one = allocations(&server, route, "narrow", 1).await;
        println!("{}: {one:?} (budget {})", route.name, route.budget);
        assert!(
            one.count <= route.budget,
            "{}: {} allocations for a one-number request, over its budget of {}",
            route.name,
            one.count,
            route.budget
        );
        assert!(
            one.large <= route.large_budget,
            "{}: {} allocations past {THREAD_CACHE_MAX} bytes for a one-number request, \
             over its budget of {}",
            route.name,
            one.large,
            route.large_budget
        );
    }
}

#[tokio::test]
async fn binary_tensors_are_copied_once_each_way() {
    let server = server().await;
    let binary = &ROUTES[3];
    let one = allocations(&server, binary, "narrow", 1).await;
    let wide = allocations(&server, binary, "wide", WIDE).await;
    let tensor = 4 * WIDE;
    // The input from the body into its tensor, the output into the answer;
    // a little for buffers that round their sizes up.
    let most = 2 * tensor + 256;
    assert!(
        wide.bytes - one.bytes <= most,
        "{} more bytes allocated for a {tensor}-byte tensor than for a 4-byte one: more than one copy each way",
        wide.bytes - one.bytes
    );
}

#[tokio::test]
async fn grpc_calls_stay_within_their_budget_and_allocate_no_more_for_more_numbers() {
    let server = server().await;
    let one = grpc_allocations(&server, "narrow", 1).await;
    let wide = grpc_allocations(&server, "wide", WIDE).await;
    println!(
        "gRPC ModelInfer: 1 number {one:?}, {WIDE} numbers {wide:?} (budget {MODEL_INFER_BUDGET})"
    );
    assert!(
        one.count <= MODEL_INFER_BUDGET,
        "{} allocations for a one-number ModelInfer call, over its budget of {MODEL_INFER_BUDGET}",
        one.count
    );
    assert!(
        one.large <= MODEL_INFER_LARGE_BUDGET,
        "{} allocations past {THREAD_CACHE_MAX} bytes for a one-number ModelInfer call, \
         over its budget of {MODEL_INFER_LARGE_BUDGET}",
        one.large
    );
    assert!(
        wide.count <= one.count + GROWTH,
        "{} allocations for a ModelInfer call of {WIDE} numbers against {} for one",
        wide.count,
        one.count
    );
}
