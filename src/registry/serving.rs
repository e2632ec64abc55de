//! A model version that is serving: its handler, its worker pool, and the
//! request-side work around them (pre/post-processing, explanations).
//!
//! It never parses HTTP and never decides which version serves: the registry
//! hands out `Arc<ServingModel>`s, and the last one dropped drains its pool.
//! Reading a model's description needs only that; running it needs an
//! [`AttachedModel`], which exists only once the request is counted.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::codec::ReplyShape;
use crate::config::{ExplainOptions, OrtserveOptions};
use crate::explain::{self, ExplainParams, Forward, PassBudget};
use crate::handlers::text_generation::{Emitted, GenerateParams};
use crate::handlers::{BodyForm, Handler};
use crate::scheduler::{PoolHealth, PoolLoad, PoolSettings, WorkerPool, WorkerReport};
use crate::telemetry::{self, ModelMetrics};
use crate::types::{Error, InferRequest, InferResponse, ModelId, ModelIo, Tensor};

/// A model version that is serving: its handler and its workers.
pub struct ServingModel {
    pub id: ModelId,
    handler: Handler,
    pool: WorkerPool,
    heavy_work: Arc<Semaphore>,
    max_tensor_elements: usize,
    explain_options: ExplainOptions,
    /// Explanation batches in flight for this model: at most maxWorkers − 1
    /// (at least 1), so predictions always find a batch of their own.
    explain_slots: Semaphore,
    metrics: Arc<ModelMetrics>,
    /// Where the sessions run (`cpu`, `cuda:0`).
    device: String,
}

/// Explanation batches allowed in flight for a pool of `max_workers`.
fn explain_slots(max_workers: usize) -> usize {
    max_workers.saturating_sub(1).max(1)
}

impl ServingModel {
    pub(super) fn new(
        id: ModelId,
        handler: Handler,
        pool: WorkerPool,
        heavy_work: Arc<Semaphore>,
        options: &OrtserveOptions,
        metrics: Arc<ModelMetrics>,
        device: String,
    ) -> ServingModel {
        let slots = explain_slots(pool.settings().max_workers);
        ServingModel {
            id,
            handler,
            pool,
            heavy_work,
            max_tensor_elements: options.max_tensor_elements,
            explain_options: options.explain.clone(),
            explain_slots: Semaphore::new(slots),
            metrics,
            device,
        }
    }

    pub(super) fn health(&self) -> PoolHealth {
        self.pool.health()
    }

    pub(super) fn load(&self) -> PoolLoad {
        self.pool.load()
    }

    pub(super) async fn workers(&self) -> Vec<WorkerReport> {
        self.pool.workers().await
    }

    /// Where the sessions run (`cpu`, `cuda:0`).
    pub(super) fn device(&self) -> &str {
        &self.device
    }

    /// Counts the current request against this version (its metrics and
    /// access-log line) and hands out the only handle that runs the model.
    pub fn attach(self: Arc<Self>) -> AttachedModel {
        telemetry::attach(&self.metrics);
        AttachedModel(self)
    }

    /// The forward passes one request may spend on explanations.
    pub fn pass_budget(&self) -> PassBudget {
        PassBudget::new(self.explain_options.max_request_forward_passes)
    }

    /// Refuses a request of more instances than the queue can ever hold:
    /// each is at least one row, so it could only ever be "queue full", and
    /// a 503 would have the client retry it forever.
    pub fn check_instances(&self, instances: usize) -> Result<(), Error> {
        let capacity = self.pool.settings().queue_rows;
        if instances <= capacity {
            return Ok(());
        }
        Err(Error::TooLarge(format!(
            "the request has {instances} instances but model \"{}\" queues at most {capacity} rows \
             (jobQueueSize); send fewer instances per request or raise jobQueueSize",
            self.id.name
        )))
    }

    /// The pool settings in force.
    pub fn settings(&self) -> PoolSettings {
        self.pool.settings()
    }

