//! A model version's handles: what the request path records into, resolved
//! once per version, and the statistics the Open Inference Protocol reads
//! back from the same counters.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use prometheus::{Histogram, HistogramVec, IntCounter, IntGauge};

use super::{Protocol, Rejection};
use crate::types::ModelId;

/// A model version's metric handles, resolved once; empty when metrics are
/// off, so each record is a single branch.
pub struct ModelMetrics {
    pub(super) id: ModelId,
    pub(super) handles: Option<Handles>,
}

pub(super) struct Handles {
    pub(super) request_duration: HistogramVec,
    /// Resolved on first use: most versions see one or two of the
    /// protocol × status-class pairs, and unused series would only be noise.
    pub(super) durations: [[OnceLock<Histogram>; 5]; Protocol::COUNT],
    pub(super) ts_requests: IntCounter,
    pub(super) ts_latency: IntCounter,
    pub(super) ts_queue_latency: IntCounter,
    pub(super) queue_wait: Histogram,
    pub(super) compute: Histogram,
    pub(super) preprocess: Histogram,
    pub(super) postprocess: Histogram,
    pub(super) batch_rows: Histogram,
    pub(super) in_flight: IntGauge,
    pub(super) rejections: [IntCounter; Rejection::ALL.len()],
    pub(super) worker_restarts: IntCounter,
    pub(super) generation: super::GenerationFamilies,
    pub(super) generation_handles: OnceLock<GenerationHandles>,
    /// When the last batch ran, in ms since the Unix epoch (0: never), for
    /// the statistics' `last_inference`: no histogram keeps a time.
    pub(super) last_batch_ms: AtomicU64,
}

pub(super) struct GenerationHandles {
    first_token: Histogram,
    between_tokens: Histogram,
    prompt_tokens: IntCounter,
    generated_tokens: IntCounter,
}

impl Handles {
    fn generation(&self, id: &ModelId) -> &GenerationHandles {
        self.generation_handles.get_or_init(|| {
            let model = [id.name.as_str(), id.version.as_str()];
            let families = &self.generation;
            let tokens = |kind| {
                families
                    .tokens
                    .with_label_values(&[model[0], model[1], kind])
            };
            GenerationHandles {
                first_token: families.first_token.with_label_values(&model),
                between_tokens: families.between_tokens.with_label_values(&model),
                prompt_tokens: tokens("prompt"),
                generated_tokens: tokens("generated"),
            }
        })
    }

    pub(super) fn duration(&self, id: &ModelId, protocol: Protocol, status: u16) -> &Histogram {
        let class = usize::from(status / 100).clamp(1, 5);
        self.durations[protocol as usize][class - 1].get_or_init(|| {
            let class_label = format!("{class}xx");
            self.request_duration.with_label_values(&[
                id.name.as_str(),
                id.version.as_str(),
                protocol.label(),
                class_label.as_str(),
            ])
        })
    }
}

impl ModelMetrics {
    /// The model version these handles count for.
    pub fn id(&self) -> &ModelId {
        &self.id
    }

    /// A finished request: its status and time from arrival to answer.
    pub fn request(&self, protocol: Protocol, status: u16, elapsed: Duration) {
        if let Some(h) = &self.handles {
            h.ts_requests.inc();
            h.ts_latency.inc_by(elapsed.as_micros() as u64);
            h.duration(&self.id, protocol, status)
                .observe(elapsed.as_secs_f64());
        }
    }

    /// A request whose client left before the answer: received, so counted
    /// by TorchServe's counters, but with no status for the histograms.
    pub fn abandoned(&self, elapsed: Duration) {
        if let Some(h) = &self.handles {
            h.ts_requests.inc();
            h.ts_latency.inc_by(elapsed.as_micros() as u64);
        }
        self.rejected(Rejection::ClientGone);
    }

    pub fn rejected(&self, reason: Rejection) {
        if let Some(h) = &self.handles {
            h.rejections[reason as usize].inc();
        }
    }

    pub fn queue_wait(&self, waited: Duration) {
        if let Some(h) = &self.handles {
            h.ts_queue_latency.inc_by(waited.as_micros() as u64);
            h.queue_wait.observe(waited.as_secs_f64());
        }
    }

