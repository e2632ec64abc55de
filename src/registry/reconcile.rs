//! Applies model declarations: at start, then each time the declaration set
//! changes. This task is the only writer of declared models. For each file
//! it compares the new declaration with what that file last put in service:
//!
//! * a new file loads its model (which counts for readiness once ready);
//! * a removed file removes its model; in-flight and queued requests finish;
//! * a change of workers, batching, queue or timeouts retunes the running
//!   pool in place;
//! * any other change (model file, device, engine or handler options) builds
//!   the model anew — new sessions first — then switches traffic to it, and
//!   the old one drains;
//! * a bad file is refused whole: its model keeps its last good config.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::load::{self, Recipe};
use super::{ModelRegistry, VersionSource, VersionState, recipe};
use crate::config::{Declaration, DeclarationSet, ServerConfig};
use crate::store;
use crate::types::{LoadFailure, LoadFailureKind, ModelId};

/// What one file last put in service.
struct Applied {
    id: ModelId,
    source: String,
    /// `None` when the file was bad at start and its model failed.
    recipe: Option<Recipe>,
}

/// The one owner of what the declaration files have applied.
pub struct Reconciler {
    registry: Arc<ModelRegistry>,
    server: Arc<ServerConfig>,
    applied: BTreeMap<String, Applied>,
}

impl Reconciler {
    /// Loads the declarations present at start. Like store models, they
    /// count for readiness while they load, and a bad file fails its model.
    pub fn start(
        registry: Arc<ModelRegistry>,
        server: Arc<ServerConfig>,
        set: &DeclarationSet,
    ) -> Reconciler {
        let mut reconciler = Reconciler {
            registry,
            server,
            applied: BTreeMap::new(),
        };
        for (file, declared) in &set.files {
            let outcome = declared
                .as_ref()
                .map_err(|reason| {
                    let failure = LoadFailure::new(LoadFailureKind::BadConfig, reason.clone());
                    (failed_id(file), failure)
                })
                .and_then(|d| reconciler.open(d).map(|(id, recipe)| (d, id, recipe)));
            match outcome {
                Ok((declaration, id, recipe)) => {
                    let source = VersionSource::Declaration(file.clone());
                    reconciler
                        .registry
                        .add(id.clone(), recipe.clone(), source, true);
                    reconciler.remember(file, declaration, id, Some(recipe));
                }
                Err((id, failure)) => {
                    reconciler.registry.add_failed(id.clone(), failure);
                    let source = String::new();
                    let applied = Applied {
                        id,
                        source,
                        recipe: None,
                    };
                    reconciler.applied.insert(file.clone(), applied);
                }
            }
        }
        reconciler
    }

    /// Applies each new set as it is published, until the publisher stops.
    pub async fn follow(mut self, mut updates: watch::Receiver<DeclarationSet>) {
        while updates.changed().await.is_ok() {
            let set = updates.borrow_and_update().clone();
            self.apply(&set).await;
        }
    }

    async fn apply(&mut self, set: &DeclarationSet) {
        let gone: Vec<String> = self
            .applied
            .keys()
            .filter(|file| !set.files.contains_key(*file))
            .cloned()
            .collect();
        for file in gone {
            let applied = self.applied.remove(&file).expect("listed above");
            tracing::info!(file, model = %applied.id, "model declaration removed");
            self.registry.remove(&applied.id);
            self.registry.count_applied();
        }
        for (file, declared) in &set.files {
            match declared {
                Ok(declaration) => self.apply_file(file, declaration).await,
                Err(reason) => self.registry.reject(file, reason.clone()),
            }
        }
    }

