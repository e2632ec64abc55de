//! ortserve: a model server for Kubernetes that runs ONNX models through ONNX
//! Runtime and speaks the protocols clients already use.
//!
//! # Layout
//!
//! A request travels left to right through these modules, and back:
//!
//! ```text
//!  protocol/  ──►  registry  ──►  handlers/  ──►  scheduler/  ──►  engine/
//!  HTTP wire      find model +    body → input    queue, batch,    ORT session
//!  ⇄ core types   version         tensors, and    worker threads   on CPU/CUDA
//!                                 outputs → body
//! ```
//!
//! * [`types`] — the shared vocabulary — `Tensor`, `ModelId`, `ModelIo`, the
//!   request-path `Error`, server events. Depends on nothing else here.
//! * [`config`] — command line, `config.properties`, `model-config.yaml`,
//!   the model declarations directory (a mounted ConfigMap) and its watch,
//!   and the token key file and its watch.
//! * [`store`] — finding models on disk (`.mar`, `.tar.gz`, directories, `.onnx`).
//! * [`engine`] — the only module that uses `ort`.
//! * [`scheduler`] — per-version queue, dynamic batching, worker threads,
//!   restarts and deadlines; a short batch runs on the request's own thread
//!   with an idle worker's session instead of waking that worker. It knows
//!   the engine only through its `Runner` trait; the registry adapts the
//!   ORT session to it, and the scheduler's tests drive a scriptable fake
//!   instead.
//! * [`registry`] — the live model set and its health, the reconcile task
//!   that applies model declarations without dropping traffic, and what the
//!   control plane reads and changes (describe, scale, register, unregister)
//!   through the same build-then-switch path.
//! * [`codec`] — the tensor wire codec every front end shares: JSON ⇄
//!   typed tensors, and fitting named tensors to a model's inputs.
//! * [`handlers`] — pre/post-processing (`tensor`, `image_classifier`), and
//!   `text_generation`'s decoding loop, which a worker runs as one
//!   `Sequence` of steps.
//! * [`explain`] — attributions (occlusion, feature ablation, Shapley
//!   sampling) computed with forward passes through the model's queue.
//! * [`protocol`] — HTTP adapters (TorchServe, KServe v1, Open Inference
//!   Protocol, generation over those and OpenAI's completions, streamed as
//!   chunks or server-sent events), the Open Inference Protocol over gRPC, TorchServe's
//!   management API, the model repository routes and token authorization. Every model request runs one skeleton
//!   (resolve, attach to metrics, read the body, map errors); an adapter
//!   brings only its wire format and an error type of its own. Their
//!   routers are tested in-process over a registry of fake runners.
//! * [`telemetry`] — logs (text or JSON, a request-id span per request, the
//!   access log), Prometheus metrics and OpenTelemetry trace export.
//! * [`kube`] — the only module that uses `kube`: Events on the Pod, and
//!   model declarations from ConfigMaps through the API.
//! * [`memory`] — the allocator policy (glibc's malloc, one arena per core).
//! * [`server`] — wiring, listeners, signals and the graceful drain.
//! * [`check`] — `ortserve check`: the same configuration and model loading
//!   as [`server`], without listeners, reported for a CI pipeline.
//!
//! `main.rs` only parses the command line and calls [`run`].

pub mod check;
pub mod codec;
pub mod config;
pub mod engine;
pub mod explain;
pub mod handlers;
pub mod kube;
pub mod memory;
pub mod protocol;
pub mod registry;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod types;

pub use check::check;
pub use server::{StartupError, run, version_report};
