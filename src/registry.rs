//! The live model set: name → versions → state (loading, ready, failed), and
//! which version is the default. Requests resolve a model here; `/ping` reads
//! everyone's health here.
//!
//! It turns a store artifact plus its configuration into a serving model, but
//! never runs inference itself and never parses HTTP.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::{
    DeviceType, ExplainOptions, HandlerName, ModelConfig, ModelConfigFile, ServerConfig, cpu_count,
};
use crate::engine::{DeviceRequest, EngineSession, SessionOptions, visible_cuda_devices};
use crate::explain::{self, ExplainParams, Forward};
use crate::handlers::{BodyForm, Handler, ReplyShape};
use crate::scheduler::{PoolHealth, PoolSettings, SessionFactory, WorkerPool};
use crate::store::{BrokenEntry, ModelArtifact, ModelFile};
use crate::types::{Error, InferRequest, InferResponse, ModelId, ModelIo, Tensor};
use bytes::Bytes;
use tokio::sync::Semaphore;

/// The version of a model that declares none (TorchServe's default).
const DEFAULT_VERSION: &str = "1.0";

/// A model version that is serving: its handler and its workers.
pub struct ServingModel {
    pub id: ModelId,
    handler: Handler,
    pool: WorkerPool,
    heavy_work: Arc<Semaphore>,
    max_tensor_elements: usize,
    batch_size: usize,
    explain_options: ExplainOptions,
    /// Explanation batches in flight for this model: at most maxWorkers − 1
    /// (at least 1), so predictions always find a batch of their own.
    explain_slots: Semaphore,
}

impl ServingModel {
    /// One instance's body in, its answer out: pre-processing, the queue,
    /// post-processing. Heavy pre-processing (images, large JSON) runs on the
    /// blocking pool, at most one per core server-wide, so a burst of big
    /// images cannot decode all at once and exhaust memory.
    pub async fn predict(self: &Arc<Self>, body: Bytes, form: BodyForm) -> Result<Vec<u8>, Error> {
        let (request, shape) = self.preprocess(body, form).await?;
        let response = self.pool.infer(request).await?;
        let mut out = Vec::with_capacity(128);
        self.handler.postprocess(&response, shape, &mut out)?;
        Ok(out)
    }

    async fn preprocess(
        self: &Arc<Self>,
        body: Bytes,
        form: BodyForm,
    ) -> Result<(InferRequest, ReplyShape), Error> {
        if self.handler.is_heavy(&body) {
            let model = self.clone();
            self.offload(move || model.handler.preprocess(&body, form))
                .await?
        } else {
            self.handler.preprocess(&body, form)
        }
    }

    /// Explains one body's instances after the handler's pre-processing (so
    /// image models are explained over the tensor the model sees): one JSON
    /// value per instance, shaped like its input, as TorchServe shows them.
    pub async fn explain(
        self: &Arc<Self>,
        body: Bytes,
        form: BodyForm,
        params: &ExplainParams,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let (body, target) = match explain::take_instance_target(self.io(), &body)? {
            Some((rest, target)) => (Bytes::from(rest), Some(target)),
            None => (body, None),
        };
        let params = ExplainParams {
            target: target.or(params.target),
            ..params.clone()
        };
        let (request, _) = self.preprocess(body, form).await?;
        let instances =
            explain::explain_each(&**self, request, &self.explain_options, &params).await?;
        Ok(instances
            .iter()
            .map(|attributions| {
                let mut out = Vec::new();
                explain::write_attributions(&mut out, self.io(), attributions);
                out
            })
            .collect())
    }

    /// Explains every row of ready tensors (the Open Inference Protocol's
    /// route): one attribution tensor per input, shaped like it.
    pub async fn explain_rows(
        &self,
        request: InferRequest,
        params: &ExplainParams,
    ) -> Result<Vec<Tensor>, Error> {
        let instances = explain::explain_each(self, request, &self.explain_options, params).await?;
        let batched = self.io().has_batch_axis();
        Ok((0..self.io().inputs.len())
            .map(|i| {
                let mut stacked =
                    Tensor::concat_rows(&instances.iter().map(|a| &a[i]).collect::<Vec<_>>());
                if !batched {
                    stacked.shape.remove(0);
                }
                stacked
            })
            .collect())
    }

