//! What ortserve adds on top of ONNX Runtime, measured in one run on one
//! machine: raw in-process `Session::run` against the server end to end over
//! loopback HTTP, driven by a closed-loop load generator (keep-alive HTTP/1.1
//! connections, one request in flight per connection; for gRPC, one call in
//! flight per task over a few shared HTTP/2 channels). Each model's rows sit
//! beside the floor, `GET /ping` on the same server under the same load, and
//! the ratio of the server's CPU per request to floor + raw run; a start-up
//! section times the first prediction and reads the idle RSS. The generation
//! section streams tiny_lm's greedy text over the three streaming generation
//! routes (TorchServe chunked, v2 `generate_stream`, OpenAI completions) and
//! sets tokens/s, time to first token and time per token beside the same
//! decoding loop in plain `ort`.
//!
//! `make bench` (or `cargo bench --bench overhead`; `-- protocols`, `-- startup`,
//! `-- models`, `-- generation`, … run one section). With `taskset` present,
//! the server gets core 1 and this process (raw runs and load generator) core
//! 0, so both sides of each comparison run on one core of the same kind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use ort::environment::Environment;
use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;
use ortserve::protocol::grpc_proto::inference::{
    ModelInferRequest, ModelInferResponse, ServerLiveResponse, model_infer_request,
};
use prost::Message;

const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(5);
const SERVER_CORE: &str = "1";
const CLIENT_CORE: &str = "0";
/// The most HTTP/2 connections the gRPC load generator opens: its tasks share
/// them, as an application's calls share a client's channel.
const GRPC_CHANNELS: usize = 4;

struct Model {
    name: &'static str,
    file: &'static str,
    /// The graph's input name, for the Open Inference Protocol's requests.
    input: &'static str,
    row: Vec<usize>,
}

fn main() {
    // `cargo test --all-targets` runs benches without `--bench`: stay quick.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // `cargo bench --bench overhead -- telemetry` runs one section.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |section: &str| only.is_empty() || only.iter().any(|o| o == section);
    let library = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(".onnxruntime/libonnxruntime.so.1")
        });
    let models = std::env::var_os("ORTSERVE_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-models"));
    assert!(
        models.join("linear.onnx").is_file(),
        "run `make bench` (it generates the test models)"
    );
    let pinned = pin_self();
    // Another build to compare with, for `startup`, `baseline` and
    // `telemetry`; leaked once, as the bench's settings are 'static.
    let baseline: Option<&'static str> = std::env::var("ORTSERVE_BENCH_BASELINE")
        .ok()
        .map(|path| &*Box::leak(path.into_boxed_str()));
    println!(
        "ortserve overhead benchmark — ONNX Runtime {}, {} cores, pinned: {pinned}",
        library.display(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "closed loop, keep-alive HTTP/1.1 (gRPC: HTTP/2), {}s per point after {}s warm-up, JSON bodies unless named, 1 intra-op thread\n",
        MEASURE.as_secs(),
        WARMUP.as_secs()
    );

    let environment = ort::init_from(&library)
        .expect("load ONNX Runtime")
        .build()
        .expect("ORT environment");
    let tiny = Model {
        name: "tiny",
        file: "linear",
        input: "x",
        row: vec![4],
    };
    let mnist = Model {
        name: "mnist",
        file: "mnist_cnn",
        input: "input",
        row: vec![1, 28, 28],
    };
    // Compute-bound (≈100 µs per row batched): where batching efficiency shows.
    let mlp = Model {
        name: "mlp",
        file: "mlp",
        input: "x",
        row: vec![64],
    };

    let store = tempfile::tempdir().unwrap();
    for model in [&tiny, &mnist, &mlp] {
        let onnx = models.join(format!("{}.onnx", model.file));
        write_model(store.path(), model.name, &onnx, "batchSize: 1\n");
        write_model(
            store.path(),
            &format!("{}_batched", model.name),
            &onnx,
            "batchSize: 32\nmaxBatchDelay: 2\njobQueueSize: 1000\n",
        );
        // At concurrency 8 a batch of 32 never fills and every batch waits out
        // `maxBatchDelay`: the protocols section's c=8 rows use a batch of 8.
        write_model(
            store.path(),
            &format!("{}_batch8", model.name),
            &onnx,
            "batchSize: 8\nmaxBatchDelay: 2\njobQueueSize: 1000\n",
        );
    }
    if wanted("startup") {
        startup(&models, &library, pinned, &[&tiny, &mnist], None);
        // With ORTSERVE_BENCH_BASELINE set, the other build starts too, alternating.
        if let Some(path) = baseline {
            for build in [Some(path), None, Some(path)] {
                startup(&models, &library, pinned, &[&tiny, &mnist], build);
            }
        }
    }
    let server = ServerProcess::start(store.path(), &library, pinned, &Telemetry::DEFAULT_QUIET);

    if wanted("models") {
        per_model(&environment, &models, &[&tiny, &mnist, &mlp], &server);
    }
    if wanted("kserve") {
        kserve_protocols(
            &environment,
            &models.join("mnist_cnn.onnx"),
            &mnist,
            &server,
        );
    }
    if wanted("protocols") {
        protocols(&environment, &models, &[&tiny, &mnist], &server);
    }
    if wanted("explain") {
        explanations(
            &environment,
            &models.join("mnist_cnn.onnx"),
            &mnist,
            &server,
        );
    }
    drop(server);
    // `ORTSERVE_BENCH_BASELINE=path/to/old/ortserve cargo bench --bench overhead -- baseline`
    if let (true, Some(path)) = (wanted("baseline"), baseline) {
        against_baseline(path, store.path(), &library, pinned, &mnist);
    }
    if wanted("telemetry") {
        telemetry_cost(store.path(), &library, pinned, &tiny, baseline);
    }
    if wanted("generation") {
        generation(&environment, &models, &library, pinned);
    }
    println!(
        "For comparison (../shared/notes/peers.md, same machine kind): TorchServe tiny c=1 442 req/s p50 1.8 ms, c=32 1094 req/s;"
    );
    println!(
        "KServe 1092 req/s p50 0.86 ms, c=32 1833 req/s; Triton 1150 req/s p50 0.71 ms, c=32 3916 req/s."
    );
}

/// From process start to the first answered prediction, and the resident
/// memory once idle, with only the tiny and MNIST-shaped models loaded; of
/// `baseline` where given, else of this build.
fn startup(
    models: &Path,
    library: &Path,
    pinned: bool,
    list: &[&Model],
    baseline: Option<&'static str>,
) {
    let store = tempfile::tempdir().unwrap();
    for model in list {
        let onnx = models.join(format!("{}.onnx", model.file));
        write_model(store.path(), model.name, &onnx, "");
    }
    let started = Instant::now();
    let telemetry = Telemetry {
        binary: baseline,
        ..Telemetry::DEFAULT_QUIET
    };
    let server = ServerProcess::start(store.path(), library, pinned, &telemetry);
    let first = list[0];
    let call = Call::json(&format!("/predictions/{}", first.name), request_body(first));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut connection = Connection::open(&server.address).await;
        let status = connection
            .request(call.method, &call.path, call.body.clone(), None)
            .await;
        assert_eq!(status, 200, "{}", call.path);
    });
    let first_answer = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap_or_default();
    let rss_kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    println!(
        "start-up ({}, {}): first prediction answered {:.0} ms after the process started; idle RSS {:.1} MB\n",
        baseline.unwrap_or("this build"),
        list.iter()
            .map(|m| m.name)
            .collect::<Vec<_>>()
            .join(" and "),
        first_answer.as_secs_f64() * 1e3,
        rss_kb / 1024.0
    );
}

