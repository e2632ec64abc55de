//! Per-model settings: TorchServe's `model-config.yaml` keys (same names,
//! defaults and clamping) plus ortserve's own options under `ortserve:`.
//!
//! Layers, lowest first: server defaults (`config.properties`), the model's
//! entry in `models=`/`model_snapshot=`, then its `model-config.yaml`.

use std::time::Duration;

use serde_json::Value as Json;
use serde_yaml_ng::{Mapping, Value as Yaml};

use super::ConfigError;
use super::options::OrtserveOptions;
use crate::types::excerpt;

/// TorchServe keys that configure its Python backend and mean nothing here.
/// The TorchServe model keys ortserve implements, plus its own section.
const MODEL_KEYS: &[&str] = &[
    "minWorkers",
    "maxWorkers",
    "batchSize",
    "maxBatchDelay",
    "responseTimeout",
    "startupTimeout",
    "maxRetryTimeoutInSec",
    "jobQueueSize",
    "deviceType",
    "deviceIds",
    "ortserve",
];

const TORCHSERVE_ONLY: &[&str] = &[
    "parallelType",
    "parallelLevel",
    "torchrun",
    "clientTimeoutInMills",
    "useJobTicket",
    "sequenceMaxIdleMSec",
    "sequenceTimeoutMSec",
    "maxSequenceJobQueueSize",
    "maxNumSequence",
    "sequenceBatching",
    "continuousBatching",
    "asyncCommunication",
    "useVenv",
    "pt2",
    "pippy",
    "handler",
];

/// Server-wide defaults a model inherits (from `config.properties`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelDefaults {
    /// The cores the server sizes itself by (`cpus`).
    pub cores: usize,
    pub workers: usize,
    pub job_queue_size: usize,
    pub response_timeout_secs: u64,
    pub cpu_fallback: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceType {
    Cpu,
    Gpu,
}

/// The effective settings of one model version.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub min_workers: usize,
    pub max_workers: usize,
    pub batch_size: usize,
    pub max_batch_delay: Duration,
    pub response_timeout: Duration,
    pub startup_timeout: Duration,
    pub max_retry_timeout: Duration,
    /// `None`: CUDA when it works here, else CPU.
    pub device_type: Option<DeviceType>,
    pub device_ids: Vec<i32>,
    pub job_queue_size: usize,
    pub default_version: bool,
    /// The server's cores, which sessions share (`cpus`).
    pub cores: usize,
    /// With `deviceType: gpu`, serve on CPU (one warning) if CUDA fails:
    /// `ortserve.cpuFallback`, else the server's `--cpu-fallback`.
    pub cpu_fallback: bool,
    pub ortserve: OrtserveOptions,
}

/// The TorchServe keys of one layer; `None` where the layer is silent.
#[derive(Debug, Clone, Default, PartialEq)]
struct Layer {
    min_workers: Option<i64>,
    max_workers: Option<i64>,
    batch_size: Option<i64>,
    max_batch_delay: Option<i64>,
    response_timeout: Option<i64>,
    startup_timeout: Option<i64>,
    max_retry_timeout: Option<i64>,
    job_queue_size: Option<i64>,
    device_type: Option<Option<DeviceType>>,
    device_ids: Option<Vec<i32>>,
    default_version: Option<bool>,
}

/// A parsed `model-config.yaml`, before it is layered over the defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelConfigFile {
    origin: String,
    layer: Layer,
    pub ortserve: OrtserveOptions,
}

impl ModelConfigFile {
    /// Parses `text`; `origin` (e.g. `digits.mar!model-config.yaml`) names the
    /// file in every message.
    pub fn parse(origin: &str, text: &str) -> Result<ModelConfigFile, ConfigError> {
        match parse_mapping(origin, text)? {
            Some(mapping) => ModelConfigFile::from_mapping(origin, mapping),
            None => Ok(ModelConfigFile::empty(origin)),
        }
    }

    /// `top` (a model declaration's settings) over the archive's own
    /// `model-config.yaml` text, merged key by key (nested sections too).
    pub fn layered(
        origin: &str,
        base: Option<(&str, &str)>,
        top: &Mapping,
    ) -> Result<ModelConfigFile, ConfigError> {
        let mut merged = match base {
            Some((base_origin, text)) => parse_mapping(base_origin, text)?.unwrap_or_default(),
            None => Mapping::new(),
        };
        merge(&mut merged, top.clone());
        ModelConfigFile::from_mapping(origin, merged)
    }