    /// Runs heavy work (image decoding, big JSON) on the blocking pool, at most
    /// one per core server-wide, so it neither stalls the async threads nor,
    /// in a burst, takes unbounded memory.
    pub async fn offload<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let _permit = self
            .heavy_work
            .acquire()
            .await
            .map_err(|_| Error::Unavailable {
                model: self.id.name.clone(),
                reason: "the server is shutting down".into(),
            })?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Error::Inference(format!("pre-processing failed: {e}")))
    }

    /// Runs ready tensors through the model, skipping its handler (the Open
    /// Inference Protocol carries tensors, not payloads).
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, Error> {
        self.pool.infer(request).await
    }

    pub fn io(&self) -> &ModelIo {
        self.pool.io()
    }

    /// The largest element count accepted for one input tensor.
    pub fn max_tensor_elements(&self) -> usize {
        self.max_tensor_elements
    }
}

impl Forward for ServingModel {
    fn io(&self) -> &ModelIo {
        self.pool.io()
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    async fn forward(&self, rows: InferRequest) -> Result<InferResponse, Error> {
        let _slot = self
            .explain_slots
            .acquire()
            .await
            .map_err(|_| Error::Unavailable {
                model: self.id.name.clone(),
                reason: "the model is being unloaded".into(),
            })?;
        self.pool.infer_now(rows).await
    }
}

enum VersionState {
    Loading,
    Ready(Arc<ServingModel>),
    Failed(String),
}

/// One version of a model and where it stands.
pub struct ModelVersion {
    id: ModelId,
    min_workers: usize,
    state: RwLock<VersionState>,
}

impl ModelVersion {
    fn serving(&self) -> Result<Arc<ServingModel>, Error> {
        let unavailable = |reason: String| Error::Unavailable {
            model: self.id.name.clone(),
            reason,
        };
        match &*self.state.read().unwrap_or_else(|e| e.into_inner()) {
            VersionState::Ready(model) => Ok(model.clone()),
            VersionState::Loading => Err(unavailable(format!(
                "version {} is still loading",
                self.id.version
            ))),
            VersionState::Failed(reason) => Err(unavailable(format!(
                "version {} failed to load: {reason}",
                self.id.version
            ))),
        }
    }

    fn set(&self, state: VersionState) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = state;
    }

    fn health(&self) -> VersionHealth {
        let (state, detail, pool) = match &*self.state.read().unwrap_or_else(|e| e.into_inner()) {
            VersionState::Loading => ("Loading", None, None),
            VersionState::Failed(reason) => ("Failed", Some(reason.clone()), None),
            VersionState::Ready(model) => ("Ready", None, Some(model.pool.health())),
        };
        VersionHealth {
            version: self.id.version.clone(),
            state,
            detail,
            healthy: pool.is_some_and(|p| p.is_healthy()),
            ready_workers: pool.map_or(0, |p: PoolHealth| p.ready_workers),
            min_workers: self.min_workers,
        }
    }
}

struct ModelEntry {
    versions: BTreeMap<String, Arc<ModelVersion>>,
    default_version: String,
}

/// Health of one default version, for `/ping`'s detail.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionHealth {
    pub version: String,
    pub state: &'static str,
    pub detail: Option<String>,
    pub healthy: bool,
    pub ready_workers: usize,
    pub min_workers: usize,
}

/// The server's health: every model's default version must be healthy.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    pub healthy: bool,
    pub models: Vec<(String, VersionHealth)>,
}

pub struct ModelRegistry {
    models: RwLock<BTreeMap<String, ModelEntry>>,
    allow_empty: bool,
    heavy_work: Arc<Semaphore>,
}

impl ModelRegistry {
    pub fn new(allow_empty: bool) -> ModelRegistry {
        ModelRegistry {
            models: RwLock::default(),
            allow_empty,
            heavy_work: Arc::new(Semaphore::new(cpu_count())),
        }
    }