/// Each model at concurrency 1 and 32 against raw `run()`.
fn per_model(environment: &Environment, models: &Path, list: &[&Model], server: &ServerProcess) {
    let floor1 = server.load(&Call::ping(), 1);
    let floor32 = server.load(&Call::ping(), 32);
    println!("floor: GET /ping, the same server and load generator, no model");
    print_row("concurrency 1", &floor1, None);
    print_row("concurrency 32", &floor32, None);
    println!();
    for &model in list {
        let onnx = models.join(format!("{}.onnx", model.file));
        let raw1 = raw_latency(environment, &onnx, model, 1);
        let raw32 = raw_throughput(environment, &onnx, model, 32);
        let body = request_body(model);
        let c1 = server.load(
            &Call::json(&format!("/predictions/{}", model.name), body.clone()),
            1,
        );
        let c32 = server.load(
            &Call::json(&format!("/predictions/{}_batched", model.name), body),
            32,
        );
        println!("{}: f32{:?} per row", model.name, model.row);
        println!(
            "  raw run(), batch 1:        p50 {:>7.1} µs   p99 {:>7.1} µs",
            raw1.p50_us(),
            raw1.p99_us()
        );
        println!(
            "  server, concurrency 1:     p50 {:>7.1} µs   p99 {:>7.1} µs   {:>8.0} req/s   server CPU {:>5.1} µs/req",
            c1.latency.p50_us(),
            c1.latency.p99_us(),
            c1.rate,
            c1.cpu_us_per_request
        );
        println!(
            "  added p50 over raw run():  {:>7.1} µs",
            c1.latency.p50_us() - raw1.p50_us()
        );
        println!("  raw run(), batch 32:       {:>8.0} rows/s", raw32);
        println!(
            "  server, concurrency 32:    {:>8.0} req/s   p50 {:>7.1} µs   p99 {:>7.1} µs   server CPU {:>5.1} µs/req",
            c32.rate,
            c32.latency.p50_us(),
            c32.latency.p99_us(),
            c32.cpu_us_per_request
        );
        println!(
            "  server ÷ raw batched:      {:>7.1} %",
            100.0 * c32.rate / raw32
        );
        // The server's CPU per request against the least it could be: its
        // own HTTP stack (the floor) plus ONNX Runtime's run for the row.
        let c1_ratio = c1.cpu_us_per_request / (floor1.cpu_us_per_request + raw1.p50_us());
        let c32_ratio = c32.cpu_us_per_request / (floor32.cpu_us_per_request + 1e6 / raw32);
        println!(
            "  server CPU ÷ (floor + raw run): {c1_ratio:>5.2}× at concurrency 1, {c32_ratio:>5.2}× at 32 (batched)\n"
        );
    }
}

/// The KServe routes on the MNIST-shaped model at concurrency 1: one batch-32
/// v2 request as JSON and as binary tensors, and one v1 instance, each
/// against raw `run()` at the same batch size.
fn kserve_protocols(environment: &Environment, onnx: &Path, model: &Model, server: &ServerProcess) {
    let raw32 = raw_latency(environment, onnx, model, 32);
    let raw1 = raw_latency(environment, onnx, model, 1);
    let (_, values) = input(model, 32);
    let calls = v2_calls(model, "mnist", 32);
    let v2_json = server.load(&calls.json, 1);
    let v2_binary = server.load(&calls.binary, 1);
    let v2_grpc = server.load_grpc(&calls.grpc, 1);
    let instance =
        serde_json::json!({"instances": [[values[..784].chunks(28).collect::<Vec<_>>()]]})
            .to_string();
    let v1 = server.load(
        &Call::json("/v1/models/mnist:predict", Bytes::from(instance)),
        1,
    );
    println!("KServe protocols, mnist, concurrency 1 (a batch-32 request is 25,088 floats):");
    println!(
        "  raw run(), batch 32:           p50 {:>7.1} µs",
        raw32.p50_us()
    );
    for (name, result) in [
        ("v2 JSON, batch 32:", &v2_json),
        ("v2 binary, batch 32:", &v2_binary),
        ("gRPC v2 (raw), batch 32:", &v2_grpc),
    ] {
        println!(
            "  {name:<30} p50 {:>7.1} µs   p99 {:>7.1} µs   added p50 {:>7.1} µs   server CPU {:>6.1} µs/req",
            result.latency.p50_us(),
            result.latency.p99_us(),
            result.latency.p50_us() - raw32.p50_us(),
            result.cpu_us_per_request
        );
    }
    println!(
        "  raw run(), batch 1:            p50 {:>7.1} µs",
        raw1.p50_us()
    );
    println!(
        "  v1, one instance:              p50 {:>7.1} µs   p99 {:>7.1} µs   added p50 {:>7.1} µs   server CPU {:>6.1} µs/req\n",
        v1.latency.p50_us(),
        v1.latency.p99_us(),
        v1.latency.p50_us() - raw1.p50_us(),
        v1.cpu_us_per_request
    );
}

/// One Open Inference Protocol request of `batch` rows to the model served as
/// `name`, three ways.
struct V2Calls {
    /// REST, JSON both ways.
    json: Call,
    /// REST, binary tensors both ways.
    binary: Call,
    /// gRPC `ModelInfer` with `raw_input_contents` (what tritonclient sends).
    grpc: ModelInferRequest,
}

fn v2_calls(model: &Model, name: &str, batch: usize) -> V2Calls {
    let (shape, values) = input(model, batch);
    let header = |parameters: serde_json::Value| {
        serde_json::json!({"inputs": [{"name": model.input, "shape": shape, "datatype": "FP32", "parameters": parameters}],
                           "parameters": {"binary_data_output": parameters != serde_json::json!({})}})
    };
    let mut json_request = header(serde_json::json!({}));
    json_request["inputs"][0]["data"] = serde_json::json!(values);
    let binary_header =
        header(serde_json::json!({"binary_data_size": values.len() * 4})).to_string();
    let binary_body = [binary_header.as_bytes(), bytemuck::cast_slice(&values)].concat();
    let path = format!("/v2/models/{name}/infer");
    let grpc = ModelInferRequest {
        model_name: name.into(),
        inputs: vec![model_infer_request::InferInputTensor {
            name: model.input.into(),
            datatype: "FP32".into(),
            shape,
            ..Default::default()
        }],
        raw_input_contents: vec![bytemuck::cast_slice(&values).to_vec().into()],
        ..Default::default()
    };
    V2Calls {
        json: Call::json(&path, Bytes::from(json_request.to_string())),
        binary: Call {
            method: "POST",
            path: path.clone(),
            body: Bytes::from(binary_body),
            binary_header: Some(binary_header.len()),
        },
        grpc,
    }
}

