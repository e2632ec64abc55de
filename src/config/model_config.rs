//! Per-model settings: TorchServe's `model-config.yaml` keys (same names,
//! defaults and clamping) plus ortserve's own options under `ortserve:`.
//!
//! Layers, lowest first: server defaults (`config.properties`), the model's
//! entry in `models=`/`model_snapshot=`, then its `model-config.yaml` (a
//! declaration's settings over the archive's own file). Every layer is a
//! mapping in `model-config.yaml`'s shape, merged key by key by one rule
//! ([`merge`]) and read once into a [`ModelConfigLayer`].
//!
//! The resolved [`ModelConfig`] is split by what a change needs: a running
//! pool takes a new [`PoolConfig`] in place; a new [`SessionConfig`] needs
//! new sessions.
//!
//! Where a new key goes — two places:
//! 1. its field in the layer that reads it: [`ModelConfigLayer`] for a
//!    top-level key, `OrtservePoolOptions` or `OrtserveOptions` (in
//!    `options.rs`) for one under `ortserve:`. serde's name for the field is
//!    the key; the list of known keys, the unknown-key warnings and the
//!    merge all follow from it.
//! 2. its resolved field in [`PoolConfig`] (a running pool takes it in
//!    place) or [`SessionConfig`] (it needs new sessions), set by its rule
//!    in [`Rules::pool`] or [`Rules::session`], which gives its default and
//!    range. `OrtserveOptions` travels whole into the session, so its keys
//!    take their default from its `Default` instead, and a range in
//!    [`Rules::bound_options`] only if they are numbers.
//!
//! Whoever uses the key then reads it from the resolved field: the
//! registry copies the pool's into the scheduler's `PoolSettings`.

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeSeed;
use serde::de::{Deserializer, Error as _};
use serde_json::Value as Json;
use serde_yaml_ng::{Mapping, Value as Yaml};

use super::ConfigError;
use super::options::{OrtserveOptions, OrtserveSection, keys_of};
use crate::types::{excerpt, prefix_within};

/// TorchServe keys that configure its Python backend and mean nothing here.
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

/// The effective settings of one model version, split by what a change to
/// them needs: a reload with only a new `pool` retunes the running version.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub pool: PoolConfig,
    pub session: SessionConfig,
}

/// What a running pool takes in place: workers, batching, queue, timeouts.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub min_workers: usize,
    pub max_workers: usize,
    pub batch_size: usize,
    pub max_batch_delay: Duration,
    pub response_timeout: Duration,
    pub startup_timeout: Duration,
    pub max_retry_timeout: Duration,
    pub job_queue_size: usize,
    /// Workers above minWorkers stop after this long without work.
    pub worker_idle_timeout: Duration,
    /// Batches of a size whose recent runs took at most this long run on the
    /// request's own thread (`ortserve.inlineRunMicros`); zero: never.
    pub inline_run_limit: Duration,
    /// Run one inference before a worker takes traffic.
    pub warmup: bool,
    /// This version is the model's default (`ortserve.defaultVersion`, or
    /// `defaultVersion` in its `models=` entry).
    pub default_version: bool,
}

/// What needs new sessions: the device, the cores and ortserve's options.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// `None`: CUDA when it works here, else CPU.
    pub device_type: Option<DeviceType>,
    pub device_ids: Vec<i32>,
    /// The server's cores, which sessions share (`cpus`).
    pub cores: usize,
    /// With `deviceType: gpu`, serve on CPU (one warning) if CUDA fails:
    /// `ortserve.cpuFallback`, else the server's `--cpu-fallback`.
    pub cpu_fallback: bool,
    pub ortserve: OrtserveOptions,
}

impl SessionConfig {
    /// The device asked for, as logs and `ortserve check` name it.
    pub fn requested_device(&self) -> &'static str {
        match (self.device_type, self.cpu_fallback) {
            (Some(DeviceType::Cpu), _) => "cpu",
            (Some(DeviceType::Gpu), false) => "gpu",
            (Some(DeviceType::Gpu), true) => "gpu, else cpu",
            (None, _) => "auto (cuda if usable, else cpu)",
        }
    }
}