    /// Registers what the store found and loads each model in the background;
    /// a model that cannot load is registered as failed, others are unaffected.
    pub fn load_all(&self, found: Vec<Result<ModelArtifact, BrokenEntry>>, server: &ServerConfig) {
        let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
        let mut defaults: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
        for entry in found {
            let (version, explicit_default) = match entry {
                Ok(artifact) => register_artifact(&mut models, artifact, server, &self.heavy_work),
                Err(broken) => register_failed(
                    &mut models,
                    &broken.name,
                    "unknown",
                    broken.error.to_string(),
                ),
            };
            if let Some((name, version)) = version {
                defaults
                    .entry(name)
                    .or_default()
                    .push((version, explicit_default));
            }
        }
        for (name, versions) in defaults {
            let entry = models.get_mut(&name).expect("registered above");
            entry.default_version = pick_default(&name, &versions);
        }
    }

    /// Finds a serving model; `version` `None` means the default version.
    pub fn resolve(&self, name: &str, version: Option<&str>) -> Result<Arc<ServingModel>, Error> {
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        let entry = models
            .get(name)
            .ok_or_else(|| Error::ModelNotFound(name.to_string()))?;
        let version = version.unwrap_or(&entry.default_version);
        let found = entry
            .versions
            .get(version)
            .ok_or_else(|| Error::VersionNotFound {
                model: name.to_string(),
                version: version.to_string(),
            })?;
        found.serving()
    }

