//! Prometheus metrics: the families, the per-model-version handles the
//! request path records into, and the text that `GET /metrics` answers.
//!
//! Counters and histograms are recorded as work happens, through
//! [`ModelMetrics`] handles resolved once per model version, so the hot path
//! never looks up labels. Gauges that describe state (queue depth, workers,
//! readiness, device) are read at scrape time from [`VersionGauges`]
//! snapshots, so an unloaded model's gauges simply disappear. With metrics
//! off, every handle is empty and recording is one branch.
//!
//! With `metrics_mode=prometheus` the text also carries TorchServe's
//! frontend counters (`Requests2XX`, …) and writes TorchServe's families in
//! TorchServe's own text format (see the `simpleclient` module).
//!
//! The same counters answer the Open Inference Protocol's statistics
//! ([`ModelMetrics::statistics`]), so serving keeps one set of them.
//!
//! `model` holds the per-version handles; `tests` the unit tests.
//!
//! It must not read the registry or the scheduler itself: what it shows of
//! them arrives as snapshots.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::proto::MetricFamily;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::simpleclient;
use crate::types::{Error, LoadFailureKind, ModelId};
use model::Handles;
pub use model::{ModelMetrics, Timed, VersionStatistics};

mod model;

/// Default buckets for the duration histograms, in seconds.
pub const DEFAULT_LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Default buckets for the batch-size histogram, in rows.
pub const DEFAULT_BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// How metrics are collected (from `config.properties`).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSettings {
    /// `enable_metrics_api`: off means no endpoint and nothing recorded.
    pub enabled: bool,
    pub latency_buckets: Vec<f64>,
    pub batch_buckets: Vec<f64>,
    /// `metrics_mode=prometheus`: also TorchServe's frontend counters, and
    /// TorchServe's families in its text format. Off, the text is the same
    /// whatever `metrics_mode` says.
    pub prometheus_mode: bool,
}

impl Default for MetricsSettings {
    fn default() -> MetricsSettings {
        MetricsSettings {
            enabled: true,
            latency_buckets: DEFAULT_LATENCY_BUCKETS.to_vec(),
            batch_buckets: DEFAULT_BATCH_BUCKETS.to_vec(),
            prometheus_mode: false,
        }
    }
}

/// Which API a request came in through (the `protocol` label). The
/// discriminants index [`Handles`]' arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    TorchServe,
    KServeV1,
    KServeV2,
    /// The Open Inference Protocol over gRPC.
    GrpcV2,
    /// TorchServe's gRPC inference API.
    GrpcTorchServe,
    /// OpenAI's completions API (text generation models).
    OpenAi,
}

impl Protocol {
    const COUNT: usize = 6;

    fn label(self) -> &'static str {
        match self {
            Protocol::TorchServe => "torchserve",
            Protocol::KServeV1 => "kserve_v1",
            Protocol::KServeV2 => "kserve_v2",
            Protocol::GrpcV2 => "grpc_v2",
            Protocol::GrpcTorchServe => "grpc_torchserve",
            Protocol::OpenAi => "openai",
        }
    }
}

/// Why a request was refused or abandoned (the `reason` label). The
/// discriminants index [`Handles`]' array, in the order of `ALL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// 503: the queue holds `jobQueueSize` rows.
    QueueFull,
    /// 503: the body did not fit in what `max_request_memory` had left.
    MemoryFull,
    /// 413: the request is over a limit (body size, rows, elements).
    TooLarge,
    /// 400.
    BadInput,
    /// 504: no answer within `responseTimeout`.
    Timeout,
    /// The client disconnected before its answer was ready.
    ClientGone,
    /// 408: the client did not send its body in time.
    BodyTimeout,
    /// 500: the answer was over `max_response_size`.
    ResponseTooLarge,
}

impl Rejection {
    const ALL: [Rejection; 8] = [
        Rejection::QueueFull,
        Rejection::MemoryFull,
        Rejection::TooLarge,
        Rejection::BadInput,
        Rejection::Timeout,
        Rejection::ClientGone,
        Rejection::BodyTimeout,
        Rejection::ResponseTooLarge,
    ];

