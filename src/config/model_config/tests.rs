use super::*;
use crate::config::{HandlerName, OptimizationLevel};

pub(super) const DEFAULTS: ModelDefaults = ModelDefaults {
    cores: 2,
    workers: 2,
    job_queue_size: 100,
    response_timeout_secs: 120,
    cpu_fallback: false,
};

fn parse(text: &str) -> Result<ModelConfigFile, ConfigError> {
    ModelConfigFile::parse("m.mar!model-config.yaml", text)
}

#[test]
fn defaults_follow_torchserve() {
    let c = ModelConfig::resolve(&DEFAULTS, None, None);
    assert_eq!((c.min_workers, c.max_workers, c.batch_size), (2, 2, 1));
    assert_eq!(c.max_batch_delay, Duration::from_millis(100));
    assert_eq!(c.response_timeout, Duration::from_secs(120));
    assert_eq!(c.max_retry_timeout, Duration::from_secs(300));
    assert_eq!(c.job_queue_size, 100);
    assert_eq!(c.device_type, None);
}

#[test]
fn file_overrides_properties_entry_and_clamps() {
    let entry: serde_json::Map<String, Json> =
        serde_json::from_str(r#"{"minWorkers": 3, "batchSize": 4, "responseTimeout": -1}"#)
            .unwrap();
    let file =
        parse("batchSize: 0\nmaxWorkers: 1\njobQueueSize: -1\nresponseTimeout: 0\n").unwrap();
    let c = ModelConfig::resolve(&DEFAULTS, Some(&entry), Some(&file));
    assert_eq!(c.min_workers, 3);
    assert_eq!(c.max_workers, 3, "maxWorkers below minWorkers is raised");
    assert_eq!(c.batch_size, 1, "batchSize 0 clamps to 1");
    assert_eq!(c.job_queue_size, 100);
    assert_eq!(c.response_timeout, Duration::from_secs(120));
}

#[test]
fn absurd_values_are_clamped_from_above_too() {
    let file =
        parse("responseTimeout: 9223372036854775807\nbatchSize: 99999999999\nmaxWorkers: 100000\n")
            .unwrap();
    let c = ModelConfig::resolve(&DEFAULTS, None, Some(&file));
    assert_eq!(c.response_timeout, Duration::from_secs(365 * 24 * 3600));
    assert_eq!(c.batch_size, 1 << 20);
    assert_eq!(c.max_workers, 1024);
}

#[test]
fn an_unset_max_workers_is_never_below_min_workers() {
    let file = parse("minWorkers: 3\n").unwrap();
    let c = ModelConfig::resolve(&DEFAULTS, None, Some(&file));
    assert_eq!((c.min_workers, c.max_workers), (3, 3));
}

#[test]
fn cpu_fallback_is_the_models_else_the_servers() {
    let server_allows = ModelDefaults {
        cpu_fallback: true,
        ..DEFAULTS
    };
    assert!(ModelConfig::resolve(&server_allows, None, None).cpu_fallback);
    let model_refuses = parse("ortserve:\n  cpuFallback: false\n").unwrap();
    assert!(!ModelConfig::resolve(&server_allows, None, Some(&model_refuses)).cpu_fallback);
}

#[test]
fn bad_values_name_file_key_and_allowed_values() {
    let e = parse("batchSize: eight\n").unwrap_err().to_string();
    assert!(
        e.contains("m.mar!model-config.yaml: batchSize: expected a whole number, got eight"),
        "{e}"
    );
    let e = parse("deviceType: tpu\n").unwrap_err().to_string();
    assert!(
        e.contains("deviceType: expected one of cpu, gpu; got tpu"),
        "{e}"
    );
    let e = parse("ortserve:\n  handler: yolo\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ortserve: unknown variant `yolo`, expected `tensor` or `image_classifier`"),
        "{e}"
    );
    let e = parse("ortserve:\n  topK: 3\n").unwrap_err().to_string();
    assert!(e.contains("unknown field `topK`"), "{e}");
}

#[test]
fn ortserve_section_is_typed() {
    let file = parse(
        "deviceType: gpu\ndeviceIds: [1, 0]\nortserve:\n  version: \"2.0\"\n  handler: image_classifier\n  \
         imageClassifier:\n    topK: 3\n    mean: [0.5]\n  graphOptimizationLevel: basic\n  cpuFallback: true\n",
    )
    .unwrap();
    let c = ModelConfig::resolve(&DEFAULTS, None, Some(&file));
    assert_eq!(c.device_type, Some(DeviceType::Gpu));
    assert_eq!(c.device_ids, vec![1, 0]);
    assert_eq!(c.ortserve.version.as_deref(), Some("2.0"));
    assert_eq!(c.ortserve.handler, Some(HandlerName::ImageClassifier));
    assert_eq!(c.ortserve.image_classifier.top_k(), 3);
    assert_eq!(c.ortserve.optimization_level(), OptimizationLevel::Basic);
    assert!(c.cpu_fallback);
}
