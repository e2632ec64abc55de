//! One model version and where it stands: loading, serving or failed, its
//! health by `/ping`'s rule, and which version of a model is the default.
//! It never loads anything: the registry sets the outcome of a load here.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering as Atomic};
use std::sync::{Arc, Mutex, RwLock};

use super::ServingModel;
use crate::scheduler::{PoolHealth, PoolSettings};
use crate::telemetry::VersionGauges;
use crate::types::{Error, LoadFailure, ModelId};

pub(super) enum VersionState {
    Loading,
    Ready(Arc<ServingModel>),
    Failed(LoadFailure),
}

/// Who put a version in service, which decides who may remove it.
#[derive(Debug, Clone, PartialEq)]
pub enum VersionSource {
    /// The model store at start (`load_models`, `--models`, a snapshot).
    Store,
    /// A declaration file (a mounted ConfigMap's), named.
    Declaration(String),
    ManagementApi,
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
    /// The store entry it was built from, as the management API shows it.
    pub(super) origin: String,
    pub(super) source: VersionSource,
    /// Its pool settings as configured; none when its configuration failed.
    pub(super) settings: Option<PoolSettings>,
    pub(super) loaded_at_startup: bool,
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
            origin: String::new(),
            source: VersionSource::Store,
            settings: None,
            loaded_at_startup: at_start,
        }
    }

    /// Records what the version is built from, for the management API.
    pub(super) fn built_from(
        self,
        origin: &str,
        source: VersionSource,
        settings: Option<PoolSettings>,
    ) -> ModelVersion {
        ModelVersion {
            origin: origin.to_string(),
            source,
            settings,
            ..self
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
        match &*self.state.read().unwrap_or_else(|e| e.into_inner()) {
            VersionState::Ready(model) => Some(model.clone()),
            _ => None,
        }
    }

    /// Swaps in a state; a replaced serving model drains once the requests
    /// holding it finish.
    pub(super) fn set(&self, state: VersionState) {
        if matches!(state, VersionState::Ready(_)) {
            self.counts_for_readiness.store(true, Atomic::Release);
        }
        let replaced = std::mem::replace(
            &mut *self.state.write().unwrap_or_else(|e| e.into_inner()),
            state,
        );
        // Dropped outside the lock that every request's lookup takes: it may
        // be the last reference to a serving model, whose pool then shuts down.
        drop(replaced);
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

    pub(super) fn is_explicit_default(&self) -> bool {
        self.explicit_default.load(Atomic::Acquire)
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
        // Read outside the state's lock, which request lookups share.
        let Some(model) = self.ready() else {
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
        // Read outside the state's lock, which request lookups share.
        let (state, failure, model) = match &*self.state.read().unwrap_or_else(|e| e.into_inner()) {
            VersionState::Loading => ("Loading", None, None),
            VersionState::Failed(failure) => {
                let why = (failure.message.clone(), failure.kind.as_str());
                (FAILED, Some(why), None)
            }
            VersionState::Ready(model) => ("Ready", None, Some(model.clone())),
        };
        let pool = model.map(|model| model.health());
        VersionHealth {
            version: self.id.version.clone(),
            state,
            failure_kind: failure.as_ref().map(|(_, kind)| *kind),
            detail: failure.map(|(message, _)| message),
            healthy: pool.is_some_and(|p| p.is_healthy()),
            ready_workers: pool.map_or(0, |p: PoolHealth| p.ready_workers),
            min_workers: pool.map_or(self.min_workers, |p| p.min_workers),
        }
    }
}

#[derive(Clone)]
pub(super) struct ModelEntry {
    pub(super) versions: BTreeMap<String, Arc<ModelVersion>>,
    pub(super) default_version: String,
}

/// Every model by name.
pub(super) type Models = BTreeMap<String, ModelEntry>;

/// The live model set, copy-on-write: a writer changes a copy and swaps it
/// in, so the lock a request's lookup takes is held by a writer only for
/// that swap, and by slow readers (scrapes, `/ping`) only to take a snapshot.
#[derive(Default)]
pub(super) struct ModelSet {
    current: RwLock<Arc<Models>>,
    /// One writer at a time, so no writer's change is lost.
    writer: Mutex<()>,
}

impl ModelSet {
    /// Looks something up in the current set.
    pub(super) fn read<R>(&self, look: impl FnOnce(&Models) -> R) -> R {
        look(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The current set, unchanged for as long as the caller keeps it.
    pub(super) fn snapshot(&self) -> Arc<Models> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Applies `change` to a copy of the set, then publishes the copy.
    pub(super) fn update<R>(&self, change: impl FnOnce(&mut Models) -> R) -> R {
        let _one_writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Models::clone(&self.snapshot());
        let result = change(&mut next);
        let previous = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|e| e.into_inner()),
            Arc::new(next),
        );
        // Dropped outside the lock: it may hold the last reference to a
        // removed version, whose pool then shuts down.
        drop(previous);
        result
    }
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
            .map(|v| (v.id.version.clone(), v.is_explicit_default()))
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

    fn entry(default_version: &str) -> ModelEntry {
        ModelEntry {
            versions: BTreeMap::new(),
            default_version: default_version.into(),
        }
    }

    #[test]
    fn lookups_read_the_last_set_while_a_writer_builds_the_next() {
        let set = ModelSet::default();
        set.update(|models| models.insert("a".into(), entry("1")));
        let before = set.snapshot();
        set.update(|models| {
            // With the lock held for the whole change, this would deadlock.
            assert!(set.read(|current| current.contains_key("a")));
            models.remove("a");
            models.insert("b".into(), entry("2"));
        });
        assert_eq!(set.read(|m| m.keys().cloned().collect::<Vec<_>>()), ["b"]);
        assert!(before.contains_key("a"), "a snapshot stays as it was taken");
    }

    #[test]
    fn writers_in_turn_lose_no_change() {
        let set = std::sync::Arc::new(ModelSet::default());
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let set = set.clone();
                std::thread::spawn(move || {
                    set.update(|models| models.insert(format!("m{i}"), entry("1")));
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        assert_eq!(set.read(|m| m.len()), 8);
    }

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
