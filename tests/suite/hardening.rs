//! Attacks on the running server, as an attacker would try them: sockets
//! that send nothing or send slowly, a descriptor limit filled with idle
//! sockets, oversized and trickling bodies, methods the API does not
//! document, hostile string tensors, requests that can never fit, crafted
//! archives and settings. Each test failed on the code before the hardening
//! issue. (Images sized to explode on resizing: `image_classifier.rs`.)

use std::time::{Duration, Instant};

use crate::common::*;
use ortserve::protocol::grpc_proto::inference::ServerLiveRequest;
use ortserve::protocol::grpc_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use ortserve::protocol::grpc_proto::org::pytorch::serve::grpc::inference::{
    PredictionResponse, PredictionsRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Endpoint;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn address(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_string()
}

async fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(address(server)).await.expect("connect")
}

/// A client that opens a new connection per request, so the server's
/// eviction of idle connections cannot touch it between requests.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// True when the server closed the socket (EOF or reset) within `timeout`.
async fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Reads what the server sends until it closes or `timeout` passes.
async fn read_answer(stream: &mut TcpStream, timeout: Duration) -> String {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..n]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}\n") {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

async fn linear_server(launch: impl FnOnce(Launch) -> Launch) -> (Store, Server) {
    let store = Store::new();
    store.dir_model("linear", "linear", Some("minWorkers: 1\nmaxWorkers: 1\n"));
    let server = Server::healthy(launch(Launch::store(&store, "linear"))).await;
    (store, server)
}

/// Posts `body` (the row `[1, 2, 3, 4]`, maybe padded) to the linear
/// model: its status, the answer checked when it is 200.
async fn predict_row(client: &reqwest::Client, server: &Server, body: Vec<u8>) -> u16 {
    let answer = client
        .post(server.url("/predictions/linear"))
        .body(body)
        .send()
        .await
        .expect("predict");
    let status = answer.status().as_u16();
    if status == 200 {
        assert_close(
            &answer.json().await.unwrap(),
            &linear_expected(&[1.0, 2.0, 3.0, 4.0]),
            1e-5,
        );
    }
    status
}

/// Pings and predicts on new connections; each must answer within `limit`.
async fn still_answering(server: &Server, limit: Duration) {
    let client = fresh_client();
    for _ in 0..3 {
        let started = Instant::now();
        let ping = client.get(server.url("/ping")).send().await.expect("ping");
        assert_eq!(ping.status(), 200);
        let status = predict_row(&client, server, b"[1, 2, 3, 4]".to_vec()).await;
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < limit,
            "a probe and a prediction took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn idle_and_slow_header_sockets_are_closed_in_time_while_requests_keep_answering() {
    let (_store, server) = linear_server(|l| {
        l.property("header_read_timeout=2")
            .property("keep_alive_timeout=6")
            .property("max_connections=8")
    })
    .await;
    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..12 {
        silent.push(connect(&server).await);
    }
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut stream = connect(&server).await;
        stream
            .write_all(b"POST /predictions/linear HTTP/1.1\r\nHost: x\r\nContent-Le")
            .await
            .unwrap();
        slow.push(stream);
    }
    // Twice the cap of sockets that send nothing useful: new connections
    // still get through, by closing the longest-idle ones.
    still_answering(&server, Duration::from_secs(3)).await;
    for stream in silent.iter_mut().chain(slow.iter_mut()) {
        assert!(
            closed_within(stream, Duration::from_secs(8)).await,
            "a silent or slow socket was still open {:?} after it connected",
            opened.elapsed()
        );
    }
    assert!(
        server.log().contains("max_connections reached"),
        "the cap was reached and said so"
    );
}

#[tokio::test]
async fn the_idle_timeout_governs_between_requests_and_the_header_timeout_within_one() {
    let (_store, server) = linear_server(|l| {
        l.property("header_read_timeout=2")
            .property("keep_alive_timeout=6")
    })
    .await;
    let request = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut kept = connect(&server).await;
    kept.write_all(request).await.unwrap();
    assert!(
        read_answer(&mut kept, Duration::from_secs(5))
            .await
            .starts_with("HTTP/1.1 200")
    );
    // Longer than the header timeout, well inside the idle timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    kept.write_all(request).await.unwrap();
    let second = read_answer(&mut kept, Duration::from_secs(5)).await;
    assert!(
        second.starts_with("HTTP/1.1 200"),
        "kept-alive request: {second:?}"
    );
    let answered = Instant::now();
    assert!(
        closed_within(&mut kept, Duration::from_secs(12)).await,
        "idle connection never closed"
    );
    assert!(
        answered.elapsed() >= Duration::from_secs(4),
        "closed after {:?}, before the 6 s idle timeout",
        answered.elapsed()
    );

    // A kept-alive connection that starts a request and stalls gets the
    // header timeout from its first byte, not the idle timeout.
    let mut stalled = connect(&server).await;
    stalled.write_all(request).await.unwrap();
    read_answer(&mut stalled, Duration::from_secs(5)).await;
    stalled
        .write_all(b"GET /ping HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut stalled, Duration::from_secs(10)).await);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a stalled header was given {:?}, not the 2 s header timeout",
        started.elapsed()
    );
}

