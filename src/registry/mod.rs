//! The live model set: name → versions → state (loading, ready, failed), and
//! which version is the default. Requests resolve a model here; `/ping` reads
//! everyone's health here.
//!
//! * [`serving`]: a version that serves — handler, pool, explanations.
//! * [`load`]: how a version is built from a store artifact and its config.
//! * [`reconcile`]: the one task that applies model declarations (a mounted
//!   ConfigMap) after start, without dropping traffic.
//! * [`control`] and [`registration`]: what the management API reads and
//!   changes — describe, scale, set the default, register, unregister —
//!   through the same build-then-switch path.
//!
//! It turns a store artifact plus its configuration into a serving model, but
//! never runs inference itself and never parses HTTP.

mod control;
mod load;
mod reconcile;
mod registration;
mod serving;
#[cfg(test)]
pub(crate) mod testing;
mod version;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as Atomic};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::config::{Declaration, HandlerName, ModelConfig, ModelConfigFile, ServerConfig};
use crate::handlers::Handler;
use crate::store::{BrokenEntry, ModelArtifact};
use crate::telemetry::{Metrics, VersionGauges};
use crate::types::{Error, EventSink, LoadFailure, LoadFailureKind, ModelId, ServerEvent, excerpt};
pub use control::{
    IndexEntry, LoadOutcome, LoadedModel, ModelSummary, Scaling, VersionReport, VersionScope,
    WorkerRange,
};
use load::Recipe;
pub use reconcile::Reconciler;
pub use registration::Registration;
pub use serving::{AttachedModel, ServingModel, TextGeneration};
pub use version::{HealthReport, VersionHealth};
use version::{ModelEntry, ModelSet, ModelVersion, VersionSource, VersionState, compare_versions};

/// The version of a model that declares none (TorchServe's default).
const DEFAULT_VERSION: &str = "1.0";

pub struct ModelRegistry {
    models: ModelSet,
    allow_empty: bool,
    heavy_work: Arc<Semaphore>,
    events: EventSink,
    /// Set on SIGTERM: readiness turns off while requests are still served.
    draining: AtomicBool,
    /// Model declarations refused since start (logged as `rejected_total`).
    rejected_reloads: AtomicU64,
    metrics: Arc<Metrics>,
    /// Held by each management-API change, so they happen one at a time.
    control: tokio::sync::Mutex<()>,
}

impl ModelRegistry {
    /// `cores` bounds the heavy pre-processing (images, big JSON) that runs at once.
    pub fn new(
        allow_empty: bool,
        cores: usize,
        events: EventSink,
        metrics: Arc<Metrics>,
    ) -> Arc<ModelRegistry> {
        Arc::new(ModelRegistry {
            models: ModelSet::default(),
            allow_empty,
            heavy_work: Arc::new(Semaphore::new(cores)),
            events,
            draining: AtomicBool::new(false),
            rejected_reloads: AtomicU64::new(0),
            metrics,
            control: tokio::sync::Mutex::new(()),
        })
    }

    /// Registers what the store found and loads each model in the background;
    /// a model that cannot load is registered as failed, others are unaffected.
    pub fn load_all(
        self: &Arc<Self>,
        found: Vec<Result<ModelArtifact, BrokenEntry>>,
        server: &ServerConfig,
    ) {
        for entry in found {
            let recipe = entry
                .map_err(|broken| {
                    let id = ModelId {
                        name: broken.name,
                        version: "unknown".into(),
                    };
                    let failure =
                        LoadFailure::new(LoadFailureKind::BadArchive, broken.error.to_string());
                    (id, failure)
                })
                .and_then(|artifact| {
                    let properties = server.model_entries.get(&artifact.name);
                    warn_if_snapshot_disagrees(&artifact, properties);
                    recipe(artifact, None, properties, server)
                });
            match recipe {
                Ok((id, recipe)) => self.add(id, recipe, VersionSource::Store, true),
                Err((id, failure)) => self.add_failed(id, failure),
            }
        }
    }