    fn label(self) -> &'static str {
        match self {
            Rejection::QueueFull => "queue_full",
            Rejection::MemoryFull => "memory_full",
            Rejection::TooLarge => "too_large",
            Rejection::BadInput => "bad_input",
            Rejection::Timeout => "timeout",
            Rejection::ClientGone => "client_gone",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::ResponseTooLarge => "response_too_large",
        }
    }

    /// The rejection an error answer counts as, if any.
    pub fn of(error: &Error) -> Option<Rejection> {
        match error {
            Error::QueueFull { .. } => Some(Rejection::QueueFull),
            Error::MemoryFull { .. } => Some(Rejection::MemoryFull),
            Error::TooLarge(_) => Some(Rejection::TooLarge),
            Error::BadInput(_) => Some(Rejection::BadInput),
            Error::Timeout { .. } => Some(Rejection::Timeout),
            Error::BodyTimeout { .. } => Some(Rejection::BodyTimeout),
            Error::ResponseTooLarge(_) => Some(Rejection::ResponseTooLarge),
            _ => None,
        }
    }
}

/// A model version's state at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionGauges {
    pub model: ModelId,
    pub ready: bool,
    pub queue_rows: usize,
    pub workers_starting: usize,
    pub workers_idle: usize,
    pub workers_busy: usize,
    pub workers_recovering: usize,
    pub min_workers: usize,
    /// Where its sessions run (`cpu`, `cuda:0`), once loaded.
    pub device: Option<String>,
}

impl VersionGauges {
    /// A version that is loading or failed: no workers, no queue, not ready.
    pub fn not_serving(model: ModelId, min_workers: usize) -> VersionGauges {
        VersionGauges {
            model,
            ready: false,
            queue_rows: 0,
            workers_starting: 0,
            workers_idle: 0,
            workers_busy: 0,
            workers_recovering: 0,
            min_workers,
            device: None,
        }
    }
}

/// All metric families; `None` inside [`Metrics`] when metrics are off.
struct Families {
    registry: Registry,
    hostname: String,
    ts_requests: IntCounterVec,
    ts_latency: IntCounterVec,
    ts_queue_latency: IntCounterVec,
    request_duration: HistogramVec,
    queue_wait: HistogramVec,
    compute: HistogramVec,
    preprocess: HistogramVec,
    postprocess: HistogramVec,
    batch_rows: HistogramVec,
    in_flight: IntGaugeVec,
    rejections: IntCounterVec,
    worker_restarts: IntCounterVec,
    generation: GenerationFamilies,
    config_reloads: IntCounterVec,
    load_failures: IntCounterVec,
    build_info: IntGaugeVec,
    request_body_bytes: IntGaugeVec,
    answer_bytes: IntGaugeVec,
    request_body_limit: IntGaugeVec,
    scraped: ScrapedGauges,
    /// Present with `metrics_mode=prometheus` only.
    frontend: Option<FrontendCounters>,
}

/// The text generation families: their series exist only for models that
/// generate, resolved on a version's first generation.
#[derive(Clone)]
pub(super) struct GenerationFamilies {
    pub(super) first_token: HistogramVec,
    pub(super) between_tokens: HistogramVec,
    pub(super) tokens: IntCounterVec,
}

/// TorchServe's `Requests2XX`, `Requests4XX` and `Requests5XX`: answers on
/// the inference port by status class. Plain atomics, written by ortserve's
/// own text writer, so counting an answer is one relaxed add.
#[derive(Default)]
struct FrontendCounters([AtomicU64; 3]);

impl FrontendCounters {
    const NAMES: [&str; 3] = ["Requests2XX", "Requests4XX", "Requests5XX"];

