//! Test-only ways to fill a registry without model files: a version served
//! by any [`RunnerFactory`] (the scheduler's fake), one still loading and
//! one that failed, so the protocols can be driven in-process over every
//! state a model can be in.

use std::sync::Arc;
use std::time::Duration;

use super::ModelRegistry;
use super::load::{self, Recipe};
use super::version::{ModelVersion, VersionState};
use crate::config::{HandlerName, ModelConfig, ModelDefaults};
use crate::scheduler::RunnerFactory;
/// The scheduler's scriptable fake, for the tests of modules that must not
/// reach into the scheduler themselves (the protocols).
pub(crate) use crate::scheduler::fake::{FakeModel, Script};
use crate::store::{ModelArtifact, ModelFile};
use crate::telemetry::Metrics;
use crate::types::{EventSink, LoadFailure, ModelId};

/// Where a fake version "comes from", in logs and load failures.
const FAKE_ORIGIN: &str = "fake.onnx";

/// The configuration of a small model: one worker, no batching, no
/// warm-up, TorchServe's default queue and timeouts. Tests change fields.
pub(crate) fn fake_config() -> ModelConfig {
    let defaults = ModelDefaults {
        cores: 2,
        workers: 1,
        job_queue_size: 100,
        response_timeout_secs: 120,
        cpu_fallback: false,
    };
    let mut config = ModelConfig::resolve(&defaults, None, None);
    config.pool.warmup = false;
    config.pool.startup_timeout = Duration::from_secs(10);
    config
}

impl ModelRegistry {
    /// An empty registry (which `/ping` calls unhealthy unless `allow_empty`).
    pub(crate) fn for_tests(allow_empty: bool, metrics: Arc<Metrics>) -> Arc<ModelRegistry> {
        ModelRegistry::new(allow_empty, 2, EventSink::default(), metrics)
    }

    /// Builds a version whose workers `factory` starts, with the tensor
    /// handler, registers it as configured at start and waits until it
    /// serves (or failed, whose reason is returned).
    pub(crate) async fn serve_fake(
        &self,
        id: ModelId,
        factory: RunnerFactory,
        config: ModelConfig,
    ) -> Result<(), LoadFailure> {
        let version = self.register(&id, &config);
        let recipe = fake_recipe(&id, config);
        let (heavy_work, metrics) = (self.heavy_work.clone(), self.metrics.model(&id));
        let built = load::build_with(&id, &recipe, factory, heavy_work, metrics).await;
        let (state, outcome) = match built {
            Ok((model, _)) => (VersionState::Ready(Arc::new(model)), Ok(())),
            Err(failure) => (VersionState::Failed(failure.clone()), Err(failure)),
        };
        version.set_if_loading(state);
        self.choose_default(&id.name);
        outcome
    }

    /// Registers a version, configured at start, that is still loading.
    pub(crate) fn add_loading(&self, id: ModelId) {
        self.register(&id, &fake_config());
    }

    /// Registers a version that failed to load, as the store's broken
    /// entries are.
    pub(crate) fn add_failed_version(&self, id: ModelId, failure: LoadFailure) {
        self.add_failed(id, failure);
    }

    /// A loading version, inserted as `add` inserts one configured at start.
    fn register(&self, id: &ModelId, config: &ModelConfig) -> Arc<ModelVersion> {
        let version = Arc::new(ModelVersion::new(
            id.clone(),
            config.pool.min_workers,
            config.pool.default_version,
            true,
            config.session.ortserve.optional,
        ));
        assert!(
            self.insert(version.clone(), FAKE_ORIGIN),
            "{id} is already registered"
        );
        version
    }
}

/// What a fake version is built from: no file is ever read from it.
fn fake_recipe(id: &ModelId, config: ModelConfig) -> Recipe {
    Recipe {
        artifact: ModelArtifact {
            name: id.name.clone(),
            version: Some(id.version.clone()),
            origin: FAKE_ORIGIN.into(),
            model_file: ModelFile::Path(FAKE_ORIGIN.into()),
            handler: None,
            config_file: None,
            side_files: Default::default(),
            declared_io: None,
        },
        config,
        handler: HandlerName::Tensor,
    }
}