    /// Starts loading a version in the background. Versions configured at
    /// start count for readiness while they load; later ones once ready.
    fn add(self: &Arc<Self>, id: ModelId, recipe: Recipe, source: VersionSource, at_start: bool) {
        let version = Arc::new(
            ModelVersion::new(
                id.clone(),
                recipe.config.pool.min_workers,
                recipe.config.pool.default_version,
                at_start,
                recipe.config.session.ortserve.optional,
            )
            .built_from(
                &recipe.artifact.origin,
                source,
                Some(load::pool_settings(&recipe.config)),
            ),
        );
        if !self.insert(version.clone(), &recipe.artifact.origin) {
            return;
        }
        let registry = self.clone();
        tokio::spawn(async move {
            let state = match registry.build(&version.id, &recipe).await {
                Ok(model) => VersionState::Ready(Arc::new(model)),
                Err(reason) => VersionState::Failed(reason),
            };
            version.set_if_loading(state);
            registry.choose_default(&version.id.name);
        });
    }

    /// Registers a version that cannot load, so readiness and requests say
    /// why. A name or version that broke the rules is kept as a short
    /// excerpt: it still names the failure, and cannot bloat every scrape.
    fn add_failed(&self, id: ModelId, failure: LoadFailure) {
        let id = ModelId {
            name: match ModelId::check_name(&id.name) {
                Ok(()) => id.name,
                Err(_) => excerpt(&id.name),
            },
            version: match ModelId::check_version(&id.version) {
                Ok(()) => id.version,
                Err(_) => excerpt(&id.version),
            },
        };
        tracing::error!(model = %id.name, version = %id.version, kind = failure.kind.as_str(), reason = %failure, "model failed to load");
        self.metrics.load_failed(&id, failure.kind);
        let origin = id.name.clone();
        let version = Arc::new(ModelVersion::new(id, 1, false, true, false).built_from(
            &origin,
            VersionSource::Store,
            None,
        ));
        version.set(VersionState::Failed(failure));
        self.insert(version, &origin);
    }

    /// Adds a version to its model; false if that version is already there.
    fn insert(&self, version: Arc<ModelVersion>, origin: &str) -> bool {
        let id = &version.id;
        let inserted = self.models.update(|models| {
            let entry = models.entry(id.name.clone()).or_insert_with(|| ModelEntry {
                versions: BTreeMap::new(),
                default_version: id.version.clone(),
            });
            if entry.versions.contains_key(&id.version) {
                return false;
            }
            entry.versions.insert(id.version.clone(), version.clone());
            entry.choose_default(&id.name);
            true
        });
        if !inserted {
            tracing::error!(model = %id.name, version = %id.version, origin, "another entry already provides this model version; ignored");
        }
        inserted
    }

    /// Builds a serving model, logging what loads from where, how it
    /// progresses while it takes long, and the outcome with its timings.
    async fn build(&self, id: &ModelId, recipe: &Recipe) -> Result<ServingModel, LoadFailure> {
        let metrics = self.metrics.model(id);
        let config = &recipe.config;
        tracing::info!(model = %id.name, version = %id.version, from = %recipe.artifact.model_file, handler = recipe.handler.as_str(), device = config.session.requested_device(), workers = config.pool.min_workers, warmup = config.pool.warmup, "loading model");
        let began = Instant::now();
        let built = load::build(id, recipe, self.heavy_work.clone(), metrics);
        match with_progress(id, config, built).await {
            Ok((model, times)) => {
                let device = model.device().to_string();
                tracing::info!(model = %id.name, version = %id.version, device, workers = config.pool.min_workers, batch_size = config.pool.batch_size, load_ms = millis(began.elapsed()), session_ms = millis(times.start), warmup_ms = times.warmup.map(millis), "model ready");
                self.events.emit(ServerEvent::ModelLoaded {
                    model: id.clone(),
                    device,
                });
                Ok(model)
            }
            Err(failure) => {
                tracing::error!(model = %id.name, version = %id.version, kind = failure.kind.as_str(), reason = %failure, load_ms = millis(began.elapsed()), "model failed to load");
                self.metrics.load_failed(id, failure.kind);
                self.events.emit(ServerEvent::ModelLoadFailed {
                    model: id.clone(),
                    failure: failure.clone(),
                });
                Err(failure)
            }
        }
    }

    fn choose_default(&self, name: &str) {
        self.models.update(|models| {
            if let Some(entry) = models.get_mut(name) {
                entry.choose_default(name);
            }
        });
    }

    fn version(&self, id: &ModelId) -> Option<Arc<ModelVersion>> {
        self.models
            .read(|models| models.get(&id.name)?.versions.get(&id.version).cloned())
    }

