//! The CUDA path, proven on a machine with an NVIDIA GPU (`scripts/gpu-check.sh` runs
//! this): a ResNet-18-shaped CNN served by one server twice, with `deviceType: gpu` and
//! with `deviceType: cpu`.
//!
//! 1. The log names the CUDA device the GPU model's worker runs on.
//! 2. Batches of 1 and 32 give the same outputs on both, within a tolerance (ONNX
//!    Runtime's CUDA provider allows TF32 for convolutions by default).
//! 3. Throughput at batch 32 (v2 binary, 4 clients) against raw ONNX Runtime CUDA
//!    `run()` on the same model in the same run.
//! 4. With CUDA made unusable (no visible device, or a library without CUDA), a
//!    `deviceType: gpu` model fails to load, naming CUDA, instead of serving on the CPU.
//!
//! Environment: `ORTSERVE_GPU_ORT` (ONNX Runtime's CUDA build, `libonnxruntime.so.1`,
//! with its providers beside it and CUDA/cuDNN on the loader path) and
//! `ORTSERVE_GPU_MODEL` (the model). `ORTSERVE_GPU_CHECK_DEVICE=cpu` runs every step on
//! the CPU instead, to check the harness itself where there is no GPU.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ort::ep::CUDA;
use ort::session::Session;
use ort::value::TensorRef;

const MEASURE: Duration = Duration::from_secs(10);
const CLIENTS: usize = 4;
const BATCH: usize = 32;
const ROW: usize = 3 * 224 * 224;
/// |gpu − cpu| ≤ TOLERANCE × max(1, |cpu|), element by element.
const TOLERANCE: f32 = 1e-2;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let ort_library = PathBuf::from(std::env::var("ORTSERVE_GPU_ORT").expect("ORTSERVE_GPU_ORT"));
    let model = PathBuf::from(std::env::var("ORTSERVE_GPU_MODEL").expect("ORTSERVE_GPU_MODEL"));
    let device = std::env::var("ORTSERVE_GPU_CHECK_DEVICE").unwrap_or_else(|_| "gpu".into());
    let store = tempfile::tempdir().unwrap();
    for (name, device) in [("on_device", device.as_str()), ("on_cpu", "cpu")] {
        let dir = store.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&model, dir.join("model.onnx")).unwrap();
        let config = format!(
            "deviceType: {device}\nminWorkers: 1\nmaxWorkers: 1\nbatchSize: {BATCH}\nmaxBatchDelay: 2\n"
        );
        std::fs::write(dir.join("model-config.yaml"), config).unwrap();
    }
    let mut failures = Vec::new();

    let server = Server::start(store.path(), &ort_library, &[]);
    let ready = server.log_line("model ready", "model=on_device");
    println!("1. device: {ready}");
    let expected = if device == "gpu" {
        "device=\"cuda:"
    } else {
        "device=\"cpu\""
    };
    if !ready.contains(expected) {
        failures.push(format!(
            "the GPU model's ready line does not name {expected}"
        ));
    }

    for rows in [1, BATCH] {
        let input = input(rows);
        let on_device = server.infer("on_device", rows, &input);
        let on_cpu = server.infer("on_cpu", rows, &input);
        let worst = on_device
            .iter()
            .zip(&on_cpu)
            .map(|(d, c)| (d - c).abs() / c.abs().max(1.0))
            .fold(0f32, f32::max);
        println!(
            "2. batch {rows:>2}: largest difference from CPU {worst:.2e} (tolerance {TOLERANCE:.0e})"
        );
        if worst > TOLERANCE || on_device.len() != rows * 1000 {
            failures.push(format!(
                "batch {rows}: outputs differ from the CPU's by {worst:.2e}"
            ));
        }
    }

    let served = server.throughput("on_device");
    let raw = raw_throughput(&ort_library, &model, device == "gpu");
    println!(
        "3. batch {BATCH}, {CLIENTS} clients: server {served:.0} rows/s, raw run() {raw:.0} rows/s ({:.0} %)",
        100.0 * served / raw
    );
    drop(server);

    // No device visible: CUDA cannot be created, and nothing falls back. In CPU mode the
    // library has no CUDA provider at all, which must fail the same way.
    let strict = store.path().join("needs_gpu");
    std::fs::create_dir_all(&strict).unwrap();
    std::fs::copy(&model, strict.join("model.onnx")).unwrap();
    std::fs::write(strict.join("model-config.yaml"), "deviceType: gpu\n").unwrap();
    let hidden = Server::start(store.path(), &ort_library, &[("CUDA_VISIBLE_DEVICES", "")]);
    let failed = hidden.log_line("model failed to load", "model=needs_gpu");
    println!("4. without a visible device: {failed}");
    if !failed.contains("CUDA") {
        failures.push("without a device, the GPU model did not fail naming CUDA".into());
    }
    drop(hidden);

    if failures.is_empty() {
        println!("GPU check passed");
    } else {
        eprintln!("GPU check FAILED:\n  {}", failures.join("\n  "));
        std::process::exit(1);
    }
}