    /// Every model name, in order.
    pub fn model_names(&self) -> Vec<String> {
        self.models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// The versions of a model, lowest first.
    pub fn versions(&self, name: &str) -> Result<Vec<String>, Error> {
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        let entry = models
            .get(name)
            .ok_or_else(|| Error::ModelNotFound(name.to_string()))?;
        let mut versions: Vec<String> = entry.versions.keys().cloned().collect();
        versions.sort_by(|a, b| compare_versions(a, b));
        Ok(versions)
    }

    /// Readiness of one version (`None`: the default), by the same rule as `/ping`.
    pub fn version_health(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<VersionHealth, Error> {
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        let entry = models
            .get(name)
            .ok_or_else(|| Error::ModelNotFound(name.to_string()))?;
        let version = version.unwrap_or(&entry.default_version);
        entry
            .versions
            .get(version)
            .map(|v| v.health())
            .ok_or_else(|| Error::VersionNotFound {
                model: name.to_string(),
                version: version.to_string(),
            })
    }

    /// Healthy when every model's default version has `minWorkers` healthy
    /// workers (a loading or failed model is not healthy), and there is at
    /// least one model unless the operator allowed an empty server.
    pub fn health(&self) -> HealthReport {
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        let details: Vec<(String, VersionHealth)> = models
            .iter()
            .map(|(name, entry)| {
                (
                    name.clone(),
                    entry.versions[&entry.default_version].health(),
                )
            })
            .collect();
        let healthy =
            (self.allow_empty || !details.is_empty()) && details.iter().all(|(_, h)| h.healthy);
        HealthReport {
            healthy,
            models: details,
        }
    }
}

/// Parses the artifact's configuration and starts loading it. Returns the
/// registered (name, version) and whether it asked to be the default.
fn register_artifact(
    models: &mut BTreeMap<String, ModelEntry>,
    artifact: ModelArtifact,
    server: &ServerConfig,
    heavy_work: &Arc<Semaphore>,
) -> (Option<(String, String)>, bool) {
    let file = match artifact
        .config_file
        .as_ref()
        .map(|f| ModelConfigFile::parse(&f.origin, &f.text))
        .transpose()
    {
        Ok(file) => file,
        Err(e) => {
            let version = artifact.version.as_deref().unwrap_or(DEFAULT_VERSION);
            return register_failed(models, &artifact.name, version, e.to_string());
        }
    };
    let version = file
        .as_ref()
        .and_then(|f| f.ortserve.version.clone())
        .or_else(|| artifact.version.clone())
        .unwrap_or_else(|| DEFAULT_VERSION.into());
    let entry = server
        .model_entries
        .get(&artifact.name)
        .and_then(|v| v.get(&version));
    let config = ModelConfig::resolve(&server.model_defaults, entry, file.as_ref());
    let handler = match Handler::choose(config.ortserve.handler, artifact.handler.as_deref()) {
        Ok(handler) => handler,
        Err(reason) => {
            return register_failed(
                models,
                &artifact.name,
                &version,
                format!("{}: {reason}", artifact.origin),
            );
        }
    };
    let id = ModelId {
        name: artifact.name.clone(),
        version: version.clone(),
    };
    let entry = models.entry(id.name.clone()).or_insert_with(|| ModelEntry {
        versions: BTreeMap::new(),
        default_version: version.clone(),
    });
    if entry.versions.contains_key(&version) {
        tracing::error!(model = %id.name, version, origin = %artifact.origin, "another store entry already provides this model version; ignored");
        return (None, false);
    }
    let model_version = Arc::new(ModelVersion {
        id: id.clone(),
        min_workers: config.min_workers,
        state: RwLock::new(VersionState::Loading),
    });
    entry
        .versions
        .insert(version.clone(), model_version.clone());
    let explicit_default = config.default_version;
    tokio::spawn(load(
        model_version,
        artifact,
        config,
        handler,
        heavy_work.clone(),
    ));
    (Some((id.name, version)), explicit_default)
}

fn register_failed(
    models: &mut BTreeMap<String, ModelEntry>,
    name: &str,
    version: &str,
    reason: String,
) -> (Option<(String, String)>, bool) {
    tracing::error!(model = name, version, reason, "model failed to load");
    let entry = models
        .entry(name.to_string())
        .or_insert_with(|| ModelEntry {
            versions: BTreeMap::new(),
            default_version: version.to_string(),
        });
    entry
        .versions
        .entry(version.to_string())
        .or_insert_with(|| {
            Arc::new(ModelVersion {
                id: ModelId {
                    name: name.to_string(),
                    version: version.to_string(),
                },
                min_workers: 1,
                state: RwLock::new(VersionState::Failed(reason)),
            })
        });
    (Some((name.to_string(), version.to_string())), false)
}

/// The version marked `defaultVersion`, else the highest one.
fn pick_default(name: &str, versions: &[(String, bool)]) -> String {
    let explicit: Vec<&String> = versions
        .iter()
        .filter(|(_, d)| *d)
        .map(|(v, _)| v)
        .collect();
    if explicit.len() > 1 {
        tracing::warn!(
            model = name,
            ?explicit,
            "several versions are marked defaultVersion; using the highest of them"
        );
    }
    let candidates: Vec<&String> = if explicit.is_empty() {
        versions.iter().map(|(v, _)| v).collect()
    } else {
        explicit
    };
    candidates
        .into_iter()
        .max_by(|a, b| compare_versions(a, b))
        .expect("a registered model has a version")
        .clone()
}

/// Orders versions by their dot-separated parts, numerically where both
/// parts are numbers (so 1.10 > 1.9); numbers rank above words.
fn compare_versions(a: &str, b: &str) -> Ordering {
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        return match (left.next(), right.next()) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    (Ok(_), Err(_)) => Ordering::Greater,
                    (Err(_), Ok(_)) => Ordering::Less,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if order == Ordering::Equal {
                    continue;
                }
                order
            }
        };
    }
}