    /// Takes a version out of service: new requests no longer find it, and
    /// its pool drains once the requests holding it finish.
    fn remove(&self, id: &ModelId) {
        let removed = self.models.update(|models| {
            let Some(entry) = models.get_mut(&id.name) else {
                return false;
            };
            entry.versions.remove(&id.version);
            if entry.versions.is_empty() {
                models.remove(&id.name);
            } else {
                entry.choose_default(&id.name);
            }
            true
        });
        if !removed {
            return;
        }
        tracing::info!(model = %id.name, version = %id.version, "model removed; in-flight and queued requests finish first");
    }

    /// Turns readiness off for good (SIGTERM); requests are still served.
    pub fn start_draining(&self) {
        self.draining.store(true, Atomic::Release);
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Atomic::Acquire)
    }

    /// Counts a model declaration change that took effect.
    fn count_applied(&self) {
        self.metrics.config_reload(true);
    }

    fn reject(&self, file: &str, reason: String) {
        self.metrics.config_reload(false);
        let total = self.rejected_reloads.fetch_add(1, Atomic::AcqRel) + 1;
        tracing::error!(
            file,
            reason,
            rejected_total = total,
            "model declaration rejected; the model keeps its last good configuration"
        );
        self.events.emit(ServerEvent::ConfigRejected {
            file: file.to_string(),
            reason,
        });
    }

    /// Finds a serving model; `version` `None` means the default version.
    pub fn resolve(&self, name: &str, version: Option<&str>) -> Result<Arc<ServingModel>, Error> {
        self.find(name, version)?.serving()
    }

    /// The request path's lookup: under a lock that writers hold only to
    /// swap in a new model set.
    fn find(&self, name: &str, version: Option<&str>) -> Result<Arc<ModelVersion>, Error> {
        self.models.read(|models| {
            let entry = models
                .get(name)
                .ok_or_else(|| Error::ModelNotFound(name.to_string()))?;
            let version = version.unwrap_or(&entry.default_version);
            entry
                .versions
                .get(version)
                .cloned()
                .ok_or_else(|| Error::VersionNotFound {
                    model: name.to_string(),
                    version: version.to_string(),
                })
        })
    }

    /// Every model name, in order.
    pub fn model_names(&self) -> Vec<String> {
        self.models.read(|models| models.keys().cloned().collect())
    }

    /// The versions of a model, lowest first.
    pub fn versions(&self, name: &str) -> Result<Vec<String>, Error> {
        let mut versions: Vec<String> = self.models.read(|models| {
            let entry = models
                .get(name)
                .ok_or_else(|| Error::ModelNotFound(name.to_string()))?;
            Ok::<_, Error>(entry.versions.keys().cloned().collect())
        })?;
        versions.sort_by(|a, b| compare_versions(a, b));
        Ok(versions)
    }

    /// Readiness of one version (`None`: the default), by the same rule as
    /// `/ping`: not ready while draining.
    pub fn version_health(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<VersionHealth, Error> {
        let mut health = self.find(name, version)?.health();
        if self.is_draining() {
            health.healthy = false;
            health.detail = Some("the server is shutting down".into());
        }
        Ok(health)
    }

    /// Every version's state, for the metrics scrape.
    pub fn gauges(&self) -> Vec<VersionGauges> {
        // A snapshot: the scrape reads every pool without holding up lookups.
        let models = self.models.snapshot();
        models
            .values()
            .flat_map(|entry| entry.versions.values())
            .map(|version| version.gauges())
            .collect()
    }

    /// Healthy when every model's default version has `minWorkers` healthy
    /// workers (a loading or failed model is not healthy), there is at least
    /// one model unless the operator allowed an empty server, and the server
    /// is not draining. A version added after start counts once it is ready.
    pub fn health(&self) -> HealthReport {
        let models = self.models.snapshot();
        let mut failed_optional = Vec::new();
        let details: Vec<(String, VersionHealth, bool)> = models
            .iter()
            .map(|(name, entry)| {
                let version = &entry.versions[&entry.default_version];
                let health = version.health();
                let excused = version.excused(&health);
                if excused {
                    failed_optional.push(name.clone());
                }
                let counts = version.counts_for_readiness() && !excused;
                (name.clone(), health, counts)
            })
            .collect();
        let draining = self.is_draining();
        let healthy = !draining
            && (self.allow_empty || !details.is_empty())
            && details.iter().all(|(_, h, counts)| h.healthy || !counts);
        HealthReport {
            healthy,
            draining,
            models: details.into_iter().map(|(n, h, _)| (n, h)).collect(),
            failed_optional,
        }
    }
}

