//! What the control plane may read and change in the live model set: the
//! model list, a version's description, its worker range and the default
//! version. A change here goes through the same paths as a reload's: a
//! scale retunes the running pool in place, and lasts until the model's
//! declaration (or a reload of it) sets the range again.

use std::sync::Arc;
use std::sync::atomic::Ordering as Atomic;
use std::time::Duration;

use super::version::{ModelVersion, VersionState};
use super::{ModelRegistry, ServingModel};
use crate::scheduler::{PoolSettings, WorkerReport};
use crate::types::{Error, LoadFailure, ModelId, ModelIo};

/// One model in the list: its name and where its default version came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    pub name: String,
    pub url: String,
}

/// Which versions a description covers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VersionScope<'a> {
    Default,
    One(&'a str),
    All,
}

/// What a management client reads about one version.
#[derive(Debug, Clone)]
pub struct VersionReport {
    pub id: ModelId,
    /// The store entry or file it was built from.
    pub url: String,
    /// `Loading`, `Ready` or `Failed`.
    pub state: &'static str,
    pub is_default: bool,
    pub loaded_at_startup: bool,
    /// The pool's settings in force; none when its configuration failed.
    pub settings: Option<PoolSettings>,
    /// Where the sessions run (`cpu`, `cuda:0`); empty while not serving.
    pub device: String,
    pub workers: Vec<WorkerReport>,
    pub queued_rows: usize,
}

/// A worker range a client asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerRange {
    pub min: usize,
    pub max: usize,
}

impl WorkerRange {
    /// The most workers a client may ask for: `maxWorkers`' own bound.
    pub const MAX: usize = crate::config::MAX_WORKERS;
}

/// A scale under way, to wait on.
pub struct Scaling {
    model: Arc<ServingModel>,
    range: WorkerRange,
}

