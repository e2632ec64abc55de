//! gRPC through the real server with tonic's client (the generated clients
//! the library exports): a gRPC call and a REST request share one batch; a
//! call its client cancels is dropped before compute; every gRPC call is
//! counted under its protocol and has its access-log line; an answer longer
//! than an HTTP/2 frame, given to hyper in frame-sized pieces, arrives whole;
//! calls that arrive together are answered in one write (HTTP/2 frames by
//! hand, [`RawHttp2`]).

use std::collections::HashMap;
use std::time::Duration;

use ortserve::protocol::grpc_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use ortserve::protocol::grpc_proto::inference::model_infer_request::InferInputTensor;
use ortserve::protocol::grpc_proto::inference::{
    InferTensorContents, ModelInferRequest, ModelInferResponse,
};
use ortserve::protocol::grpc_proto::org::pytorch::serve::grpc::inference::PredictionsRequest;
use ortserve::protocol::grpc_proto::org::pytorch::serve::grpc::inference::inference_ap_is_service_client::InferenceApIsServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::batching_and_workers::{
    SERIAL, assert_dropped_before_compute, batches_of, slow, slow_config,
};
use crate::common::*;

async fn channel(server: &Server) -> Channel {
    Endpoint::from_shared(format!("http://{}", server.grpc_address()))
        .unwrap()
        .connect()
        .await
        .expect("the gRPC listener accepts")
}

/// A one-input call with typed FP32 contents.
fn call(model: &str, input: &str, shape: Vec<i64>, values: Vec<f32>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: input.into(),
            datatype: "FP32".into(),
            shape,
            contents: Some(Box::new(InferTensorContents {
                fp32_contents: values,
                ..InferTensorContents::default()
            })),
            ..InferInputTensor::default()
        }],
        ..ModelInferRequest::default()
    }
}

/// The first output's values (typed contents answer typed contents).
fn fp32_output(answer: &ModelInferResponse) -> Vec<f32> {
    let contents = answer.outputs[0].contents.as_ref().expect("typed contents");
    contents.fp32_contents.clone()
}

#[tokio::test]
async fn a_grpc_call_and_a_rest_request_share_one_batch() {
    let _serial = SERIAL.lock().await;
    let store = Store::new();
    // The batch waits (up to 5 s) until both rows are there.
    let config = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 2\nmaxBatchDelay: 5000\n";
    store.dir_model("linear", "linear", Some(config));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let mut client = GrpcInferenceServiceClient::new(channel(&server).await);
    let grpc = client.model_infer(call("linear", "x", vec![1, 4], vec![10.0, 0.0, 0.0, 0.0]));
    let rest = server.post_json("/predictions/linear", "[[0, 0, 0, 0]]");
    let (grpc, rest) = tokio::join!(grpc, rest);
    assert_eq!(fp32_output(&grpc.unwrap().into_inner()), [0.5, 5.0, 9.5]);
    assert_eq!(
        status_json(rest).await,
        (200, serde_json::json!([[-0.5, 0.0, 0.5]]))
    );
    let log = server.wait_for_log_lines("running a batch model=linear", 1, Duration::from_secs(5));
    assert_eq!(batches_of(&log, "linear"), [(2, 2)], "{log}");
}

/// An answer longer than one HTTP/2 frame is given to hyper in frame-sized
/// pieces (the listener's guard against answers parked in h2); the client
/// reads the same message.
#[tokio::test]
async fn a_long_grpc_answer_arrives_whole() {
    const ROWS: usize = 6_000;
    let store = Store::new();
    store.dir_model(
        "linear",
        "linear",
        Some("minWorkers: 1\njobQueueSize: 6000\n"),
    );
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let mut client = GrpcInferenceServiceClient::new(channel(&server).await);
    let mut rows = vec![0.0; ROWS * 4];
    rows[0] = 10.0;
    let answer = client
        .model_infer(call("linear", "x", vec![ROWS as i64, 4], rows))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(answer.outputs[0].shape, [ROWS as i64, 3]);
    let values = fp32_output(&answer);
    assert_eq!(values.len(), ROWS * 3);
    assert_eq!(values[..3], [0.5, 5.0, 9.5]);
    assert!(
        values[3..].chunks(3).all(|row| row == [-0.5, 0.0, 0.5]),
        "every other row is the bias"
    );
}

#[tokio::test]
async fn a_cancelled_grpc_call_is_dropped_before_compute() {
    let _serial = SERIAL.lock().await;
    let store = Store::new();
    store.dir_model("slow", "slow_loop", Some(&slow_config("")));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let mut client = GrpcInferenceServiceClient::new(channel(&server).await);
    let busy = slow(&server, "slow", 13_000); // ≈2 s
    let cancelled_then_next = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // This call would take ≈15 s; its client cancels it while it is queued.
        let queued = client.model_infer(call("slow", "x", vec![1, 1], vec![100_000.0]));
        let gave_up = tokio::time::timeout(Duration::from_millis(200), queued).await;
        assert!(
            gave_up.is_err(),
            "the queued call was answered: {gave_up:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        status_json(slow(&server, "slow", 4).await).await
    };
    let (busy, next) = tokio::join!(busy, cancelled_then_next);
    assert_eq!(busy.status(), 200);
    assert_eq!(next, (200, serde_json::json!([[4.0]])));
    assert_dropped_before_compute(&server, "the cancelled call");
}