    /// Refuses keys ortserve does not know (a model declaration is strict:
    /// a typo must not be ignored silently in a cluster).
    pub fn check_keys(origin: &str, mapping: &Mapping) -> Result<(), ConfigError> {
        for key in mapping.keys() {
            let known = key
                .as_str()
                .is_some_and(|k| MODEL_KEYS.contains(&k) || TORCHSERVE_ONLY.contains(&k));
            if !known {
                return Err(ConfigError::Invalid(format!(
                    "{origin}: {}: unknown key; the model keys are {} (ortserve's own options go under `ortserve:`)",
                    yaml_text(key),
                    MODEL_KEYS.join(", ")
                )));
            }
        }
        Ok(())
    }

    fn from_mapping(origin: &str, mapping: Mapping) -> Result<ModelConfigFile, ConfigError> {
        let bad =
            |key: &str, detail: String| ConfigError::Invalid(format!("{origin}: {key}: {detail}"));
        let mut file = ModelConfigFile::empty(origin);
        for (key, value) in mapping {
            let Some(key) = key.as_str() else {
                return Err(bad(&yaml_text(&key), "keys must be strings".into()));
            };
            file.set(key, value).map_err(|detail| bad(key, detail))?;
        }
        Ok(file)
    }

    fn empty(origin: &str) -> ModelConfigFile {
        ModelConfigFile {
            origin: origin.to_string(),
            ..ModelConfigFile::default()
        }
    }

    fn set(&mut self, key: &str, value: Yaml) -> Result<(), String> {
        let layer = &mut self.layer;
        match key {
            "minWorkers" => layer.min_workers = Some(yaml_int(&value)?),
            "maxWorkers" => layer.max_workers = Some(yaml_int(&value)?),
            "batchSize" => layer.batch_size = Some(yaml_int(&value)?),
            "maxBatchDelay" => layer.max_batch_delay = Some(yaml_int(&value)?),
            "responseTimeout" => layer.response_timeout = Some(yaml_int(&value)?),
            "startupTimeout" => layer.startup_timeout = Some(yaml_int(&value)?),
            "maxRetryTimeoutInSec" => layer.max_retry_timeout = Some(yaml_int(&value)?),
            "jobQueueSize" => layer.job_queue_size = Some(yaml_int(&value)?),
            "deviceType" => layer.device_type = Some(device_type(&value)?),
            "deviceIds" => layer.device_ids = Some(device_ids(&value)?),
            "ortserve" => {
                self.ortserve = serde_yaml_ng::from_value(value).map_err(|e| e.to_string())?;
                layer.default_version = self.ortserve.default_version;
            }
            _ if TORCHSERVE_ONLY.contains(&key) => {
                tracing::warn!(file = %self.origin, key, "TorchServe model setting has no effect in ortserve; ignored");
            }
            _ => {
                tracing::warn!(file = %self.origin, key = excerpt(key).as_str(), "unknown model setting; ignored (ortserve's own options go under `ortserve:`)");
            }
        }
        Ok(())
    }
}

/// The top-level mapping of a YAML (or JSON) document; `None` when empty.
pub(super) fn parse_mapping(origin: &str, text: &str) -> Result<Option<Mapping>, ConfigError> {
    let document: Yaml = serde_yaml_ng::from_str(text)
        .map_err(|e| ConfigError::Invalid(format!("{origin}: not valid YAML: {e}")))?;
    match document {
        Yaml::Null => Ok(None),
        Yaml::Mapping(m) => Ok(Some(m)),
        _ => Err(ConfigError::Invalid(format!(
            "{origin}: (top level): expected a mapping of keys to values"
        ))),
    }
}

/// Merges `top` into `base`: nested mappings key by key, anything else replaced.
fn merge(base: &mut Mapping, top: Mapping) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(Yaml::Mapping(lower)), Yaml::Mapping(upper)) => merge(lower, upper),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn yaml_int(value: &Yaml) -> Result<i64, String> {
    value
        .as_i64()
        .ok_or_else(|| format!("expected a whole number, got {}", yaml_text(value)))
}

fn device_type(value: &Yaml) -> Result<Option<DeviceType>, String> {
    match value {
        Yaml::Null => Ok(None),
        Yaml::String(s) if s.is_empty() => Ok(None),
        Yaml::String(s) if s == "cpu" => Ok(Some(DeviceType::Cpu)),
        Yaml::String(s) if s == "gpu" => Ok(Some(DeviceType::Gpu)),
        _ => Err(format!(
            "expected one of cpu, gpu; got {}",
            yaml_text(value)
        )),
    }
}

fn device_ids(value: &Yaml) -> Result<Vec<i32>, String> {
    let list = value.as_sequence().ok_or_else(|| {
        format!(
            "expected a list of GPU ids such as [0, 1], got {}",
            yaml_text(value)
        )
    })?;
    list.iter()
        .map(|id| {
            id.as_i64()
                .and_then(|id| i32::try_from(id).ok())
                .filter(|id| *id >= 0)
                .ok_or_else(|| format!("GPU ids must be whole numbers ≥ 0, got {}", yaml_text(id)))
        })
        .collect()
}

