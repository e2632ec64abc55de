//! Triton model repositories: `<model>/config.pbtxt` beside numbered version
//! directories, each holding `model.onnx` (or `default_model_filename`).
//!
//! `config.pbtxt` is protobuf text format; the settings that mean something
//! here become the model's `model-config.yaml` (`max_batch_size` and
//! `dynamic_batching` → batching, `instance_group` → workers and device), the
//! `version_policy` chooses the versions served, and the declared inputs
//! and outputs are checked against the graph when it loads. Every other
//! setting gets one warning naming it.

use std::path::Path;

use super::pbtxt::{Value, all, message, number, numbers, parse, text};
use super::{ExtraFile, ModelArtifact, ModelFile, StoreError, inside};
use crate::types::{MAX_RANK, ModelId, excerpt};

pub(super) const CONFIG: &str = "config.pbtxt";
/// `config.pbtxt` larger than this is not a model configuration.
const MAX_CONFIG: u64 = 1024 * 1024;

/// Whether `dir` is a Triton model directory.
pub(super) fn is_model_dir(dir: &Path) -> bool {
    dir.join(CONFIG).is_file()
}

/// A tensor `config.pbtxt` declares: its name and its dims, the batch axis
/// included (-1) when the model batches.
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredTensor {
    pub name: String,
    pub shape: Vec<i64>,
}

/// The inputs and outputs `config.pbtxt` declares, checked against the graph
/// at load.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeclaredIo {
    pub origin: String,
    pub inputs: Vec<DeclaredTensor>,
    pub outputs: Vec<DeclaredTensor>,
}