    fn count(&self, status: u16) {
        // TorchServe's buckets: anything but 2xx and 4xx counts as 5XX.
        let class = match status {
            200..=299 => 0,
            400..=499 => 1,
            _ => 2,
        };
        self.0[class].fetch_add(1, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, hostname: &str) {
        for (name, count) in Self::NAMES.iter().zip(&self.0) {
            simpleclient::counter_header(out, name, "Count");
            let labels = [("Level", "Host"), ("Hostname", hostname)];
            simpleclient::sample(out, name, &labels, count.load(Ordering::Relaxed));
        }
    }
}

/// The gauges filled from snapshots at each scrape.
struct ScrapedGauges {
    queue_rows: IntGaugeVec,
    workers: IntGaugeVec,
    workers_ready: IntGaugeVec,
    workers_min: IntGaugeVec,
    model_ready: IntGaugeVec,
    device: IntGaugeVec,
}

/// The server's metrics: one per process, shared by the registry (which
/// hands out [`ModelMetrics`]) and the `/metrics` endpoint.
pub struct Metrics {
    families: Option<Families>,
    models: Mutex<HashMap<ModelId, Arc<ModelMetrics>>>,
    /// Serialises scrapes: each one resets and refills the state gauges.
    scrape: Mutex<()>,
}

const MODEL: &[&str] = &["model", "version"];
/// TorchServe's per-model labels, in the order TorchServe writes them.
const TS_LABELS: &[&str] = &["model_name", "model_version", "hostname"];
const TS_REQUESTS: &str = "ts_inference_requests_total";
const TS_LATENCY: &str = "ts_inference_latency_microseconds";
const TS_QUEUE_LATENCY: &str = "ts_queue_latency_microseconds";
/// TorchServe's per-model families and their units.
const TS_FAMILIES: [(&str, &str); 3] = [
    (TS_REQUESTS, "Count"),
    (TS_LATENCY, "Microseconds"),
    (TS_QUEUE_LATENCY, "Microseconds"),
];

impl Metrics {
    /// Builds the families, or nothing at all when metrics are off. (The
    /// bucket settings are checked when the configuration is read.)
    pub fn new(settings: &MetricsSettings) -> Result<Arc<Metrics>, String> {
        let families = if settings.enabled {
            Some(Families::new(settings).map_err(|e| e.to_string())?)
        } else {
            None
        };
        // Both results are there at 0 from the start, so that rate() and
        // increase() see the first reload too.
        if let Some(f) = &families {
            for result in ["applied", "rejected"] {
                f.config_reloads.with_label_values(&[result]);
            }
        }
        Ok(Arc::new(Metrics {
            families,
            models: Mutex::default(),
            scrape: Mutex::default(),
        }))
    }

    /// Metrics off: nothing is recorded or served (tests, `ortserve check`).
    pub fn disabled() -> Arc<Metrics> {
        Metrics::new(&MetricsSettings {
            enabled: false,
            ..MetricsSettings::default()
        })
        .expect("no families to build")
    }

    pub fn enabled(&self) -> bool {
        self.families.is_some()
    }

    /// The handles of one model version, the same ones for every load of it,
    /// so its counters keep counting across reloads.
    pub fn model(&self, id: &ModelId) -> Arc<ModelMetrics> {
        let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        models
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(ModelMetrics {
                    id: id.clone(),
                    handles: self.families.as_ref().map(|f| f.handles(id)),
                })
            })
            .clone()
    }

    /// Counts an answer on the inference port for TorchServe's
    /// `Requests2XX`/`4XX`/`5XX` (with `metrics_mode=prometheus`).
    pub fn response(&self, status: u16) {
        if let Some(frontend) = self.families.as_ref().and_then(|f| f.frontend.as_ref()) {
            frontend.count(status);
        }
    }

    /// Records what this process runs: ortserve's version and revision and
    /// ONNX Runtime's version, so a rollout's mix of builds shows.
    pub fn build_info(&self, onnxruntime: &str) {
        if let Some(f) = &self.families {
            let labels = [
                env!("CARGO_PKG_VERSION"),
                env!("ORTSERVE_GIT_REVISION"),
                onnxruntime,
            ];
            f.build_info.with_label_values(&labels).set(1);
        }
    }

    /// The bytes request bodies and unsent answers hold now, and the most
    /// they may together (`max_request_memory`); set at scrape time.
    pub fn request_memory(&self, bodies: usize, answers: usize, limit: usize) {
        if let Some(f) = &self.families {
            let bytes = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            f.request_body_bytes
                .with_label_values(&[] as &[&str])
                .set(bytes(bodies));
            f.answer_bytes
                .with_label_values(&[] as &[&str])
                .set(bytes(answers));
            f.request_body_limit
                .with_label_values(&[] as &[&str])
                .set(bytes(limit));
        }
    }

    /// Counts a model declaration applied or refused.
    pub fn config_reload(&self, applied: bool) {
        if let Some(f) = &self.families {
            let result = if applied { "applied" } else { "rejected" };
            f.config_reloads.with_label_values(&[result]).inc();
        }
    }

    /// Counts a model version that failed to load, by the failure's kind.
    pub fn load_failed(&self, id: &ModelId, kind: LoadFailureKind) {
        if let Some(f) = &self.families {
            f.load_failures
                .with_label_values(&[id.name.as_str(), id.version.as_str(), kind.as_str()])
                .inc();
        }
    }

    /// The Prometheus text exposition, with state gauges from `snapshot`.
    pub fn render(&self, snapshot: &[VersionGauges]) -> String {
        let Some(f) = &self.families else {
            return String::new();
        };
        let _one_scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        f.scraped.fill(snapshot);
        let families = f.registry.gather();
        let Some(frontend) = &f.frontend else {
            return encode(&families);
        };
        let (torchserve, ortserve): (Vec<_>, Vec<_>) = families
            .into_iter()
            .partition(|family| TS_FAMILIES.iter().any(|(name, _)| *name == family.name()));
        let mut text = encode(&ortserve);
        frontend.write(&mut text, &f.hostname);
        for (name, unit) in TS_FAMILIES {
            if let Some(family) = torchserve.iter().find(|f| f.name() == name) {
                write_torchserve_family(&mut text, family, unit);
            }
        }
        text
    }
}