    /// One batch through `run()`.
    pub fn batch(&self, rows: usize, compute: Duration) {
        if let Some(h) = &self.handles {
            h.batch_rows.observe(rows as f64);
            h.compute.observe(compute.as_secs_f64());
            let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
            h.last_batch_ms
                .store(now.map_or(0, |t| t.as_millis() as u64), Ordering::Relaxed);
        }
    }

    pub fn preprocess(&self, took: Duration) {
        if let Some(h) = &self.handles {
            h.preprocess.observe(took.as_secs_f64());
        }
    }

    pub fn postprocess(&self, took: Duration) {
        if let Some(h) = &self.handles {
            h.postprocess.observe(took.as_secs_f64());
        }
    }

    /// A generation's first piece of text, this long after its request.
    pub fn first_token(&self, took: Duration) {
        if let Some(h) = &self.handles {
            h.generation(&self.id)
                .first_token
                .observe(took.as_secs_f64());
        }
    }

    /// A piece of text, this long after the one before.
    pub fn between_tokens(&self, took: Duration) {
        if let Some(h) = &self.handles {
            h.generation(&self.id)
                .between_tokens
                .observe(took.as_secs_f64());
        }
    }

    /// A finished generation's token counts.
    pub fn generated(&self, prompt: usize, generated: usize) {
        if let Some(h) = &self.handles {
            let g = h.generation(&self.id);
            g.prompt_tokens.inc_by(prompt as u64);
            g.generated_tokens.inc_by(generated as u64);
        }
    }

    pub fn worker_restarted(&self) {
        if let Some(h) = &self.handles {
            h.worker_restarts.inc();
        }
    }

    pub(in crate::telemetry) fn in_flight(&self, delta: i64) {
        if let Some(h) = &self.handles {
            h.in_flight.add(delta);
        }
    }

    /// The version's counters as Triton's statistics count them, read from
    /// the histograms (all zero with metrics off).
    pub fn statistics(&self) -> VersionStatistics {
        let Some(h) = &self.handles else {
            return VersionStatistics::default();
        };
        let (mut success, mut fail) = (Timed::default(), Timed::default());
        for classes in &h.durations {
            for (index, cell) in classes.iter().enumerate() {
                let Some(histogram) = cell.get() else {
                    continue;
                };
                // Index 1 is the 2xx class.
                let total = if index == 1 { &mut success } else { &mut fail };
                total.add(&Timed::of(histogram));
            }
        }
        VersionStatistics {
            success,
            fail,
            queue: Timed::of(&h.queue_wait),
            compute_input: Timed::of(&h.preprocess),
            compute_infer: Timed::of(&h.compute),
            compute_output: Timed::of(&h.postprocess),
            inference_count: h.batch_rows.get_sample_sum() as u64,
            execution_count: h.batch_rows.get_sample_count(),
            last_inference_ms: h.last_batch_ms.load(Ordering::Relaxed),
        }
    }
}

/// How many times something happened and its total duration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timed {
    pub count: u64,
    pub ns: u64,
}

impl Timed {
    fn of(histogram: &Histogram) -> Timed {
        Timed {
            count: histogram.get_sample_count(),
            ns: (histogram.get_sample_sum() * 1e9) as u64,
        }
    }

    fn add(&mut self, other: &Timed) {
        self.count += other.count;
        self.ns += other.ns;
    }
}

/// A model version's counters in the terms of Triton's statistics extension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VersionStatistics {
    /// Requests answered 2xx, and their time from arrival to answer.
    pub success: Timed,
    /// Requests answered with an error status.
    pub fail: Timed,
    pub queue: Timed,
    /// Pre-processing (bodies through the model's handler).
    pub compute_input: Timed,
    /// `run()`, counted per batch.
    pub compute_infer: Timed,
    /// Post-processing.
    pub compute_output: Timed,
    /// Rows run through the model.
    pub inference_count: u64,
    /// Batches run.
    pub execution_count: u64,
    /// When the last batch ran, in ms since the Unix epoch; 0 if none has.
    pub last_inference_ms: u64,
}
