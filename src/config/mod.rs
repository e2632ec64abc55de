//! Server and model settings.
//!
//! Owns the command line ([`Cli`]), TorchServe's `config.properties` and the
//! per-model `model-config.yaml`. Resolution follows TorchServe: the file is
//! `TS_CONFIG_FILE`, else `--ts-config`, else `./config.properties`; the
//! command line overrides the file; with `enable_envvars_config=true`,
//! `TS_<KEY>` environment variables override both. Defaults that follow the
//! host come from here too: the cores this process may use and the CUDA
//! devices it can see ([`visible_cuda_devices`]).
//!
//! It must not load models or touch the network: it only produces values.

mod cli;
mod declarations;
mod grpc;
mod kserve_layout;
mod model_api;
mod model_config;
mod options;
mod properties;
mod token_auth;
mod values;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value as Json;

use crate::telemetry::MetricsSettings;
use crate::telemetry::metrics::{DEFAULT_BATCH_BUCKETS, DEFAULT_LATENCY_BUCKETS};
use crate::types::excerpt;

pub use cli::{CheckArgs, Cli, Command, Invocation, KServeFlags, OutputFormat, TorchServeFlags};
pub use declarations::read_dir as read_declarations;
pub use declarations::{Declaration, DeclarationSet, PROPERTIES_FILE};
pub use model_api::{AllowedUrls, ModelApiSettings};
pub use model_config::{
    DeviceType, ModelConfig, ModelConfigFile, ModelDefaults, PoolConfig, SessionConfig,
};
pub use options::{
    ChannelOrder, ClassifierAnswer, ExplainMethod, ExplainOptions, HandlerName,
    ImageClassifierOptions, Layout, OptimizationLevel, OrtserveOptions, TextGenerationOptions,
};
pub use properties::Properties;
pub use token_auth::{KeySource, TokenKeys, TokenSettings, read_keys, watch_keys};
pub use watch::{merge as merge_declarations, watch_dir};

use kserve_layout::KServeLayout;
use values::{parse_address, parse_bool, parse_bounded, parse_buckets, parse_metrics_mode};

/// Upper bounds of server settings: beyond them a value is clamped (with a
/// warning), since no sane deployment needs more and each costs memory or
/// threads. Model settings share the worker, row and second bounds.
pub(crate) const MAX_WORKERS: usize = 1024;
pub(crate) const MAX_ROWS: usize = 1 << 20;
pub(crate) const MAX_SECONDS: usize = 365 * 24 * 3600;
/// Bytes of one body or graph: TorchServe's Java `int`, and ONNX Runtime's
/// (protobuf's) largest in-memory model.
const MAX_BYTES: usize = i32::MAX as usize;
const MAX_CONNECTIONS: usize = 1 << 20;
/// Bytes all request bodies may hold at once: 1 TiB.
const MAX_MEMORY: usize = 1 << 40;
const MAX_CORES: usize = 4096;
/// Histogram buckets per metric.
const MAX_BUCKETS: usize = 64;

/// Where `make setup` installs ONNX Runtime, relative to this checkout.
const DEFAULT_ORT_LIBRARY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/.onnxruntime/libonnxruntime.so.1"
);

/// A setting that cannot be used as given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {detail}", path.display())]
    Io { path: PathBuf, detail: String },
    #[error("{0}")]
    Invalid(String),
}

/// Which models to load at start (TorchServe's `load_models`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadModels {
    None,
    All,
    List(Vec<ModelRef>),
}

/// One `NAME=ARCHIVE` or `ARCHIVE` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    pub name: Option<String>,
    pub archive: String,
}

/// Per-model entries of `models=` / `model_snapshot=`: name → version → keys.
pub type ModelEntries = BTreeMap<String, BTreeMap<String, serde_json::Map<String, Json>>>;