/// Every protocol on the tiny and MNIST-shaped models, one row per request,
/// at concurrency 1, 8 and 32, `batchSize` equal to the concurrency: TorchServe's
/// `/predictions`, KServe v1, v2 as JSON and as binary tensors, and gRPC v2
/// with raw contents (`h2`'s client, each call in one write; its tasks
/// share up to four HTTP/2 connections). Each row has requests/s, p50/p99,
/// the server's and the load generator's CPU per request, and the ratio of
/// the server's CPU to the least it could be: its floor on that transport
/// (`GET /ping`, or gRPC `ServerLive`, at the same concurrency) plus raw
/// `run()`'s time per row at a batch of the concurrency.
fn protocols(environment: &Environment, models: &Path, list: &[&Model], server: &ServerProcess) {
    println!(
        "Protocols, one row per request; ratio = server CPU ÷ (floor + raw run per row), floor = GET /ping (HTTP) or ServerLive (gRPC):"
    );
    for &model in list {
        let onnx = models.join(format!("{}.onnx", model.file));
        for concurrency in [1, 8, 32] {
            let name = match concurrency {
                1 => model.name.to_string(),
                8 => format!("{}_batch8", model.name),
                _ => format!("{}_batched", model.name),
            };
            let raw_us = match concurrency {
                1 => raw_latency(environment, &onnx, model, 1).p50_us(),
                _ => 1e6 / raw_throughput(environment, &onnx, model, concurrency),
            };
            let http_floor = server.load(&Call::ping(), concurrency);
            let grpc_floor = server.drive(Target::Grpc(GrpcCall::Live), concurrency);
            let row = request_body(model);
            let instances = format!("{{\"instances\": {}}}", std::str::from_utf8(&row).unwrap());
            let calls = v2_calls(model, &name, 1);
            let rows = [
                (
                    "TorchServe",
                    Target::Http(Call::json(&format!("/predictions/{name}"), row)),
                ),
                (
                    "KServe v1",
                    Target::Http(Call::json(
                        &format!("/v1/models/{name}:predict"),
                        Bytes::from(instances),
                    )),
                ),
                ("REST v2 JSON", Target::Http(calls.json)),
                ("REST v2 binary", Target::Http(calls.binary)),
                (
                    "gRPC v2 (raw)",
                    Target::Grpc(GrpcCall::Infer(Box::new(calls.grpc))),
                ),
            ];
            println!("  {name}, concurrency {concurrency}: raw run {raw_us:.1} µs per row");
            for (label, result) in [("floor HTTP", &http_floor), ("floor gRPC", &grpc_floor)] {
                print_row(label, result, None);
            }
            for (label, target) in rows {
                let grpc = matches!(target, Target::Grpc(_));
                let floor = if grpc { &grpc_floor } else { &http_floor };
                let batches_before = server.batches(&name);
                let result = server.drive(target, concurrency);
                let ratio = result.cpu_us_per_request / (floor.cpu_us_per_request + raw_us);
                // Issue 16 names one floor for every protocol, `GET /ping`:
                // gRPC's row shows its ratio on that floor too.
                let on_http_floor = grpc
                    .then(|| result.cpu_us_per_request / (http_floor.cpu_us_per_request + raw_us));
                // Batched: rows per second against raw `run()`'s at the same
                // batch, and how full the batches were (warm-up included).
                let batched = (concurrency > 1).then(|| Batched {
                    of_raw: result.rate * raw_us / 1e6,
                    rows_per_batch: server.batches(&name).rows_per_batch_since(batches_before),
                });
                let figures = Figures {
                    ratio,
                    on_http_floor,
                    batched,
                };
                print_row(label, &result, Some(figures));
            }
        }
    }
    println!();
}

/// A protocol row's figures beside its load result.
struct Figures {
    /// Server CPU ÷ (its transport's floor + raw run per row).
    ratio: f64,
    /// For gRPC, the same on HTTP/1.1's floor (`GET /ping`).
    on_http_floor: Option<f64>,
    batched: Option<Batched>,
}

/// A batched row's throughput against raw `run()`'s, and its batches' size.
struct Batched {
    of_raw: f64,
    rows_per_batch: f64,
}

/// A load row; `figures` is the ratio to floor + raw run and, when batched,
/// the fraction of raw `run()`'s rows per second and the mean batch.
fn print_row(label: &str, result: &LoadResult, figures: Option<Figures>) {
    let ratio = figures.map_or_else(String::new, |f| {
        let mut text = format!("   {:>5.2}×", f.ratio);
        if let Some(on_http) = f.on_http_floor {
            text += &format!(" ({on_http:.2}× on GET /ping)");
        }
        if let Some(batched) = f.batched {
            text += &format!(
                "   {:>5.1} % of raw batched, {:>4.1} rows a batch",
                100.0 * batched.of_raw,
                batched.rows_per_batch
            );
        }
        text
    });
    println!(
        "    {label:<15} {:>8.0} req/s   p50 {:>7.1} µs   p99 {:>7.1} µs   server CPU {:>5.1} µs/req   client CPU {:>5.1} µs/req{ratio}",
        result.rate,
        result.latency.p50_us(),
        result.latency.p99_us(),
        result.cpu_us_per_request,
        result.client_cpu_us_per_request
    );
}