    /// Applies new pool settings in place (workers, batching, queue,
    /// timeouts), without a new session.
    pub(super) fn retune(&self, settings: PoolSettings) {
        let (old, new) = (
            explain_slots(self.pool.settings().max_workers),
            explain_slots(settings.max_workers),
        );
        if new > old {
            self.explain_slots.add_permits(new - old);
        } else {
            // Only free permits can be forgotten: with explanations in
            // flight, a few more may run until they finish.
            self.explain_slots.forget_permits(old - new);
        }
        self.pool.retune(settings);
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
        // Its log lines keep the request's span (and so its request id).
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(work))
            .await
            .map_err(|e| Error::Inference(format!("pre-processing failed: {e}")))
    }

    pub fn io(&self) -> &ModelIo {
        self.pool.io()
    }

    /// Whether this is a `text_generation` model.
    pub fn generates_text(&self) -> bool {
        self.handler.text_generator().is_some()
    }

    /// Whether requests carry payloads (image files) rather than tensors.
    pub fn takes_payloads(&self) -> bool {
        self.handler.takes_payloads()
    }

    /// The handler's answer as a tensor where it replaces the model's
    /// outputs for tensor requests (see `Handler::answer_tensor`).
    pub fn answer_tensor(&self, response: &InferResponse) -> Option<Result<Tensor, Error>> {
        self.handler.answer_tensor(response)
    }

    /// The largest element count accepted for one input tensor.
    pub fn max_tensor_elements(&self) -> usize {
        self.max_tensor_elements
    }
}

/// A serving model with the current request counted against it: the only
/// handle that runs the model, so no request reaches a model without being
/// attached to its metrics and access-log line ([`ServingModel::attach`]).
#[derive(Clone)]
pub struct AttachedModel(Arc<ServingModel>);

impl std::ops::Deref for AttachedModel {
    type Target = ServingModel;

    fn deref(&self) -> &ServingModel {
        &self.0
    }
}

impl AttachedModel {
    /// One instance's body in, its answer out: pre-processing, the queue,
    /// post-processing. Heavy pre-processing (images, large JSON) runs on the
    /// blocking pool, at most one per core server-wide, so a burst of big
    /// images cannot decode all at once and exhaust memory.
    pub async fn predict(&self, body: Bytes, form: BodyForm) -> Result<Vec<u8>, Error> {
        let (request, shape) = self.preprocess(body, form).await?;
        let response = self.pool.infer(request).await?;
        let _span = telemetry::request::postprocess_span().entered();
        let started = Instant::now();
        let mut out = Vec::with_capacity(128);
        self.handler.postprocess(&response, shape, &mut out)?;
        self.metrics.postprocess(started.elapsed());
        Ok(out)
    }

    async fn preprocess(
        &self,
        body: Bytes,
        form: BodyForm,
    ) -> Result<(InferRequest, ReplyShape), Error> {
        let started = Instant::now();
        let span = telemetry::request::preprocess_span();
        let done = if self.handler.is_heavy(&body) {
            let model = self.0.clone();
            self.offload(move || model.handler.preprocess(&body, form))
                .instrument(span)
                .await?
        } else {
            span.in_scope(|| self.handler.preprocess(&body, form))
        };
        self.metrics.preprocess(started.elapsed());
        done
    }

