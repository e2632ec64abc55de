//! What ortserve tells its cluster about, and where those notices go.

use tokio::sync::mpsc;

use super::ModelId;

/// A change worth a Kubernetes Event on ortserve's Pod.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    ModelLoaded {
        model: ModelId,
        device: String,
    },
    ModelLoadFailed {
        model: ModelId,
        reason: String,
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
pub struct EventSink(Option<mpsc::UnboundedSender<ServerEvent>>);

impl EventSink {
    pub fn new(sender: mpsc::UnboundedSender<ServerEvent>) -> EventSink {
        EventSink(Some(sender))
    }

    pub fn emit(&self, event: ServerEvent) {
        if let Some(sender) = &self.0 {
            let _ = sender.send(event);
        }
    }
}