/// One layer of a model's settings as `model-config.yaml` spells them. Each
/// key is declared here once: serde's camelCase name of its field, its type
/// and how its value is read; `None` where the layer is silent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ModelConfigLayer {
    #[serde(deserialize_with = "whole_number")]
    min_workers: Option<i64>,
    #[serde(deserialize_with = "whole_number")]
    max_workers: Option<i64>,
    #[serde(deserialize_with = "whole_number")]
    batch_size: Option<i64>,
    #[serde(deserialize_with = "whole_number")]
    max_batch_delay: Option<i64>,
    #[serde(deserialize_with = "whole_number")]
    response_timeout: Option<i64>,
    #[serde(deserialize_with = "whole_number")]
    startup_timeout: Option<i64>,
    #[serde(rename = "maxRetryTimeoutInSec", deserialize_with = "whole_number")]
    max_retry_timeout: Option<i64>,
    #[serde(deserialize_with = "whole_number")]
    job_queue_size: Option<i64>,
    /// `Some(None)`: given empty or null, which means "the best device here".
    #[serde(deserialize_with = "device_type")]
    device_type: Option<Option<DeviceType>>,
    #[serde(deserialize_with = "device_ids")]
    device_ids: Option<Vec<i32>>,
    ortserve: OrtserveSection,
}

impl ModelConfigLayer {
    /// The keys a layer may give, in order (serde's names for its fields).
    fn keys() -> &'static [&'static str] {
        keys_of::<ModelConfigLayer>()
    }

    /// Reads a mapping of known keys; an error is the top-level key it is
    /// under and what is wrong there.
    fn read(keys: Mapping) -> Result<ModelConfigLayer, (String, String)> {
        serde_path_to_error::deserialize(Yaml::Mapping(keys)).map_err(|e| {
            let key = e.path().iter().next().map(ToString::to_string);
            let key = key.unwrap_or_else(|| "(top level)".into());
            (key, e.into_inner().to_string())
        })
    }

    /// The model's file over its `models=` entry, merged as mappings and read.
    fn layered(
        entry: Option<&serde_json::Map<String, Json>>,
        file: Option<&ModelConfigFile>,
    ) -> ModelConfigLayer {
        let mut keys = entry.map(snapshot_keys).unwrap_or_default();
        if let Some(file) = file {
            merge(&mut keys, file.keys.clone());
        }
        // The file's keys were read when it was parsed, and the entry's are
        // whole numbers > 0 and a flag: merged, they read the same way.
        ModelConfigLayer::read(keys).expect("a parsed file over a models= entry stays readable")
    }
}

/// A model's entry in `models=`/`model_snapshot=` as a layer in
/// `model-config.yaml`'s shape. TorchServe's snapshot carries only these
/// keys; as in TorchServe, integers ≤ 0 there mean "use the default", and
/// values of another type are skipped.
fn snapshot_keys(entry: &serde_json::Map<String, Json>) -> Mapping {
    const NUMBERS: &[&str] = &[
        "minWorkers",
        "maxWorkers",
        "batchSize",
        "maxBatchDelay",
        "responseTimeout",
        "startupTimeout",
    ];
    let mut keys = Mapping::new();
    for &key in NUMBERS {
        if let Some(n) = entry.get(key).and_then(Json::as_i64).filter(|n| *n > 0) {
            keys.insert(key.into(), n.into());
        }
    }
    // The snapshot names the default at its top; ortserve under `ortserve:`.
    if let Some(default) = entry.get("defaultVersion").and_then(Json::as_bool) {
        let mut section = Mapping::new();
        section.insert("defaultVersion".into(), default.into());
        keys.insert("ortserve".into(), section.into());
    }
    keys
}

/// A parsed `model-config.yaml`, before it is layered over the defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelConfigFile {
    origin: String,
    /// Its keys ortserve reads, as written (what [`ModelConfig::resolve`]
    /// merges over the `models=` entry).
    keys: Mapping,
    /// The same keys, read.
    layer: ModelConfigLayer,
}