fn encode(families: &[MetricFamily]) -> String {
    TextEncoder::new()
        .encode_to_string(families)
        .unwrap_or_else(|e| format!("# metrics could not be encoded: {e}\n"))
}

/// One of TorchServe's per-model counters, its labels in TorchServe's order.
fn write_torchserve_family(out: &mut String, family: &MetricFamily, unit: &str) {
    let name = family.name();
    simpleclient::counter_header(out, name, unit);
    for metric in family.get_metric() {
        let value = |key: &str| {
            metric
                .get_label()
                .iter()
                .find(|pair| pair.name() == key)
                .map_or("", |pair| pair.value())
        };
        let labels: Vec<(&str, &str)> = TS_LABELS.iter().map(|k| (*k, value(k))).collect();
        // Integer counters: their f64 is exact.
        simpleclient::sample(out, name, &labels, metric.get_counter().get_value() as u64);
    }
}

impl Families {
    fn new(settings: &MetricsSettings) -> prometheus::Result<Families> {
        let registry = Registry::new();
        let latency = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(settings.latency_buckets.clone());
            register(&registry, HistogramVec::new(opts, labels)?)
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels)?,
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
        };
        let batch_opts = HistogramOpts::new(
            "ortserve_batch_rows",
            "Rows in each batch run through the model.",
        )
        .buckets(settings.batch_buckets.clone());
        Ok(Families {
            hostname: hostname(),
            ts_requests: counter(
                TS_REQUESTS,
                "Total number of inference requests received.",
                TS_LABELS,
            )?,
            ts_latency: counter(
                TS_LATENCY,
                "Cumulative inference duration in microseconds.",
                TS_LABELS,
            )?,
            ts_queue_latency: counter(
                TS_QUEUE_LATENCY,
                "Cumulative queue duration in microseconds.",
                TS_LABELS,
            )?,
            request_duration: latency(
                "ortserve_request_duration_seconds",
                "Time from request to response, by protocol and status class.",
                &["model", "version", "protocol", "status_class"],
            )?,
            queue_wait: latency(
                "ortserve_queue_wait_seconds",
                "Time a request waited in the queue for a worker.",
                MODEL,
            )?,
            compute: latency(
                "ortserve_compute_seconds",
                "Time ONNX Runtime's run() took for one batch.",
                MODEL,
            )?,
            preprocess: latency(
                "ortserve_preprocess_seconds",
                "Time turning a request body into input tensors.",
                MODEL,
            )?,
            postprocess: latency(
                "ortserve_postprocess_seconds",
                "Time turning output tensors into a response body.",
                MODEL,
            )?,
            batch_rows: register(&registry, HistogramVec::new(batch_opts, MODEL)?)?,
            in_flight: gauge(
                "ortserve_requests_in_flight",
                "Requests being served (pre-processing, queued, running or post-processing).",
                MODEL,
            )?,
            rejections: counter(
                "ortserve_rejections_total",
                "Requests refused or abandoned, by reason.",
                &["model", "version", "reason"],
            )?,
            worker_restarts: counter(
                "ortserve_worker_restarts_total",
                "Workers replaced after a failure or a run that ignored cancellation.",
                MODEL,
            )?,
            generation: GenerationFamilies {
                first_token: latency(
                    "ortserve_time_to_first_token_seconds",
                    "Time from a generation request to its first piece of text.",
                    MODEL,
                )?,
                between_tokens: latency(
                    "ortserve_inter_token_latency_seconds",
                    "Time between successive pieces of generated text.",
                    MODEL,
                )?,
                tokens: counter(
                    "ortserve_tokens_total",
                    "Tokens of finished generations: the prompt's (kind=prompt) and generated ones (kind=generated).",
                    &["model", "version", "kind"],
                )?,
            },
            config_reloads: counter(
                "ortserve_config_reloads_total",
                "Model declarations applied or rejected since start.",
                &["result"],
            )?,
            load_failures: counter(
                "ortserve_model_load_failures_total",
                "Model versions that failed to load, by kind (bad_graph, cuda_unusable, ...).",
                &["model", "version", "kind"],
            )?,
            build_info: gauge(
                "ortserve_build_info",
                "1, labelled with this build's version and git revision and the ONNX Runtime it loaded.",
                &["version", "revision", "onnxruntime"],
            )?,
            request_body_bytes: gauge(
                "ortserve_request_body_bytes",
                "Bytes request bodies, REST and gRPC, hold now.",
                &[],
            )?,
            answer_bytes: gauge(
                "ortserve_answer_bytes",
                "Bytes of answers, REST and gRPC, made and not yet sent.",
                &[],
            )?,
            request_body_limit: gauge(
                "ortserve_request_body_limit_bytes",
                "The most bytes request bodies and unsent answers may hold together (max_request_memory).",
                &[],
            )?,
            scraped: ScrapedGauges {
                queue_rows: gauge("ortserve_queue_rows", "Rows waiting in the queue.", MODEL)?,
                workers: gauge(
                    "ortserve_workers",
                    "Workers by state (starting, idle, busy, recovering).",
                    &["model", "version", "state"],
                )?,
                workers_ready: gauge(
                    "ortserve_workers_ready",
                    "Workers ready to run batches.",
                    MODEL,
                )?,
                workers_min: gauge(
                    "ortserve_workers_min",
                    "minWorkers: ready workers needed for readiness.",
                    MODEL,
                )?,
                model_ready: gauge(
                    "ortserve_model_ready",
                    "1 when the version has minWorkers ready, else 0.",
                    MODEL,
                )?,
                device: gauge(
                    "ortserve_model_device",
                    "1 for the device the version's sessions run on.",
                    &["model", "version", "device"],
                )?,
            },
            frontend: settings.prometheus_mode.then(FrontendCounters::default),
            registry,
        })
    }

    fn handles(&self, id: &ModelId) -> Handles {
        let model = [id.name.as_str(), id.version.as_str()];
        let ts = [
            id.name.as_str(),
            id.version.as_str(),
            self.hostname.as_str(),
        ];
        Handles {
            request_duration: self.request_duration.clone(),
            durations: Default::default(),
            ts_requests: self.ts_requests.with_label_values(&ts),
            ts_latency: self.ts_latency.with_label_values(&ts),
            ts_queue_latency: self.ts_queue_latency.with_label_values(&ts),
            queue_wait: self.queue_wait.with_label_values(&model),
            compute: self.compute.with_label_values(&model),
            preprocess: self.preprocess.with_label_values(&model),
            postprocess: self.postprocess.with_label_values(&model),
            batch_rows: self.batch_rows.with_label_values(&model),
            in_flight: self.in_flight.with_label_values(&model),
            rejections: Rejection::ALL.map(|r| {
                self.rejections
                    .with_label_values(&[model[0], model[1], r.label()])
            }),
            worker_restarts: self.worker_restarts.with_label_values(&model),
            generation: self.generation.clone(),
            generation_handles: std::sync::OnceLock::new(),
            last_batch_ms: AtomicU64::new(0),
        }
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> prometheus::Result<C> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

impl ScrapedGauges {
    fn fill(&self, snapshot: &[VersionGauges]) {
        for vec in [
            &self.queue_rows,
            &self.workers,
            &self.workers_ready,
            &self.workers_min,
            &self.model_ready,
            &self.device,
        ] {
            vec.reset();
        }
        for v in snapshot {
            let model = [v.model.name.as_str(), v.model.version.as_str()];
            let set = |vec: &IntGaugeVec, value: usize| {
                vec.with_label_values(&model).set(value as i64);
            };
            set(&self.queue_rows, v.queue_rows);
            set(&self.workers_ready, v.workers_idle + v.workers_busy);
            set(&self.workers_min, v.min_workers);
            set(&self.model_ready, usize::from(v.ready));
            for (state, count) in [
                ("starting", v.workers_starting),
                ("idle", v.workers_idle),
                ("busy", v.workers_busy),
                ("recovering", v.workers_recovering),
            ] {
                self.workers
                    .with_label_values(&[model[0], model[1], state])
                    .set(count as i64);
            }
            if let Some(device) = &v.device {
                self.device
                    .with_label_values(&[model[0], model[1], device.as_str()])
                    .set(1);
            }
        }
    }
}

/// TorchServe's `hostname` label: the pod name in Kubernetes.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests;