/// Reads a store artifact's configuration (with a declaration's settings
/// laid over it) into what it is built from. Errors carry the model name.
/// A `model_snapshot` entry that names this archive (`marName`) under
/// another version than its MANIFEST's: the archive's version is served, and
/// the entry's settings, keyed by the snapshot's version, do not apply.
fn warn_if_snapshot_disagrees(
    artifact: &ModelArtifact,
    versions: Option<&BTreeMap<String, serde_json::Map<String, serde_json::Value>>>,
) {
    let Some(manifest) = artifact.version.as_deref() else {
        return;
    };
    for (version, keys) in versions.into_iter().flatten() {
        let archive = keys.get("marName").and_then(serde_json::Value::as_str);
        let names_it = archive.and_then(|a| std::path::Path::new(a).file_name())
            == Some(std::ffi::OsStr::new(&artifact.origin));
        if names_it && version != manifest {
            tracing::warn!(
                "model_snapshot names {} as version '{}' of '{}', but its MANIFEST says version '{}': \
                 it serves as version '{}', without the snapshot's settings for '{}'",
                excerpt(&artifact.origin),
                excerpt(version),
                artifact.name,
                excerpt(manifest),
                excerpt(manifest),
                excerpt(version),
            );
        }
    }
}

fn recipe(
    artifact: ModelArtifact,
    declared: Option<&Declaration>,
    properties_entry: Option<&BTreeMap<String, serde_json::Map<String, serde_json::Value>>>,
    server: &ServerConfig,
) -> Result<(ModelId, Recipe), (ModelId, LoadFailure)> {
    let fail = |reason: String| {
        let version = declared
            .and_then(|d| d.version.clone())
            .or_else(|| artifact.version.clone())
            .unwrap_or_else(|| DEFAULT_VERSION.into());
        let id = ModelId {
            name: artifact.name.clone(),
            version,
        };
        (id, LoadFailure::new(LoadFailureKind::BadConfig, reason))
    };
    let base = artifact
        .config_file
        .as_ref()
        .map(|f| (f.origin.as_str(), f.text.as_str()));
    let file = match declared {
        Some(d) => Some(ModelConfigFile::layered(&d.file, base, &d.settings)),
        None => base.map(|(origin, text)| ModelConfigFile::parse(origin, text)),
    }
    .transpose()
    .map_err(|e| fail(e.to_string()))?;
    let version = declared
        .and_then(|d| d.version.clone())
        .or_else(|| file.as_ref().and_then(|f| f.version().map(str::to_string)))
        .or_else(|| artifact.version.clone())
        .unwrap_or_else(|| DEFAULT_VERSION.into());
    ModelId::check_version(&version)
        .map_err(|why| fail(format!("{}: version: {why}", artifact.origin)))?;
    let entry = properties_entry.and_then(|v| v.get(&version));
    let config = ModelConfig::resolve(&server.model_defaults, entry, file.as_ref());
    let handler: HandlerName =
        Handler::choose(config.session.ortserve.handler, artifact.handler.as_deref())
            .map_err(|reason| fail(format!("{}: {reason}", artifact.origin)))?;
    let id = ModelId {
        name: artifact.name.clone(),
        version,
    };
    Ok((
        id,
        Recipe {
            artifact,
            config,
            handler,
        },
    ))
}

/// Milliseconds to a tenth, for logs: a warm-up of a small model takes well under one.
fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 10_000.0).round() / 10.0
}

/// How often a model that is still loading says so.
const LOAD_PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Awaits `load`, logging every [`LOAD_PROGRESS_EVERY`] that it still runs:
/// a big graph's session build or a long warm-up should not look like a hang.
async fn with_progress<T>(id: &ModelId, config: &ModelConfig, load: impl Future<Output = T>) -> T {
    let began = tokio::time::Instant::now();
    let mut progress = tokio::time::interval_at(began + LOAD_PROGRESS_EVERY, LOAD_PROGRESS_EVERY);
    let startup_timeout_s = config.pool.startup_timeout.as_secs();
    tokio::pin!(load);
    loop {
        tokio::select! {
            done = &mut load => return done,
            _ = progress.tick() => {
                let elapsed_s = began.elapsed().as_secs();
                tracing::info!(model = %id.name, version = %id.version, elapsed_s, startup_timeout_s, "still loading model (building sessions and warming up)");
            }
        }
    }
}