/// Starts the workers, checks the model fits its handler and batch settings,
/// then marks the version ready (or failed, with the reason).
async fn load(
    version: Arc<ModelVersion>,
    artifact: ModelArtifact,
    config: ModelConfig,
    handler: HandlerName,
    heavy_work: Arc<Semaphore>,
) {
    let id = version.id.clone();
    let factory = session_factory(artifact.model_file.clone(), &config);
    let settings = pool_settings(&config);
    let started = WorkerPool::start(id.clone(), settings, factory).await;
    let outcome = started.and_then(|(pool, start)| {
        let io = pool.io();
        if config.batch_size > 1 && !io.has_batch_axis() {
            let blocker = io.batch_blocker().expect("no batch axis means some tensor blocks it");
            return Err(format!(
                "batchSize is {} but '{}' has shape {}, without a dynamic first (batch) axis; \
                 set batchSize: 1 or export the model with a dynamic batch axis",
                config.batch_size,
                blocker.name,
                blocker.shape_text()
            ));
        }
        let explain_output = config.ortserve.explain.output;
        if explain_output >= io.outputs.len() {
            return Err(format!(
                "ortserve.explain.output is {explain_output} but the model has {} outputs (numbered from 0)",
                io.outputs.len()
            ));
        }
        let handler = Handler::new(handler, &config.ortserve, io, artifact.labels.as_ref())?;
        if let Some(reason) = &start.fallback_reason {
            match config.device_type {
                Some(DeviceType::Gpu) => tracing::warn!(model = %id, reason, "deviceType is gpu but CUDA is unusable; serving on CPU because CPU fallback is allowed (ortserve.cpuFallback or --cpu-fallback)"),
                _ => tracing::info!(model = %id, "CUDA is not available here; serving on CPU"),
            }
        }
        tracing::info!(model = %id.name, version = %id.version, device = %start.device, workers = config.min_workers, batch_size = config.batch_size, "model ready");
        Ok(ServingModel {
            id: id.clone(),
            handler,
            pool,
            heavy_work,
            max_tensor_elements: config.ortserve.max_tensor_elements,
            batch_size: config.batch_size,
            explain_options: config.ortserve.explain.clone(),
            explain_slots: Semaphore::new(config.max_workers.saturating_sub(1).max(1)),
        })
    });
    match outcome {
        Ok(model) => version.set(VersionState::Ready(Arc::new(model))),
        Err(reason) => {
            let reason = format!("{}: {reason}", artifact.origin);
            tracing::error!(model = %id.name, version = %id.version, reason, "model failed to load");
            version.set(VersionState::Failed(reason));
        }
    }
}

fn pool_settings(config: &ModelConfig) -> PoolSettings {
    PoolSettings {
        min_workers: config.min_workers,
        max_workers: config.max_workers,
        batch_size: config.batch_size,
        max_batch_delay: config.max_batch_delay,
        response_timeout: config.response_timeout,
        startup_timeout: config.startup_timeout,
        max_retry_timeout: config.max_retry_timeout,
        queue_rows: config.job_queue_size,
        idle_timeout: Duration::from_secs(config.ortserve.worker_idle_timeout_sec.max(1)),
        warmup: config.ortserve.warmup,
    }
}

/// Builds sessions for a model's workers, spreading them round-robin over
/// `deviceIds` (else the visible GPUs) and sharing the cores among them.
fn session_factory(file: ModelFile, config: &ModelConfig) -> SessionFactory {
    let options = &config.ortserve;
    let intra = options
        .intra_op_threads
        .unwrap_or((cpu_count() / config.max_workers).max(1));
    let devices = if config.device_ids.is_empty() {
        visible_cuda_devices()
    } else {
        config.device_ids.clone()
    };
    let device_type = config.device_type;
    let cpu_fallback = config.cpu_fallback;
    let base = SessionOptions {
        device: DeviceRequest::Cpu,
        intra_op_threads: intra,
        inter_op_threads: options.inter_op_threads.max(1),
        intra_op_spinning: options.intra_op_spinning,
        optimization: options.optimization_level(),
    };
    Arc::new(move |worker: usize| {
        let device_id = devices[worker % devices.len()];
        let device = match device_type {
            Some(DeviceType::Cpu) => DeviceRequest::Cpu,
            Some(DeviceType::Gpu) => DeviceRequest::Cuda {
                device_id,
                cpu_fallback,
            },
            None => DeviceRequest::Auto { device_id },
        };
        let options = SessionOptions {
            device,
            ..base.clone()
        };
        file.with_source(|source| EngineSession::build(source, &options))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(compare_versions("1.10", "1.9"), Ordering::Greater);
        assert_eq!(compare_versions("2.0", "2.0"), Ordering::Equal);
        assert_eq!(compare_versions("2", "2.0"), Ordering::Less);
        assert_eq!(compare_versions("1.0", "unknown"), Ordering::Greater);
    }

    #[test]
    fn default_is_explicit_else_highest() {
        let versions = vec![("1.0".to_string(), false), ("2.0".to_string(), false)];
        assert_eq!(pick_default("m", &versions), "2.0");
        let versions = vec![("1.0".to_string(), true), ("2.0".to_string(), false)];
        assert_eq!(pick_default("m", &versions), "1.0");
    }
}