impl ModelConfigFile {
    /// Parses `text`; `origin` (e.g. `digits.mar!model-config.yaml`) names the
    /// file in every message.
    pub fn parse(origin: &str, text: &str) -> Result<ModelConfigFile, ConfigError> {
        let mapping = parse_mapping(origin, text)?.unwrap_or_default();
        ModelConfigFile::from_mapping(origin, mapping)
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
        let model_keys = ModelConfigLayer::keys();
        for key in mapping.keys() {
            let known = key
                .as_str()
                .is_some_and(|k| model_keys.contains(&k) || TORCHSERVE_ONLY.contains(&k));
            if !known {
                let suggestion = key
                    .as_str()
                    .and_then(|k| super::closest_key(k, model_keys.iter().copied()))
                    .map(|k| format!(" (did you mean {k}?)"))
                    .unwrap_or_default();
                return Err(ConfigError::Invalid(format!(
                    "{origin}: {}: unknown key{suggestion}; the model keys are {} (ortserve's own options go under `ortserve:`)",
                    yaml_text(key),
                    model_keys.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The version the file gives (`ortserve.version`).
    pub fn version(&self) -> Option<&str> {
        self.layer.ortserve.session.version.as_deref()
    }

    /// Keeps the keys ortserve reads, warning about the others, and reads
    /// them: a bad value fails the whole file, naming its key.
    fn from_mapping(origin: &str, mapping: Mapping) -> Result<ModelConfigFile, ConfigError> {
        let bad =
            |key: &str, detail: &str| ConfigError::Invalid(format!("{origin}: {key}: {detail}"));
        let mut keys = Mapping::new();
        for (key, value) in mapping {
            let Some(name) = key.as_str() else {
                return Err(bad(&yaml_text(&key), "keys must be strings"));
            };
            if name == "ortserve" && value.is_null() {
                // Left empty, the section hides nothing of a `models=` entry's.
                keys.insert(key, Yaml::Mapping(Mapping::new()));
            } else if ModelConfigLayer::keys().contains(&name) {
                keys.insert(key, value);
            } else {
                warn_ignored(origin, name);
            }
        }
        let layer = ModelConfigLayer::read(keys.clone()).map_err(|(key, why)| bad(&key, &why))?;
        Ok(ModelConfigFile {
            origin: origin.to_string(),
            keys,
            layer,
        })
    }
}

/// Warns about a key ortserve does not read, naming TorchServe's own.
fn warn_ignored(origin: &str, key: &str) {
    if TORCHSERVE_ONLY.contains(&key) {
        tracing::warn!(file = %origin, key, "TorchServe model setting has no effect in ortserve; ignored");
    } else {
        let did_you_mean = super::closest_key(key, ModelConfigLayer::keys().iter().copied());
        tracing::warn!(file = %origin, key = excerpt(key).as_str(), did_you_mean, "unknown model setting; ignored (ortserve's own options go under `ortserve:`)");
    }
}

/// The top-level mapping of a YAML (or JSON) document; `None` when empty.
pub(super) fn parse_mapping(origin: &str, text: &str) -> Result<Option<Mapping>, ConfigError> {
    let invalid = |e: serde_yaml_ng::Error| {
        ConfigError::Invalid(format!(
            "{origin}: not valid YAML: {}",
            prefix_within(&e.to_string(), MAX_YAML_ERROR)
        ))
    };
    let mut left = MAX_YAML_NODES;
    NodeCount { left: &mut left }
        .deserialize(serde_yaml_ng::Deserializer::from_str(text))
        .map_err(invalid)?;
    let document: Yaml = serde_yaml_ng::from_str(text).map_err(invalid)?;
    match document {
        Yaml::Null => Ok(None),
        Yaml::Mapping(m) => Ok(Some(m)),
        _ => Err(ConfigError::Invalid(format!(
            "{origin}: (top level): expected a mapping of keys to values"
        ))),
    }
}

/// Nodes one document may hold with its aliases expanded: a model's
/// settings are a few dozen. Each alias is a copy of its anchor's nodes,
/// so a 17 KB file of aliases to aliases built 856 MB of values.
const MAX_YAML_NODES: usize = 100_000;
/// How much of the YAML parser's message an error quotes: it can repeat a
/// value from the file.
const MAX_YAML_ERROR: usize = 300;

/// Counts a document's nodes, aliases expanded, building none of them:
/// fails past [`MAX_YAML_NODES`] before the document is built.
struct NodeCount<'a> {
    left: &'a mut usize,
}

impl NodeCount<'_> {
    fn take<E: serde::de::Error>(&mut self) -> Result<(), E> {
        *self.left = self.left.checked_sub(1).ok_or_else(|| {
            E::custom(format!(
                "more than {MAX_YAML_NODES} values once its aliases (*name) are expanded"
            ))
        })?;
        Ok(())
    }

    fn again(&mut self) -> NodeCount<'_> {
        NodeCount { left: self.left }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for NodeCount<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NodeCount<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: serde::de::Error>(mut self, _: bool) -> Result<(), E> {
        self.take()
    }
    fn visit_i64<E: serde::de::Error>(mut self, _: i64) -> Result<(), E> {
        self.take()
    }
    fn visit_u64<E: serde::de::Error>(mut self, _: u64) -> Result<(), E> {
        self.take()
    }
    fn visit_f64<E: serde::de::Error>(mut self, _: f64) -> Result<(), E> {
        self.take()
    }
    fn visit_str<E: serde::de::Error>(mut self, _: &str) -> Result<(), E> {
        self.take()
    }
    fn visit_unit<E: serde::de::Error>(mut self) -> Result<(), E> {
        self.take()
    }
    fn visit_none<E: serde::de::Error>(mut self) -> Result<(), E> {
        self.take()
    }

    fn visit_some<D: serde::Deserializer<'de>>(mut self, inner: D) -> Result<(), D::Error> {
        self.take()?;
        inner.deserialize_any(self)
    }

    fn visit_newtype_struct<D: serde::Deserializer<'de>>(
        mut self,
        inner: D,
    ) -> Result<(), D::Error> {
        self.take()?;
        inner.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.take()?;
        while seq.next_element_seed(self.again())?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.take()?;
        while map.next_key_seed(self.again())?.is_some() {
            map.next_value_seed(self.again())?;
        }
        Ok(())
    }

    /// A tagged value (`!tag value`).
    fn visit_enum<A: serde::de::EnumAccess<'de>>(mut self, data: A) -> Result<(), A::Error> {
        use serde::de::VariantAccess;
        self.take()?;
        let ((), variant) = data.variant_seed(self.again())?;
        variant.newtype_variant_seed(self)
    }
}

/// Merges `top` into `base`: nested mappings key by key, anything else
/// replaced. The one rule by which every layer goes over the one below.
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

/// A whole number (TorchServe's are never quoted).
fn whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let value = Yaml::deserialize(d)?;
    match value.as_i64() {
        Some(n) => Ok(Some(n)),
        None => Err(D::Error::custom(format!(
            "expected a whole number, got {}",
            yaml_text(&value)
        ))),
    }
}