/// `rows` deterministic images in 0..1.
fn input(rows: usize) -> Vec<f32> {
    (0..rows * ROW)
        .map(|i| ((i * 31 + i / ROW * 7) % 251) as f32 / 251.0)
        .collect()
}

/// Rows per second of raw `run()` at batch 32 on the same model and device.
fn raw_throughput(library: &Path, model: &Path, gpu: bool) -> f64 {
    let environment = ort::init_from(library)
        .expect("ONNX Runtime")
        .build()
        .expect("environment");
    let mut builder = Session::builder(&environment).unwrap();
    if gpu {
        builder = builder
            .with_execution_providers([CUDA::default().build().error_on_failure()])
            .unwrap();
    }
    let mut session = builder.commit_from_file(model).unwrap();
    let data = input(BATCH);
    let shape = [BATCH, 3, 224, 224];
    let mut run = || {
        let tensor = TensorRef::from_array_view((shape, data.as_slice())).unwrap();
        session.run(ort::inputs![tensor]).unwrap();
    };
    run();
    let started = Instant::now();
    let mut batches = 0;
    while started.elapsed() < MEASURE {
        run();
        batches += 1;
    }
    (batches * BATCH) as f64 / started.elapsed().as_secs_f64()
}

struct Server {
    child: Child,
    address: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    fn start(store: &Path, library: &Path, env: &[(&str, &str)]) -> Server {
        let config = store.join("config.properties");
        std::fs::write(
            &config,
            "inference_address=http://127.0.0.1:0\nmanagement_address=http://127.0.0.1:0\nmetrics_address=http://127.0.0.1:0\ngrpc_inference_port=0\naccess_log=false\nmax_request_size=67108864\nmax_response_size=67108864\n",
        )
        .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_ortserve"));
        command
            .arg("--ts-config")
            .arg(&config)
            .arg("--model-store")
            .arg(store)
            .args(["--models", "all", "--onnxruntime-lib"])
            .arg(library)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start ortserve");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let reader = std::io::BufReader::new(child.stdout.take().unwrap());
        let sink = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in reader.lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut server = Server {
            child,
            address: String::new(),
            log,
        };
        let line = server.log_line("Inference API listening on http://", "");
        server.address = line
            .split("listening on http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .to_string();
        server
    }

    /// The first log line holding both strings, waiting up to two minutes.
    fn log_line(&self, needle: &str, also: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let found = self
                .log
                .lock()
                .unwrap()
                .lines()
                .find(|l| l.contains(needle) && l.contains(also))
                .map(str::to_string);
            if let Some(line) = found {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} and {also:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The logits for `rows` images, through the v2 binary protocol.
    fn infer(&self, model: &str, rows: usize, input: &[f32]) -> Vec<f32> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let response =
                request(&reqwest::Client::new(), &self.address, model, rows, input).await;
            let length: usize = response.headers()["inference-header-content-length"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let body = response.bytes().await.unwrap();
            body[length..]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect()
        })
    }

    /// Rows per second at batch 32 from `CLIENTS` closed-loop clients.
    fn throughput(&self, model: &str) -> f64 {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let input = std::sync::Arc::new(input(BATCH));
            let client = reqwest::Client::new();
            request(&client, &self.address, model, BATCH, &input).await;
            let started = Instant::now();
            let clients: Vec<_> = (0..CLIENTS)
                .map(|_| {
                    let (client, input) = (client.clone(), input.clone());
                    let (address, model) = (self.address.clone(), model.to_string());
                    tokio::spawn(async move {
                        let mut batches = 0usize;
                        while started.elapsed() < MEASURE {
                            let answer = request(&client, &address, &model, BATCH, &input).await;
                            answer.bytes().await.unwrap();
                            batches += 1;
                        }
                        batches
                    })
                })
                .collect();
            let mut batches = 0;
            for client in clients {
                batches += client.await.unwrap();
            }
            (batches * BATCH) as f64 / started.elapsed().as_secs_f64()
        })
    }
}

/// One v2 binary request of `rows` images to `model`, answered 200.
async fn request(
    client: &reqwest::Client,
    address: &str,
    model: &str,
    rows: usize,
    input: &[f32],
) -> reqwest::Response {
    let header = format!(
        r#"{{"inputs":[{{"name":"input","shape":[{rows},3,224,224],"datatype":"FP32","parameters":{{"binary_data_size":{}}}}}],"parameters":{{"binary_data_output":true}}}}"#,
        input.len() * 4
    );
    let mut body = header.clone().into_bytes();
    body.extend(input.iter().flat_map(|v| v.to_le_bytes()));
    let response = client
        .post(format!("http://{address}/v2/models/{model}/infer"))
        .header("inference-header-content-length", header.len())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{model}");
    response
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
