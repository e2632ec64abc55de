//! Memory, descriptors and threads under long mixed traffic, and whether
//! memory comes back when the traffic stops: the release server on the test
//! models, driven for `SOAK_MINUTES` (default 10) by small and big JSON
//! tensors, v2 binary tensors, images, explanations, aborted uploads and
//! model declaration reloads, reporting RSS, open descriptors, threads and
//! p99 latency each minute.
//!
//! It warms up for a minute, idles `SOAK_IDLE_SECS` (default 30) and takes
//! that RSS as the baseline; after the soak it idles again and reports the
//! idle RSS against the baseline (the target: within 20 %).
//!
//! `make soak` (or `cargo bench --bench soak`); `SOAK_MINUTES=3` for a
//! shorter run.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

const WARMUP: Duration = Duration::from_secs(60);
const CLIENTS: usize = 8;
const RELOAD_EVERY: Duration = Duration::from_secs(20);

fn main() {
    // `cargo test --all-targets` runs benches without `--bench`: stay quick.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let minutes: u64 = env_number("SOAK_MINUTES", 10);
    let idle = Duration::from_secs(env_number("SOAK_IDLE_SECS", 30));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let models = std::env::var_os("ORTSERVE_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/test-models"));
    let library = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".onnxruntime/libonnxruntime.so.1"));
    let work = tempfile::tempdir().unwrap();
    let store = prepare_store(work.path(), &models);
    let declarations = work.path().join("declarations");
    std::fs::create_dir_all(&declarations).unwrap();
    write_declaration(&declarations, 0);
    let server = Server::start(&store, &declarations, &library);
    println!(
        "ortserve soak: {minutes} min of mixed traffic from {CLIENTS} clients, after {}s warm-up and {}s idle",
        WARMUP.as_secs(),
        idle.as_secs()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let traffic = Traffic::new(server.address.clone());
        traffic.run(WARMUP, &declarations).await;
        tokio::time::sleep(idle).await;
        let baseline = sample(server.pid());
        println!(
            "baseline (idle after warm-up): {}\n",
            baseline.describe()
        );
        println!("minute |   RSS MB | fds | threads | requests | errors | p99 ms (small / big / image / explain / binary)");
        for minute in 1..=minutes {
            let mut stats = traffic.run(Duration::from_secs(60), &declarations).await;
            let now = sample(server.pid());
            let p99s = stats.p99s();
            println!(
                "{minute:>6} | {:>8.1} | {:>3} | {:>7} | {:>8} | {:>6} | {p99s}",
                now.rss_mb(),
                now.fds,
                now.threads,
                stats.requests,
                stats.errors,
            );
            if let Some(error) = stats.first_error {
                println!("         first error: {error}");
            }
        }
        let after_load = sample(server.pid());
        tokio::time::sleep(idle).await;
        let idle_after = sample(server.pid());
        let ratio = idle_after.rss as f64 / baseline.rss as f64;
        println!(
            "\nright after the soak: {}\nidle after the soak:  {}\nidle RSS / baseline = {ratio:.2} ({})",
            after_load.describe(),
            idle_after.describe(),
            if ratio <= 1.2 { "within 20 %" } else { "MORE than 20 % above" }
        );
    });
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The store: `linear` (tiny tensors), `mnist` (big JSON and binary
/// batches), `color` (images) — each with room to batch.
fn prepare_store(work: &Path, models: &Path) -> PathBuf {
    let store = work.join("store");
    for (name, file, config) in [
        ("linear", "linear", "batchSize: 8\nmaxBatchDelay: 2\n"),
        (
            "mnist",
            "mnist_cnn",
            "batchSize: 16\nmaxBatchDelay: 2\njobQueueSize: 2048\n",
        ),
        (
            "color",
            "color_mean",
            "ortserve:\n  handler: image_classifier\n  imageClassifier:\n    resize: 16\n",
        ),
    ] {
        let dir = store.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(models.join(format!("{file}.onnx")), dir.join("model.onnx")).unwrap();
        std::fs::write(dir.join("model-config.yaml"), config).unwrap();
    }
    store
}

/// A declaration of `linear` under another name; alternating versions
/// retune the pool in place or rebuild its sessions.
fn write_declaration(dir: &Path, round: u64) {
    let settings = match round % 4 {
        0 => "batchSize: 4\n",
        1 => "batchSize: 8\n",
        2 => "batchSize: 8\nortserve:\n  graphOptimizationLevel: basic\n",
        _ => "batchSize: 4\nortserve:\n  graphOptimizationLevel: all\n",
    };
    let text = format!("name: reloaded\nsource: linear\n{settings}");
    // Written aside and renamed in, as kubelet swaps a ConfigMap.
    let staged = dir.join(".reloaded.yaml.tmp");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(staged, dir.join("reloaded.yaml")).unwrap();
}

struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(store: &Path, declarations: &Path, library: &Path) -> Server {
        let config = store.join("config.properties");
        std::fs::write(
            &config,
            "inference_address=http://127.0.0.1:0\nmanagement_address=http://127.0.0.1:0\nmetrics_address=http://127.0.0.1:0\ngrpc_inference_port=0\naccess_log=false\n\
             max_request_size=67108864\nmax_response_size=67108864\n",
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ortserve"))
            .arg("--ts-config")
            .arg(&config)
            .args(["--model-store".as_ref(), store.as_os_str()])
            .args(["--models", "all", "--model-config-poll-interval", "5"])
            .arg("--model-config-dir")
            .arg(declarations)
            .arg("--onnxruntime-lib")
            .arg(library)
            .env("RUST_LOG", "warn,ortserve::server=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ortserve");
        let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
        let address = loop {
            let mut line = String::new();
            use std::io::BufRead;
            assert!(reader.read_line(&mut line).unwrap() > 0, "ortserve exited");
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let server = Server { child, address };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("http://{}/ping", self.address);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client = reqwest::Client::new();
            while !client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                assert!(Instant::now() < deadline, "ortserve never became healthy");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The process's footprint at one moment.
struct Sample {
    rss: u64,
    fds: usize,
    threads: usize,
}

impl Sample {
    fn rss_mb(&self) -> f64 {
        self.rss as f64 / 1e6
    }

    fn describe(&self) -> String {
        format!(
            "RSS {:.1} MB, {} fds, {} threads",
            self.rss_mb(),
            self.fds,
            self.threads
        )
    }
}

fn sample(pid: u32) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let count = |dir: String| std::fs::read_dir(dir).map_or(0, |d| d.count());
    Sample {
        rss: rss_kb * 1024,
        fds: count(format!("/proc/{pid}/fd")),
        threads: count(format!("/proc/{pid}/task")),
    }
}

/// The kinds of request the clients send, in turn.
#[derive(Clone, Copy)]
enum Kind {
    Small,
    Big,
    Image,
    Explain,
    Binary,
}

const KINDS: [Kind; 5] = [
    Kind::Small,
    Kind::Big,
    Kind::Image,
    Kind::Explain,
    Kind::Binary,
];

/// One minute's (or one phase's) figures.
#[derive(Default)]
struct Stats {
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: [Vec<Duration>; 5],
}

impl Stats {
    fn p99s(&mut self) -> String {
        self.latencies
            .iter_mut()
            .map(|samples| {
                samples.sort();
                match samples.len() {
                    0 => "-".to_string(),
                    n => format!(
                        "{:.1}",
                        samples[(n * 99 / 100).min(n - 1)].as_secs_f64() * 1e3
                    ),
                }
            })
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

struct Traffic {
    address: String,
    client: reqwest::Client,
    small: String,
    /// v2 JSON bodies of 8, 64 and 200 MNIST rows (up to 1 MB).
    big: Vec<String>,
    /// v2 binary bodies of the same rows, with their JSON parts' lengths.
    binary: Vec<(Vec<u8>, usize)>,
    images: Vec<Vec<u8>>,
    reloads: AtomicU64,
}

impl Traffic {
    fn new(address: String) -> Arc<Traffic> {
        let sizes = [8, 64, 200];
        let value = |i: usize| (i % 97) as f32 / 97.0;
        let big = sizes
            .iter()
            .map(|rows| {
                let values: Vec<String> =
                    (0..rows * 784).map(|i| format!("{:.4}", value(i))).collect();
                format!(
                    r#"{{"inputs": [{{"name": "input", "shape": [{rows}, 1, 28, 28], "datatype": "FP32", "data": [{}]}}]}}"#,
                    values.join(",")
                )
            })
            .collect();
        let binary = sizes
            .iter()
            .map(|rows| {
                let header = format!(
                    r#"{{"inputs": [{{"name": "input", "shape": [{rows}, 1, 28, 28], "datatype": "FP32", "parameters": {{"binary_data_size": {}}}}}]}}"#,
                    rows * 784 * 4
                );
                let mut body = header.clone().into_bytes();
                for i in 0..rows * 784 {
                    body.extend_from_slice(&value(i).to_le_bytes());
                }
                (body, header.len())
            })
            .collect();
        let images = [(64, 48), (320, 240), (800, 600), (1600, 1200), (2048, 1536)]
            .iter()
            .map(|&(w, h)| png(w, h))
            .collect();
        Arc::new(Traffic {
            address,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            small: "[[1, 2, 3, 4]]".into(),
            big,
            binary,
            images,
            reloads: AtomicU64::new(1),
        })
    }

    /// Runs the mix for `duration`: each client cycles through the kinds,
    /// and now and then aborts an upload; the declaration is rewritten
    /// every [`RELOAD_EVERY`].
    async fn run(self: &Arc<Self>, duration: Duration, declarations: &Path) -> Stats {
        let stats = Arc::new(Mutex::new(Stats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (traffic, stats, stop) = (self.clone(), stats.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut turn = client;
                    while !stop.load(Ordering::Relaxed) {
                        let kind = KINDS[turn % KINDS.len()];
                        let started = Instant::now();
                        let outcome = traffic.send(kind, turn).await;
                        let mut stats = stats.lock().await;
                        stats.requests += 1;
                        if let Err(error) = outcome {
                            stats.errors += 1;
                            stats.first_error.get_or_insert(error);
                        }
                        stats.latencies[kind as usize].push(started.elapsed());
                        drop(stats);
                        if turn.is_multiple_of(25) {
                            traffic.abort_upload().await;
                        }
                        turn += 1;
                    }
                })
            })
            .collect();
        let until = Instant::now() + duration;
        while Instant::now() < until {
            tokio::time::sleep(RELOAD_EVERY.min(until - Instant::now())).await;
            write_declaration(declarations, self.reloads.fetch_add(1, Ordering::Relaxed));
        }
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            client.await.unwrap();
        }
        Arc::try_unwrap(stats).ok().unwrap().into_inner()
    }

    /// One request; an error says which request and what came back.
    async fn send(&self, kind: Kind, turn: usize) -> Result<(), String> {
        let url = |path: &str| format!("http://{}{path}", self.address);
        let request = match kind {
            Kind::Small => self
                .client
                .post(url("/predictions/linear"))
                .body(self.small.clone()),
            Kind::Big => self
                .client
                .post(url("/v2/models/mnist/infer"))
                .body(self.big[turn % self.big.len()].clone()),
            Kind::Image => self
                .client
                .put(url("/predictions/color"))
                .body(self.images[turn % self.images.len()].clone()),
            Kind::Explain if turn.is_multiple_of(2) => self
                .client
                .post(url("/v1/models/linear:explain"))
                .body(r#"{"instances": [[1, 2, 3, 4], [4, 3, 2, 1]], "parameters": {"method": "shapley_sampling", "samples": 8}}"#),
            Kind::Explain => self
                .client
                .post(url("/explanations/mnist"))
                .body(format!("[[{}]]", vec![format!("[{}]", vec!["0.5"; 28].join(",")); 28].join(","))),
            Kind::Binary => {
                let (body, header) = &self.binary[turn % self.binary.len()];
                self.client
                    .post(url("/v2/models/mnist/infer"))
                    .header("inference-header-content-length", *header)
                    .header("content-type", "application/octet-stream")
                    .body(body.clone())
            }
        };
        let response = request.send().await.map_err(|e| e.to_string())?;
        let (status, path) = (response.status(), response.url().path().to_string());
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        match status.as_u16() {
            200 => Ok(()),
            _ => Err(format!(
                "{path}: {status} {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )),
        }
    }

    /// Declares a 1 MB body, sends a third of it, and hangs up.
    async fn abort_upload(&self) {
        let Ok(mut stream) = tokio::net::TcpStream::connect(&self.address).await else {
            return;
        };
        let head =
            "POST /v2/models/mnist/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n";
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&vec![b'1'; 333_333]).await;
    }
}

/// A noisy RGB PNG (noise keeps the decoder and the compressor honest).
fn png(width: u32, height: u32) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let image = image::RgbImage::from_fn(width, height, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        image::Rgb([state as u8, (state >> 8) as u8, (state >> 16) as u8])
    });
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    bytes.into_inner()
}