/// The effective server configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub config_file: Option<PathBuf>,
    pub inference_address: SocketAddr,
    pub management_address: SocketAddr,
    pub metrics_address: SocketAddr,
    /// The Open Inference Protocol and TorchServe's inference API over gRPC.
    pub grpc_inference_address: SocketAddr,
    /// TorchServe's management API over gRPC.
    pub grpc_management_address: SocketAddr,
    pub model_store: Option<PathBuf>,
    pub load_models: LoadModels,
    pub model_defaults: ModelDefaults,
    pub max_request_size: usize,
    pub max_response_size: usize,
    /// The bytes all request bodies and unsent answers may hold at once
    /// (`max_request_memory`).
    pub max_request_memory: usize,
    /// How long a request body may take to arrive (`request_body_timeout`).
    pub request_body_timeout: Duration,
    /// The largest ONNX graph read, in bytes (`max_model_size`).
    pub max_model_size: u64,
    pub connections: ConnectionSettings,
    pub model_entries: ModelEntries,
    pub onnxruntime_library: PathBuf,
    pub allow_no_models: bool,
    pub lifecycle: LifecycleSettings,
    pub observability: ObservabilitySettings,
    pub model_api: ModelApiSettings,
    pub tokens: TokenSettings,
}

/// What bounds the connections of each listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionSettings {
    /// `max_connections` per listener; `None`: derived from the file
    /// descriptor limit when the listeners start.
    pub max_connections: Option<usize>,
    /// `header_read_timeout`: from acceptance (or a kept-alive request's
    /// first byte) to the end of the request headers.
    pub header_read_timeout: Duration,
    /// `keep_alive_timeout`: how long a connection may idle between requests.
    pub keep_alive_timeout: Duration,
}

/// Metrics and the access log.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservabilitySettings {
    pub metrics: MetricsSettings,
    /// `metrics_on_inference_port`: also answer `GET /metrics` there.
    pub metrics_on_inference_port: bool,
    /// `access_log`: one log line per request.
    pub access_log: bool,
}

/// Where model declarations come from after start, and how the process stops.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleSettings {
    /// `model_config_dir`: declarations, watched.
    pub model_config_dir: Option<PathBuf>,
    pub poll_interval: Duration,
    /// `configmap_selector`: declarations from ConfigMaps, in a cluster.
    pub configmap_selector: Option<String>,
    /// After SIGTERM: readiness off, still serving, for this long.
    pub drain_delay: Duration,
    /// Then: no new connections; this long for in-flight requests.
    pub shutdown_timeout: Duration,
}

impl ServerConfig {
    /// Builds the configuration from the command line, the properties file
    /// and (when enabled) `TS_*` environment variables.
    pub fn load(cli: &Cli) -> Result<ServerConfig, ConfigError> {
        let kserve = KServeLayout::of(&cli.kserve);
        if let Some(layout) = &kserve {
            layout.check()?;
        }
        let file = config_file(cli, kserve.as_ref());
        let mut props = match &file {
            Some(path) => Properties::read(path)?,
            None => Properties::default(),
        };
        apply_cli(&mut props, cli, kserve.as_ref());
        if props.get("enable_envvars_config") == Some("true") {
            apply_environment(&mut props);
        }
        ServerConfig::from_properties(file, &props, cli)
    }