    /// Explains one body's instances after the handler's pre-processing (so
    /// image models are explained over the tensor the model sees): one JSON
    /// value per instance, shaped like its input, as TorchServe shows them.
    pub async fn explain(
        &self,
        body: Bytes,
        form: BodyForm,
        params: &ExplainParams,
        budget: &PassBudget,
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
            explain::explain_each(&*self.0, request, &self.explain_options, &params, budget)
                .await?;
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
        budget: &PassBudget,
    ) -> Result<Vec<Tensor>, Error> {
        let instances =
            explain::explain_each(&*self.0, request, &self.explain_options, params, budget).await?;
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

    /// Runs ready tensors through the model, skipping its handler (the Open
    /// Inference Protocol carries tensors, not payloads).
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, Error> {
        self.pool.infer(request).await
    }

    /// Starts generating text from `prompt`: the parameters are checked and
    /// the prompt tokenized here, before anything is queued, and the
    /// generation then waits for a worker like any request (a full queue is
    /// refused at once). Dropping the returned stream stops the generation
    /// within one decoding step.
    pub async fn generate(
        &self,
        prompt: String,
        params: GenerateParams,
    ) -> Result<TextGeneration, Error> {
        let Some(generator) = self.handler.text_generator().cloned() else {
            return Err(Error::BadInput(format!(
                "model \"{}\" does not generate text: its handler is not text_generation \
                 (set ortserve.handler: text_generation in its model-config.yaml for a decoder model)",
                self.id.name
            )));
        };
        let started = Instant::now();
        // Always off the async threads: a tokenizer.json's regular
        // expressions come from the model, and a costly one must not stall
        // other requests.
        let prepared = {
            let generator = generator.clone();
            self.offload(move || generator.prepare(&prompt, params))
                .await??
        };
        self.metrics.preprocess(started.elapsed());
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
        let done = self
            .pool
            .start_sequence(prepared.into_loop(generator, events))?;
        Ok(TextGeneration {
            events: receiver,
            done: Some(done),
            metrics: self.metrics.clone(),
            report: telemetry::TokenReport::current(),
            started,
            last_piece: None,
        })
    }

    /// As [`infer`](Self::infer), within the caller's own deadline.
    pub async fn infer_within(
        &self,
        request: InferRequest,
        limit: std::time::Duration,
    ) -> Result<InferResponse, Error> {
        self.pool.infer_within(request, limit).await
    }
}

impl Forward for ServingModel {
    fn io(&self) -> &ModelIo {
        self.pool.io()
    }

    fn batch_size(&self) -> usize {
        self.pool.settings().batch_size
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

/// A generation under way: its events as they come, then how it ended.
/// Records time to first token, inter-token latency and token counts.
pub struct TextGeneration {
    events: tokio::sync::mpsc::UnboundedReceiver<Emitted>,
    done: Option<tokio::sync::oneshot::Receiver<Result<InferResponse, Error>>>,
    metrics: Arc<ModelMetrics>,
    report: telemetry::TokenReport,
    started: Instant,
    last_piece: Option<Instant>,
}

impl TextGeneration {
    /// The next piece of text or the end; `None` after the end. An error
    /// means the generation failed or passed `responseTimeout`.
    pub async fn next(&mut self) -> Option<Result<Emitted, Error>> {
        match self.events.recv().await {
            Some(event) => {
                self.observe(&event);
                Some(Ok(event))
            }
            None => {
                // The loop has ended: it sent its end already, or failed.
                let done = self.done.take()?;
                match done.await {
                    Ok(Ok(_)) => None,
                    Ok(Err(error)) => Some(Err(error)),
                    Err(_) => Some(Err(Error::Inference(
                        "the worker stopped before the generation ended".into(),
                    ))),
                }
            }
        }
    }

    /// Waits for the whole text.
    pub async fn collect(
        mut self,
    ) -> Result<(String, crate::handlers::text_generation::Finished), Error> {
        let mut text = String::new();
        while let Some(event) = self.next().await {
            match event? {
                Emitted::Text(piece) => text.push_str(&piece),
                Emitted::Finished(finished) => return Ok((text, finished)),
            }
        }
        Err(Error::Inference(
            "the generation ended without finishing".into(),
        ))
    }

    fn observe(&mut self, event: &Emitted) {
        let now = Instant::now();
        match event {
            Emitted::Text(_) => {
                match self.last_piece {
                    None => self.metrics.first_token(now - self.started),
                    Some(last) => self.metrics.between_tokens(now - last),
                }
                self.last_piece = Some(now);
            }
            Emitted::Finished(finished) => {
                self.metrics
                    .generated(finished.prompt_tokens, finished.new_tokens);
                self.report
                    .record(finished.prompt_tokens, finished.new_tokens);
            }
        }
    }
}