    async fn apply_file(&mut self, file: &str, declaration: &Declaration) {
        let (id, recipe) = match self.open(declaration) {
            Ok(opened) => opened,
            Err((_, failure)) => return self.registry.reject(file, failure.message),
        };
        let previous = self.applied.get(file);
        if previous.is_some_and(|p| p.id != id) {
            // Renamed or re-versioned: the old version goes, the new one comes.
            let old = self.applied.remove(file).expect("checked above");
            self.registry.remove(&old.id);
        }
        let Some(previous) = self.applied.get(file) else {
            if self.registry.version(&id).is_some() {
                let reason = format!(
                    "{file}: model {} version {} is already served (from the model store or another declaration)",
                    id.name, id.version
                );
                return self.registry.reject(file, reason);
            }
            tracing::info!(file, model = %id, "model declared; loading it");
            let source = VersionSource::Declaration(file.to_string());
            self.registry.add(id.clone(), recipe.clone(), source, false);
            self.registry.count_applied();
            return self.remember(file, declaration, id, Some(recipe));
        };
        let unchanged = previous.source == declaration.source
            && previous
                .recipe
                .as_ref()
                .is_some_and(|old| old.config == recipe.config && old.handler == recipe.handler);
        if unchanged {
            return;
        }
        let retunable = previous.source == declaration.source
            && previous.recipe.as_ref().is_some_and(|old| {
                old.handler == recipe.handler && load::retunable(&old.config, &recipe.config)
            });
        let done = if retunable {
            self.retune(file, &id, &recipe)
        } else {
            self.replace(file, &id, &recipe).await
        };
        if done {
            self.registry.count_applied();
            self.remember(file, declaration, id, Some(recipe));
        }
    }

    /// Applies pool settings to the running version; true when applied.
    fn retune(&self, file: &str, id: &ModelId, recipe: &Recipe) -> bool {
        let Some(version) = self.registry.version(id) else {
            return false;
        };
        let Some(model) = version.ready() else {
            // Still loading (or failed): nothing runs to retune, so rebuild.
            return false;
        };
        if let Err(reason) = load::check_fits(model.io(), &recipe.config) {
            self.registry.reject(file, format!("{file}: {reason}"));
            return false;
        }
        model.retune(load::pool_settings(&recipe.config));
        version.set_explicit_default(recipe.config.pool.default_version);
        self.registry.choose_default(&id.name);
        true
    }

    /// Builds the new version while the old one serves, then switches; the
    /// old one drains. A build that fails leaves the old one serving.
    async fn replace(&self, file: &str, id: &ModelId, recipe: &Recipe) -> bool {
        let Some(version) = self.registry.version(id) else {
            return false;
        };
        tracing::info!(file, model = %id, "model declaration changed; building new sessions before switching");
        match self.registry.build(id, recipe).await {
            Ok(model) => {
                version.set(VersionState::Ready(Arc::new(model)));
                version.set_explicit_default(recipe.config.pool.default_version);
                self.registry.choose_default(&id.name);
                tracing::info!(file, model = %id, "switched to the new sessions; the old ones drain");
                true
            }
            Err(failure) => {
                self.registry.reject(file, failure.message);
                false
            }
        }
    }

    /// Opens the declared model in the store and resolves its settings.
    fn open(&self, declaration: &Declaration) -> Result<(ModelId, Recipe), (ModelId, LoadFailure)> {
        let server = &self.server;
        let artifact = store::open_declared(
            server.model_store.as_deref(),
            &declaration.source,
            &declaration.name,
            declaration.version.as_deref(),
            server.max_model_size,
        )
        .map_err(|broken| {
            let id = ModelId {
                name: declaration.name.clone(),
                version: declaration
                    .version
                    .clone()
                    .unwrap_or_else(|| super::DEFAULT_VERSION.into()),
            };
            let message = format!("{}: source: {}", declaration.file, broken.error);
            (id, LoadFailure::new(LoadFailureKind::BadArchive, message))
        })?;
        recipe(artifact, Some(declaration), None, server)
    }

    fn remember(
        &mut self,
        file: &str,
        declaration: &Declaration,
        id: ModelId,
        recipe: Option<Recipe>,
    ) {
        let applied = Applied {
            id,
            source: declaration.source.clone(),
            recipe,
        };
        self.applied.insert(file.to_string(), applied);
    }
}

/// The model a bad file stands for: named after the file.
fn failed_id(file: &str) -> ModelId {
    let name = std::path::Path::new(file)
        .file_stem()
        .map_or_else(|| file.to_string(), |s| s.to_string_lossy().into_owned());
    ModelId {
        name,
        version: super::DEFAULT_VERSION.into(),
    }
}