    fn from_properties(
        config_file: Option<PathBuf>,
        props: &Properties,
        cli: &Cli,
    ) -> Result<ServerConfig, ConfigError> {
        let address =
            |key: &str, default: &str| parse_address(key, props.get(key).unwrap_or(default));
        let number = |key: &str, default: usize, min: usize, max: usize| {
            parse_bounded(key, props.get(key), default, min, max)
        };
        let seconds = |key: &str, default: usize, min: usize, max: usize| {
            number(key, default, min, max).map(secs)
        };
        let model_entries = model_entries(props)?;
        let load_models = match props.get("load_models") {
            Some(spec) => parse_load_models(spec),
            None => snapshot_models(&model_entries),
        };
        let cores = match number("cpus", 0, 0, MAX_CORES)? {
            0 => available_cores(),
            n => n,
        };
        let workers = match number("default_workers_per_model", 0, 0, MAX_WORKERS)? {
            0 => default_worker_count(cores),
            n => n,
        };
        let max_request_size = number("max_request_size", 6_553_500, 1, MAX_BYTES)?;
        let max_request_memory = number(
            "max_request_memory",
            default_request_memory(max_request_size),
            max_request_size,
            MAX_MEMORY,
        )?;
        let max_connections = match props.get("max_connections") {
            None => None,
            text => Some(parse_bounded(
                "max_connections",
                text,
                0,
                1,
                MAX_CONNECTIONS,
            )?),
        };
        Ok(ServerConfig {
            config_file,
            inference_address: address("inference_address", "http://127.0.0.1:8080")?,
            management_address: address("management_address", "http://127.0.0.1:8081")?,
            metrics_address: address("metrics_address", "http://127.0.0.1:8082")?,
            grpc_inference_address: grpc::inference_address(props)?,
            grpc_management_address: grpc::management_address(props)?,
            // Empty is unset: an empty path is a prefix of every path, and
            // the store bounds which files the management API may open.
            model_store: props
                .get("model_store")
                .map(str::trim)
                .filter(|store| !store.is_empty())
                .map(PathBuf::from),
            load_models,
            model_defaults: ModelDefaults {
                cores,
                workers,
                job_queue_size: number("job_queue_size", 100, 1, MAX_ROWS)?,
                response_timeout_secs: number("default_response_timeout", 120, 1, MAX_SECONDS)?
                    as u64,
                cpu_fallback: cli.cpu_fallback,
            },
            max_request_size,
            max_response_size: number("max_response_size", 6_553_500, 1, MAX_BYTES)?,
            max_request_memory,
            request_body_timeout: seconds("request_body_timeout", 60, 1, MAX_SECONDS)?,
            max_model_size: number("max_model_size", MAX_BYTES, 1, MAX_BYTES)? as u64,
            connections: ConnectionSettings {
                max_connections,
                header_read_timeout: seconds("header_read_timeout", 5, 1, 3600)?,
                keep_alive_timeout: seconds("keep_alive_timeout", 75, 1, MAX_SECONDS)?,
            },
            model_entries,
            onnxruntime_library: cli.onnxruntime_library(),
            allow_no_models: cli.allow_no_models,
            lifecycle: LifecycleSettings {
                model_config_dir: props.get("model_config_dir").map(PathBuf::from),
                poll_interval: seconds("model_config_poll_interval", 10, 1, 86_400)?,
                configmap_selector: props.get("configmap_selector").map(str::to_string),
                drain_delay: seconds("drain_delay", 5, 0, 3600)?,
                shutdown_timeout: seconds("shutdown_timeout", 20, 0, 3600)?,
            },
            observability: ObservabilitySettings {
                metrics: MetricsSettings {
                    enabled: parse_bool(props, "enable_metrics_api", true)?,
                    latency_buckets: parse_buckets(
                        props,
                        "metrics_latency_buckets",
                        DEFAULT_LATENCY_BUCKETS,
                    )?,
                    batch_buckets: parse_buckets(
                        props,
                        "metrics_batch_buckets",
                        DEFAULT_BATCH_BUCKETS,
                    )?,
                    prometheus_mode: parse_metrics_mode(props)?,
                },
                metrics_on_inference_port: parse_bool(props, "metrics_on_inference_port", false)?,
                access_log: parse_bool(props, "access_log", true)?,
            },
            model_api: model_api::parse(props)?,
            tokens: token_auth::parse(props)?,
        })
    }