/// A value as YAML, short and escaped for a message.
fn yaml_text(value: &Yaml) -> String {
    let text = serde_yaml_ng::to_string(value).unwrap_or_else(|_| format!("{value:?}"));
    excerpt(text.trim_end())
}

impl Layer {
    /// Reads a model's entry in `models=`/`model_snapshot=`. As in TorchServe,
    /// integers ≤ 0 there mean "use the default".
    fn from_json(entry: &serde_json::Map<String, Json>) -> Layer {
        let int = |key: &str| entry.get(key).and_then(Json::as_i64).filter(|v| *v > 0);
        Layer {
            min_workers: int("minWorkers"),
            max_workers: int("maxWorkers"),
            batch_size: int("batchSize"),
            max_batch_delay: int("maxBatchDelay"),
            response_timeout: int("responseTimeout"),
            startup_timeout: int("startupTimeout"),
            default_version: entry.get("defaultVersion").and_then(Json::as_bool),
            ..Layer::default()
        }
    }

    fn over(self, lower: Layer) -> Layer {
        Layer {
            min_workers: self.min_workers.or(lower.min_workers),
            max_workers: self.max_workers.or(lower.max_workers),
            batch_size: self.batch_size.or(lower.batch_size),
            max_batch_delay: self.max_batch_delay.or(lower.max_batch_delay),
            response_timeout: self.response_timeout.or(lower.response_timeout),
            startup_timeout: self.startup_timeout.or(lower.startup_timeout),
            max_retry_timeout: self.max_retry_timeout.or(lower.max_retry_timeout),
            job_queue_size: self.job_queue_size.or(lower.job_queue_size),
            device_type: self.device_type.or(lower.device_type),
            device_ids: self.device_ids.or(lower.device_ids),
            default_version: self.default_version.or(lower.default_version),
        }
    }
}

/// Largest settings accepted; anything above is clamped (with a warning).
const MAX_WORKERS: i64 = super::MAX_WORKERS as i64;
const MAX_ROWS: i64 = super::MAX_ROWS as i64;
const MAX_SECONDS: i64 = super::MAX_SECONDS as i64;
/// Elements of one input tensor: 4 GiB of f32.
const MAX_TENSOR_ELEMENTS: usize = 1 << 30;
/// Side of an image after resizing or cropping.
const MAX_IMAGE_SIDE: u32 = 16_384;
const MAX_IMAGE_PIXELS: u64 = 1 << 30;
const MAX_TOP_K: usize = 1 << 16;
const MAX_FORWARD_PASSES: usize = 1 << 24;
const MAX_SAMPLES: usize = 1 << 16;

impl ModelConfig {
    /// Layers the model's `models=` entry and its config file over `defaults`,
    /// clamping out-of-range numbers as TorchServe does (with a warning).
    pub fn resolve(
        defaults: &ModelDefaults,
        properties_entry: Option<&serde_json::Map<String, Json>>,
        file: Option<&ModelConfigFile>,
    ) -> ModelConfig {
        let rules = Rules {
            origin: file.map_or("model configuration", |f| f.origin.as_str()),
            cores: defaults.cores,
        };
        let lower = properties_entry.map(Layer::from_json).unwrap_or_default();
        let layer = file
            .map(|f| f.layer.clone())
            .unwrap_or_default()
            .over(lower);
        let workers = defaults.workers as i64;
        let min_workers = rules.within("minWorkers", layer.min_workers, workers, 1, MAX_WORKERS);
        // Unset, maxWorkers is the server's default, but never below minWorkers.
        let max_workers = rules.within(
            "maxWorkers",
            layer.max_workers,
            workers.max(min_workers),
            min_workers,
            MAX_WORKERS,
        );
        let queue = match layer.job_queue_size {
            Some(q) if q > 0 => rules.within("jobQueueSize", Some(q), q, 1, MAX_ROWS),
            _ => defaults.job_queue_size as i64,
        };
        let ortserve = rules.bound_options(file.map(|f| f.ortserve.clone()).unwrap_or_default());
        ModelConfig {
            min_workers: min_workers as usize,
            max_workers: max_workers as usize,
            batch_size: rules.within("batchSize", layer.batch_size, 1, 1, MAX_ROWS) as usize,
            max_batch_delay: Duration::from_millis(rules.within(
                "maxBatchDelay",
                layer.max_batch_delay,
                100,
                0,
                MAX_SECONDS,
            ) as u64),
            response_timeout: secs(rules.positive(
                "responseTimeout",
                layer.response_timeout,
                defaults.response_timeout_secs as i64,
            )),
            startup_timeout: secs(rules.positive("startupTimeout", layer.startup_timeout, 120)),
            max_retry_timeout: secs(rules.within(
                "maxRetryTimeoutInSec",
                layer.max_retry_timeout,
                300,
                0,
                MAX_SECONDS,
            )),
            device_type: layer.device_type.flatten(),
            device_ids: layer.device_ids.unwrap_or_default(),
            job_queue_size: queue as usize,
            default_version: layer.default_version.unwrap_or(false),
            cores: defaults.cores,
            cpu_fallback: ortserve.cpu_fallback.unwrap_or(defaults.cpu_fallback),
            ortserve,
        }
    }
}

