//! `ortserve check`: the preflight a CI pipeline runs on what it would ship —
//! a model store, a directory of model declarations (a ConfigMap's files)
//! and a `config.properties`. The server's own code parses every file and
//! loads every model once, warm-up included, on the device its
//! configuration asks for. The report lists each model's inputs and outputs,
//! or why it did not load, and every warning and error with the file and
//! key it names; the exit status says whether anything would fail.
//!
//! It owns that report. It never binds a port, follows a change or talks to
//! a cluster.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::config::{self, Cli, KeySource, OutputFormat, ServerConfig};
use crate::registry::{LoadOutcome, ModelRegistry, Reconciler};
use crate::server::StartupError;
use crate::telemetry::Metrics;
use crate::telemetry::findings::{self, Finding, Severity};
use crate::types::{EventSink, TensorSpec};

/// The message the registry logs for a failed load; the model's own entry
/// in the report already says it, so it is not listed twice.
const LOAD_FAILED: &str = "model failed to load";

/// Checks what `cli` would serve and prints the report in `format`; true
/// when nothing would fail.
pub fn check(cli: &Cli, format: OutputFormat) -> bool {
    let collected = findings::collect();
    let mut report = inspect(cli);
    report.findings = collected.take();
    report
        .findings
        .retain(|f| !(f.severity == Severity::Error && f.message == LOAD_FAILED));
    match format {
        OutputFormat::Text => print!("{}", report.text()),
        OutputFormat::Json => println!("{}", report.json()),
    }
    report.passed()
}

/// What the check found.
#[derive(Debug, Default)]
struct CheckReport {
    config_file: Option<PathBuf>,
    model_store: Option<PathBuf>,
    model_config_dir: Option<PathBuf>,
    /// Why the server would not start at all (settings, ONNX Runtime).
    refusal: Option<String>,
    models: Vec<LoadOutcome>,
    /// An empty server is allowed (`--allow-no-models`).
    allow_no_models: bool,
    findings: Vec<Finding>,
}

/// Reads the settings, loads ONNX Runtime, then every model.
fn inspect(cli: &Cli) -> CheckReport {
    let mut report = CheckReport::default();
    let config = match ServerConfig::load(cli) {
        Ok(config) => config,
        Err(error) => {
            report.refusal = Some(error.to_string());
            return report;
        }
    };
    report.config_file = config.config_file.clone();
    report.model_store = config.model_store.clone();
    report.model_config_dir = config.lifecycle.model_config_dir.clone();
    report.allow_no_models = config.allow_no_models;
    if let Err(error) = crate::engine::init(&config.onnxruntime_library) {
        report.refusal = Some(StartupError::OnnxRuntime(error).to_string());
        return report;
    }
    match load_models(config) {
        Ok(models) => report.models = models,
        Err(refusal) => report.refusal = Some(refusal),
    }
    report
}

/// Loads the store's models and the declared ones as the server does at
/// start, and waits for every load to end.
fn load_models(config: ServerConfig) -> Result<Vec<LoadOutcome>, String> {
    // A generated key file is the server's to write, at start; there is
    // nothing to check before it.
    if let Some(KeySource::File(file)) = &config.tokens.keys {
        config::read_keys(file)?;
    }
    let declarations = match &config.lifecycle.model_config_dir {
        Some(dir) => Some(config::read_declarations(dir).map_err(|e| e.to_string())?),
        None => None,
    };
    if config.lifecycle.configmap_selector.is_some() {
        tracing::warn!(
            key = "configmap_selector",
            "ConfigMaps in the cluster are not checked here; check their files with --model-config-dir"
        );
    }
    let cores = config.model_defaults.cores;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let config = Arc::new(config);
    let outcomes = runtime.block_on(async {
        let registry = ModelRegistry::new(true, cores, EventSink::default(), Metrics::disabled());
        let found = crate::store::discover(
            config.model_store.as_deref(),
            &config.load_models,
            config.max_model_size,
        );
        registry.load_all(found, &config);
        if let Some(set) = &declarations {
            Reconciler::start(registry.clone(), config.clone(), set);
        }
        registry.load_outcomes().await
    });
    runtime.shutdown_background();
    Ok(outcomes)
}

impl CheckReport {
    fn failed_models(&self) -> usize {
        self.models.iter().filter(|m| m.result.is_err()).count()
    }

    fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    }

    /// Why an empty check fails: nothing was checked.
    fn nothing_checked(&self) -> Option<&'static str> {
        (self.refusal.is_none() && self.models.is_empty() && !self.allow_no_models).then_some(
            "no model to check: pass --model-store with --models (or `all`), or --model-config-dir",
        )
    }

    fn passed(&self) -> bool {
        self.refusal.is_none()
            && self.nothing_checked().is_none()
            && self.failed_models() == 0
            && self.count(Severity::Error) == 0
    }

    fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "config.properties: {}", shown(&self.config_file));
        let _ = writeln!(out, "model store: {}", shown(&self.model_store));
        let _ = writeln!(out, "model config dir: {}", shown(&self.model_config_dir));
        for model in &self.models {
            out.push_str(&model_text(model));
        }
        for finding in &self.findings {
            out.push_str(&finding_text(finding));
        }
        for refusal in self
            .refusal
            .iter()
            .map(String::as_str)
            .chain(self.nothing_checked())
        {
            let _ = writeln!(out, "error: {refusal}");
        }
        let verdict = if self.passed() { "passed" } else { "FAILED" };
        let _ = writeln!(
            out,
            "check {verdict}: {} of {} model versions ready, {} warnings, {} errors",
            self.models.len() - self.failed_models(),
            self.models.len(),
            self.count(Severity::Warning),
            self.count(Severity::Error)
                + self.failed_models()
                + usize::from(self.refusal.is_some() || self.nothing_checked().is_some()),
        );
        out
    }

    fn json(&self) -> Value {
        let path = |p: &Option<PathBuf>| p.as_deref().map(Path::display).map(|d| d.to_string());
        let findings = |severity: Severity| -> Vec<Value> {
            self.findings
                .iter()
                .filter(|f| f.severity == severity)
                .map(finding_json)
                .collect()
        };
        let mut errors = findings(Severity::Error);
        for refusal in self
            .refusal
            .iter()
            .map(String::as_str)
            .chain(self.nothing_checked())
        {
            errors.push(json!({"message": refusal, "fields": {}}));
        }
        json!({
            "passed": self.passed(),
            "config_file": path(&self.config_file),
            "model_store": path(&self.model_store),
            "model_config_dir": path(&self.model_config_dir),
            "models": self.models.iter().map(model_json).collect::<Vec<_>>(),
            "warnings": findings(Severity::Warning),
            "errors": errors,
        })
    }
}

fn shown(path: &Option<PathBuf>) -> String {
    path.as_deref()
        .map_or_else(|| "none".into(), |p| p.display().to_string())
}

fn model_text(model: &LoadOutcome) -> String {
    let id = &model.id;
    let from = &model.origin;
    match &model.result {
        Ok(loaded) => {
            let mut out = format!(
                "ready   {} {} from {from} on {}\n",
                id.name, id.version, loaded.device
            );
            for (role, specs) in [
                ("input ", &loaded.io.inputs),
                ("output", &loaded.io.outputs),
            ] {
                for spec in specs {
                    let _ = writeln!(
                        out,
                        "          {role} {} {} {}",
                        spec.name,
                        spec.dtype.name(),
                        spec.shape_text()
                    );
                }
            }
            out
        }
        Err(failure) => format!(
            "FAILED  {} {} from {from} ({}): {}\n",
            id.name,
            id.version,
            failure.kind.as_str(),
            failure.message
        ),
    }
}

fn model_json(model: &LoadOutcome) -> Value {
    let specs = |specs: &[TensorSpec]| -> Vec<Value> {
        specs
            .iter()
            .map(|s| json!({"name": s.name, "datatype": s.dtype.name(), "shape": s.shape}))
            .collect()
    };
    let mut entry = json!({
        "name": model.id.name,
        "version": model.id.version,
        "origin": model.origin,
        "ready": model.result.is_ok(),
    });
    match &model.result {
        Ok(loaded) => {
            entry["device"] = json!(loaded.device);
            entry["inputs"] = json!(specs(&loaded.io.inputs));
            entry["outputs"] = json!(specs(&loaded.io.outputs));
        }
        Err(failure) => {
            entry["error"] = json!({"kind": failure.kind.as_str(), "message": failure.message});
        }
    }
    entry
}

fn finding_text(finding: &Finding) -> String {
    let label = match finding.severity {
        Severity::Warning => "warning",
        Severity::Error => "error",
    };
    let fields: Vec<String> = finding
        .fields
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    match fields.is_empty() {
        true => format!("{label}: {}\n", finding.message),
        false => format!("{label}: {} ({})\n", finding.message, fields.join(", ")),
    }
}

fn finding_json(finding: &Finding) -> Value {
    let fields: serde_json::Map<String, Value> = finding
        .fields
        .iter()
        .map(|(key, value)| (key.clone(), json!(value)))
        .collect();
    json!({"message": finding.message, "fields": fields})
}