impl Scaling {
    /// Whether the ready workers came within the range (`min` started,
    /// those above `max` retired) within `patience`.
    pub async fn wait(&self, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let ready = self.model.health().ready_workers;
            if (self.range.min..=self.range.max).contains(&ready) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl ModelRegistry {
    /// Every model's default version, by name.
    pub fn list_models(&self) -> Vec<ModelSummary> {
        self.models.read(|models| {
            models
                .iter()
                .filter_map(|(name, entry)| {
                    let version = entry.versions.get(&entry.default_version)?;
                    Some(ModelSummary {
                        name: name.clone(),
                        url: version.origin.clone(),
                    })
                })
                .collect()
        })
    }

    /// Describes the default version, one version, or all of a model's.
    pub async fn describe(
        &self,
        name: &str,
        scope: VersionScope<'_>,
    ) -> Result<Vec<VersionReport>, Error> {
        let (versions, default) = self.models.read(|models| {
            let entry = models
                .get(name)
                .ok_or_else(|| Error::ModelNotFound(name.to_string()))?;
            let chosen: Vec<Arc<ModelVersion>> = match scope {
                VersionScope::All => entry.versions.values().cloned().collect(),
                VersionScope::Default => entry
                    .versions
                    .get(&entry.default_version)
                    .cloned()
                    .into_iter()
                    .collect(),
                VersionScope::One(version) => {
                    vec![entry.versions.get(version).cloned().ok_or_else(|| {
                        Error::VersionNotFound {
                            model: name.to_string(),
                            version: version.to_string(),
                        }
                    })?]
                }
            };
            Ok::<_, Error>((chosen, entry.default_version.clone()))
        })?;
        let mut reports = Vec::with_capacity(versions.len());
        for version in &versions {
            reports.push(report(version, version.id.version == default).await);
        }
        Ok(reports)
    }

    /// Sets a version's worker range in place; the version must be serving.
    pub fn scale(
        &self,
        name: &str,
        version: Option<&str>,
        range: WorkerRange,
    ) -> Result<Scaling, Error> {
        let model = self.resolve(name, version)?;
        let settings = PoolSettings {
            min_workers: range.min,
            max_workers: range.max,
            ..model.settings()
        };
        tracing::info!(model = %model.id.name, version = %model.id.version, min_workers = range.min, max_workers = range.max, "workers scaled through the management API");
        model.retune(settings);
        Ok(Scaling { model, range })
    }

    /// Makes `version` the model's default, as if it were declared
    /// `defaultVersion: true`, until a declaration says otherwise.
    pub fn set_default(&self, name: &str, version: &str) -> Result<(), Error> {
        let chosen = self.find(name, Some(version))?;
        self.models.update(|models| {
            let Some(entry) = models.get_mut(name) else {
                return;
            };
            for candidate in entry.versions.values() {
                let is_chosen = Arc::ptr_eq(candidate, &chosen);
                candidate.explicit_default.store(is_chosen, Atomic::Release);
            }
            entry.choose_default(name);
        });
        tracing::info!(
            model = name,
            version,
            "default version set through the management API"
        );
        Ok(())
    }
}

async fn report(version: &ModelVersion, is_default: bool) -> VersionReport {
    let model = version.ready();
    let workers = match &model {
        Some(model) => model.workers().await,
        None => Vec::new(),
    };
    VersionReport {
        id: version.id.clone(),
        url: version.origin.clone(),
        state: version.health().state,
        is_default,
        loaded_at_startup: version.loaded_at_startup,
        settings: match &model {
            Some(model) => Some(model.settings()),
            None => version.settings.clone(),
        },
        device: model.as_ref().map_or("", |m| m.device()).to_string(),
        workers,
        queued_rows: model.as_ref().map_or(0, |m| m.load().queue_rows),
    }
}

/// One version in the repository index: its state, and why when it is not
/// serving.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    pub id: ModelId,
    pub ready: bool,
    /// `Loading`, `Ready` or `Failed`.
    pub state: &'static str,
    pub reason: Option<String>,
}

impl ModelRegistry {
    /// Every version of every model, by name then version.
    pub fn index(&self) -> Vec<IndexEntry> {
        let versions: Vec<Arc<ModelVersion>> = self.models.read(|models| {
            models
                .values()
                .flat_map(|entry| entry.versions.values().cloned())
                .collect()
        });
        versions
            .iter()
            .map(|version| {
                let health = version.health();
                IndexEntry {
                    id: version.id.clone(),
                    ready: version.ready().is_some(),
                    state: health.state,
                    reason: health.detail,
                }
            })
            .collect()
    }
}

/// One version once its load is over, as `ortserve check` reports it.
#[derive(Debug, Clone)]
pub struct LoadOutcome {
    pub id: ModelId,
    /// The store entry or declaration it was built from.
    pub origin: String,
    /// Where it runs and its inputs and outputs, or why it did not load.
    pub result: Result<LoadedModel, LoadFailure>,
}

/// A version that loaded.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// `cpu`, `cuda:0`.
    pub device: String,
    pub io: ModelIo,
}

impl ModelRegistry {
    /// Waits until no version is loading (each load ends by its
    /// `startupTimeout`), then reports every version, by name then version.
    pub async fn load_outcomes(&self) -> Vec<LoadOutcome> {
        loop {
            let versions: Vec<Arc<ModelVersion>> = self.models.read(|models| {
                models
                    .values()
                    .flat_map(|entry| entry.versions.values().cloned())
                    .collect()
            });
            if let Some(outcomes) = versions.iter().map(|v| outcome(v)).collect() {
                return outcomes;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `None` while the version still loads.
fn outcome(version: &ModelVersion) -> Option<LoadOutcome> {
    let result = match &*version.state.read().unwrap_or_else(|e| e.into_inner()) {
        VersionState::Loading => return None,
        VersionState::Ready(model) => Ok(LoadedModel {
            device: model.device().to_string(),
            io: model.io().clone(),
        }),
        VersionState::Failed(failure) => Err(failure.clone()),
    };
    Some(LoadOutcome {
        id: version.id.clone(),
        origin: version.origin.clone(),
        result,
    })
}