/// TorchServe's treatment of numeric settings, warning whenever a value is
/// changed, and naming the file it came from.
struct Rules<'a> {
    origin: &'a str,
    cores: usize,
}

impl Rules<'_> {
    /// The value clamped to `min..=max`; `default` when unset.
    fn within(&self, key: &str, value: Option<i64>, default: i64, min: i64, max: i64) -> i64 {
        let Some(value) = value else { return default };
        let used = value.clamp(min, max);
        if used != value {
            tracing::warn!(
                file = self.origin,
                key,
                value,
                used,
                "value out of range; clamped"
            );
        }
        used
    }

    /// `value` clamped to `min..=max`, with a warning naming the key.
    fn clamp<T: Copy + Ord + std::fmt::Display>(&self, key: &str, value: T, min: T, max: T) -> T {
        let used = value.clamp(min, max);
        if used != value {
            tracing::warn!(file = self.origin, key, %value, %used, "value out of range; clamped");
        }
        used
    }

    /// The `ortserve:` section with every number in range. Threads are held
    /// to the cores this process may use: more only oversubscribes them.
    fn bound_options(&self, mut options: OrtserveOptions) -> OrtserveOptions {
        let cores = self.cores;
        options.intra_op_threads = options
            .intra_op_threads
            .map(|n| self.clamp("ortserve.intraOpThreads", n, 1, cores));
        options.inter_op_threads = self.clamp(
            "ortserve.interOpThreads",
            options.inter_op_threads,
            1,
            cores,
        );
        options.max_tensor_elements = self.clamp(
            "ortserve.maxTensorElements",
            options.max_tensor_elements,
            1,
            MAX_TENSOR_ELEMENTS,
        );
        options.worker_idle_timeout_sec = self.clamp(
            "ortserve.workerIdleTimeoutSec",
            options.worker_idle_timeout_sec,
            1,
            MAX_SECONDS as u64,
        );
        let image = &mut options.image_classifier;
        image.resize = image
            .resize
            .map(|n| self.clamp("ortserve.imageClassifier.resize", n, 1, MAX_IMAGE_SIDE));
        image.crop = image
            .crop
            .map(|n| self.clamp("ortserve.imageClassifier.crop", n, 1, MAX_IMAGE_SIDE));
        image.top_k = image
            .top_k
            .map(|n| self.clamp("ortserve.imageClassifier.topK", n, 1, MAX_TOP_K));
        image.max_image_pixels = self.clamp(
            "ortserve.imageClassifier.maxImagePixels",
            image.max_image_pixels,
            1,
            MAX_IMAGE_PIXELS,
        );
        let explain = &mut options.explain;
        explain.samples = self.clamp("ortserve.explain.samples", explain.samples, 1, MAX_SAMPLES);
        explain.max_forward_passes = self.clamp(
            "ortserve.explain.maxForwardPasses",
            explain.max_forward_passes,
            1,
            MAX_FORWARD_PASSES,
        );
        explain.max_request_forward_passes = self.clamp(
            "ortserve.explain.maxRequestForwardPasses",
            explain.max_request_forward_passes,
            1,
            MAX_FORWARD_PASSES,
        );
        options
    }

    /// A number of seconds: `default` for values ≤ 0 (TorchServe), at most a year.
    fn positive(&self, key: &str, value: Option<i64>, default: i64) -> i64 {
        match value {
            Some(v) if v <= 0 => {
                tracing::warn!(
                    file = self.origin,
                    key,
                    value = v,
                    used = default,
                    "value must be > 0; using the default"
                );
                default
            }
            other => self.within(key, other, default, 1, MAX_SECONDS),
        }
    }
}

fn secs(value: i64) -> Duration {
    Duration::from_secs(value as u64)
}

#[cfg(test)]
mod tests;

/// Generated files: settings or a message naming the file, never a panic;
/// whatever is accepted resolves to numbers within their bounds.
#[cfg(test)]
mod properties;
