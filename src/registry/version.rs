//! One model version and where it stands: loading, serving or failed, its
//! health by `/ping`'s rule, and which version of a model is the default.
//! It never loads anything: the registry sets the outcome of a load here.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering as Atomic};
use std::sync::{Arc, RwLock};

use super::ServingModel;
use crate::scheduler::PoolHealth;
use crate::telemetry::VersionGauges;
use crate::types::{Error, LoadFailure, ModelId};

pub(super) enum VersionState {
    Loading,
    Ready(Arc<ServingModel>),
    Failed(LoadFailure),
}

/// One version of a model and where it stands.
pub struct ModelVersion {
    pub(super) id: ModelId,
    pub(super) min_workers: usize,
    /// `defaultVersion: true`; a reload may change it.
    pub(super) explicit_default: AtomicBool,
    /// Whether `/ping` waits for this version: versions configured at start
    /// do; one added later counts only once it is ready, so adding a model
    /// never turns a serving pod unready.
    pub(super) counts_for_readiness: AtomicBool,
    /// `ortserve.optional`: a failure to load does not fail readiness.
    pub(super) optional: bool,
    pub(super) state: RwLock<VersionState>,
}

impl ModelVersion {
    pub(super) fn new(
        id: ModelId,
        min_workers: usize,
        explicit_default: bool,
        at_start: bool,
        optional: bool,
    ) -> ModelVersion {
        ModelVersion {
            id,
            min_workers,
            explicit_default: AtomicBool::new(explicit_default),
            counts_for_readiness: AtomicBool::new(at_start),
            optional,
            state: RwLock::new(VersionState::Loading),
        }
    }

    pub(super) fn serving(&self) -> Result<Arc<ServingModel>, Error> {
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

    /// The serving model, if ready.
    pub(super) fn ready(&self) -> Option<Arc<ServingModel>> {
        self.serving().ok()
    }

    /// Swaps in a state; a replaced serving model drains once the requests
    /// holding it finish.
    pub(super) fn set(&self, state: VersionState) {
        if matches!(state, VersionState::Ready(_)) {
            self.counts_for_readiness.store(true, Atomic::Release);
        }
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Sets the outcome of a load, unless a reload replaced the version
    /// meanwhile (then the late model is dropped, and drains).
    pub(super) fn set_if_loading(&self, state: VersionState) {
        let mut current = self.state.write().unwrap_or_else(|e| e.into_inner());
        if matches!(*current, VersionState::Loading) {
            if matches!(state, VersionState::Ready(_)) {
                self.counts_for_readiness.store(true, Atomic::Release);
            }
            *current = state;
        }
    }

    pub(super) fn set_explicit_default(&self, explicit: bool) {
        self.explicit_default.store(explicit, Atomic::Release);
    }

    pub(super) fn counts_for_readiness(&self) -> bool {
        self.counts_for_readiness.load(Atomic::Acquire)
    }

    /// An optional version that failed: reported, but not waited for.
    pub(super) fn excused(&self, health: &VersionHealth) -> bool {
        self.optional && health.state == FAILED
    }

    /// The version's state for the metrics scrape, from one read of it.
    pub(super) fn gauges(&self) -> VersionGauges {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let VersionState::Ready(model) = &*state else {
            return VersionGauges::not_serving(self.id.clone(), self.min_workers);
        };
        let (health, load) = (model.health(), model.load());
        VersionGauges {
            model: self.id.clone(),
            ready: health.is_healthy(),
            queue_rows: load.queue_rows,
            workers_starting: load.live_workers.saturating_sub(load.ready_workers),
            workers_idle: load.ready_workers.saturating_sub(load.busy_workers),
            workers_busy: load.busy_workers.min(load.ready_workers),
            workers_recovering: health.recovering_workers,
            min_workers: health.min_workers,
            device: Some(model.device().to_string()),
        }
    }

    pub(super) fn health(&self) -> VersionHealth {
        let current = self.state.read().unwrap_or_else(|e| e.into_inner());
        let (state, failure, pool) = match &*current {
            VersionState::Loading => ("Loading", None, None),
            VersionState::Failed(failure) => (FAILED, Some(failure), None),
            VersionState::Ready(model) => ("Ready", None, Some(model.health())),
        };
        VersionHealth {
            version: self.id.version.clone(),
            state,
            detail: failure.map(|f| f.message.clone()),
            failure_kind: failure.map(|f| f.kind.as_str()),
            healthy: pool.is_some_and(|p| p.is_healthy()),
            ready_workers: pool.map_or(0, |p: PoolHealth| p.ready_workers),
            min_workers: pool.map_or(self.min_workers, |p| p.min_workers),
        }
    }
}

pub(super) struct ModelEntry {
    pub(super) versions: BTreeMap<String, Arc<ModelVersion>>,
    pub(super) default_version: String,
}

impl ModelEntry {
    /// The version marked `defaultVersion`, else the highest — among the
    /// versions that can serve (ready, or configured at start), so a version
    /// still loading never takes the default from one that serves.
    pub(super) fn choose_default(&mut self, name: &str) {
        let candidates: Vec<(String, bool)> = self
            .versions
            .values()
            .filter(|v| v.counts_for_readiness() || v.ready().is_some())
            .map(|v| {
                (
                    v.id.version.clone(),
                    v.explicit_default.load(Atomic::Acquire),
                )
            })
            .collect();
        if let Some(version) = pick_default(name, &candidates) {
            self.default_version = version;
        } else if !self.versions.contains_key(&self.default_version) {
            self.default_version = self.versions.keys().next().cloned().unwrap_or_default();
        }
    }
}

const FAILED: &str = "Failed";

/// Health of one default version, for `/ping`'s detail.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionHealth {
    pub version: String,
    pub state: &'static str,
    pub detail: Option<String>,
    /// Why it failed to load, as a kind (`bad_graph`, …), when it did.
    pub failure_kind: Option<&'static str>,
    pub healthy: bool,
    pub ready_workers: usize,
    pub min_workers: usize,
}

/// The server's health: every model's default version must be healthy.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    pub healthy: bool,
    pub draining: bool,
    pub models: Vec<(String, VersionHealth)>,
    /// Optional models that failed to load: healthy regardless, but named.
    pub failed_optional: Vec<String>,
}

/// The version marked `defaultVersion`, else the highest one; `None` when
/// there is none to choose from.
pub(super) fn pick_default(name: &str, versions: &[(String, bool)]) -> Option<String> {
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
        .cloned()
}

/// Orders versions by their dot-separated parts, numerically where both
/// parts are numbers (so 1.10 > 1.9); numbers rank above words.
pub(super) fn compare_versions(a: &str, b: &str) -> Ordering {
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
        assert_eq!(pick_default("m", &versions).as_deref(), Some("2.0"));
        let versions = vec![("1.0".to_string(), true), ("2.0".to_string(), false)];
        assert_eq!(pick_default("m", &versions).as_deref(), Some("1.0"));
        assert_eq!(pick_default("m", &[]), None);
    }
}
