//! Test harness: runs the real `ortserve` binary on a free loopback port
//! against a temporary model store of generated ONNX models.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Directory of generated test models (`make test` writes it).
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("ORTSERVE_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-models"));
    assert!(
        dir.join("linear.onnx").is_file(),
        "test models are missing in {}; run `make test` (it generates them)",
        dir.display()
    );
    dir
}

pub fn model_bytes(name: &str) -> Vec<u8> {
    std::fs::read(models_dir().join(format!("{name}.onnx"))).expect("generated test model")
}

/// The test venv's Python (`make test` installs the real clients in it).
pub fn python() -> PathBuf {
    let python = std::env::var_os("ORTSERVE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing; run `make test` (it installs the clients)",
        python.display()
    );
    python
}

pub fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("demo")
}

/// A temporary TorchServe-style model store.
pub struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    pub fn new() -> Store {
        Store {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A plain directory `name/` with `model.onnx` (a copy of test model
    /// `onnx`) and, if given, `model-config.yaml`.
    pub fn dir_model(&self, name: &str, onnx: &str, config: Option<&str>) -> &Store {
        let dir = self.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.onnx"), model_bytes(onnx)).unwrap();
        if let Some(config) = config {
            std::fs::write(dir.join("model-config.yaml"), config).unwrap();
        }
        self
    }

    /// A `.mar` archive `file` holding test model `onnx` under `serialized`.
    pub fn mar(
        &self,
        file: &str,
        manifest: &Manifest,
        onnx: &str,
        extra: &[(&str, &[u8])],
    ) -> &Store {
        let out = std::fs::File::create(self.path().join(file)).unwrap();
        let mut zip = zip::ZipWriter::new(out);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("MAR-INF/MANIFEST.json", options).unwrap();
        zip.write_all(manifest.json().as_bytes()).unwrap();
        zip.start_file(manifest.serialized_file.as_str(), options)
            .unwrap();
        zip.write_all(&model_bytes(onnx)).unwrap();
        for (name, bytes) in extra {
            zip.start_file(*name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        self
    }

    /// Writes an arbitrary file into the store.
    pub fn file(&self, relative: &str, bytes: &[u8]) -> &Store {
        let path = self.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        self
    }
}

/// The fields of a MAR-INF/MANIFEST.json.
pub struct Manifest {
    pub model_name: String,
    pub version: String,
    pub serialized_file: String,
    pub handler: Option<String>,
}

impl Manifest {
    pub fn new(model_name: &str, version: &str) -> Manifest {
        Manifest {
            model_name: model_name.into(),
            version: version.into(),
            serialized_file: "model.onnx".into(),
            handler: None,
        }
    }

    pub fn handler(mut self, handler: &str) -> Manifest {
        self.handler = Some(handler.into());
        self
    }

    pub fn serialized(mut self, file: &str) -> Manifest {
        self.serialized_file = file.into();
        self
    }

    pub fn json(&self) -> String {
        let mut model = serde_json::json!({
            "modelName": self.model_name,
            "serializedFile": self.serialized_file,
            "modelVersion": self.version,
        });
        if let Some(handler) = &self.handler {
            model["handler"] = handler.clone().into();
        }
        serde_json::json!({"createdOn": "29/11/2026 00:00:00", "runtime": "python", "model": model, "archiverVersion": "0.12.0"})
            .to_string()
    }
}

/// A running `ortserve` process and everything it has logged so far.
pub struct Server {
    child: Child,
    pub base: String,
    pub client: reqwest::Client,
    log: Arc<(Mutex<String>, Condvar)>,
    _config: tempfile::NamedTempFile,
}

/// How to start a server: extra arguments, `config.properties` lines and
/// environment variables.
#[derive(Default)]
pub struct Launch {
    pub args: Vec<String>,
    pub properties: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Leave out the `--ts-config` file the harness writes (port 0, properties).
    pub no_config_file: bool,
    /// Run under this open-file limit (soft and hard), as `ulimit -n` would.
    pub max_open_files: Option<u64>,
    /// A command the binary runs under (a tracer), with its arguments.
    pub wrapper: Vec<String>,
    /// The working directory, where it is not the test's own.
    pub working_dir: Option<PathBuf>,
}

impl Launch {
    pub fn store(store: &Store, models: &str) -> Launch {
        Launch {
            args: vec![
                "--model-store".into(),
                store.path().display().to_string(),
                "--models".into(),
                models.into(),
            ],
            ..Launch::default()
        }
    }

    pub fn property(mut self, line: &str) -> Launch {
        self.properties.push(line.into());
        self
    }

    pub fn arg(mut self, arg: &str) -> Launch {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// Starts the binary and returns the command, its config file, and the child.
pub fn spawn(launch: &Launch) -> (Child, tempfile::NamedTempFile) {
    let mut config = tempfile::NamedTempFile::new().unwrap();
    writeln!(config, "inference_address=http://127.0.0.1:0").unwrap();
    for line in &launch.properties {
        writeln!(config, "{line}").unwrap();
    }
    let binary = env!("CARGO_BIN_EXE_ortserve");
    let mut command = match launch.wrapper.split_first() {
        Some((tracer, args)) => {
            let mut command = Command::new(tracer);
            command.args(args).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    if !launch.no_config_file {
        command.arg("--ts-config").arg(config.path());
    }
    command
        .args(&launch.args)
        .env_remove("TS_CONFIG_FILE")
        // The binary must keep ONNX Runtime offline by itself, as in a
        // cluster without the chart's environment.
        .env_remove("ORT_DISABLE_TELEMETRY")
        .env("RUST_LOG", "info,ort=warn,ortserve=debug")
        // Tests run side by side: each server's side ports are its own.
        .env("ORTSERVE_METRICS_ADDRESS", "http://127.0.0.1:0")
        .env("ORTSERVE_MANAGEMENT_ADDRESS", "http://127.0.0.1:0")
        .env("ORTSERVE_GRPC_ADDRESS", "http://127.0.0.1:0")
        .env("ORTSERVE_GRPC_MANAGEMENT_ADDRESS", "http://127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in &launch.env {
        command.env(key, value);
    }
    if let Some(dir) = &launch.working_dir {
        command.current_dir(dir);
    }
    if let Some(files) = launch.max_open_files {
        use std::os::unix::process::CommandExt;
        let limit = libc::rlimit {
            rlim_cur: files,
            rlim_max: files,
        };
        // SAFETY: setrlimit is async-signal-safe and only reads `limit`.
        unsafe {
            command.pre_exec(move || match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
    }
    (command.spawn().expect("start ortserve"), config)
}

impl Server {
    /// Starts a server and waits until it listens (not until it is healthy).
    pub fn start(launch: Launch) -> Server {
        let (mut child, config) = spawn(&launch);
        let log = Arc::new((Mutex::new(String::new()), Condvar::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let (text, changed) = &*log;
                    let mut text = text.lock().unwrap();
                    text.push_str(&line);
                    text.push('\n');
                    changed.notify_all();
                }
            });
        }
        let mut server = Server {
            child,
            base: String::new(),
            client: reqwest::Client::new(),
            log,
            _config: config,
        };
        let line = server.wait_for_log(
            "Inference API listening on http://",
            Duration::from_secs(30),
        );
        let address = line
            .split("listening on http://")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        server.base = format!("http://{address}");
        server
    }

    /// Starts a server and waits until `/ping` says Healthy.
    pub async fn healthy(launch: Launch) -> Server {
        let server = Server::start(launch);
        server.wait_healthy().await;
        server
    }

    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.get("/ping").await.status() == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server never became healthy; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until each named version is ready: `/ping` follows default
    /// versions only, so a test that calls another version waits for it.
    pub async fn wait_versions_ready(&self, model: &str, versions: &[&str]) {
        for version in versions {
            let path = format!("/v2/models/{model}/versions/{version}/ready");
            eventually(Duration::from_secs(60), &path, || async {
                self.get(&path).await.status() == 200
            })
            .await;
        }
    }

    /// The metrics port's samples, keyed `name{labels}` as Prometheus
    /// writes them (labels sorted by name).
    pub async fn metrics(&self) -> BTreeMap<String, f64> {
        let text = self
            .client
            .get(self.metrics_url())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        parse_metrics(&text)
    }

    /// `/metrics` on the metrics port.
    pub fn metrics_url(&self) -> String {
        format!("{}/metrics", self.listener_url("Metrics API"))
    }

    /// The management API's base URL.
    pub fn management_url(&self) -> String {
        self.listener_url("Management API")
    }

    /// The gRPC listener's `HOST:PORT`, as gRPC clients take it.
    pub fn grpc_address(&self) -> String {
        let url = self.listener_url("gRPC inference API");
        url.trim_start_matches("http://").to_string()
    }

    /// The gRPC management listener's `HOST:PORT`.
    pub fn grpc_management_address(&self) -> String {
        let url = self.listener_url("gRPC management API");
        url.trim_start_matches("http://").to_string()
    }

    /// A side listener's base URL, from its start-up log line.
    fn listener_url(&self, what: &str) -> String {
        let line = self.wait_for_log(
            &format!("{what} listening on http://"),
            Duration::from_secs(10),
        );
        let address = line
            .split("listening on http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .to_string();
        format!("http://{address}")
    }

    /// Waits until /ping reports the model settled (no model still loading).
    pub async fn wait_settled(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let response = self.get("/ping").await;
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap();
            let loading = body["models"]
                .as_object()
                .is_some_and(|m| m.values().any(|v| v["state"] == "Loading"));
            if status == 200 || !loading {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "models never settled; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        // Poisoned when a wait for a line failed holding the lock: the
        // failure's report still wants the log.
        let text = self.log.0.lock().unwrap_or_else(|e| e.into_inner());
        text.clone()
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let log = self.wait_for_log_lines(needle, 1, timeout);
        let line = log.lines().find(|l| l.contains(needle));
        line.unwrap_or_default().to_string()
    }

    /// Waits until `count` log lines contain `needle`; returns the log then.
    /// The log is read from the server's stderr by a thread of its own, so
    /// lines written before an answer was sent can arrive after it.
    pub fn wait_for_log_lines(&self, needle: &str, count: usize, timeout: Duration) -> String {
        let (text, changed) = &*self.log;
        let deadline = Instant::now() + timeout;
        let mut text = text.lock().unwrap();
        loop {
            if text.lines().filter(|l| l.contains(needle)).count() >= count {
                return text.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                // The server's Drop prints the log's tail.
                drop(text);
                panic!("fewer than {count} log lines contain {needle:?}");
            }
            text = changed.wait_timeout(text, deadline - now).unwrap().0;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    /// POSTs `body` as `application/json`.
    pub async fn post_json(&self, path: &str, body: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("POST")
    }

    /// POSTs a JSON body; returns the status and the parsed answer.
    pub async fn predict(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        status_json(self.post_json(path, body).await).await
    }

    /// POSTs a multipart form, as `curl -F data=@file` does.
    pub async fn post_multipart(
        &self,
        path: &str,
        form: reqwest::multipart::Form,
    ) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .multipart(form)
            .send()
            .await
            .expect("POST multipart")
    }

    /// PUTs raw bytes, as `curl -T file` does.
    pub async fn put_bytes(&self, path: &str, body: Vec<u8>) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .body(body)
            .send()
            .await
            .expect("PUT")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `INT`, …) to the server process.
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit; its exit code, or `None` if it did
    /// not exit within `timeout` (or died from a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// How much of a server's log a failing test prints.
const LOG_TAIL_ON_FAILURE: usize = 40;

impl Drop for Server {
    fn drop(&mut self) {
        // A failure under CI's load is often a race: the server's own account
        // of it, beside the assertion, saves rerunning to find out.
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_ON_FAILURE)..];
            eprintln!("--- the server's last {} log lines ---", tail.len());
            for line in tail {
                eprintln!("{line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status and parsed JSON body of a response.
pub async fn status_json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, json)
}

/// Asserts a TorchServe error body: status, type, and a message fragment.
pub async fn assert_error(response: reqwest::Response, status: u16, kind: &str, message: &str) {
    let (got, body) = status_json(response).await;
    assert_eq!(got, status, "body: {body}");
    assert_eq!(body["code"], status, "body: {body}");
    assert_eq!(body["type"], kind, "body: {body}");
    let text = body["message"].as_str().unwrap();
    assert!(text.contains(message), "message {text:?} lacks {message:?}");
}

/// The `linear` test model, computed by hand: y = x·Wᵀ + b.
pub fn linear_expected(x: &[f32; 4]) -> [f32; 3] {
    let b = [-0.5f32, 0.0, 0.5];
    let mut y = [0f32; 3];
    for (i, out) in y.iter_mut().enumerate() {
        let mut acc = 0f32;
        for (j, xj) in x.iter().enumerate() {
            acc += ((i * 4 + j + 1) as f32 / 10.0) * xj;
        }
        *out = acc + b[i];
    }
    y
}

/// A golden file the model generator wrote (`golden/<name>.json`).
pub fn golden(name: &str) -> serde_json::Value {
    let path = models_dir().join(format!("golden/{name}.json"));
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap()
}

/// The floats of a JSON array.
pub fn floats(value: &serde_json::Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}")) as f32)
        .collect()
}

/// What the image classifier answers for `logits` with `topK` k: the k
/// classes of highest softmax probability, best first (ties in index order).
pub fn top_classes(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f64> = logits.iter().map(|&l| f64::from(l - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    let mut ranked: Vec<(usize, f32)> = exp.iter().map(|e| (e / sum) as f32).enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.truncate(k);
    ranked
}

/// Asserts an image classifier's answer, `[{"class", "probability"}, ...]`
/// (or one such object for topK 1), against `want`: classes exactly (no
/// label file: the class index as text), probabilities to `tol`.
pub fn assert_classes(answer: &serde_json::Value, want: &[(usize, f32)], tol: f32) {
    let entries: Vec<&serde_json::Value> = match answer.as_array() {
        Some(entries) => entries.iter().collect(),
        None => vec![answer],
    };
    assert_eq!(entries.len(), want.len(), "{answer}, want {want:?}");
    for (entry, (class, probability)) in entries.into_iter().zip(want) {
        assert_eq!(
            entry.as_object().map(|o| o.len()),
            Some(2),
            "{answer}: class and probability only"
        );
        assert_eq!(entry["class"], class.to_string(), "{answer}, want {want:?}");
        let got = entry["probability"]
            .as_f64()
            .unwrap_or_else(|| panic!("no probability: {answer}")) as f32;
        assert!(
            (got - probability).abs() <= tol,
            "{answer}: class {class} has probability {got}, want {probability}"
        );
    }
}

/// Asserts two float arrays agree to `tol`.
pub fn assert_close(got: &serde_json::Value, want: &[f32], tol: f32) {
    let got: Vec<f32> = got
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {got}"))
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= tol, "got {got:?}, want {want:?}");
    }
}

/// Runs the binary to completion (for start-up failures); returns its exit
/// code and everything it printed.
pub fn run_to_exit(launch: Launch, timeout: Duration) -> (Option<i32>, String) {
    let (mut child, _config) = spawn(&launch);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ortserve did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut output = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    (status.code(), output)
}

/// The kind (`bad_graph`, …) `/ping` gives for a model that failed to load,
/// once none is loading.
pub async fn failure_kind_of(server: &Server, model: &str) -> String {
    let ping = server.wait_settled().await;
    ping["models"][model]["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("{model} has no failure kind: {ping}"))
        .to_string()
}

/// The `/ping` detail of a model that failed to load, once none is loading.
pub async fn failure_of(server: &Server, model: &str) -> String {
    let ping = server.wait_settled().await;
    assert_eq!(ping["status"], "Unhealthy", "{ping}");
    assert_eq!(ping["models"][model]["state"], "Failed", "{ping}");
    ping["models"][model]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{model} has no error: {ping}"))
        .to_string()
}

/// Asserts two JSON arrays of float rows agree row by row to `tol`.
pub fn assert_rows_close(got: &serde_json::Value, want: &serde_json::Value, tol: f32) {
    let (got, want) = (got.as_array().unwrap(), want.as_array().unwrap());
    assert_eq!(got.len(), want.len(), "row count");
    for (got, want) in got.iter().zip(want) {
        let want: Vec<f32> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_close(got, &want, tol);
    }
}

/// The repository's test data (copies of reference sample requests, …).
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Asserts a KServe error: status and an `{"error": ...}` body containing `message`.
pub async fn assert_kserve_error(response: reqwest::Response, status: u16, message: &str) {
    let (got, body) = status_json(response).await;
    assert_eq!(got, status, "body: {body}");
    let text = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field: {body}"));
    assert!(text.contains(message), "error {text:?} lacks {message:?}");
}

/// The reference sample's PNG as the tensor the image handler feeds the model.
pub fn sample_png_and_tensor() -> (Vec<u8>, Vec<Vec<Vec<f32>>>) {
    let body: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data_dir().join("reference/torchserve_kserve_v1_mnist_request.json"))
            .unwrap(),
    )
    .unwrap();
    let data = body["instances"][0]["data"].as_str().unwrap();
    let png = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data).unwrap();
    let gray = image::load_from_memory(&png).unwrap().into_luma8();
    let tensor = vec![
        (0..28)
            .map(|y| {
                (0..28)
                    .map(|x| gray.get_pixel(x, y)[0] as f32 / 255.0)
                    .collect()
            })
            .collect(),
    ];
    (png, tensor)
}

/// A binary OIP response split into its JSON header and the tensor bytes
/// after it (`Inference-Header-Content-Length`).
pub async fn binary_parts(response: reqwest::Response) -> (serde_json::Value, Vec<u8>) {
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    let json_length: usize = response.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = response.bytes().await.unwrap();
    let header = serde_json::from_slice(&bytes[..json_length]).unwrap();
    (header, bytes[json_length..].to_vec())
}

/// A directory laid out as kubelet's atomic writer lays out a ConfigMap
/// volume: the files in a `..<timestamp>` directory, a `..data` symlink to
/// it, and one symlink per key through `..data`. [`update`](Self::update)
/// swaps content the way kubelet does: a new timestamped directory, a
/// `..data_tmp` symlink to it renamed over `..data`, new per-key symlinks,
/// then the old directory and stale symlinks removed.
pub struct ConfigMapVolume {
    dir: tempfile::TempDir,
    generation: u32,
    current: Option<String>,
    keys: Vec<String>,
}

impl ConfigMapVolume {
    pub fn new(files: &[(&str, &str)]) -> ConfigMapVolume {
        let mut volume = ConfigMapVolume {
            dir: tempfile::tempdir().unwrap(),
            generation: 0,
            current: None,
            keys: Vec::new(),
        };
        volume.update(files);
        volume
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn update(&mut self, files: &[(&str, &str)]) {
        use std::os::unix::fs::symlink;
        let root = self.dir.path();
        self.generation += 1;
        let data_dir = format!("..2026_11_29_12_00_00.{:09}", self.generation);
        std::fs::create_dir(root.join(&data_dir)).unwrap();
        for (name, text) in files {
            std::fs::write(root.join(&data_dir).join(name), text).unwrap();
        }
        symlink(&data_dir, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        for (name, _) in files {
            let link = root.join(name);
            if link.symlink_metadata().is_err() {
                symlink(format!("..data/{name}"), link).unwrap();
            }
        }
        let new_keys: Vec<String> = files.iter().map(|(n, _)| n.to_string()).collect();
        for stale in self.keys.iter().filter(|k| !new_keys.contains(k)) {
            std::fs::remove_file(root.join(stale)).unwrap();
        }
        if let Some(old) = self.current.replace(data_dir) {
            std::fs::remove_dir_all(root.join(old)).unwrap();
        }
        self.keys = new_keys;
    }

    /// Rewrites a file inside the current timestamped directory, which no
    /// event on the volume's top directory reports (only polling sees it).
    pub fn edit_in_place(&self, name: &str, text: &str) {
        let current = self.current.as_ref().unwrap();
        std::fs::write(self.dir.path().join(current).join(name), text).unwrap();
    }
}

impl Launch {
    /// The model store plus a model config directory; no `--models`.
    pub fn declared(store: &Store, volume: &ConfigMapVolume) -> Launch {
        Launch::default()
            .arg("--model-store")
            .arg(&store.path().display().to_string())
            .arg("--model-config-dir")
            .arg(&volume.path().display().to_string())
    }
}

/// A log line's timestamp (`2026-11-29T12:00:00.123456Z …`), in seconds
/// since the Unix epoch: the server's own clock, for order and intervals
/// that a loaded test thread cannot skew.
pub fn log_time(line: &str) -> f64 {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    let parse = || -> Option<f64> {
        let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
        let mut ymd = date.split('-').map(|p| p.parse::<i64>());
        let (y, m, d) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
        let mut hms = time.split(':');
        let (h, min) = (
            hms.next()?.parse::<f64>().ok()?,
            hms.next()?.parse::<f64>().ok()?,
        );
        let sec: f64 = hms.next()?.parse().ok()?;
        // Days from civil (proleptic Gregorian), after H. Hinnant.
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + sec)
    };
    parse().unwrap_or_else(|| panic!("no timestamp on log line {line:?}"))
}

/// Polls `probe` every 20 ms until it returns true, for at most `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !probe().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Prometheus text exposition → `name{labels}` → value.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (key, value) = line.rsplit_once(' ').unwrap();
            (key.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// TorchServe's Postman check on `/metrics`, the unanchored regex
/// `.*Requests2XX\{Level="Host",Hostname=".*",\} \d+\.\d+.*`, spelled out:
/// `.` stops at a newline, so one line must hold it all.
pub fn matches_postman_check(text: &str) -> bool {
    const START: &str = r#"Requests2XX{Level="Host",Hostname=""#;
    text.lines().any(|line| {
        let Some(at) = line.find(START) else {
            return false;
        };
        line[at + START.len()..]
            .match_indices("\",} ")
            .any(|(end, close)| {
                let value = &line[at + START.len() + end + close.len()..];
                let whole = value.bytes().take_while(u8::is_ascii_digit).count();
                whole > 0
                    && value[whole..].starts_with('.')
                    && value[whole + 1..].starts_with(|c: char| c.is_ascii_digit())
            })
    })
}