/// This build against another (`ORTSERVE_BENCH_BASELINE`, e.g. the last
/// commit's) on the MNIST-shaped model's REST, v2 and gRPC rows, where the
/// input and output paths' copies show.
/// Both servers run at once (one idles while the other is measured) and take
/// turns point by point, each going first every other round, for
/// `ORTSERVE_BENCH_ROUNDS` rounds (default 4), so drift and neighbours' load
/// hit both alike; each figure is the median over the rounds.
fn against_baseline(
    baseline: &'static str,
    store: &Path,
    library: &Path,
    pinned: bool,
    mnist: &Model,
) {
    let rounds: usize = std::env::var("ORTSERVE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(4);
    let baseline_build = Telemetry {
        name: "baseline",
        binary: Some(baseline),
        ..Telemetry::DEFAULT_QUIET
    };
    let servers = [
        ServerProcess::start(store, library, pinned, &baseline_build),
        ServerProcess::start(store, library, pinned, &Telemetry::DEFAULT_QUIET),
    ];
    let body = request_body(mnist);
    let V2Calls {
        json: v2_json,
        binary: v2_binary,
        ..
    } = v2_calls(mnist, "mnist", 32);
    let grpc = |name| Target::Grpc(GrpcCall::Infer(Box::new(v2_calls(mnist, name, 1).grpc)));
    let rows = [
        (
            "mnist, concurrency 1",
            Target::Http(Call::json("/predictions/mnist", body.clone())),
            1,
        ),
        (
            "mnist, concurrency 32",
            Target::Http(Call::json("/predictions/mnist_batched", body)),
            32,
        ),
        ("v2 JSON, batch 32", Target::Http(v2_json), 1),
        ("v2 binary, batch 32", Target::Http(v2_binary), 1),
        ("gRPC v2, concurrency 1", grpc("mnist"), 1),
        ("gRPC v2, concurrency 32", grpc("mnist_batched"), 32),
    ];
    // results[build][row]: one (p50 µs, req/s, server CPU µs/req) per round.
    let mut results = vec![vec![Vec::new(); rows.len()]; servers.len()];
    for round in 0..rounds {
        for (row, (_, target, concurrency)) in rows.iter().enumerate() {
            // Who goes first alternates, so neither gains from its slot.
            for build in [round % 2, 1 - round % 2] {
                let r = servers[build].drive(target.clone(), *concurrency);
                results[build][row].push((r.latency.p50_us(), r.rate, r.cpu_us_per_request));
            }
        }
    }
    println!("This build against {baseline}, median of {rounds} interleaved rounds:");
    for (row, (name, _, _)) in rows.iter().enumerate() {
        let [before, after] = [0, 1].map(|build| medians(&results[build][row]));
        println!(
            "  {name:<24} p50 {:>7.1} → {:>7.1} µs ({:>+5.1} %)   {:>6.0} → {:>6.0} req/s   server CPU {:>6.1} → {:>6.1} µs/req ({:>+5.1} %)",
            before.0,
            after.0,
            100.0 * (after.0 / before.0 - 1.0),
            before.1,
            after.1,
            before.2,
            after.2,
            100.0 * (after.2 / before.2 - 1.0)
        );
        let cpu = |build: usize| -> Vec<String> {
            results[build][row]
                .iter()
                .map(|r| format!("{:.0}", r.2))
                .collect()
        };
        println!(
            "  {:<24} server CPU µs/req by round: baseline {}; this build {}",
            "",
            cpu(0).join(" "),
            cpu(1).join(" ")
        );
    }
    println!();
}

/// The median of each of the three figures over the rounds.
fn medians(samples: &[(f64, f64, f64)]) -> (f64, f64, f64) {
    let median = |pick: fn(&(f64, f64, f64)) -> f64| {
        let mut values: Vec<f64> = samples.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        let middle = values.len() / 2;
        if values.len().is_multiple_of(2) {
            (values[middle - 1] + values[middle]) / 2.0
        } else {
            values[middle]
        }
    };
    (median(|s| s.0), median(|s| s.1), median(|s| s.2))
}

/// One explanation of an MNIST-shaped instance with the default occlusion
/// (49 windows of 4×4, plus the instance itself: 50 forward passes), against
/// raw `run()` of the same rows: one at a time with `batchSize` 1, and as
/// batches of 1, 32 and 17 rows with `batchSize` 32.
fn explanations(environment: &Environment, onnx: &Path, model: &Model, server: &ServerProcess) {
    let raw = |batch| raw_latency(environment, onnx, model, batch).p50_us();
    let (raw1, raw17, raw32) = (raw(1), raw(17), raw(32));
    let body = request_body(model);
    println!("Explanations, mnist, default occlusion (50 forward passes), concurrency 1:");
    for (name, raw_total) in [
        ("mnist", 50.0 * raw1),
        ("mnist_batched", raw1 + raw32 + raw17),
    ] {
        let result = server.load(
            &Call::json(&format!("/explanations/{name}"), body.clone()),
            1,
        );
        println!(
            "  {name:<14} server p50 {:>8.1} µs   raw run() of the same batches {:>8.1} µs   added {:>7.1} µs",
            result.latency.p50_us(),
            raw_total,
            result.latency.p50_us() - raw_total
        );
    }
    println!();
}

/// The most new tokens a benchmarked generation may make (tiny_lm's
/// greedy text from "Hello" has 35 and then the end token).
const MAX_NEW_TOKENS: usize = 64;

/// tiny_lm (`tests/models/tiny_lm.py`) greedy from "Hello", as
/// `golden/tiny_lm.json` has it.
struct LmCase {
    prompt_tokens: Vec<i64>,
    /// The new tokens, the end token not counted.
    tokens: Vec<i64>,
    text: String,
    eos: i64,
}

impl LmCase {
    fn read(models: &Path) -> LmCase {
        let golden = std::fs::read_to_string(models.join("golden/tiny_lm.json"))
            .expect("golden/tiny_lm.json (run `make bench`)");
        let golden: serde_json::Value = serde_json::from_str(&golden).unwrap();
        let case = golden["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|case| case["prompt"] == "Hello")
            .expect("a \"Hello\" case");
        let ids = |list: &serde_json::Value| -> Vec<i64> {
            list.as_array()
                .unwrap()
                .iter()
                .map(|id| id.as_i64().unwrap())
                .collect()
        };
        LmCase {
            prompt_tokens: ids(&case["prompt_tokens"]),
            tokens: ids(&case["tokens"]),
            text: case["text"].as_str().unwrap().into(),
            eos: golden["eos_token_id"].as_i64().unwrap(),
        }
    }
}

/// One generation: from its start to the first token (raw) or the first
/// data frame (server), and to its end (the end token chosen, or the
/// body's last byte).
struct Timed {
    first: Duration,
    total: Duration,
}

/// Many generations, one at a time.
struct GenerationFigures {
    /// New tokens ÷ the generations' time, summed (the client's checks
    /// between generations left out).
    tokens_per_s: f64,
    ttft: Latencies,
    /// Per generation, (total − first) ÷ the steps after the first: one per
    /// new token but the first, and the one that chooses the end token.
    per_token: Latencies,
    /// `pid`'s CPU time over the measured generations ÷ their new tokens.
    cpu_us_per_token: f64,
}

/// Repeats `generate` (each makes `tokens` new tokens) for `WARMUP`, then
/// for `MEASURE`.
fn measure_generations(
    pid: u32,
    tokens: usize,
    mut generate: impl FnMut() -> Timed,
) -> GenerationFigures {
    let warm_until = Instant::now() + WARMUP;
    while Instant::now() < warm_until {
        generate();
    }
    let cpu_before = cpu_time(pid);
    let until = Instant::now() + MEASURE;
    let mut timed = Vec::new();
    while Instant::now() < until {
        timed.push(generate());
    }
    let cpu = cpu_time(pid) - cpu_before;
    let new_tokens = (timed.len() * tokens) as f64;
    let busy: Duration = timed.iter().map(|t| t.total).sum();
    GenerationFigures {
        tokens_per_s: new_tokens / busy.as_secs_f64(),
        ttft: Latencies::new(timed.iter().map(|t| t.first).collect()),
        per_token: Latencies::new(
            timed
                .iter()
                .map(|t| (t.total - t.first) / tokens as u32)
                .collect(),
        ),
        cpu_us_per_token: cpu * 1e6 / new_tokens,
    }
}

/// The server's decoding loop in plain `ort` (1 intra-op thread): the
/// prompt with an empty cache, then one token a step, each step's
/// `present.*` moved (not copied) into the next one's `past_key_values.*`,
/// an attention mask of ones and the positions, greedy on the last
/// position's logits, until the end token.
struct RawDecoder {
    session: Session,
    /// `past_key_values.N.key/value`, and the outputs that feed them, in step.
    past: Vec<String>,
    present: Vec<String>,
    /// The cache's `[heads, head_dim]`.
    cache_dims: [usize; 2],
}

impl RawDecoder {
    /// From an Optimum export's directory: `model.onnx` and `config.json`.
    fn new(environment: &Environment, dir: &Path) -> RawDecoder {
        let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        let number = |key: &str| config[key].as_u64().expect(key) as usize;
        let kinds: Vec<String> = (0..number("num_hidden_layers"))
            .flat_map(|layer| ["key", "value"].map(|kind| format!("{layer}.{kind}")))
            .collect();
        RawDecoder {
            session: session(environment, &dir.join("model.onnx")),
            past: kinds
                .iter()
                .map(|k| format!("past_key_values.{k}"))
                .collect(),
            present: kinds.iter().map(|k| format!("present.{k}")).collect(),
            cache_dims: [
                number("num_key_value_heads"),
                number("hidden_size") / number("num_attention_heads"),
            ],
        }
    }

    /// One generation: the new tokens, and its times.
    fn generate(&mut self, prompt: &[i64], eos: i64) -> (Vec<i64>, Timed) {
        let start = Instant::now();
        let [heads, head_dim] = self.cache_dims;
        let mut cache = Vec::with_capacity(self.past.len());
        let mut feed = prompt.to_vec();
        let (mut length, mut tokens, mut first) = (0, Vec::new(), None);
        loop {
            let total = length + feed.len();
            let mask = vec![1i64; total];
            let positions: Vec<i64> = (length as i64..total as i64).collect();
            let mut inputs = ort::inputs! {
                "input_ids" => TensorRef::from_array_view(([1, feed.len()], feed.as_slice())).unwrap(),
                "attention_mask" => TensorRef::from_array_view(([1, total], mask.as_slice())).unwrap(),
                "position_ids" => TensorRef::from_array_view(([1, feed.len()], positions.as_slice())).unwrap(),
            };
            if cache.is_empty() {
                let empty = ([1, heads, 0, head_dim], &[] as &[f32]);
                for name in &self.past {
                    let value = TensorRef::from_array_view(empty).unwrap();
                    inputs.push((name.as_str().into(), value.into()));
                }
            } else {
                for (name, value) in self.past.iter().zip(cache.drain(..)) {
                    inputs.push((name.as_str().into(), SessionInputValue::from(value)));
                }
            }
            let mut outputs = self.session.run(inputs).unwrap();
            let (shape, logits) = outputs["logits"].try_extract_tensor::<f32>().unwrap();
            let vocabulary = shape[2] as usize;
            let token = argmax(&logits[logits.len() - vocabulary..]);
            cache.extend(
                self.present
                    .iter()
                    .map(|name| outputs.remove(name).unwrap()),
            );
            first.get_or_insert_with(|| start.elapsed());
            if token == eos || tokens.len() == MAX_NEW_TOKENS {
                break;
            }
            tokens.push(token);
            length = total;
            feed.clear();
            feed.push(token);
        }
        let timed = Timed {
            first: first.unwrap(),
            total: start.elapsed(),
        };
        (tokens, timed)
    }
}

/// The highest logit's token; the lowest id among equals (the server's rule).
fn argmax(logits: &[f32]) -> i64 {
    let mut best = 0;
    for (i, &logit) in logits.iter().enumerate() {
        if logit > logits[best] {
            best = i;
        }
    }
    best as i64
}

/// A streaming generation route: the request, and how its body's text is
/// read back (checking the protocol's ending).
struct GenerationRoute {
    label: &'static str,
    path: &'static str,
    body: serde_json::Value,
    text: fn(&[u8]) -> String,
}

/// TorchServe's chunked answer: the text, a piece per chunk.
fn chunked_text(body: &[u8]) -> String {
    String::from_utf8(body.to_vec()).expect("UTF-8 text")
}

/// A server-sent-events body's JSON events, and whether `data: [DONE]` ended it.
fn sse_events(body: &[u8]) -> (Vec<serde_json::Value>, bool) {
    let (mut events, mut done) = (Vec::new(), false);
    let text = std::str::from_utf8(body).expect("UTF-8 events");
    assert!(text.ends_with("\n\n"), "an unfinished event: {text:?}");
    for event in text.split_terminator("\n\n") {
        assert!(!done, "an event after data: [DONE]");
        match event.strip_prefix("data: ") {
            Some("[DONE]") => done = true,
            Some(data) => events.push(serde_json::from_str(data).unwrap()),
            None => panic!("not a data event: {event:?}"),
        }
    }
    (events, done)
}

/// `generate_stream`'s events: `text_output` each, `finish_reason` last.
fn v2_text(body: &[u8]) -> String {
    let (events, done) = sse_events(body);
    assert!(!done && events.last().unwrap()["finish_reason"] == "stop");
    events
        .iter()
        .map(|e| e["text_output"].as_str().unwrap())
        .collect()
}

/// OpenAI's `text_completion` chunks, the last with `finish_reason`, then
/// `data: [DONE]`.
fn openai_text(body: &[u8]) -> String {
    let (events, done) = sse_events(body);
    assert!(done && events.last().unwrap()["choices"][0]["finish_reason"] == "stop");
    events
        .iter()
        .map(|e| e["choices"][0]["text"].as_str().unwrap())
        .collect()
}

/// Tokens per second, time to first token and time per token of tiny_lm's
/// greedy generation from "Hello" (1 prompt token, 35 new, then the end
/// token): the decoding loop in plain `ort` in this process, then the
/// server's three streaming routes, one generation at a time on one
/// keep-alive connection, each answer's text checked against the golden
/// one. The server's figures are the client's: its first data frame and
/// its body's end.
fn generation(environment: &Environment, models: &Path, library: &Path, pinned: bool) {
    let dir = models.join("tiny_lm");
    let case = LmCase::read(models);
    let tokens = case.tokens.len();
    let mut decoder = RawDecoder::new(environment, &dir);
    let raw = measure_generations(std::process::id(), tokens, || {
        let (generated, timed) = decoder.generate(&case.prompt_tokens, case.eos);
        assert_eq!(generated, case.tokens, "raw decoding loop");
        timed
    });

    let store = tempfile::tempdir().unwrap();
    let model = store.path().join("tiny_lm");
    std::fs::create_dir_all(&model).unwrap();
    for file in [
        "model.onnx",
        "tokenizer.json",
        "generation_config.json",
        "config.json",
    ] {
        std::fs::copy(dir.join(file), model.join(file)).unwrap();
    }
    std::fs::write(
        model.join("model-config.yaml"),
        "minWorkers: 1\nmaxWorkers: 1\nortserve:\n  handler: text_generation\n  intraOpThreads: 1\n",
    )
    .unwrap();
    let server = ServerProcess::start(store.path(), library, pinned, &Telemetry::DEFAULT_QUIET);
    let routes = [
        GenerationRoute {
            label: "TorchServe, chunked",
            path: "/predictions/tiny_lm",
            body: serde_json::json!({"prompt": "Hello", "stream": true, "max_new_tokens": MAX_NEW_TOKENS}),
            text: chunked_text,
        },
        GenerationRoute {
            label: "v2 generate_stream",
            path: "/v2/models/tiny_lm/generate_stream",
            body: serde_json::json!({"text_input": "Hello", "parameters": {"max_tokens": MAX_NEW_TOKENS}}),
            text: v2_text,
        },
        GenerationRoute {
            label: "OpenAI completions",
            path: "/openai/v1/completions",
            body: serde_json::json!({"model": "tiny_lm", "prompt": "Hello", "stream": true, "max_tokens": MAX_NEW_TOKENS}),
            text: openai_text,
        },
    ];
    // A request's round trip with no model, for the time to first token.
    let floor = server.load(&Call::ping(), 1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut connection = runtime.block_on(Connection::open(&server.address));
    let mut rows = Vec::new();
    for route in &routes {
        let body = Bytes::from(route.body.to_string());
        let figures = measure_generations(server.child.id(), tokens, || {
            let (first, total, answer) =
                runtime.block_on(connection.stream(route.path, body.clone()));
            assert_eq!((route.text)(&answer), case.text, "{}", route.path);
            Timed { first, total }
        });
        rows.push((route.label, figures));
    }

    println!(
        "Text generation, tiny_lm greedy from \"Hello\" ({} prompt token, {tokens} new, then the end token), one generation at a time on one keep-alive connection;",
        case.prompt_tokens.len()
    );
    println!(
        "per token = (end − first token) ÷ {tokens} steps; CPU = this process's for the raw loop, the server's for a route; added = per token over the raw loop's:"
    );
    print_generation("raw ort decoding loop", &raw, None);
    for (label, figures) in &rows {
        print_generation(label, figures, Some(&raw));
    }
    println!(
        "  floor: GET /ping on the same server and connection kind, p50 {:.1} µs\n",
        floor.latency.p50_us()
    );
}

fn print_generation(label: &str, figures: &GenerationFigures, raw: Option<&GenerationFigures>) {
    let added = raw.map_or(String::new(), |raw| {
        format!(
            "   added {:>+6.1} µs/token",
            figures.per_token.p50_us() - raw.per_token.p50_us()
        )
    });
    println!(
        "  {label:<22} {:>7.0} tokens/s   TTFT p50 {:>7.1} µs   per token p50 {:>6.1} µs   CPU {:>6.1} µs/token{added}",
        figures.tokens_per_s,
        figures.ttft.p50_us(),
        figures.per_token.p50_us(),
        figures.cpu_us_per_token
    );
}

/// One request the load generator repeats.
#[derive(Clone)]
struct Call {
    method: &'static str,
    path: String,
    body: Bytes,
    /// `Inference-Header-Content-Length` for binary v2 requests.
    binary_header: Option<usize>,
}

impl Call {
    /// `GET /ping`: the server's own HTTP stack with no model, the floor.
    fn ping() -> Call {
        Call {
            method: "GET",
            path: "/ping".into(),
            body: Bytes::new(),
            binary_header: None,
        }
    }

    fn json(path: &str, body: Bytes) -> Call {
        Call {
            method: "POST",
            path: path.into(),
            body,
            binary_header: None,
        }
    }
}

fn write_model(store: &Path, name: &str, onnx: &Path, config: &str) {
    let dir = store.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(onnx, dir.join("model.onnx")).unwrap();
    let config = format!("minWorkers: 1\nmaxWorkers: 1\n{config}ortserve:\n  intraOpThreads: 1\n");
    std::fs::write(dir.join("model-config.yaml"), config).unwrap();
}

/// One row of deterministic values, as the JSON body a client would send.
fn request_body(model: &Model) -> Bytes {
    let len: usize = model.row.iter().product();
    let values: Vec<f32> = (0..len).map(|i| (i % 17) as f32 / 17.0).collect();
    let body = match model.row.as_slice() {
        [_] => serde_json::json!([values]),
        _ => serde_json::json!([[values.chunks(28).collect::<Vec<_>>()]]),
    };
    Bytes::from(body.to_string())
}

fn session(environment: &Environment, onnx: &Path) -> Session {
    Session::builder(environment)
        .unwrap()
        .with_intra_threads(1)
        .unwrap()
        .with_intra_op_spinning(false)
        .unwrap()
        .commit_from_file(onnx)
        .unwrap()
}

/// Latency of `run()` (input wrapping and output read included) at `batch`.
fn raw_latency(environment: &Environment, onnx: &Path, model: &Model, batch: usize) -> Latencies {
    let mut session = session(environment, onnx);
    let (shape, data) = input(model, batch);
    let run = |session: &mut Session| {
        let start = Instant::now();
        let input = TensorRef::from_array_view((shape.clone(), data.as_slice())).unwrap();
        let outputs = session.run(ort::inputs![input]).unwrap();
        let (_, values) = outputs[0].try_extract_tensor::<f32>().unwrap();
        std::hint::black_box(values[0]);
        start.elapsed()
    };
    let warm_until = Instant::now() + WARMUP;
    while Instant::now() < warm_until {
        run(&mut session);
    }
    let mut samples = Vec::new();
    let until = Instant::now() + MEASURE;
    while Instant::now() < until {
        samples.push(run(&mut session));
    }
    Latencies::new(samples)
}

/// Rows per second of back-to-back `run()` calls at `batch`.
fn raw_throughput(environment: &Environment, onnx: &Path, model: &Model, batch: usize) -> f64 {
    let latencies = raw_latency(environment, onnx, model, batch);
    batch as f64 / latencies.mean_secs()
}

fn input(model: &Model, batch: usize) -> (Vec<i64>, Vec<f32>) {
    let mut shape = vec![batch as i64];
    shape.extend(model.row.iter().map(|&d| d as i64));
    let len = batch * model.row.iter().product::<usize>();
    (shape, (0..len).map(|i| (i % 17) as f32 / 17.0).collect())
}

struct Latencies(Vec<Duration>);

impl Latencies {
    fn new(mut samples: Vec<Duration>) -> Latencies {
        samples.sort();
        Latencies(samples)
    }

    fn quantile_us(&self, q: f64) -> f64 {
        let index = ((self.0.len() - 1) as f64 * q).round() as usize;
        self.0[index].as_secs_f64() * 1e6
    }

    fn p50_us(&self) -> f64 {
        self.quantile_us(0.5)
    }

    fn p99_us(&self) -> f64 {
        self.quantile_us(0.99)
    }

    fn mean_secs(&self) -> f64 {
        self.0.iter().sum::<Duration>().as_secs_f64() / self.0.len() as f64
    }
}

/// Pins this process to the client core when `taskset` is available.
fn pin_self() -> bool {
    Command::new("taskset")
        .args(["-cp", CLIENT_CORE, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The telemetry a benchmarked server runs with.
struct Telemetry {
    name: &'static str,
    properties: &'static [&'static str],
    log_filter: &'static str,
    /// Another build to compare with (`ORTSERVE_BENCH_BASELINE`); else this one.
    binary: Option<&'static str>,
}

impl Telemetry {
    /// Metrics on (the default); logs at warn, so no access-log lines.
    const DEFAULT_QUIET: Telemetry = Telemetry {
        name: "metrics on, access log off",
        properties: &["access_log=false"],
        log_filter: "warn,ortserve::server=info",
        binary: None,
    };
}

/// Throughput with metrics off, on, and on with an access-log line per
/// request, on the tiny model (where the server's own work is all there is).
/// Two interleaved rounds, best of each, so drift hits every setting alike.
fn telemetry_cost(
    store: &Path,
    library: &Path,
    pinned: bool,
    model: &Model,
    baseline: Option<&'static str>,
) {
    let settings = [
        Telemetry {
            name: "metrics off, access log off",
            properties: &["enable_metrics_api=false", "access_log=false"],
            log_filter: "warn,ortserve::server=info",
            binary: None,
        },
        Telemetry::DEFAULT_QUIET,
        Telemetry {
            name: "metrics on, access log on (info)",
            properties: &[],
            log_filter: "info",
            binary: None,
        },
    ];
    let settings: Vec<Telemetry> = match baseline {
        Some(path) => settings
            .into_iter()
            .chain([Telemetry {
                name: "ORTSERVE_BENCH_BASELINE binary",
                properties: &[],
                log_filter: "warn,ortserve::server=info",
                binary: Some(path),
            }])
            .collect(),
        None => settings.into(),
    };
    let body = request_body(model);
    let single = Call::json(&format!("/predictions/{}", model.name), body.clone());
    let batched = Call::json(&format!("/predictions/{}_batched", model.name), body);
    let mut best = vec![(0.0f64, 0.0f64); settings.len()];
    for _round in 0..2 {
        for (i, telemetry) in settings.iter().enumerate() {
            let server = ServerProcess::start(store, library, pinned, telemetry);
            let c1 = server.load(&single, 1).rate;
            let c32 = server.load(&batched, 32).rate;
            best[i] = (best[i].0.max(c1), best[i].1.max(c32));
        }
    }
    println!(
        "Telemetry cost, {} (best of two interleaved rounds):",
        model.name
    );
    let (base1, base32) = best[0];
    for (telemetry, (c1, c32)) in settings.iter().zip(&best) {
        println!(
            "  {:<34} c=1 {:>7.0} req/s ({:>+5.1} %)   c=32 {:>7.0} req/s ({:>+5.1} %)",
            telemetry.name,
            c1,
            100.0 * (c1 / base1 - 1.0),
            c32,
            100.0 * (c32 / base32 - 1.0)
        );
    }
    println!();
}

struct LoadResult {
    latency: Latencies,
    rate: f64,
    cpu_us_per_request: f64,
    /// The load generator's own CPU time per request.
    client_cpu_us_per_request: f64,
}

struct ServerProcess {
    child: Child,
    address: String,
    /// The gRPC listener's `HOST:PORT` (none in a build without one).
    grpc_address: Option<String>,
    /// The metrics listener's `HOST:PORT`.
    metrics_address: Option<String>,
}

/// A model's batch counters, from its `ortserve_batch_rows` histogram.
#[derive(Clone, Copy, Default)]
struct BatchCount {
    rows: f64,
    batches: f64,
}

impl BatchCount {
    fn rows_per_batch_since(self, before: BatchCount) -> f64 {
        (self.rows - before.rows) / (self.batches - before.batches).max(1.0)
    }
}

/// What the load generator repeats.
#[derive(Clone)]
enum Target {
    /// One HTTP/1.1 request at a time per keep-alive connection.
    Http(Call),
    /// One gRPC call at a time per task, the tasks sharing channels.
    Grpc(GrpcCall),
}

/// The gRPC call the load generator repeats.
#[derive(Clone)]
enum GrpcCall {
    Infer(Box<ModelInferRequest>),
    /// `ServerLive`: the gRPC stack with no model, its floor.
    Live,
}

impl GrpcCall {
    fn path(&self) -> &'static str {
        match self {
            GrpcCall::Infer(_) => "/inference.GRPCInferenceService/ModelInfer",
            GrpcCall::Live => "/inference.GRPCInferenceService/ServerLive",
        }
    }

    /// The request message with gRPC's 5-byte prefix (not compressed).
    fn framed(&self) -> Bytes {
        let message = match self {
            GrpcCall::Infer(request) => request.encode_to_vec(),
            GrpcCall::Live => Vec::new(),
        };
        let mut framed = vec![0];
        framed.extend((message.len() as u32).to_be_bytes());
        framed.extend(message);
        Bytes::from(framed)
    }

    /// Panics unless `framed` is this call's successful answer.
    fn check(&self, framed: &[u8]) {
        let message = framed.get(5..).expect("a framed answer");
        match self {
            GrpcCall::Infer(request) => {
                let answer = ModelInferResponse::decode(message).expect("a ModelInferResponse");
                assert!(
                    !answer.outputs.is_empty(),
                    "{}: no outputs",
                    request.model_name
                );
            }
            GrpcCall::Live => {
                let answer = ServerLiveResponse::decode(message).expect("a ServerLiveResponse");
                assert!(answer.live, "not live");
            }
        }
    }
}

/// One gRPC load generator task's calls, over an HTTP/2 connection it
/// shares. Each call's headers and message are queued together and leave
/// in one write, as grpc-go's, grpc-java's and gRPC C-core's clients send
/// a unary call (and as the HTTP/1.1 client sends a request's head and
/// body). tonic's client sends the message apart from the headers, which
/// costs the server a wake-up a call that no REST request pays.
struct GrpcClient {
    sender: h2::client::SendRequest<Bytes>,
    uri: hyper::Uri,
    framed: Bytes,
    call: GrpcCall,
}

impl GrpcClient {
    async fn call(&mut self) {
        let request = hyper::Request::post(self.uri.clone())
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let mut sender = self.sender.clone().ready().await.expect("an open stream");
        let (answer, mut message) = sender.send_request(request, false).expect("a stream");
        message
            .send_data(self.framed.clone(), true)
            .expect("the message queued");
        let answer = answer.await.expect("an answer");
        assert_eq!(answer.status(), 200, "{}", self.uri);
        let mut body = answer.into_body();
        let mut framed = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("the answer's message");
            let _ = body.flow_control().release_capacity(chunk.len());
            framed.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.expect("trailers").expect("trailers");
        let status = trailers.get("grpc-status").map(|s| s.as_bytes());
        assert_eq!(status, Some(&b"0"[..]), "{}: {trailers:?}", self.uri);
        self.call.check(&framed);
    }
}

/// An HTTP/2 connection for gRPC calls, driven by a task of its own.
async fn grpc_connection(address: &str) -> h2::client::SendRequest<Bytes> {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("gRPC connection");
    stream.set_nodelay(true).unwrap();
    let (sender, connection) = h2::client::handshake(stream).await.expect("HTTP/2");
    tokio::spawn(async move { connection.await.expect("the gRPC connection") });
    sender
}

/// One load generator task's way to the server.
enum Client {
    Http(Connection, Call),
    Grpc(GrpcClient),
}

impl Client {
    async fn open(
        address: &str,
        target: Target,
        grpc: Option<(String, h2::client::SendRequest<Bytes>)>,
    ) -> Client {
        match target {
            Target::Http(call) => Client::Http(Connection::open(address).await, call),
            Target::Grpc(call) => {
                let (grpc_address, sender) = grpc.expect("a gRPC connection");
                Client::Grpc(GrpcClient {
                    sender,
                    uri: format!("http://{grpc_address}{}", call.path())
                        .parse()
                        .unwrap(),
                    framed: call.framed(),
                    call,
                })
            }
        }
    }

    /// Sends the call and reads its whole answer; anything but success panics.
    async fn call(&mut self) {
        match self {
            Client::Http(connection, call) => {
                let status = connection
                    .request(
                        call.method,
                        &call.path,
                        call.body.clone(),
                        call.binary_header,
                    )
                    .await;
                assert_eq!(status, 200, "{}", call.path);
            }
            Client::Grpc(client) => client.call().await,
        }
    }
}

impl ServerProcess {
    /// Starts the server on every model in `store`, with extra
    /// config.properties lines and a log filter.
    fn start(store: &Path, library: &Path, pinned: bool, telemetry: &Telemetry) -> ServerProcess {
        let binary = telemetry.binary.unwrap_or(env!("CARGO_BIN_EXE_ortserve"));
        let mut command = if pinned {
            let mut c = Command::new("taskset");
            c.args(["-c", SERVER_CORE, binary]);
            c
        } else {
            Command::new(binary)
        };
        let config = store.join("config.properties");
        let properties = format!(
            "inference_address=http://127.0.0.1:0\nmanagement_address=http://127.0.0.1:0\nmetrics_address=http://127.0.0.1:0\ngrpc_inference_port=0\ngrpc_management_port=0\n{}\n",
            telemetry.properties.join("\n")
        );
        std::fs::write(&config, properties).unwrap();
        let mut child = command
            .arg("--ts-config")
            .arg(&config)
            .arg("--model-store")
            .arg(store)
            .arg("--models")
            .arg("all")
            .arg("--onnxruntime-lib")
            .arg(library)
            .env("RUST_LOG", telemetry.log_filter)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ortserve");
        // The listeners' start-up lines: (which one, HOST:PORT); the rest of
        // the output is drained.
        let stdout = child.stdout.take().unwrap();
        let (sender, listeners) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let listener = ["gRPC inference API", "Inference API", "Metrics API"]
                    .into_iter()
                    .position(|what| line.contains(&format!("{what} listening")));
                if let (Some(listener), Some(rest)) =
                    (listener, line.split("listening on http://").nth(1))
                {
                    let address = rest.split_whitespace().next().unwrap_or_default();
                    let _ = sender.send((listener, address.to_string()));
                }
            }
        });
        let [mut grpc_address, mut address, mut metrics_address] = [None, None, None];
        while address.is_none() || grpc_address.is_none() || metrics_address.is_none() {
            // A build without gRPC (ORTSERVE_BENCH_BASELINE) announces only HTTP.
            let wait = Duration::from_secs(if address.is_some() { 5 } else { 60 });
            match listeners.recv_timeout(wait) {
                Ok((0, listening)) => grpc_address = Some(listening),
                Ok((1, listening)) => address = Some(listening),
                Ok((_, listening)) => metrics_address = Some(listening),
                Err(_) if address.is_some() => break,
                Err(_) => panic!("ortserve exited or never listened"),
            }
        }
        let server = ServerProcess {
            child,
            address: address.unwrap(),
            grpc_address,
            metrics_address,
        };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&self) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let mut connection = Connection::open(&self.address).await;
                if connection.request("GET", "/ping", Bytes::new(), None).await == 200 {
                    return;
                }
                assert!(Instant::now() < deadline, "ortserve never became healthy");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }

    /// `model`'s batch counters so far (zero without a metrics listener).
    fn batches(&self, model: &str) -> BatchCount {
        let Some(metrics) = self.metrics_address.as_deref() else {
            return BatchCount::default();
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let text = runtime.block_on(async {
            let mut connection = Connection::open(metrics).await;
            let response = connection.send("GET", "/metrics", Bytes::new(), None).await;
            let body = response.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8_lossy(&body).into_owned()
        });
        let counter = |name: &str| {
            let prefix = format!("ortserve_batch_rows_{name}{{model=\"{model}\"");
            text.lines()
                .find(|line| line.starts_with(&prefix))
                .and_then(|line| line.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0.0)
        };
        BatchCount {
            rows: counter("sum"),
            batches: counter("count"),
        }
    }

    /// Closed loop: `concurrency` connections, each sending the next request
    /// as soon as the previous answer arrives.
    fn load(&self, call: &Call, concurrency: usize) -> LoadResult {
        self.drive(Target::Http(call.clone()), concurrency)
    }

    /// Closed loop: `concurrency` tasks over up to `GRPC_CHANNELS` HTTP/2
    /// channels, each task calling again as soon as its answer arrives.
    fn load_grpc(&self, request: &ModelInferRequest, concurrency: usize) -> LoadResult {
        let call = GrpcCall::Infer(Box::new(request.clone()));
        self.drive(Target::Grpc(call), concurrency)
    }

    /// Closed loop over `target`'s transport (see `load` and `load_grpc`).
    fn drive(&self, target: Target, concurrency: usize) -> LoadResult {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut channels = Vec::new();
            if let Target::Grpc(_) = target {
                let address = self.grpc_address.clone().expect("no gRPC listener");
                for _ in 0..GRPC_CHANNELS.min(concurrency) {
                    channels.push((address.clone(), grpc_connection(&address).await));
                }
            }
            let run_for = |duration: Duration| {
                let tasks: Vec<_> = (0..concurrency)
                    .map(|task| {
                        let address = self.address.clone();
                        let target = target.clone();
                        let channel =
                            (!channels.is_empty()).then(|| channels[task % channels.len()].clone());
                        tokio::spawn(async move {
                            let mut client = Client::open(&address, target, channel).await;
                            let mut samples = Vec::new();
                            let until = Instant::now() + duration;
                            while Instant::now() < until {
                                let start = Instant::now();
                                client.call().await;
                                samples.push(start.elapsed());
                            }
                            samples
                        })
                    })
                    .collect();
                async move {
                    let mut all = Vec::new();
                    for task in tasks {
                        all.extend(task.await.unwrap());
                    }
                    all
                }
            };
            run_for(WARMUP).await;
            let cpu_before = cpu_time(self.child.id());
            let client_cpu_before = cpu_time(std::process::id());
            let start = Instant::now();
            let samples = run_for(MEASURE).await;
            let elapsed = start.elapsed().as_secs_f64();
            let cpu = cpu_time(self.child.id()) - cpu_before;
            let client_cpu = cpu_time(std::process::id()) - client_cpu_before;
            let count = samples.len() as f64;
            LoadResult {
                latency: Latencies::new(samples),
                rate: count / elapsed,
                cpu_us_per_request: cpu * 1e6 / count,
                client_cpu_us_per_request: client_cpu * 1e6 / count,
            }
        })
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The process's user + system CPU seconds, from /proc.
fn cpu_time(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|t| t.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

/// One keep-alive HTTP/1.1 connection.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Connection {
    async fn open(address: &str) -> Connection {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        Connection { sender }
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Bytes,
        binary_header: Option<usize>,
    ) -> u16 {
        let response = self.send(method, path, body, binary_header).await;
        let status = response.status().as_u16();
        response.into_body().collect().await.unwrap();
        status
    }

    /// POSTs a JSON body and reads the answer frame by frame, as a streaming
    /// client does: the time to the first data frame, to the body's end, and
    /// the body.
    async fn stream(&mut self, path: &str, body: Bytes) -> (Duration, Duration, Vec<u8>) {
        let start = Instant::now();
        let response = self.send("POST", path, body, None).await;
        assert_eq!(response.status(), 200, "{path}");
        let mut body = response.into_body();
        let (mut first, mut bytes) = (None, Vec::new());
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect(path).into_data()
                && !data.is_empty()
            {
                first.get_or_insert_with(|| start.elapsed());
                bytes.extend_from_slice(&data);
            }
        }
        (first.expect("no data frame"), start.elapsed(), bytes)
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Bytes,
        binary_header: Option<usize>,
    ) -> hyper::Response<hyper::body::Incoming> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "bench");
        request = match binary_header {
            Some(length) => request
                .header("content-type", "application/octet-stream")
                .header("inference-header-content-length", length),
            None => request.header("content-type", "application/json"),
        };
        let request = request.body(Full::new(body)).unwrap();
        self.sender.send_request(request).await.unwrap()
    }
}