fn device_type<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<DeviceType>>, D::Error> {
    let value = Yaml::deserialize(d)?;
    let device = match &value {
        Yaml::Null => None,
        Yaml::String(s) if s.is_empty() => None,
        Yaml::String(s) if s == "cpu" => Some(DeviceType::Cpu),
        Yaml::String(s) if s == "gpu" => Some(DeviceType::Gpu),
        _ => {
            return Err(D::Error::custom(format!(
                "expected one of cpu, gpu; got {}",
                yaml_text(&value)
            )));
        }
    };
    Ok(Some(device))
}

fn device_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<i32>>, D::Error> {
    let value = Yaml::deserialize(d)?;
    let list = value.as_sequence().ok_or_else(|| {
        D::Error::custom(format!(
            "expected a list of GPU ids such as [0, 1], got {}",
            yaml_text(&value)
        ))
    })?;
    let ids = list.iter().map(|id| {
        id.as_i64()
            .and_then(|id| i32::try_from(id).ok())
            .filter(|id| *id >= 0)
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "GPU ids must be whole numbers ≥ 0, got {}",
                    yaml_text(id)
                ))
            })
    });
    ids.collect::<Result<_, _>>().map(Some)
}

/// A value as YAML, short and escaped for a message.
fn yaml_text(value: &Yaml) -> String {
    let text = serde_yaml_ng::to_string(value).unwrap_or_else(|_| format!("{value:?}"));
    excerpt(text.trim_end())
}

