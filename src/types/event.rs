//! What ortserve tells its cluster about, and where those notices go.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{LoadFailure, ModelId};

/// A change worth a Kubernetes Event on ortserve's Pod.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    ModelLoaded {
        model: ModelId,
        device: String,
    },
    ModelLoadFailed {
        model: ModelId,
        failure: LoadFailure,
    },
    /// A model declaration was refused; the model keeps its last good config.
    ConfigRejected {
        file: String,
        reason: String,
    },
    /// SIGTERM: readiness is off and the server is finishing its work.
    Draining,
}

/// Where server events go: to the Kubernetes module in a cluster, nowhere
/// otherwise. Sending never blocks and never fails the sender.
#[derive(Debug, Clone, Default)]
pub struct EventSink {
    sender: Option<mpsc::UnboundedSender<ServerEvent>>,
    /// Sent and not yet handled, so shutdown can wait for the last ones.
    pending: Arc<AtomicUsize>,
}

/// The receiving end: each event comes with a guard that marks it handled
/// when dropped.
pub struct EventQueue {
    receiver: mpsc::UnboundedReceiver<ServerEvent>,
    pending: Arc<AtomicUsize>,
}

/// Marks one event handled when dropped.
pub struct Handled(Arc<AtomicUsize>);

impl Drop for Handled {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl EventSink {
    pub fn channel() -> (EventSink, EventQueue) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let sink = EventSink {
            sender: Some(sender),
            pending: pending.clone(),
        };
        (sink, EventQueue { receiver, pending })
    }

    pub fn emit(&self, event: ServerEvent) {
        if let Some(sender) = &self.sender {
            self.pending.fetch_add(1, Ordering::AcqRel);
            if sender.send(event).is_err() {
                self.pending.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Waits, at most `within`, until every event sent so far is handled
    /// (the last ones are sent just before the process exits).
    pub async fn flush(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.pending.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl EventQueue {
    pub async fn next(&mut self) -> Option<(ServerEvent, Handled)> {
        let event = self.receiver.recv().await?;
        Some((event, Handled(self.pending.clone())))
    }
}
