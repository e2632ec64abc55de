//! Registering and unregistering models through the management API.
//!
//! A registration names a model store entry, or an absolute local path that
//! `allowed_urls` admits; nothing is ever downloaded. The path is checked,
//! normalised, before any file is opened. The model is built as a reload
//! builds one, and only switched in once it serves: a registration that
//! fails leaves nothing behind. A model a declaration file put in service
//! belongs to that file and cannot be unregistered here.
//!
//! Changes are serialised: one registration or unregistration at a time, so
//! the loser of a race sees the winner's outcome (409, 404) rather than half
//! of it.

use std::path::{Component, Path};
use std::sync::Arc;
use std::time::Duration;

use super::version::{ModelVersion, VersionSource, VersionState};
use super::{ModelRegistry, load, recipe};
use crate::config::{LoadModels, ModelRef, ServerConfig};
use crate::store;
use crate::types::{Error, LoadFailure, LoadFailureKind, ModelId, excerpt};

/// What a client asked to register (`POST /models`), its settings laid over
/// the model's own `model-config.yaml`.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub url: String,
    pub model_name: Option<String>,
    pub initial_workers: Option<usize>,
    pub batch_size: Option<usize>,
    pub max_batch_delay: Option<Duration>,
    pub response_timeout: Option<Duration>,
    pub startup_timeout: Option<Duration>,
}

impl ModelRegistry {
    /// Registers every version the entry holds. `synchronous`: answers once
    /// they serve (each with its worker count), or fails and leaves nothing;
    /// otherwise loads in the background, removing what fails to load.
    pub async fn register_model(
        self: &Arc<Self>,
        server: &ServerConfig,
        request: Registration,
        synchronous: bool,
    ) -> Result<Vec<(ModelId, usize)>, Error> {
        let _one_change = self.control.lock().await;
        let source = locate(server, &request.url)?;
        if let Some(name) = &request.model_name {
            ModelId::check_name(name)
                .map_err(|why| Error::BadInput(format!("model_name '{}': {why}", excerpt(name))))?;
        }
        let models = LoadModels::List(vec![ModelRef {
            name: request.model_name.clone(),
            archive: source,
        }]);
        let mut recipes = Vec::new();
        for found in store::discover(
            server.model_store.as_deref(),
            &models,
            server.max_model_size,
        ) {
            let artifact = found.map_err(|broken| {
                Error::BadInput(format!("url '{}': {}", excerpt(&request.url), broken.error))
            })?;
            let properties = server.model_entries.get(&artifact.name);
            let (id, mut recipe) = recipe(artifact, None, properties, server)
                .map_err(|(_, failure)| Error::BadInput(failure.message))?;
            request.apply(&mut recipe.config);
            if self.version(&id).is_some() {
                return Err(Error::Conflict(format!(
                    "Model version {} is already registered for model {}",
                    id.version, id.name
                )));
            }
            recipes.push((id, recipe));
        }
        let mut registered = Vec::new();
        for (id, recipe) in recipes {
            if !recipe.config.pool.default_version {
                self.keep_default(&id.name);
            }
            let workers = recipe.config.pool.min_workers;
            let version = Arc::new(
                ModelVersion::new(
                    id.clone(),
                    workers,
                    recipe.config.pool.default_version,
                    false,
                    false,
                )
                .built_from(
                    &recipe.artifact.origin,
                    VersionSource::ManagementApi,
                    Some(load::pool_settings(&recipe.config)),
                ),
            );
            if !self.insert(version.clone(), &recipe.artifact.origin) {
                // A declaration took this version meanwhile.
                return Err(Error::Conflict(format!(
                    "Model version {} is already registered for model {}",
                    id.version, id.name
                )));
            }
            let build = {
                let registry = self.clone();
                async move { registry.build_registered(&version, &recipe).await }
            };
            match synchronous {
                true => build.await?,
                false => drop(tokio::spawn(build)),
            }
            registered.push((id, workers));
        }
        Ok(registered)
    }