/// Opens every version of the Triton model in `dir` that its version policy
/// serves, named `name` (else the configuration's `name`, else the directory's).
pub(super) fn open(
    dir: &Path,
    origin: &str,
    name: Option<&str>,
) -> Result<Vec<ModelArtifact>, StoreError> {
    let config_path = inside(dir, CONFIG, origin, "the Triton configuration")?;
    let bytes = crate::config::read_bounded(&config_path, MAX_CONFIG)
        .map_err(|e| StoreError::new(origin, format!("cannot read {CONFIG}: {e}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| StoreError::new(origin, format!("{CONFIG} is not UTF-8 text")))?;
    let fail = |detail: String| StoreError::new(origin, format!("{CONFIG}: {detail}"));
    let message = parse(&text).map_err(fail)?;
    let config = TritonConfig::read(&message).map_err(fail)?;
    let name = name
        .map(str::to_string)
        .or_else(|| config.name.clone())
        .unwrap_or_else(|| super::stem(dir));
    let versions = served_versions(dir, &config.version_policy).map_err(fail)?;
    if versions.is_empty() {
        return Err(fail(format!(
            "no version directory to serve ({}); put the graph in {}/1/{}",
            config.version_policy.describe(),
            origin,
            config.file_name
        )));
    }
    let model_config = config.as_model_config(origin);
    versions
        .into_iter()
        .map(|version| {
            let relative = format!("{version}/{}", config.file_name);
            let graph = inside(dir, &relative, origin, "the version's graph")?;
            if !graph.is_file() {
                return Err(StoreError::new(
                    origin,
                    format!("version {version} has no {}", config.file_name),
                ));
            }
            Ok(ModelArtifact {
                name: name.clone(),
                version: Some(version.to_string()),
                origin: format!("{origin}/{version}"),
                model_file: ModelFile::Path(graph),
                handler: None,
                config_file: Some(ExtraFile {
                    origin: format!("{origin}/{CONFIG}"),
                    text: model_config.clone(),
                }),
                side_files: Default::default(),
                declared_io: Some(config.io.clone()),
            })
        })
        .collect()
}

/// Which versions `config.pbtxt` asks for (Triton's default: the latest one).
#[derive(Debug, Clone, PartialEq)]
enum VersionPolicy {
    Latest(usize),
    All,
    Specific(Vec<u64>),
}

impl VersionPolicy {
    fn describe(&self) -> String {
        match self {
            VersionPolicy::Latest(n) => format!("version_policy latest {n}"),
            VersionPolicy::All => "version_policy all".into(),
            VersionPolicy::Specific(v) => format!("version_policy specific {v:?}"),
        }
    }
}

/// The numbered version directories the policy serves, in order.
fn served_versions(dir: &Path, policy: &VersionPolicy) -> Result<Vec<u64>, String> {
    let mut found: Vec<u64> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list the model directory: {e}"))?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|v| ModelId::check_version(&v.to_string()).is_ok())
        .collect();
    found.sort_unstable();
    Ok(match policy {
        VersionPolicy::All => found,
        VersionPolicy::Latest(n) => found.split_off(found.len().saturating_sub(*n)),
        VersionPolicy::Specific(wanted) => {
            if let Some(missing) = wanted.iter().find(|v| !found.contains(v)) {
                return Err(format!(
                    "version_policy names version {missing}, which has no directory"
                ));
            }
            found.retain(|v| wanted.contains(v));
            found
        }
    })
}

/// What ortserve takes from a Triton model configuration.
#[derive(Debug, Clone, PartialEq)]
struct TritonConfig {
    name: Option<String>,
    max_batch_size: u64,
    dynamic_batching: Option<DynamicBatching>,
    workers: Option<u64>,
    device: Option<&'static str>,
    device_ids: Vec<i64>,
    version_policy: VersionPolicy,
    file_name: String,
    io: DeclaredIo,
}

#[derive(Debug, Clone, PartialEq)]
struct DynamicBatching {
    largest_preferred: Option<u64>,
    delay_micros: u64,
}

/// The settings of `ModelConfig` (Triton's proto) with a meaning here.
const UNDERSTOOD: &[&str] = &[
    "name",
    "platform",
    "backend",
    "max_batch_size",
    "input",
    "output",
    "dynamic_batching",
    "instance_group",
    "version_policy",
    "default_model_filename",
];

impl TritonConfig {
    fn read(config: &[(String, Value)]) -> Result<TritonConfig, String> {
        for (key, _) in config {
            if !UNDERSTOOD.contains(&key.as_str()) {
                tracing::warn!(
                    key = excerpt(key).as_str(),
                    "Triton setting in {CONFIG} has no equivalent in ortserve; ignored"
                );
            }
        }
        let engine = text(config, "platform").or_else(|| text(config, "backend"));
        if let Some(engine) = engine.filter(|e| !matches!(*e, "onnxruntime_onnx" | "onnxruntime")) {
            return Err(format!(
                "platform '{}' is not ONNX Runtime; ortserve serves onnxruntime_onnx models only",
                excerpt(engine)
            ));
        }
        let max_batch_size = number(config, "max_batch_size")?.unwrap_or(0);
        let batch_axis = max_batch_size > 0;
        Ok(TritonConfig {
            name: text(config, "name").map(str::to_string),
            max_batch_size,
            dynamic_batching: message(config, "dynamic_batching")
                .map(DynamicBatching::read)
                .transpose()?,
            workers: instance_count(config)?,
            device: instance_kind(config),
            device_ids: instance_gpus(config)?,
            version_policy: version_policy(config)?,
            file_name: text(config, "default_model_filename")
                .unwrap_or("model.onnx")
                .to_string(),
            io: DeclaredIo {
                origin: CONFIG.into(),
                inputs: tensors(config, "input", batch_axis)?,
                outputs: tensors(config, "output", batch_axis)?,
            },
        })
    }

    /// The equivalent `model-config.yaml`.
    fn as_model_config(&self, origin: &str) -> String {
        let mut lines = Vec::new();
        let batch = match &self.dynamic_batching {
            // Without dynamic batching Triton runs each request on its own.
            None => 1,
            Some(d) => d
                .largest_preferred
                .map_or(self.max_batch_size, |p| p.min(self.max_batch_size)),
        };
        lines.push(format!("batchSize: {}", batch.max(1)));
        if let Some(d) = &self.dynamic_batching {
            lines.push(format!("maxBatchDelay: {}", d.delay_micros.div_ceil(1000)));
        }
        if let Some(workers) = self.workers {
            lines.push(format!("minWorkers: {workers}"));
            lines.push(format!("maxWorkers: {workers}"));
        }
        if let Some(device) = self.device {
            lines.push(format!("deviceType: {device}"));
        }
        if !self.device_ids.is_empty() {
            lines.push(format!("deviceIds: {:?}", self.device_ids));
        }
        tracing::debug!(
            origin,
            settings = lines.join("; "),
            "Triton configuration read"
        );
        lines.join("\n") + "\n"
    }
}

impl DynamicBatching {
    fn read(fields: &[(String, Value)]) -> Result<DynamicBatching, String> {
        let preferred = numbers(fields, "preferred_batch_size")?;
        if preferred.len() > 1 {
            tracing::warn!(
                "{CONFIG}: dynamic_batching.preferred_batch_size lists several sizes; ortserve fills batches up to the largest ({})",
                preferred.iter().max().expect("several")
            );
        }
        for (key, _) in fields {
            if !matches!(
                key.as_str(),
                "preferred_batch_size" | "max_queue_delay_microseconds"
            ) {
                tracing::warn!(
                    key = excerpt(key).as_str(),
                    "Triton dynamic_batching setting has no equivalent in ortserve; ignored"
                );
            }
        }
        Ok(DynamicBatching {
            largest_preferred: preferred.into_iter().max(),
            delay_micros: number(fields, "max_queue_delay_microseconds")?.unwrap_or(0),
        })
    }
}

/// Workers: the instance groups' counts, added up.
fn instance_count(config: &[(String, Value)]) -> Result<Option<u64>, String> {
    let groups = all(config, "instance_group");
    if groups.is_empty() {
        return Ok(None);
    }
    let mut total = 0u64;
    for group in groups {
        let fields = group
            .as_message()
            .ok_or("instance_group entries are messages")?;
        total = total.saturating_add(number(fields, "count")?.unwrap_or(1));
    }
    Ok(Some(total))
}

fn instance_kind(config: &[(String, Value)]) -> Option<&'static str> {
    let kinds: Vec<&str> = all(config, "instance_group")
        .iter()
        .filter_map(|g| text(g.as_message()?, "kind"))
        .collect();
    if kinds.windows(2).any(|w| w[0] != w[1]) {
        tracing::warn!(
            "{CONFIG}: instance groups of several kinds; ortserve runs one kind per model, the first ({})",
            excerpt(kinds[0])
        );
    }
    match kinds.first().copied() {
        Some("KIND_GPU") => Some("gpu"),
        Some("KIND_CPU") => Some("cpu"),
        Some("KIND_AUTO") | None => None,
        Some(other) => {
            tracing::warn!(
                kind = excerpt(other).as_str(),
                "Triton instance kind has no equivalent in ortserve; the device is chosen as for an unset deviceType"
            );
            None
        }
    }
}

fn instance_gpus(config: &[(String, Value)]) -> Result<Vec<i64>, String> {
    let mut ids = Vec::new();
    for group in all(config, "instance_group") {
        let fields = group
            .as_message()
            .ok_or("instance_group entries are messages")?;
        for id in numbers(fields, "gpus")? {
            ids.push(i64::try_from(id).map_err(|_| "a gpus entry is out of range")?);
        }
    }
    Ok(ids)
}

fn version_policy(config: &[(String, Value)]) -> Result<VersionPolicy, String> {
    let Some(policy) = message(config, "version_policy") else {
        return Ok(VersionPolicy::Latest(1));
    };
    if let Some(latest) = message(policy, "latest") {
        let n = number(latest, "num_versions")?.unwrap_or(1);
        return Ok(VersionPolicy::Latest(
            usize::try_from(n).unwrap_or(usize::MAX),
        ));
    }
    if message(policy, "all").is_some() {
        return Ok(VersionPolicy::All);
    }
    if let Some(specific) = message(policy, "specific") {
        return Ok(VersionPolicy::Specific(numbers(specific, "versions")?));
    }
    Err("version_policy must be latest, all or specific".into())
}

/// `input` or `output` entries, with the batch axis put in front when the
/// model batches (Triton's dims leave it out).
fn tensors(
    config: &[(String, Value)],
    key: &str,
    batch_axis: bool,
) -> Result<Vec<DeclaredTensor>, String> {
    all(config, key)
        .iter()
        .map(|entry| {
            let fields = entry
                .as_message()
                .ok_or_else(|| format!("{key} entries are messages"))?;
            let name = text(fields, "name").ok_or_else(|| format!("an {key} has no name"))?;
            let mut shape = Vec::new();
            if batch_axis {
                shape.push(-1);
            }
            let dims = all(fields, "dims");
            if dims.len() > MAX_RANK {
                return Err(format!(
                    "{key} '{}' has {} dims, more than {MAX_RANK}",
                    excerpt(name),
                    dims.len()
                ));
            }
            for dim in dims {
                let dim = dim
                    .as_scalar()
                    .and_then(|d| d.parse::<i64>().ok())
                    .ok_or_else(|| {
                        format!("{key} '{}': dims must be whole numbers", excerpt(name))
                    })?;
                shape.push(dim);
            }
            Ok(DeclaredTensor {
                name: name.to_string(),
                shape,
            })
        })
        .collect()
}

/// Checks what `config.pbtxt` declares against the graph's inputs and
/// outputs: every declared tensor must exist with a compatible shape.
pub fn check_declared_io(
    declared: &DeclaredIo,
    inputs: &[(String, Vec<i64>)],
    outputs: &[(String, Vec<i64>)],
) -> Result<(), String> {
    for (kind, wanted, graph) in [
        ("input", &declared.inputs, inputs),
        ("output", &declared.outputs, outputs),
    ] {
        for tensor in wanted {
            let Some((_, shape)) = graph.iter().find(|(name, _)| *name == tensor.name) else {
                let names: Vec<&str> = graph.iter().map(|(n, _)| n.as_str()).collect();
                return Err(format!(
                    "{} declares {kind} '{}', which the graph does not have (its {kind}s: {})",
                    declared.origin,
                    excerpt(&tensor.name),
                    names.join(", ")
                ));
            };
            let fits = shape.len() == tensor.shape.len()
                && shape
                    .iter()
                    .zip(&tensor.shape)
                    .all(|(&g, &d)| g == d || g < 0 || d < 0);
            if !fits {
                return Err(format!(
                    "{} declares {kind} '{}' with dims {:?} (batch axis included), but the graph's shape is {shape:?}",
                    declared.origin,
                    excerpt(&tensor.name),
                    tensor.shape
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example configuration from Triton's model configuration guide,
    /// with the batching, instance, version and ONNX settings its sections show.
    const GUIDE: &str = r#"
  platform: "onnxruntime_onnx"
  max_batch_size: 8
  input [
    {
      name: "input0"
      data_type: TYPE_FP32
      dims: [ 16 ]
    },
    {
      name: "input1"
      data_type: TYPE_FP32
      dims: [ 16 ]
    }
  ]
  output [
    {
      name: "output0"
      data_type: TYPE_FP32
      dims: [ 16 ]
    }
  ]
  dynamic_batching {
    preferred_batch_size: [ 4, 8 ]
    max_queue_delay_microseconds: 100
  }
  instance_group [
    {
      count: 2
      kind: KIND_GPU
      gpus: [ 0, 1 ]
    }
  ]
  version_policy: { specific { versions: [ 1, 3 ] } }
  optimization { execution_accelerators { gpu_execution_accelerator : [ { name : "tensorrt" } ] } }
"#;

    #[test]
    fn the_guides_configuration_maps_onto_ortserves_settings() {
        let config = TritonConfig::read(&parse(GUIDE).unwrap()).unwrap();
        assert_eq!(config.version_policy, VersionPolicy::Specific(vec![1, 3]));
        assert_eq!(
            config.as_model_config("m"),
            "batchSize: 8\nmaxBatchDelay: 1\nminWorkers: 2\nmaxWorkers: 2\ndeviceType: gpu\ndeviceIds: [0, 1]\n"
        );
        assert_eq!(
            config.io.inputs,
            vec![
                DeclaredTensor {
                    name: "input0".into(),
                    shape: vec![-1, 16]
                },
                DeclaredTensor {
                    name: "input1".into(),
                    shape: vec![-1, 16]
                },
            ]
        );
    }

    #[test]
    fn defaults_no_batching_and_the_latest_version() {
        let config = TritonConfig::read(&parse("name: \"m\"\n").unwrap()).unwrap();
        assert_eq!(config.version_policy, VersionPolicy::Latest(1));
        assert_eq!(config.as_model_config("m"), "batchSize: 1\n");
        assert_eq!(config.file_name, "model.onnx");
    }

    #[test]
    fn other_platforms_and_bad_syntax_are_refused_with_a_reason() {
        let e = TritonConfig::read(&parse("platform: \"tensorrt_plan\"").unwrap()).unwrap_err();
        assert!(
            e.contains("platform 'tensorrt_plan' is not ONNX Runtime"),
            "{e}"
        );
        assert!(
            parse("input [ { name: \"x\" ")
                .unwrap_err()
                .contains("ends in the middle")
        );
        assert!(parse("a { b: 1 ]").is_err());
        assert!(
            parse(&"a { ".repeat(40))
                .unwrap_err()
                .contains("nested deeper")
        );
        // Lists in lists: a hundred thousand would overflow the stack.
        let lists = format!("a: {}", "[".repeat(100_000));
        assert!(parse(&lists).unwrap_err().contains("nested deeper"));
    }

    #[test]
    fn declared_io_must_fit_the_graph() {
        let declared = DeclaredIo {
            origin: "config.pbtxt".into(),
            inputs: vec![DeclaredTensor {
                name: "x".into(),
                shape: vec![-1, 4],
            }],
            outputs: vec![],
        };
        let graph = |shape: Vec<i64>| vec![("x".to_string(), shape)];
        assert!(check_declared_io(&declared, &graph(vec![-1, 4]), &[]).is_ok());
        let e = check_declared_io(&declared, &graph(vec![-1, 5]), &[]).unwrap_err();
        assert!(e.contains("dims [-1, 4]"), "{e}");
        let e = check_declared_io(&declared, &[("y".into(), vec![-1, 4])], &[]).unwrap_err();
        assert!(
            e.contains("declares input 'x', which the graph does not have (its inputs: y)"),
            "{e}"
        );
    }
}

/// Generated configuration text: settings or a reason, never a panic.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_text_gives_settings_or_a_reason(text in "[a-z_:{}\\[\\]<>\"0-9 ,\\n#]{0,120}") {
            if let Ok(fields) = parse(&text) {
                let _ = TritonConfig::read(&fields);
            }
        }
    }
}
