//! Warnings and errors collected instead of printed, for `ortserve check`:
//! it reports what the server would have logged, each event with its fields
//! (the configuration code names the file and the key in them).

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Registry;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warning,
    Error,
}

/// One warning or error event: its message and its other fields, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

/// The findings so far; cloned handles share one list.
#[derive(Debug, Clone, Default)]
pub struct Findings(Arc<Mutex<Vec<Finding>>>);

impl Findings {
    /// Everything collected until now, oldest first.
    pub fn take(&self) -> Vec<Finding> {
        std::mem::take(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Installs the global subscriber as one that keeps ortserve's warnings and
/// errors (not ONNX Runtime's own chatter) and prints nothing.
pub fn collect() -> Findings {
    let findings = Findings::default();
    Registry::default().with(findings.clone()).init();
    findings
}

impl<S: Subscriber> Layer<S> for Findings {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let metadata = event.metadata();
        let severity = match *metadata.level() {
            Level::ERROR => Severity::Error,
            Level::WARN => Severity::Warning,
            _ => return,
        };
        if !metadata.target().starts_with("ortserve") {
            return;
        }
        let mut finding = Finding {
            severity,
            message: String::new(),
            fields: Vec::new(),
        };
        event.record(&mut finding);
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(finding);
    }
}

impl Visit for Finding {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.keep(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.keep(field, format!("{value:?}"));
    }
}

impl Finding {
    fn keep(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            name => self.fields.push((name.to_string(), value)),
        }
    }
}