    /// Marks `name`'s default version as chosen, unless one already is, so
    /// that a version registered beside it does not take the default by
    /// being higher: as in TorchServe, a new version answers under its own
    /// path until `set-default` names it (a canary, before its traffic).
    fn keep_default(&self, name: &str) {
        self.models.read(|models| {
            let Some(entry) = models.get(name) else {
                return;
            };
            let chosen = entry.versions.values().any(|v| v.is_explicit_default());
            if let Some(current) = entry.versions.get(&entry.default_version)
                && !chosen
            {
                current.set_explicit_default(true);
            }
        });
    }

    /// Builds a registered version; one that fails is removed again.
    async fn build_registered(
        &self,
        version: &Arc<ModelVersion>,
        recipe: &load::Recipe,
    ) -> Result<(), Error> {
        let id = &version.id;
        match self.build(id, recipe).await {
            Ok(model) => {
                version.set_if_loading(VersionState::Ready(Arc::new(model)));
                self.choose_default(&id.name);
                tracing::info!(model = %id.name, version = %id.version, "model registered through the management API");
                Ok(())
            }
            Err(failure) => {
                self.remove(id);
                Err(load_error(id, failure))
            }
        }
    }

    /// Unregisters a version (`None`: the default one). The default version
    /// goes only when it is the last; a declared model stays with its file.
    pub async fn unregister_model(&self, name: &str, version: Option<&str>) -> Result<(), Error> {
        let _one_change = self.control.lock().await;
        let chosen = self.find(name, version)?;
        if let VersionSource::Declaration(file) = &chosen.source {
            return Err(declared_conflict(&chosen, file));
        }
        let (default, count) = self.models.read(|models| {
            let entry = models.get(name);
            entry.map_or((String::new(), 0), |e| {
                (e.default_version.clone(), e.versions.len())
            })
        });
        if chosen.id.version == default && count > 1 {
            return Err(Error::DefaultVersionInUse {
                model: name.to_string(),
            });
        }
        self.remove(&chosen.id);
        tracing::info!(model = %chosen.id.name, version = %chosen.id.version, "model unregistered through the management API");
        Ok(())
    }
}

impl ModelRegistry {
    /// Unregisters every version of a model (the repository APIs' unload);
    /// a declared one stays with its file.
    pub async fn unregister_all(&self, name: &str) -> Result<(), Error> {
        let _one_change = self.control.lock().await;
        let versions: Vec<Arc<ModelVersion>> = self.models.read(|models| {
            let entry = models.get(name);
            entry.map_or_else(Vec::new, |e| e.versions.values().cloned().collect())
        });
        if versions.is_empty() {
            return Err(Error::ModelNotFound(name.to_string()));
        }
        if let Some(declared) = versions.iter().find_map(|v| match &v.source {
            VersionSource::Declaration(file) => Some((v, file)),
            _ => None,
        }) {
            return Err(declared_conflict(declared.0, declared.1));
        }
        for version in versions {
            self.remove(&version.id);
        }
        tracing::info!(model = name, "model unloaded through a repository API");
        Ok(())
    }
}

fn declared_conflict(version: &ModelVersion, file: &str) -> Error {
    Error::Conflict(format!(
        "model \"{}\" version {} is declared in {}; remove or edit that file to unregister it",
        version.id.name,
        version.id.version,
        excerpt(file)
    ))
}

impl Registration {
    /// The request's settings, over the model's own (TorchServe's order).
    fn apply(&self, config: &mut crate::config::ModelConfig) {
        let pool = &mut config.pool;
        if let Some(workers) = self.initial_workers {
            pool.min_workers = workers;
            pool.max_workers = pool.max_workers.max(workers);
        }
        if let Some(batch_size) = self.batch_size {
            pool.batch_size = batch_size;
        }
        if let Some(delay) = self.max_batch_delay {
            pool.max_batch_delay = delay;
        }
        if let Some(timeout) = self.response_timeout {
            pool.response_timeout = timeout;
        }
        if let Some(timeout) = self.startup_timeout {
            pool.startup_timeout = timeout;
        }
    }
}