    /// The settings in effect, one per line, for the start-up log.
    pub fn summary(&self) -> String {
        let models = match &self.load_models {
            LoadModels::None => "none".to_string(),
            LoadModels::All => "all".to_string(),
            LoadModels::List(list) => list
                .iter()
                .map(|m| match &m.name {
                    Some(name) => format!("{}={}", excerpt(name), excerpt(&m.archive)),
                    None => excerpt(&m.archive),
                })
                .collect::<Vec<_>>()
                .join(","),
        };
        let d = &self.model_defaults;
        format!(
            "config file: {}\ninference_address: http://{}\nmanagement_address: http://{}\ngrpc_inference: {}\ngrpc_management: {}\n\
             metrics_address: http://{}\nenable_metrics_api: {}\nmodel_store: {}\nload_models: {models}\n\
             cpus: {}\ndefault_workers_per_model: {}\njob_queue_size: {}\nmax_request_size: {}\nmax_response_size: {}\nmax_request_memory: {}\n\
             request_body_timeout: {}s\nmax_model_size: {}\nheader_read_timeout: {}s\nkeep_alive_timeout: {}s\n\
             default_response_timeout: {}\nonnxruntime library: {}\nmodel_config_dir: {}\n\
             model_config_poll_interval: {}s\nconfigmap_selector: {}\ndrain_delay: {}s\nshutdown_timeout: {}s\n\
             enable_model_api: {}\ntoken authorization: {}",
            self.config_file
                .as_deref()
                .map_or("none".into(), |p| p.display().to_string()),
            self.inference_address,
            self.management_address,
            self.grpc_inference_address,
            self.grpc_management_address,
            self.metrics_address,
            self.observability.metrics.enabled,
            self.model_store
                .as_deref()
                .map_or("none".into(), |p| p.display().to_string()),
            d.cores,
            d.workers,
            d.job_queue_size,
            self.max_request_size,
            self.max_response_size,
            self.max_request_memory,
            self.request_body_timeout.as_secs(),
            self.max_model_size,
            self.connections.header_read_timeout.as_secs(),
            self.connections.keep_alive_timeout.as_secs(),
            d.response_timeout_secs,
            self.onnxruntime_library.display(),
            self.lifecycle
                .model_config_dir
                .as_deref()
                .map_or("none".into(), |p| p.display().to_string()),
            self.lifecycle.poll_interval.as_secs(),
            self.lifecycle
                .configmap_selector
                .as_deref()
                .unwrap_or("none"),
            self.lifecycle.drain_delay.as_secs(),
            self.lifecycle.shutdown_timeout.as_secs(),
            self.model_api.enabled,
            match &self.tokens.keys {
                None => "off".to_string(),
                Some(KeySource::File(path)) => format!("on, keys from {}", path.display()),
                Some(KeySource::Generated) => "on, new keys in key_file.json".to_string(),
            },
        )
    }
}

/// The longest key [`closest_key`] looks for a suggestion for.
const MAX_SUGGESTED_KEY: usize = 64;

/// The known key a misspelled `key` was probably meant to be: the closest
/// by edit distance once case, `_` and `-` are set aside, if that close.
pub(crate) fn closest_key<'a>(
    key: &str,
    known: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let plain = |text: &str| -> String {
        text.chars()
            .filter(|c| !matches!(c, '_' | '-'))
            .flat_map(char::to_lowercase)
            .collect()
    };
    // No known key is this long; a longer one (from a file) is not worth
    // an edit distance that grows with its length times each candidate's.
    if key.len() > MAX_SUGGESTED_KEY {
        return None;
    }
    let key = plain(key);
    known
        .into_iter()
        .map(|candidate| {
            (
                strsim::damerau_levenshtein(&key, &plain(candidate)),
                candidate,
            )
        })
        .filter(|(distance, candidate)| *distance <= 2 && *distance * 4 <= candidate.len())
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Reads a whole configuration file of at most `limit` bytes: the size is
/// checked before reading, and the bytes actually read too (a file can grow,
/// or be a device).
pub(crate) fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let too_large = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the file is over the limit of {limit} bytes"),
        )
    };
    if file.metadata()?.len() > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// TorchServe's search order: `TS_CONFIG_FILE`, `--ts-config`, (the model
/// config directory's `config.properties`, a KServe model directory's
/// `config/config.properties`), `./config.properties`.
fn config_file(cli: &Cli, kserve: Option<&KServeLayout>) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TS_CONFIG_FILE") {
        return Some(PathBuf::from(path));
    }
    if let Some(path) = &cli.ts_config {
        return Some(path.clone());
    }
    let declared = cli
        .model_config_dir
        .as_ref()
        .map(|dir| dir.join(PROPERTIES_FILE));
    if let Some(path) = declared.filter(|p| p.is_file()) {
        return Some(path);
    }
    if let Some(KServeLayout::TorchServe { config, .. }) = kserve {
        return Some(config.clone());
    }
    let local = Path::new("config.properties");
    local.is_file().then(|| local.to_path_buf())
}