/// Largest settings accepted; anything above is clamped (with a warning).
const MAX_WORKERS: i64 = super::MAX_WORKERS as i64;
const MAX_ROWS: i64 = super::MAX_ROWS as i64;
const MAX_SECONDS: i64 = super::MAX_SECONDS as i64;
/// Elements of one input tensor: 4 GiB of f32.
const MAX_TENSOR_ELEMENTS: usize = 1 << 30;
/// A run on a request's thread holds up that thread's other connections
/// (and `/ping`): tens of microseconds are what an async task may take
/// between awaits; a millisecond is the most a setting may allow.
const DEFAULT_INLINE_RUN_MICROS: u64 = 50;
const MAX_INLINE_RUN_MICROS: u64 = 1_000;
/// Side of an image after resizing or cropping.
const MAX_IMAGE_SIDE: u32 = 16_384;
const MAX_IMAGE_PIXELS: u64 = 1 << 30;
const MAX_TOP_K: usize = 1 << 16;
const MAX_FORWARD_PASSES: usize = 1 << 24;
const MAX_SAMPLES: usize = 1 << 16;
/// The longest context (prompt plus new tokens) a generation may have.
const MAX_CONTEXT: usize = 1 << 20;

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
        let layer = ModelConfigLayer::layered(properties_entry, file);
        ModelConfig {
            pool: rules.pool(defaults, &layer),
            session: rules.session(defaults, layer),
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
    /// The pool settings: each key's default and range, as TorchServe's.
    fn pool(&self, defaults: &ModelDefaults, layer: &ModelConfigLayer) -> PoolConfig {
        let workers = defaults.workers as i64;
        let min_workers = self.within("minWorkers", layer.min_workers, workers, 1, MAX_WORKERS);
        // Unset, maxWorkers is the server's default, but never below minWorkers.
        let max_workers = self.within(
            "maxWorkers",
            layer.max_workers,
            workers.max(min_workers),
            min_workers,
            MAX_WORKERS,
        );
        // TorchServe: a queue size ≤ 0 means the server's.
        let job_queue_size = match layer.job_queue_size {
            Some(q) if q > 0 => self.within("jobQueueSize", Some(q), q, 1, MAX_ROWS),
            _ => defaults.job_queue_size as i64,
        };
        let options = &layer.ortserve.pool;
        let idle_secs = self.clamp(
            "ortserve.workerIdleTimeoutSec",
            options.worker_idle_timeout_sec.unwrap_or(60),
            1,
            MAX_SECONDS as u64,
        );
        let inline_micros = self.clamp(
            "ortserve.inlineRunMicros",
            options
                .inline_run_micros
                .unwrap_or(DEFAULT_INLINE_RUN_MICROS),
            0,
            MAX_INLINE_RUN_MICROS,
        );
        PoolConfig {
            min_workers: min_workers as usize,
            max_workers: max_workers as usize,
            batch_size: self.within("batchSize", layer.batch_size, 1, 1, MAX_ROWS) as usize,
            max_batch_delay: Duration::from_millis(self.within(
                "maxBatchDelay",
                layer.max_batch_delay,
                100,
                0,
                MAX_SECONDS,
            ) as u64),
            response_timeout: secs(self.positive(
                "responseTimeout",
                layer.response_timeout,
                defaults.response_timeout_secs as i64,
            )),
            startup_timeout: secs(self.positive("startupTimeout", layer.startup_timeout, 120)),
            max_retry_timeout: secs(self.within(
                "maxRetryTimeoutInSec",
                layer.max_retry_timeout,
                300,
                0,
                MAX_SECONDS,
            )),
            job_queue_size: job_queue_size as usize,
            worker_idle_timeout: Duration::from_secs(idle_secs),
            inline_run_limit: Duration::from_micros(inline_micros),
            warmup: options.warmup.unwrap_or(true),
            default_version: options.default_version.unwrap_or(false),
        }
    }

    /// The session settings: the device, the cores, ortserve's options.
    fn session(&self, defaults: &ModelDefaults, layer: ModelConfigLayer) -> SessionConfig {
        let options = layer.ortserve.session;
        SessionConfig {
            device_type: layer.device_type.flatten(),
            device_ids: layer.device_ids.unwrap_or_default(),
            cores: defaults.cores,
            cpu_fallback: options.cpu_fallback.unwrap_or(defaults.cpu_fallback),
            ortserve: self.bound_options(options),
        }
    }

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
        let text = &mut options.text_generation;
        text.max_new_tokens = self.clamp(
            "ortserve.textGeneration.maxNewTokens",
            text.max_new_tokens,
            1,
            MAX_CONTEXT,
        );
        text.max_context = text
            .max_context
            .map(|n| self.clamp("ortserve.textGeneration.maxContext", n, 1, MAX_CONTEXT));
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
