//! How a model version is built: session options from its configuration,
//! the engine's session adapted to the scheduler's [`Runner`] seam, the
//! worker pool, and the checks that the graph fits its handler and settings.
//! The registry decides when to build; this module only knows how.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::ServingModel;
use crate::config::{DeviceType, HandlerName, ModelConfig, visible_cuda_devices};
use crate::engine::{
    Device, DeviceRequest, EngineError, EngineSession, RunControl, SessionOptions,
};
use crate::handlers::{Handler, text_generation};
use crate::scheduler::{
    Canceller, PoolSettings, PoolStart, RunError, Runner, RunnerDevice, RunnerFactory, StartTimes,
    StartedRunner, WorkerPool,
};
use crate::store::{ModelArtifact, ModelFile, check_declared_io};
use crate::telemetry::ModelMetrics;
use crate::types::{LoadFailure, LoadFailureKind, ModelId, ModelIo, Tensor};

/// What a model version is built from. A reload compares the old recipe with
/// the new one to choose between retuning in place and building anew.
#[derive(Debug, Clone)]
pub(super) struct Recipe {
    pub artifact: ModelArtifact,
    pub config: ModelConfig,
    pub handler: HandlerName,
}

/// Starts the workers (ORT sessions of the recipe's model file) and checks
/// the model fits its handler and settings. The error is the reason,
/// prefixed by the artifact's origin.
pub(super) async fn build(
    id: &ModelId,
    recipe: &Recipe,
    heavy_work: Arc<Semaphore>,
    metrics: Arc<ModelMetrics>,
) -> Result<(ServingModel, StartTimes), LoadFailure> {
    let factory = runner_factory(
        recipe.artifact.model_file.clone(),
        &recipe.config,
        recipe.handler,
    );
    build_with(id, recipe, factory, heavy_work, metrics).await
}

/// As [`build`], with the workers' runners started by `factory` (the tests
/// pass the scheduler's fake).
pub(super) async fn build_with(
    id: &ModelId,
    recipe: &Recipe,
    factory: RunnerFactory,
    heavy_work: Arc<Semaphore>,
    metrics: Arc<ModelMetrics>,
) -> Result<(ServingModel, StartTimes), LoadFailure> {
    let Recipe {
        artifact,
        config,
        handler,
    } = recipe;
    let built = WorkerPool::start(id.clone(), pool_settings(config), factory, metrics.clone())
        .await
        .and_then(|(pool, PoolStart { device, times })| {
            let unfit = |message: String| LoadFailure::new(LoadFailureKind::UnsupportedIo, message);
            check_fits(pool.io(), config).map_err(unfit)?;
            if let Some(declared) = &artifact.declared_io {
                let shapes = |specs: &[crate::types::TensorSpec]| -> Vec<(String, Vec<i64>)> {
                    specs.iter().map(|s| (s.name.clone(), s.shape.clone())).collect()
                };
                check_declared_io(declared, &shapes(&pool.io().inputs), &shapes(&pool.io().outputs))
                    .map_err(unfit)?;
            }
            let handler = Handler::new(*handler, &config.session.ortserve, pool.io(), &artifact.side_files)
                .map_err(unfit)?;
            if let Some(reason) = &device.fallback_reason {
                match config.session.device_type {
                    Some(DeviceType::Gpu) => tracing::warn!(model = %id, reason, "deviceType is gpu but CUDA is unusable; serving on CPU because CPU fallback is allowed (ortserve.cpuFallback or --cpu-fallback)"),
                    _ => tracing::info!(model = %id, "CUDA is not available here; serving on CPU"),
                }
            }
            let model = ServingModel::new(
                id.clone(),
                handler,
                pool,
                heavy_work,
                &config.session.ortserve,
                metrics,
                device.name,
            );
            Ok((model, times))
        });
    built.map_err(|failure| failure.prefixed(&artifact.origin))
}

/// The settings that need the graph: a batch size above 1 needs a batch
/// axis, and the explained output must exist.
pub(super) fn check_fits(io: &ModelIo, config: &ModelConfig) -> Result<(), String> {
    if config.pool.batch_size > 1 && !io.has_batch_axis() {
        let blocker = io
            .batch_blocker()
            .expect("no batch axis means some tensor blocks it");
        return Err(format!(
            "batchSize is {} but '{}' has shape {}, without a dynamic first (batch) axis; \
             set batchSize: 1 or export the model with a dynamic batch axis",
            config.pool.batch_size,
            blocker.name,
            blocker.shape_text()
        ));
    }
    let explain_output = config.session.ortserve.explain.output;
    if explain_output >= io.outputs.len() {
        return Err(format!(
            "ortserve.explain.output is {explain_output} but the model has {} outputs (numbered from 0)",
            io.outputs.len()
        ));
    }
    Ok(())
}

/// Whether a running version can take `new` in place: only its pool
/// settings changed (workers, batching, queue, timeouts, warm-up, the
/// default-version flag), not what its sessions were built with.
pub(super) fn retunable(old: &ModelConfig, new: &ModelConfig) -> bool {
    old.session == new.session
}

pub(super) fn pool_settings(config: &ModelConfig) -> PoolSettings {
    let pool = &config.pool;
    PoolSettings {
        min_workers: pool.min_workers,
        max_workers: pool.max_workers,
        batch_size: pool.batch_size,
        max_batch_delay: pool.max_batch_delay,
        response_timeout: pool.response_timeout,
        startup_timeout: pool.startup_timeout,
        max_retry_timeout: pool.max_retry_timeout,
        queue_rows: pool.job_queue_size,
        idle_timeout: pool.worker_idle_timeout,
        inline_run_limit: pool.inline_run_limit,
        warmup: pool.warmup,
    }
}