#[tokio::test]
async fn grpc_calls_are_counted_by_protocol_and_logged() {
    let store = Store::new();
    store.dir_model("linear", "linear", Some("minWorkers: 1\n"));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let channel = channel(&server).await;
    let mut open_inference = GrpcInferenceServiceClient::new(channel.clone());
    let row = call("linear", "x", vec![1, 4], vec![10.0, 0.0, 0.0, 0.0]);
    open_inference.model_infer(row.clone()).await.unwrap();
    open_inference.model_infer(row).await.unwrap();
    let mut torchserve = InferenceApIsServiceClient::new(channel);
    let prediction = PredictionsRequest {
        model_name: "linear".into(),
        input: HashMap::from([("data".into(), b"[10, 0, 0, 0]".to_vec())]),
        ..PredictionsRequest::default()
    };
    let answer = torchserve.predictions(prediction).await.unwrap();
    assert_eq!(answer.into_inner().prediction, b"[0.5,5.0,9.5]");
    let metrics = server.metrics().await;
    let count = |protocol: &str| {
        let key = format!(
            "ortserve_request_duration_seconds_count{{model=\"linear\",protocol=\"{protocol}\",status_class=\"2xx\",version=\"1.0\"}}"
        );
        metrics.get(&key).copied()
    };
    assert_eq!(
        (count("grpc_v2"), count("grpc_torchserve")),
        (Some(2.0), Some(1.0)),
        "{metrics:?}"
    );
    let predictions =
        "path=/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions status=200";
    server.wait_for_log(predictions, Duration::from_secs(10));
    let log = server.log();
    let access = |path: &str| {
        log.lines()
            .filter(|l| l.contains("ortserve::access") && l.contains(path))
            .count()
    };
    assert_eq!(
        access("path=/inference.GRPCInferenceService/ModelInfer status=200"),
        2,
        "{log}"
    );
}

/// A request message over `max_request_size` and an answer over
/// `max_response_size` are each `RESOURCE_EXHAUSTED` naming the setting,
/// and the answer is counted as the rejection it is (tonic's own checks
/// answer `OUT_OF_RANGE`, naming neither, the answer's after the call was
/// counted a success); a call that fits still answers.
#[tokio::test]
async fn messages_over_the_size_limits_name_them() {
    let store = Store::new();
    store.dir_model(
        "linear",
        "linear",
        Some("minWorkers: 1\njobQueueSize: 200\n"),
    );
    let launch = Launch::store(&store, "all")
        .property("max_request_size=2000")
        .property("max_response_size=1000");
    let server = Server::healthy(launch).await;
    let mut client = GrpcInferenceServiceClient::new(channel(&server).await);
    let rows = |n: usize| call("linear", "x", vec![n as i64, 4], vec![1.0; n * 4]);
    let refused = client.model_infer(rows(150)).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().starts_with("the request message is ")
            && refused
                .message()
                .contains("bytes, over max_request_size=2000; raise max_request_size"),
        "{}",
        refused.message()
    );
    let refused = client.model_infer(rows(100)).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused
            .message()
            .contains("over max_response_size=1000; send fewer rows"),
        "{}",
        refused.message()
    );
    let answer = client.model_infer(rows(2)).await.unwrap().into_inner();
    assert_eq!(fp32_output(&answer).len(), 6);
    let metrics = server.metrics().await;
    let too_large = metrics
        .iter()
        .find(|(k, _)| {
            k.starts_with("ortserve_rejections_total{")
                && k.contains("reason=\"response_too_large\"")
        })
        .map(|(_, v)| *v);
    assert_eq!(too_large, Some(1.0), "{metrics:?}");
}