fn apply_cli(props: &mut Properties, cli: &Cli, kserve: Option<&KServeLayout>) {
    let mut set = |key: &str, value: String| {
        props.values.insert(key.into(), value);
    };
    // KServe sends traffic to 8080 (TorchServe's 8085 there was for its wrapper).
    let port = cli.kserve.http_port.or(kserve.map(|_| 8080));
    if let Some(port) = port {
        set("inference_address", format!("http://0.0.0.0:{port}"));
    }
    if let Some(port) = cli.kserve.grpc_port {
        set("grpc_inference_address", "0.0.0.0".into());
        set("grpc_inference_port", port.to_string());
    }
    if let Some(address) = &cli.grpc_address {
        set("ortserve_grpc_address", address.clone());
    }
    if let Some(address) = &cli.grpc_management_address {
        set("ortserve_grpc_management_address", address.clone());
    }
    match kserve {
        Some(KServeLayout::TorchServe { store, .. }) => {
            set("model_store", store.display().to_string())
        }
        Some(KServeLayout::ModelDir { name, dir }) => {
            set("load_models", format!("{name}={}", dir.display()))
        }
        Some(KServeLayout::Repository { store }) => {
            set("model_store", store.display().to_string());
            set("load_models", "all".into());
        }
        None => {}
    }
    if let Some(address) = &cli.management_address {
        set("management_address", address.clone());
    }
    if let Some(address) = &cli.metrics_address {
        set("metrics_address", address.clone());
    }
    if cli.torchserve_compat.enable_model_api {
        set("enable_model_api", "true".into());
    }
    if let Some(file) = &cli.token_key_file {
        set("token_key_file", file.display().to_string());
    }
    if cli.torchserve_compat.disable_token_auth {
        set("disable_token_authorization", "true".into());
    }
    if let Some(store) = &cli.model_store {
        set("model_store", store.display().to_string());
    }
    if !cli.models.is_empty() {
        set("load_models", cli.models.join(","));
    }
    if let Some(dir) = &cli.model_config_dir {
        set("model_config_dir", dir.display().to_string());
    }
    if let Some(selector) = &cli.configmap_selector {
        set("configmap_selector", selector.clone());
    }
    for (key, value) in [
        ("cpus", cli.cpus),
        ("model_config_poll_interval", cli.model_config_poll_interval),
        ("drain_delay", cli.drain_delay),
        ("shutdown_timeout", cli.shutdown_timeout),
    ] {
        if let Some(value) = value {
            set(key, value.to_string());
        }
    }
}

fn secs(n: usize) -> Duration {
    Duration::from_secs(n as u64)
}

/// `TS_<KEY>` overrides `<key>` for every key ortserve implements, except the
/// ones TorchServe does not expose that way.
fn apply_environment(props: &mut Properties) {
    const NOT_FROM_ENV: &[&str] = &["enable_envvars_config", "models", "model_snapshot"];
    for key in properties::IMPLEMENTED
        .iter()
        .filter(|k| !NOT_FROM_ENV.contains(k))
    {
        if let Ok(value) = std::env::var(format!("TS_{}", key.to_uppercase())) {
            props.values.insert(key.to_string(), value);
        }
    }
}

/// `all`, `standalone` (nothing), or comma-separated `NAME=ARCHIVE`/`ARCHIVE`.
pub fn parse_load_models(spec: &str) -> LoadModels {
    let entries: Vec<&str> = spec
        .split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    match entries.as_slice() {
        [] | ["standalone"] => LoadModels::None,
        ["all"] => LoadModels::All,
        list => LoadModels::List(
            list.iter()
                .map(|entry| match entry.split_once('=') {
                    Some((name, archive)) => ModelRef {
                        name: Some(name.to_string()),
                        archive: archive.to_string(),
                    },
                    None => ModelRef {
                        name: None,
                        archive: entry.to_string(),
                    },
                })
                .collect(),
        ),
    }
}