/// Starts a model's workers' runners (ORT sessions), spreading them
/// round-robin over `deviceIds` (else the visible GPUs) and sharing the cores
/// among them.
fn runner_factory(file: ModelFile, config: &ModelConfig, handler: HandlerName) -> RunnerFactory {
    let decoder = handler == HandlerName::TextGeneration;
    let options = &config.session.ortserve;
    let intra = options
        .intra_op_threads
        .unwrap_or((config.session.cores / config.pool.max_workers).max(1));
    let devices = if config.session.device_ids.is_empty() {
        visible_cuda_devices()
    } else {
        config.session.device_ids.clone()
    };
    let device_type = config.session.device_type;
    let cpu_fallback = config.session.cpu_fallback;
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
        let session = file
            .with_source(|source| EngineSession::build(source, &options))
            .map_err(|e| LoadFailure::new(LoadFailureKind::BadArchive, e.to_string()))?
            .map_err(engine_failure)?;
        Ok(OrtRunner::started(session, decoder))
    })
}

/// What to do when a model asks for a GPU this node cannot give it.
const CUDA_ADVICE: &str = "the model asks for deviceType: gpu; run it on a node with an NVIDIA GPU \
     and the CUDA image, set deviceType: cpu, or let it serve on CPU with ortserve.cpuFallback: true \
     (or --cpu-fallback)";

/// The kind of an engine error at session build.
fn engine_failure(error: EngineError) -> LoadFailure {
    let kind = match error {
        EngineError::Session(_) => LoadFailureKind::BadGraph,
        EngineError::Cuda(_) => LoadFailureKind::CudaUnusable,
        EngineError::UnsupportedIo(_) => LoadFailureKind::UnsupportedIo,
        _ => LoadFailureKind::WorkerStart,
    };
    let message = match kind {
        LoadFailureKind::CudaUnusable => format!("{error}; {CUDA_ADVICE}"),
        _ => error.to_string(),
    };
    LoadFailure::new(kind, message)
}

/// The engine's session behind the scheduler's [`Runner`] seam. A batch
/// reuses the last batch's ORT run options only when they are idle
/// ([`RunControl::is_idle`]): never cancelled, and with no canceller left
/// that could stop the new run (the worker drops it when the run ends).
struct OrtRunner {
    session: EngineSession,
    /// A `text_generation` model: warmed up with a decoder's first step.
    decoder: bool,
    /// The run options [`Runner::canceller`] readied for the next run.
    next_run: Option<RunControl>,
    /// The last run's options, for the next one if they are idle by then.
    spare: Option<RunControl>,
}

impl OrtRunner {
    /// The last run's control if it is idle, else a new one.
    fn idle_control(&mut self) -> Result<RunControl, RunError> {
        match self.spare.take_if(|spare| spare.is_idle()) {
            Some(spare) => Ok(spare),
            None => RunControl::new().map_err(run_error),
        }
    }

    fn started(session: EngineSession, decoder: bool) -> StartedRunner {
        let device = RunnerDevice {
            name: session.device().to_string(),
            fallback_reason: session.fallback_reason().map(str::to_string),
        };
        let runner = OrtRunner {
            session,
            decoder,
            next_run: None,
            spare: None,
        };
        StartedRunner {
            runner: Box::new(runner),
            device,
        }
    }
}

impl Runner for OrtRunner {
    fn io(&self) -> &ModelIo {
        self.session.io()
    }

    /// ONNX Runtime's CPU sessions run from any thread; the CUDA provider
    /// binds its device to the thread of the worker that built the session.
    fn any_thread(&self) -> bool {
        self.session.device() == Device::Cpu
    }

    /// A decoder's dims of 1 would be a past of one position beside a mask
    /// of one, which real exports refuse; its first step is consistent.
    fn warmup_inputs(&self) -> Vec<Tensor> {
        let first_step = self
            .decoder
            .then(|| text_generation::warmup_inputs(self.io()));
        first_step
            .flatten()
            .unwrap_or_else(|| self.io().warmup_inputs())
    }

    fn canceller(&mut self) -> Result<Canceller, RunError> {
        let control = self.idle_control()?;
        self.next_run = Some(control.clone());
        Ok(Canceller::new(move || control.terminate()))
    }

    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RunError> {
        let rows = inputs.first().map_or(1, Tensor::rows);
        let mut whole = self.run_requests(inputs, &[rows])?;
        Ok(whole.pop().expect("one request, one set of outputs"))
    }

    /// Each request's rows go straight from ORT's buffers into its tensors.
    fn run_requests(
        &mut self,
        inputs: &[Tensor],
        rows: &[usize],
    ) -> Result<Vec<Vec<Tensor>>, RunError> {
        let control = match self.next_run.take() {
            Some(control) => control,
            None => self.idle_control()?,
        };
        let outputs = self.session.run(inputs, rows, &control).map_err(run_error);
        self.spare = Some(control);
        outputs
    }
}

fn run_error(e: EngineError) -> RunError {
    match e {
        EngineError::Terminated => RunError::Cancelled,
        EngineError::Unsplittable {
            output,
            shape,
            rows,
        } => RunError::Unsplittable {
            output,
            shape,
            rows,
        },
        other => RunError::Failed(other.to_string()),
    }
}