/// A call to a service a listener does not serve is `UNIMPLEMENTED`, naming
/// the path: management on the inference listener, inference on the
/// management listener.
#[tokio::test]
async fn a_service_the_listener_does_not_serve_is_unimplemented() {
    use ortserve::protocol::grpc_proto::org::pytorch::serve::grpc::management::ListModelsRequest;
    use ortserve::protocol::grpc_proto::org::pytorch::serve::grpc::management::management_ap_is_service_client::ManagementApIsServiceClient;
    let store = Store::new();
    store.dir_model("linear", "linear", None);
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let mut management = ManagementApIsServiceClient::new(channel(&server).await);
    let refused = management
        .list_models(ListModelsRequest::default())
        .await
        .expect_err("no management on the inference listener");
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("/org.pytorch.serve.grpc.management.ManagementAPIsService/ListModels"),
        "{refused:?}"
    );
    let management_listener =
        Endpoint::from_shared(format!("http://{}", server.grpc_management_address()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut open_inference = GrpcInferenceServiceClient::new(management_listener);
    let refused = open_inference
        .model_infer(call("linear", "x", vec![1, 4], vec![0.0; 4]))
        .await
        .expect_err("no inference on the management listener");
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
}

/// Calls that arrive together are answered together: eight `ServerLive`
/// calls sent in one write get their answers in one write, where each
/// answer went out on its own while every stream woke its connection on
/// its way out. Counted by the client's kernel (`TCP_INFO`'s data
/// segments received), on a server sized for one core, whose one runtime
/// thread runs the connection and its streams.
#[tokio::test]
async fn grpc_calls_that_arrive_together_are_answered_in_one_write() {
    let store = Store::new();
    store.dir_model("linear", "linear", None);
    let server = Server::healthy(Launch::store(&store, "all").arg("--cpus").arg("1")).await;
    let mut connection = RawHttp2::connect(&server.grpc_address()).await;
    connection.send(&connection.server_live(1)).await;
    assert_eq!(connection.answers(1).await, [LIVE_ANSWER]);

    let before = connection.data_segments_received();
    let calls: Vec<u8> = (0..8)
        .flat_map(|i| connection.server_live(3 + 2 * i))
        .collect();
    connection.send(&calls).await;
    assert_eq!(connection.answers(8).await, [LIVE_ANSWER; 8]);
    let segments = connection.data_segments_received() - before;
    assert_eq!(segments, 1, "eight answers came in {segments} writes");
}

/// `ServerLiveResponse { live: true }`, framed.
const LIVE_ANSWER: &[u8] = &[0, 0, 0, 0, 2, 0x08, 0x01];

/// HTTP/2 frames by hand, so that a test decides what goes out in one
/// write (hyper's and tonic's clients send a call's headers and message
/// apart).
struct RawHttp2 {
    stream: tokio::net::TcpStream,
    authority: String,
}

impl RawHttp2 {
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const END_STREAM: u8 = 1;
    const END_HEADERS: u8 = 4;

    /// Connected, and past the exchange of settings.
    async fn connect(address: &str) -> Self {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut connection = RawHttp2 {
            stream,
            authority: address.into(),
        };
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(Self::SETTINGS, 0, 0, &[]));
        connection.send(&hello).await;
        loop {
            let (kind, flags, _, _) = connection.frame().await;
            if kind == Self::SETTINGS && flags == 0 {
                break;
            }
        }
        connection.send(&frame(Self::SETTINGS, 1, 0, &[])).await;
        connection
    }

    async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    /// A `ServerLive` call on `stream`: its headers (literal, no Huffman
    /// code) and its empty message, ending the stream.
    fn server_live(&self, stream: u32) -> Vec<u8> {
        let mut headers = vec![0x83, 0x86]; // :method POST, :scheme http
        let literal = |headers: &mut Vec<u8>, name: &[u8], value: &str| {
            headers.extend(name);
            headers.push(value.len() as u8);
            headers.extend(value.as_bytes());
        };
        literal(
            &mut headers,
            &[0x04], // :path
            "/inference.GRPCInferenceService/ServerLive",
        );
        literal(&mut headers, &[0x01], &self.authority); // :authority
        literal(&mut headers, &[0x0f, 0x10], "application/grpc"); // content-type
        literal(&mut headers, b"\x00\x02te", "trailers");
        let mut call = frame(Self::HEADERS, Self::END_HEADERS, stream, &headers);
        call.extend(frame(0, Self::END_STREAM, stream, &[0; 5]));
        call
    }

    /// The messages of the next `calls` answers to end, in the order they
    /// ended; any stream reset fails the test.
    async fn answers(&mut self, calls: usize) -> Vec<Vec<u8>> {
        let mut messages: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut ended = Vec::new();
        while ended.len() < calls {
            let (kind, flags, stream, payload) = self.frame().await;
            assert!(kind != 3 && kind != 7, "reset or goaway: {payload:?}");
            if kind == 0 {
                messages.entry(stream).or_default().extend(payload);
            } else if kind == Self::HEADERS && flags & Self::END_STREAM != 0 {
                ended.push(messages.remove(&stream).unwrap_or_default());
            }
        }
        ended
    }

    /// The next frame: its type, flags, stream and payload.
    async fn frame(&mut self) -> (u8, u8, u32, Vec<u8>) {
        use tokio::io::AsyncReadExt;
        let mut head = [0; 9];
        tokio::time::timeout(Duration::from_secs(5), self.stream.read_exact(&mut head))
            .await
            .expect("a frame within 5 s")
            .unwrap();
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; length];
        self.stream.read_exact(&mut payload).await.unwrap();
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        (head[3], head[4], stream, payload)
    }

    /// Segments with data this socket has received, by the kernel's count.
    fn data_segments_received(&self) -> u32 {
        use std::os::fd::AsRawFd;
        // SAFETY: `tcp_info` is plain integers, and getsockopt writes at
        // most `length` bytes of it.
        unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let read = libc::getsockopt(
                self.stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut length,
            );
            assert_eq!(read, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
            info.tcpi_data_segs_in
        }
    }
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}