/// Merges `models=` and `model_snapshot=`'s `models` (the snapshot's entries win).
fn model_entries(props: &Properties) -> Result<ModelEntries, ConfigError> {
    let mut entries = ModelEntries::new();
    for key in ["models", "model_snapshot"] {
        let Some(text) = props.get(key) else { continue };
        let json: Json = serde_json::from_str(text)
            .map_err(|e| ConfigError::Invalid(format!("{key}: not valid JSON: {e}")))?;
        let models = if key == "model_snapshot" {
            &json["models"]
        } else {
            &json
        };
        let parsed: ModelEntries = serde_json::from_value(models.clone()).map_err(|e| {
            ConfigError::Invalid(format!(
                "{key}: expected {{\"NAME\": {{\"VERSION\": {{\"minWorkers\": 1, ...}}}}}}: {e}"
            ))
        })?;
        for (name, versions) in parsed {
            entries.entry(name).or_default().extend(versions);
        }
    }
    Ok(entries)
}

/// Without `load_models`, TorchServe restores the models a snapshot names.
fn snapshot_models(entries: &ModelEntries) -> LoadModels {
    let list: Vec<ModelRef> = entries
        .iter()
        .flat_map(|(name, versions)| {
            versions.values().filter_map(move |keys| {
                keys.get("marName")
                    .and_then(Json::as_str)
                    .map(|mar| ModelRef {
                        name: Some(name.clone()),
                        archive: mar.to_string(),
                    })
            })
        })
        .collect();
    if list.is_empty() {
        LoadModels::None
    } else {
        LoadModels::List(list)
    }
}

/// TorchServe's default for `default_workers_per_model=0`: one per GPU when
/// there are GPUs, else one per core; within what a setting may ask
/// (`cpus` may say 4096).
fn default_worker_count(cores: usize) -> usize {
    let gpus = Path::new("/dev/nvidia0")
        .exists()
        .then(|| visible_cuda_devices().len());
    gpus.unwrap_or(cores).clamp(1, MAX_WORKERS)
}

/// CUDA device ordinals this process can see, for spreading workers over
/// them: `CUDA_VISIBLE_DEVICES` when set (CUDA renumbers those from 0), else
/// the `/dev/nvidiaN` nodes the device plugin mounted, else just device 0.
pub fn visible_cuda_devices() -> Vec<i32> {
    let count = match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(list) => list.split(',').filter(|s| !s.trim().is_empty()).count(),
        Err(_) => std::fs::read_dir("/dev")
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|e| {
                        let name = e.file_name();
                        let name = name.to_string_lossy();
                        name.strip_prefix("nvidia")
                            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    })
                    .count()
            })
            .unwrap_or(0),
    };
    (0..count.max(1) as i32).collect()
}

/// `max_request_memory` when it is not set: a quarter of the memory this
/// process may use (its cgroup's limit, else the machine's), so that
/// bodies read at once leave the rest to the models, and never less than
/// one body of `max_request_size`.
fn default_request_memory(max_request_size: usize) -> usize {
    let usable = memory_limit().unwrap_or(MAX_MEMORY as u64);
    let quarter = usize::try_from(usable / 4).unwrap_or(MAX_MEMORY);
    quarter.clamp(max_request_size, MAX_MEMORY)
}

/// The memory this process may use: its cgroup's limit (v2, then v1), else
/// the machine's total.
fn memory_limit() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .and_then(|text| text.trim().parse::<u64>().ok());
    let total = || {
        let meminfo = read("/proc/meminfo")?;
        let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    match (cgroup, total()) {
        (Some(limit), Some(total)) => Some(limit.min(total)),
        (limit, total) => limit.or(total),
    }
}

/// Cores this process may use (honours cgroup CPU limits), when `cpus` does
/// not say.
fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests;