/// A failed build as the client sees it: what it sent was wrong (400), or
/// the server could not start it (500).
fn load_error(id: &ModelId, failure: LoadFailure) -> Error {
    match failure.kind {
        LoadFailureKind::BadArchive
        | LoadFailureKind::BadConfig
        | LoadFailureKind::BadGraph
        | LoadFailureKind::UnsupportedIo => Error::BadInput(format!(
            "model \"{}\" version {} cannot load ({}): {}",
            id.name,
            id.version,
            failure.kind.as_str(),
            failure.message
        )),
        _ => Error::LoadFailed(format!(
            "Failed to start workers for model {} version: {}: {}",
            id.name, id.version, failure.message
        )),
    }
}

/// Where a registration's `url` points, as a `load_models` entry: a store
/// entry's name, or a normalised absolute path inside the model store or
/// admitted by `allowed_urls`. Checked before any file is opened.
fn locate(server: &ServerConfig, url: &str) -> Result<String, Error> {
    let bad = |why: String| Error::BadInput(format!("url '{}': {why}", excerpt(url)));
    let path = match url.split_once("://") {
        Some(("file", path)) => path,
        Some((scheme, _)) => {
            return Err(bad(format!(
                "ortserve never downloads models, so {} URLs are refused; copy the archive into the model store and register it by file name",
                excerpt(scheme)
            )));
        }
        None => url,
    };
    if !Path::new(path).is_absolute() {
        return store_entry(path).map_err(bad);
    }
    // Checked as written before the filesystem is asked anything (so a
    // path outside the allowed roots learns nothing of what exists), then
    // again with links resolved (so a link cannot lead out of them).
    let outside = || {
        bad(
            "the path is outside the model store and allowed_urls does not admit it; \
             add a pattern for it to allowed_urls or copy it into the model store"
                .into(),
        )
    };
    let written = Path::new(path);
    no_parent(written).map_err(bad)?;
    if !admitted(server, written) {
        return Err(outside());
    }
    let normal = std::fs::canonicalize(written).map_err(|e| bad(format!("cannot be read: {e}")))?;
    if !admitted(server, &normal) {
        return Err(outside());
    }
    Ok(normal.to_string_lossy().into_owned())
}

/// `..` is refused outright, before any lookup.
fn no_parent(path: &Path) -> Result<(), String> {
    match path.components().any(|c| c == Component::ParentDir) {
        true => Err("'..' is not allowed in a path".into()),
        false => Ok(()),
    }
}

/// Whether an absolute path is inside the model store (as configured, or
/// with its links resolved) or admitted by `allowed_urls`.
fn admitted(server: &ServerConfig, path: &Path) -> bool {
    let in_store = server.model_store.as_deref().is_some_and(|store| {
        path.starts_with(store) || std::fs::canonicalize(store).is_ok_and(|s| path.starts_with(s))
    });
    in_store || server.model_api.allowed_urls.permits(path)
}

/// A name in the model store: one entry, no folders, no climbing out.
fn store_entry(name: &str) -> Result<String, String> {
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) => Ok(name.to_string()),
        _ => Err("Relative path is not allowed in url: name a model store entry by its file or directory name, or give an absolute path".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_entries_are_single_names() {
        assert_eq!(store_entry("squeezenet.mar").unwrap(), "squeezenet.mar");
        for climbing in ["../fake.mar", "a/b.mar", ".", "..", "./a.mar"] {
            assert!(store_entry(climbing).is_err(), "{climbing}");
        }
    }

    #[test]
    fn paths_with_parent_components_are_refused_before_any_lookup() {
        let error = no_parent(Path::new("/models/../etc/passwd")).unwrap_err();
        assert_eq!(error, "'..' is not allowed in a path");
    }
}