#[tokio::test]
async fn idle_sockets_cannot_exhaust_a_small_descriptor_limit() {
    let (_store, server) = linear_server(|mut l| {
        l.max_open_files = Some(64);
        l
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..56 {
        idle.push(connect(&server).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    still_answering(&server, Duration::from_secs(5)).await;
    let log = server.log();
    assert!(
        log.contains("connection limits") && log.contains("descriptors=64"),
        "the cap follows the descriptor limit:\n{log}"
    );
}

/// The gRPC listener's connections have the REST listener's bounds: at the
/// cap a real client gets in by closing the longest-idle socket, silent
/// sockets are closed past the header timeout, and an idle connection is
/// closed with a GOAWAY, after which its client calls on a new one.
#[tokio::test]
async fn grpc_connections_are_bounded_like_rest_ones() {
    let (_store, server) = linear_server(|l| {
        l.property("header_read_timeout=1")
            .property("keep_alive_timeout=2")
            .property("max_connections=4")
    })
    .await;
    let grpc = server.grpc_address();
    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(TcpStream::connect(&grpc).await.expect("connect"));
    }
    let channel = Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .expect("a real client gets in at the cap");
    let mut client = GrpcInferenceServiceClient::new(channel);
    let live = client
        .server_live(ServerLiveRequest {})
        .await
        .expect("live");
    assert!(live.into_inner().live);
    for stream in &mut silent {
        assert!(
            closed_within(stream, Duration::from_secs(6)).await,
            "a silent gRPC socket was still open {:?} after it connected",
            opened.elapsed()
        );
    }
    assert!(server.log().contains("max_connections reached"));
    // Idle past keep_alive_timeout and the goodbye: closed by the server.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let live = client.server_live(ServerLiveRequest {}).await;
    assert!(live.expect("a call after the idle close").into_inner().live);
}

/// A `ModelInfer` on a connection of its own whose body sends `start` and
/// then nothing: the call's answer, and the task driving the connection.
async fn stalled_model_infer(
    grpc: &str,
    start: Vec<u8>,
) -> (
    impl Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>> + use<>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    use futures_util::StreamExt;
    use http_body_util::StreamBody;
    use hyper::body::{Bytes, Frame};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let stream = TcpStream::connect(grpc).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2");
    let connection = tokio::spawn(connection);
    let start = (!start.is_empty()).then(|| Ok(Frame::data(Bytes::from(start))));
    let body = futures_util::stream::iter(start).chain(futures_util::stream::pending::<
        Result<_, std::convert::Infallible>,
    >());
    let call = hyper::Request::post(format!(
        "http://{grpc}/inference.GRPCInferenceService/ModelInfer"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(StreamBody::new(body))
    .unwrap();
    (async move { sender.send_request(call).await }, connection)
}

/// A gRPC call that sends its headers and then nothing is answered at
/// `request_body_timeout`, as a stalled REST body is, so that it cannot
/// hold its stream and connection in flight for good.
#[tokio::test]
async fn a_grpc_call_whose_message_never_comes_ends_at_the_body_timeout() {
    let (_store, server) = linear_server(|l| l.property("request_body_timeout=1")).await;
    let (answer, _connection) = stalled_model_infer(&server.grpc_address(), Vec::new()).await;
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("answered within the body timeout and a margin")
        .expect("an answer");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let header = |name: &str| answer.headers()[name].to_str().unwrap().to_string();
    assert_eq!(header("grpc-status"), "4", "DEADLINE_EXCEEDED");
    assert!(
        header("grpc-message").contains("request_body_timeout"),
        "{}",
        header("grpc-message")
    );
}

/// A server whose connections idle out after a second, and a gRPC channel
/// to it.
async fn short_idle_grpc() -> (Store, Server, tonic::transport::Channel) {
    let (store, server) = linear_server(|l| {
        l.property("header_read_timeout=1")
            .property("keep_alive_timeout=1")
    })
    .await;
    let channel = Endpoint::from_shared(format!("http://{}", server.grpc_address()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (store, server, channel)
}

/// A stream in flight keeps its connection open however long it runs: the
/// idle timeout counts from a stream's last frame, not from its headers.
#[tokio::test]
async fn a_long_grpc_stream_outlives_the_idle_timeout() {
    let (_store, _server, channel) = short_idle_grpc().await;
    let mut health = HealthClient::new(channel);
    let watch = HealthCheckRequest {
        service: String::new(),
    };
    let mut statuses = health.watch(watch).await.expect("watch").into_inner();
    // NOT_SERVING first where the status has not caught up with readiness.
    let serving = async {
        while let Some(status) = statuses.message().await.expect("a status") {
            if status.status == ServingStatus::Serving as i32 {
                return;
            }
        }
        panic!("the watch ended before SERVING");
    };
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("SERVING within the health service's period");
    // The server sends nothing more while readiness holds; the stream
    // must still be open, not ended by a closed connection.
    let next = tokio::time::timeout(Duration::from_secs(5), statuses.message()).await;
    assert!(next.is_err(), "the watch ended early: {next:?}");
}

/// A client that asks and never reads its answers cannot hold its
/// connection in flight for good: once an answer's bytes have waited on it
/// for `request_body_timeout`, the server closes the connection (here the
/// client pipelines pings into a 4 KB receive buffer until the server's
/// writes stall).
#[tokio::test]
async fn a_client_that_never_reads_its_answers_is_disconnected() {
    let (_store, server) = linear_server(|l| {
        l.property("header_read_timeout=1")
            .property("request_body_timeout=1")
    })
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket
        .connect(address(&server).parse().unwrap())
        .await
        .expect("connect");
    let (_unread, mut writer) = stream.into_split();
    let started = Instant::now();
    let asking = tokio::spawn(async move {
        let pings = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1000);
        for _ in 0..10_000 {
            writer.write_all(&pings).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let ended = tokio::time::timeout(Duration::from_secs(10), asking)
        .await
        .expect("the server closed the stalled connection")
        .unwrap();
    assert!(ended.is_err(), "every ping was taken: {ended:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    still_answering(&server, Duration::from_secs(2)).await;
}

type Http2Sender =
    hyper::client::conn::http2::SendRequest<http_body_util::Full<hyper::body::Bytes>>;

/// An HTTP/2 connection to the gRPC listener, granting each stream
/// `window` bytes of flow-control window (and more only as its answer is
/// read), and the task driving it.
async fn http2_with_window(
    grpc: &str,
    window: u32,
) -> (Http2Sender, tokio::task::JoinHandle<hyper::Result<()>>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let stream = TcpStream::connect(grpc).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(window)
        .handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/2");
    (sender, tokio::spawn(connection))
}

/// A unary gRPC call to `path` carrying one message, framed.
fn grpc_call(
    grpc: &str,
    path: &str,
    message: &[u8],
) -> hyper::Request<http_body_util::Full<hyper::body::Bytes>> {
    let mut framed = vec![0];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    hyper::Request::post(format!("http://{grpc}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(framed.into()))
        .unwrap()
}

const LONG_ANSWER_ROWS: usize = 6_000;

/// What makes answers wait at most a second on their client.
const ONE_SECOND_WAITS: [&str; 2] = ["header_read_timeout=1", "request_body_timeout=1"];

/// A server on the linear model, queueing enough rows for
/// [`long_answer_call`], with `properties`.
async fn long_answer_server(properties: &[&str]) -> (Store, Server) {
    let store = Store::new();
    store.dir_model(
        "linear",
        "linear",
        Some("minWorkers: 1\njobQueueSize: 6000\n"),
    );
    let launch = properties
        .iter()
        .fold(Launch::store(&store, "linear"), |launch, line| {
            launch.property(line)
        });
    (store, Server::healthy(launch).await)
}

/// A `ModelInfer` whose answer is 72 KB of raw output: 6,000 rows.
fn long_answer_call() -> ortserve::protocol::grpc_proto::inference::ModelInferRequest {
    use ortserve::protocol::grpc_proto::inference::ModelInferRequest;
    use ortserve::protocol::grpc_proto::inference::model_infer_request::InferInputTensor;
    ModelInferRequest {
        model_name: "linear".into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![LONG_ANSWER_ROWS as i64, 4],
            ..InferInputTensor::default()
        }],
        raw_input_contents: vec![vec![0; LONG_ANSWER_ROWS * 4 * 4].into()],
        ..ModelInferRequest::default()
    }
}

/// The same over HTTP/2, where an answer waits on the client's
/// flow-control window rather than the socket: a client that opens a
/// health `Watch` with a window of zero (so that not one byte of the
/// answer can be sent) is disconnected once nothing has moved for
/// `request_body_timeout`.
#[tokio::test]
async fn a_grpc_client_that_grants_no_window_is_disconnected() {
    use http_body_util::BodyExt;
    let (_store, server) = linear_server(|l| {
        l.property("header_read_timeout=1")
            .property("request_body_timeout=1")
    })
    .await;
    let grpc = server.grpc_address();
    let (mut sender, connection) = http2_with_window(&grpc, 0).await;
    // A `HealthCheckRequest` for the server as a whole: an empty message.
    let call = grpc_call(&grpc, "/grpc.health.v1.Health/Watch", &[]);
    let started = Instant::now();
    let answer = sender
        .send_request(call)
        .await
        .expect("the answer's headers");
    assert_eq!(answer.status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(8), answer.into_body().collect())
        .await
        .expect("the server closed the connection its client took nothing from");
    assert!(ended.is_err(), "the watch ended cleanly: {ended:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let closed = tokio::time::timeout(Duration::from_secs(2), connection).await;
    assert!(closed.is_ok(), "the connection is still open");
}

/// One stream its client starves cannot hide behind others that move: a
/// client that grants each stream 16 bytes of window, never reads one
/// long `ModelInfer` answer (6,000 rows, 72 KB) and keeps calling
/// `ServerLive` (whose answers fit) on the same connection is disconnected
/// once the starved answer has waited `request_body_timeout`.
#[tokio::test]
async fn a_grpc_stream_starved_while_others_move_is_disconnected() {
    use prost::Message;
    let (_store, server) = long_answer_server(&ONE_SECOND_WAITS).await;
    let grpc = server.grpc_address();
    let (mut sender, _connection) = http2_with_window(&grpc, 16).await;
    let call = |method: &str, message: &[u8]| {
        grpc_call(
            &grpc,
            &format!("/inference.GRPCInferenceService/{method}"),
            message,
        )
    };
    let infer = long_answer_call();
    let starved = sender
        .send_request(call("ModelInfer", &infer.encode_to_vec()))
        .await
        .expect("the starved answer's headers");
    assert_eq!(starved.status(), 200);
    let started = Instant::now();
    let mut answered = 0;
    let failed = loop {
        let live = sender.send_request(call("ServerLive", &[]));
        match tokio::time::timeout(Duration::from_secs(2), live).await {
            Ok(Ok(answer)) => {
                assert_eq!(answer.status(), 200);
                answered += 1;
            }
            Ok(Err(error)) => break error,
            Err(_) => panic!("a ServerLive call hung"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "the starved stream's connection is still open ({answered} calls answered beside it)"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        answered >= 3 && started.elapsed() >= Duration::from_secs(1),
        "{answered} calls in {:?}, then {failed}",
        started.elapsed()
    );
    drop(starved);
}

/// A client that reads a long answer slowly is never cut: granting 16 KiB
/// of window at a time and taking a frame every 700 ms, it reads a 72 KB
/// answer over about three and a half seconds, more than three times
/// `request_body_timeout`, to its trailers.
#[tokio::test]
async fn a_grpc_client_reading_a_long_answer_slowly_is_not_cut() {
    use http_body_util::BodyExt;
    use prost::Message;
    let (_store, server) = long_answer_server(&ONE_SECOND_WAITS).await;
    let grpc = server.grpc_address();
    let (mut sender, _connection) = http2_with_window(&grpc, 16 * 1024).await;
    let call = grpc_call(
        &grpc,
        "/inference.GRPCInferenceService/ModelInfer",
        &long_answer_call().encode_to_vec(),
    );
    let started = Instant::now();
    let mut body = sender
        .send_request(call)
        .await
        .expect("headers")
        .into_body();
    let (mut read, mut status) = (0, None);
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the answer keeps coming");
        if let Some(trailers) = frame.trailers_ref() {
            status = trailers.get("grpc-status").cloned();
        }
        read += frame.data_ref().map_or(0, |data| data.len());
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert_eq!(status.as_ref().map(|s| s.to_str().unwrap()), Some("0"));
    assert!(read > LONG_ANSWER_ROWS * 12, "{read} bytes");
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A `StreamPredictions2` stream to the linear model, its requests sent
/// one at a time.
struct PredictionStream {
    send: tokio::sync::mpsc::Sender<PredictionsRequest>,
    answers: tonic::Streaming<PredictionResponse>,
}

impl PredictionStream {
    async fn open(channel: tonic::transport::Channel) -> PredictionStream {
        use ortserve::protocol::grpc_proto::org::pytorch::serve::grpc::inference::inference_ap_is_service_client::InferenceApIsServiceClient;
        let (send, requests) = tokio::sync::mpsc::channel::<PredictionsRequest>(1);
        let requests = futures_util::stream::unfold(requests, |mut requests| async move {
            requests.recv().await.map(|request| (request, requests))
        });
        let answers = InferenceApIsServiceClient::new(channel)
            .stream_predictions2(requests)
            .await
            .expect("stream")
            .into_inner();
        PredictionStream { send, answers }
    }

    /// Sends `data` as request `sequence`; its answer must be a prediction.
    async fn predict(&mut self, sequence: &str, data: Vec<u8>) {
        let request = PredictionsRequest {
            model_name: "linear".into(),
            input: [("data".to_string(), data)].into(),
            sequence_id: Some(sequence.into()),
            ..PredictionsRequest::default()
        };
        self.send
            .send(request)
            .await
            .expect("the stream takes a request");
        let answer = tokio::time::timeout(Duration::from_secs(5), self.answers.message())
            .await
            .expect("answered")
            .expect("an answer, not a refusal or a closed stream")
            .expect("not the stream's end");
        assert_eq!(answer.sequence_id.as_deref(), Some(sequence));
        assert!(answer.status.is_none(), "{answer:?}");
    }
}

/// A `StreamPredictions2` stream is answered as long as its client keeps
/// sending, however long that is; once the client goes quiet for
/// `keep_alive_timeout` the stream waits on it out of flight, so its
/// connection is idle and closed like any idle one, not pinned for good.
#[tokio::test]
async fn a_grpc_stream_waiting_on_its_client_does_not_pin_its_connection() {
    let (_store, _server, channel) = short_idle_grpc().await;
    let mut stream = PredictionStream::open(channel).await;
    let started = Instant::now();
    for sequence in ["a", "b", "c", "d", "e"] {
        stream.predict(sequence, b"[1, 2, 3, 4]".to_vec()).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert!(started.elapsed() > Duration::from_secs(3));
    // Quiet past keep_alive_timeout, the re-check (header_read_timeout) and
    // the goodbye: the server closes the connection and the stream with it.
    let quiet = Instant::now();
    let last = tokio::time::timeout(Duration::from_secs(8), stream.answers.message())
        .await
        .expect("the quiet stream's connection was closed");
    assert!(last.is_err(), "{last:?}");
    assert!(
        quiet.elapsed() >= Duration::from_millis(900),
        "{:?}",
        quiet.elapsed()
    );
    drop(stream.send);
}

#[tokio::test]
async fn a_declared_body_over_the_limit_gets_its_413_at_once_without_100_continue() {
    let (_store, server) = linear_server(|l| l.property("max_request_size=1000000")).await;
    let mut stream = connect(&server).await;
    let started = Instant::now();
    stream
        .write_all(
            b"PUT /predictions/linear HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let answer = read_answer(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(!answer.contains("100 Continue"), "{answer:?}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer:?}"
    );
    assert!(answer.contains("max_request_size=1000000"), "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    // Clients that send the body at once (no Expect) still read the 413,
    // every time: the server lingers instead of resetting them.
    let client = fresh_client();
    for _ in 0..20 {
        let response = client
            .put(server.url("/predictions/linear"))
            .body(vec![b'1'; 4_000_000])
            .send()
            .await
            .expect("the 413 arrives, not a reset");
        assert_eq!(response.status(), 413);
    }
}

#[tokio::test]
async fn a_trickling_body_gets_its_408_at_the_body_timeout() {
    let (_store, server) = linear_server(|l| l.property("request_body_timeout=2")).await;
    let mut stream = connect(&server).await;
    let started = Instant::now();
    stream
        .write_all(
            b"POST /predictions/linear HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[1, ",
        )
        .await
        .unwrap();
    let answer = read_answer(&mut stream, Duration::from_secs(15)).await;
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("within 2s"), "{answer:?}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "408 after {took:?}"
    );
}

/// A request to the linear model whose body is `size` bytes: the row
/// `[1, 2, 3, 4]` and spaces.
fn padded_row(size: usize) -> Vec<u8> {
    let mut body = b"[1, 2, 3, 4]".to_vec();
    body.resize(size, b' ');
    body
}

/// The bytes of a request to the linear model, `declared` long, of which
/// only the headers and `sent` bytes come: an upload that stalls.
async fn stalled_upload(server: &Server, declared: usize, sent: usize) -> TcpStream {
    let mut stream = connect(server).await;
    let head = format!(
        "POST /predictions/linear HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&padded_row(sent)).await.unwrap();
    stream
}

/// `ortserve_rejections_total` for `reason`, over the server's models.
async fn rejections(server: &Server, reason: &str) -> f64 {
    let label = format!("reason=\"{reason}\"");
    server
        .metrics()
        .await
        .iter()
        .filter(|(k, _)| k.starts_with("ortserve_rejections_total{") && k.contains(&label))
        .map(|(_, v)| v)
        .sum()
}

/// Uploads that stall hold memory until their body timeout; however many
/// connections send them, together they hold at most
/// `max_request_memory`: past it a body is refused with a 503 naming the
/// setting (a declared one before a byte of it is read), while requests
/// that fit go on, and the memory comes back when a stalled upload ends.
#[tokio::test]
async fn stalled_uploads_cannot_hold_more_than_max_request_memory() {
    let (_store, server) = linear_server(|l| {
        l.property("max_request_size=1000000")
            .property("max_request_memory=2500000")
    })
    .await;
    // Declared lengths are charged at once: two stalled uploads hold 2 MB.
    let first = stalled_upload(&server, 1_000_000, 100).await;
    let _second = stalled_upload(&server, 1_000_000, 100).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut third = stalled_upload(&server, 1_000_000, 0).await;
    let answer = read_answer(&mut third, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("retry-after: 1\r\n"), "{answer:?}");
    assert!(lower.contains("connection: close"), "{answer:?}");
    assert!(answer.contains("ServiceUnavailableException"), "{answer:?}");
    assert!(
        answer.contains("does not fit in the 2500000 bytes that request bodies and unsent answers may hold together (max_request_memory)"),
        "{answer:?}"
    );

    // A chunked body is charged as its chunks come: 600 KB does not fit
    // in the 500 KB left.
    let mut chunked = connect(&server).await;
    let head = "POST /predictions/linear HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    chunked.write_all(head.as_bytes()).await.unwrap();
    let chunk = padded_row(600_000);
    let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
    let _ = chunked.write_all(&framed).await;
    let answer = read_answer(&mut chunked, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("max_request_memory"), "{answer:?}");

    // What fits goes on meanwhile.
    let client = fresh_client();
    let small = predict_row(&client, &server, padded_row(100_000)).await;
    assert_eq!(small, 200);
    assert_eq!(rejections(&server, "memory_full").await, 2.0);
    let metrics = server.metrics().await;
    assert_eq!(metrics["ortserve_request_body_bytes"], 2_000_000.0);
    assert_eq!(metrics["ortserve_answer_bytes"], 0.0);
    assert_eq!(metrics["ortserve_request_body_limit_bytes"], 2_500_000.0);

    // A stalled upload that ends gives its memory back: a whole 1 MB body
    // fits again.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let whole = predict_row(&client, &server, padded_row(1_000_000)).await;
        if whole == 200 {
            break;
        }
        assert_eq!(whole, 503);
        assert!(Instant::now() < deadline, "the memory never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// gRPC messages share the bound with REST bodies: a stalled gRPC message
/// and a stalled REST upload leave no room for a third, which gets
/// `UNAVAILABLE` naming `max_request_memory`; a stream of messages is
/// charged only for the one not yet whole, so a long `StreamPredictions2`
/// stream is never refused for what it sent before.
#[tokio::test]
async fn grpc_messages_count_against_max_request_memory_like_rest_bodies() {
    let (_store, server) =
        long_answer_server(&["max_request_size=1000000", "max_request_memory=2000000"]).await;
    let grpc = server.grpc_address();

    // A message of a declared 1,000,000 bytes, of which 990,000 come.
    let mut start = vec![0];
    start.extend_from_slice(&1_000_000u32.to_be_bytes());
    start.resize(5 + 990_000, 0);
    let (stalled_call, stalled_connection) = stalled_model_infer(&grpc, start).await;
    let stalled_call = tokio::spawn(stalled_call);
    let _upload = stalled_upload(&server, 990_000, 0).await;
    // Both are charged before the next call comes.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let channel = Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = GrpcInferenceServiceClient::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        match client.model_infer(long_answer_call()).await {
            Err(status) => break status,
            Ok(_) => assert!(Instant::now() < deadline, "never refused"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("max_request_memory"),
        "{refused:?}"
    );

    // The stalled message's connection ends: its memory comes back.
    stalled_call.abort();
    stalled_connection.abort();
    let deadline = Instant::now() + Duration::from_secs(5);
    let answer = loop {
        match client.model_infer(long_answer_call()).await {
            Ok(answer) => break answer.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(Instant::now() < deadline, "the memory never came back");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        answer.raw_output_contents[0].len(),
        LONG_ANSWER_ROWS * 3 * 4
    );

    // Six messages of 600 KB on one stream, with 1 MB left: each is
    // charged only until it is whole.
    let mut stream = PredictionStream::open(channel).await;
    for sequence in ["a", "b", "c", "d", "e", "f"] {
        stream.predict(sequence, padded_row(600_000)).await;
    }
}

/// `name`'s value on the metrics port once `reached` holds for it, within
/// 10 s.
async fn metric_once(server: &Server, name: &str, reached: impl Fn(f64) -> bool) -> f64 {
    let value = std::cell::Cell::new(-1.0);
    let (value_ref, reached) = (&value, &reached);
    eventually(
        Duration::from_secs(10),
        &format!("{name} changes"),
        || async move {
            value_ref.set(server.metrics().await.get(name).copied().unwrap_or(-1.0));
            reached(value_ref.get())
        },
    )
    .await;
    value.get()
}

/// Answers their clients do not read share the bound with bodies: they
/// are never refused (the work is done), but while they fill
/// `max_request_memory` new bodies are refused, and once their connection
/// ends the memory comes back. On HTTP/1.1, a 7.5 MB answer to a client
/// that reads nothing (more than the kernel's socket buffers take).
#[tokio::test]
async fn unread_answers_count_against_max_request_memory() {
    const ROWS: usize = 500_000;
    let store = Store::new();
    store.dir_model(
        "linear",
        "linear",
        Some("minWorkers: 1\njobQueueSize: 500000\n"),
    );
    let launch = Launch::store(&store, "linear")
        .property("max_request_size=6000000")
        .property("max_response_size=12000000")
        .property("max_request_memory=6000000");
    let server = Server::healthy(launch).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut unread = socket
        .connect(address(&server).parse().unwrap())
        .await
        .unwrap();
    let rows = format!("[{}[0,0,0,0]]", "[0,0,0,0],".repeat(ROWS - 1));
    let head = format!(
        "POST /predictions/linear HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        rows.len()
    );
    unread.write_all(head.as_bytes()).await.unwrap();
    unread.write_all(rows.as_bytes()).await.unwrap();
    let held = metric_once(&server, "ortserve_answer_bytes", |v| v > 0.0).await;
    assert!(held > 7_000_000.0, "the whole answer is charged: {held}");

    let client = fresh_client();
    assert_eq!(predict_row(&client, &server, padded_row(100)).await, 503);
    assert_eq!(rejections(&server, "memory_full").await, 1.0);

    drop(unread);
    metric_once(&server, "ortserve_answer_bytes", |v| v == 0.0).await;
    assert_eq!(predict_row(&client, &server, padded_row(100)).await, 200);
}

/// The same over HTTP/2, where a client that grants no flow-control
/// window holds its `ModelInfer` answer (72 KB) in the server: bodies
/// that do not fit beside it are refused, those that do are answered.
#[tokio::test]
async fn unread_grpc_answers_count_against_max_request_memory() {
    use prost::Message;
    let (_store, server) =
        long_answer_server(&["max_request_size=120000", "max_request_memory=160000"]).await;
    let grpc = server.grpc_address();
    let (mut sender, connection) = http2_with_window(&grpc, 0).await;
    let call = grpc_call(
        &grpc,
        "/inference.GRPCInferenceService/ModelInfer",
        &long_answer_call().encode_to_vec(),
    );
    let answer = sender
        .send_request(call)
        .await
        .expect("the answer's headers");
    assert_eq!(answer.status(), 200);
    let held = metric_once(&server, "ortserve_answer_bytes", |v| v > 0.0).await;
    let raw = (LONG_ANSWER_ROWS * 3 * 4) as f64;
    assert!(held > raw && held < raw + 200.0, "{held}");
    assert_eq!(server.metrics().await["ortserve_request_body_bytes"], 0.0);

    let client = fresh_client();
    assert_eq!(
        predict_row(&client, &server, padded_row(100_000)).await,
        503
    );
    assert_eq!(predict_row(&client, &server, padded_row(50_000)).await, 200);

    drop(answer);
    drop(sender);
    connection.abort();
    metric_once(&server, "ortserve_answer_bytes", |v| v == 0.0).await;
    assert_eq!(
        predict_row(&client, &server, padded_row(100_000)).await,
        200
    );
}

/// The repository calls' bodies are read as a model request's are: one
/// that never comes is a 408 at the body timeout, not a connection held in
/// flight for good, and one over `max_request_size` is a 413 at once.
#[tokio::test]
async fn repository_bodies_have_the_request_limits() {
    let (_store, server) = linear_server(|l| {
        l.property("request_body_timeout=1")
            .property("max_request_size=1000")
    })
    .await;
    for path in [
        "/v2/repository/index",
        "/v2/repository/models/linear/load",
        "/v2/repository/models/linear/unload",
    ] {
        let mut stream = connect(&server).await;
        let started = Instant::now();
        let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{");
        stream.write_all(head.as_bytes()).await.unwrap();
        let answer = read_answer(&mut stream, Duration::from_secs(5)).await;
        let took = started.elapsed();
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer:?}");
        assert!(answer.contains("within 1s"), "{path}: {answer:?}");
        assert!(
            took >= Duration::from_millis(900),
            "{path}: 408 after {took:?}"
        );

        let mut stream = connect(&server).await;
        let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let answer = read_answer(&mut stream, Duration::from_secs(2)).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer:?}");
        assert!(
            answer.contains("max_request_size=1000"),
            "{path}: {answer:?}"
        );
    }
    let index = fresh_client()
        .post(server.url("/v2/repository/index"))
        .body("{\"ready\": true}")
        .send()
        .await
        .unwrap();
    assert_eq!(index.status(), 200);
    let entries: serde_json::Value = index.json().await.unwrap();
    assert_eq!(entries[0]["name"], "linear");
    assert_eq!(entries[0]["state"], "READY");
}

#[tokio::test]
async fn only_documented_methods_reach_the_model() {
    let (_store, server) = linear_server(|l| l).await;
    let client = fresh_client();
    for method in ["GET", "DELETE", "TRACE", "PATCH", "FROB", "OPTIONS"] {
        for path in ["/predictions/linear", "/explanations/linear/1.0"] {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let response = client
                .request(method.clone(), server.url(path))
                .body("[1, 2, 3, 4]")
                .send()
                .await
                .unwrap();
            assert_eq!(response.headers()["allow"], "POST,PUT", "{method} {path}");
            assert_error(
                response,
                405,
                "MethodNotAllowedException",
                "Requested method is not allowed",
            )
            .await;
        }
    }
    // KServe routes answer KServe's body, with Allow.
    let response = client
        .put(server.url("/v1/models/linear:predict"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    assert_kserve_error(response, 405, "Requested method is not allowed").await;
    let response = client
        .post(server.url("/v1/models/linear"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "GET,HEAD");
    assert_kserve_error(response, 405, "Requested method is not allowed").await;
    let response = client
        .get(server.url("/v2/models/linear/infer"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    assert_kserve_error(response, 405, "Requested method is not allowed").await;
    // Both upload methods work.
    for method in [reqwest::Method::POST, reqwest::Method::PUT] {
        let response = client
            .request(method, server.url("/predictions/linear"))
            .body("[1, 2, 3, 4]")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test]
async fn kserve_request_bodies_must_be_objects() {
    let (_store, server) = linear_server(|l| l).await;
    let response = server
        .post_json("/v1/models/linear:predict", r#"[[[1, 2, 3, 4]], null]"#)
        .await;
    assert_kserve_error(response, 400, "the body must be a JSON object").await;
    let response = server
        .post_json(
            "/v2/models/linear/infer",
            r#"[null, [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]]"#,
        )
        .await;
    assert_kserve_error(response, 400, "the body must be a JSON object").await;
}

#[tokio::test]
async fn a_nul_byte_in_a_string_tensor_is_the_callers_error() {
    let store = Store::new();
    store.dir_model("types", "identity_types", None);
    let server = Server::healthy(Launch::store(&store, "types")).await;
    let inputs: Vec<serde_json::Value> = [
        ("x_bool", "BOOL", serde_json::json!([true, false])),
        ("x_u8", "UINT8", serde_json::json!([1, 2])),
        ("x_u16", "UINT16", serde_json::json!([1, 2])),
        ("x_u32", "UINT32", serde_json::json!([1, 2])),
        ("x_u64", "UINT64", serde_json::json!([1, 2])),
        ("x_i8", "INT8", serde_json::json!([1, 2])),
        ("x_i16", "INT16", serde_json::json!([1, 2])),
        ("x_i32", "INT32", serde_json::json!([1, 2])),
        ("x_i64", "INT64", serde_json::json!([1, 2])),
        ("x_f16", "FP16", serde_json::json!([1, 2])),
        ("x_bf16", "BF16", serde_json::json!([1, 2])),
        ("x_f32", "FP32", serde_json::json!([1, 2])),
        ("x_f64", "FP64", serde_json::json!([1, 2])),
        ("x_str", "BYTES", serde_json::json!(["ok", "a\u{0}b"])),
    ]
    .into_iter()
    .map(|(name, datatype, data)| {
        serde_json::json!({"name": name, "datatype": datatype, "shape": [1, 2], "data": data})
    })
    .collect();
    let body = serde_json::json!({ "inputs": inputs }).to_string();
    let response = server.post_json("/v2/models/types/infer", &body).await;
    assert_kserve_error(
        response,
        400,
        "input 'x_str': element 1 contains a NUL byte",
    )
    .await;
    assert_eq!(
        rejections(&server, "bad_input").await,
        1.0,
        "counted as the caller's error"
    );
}

#[tokio::test]
async fn a_request_that_can_never_fit_the_queue_is_413_not_503() {
    let (_store, server) = linear_server(|l| l.property("job_queue_size=3")).await;
    let row = "[1, 2, 3, 4]";
    let four = format!(r#"{{"instances": [{row}, {row}, {row}, {row}]}}"#);
    let response = server.post_json("/v1/models/linear:predict", &four).await;
    assert!(response.headers().get("retry-after").is_none());
    assert_kserve_error(
        response,
        413,
        "the request has 4 instances but model \"linear\" queues at most 3 rows (jobQueueSize)",
    )
    .await;
    let mut form = reqwest::multipart::Form::new();
    for _ in 0..4 {
        form = form.part("data", reqwest::multipart::Part::text(row));
    }
    let response = server.post_multipart("/predictions/linear", form).await;
    assert_error(
        response,
        413,
        "RequestEntityTooLargeException",
        "queues at most 3 rows",
    )
    .await;
    // Three fit.
    let three = format!(r#"{{"instances": [{row}, {row}, {row}]}}"#);
    let (status, answer) = server.predict("/v1/models/linear:predict", &three).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn explanations_have_a_budget_per_request_as_well_as_per_instance() {
    let store = Store::new();
    store.dir_model(
        "budgeted",
        "linear",
        Some("ortserve:\n  explain:\n    maxForwardPasses: 10\n    maxRequestForwardPasses: 12\n"),
    );
    let server = Server::healthy(Launch::store(&store, "budgeted")).await;
    // Feature ablation on 4 features: 5 passes each. Two instances fit 12.
    let two = r#"{"instances": [[1, 2, 3, 4], [4, 3, 2, 1]]}"#;
    let (status, answer) = server.predict("/v1/models/budgeted:explain", two).await;
    assert_eq!(status, 200, "{answer}");
    let three = r#"{"instances": [[1, 2, 3, 4], [4, 3, 2, 1], [1, 1, 1, 1]]}"#;
    let response = server.post_json("/v1/models/budgeted:explain", three).await;
    assert_kserve_error(
        response,
        400,
        "need more than 12 forward passes in all (ortserve.explain.maxRequestForwardPasses)",
    )
    .await;
    // More instances than the budget has passes: refused before any is
    // decoded (they all are, at once), so not even a bad first one is read.
    let many = format!(r#"{{"instances": ["x"{}]}}"#, ", [1, 2, 3, 4]".repeat(12));
    let response = server.post_json("/v1/models/budgeted:explain", &many).await;
    assert_kserve_error(response, 400, "need more than 12 forward passes in all").await;
    // The Open Inference Protocol's rows share one budget too.
    let rows = r#"{"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": [1,2,3,4,4,3,2,1,1,1,1,1]}]}"#;
    let response = server.post_json("/v2/models/budgeted/explain", rows).await;
    assert_kserve_error(response, 400, "ortserve.explain.maxRequestForwardPasses").await;
}

#[tokio::test]
async fn an_error_quotes_at_most_a_kilobyte_of_the_request() {
    let store = Store::new();
    store.dir_model("linear", "linear", None);
    let server = Server::healthy(Launch::store(&store, "linear")).await;
    let name = "B".repeat(30_000);
    let key = "K".repeat(1_000_000);
    let bad_key = format!(r#"{{"{key}": 01, "instances": [[1, 2, 3, 4]]}}"#);
    for (path, body, status) in [
        (
            format!("/predictions/{name}"),
            "[1, 2, 3, 4]".to_string(),
            404,
        ),
        (format!("/v1/models/{name}:predict"), "{}".to_string(), 404),
        ("/v1/models/linear:predict".to_string(), bad_key, 400),
    ] {
        let response = server.post_json(&path, &body).await;
        assert_eq!(response.status().as_u16(), status, "{}", &path[..40]);
        let text = response.text().await.unwrap();
        assert!(text.len() < 1_200, "{} bytes back", text.len());
        assert!(
            text.contains("BBBBBBBBBB…") || text.contains("KKKKKKKKKK…"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn paths_in_archives_and_model_directories_stay_inside_them() {
    let store = Store::new();
    let secret = "SECRET-LINE-1: x\nSECRET-LINE-2: y\n";
    store.file("secret.yaml", secret.as_bytes());
    store.dir_model("good", "linear", None);
    // An unpacked archive whose manifest names a config file outside it.
    store.dir_model("climbing", "linear", None).file(
        "climbing/MAR-INF/MANIFEST.json",
        br#"{"model": {"modelName": "climbing", "serializedFile": "model.onnx", "configFile": "../secret.yaml"}}"#,
    );
    // A plain directory whose config is a symlink out of it.
    store.dir_model("linked", "linear", None);
    std::os::unix::fs::symlink(
        store.path().join("secret.yaml"),
        store.path().join("linked/model-config.yaml"),
    )
    .unwrap();
    // A plain directory whose graph is a symlink out of it.
    std::fs::create_dir(store.path().join("borrowed")).unwrap();
    std::os::unix::fs::symlink(
        store.path().join("good/model.onnx"),
        store.path().join("borrowed/model.onnx"),
    )
    .unwrap();
    // A .mar whose manifest names an absolute graph path.
    store.mar(
        "absolute.mar",
        &Manifest::new("absolute", "1.0").serialized("/opt/model.onnx"),
        "linear",
        &[],
    );
    let launch = Launch::store(&store, "good,climbing,linked,borrowed,absolute.mar");
    let server = Server::start(launch);
    let climbing = failure_of(&server, "climbing").await;
    assert!(
        climbing.contains("configFile '../secret.yaml' climbs out with '..'"),
        "{climbing}"
    );
    let linked = failure_of(&server, "linked").await;
    assert!(
        linked.contains("'model-config.yaml' resolves outside linked (a symlink leads out)"),
        "{linked}"
    );
    let borrowed = failure_of(&server, "borrowed").await;
    assert!(
        borrowed.contains("'model.onnx' resolves outside borrowed"),
        "{borrowed}"
    );
    let absolute = failure_of(&server, "absolute").await;
    assert!(
        absolute.contains("serializedFile '/opt/model.onnx' is an absolute path"),
        "{absolute}"
    );
    let (status, answer) = server.predict("/predictions/good", "[1, 2, 3, 4]").await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        !server.log().contains("SECRET-LINE"),
        "nothing of the outside file is read or logged"
    );
}

#[tokio::test]
async fn unknown_keys_are_logged_as_a_short_escaped_prefix() {
    let store = Store::new();
    // YAML's longest plain key is 1024 characters.
    let long_key = "K".repeat(1000);
    store.dir_model(
        "linear",
        "linear",
        Some(&format!("{long_key}: 1\nminWorkers: 1\n")),
    );
    let launch = Launch::store(&store, "linear").property(&format!("{}=1", "P".repeat(5000)));
    let server = Server::healthy(launch).await;
    let log = server.log();
    assert!(log.contains(&format!("{}…", "K".repeat(40))), "{log}");
    assert!(log.contains(&format!("{}…", "P".repeat(40))), "{log}");
    assert!(!log.contains(&"K".repeat(41)) && !log.contains(&"P".repeat(41)));
}

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

#[tokio::test]
async fn an_archived_graph_is_bounded_before_it_is_read() {
    use std::io::Write;
    let store = Store::new();
    // 300 MB of zeros deflate to about 300 KB.
    let file = std::fs::File::create(store.path().join("bomb.mar")).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let deflated = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(false);
    zip.start_file("MAR-INF/MANIFEST.json", deflated).unwrap();
    zip.write_all(br#"{"model": {"modelName": "bomb", "serializedFile": "model.onnx", "modelVersion": "1.0"}}"#)
        .unwrap();
    zip.start_file("model.onnx", deflated).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..300 {
        zip.write_all(&zeros).unwrap();
    }
    zip.finish().unwrap();
    store.dir_model("linear", "linear", None);
    let launch = Launch::store(&store, "bomb.mar,linear").property("max_model_size=100000000");
    let server = Server::start(launch);
    let reason = failure_of(&server, "bomb").await;
    assert!(
        reason.contains(
            "the ONNX graph is 314572800 bytes, over the limit of 100000000 (max_model_size)"
        ),
        "{reason}"
    );
    let peak = peak_rss(server.pid());
    assert!(
        peak < 250_000_000,
        "peak RSS {peak} bytes: the entry was read"
    );
}

#[tokio::test]
async fn thread_settings_are_clamped_to_the_cores() {
    let store = Store::new();
    store.dir_model(
        "linear",
        "linear",
        Some("minWorkers: 2\nmaxWorkers: 2\nortserve:\n  intraOpThreads: 20000\n  interOpThreads: 100000\n"),
    );
    let server = Server::healthy(Launch::store(&store, "linear")).await;
    let threads = thread_count(server.pid());
    assert!(threads < 100, "{threads} threads");
    let log = server.log();
    for key in ["ortserve.intraOpThreads", "ortserve.interOpThreads"] {
        let warnings = log
            .lines()
            .filter(|l| l.contains(key) && l.contains("clamped"))
            .count();
        assert_eq!(warnings, 1, "one warning naming {key}:\n{log}");
    }
    let (status, answer) = server.predict("/predictions/linear", "[1, 2, 3, 4]").await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn names_are_bounded_and_versions_are_never_paths() {
    let store = Store::new();
    store.dir_model("linear", "linear", None);
    store.dir_model(
        "climber",
        "linear",
        Some("ortserve:\n  version: \"../../x\"\n"),
    );
    let long = "a".repeat(100_000);
    let launch = Launch {
        args: vec!["--model-store".into(), store.path().display().to_string()],
        ..Launch::default()
    }
    .property(&format!("load_models=linear,climber,{long}=linear"));
    let server = Server::start(launch);
    let climber = failure_of(&server, "climber").await;
    assert!(
        climber.contains("version: '../../x' is not a valid model version"),
        "{climber}"
    );
    let health = server.wait_settled().await;
    let short = format!("{}…", "a".repeat(40));
    assert!(
        health["models"][short.as_str()]["error"]
            .as_str()
            .unwrap()
            .contains("is not a valid model name"),
        "{health}"
    );
    let scrape = server
        .client
        .get(server.metrics_url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        scrape.len() < 64 * 1024,
        "a scrape of {} bytes",
        scrape.len()
    );
    assert!(
        !server.log().contains(&"a".repeat(1000)),
        "the name never reaches the log whole"
    );
}

/// strace: `ORTSERVE_TEST_STRACE` (`make test` fetches one when the machine
/// has none), else the one on the PATH.
fn strace() -> String {
    std::env::var("ORTSERVE_TEST_STRACE").unwrap_or_else(|_| "strace".into())
}

/// A traced socket call that reaches past this machine, or looks a name up.
fn outbound(line: &str) -> bool {
    let call = ["connect(", "sendto(", "sendmsg(", "sendmmsg("]
        .iter()
        .any(|c| line.contains(c));
    let off_loopback = (line.contains("AF_INET,") && !line.contains("inet_addr(\"127."))
        || (line.contains("AF_INET6") && !line.contains("\"::1\""))
        || line.contains("AF_NETLINK");
    let lookup = line.contains("nscd") || line.contains("mobile") || line.contains("microsoft");
    (call && off_loopback) || lookup
}

/// ONNX Runtime 1.32's uploader first looks its host up about 9 s after
/// the environment is created; the trace covers more than that.
const TELEMETRY_WINDOW: Duration = Duration::from_secs(15);

#[tokio::test]
async fn the_server_makes_no_outbound_connection_from_start_to_first_prediction() {
    let trace = tempfile::NamedTempFile::new().unwrap();
    // A new pod's home: ONNX Runtime's telemetry keeps its state there.
    let home = tempfile::tempdir().unwrap();
    let store = Store::new();
    store.dir_model("linear", "linear", None);
    let mut launch = Launch::store(&store, "linear")
        .arg("--drain-delay")
        .arg("0")
        .env("HOME", &home.path().display().to_string());
    launch.wrapper = [
        strace().as_str(),
        "-f",
        "-qq",
        "-e",
        "trace=connect,sendto,sendmsg,sendmmsg",
        "-e",
        "signal=none",
        "-s",
        "96",
        "-o",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([trace.path().display().to_string()])
    .collect();
    let started = Instant::now();
    let mut server = Server::healthy(launch).await;
    let (status, answer) = server.predict("/predictions/linear", "[1, 2, 3, 4]").await;
    assert_eq!(status, 200, "{answer}");
    tokio::time::sleep(TELEMETRY_WINDOW.saturating_sub(started.elapsed())).await;
    // The traced server is strace's child: stop it, and strace follows.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", server.pid())).unwrap();
    let child = children
        .split_whitespace()
        .next()
        .expect("the traced server");
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", child])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
    let calls = std::fs::read_to_string(trace.path()).unwrap();
    assert!(
        calls.contains("sendto("),
        "the trace holds the server's own socket calls (its signal pipe):\n{calls}"
    );
    let outbound: Vec<&str> = calls.lines().filter(|l| outbound(l)).collect();
    assert!(
        outbound.is_empty(),
        "network calls that leave the machine or look a name up:\n{}",
        outbound.join("\n")
    );
    let written: Vec<_> = std::fs::read_dir(home.path()).unwrap().collect();
    assert!(
        written.is_empty(),
        "the server wrote into its home: {written:?}"
    );
}

/// How long the OpenAPI fuzzer runs in `make test`.
const FUZZ_BUDGET_SECS: &str = "60";

#[tokio::test]
async fn the_openapi_fuzzer_finds_no_5xx_and_nothing_that_contradicts_the_description() {
    let store = Store::new();
    store
        .dir_model("linear", "linear", None)
        .dir_model("multi_io", "multi_io", None)
        .dir_model("identity_types", "identity_types", None)
        .dir_model(
            "color",
            "color_mean",
            Some("ortserve:\n  handler: image_classifier\n  imageClassifier:\n    resize: 16\n"),
        );
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let response = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/"))
        .send()
        .await
        .unwrap();
    let mut description: serde_json::Value = response.json().await.unwrap();
    aim_at_the_test_models(
        &mut description,
        &["linear", "multi_io", "identity_types", "color"],
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), description.to_string()).unwrap();
    let schemathesis = python().with_file_name("schemathesis");
    // Its run cache stays out of the checkout.
    let scratch = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(schemathesis)
        .current_dir(scratch.path())
        .args([
            "run",
            &file.path().display().to_string(),
            "--url",
            &server.base,
        ])
        .args(["--checks", "all"])
        // The schema cannot say which tensor shapes each model takes, so
        // schema-valid bodies are often (rightly) refused with a 400.
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args([
            "--max-time",
            FUZZ_BUDGET_SECS,
            "--workers",
            "2",
            "--request-timeout",
            "10",
        ])
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(
        report.contains("Test cases:"),
        "schemathesis did not run:\n{report}"
    );
    assert!(
        run.status.success() || only_fuzzer_faults(&report),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// True when every problem schemathesis reports is its own runtime error
/// (hypothesis on CPython 3.11.7 now and then fails to parse its own source:
/// "AST constructor recursion depth mismatch"), not a check that failed on
/// an answer, nor a network error (which a crashed server would cause).
fn only_fuzzer_faults(report: &str) -> bool {
    let Some(errors) = report.split("\nErrors:\n").nth(1) else {
        return false;
    };
    let kinds: Vec<&str> = errors
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .collect();
    !report.contains("\nFailures:\n")
        && !kinds.is_empty()
        && kinds.iter().all(|line| line.contains("Runtime Error"))
}

/// Path parameters limited to the loaded models, and one valid body per
/// kind of route, so the fuzzer reaches inference rather than 404s.
fn aim_at_the_test_models(description: &mut serde_json::Value, names: &[&str]) {
    let v2_body = serde_json::json!({
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]
    });
    let paths = description["paths"].as_object_mut().unwrap();
    for (path, operations) in paths.iter_mut() {
        for operation in operations.as_object_mut().unwrap().values_mut() {
            let parameters = operation
                .get_mut("parameters")
                .and_then(|p| p.as_array_mut());
            for parameter in parameters.into_iter().flatten() {
                match parameter["name"].as_str() {
                    Some("model_name") => {
                        parameter["schema"] = serde_json::json!({"type": "string", "enum": names})
                    }
                    Some("model_version") => {
                        parameter["schema"] = serde_json::json!({"type": "string", "enum": ["1.0"]})
                    }
                    _ => {}
                }
            }
            let Some(content) = operation.pointer_mut("/requestBody/content") else {
                continue;
            };
            let example = if path.starts_with("/v2/") {
                v2_body.clone()
            } else if path.starts_with("/v1/") {
                serde_json::json!({"instances": [[1, 2, 3, 4]]})
            } else {
                continue;
            };
            content["application/json"]["example"] = example;
        }
    }
}
