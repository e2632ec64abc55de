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
    assert_eq!(
        (c.pool.min_workers, c.pool.max_workers, c.pool.batch_size),
        (2, 2, 1)
    );
    assert_eq!(c.pool.max_batch_delay, Duration::from_millis(100));
    assert_eq!(c.pool.response_timeout, Duration::from_secs(120));
    assert_eq!(c.pool.max_retry_timeout, Duration::from_secs(300));
    assert_eq!(c.pool.job_queue_size, 100);
    assert_eq!(c.pool.worker_idle_timeout, Duration::from_secs(60));
    assert_eq!(c.pool.inline_run_limit, Duration::from_micros(50));
    assert!(c.pool.warmup && !c.pool.default_version);
    assert_eq!(c.session.device_type, None);
}

#[test]
fn file_overrides_properties_entry_and_clamps() {
    let entry: serde_json::Map<String, Json> =
        serde_json::from_str(r#"{"minWorkers": 3, "batchSize": 4, "responseTimeout": -1}"#)
            .unwrap();
    let file =
        parse("batchSize: 0\nmaxWorkers: 1\njobQueueSize: -1\nresponseTimeout: 0\n").unwrap();
    let c = ModelConfig::resolve(&DEFAULTS, Some(&entry), Some(&file));
    assert_eq!(c.pool.min_workers, 3);
    assert_eq!(
        c.pool.max_workers, 3,
        "maxWorkers below minWorkers is raised"
    );
    assert_eq!(c.pool.batch_size, 1, "batchSize 0 clamps to 1");
    assert_eq!(c.pool.job_queue_size, 100);
    assert_eq!(c.pool.response_timeout, Duration::from_secs(120));
}

#[test]
fn absurd_values_are_clamped_from_above_too() {
    let file =
        parse("responseTimeout: 9223372036854775807\nbatchSize: 99999999999\nmaxWorkers: 100000\n")
            .unwrap();
    let c = ModelConfig::resolve(&DEFAULTS, None, Some(&file));
    assert_eq!(
        c.pool.response_timeout,
        Duration::from_secs(365 * 24 * 3600)
    );
    assert_eq!(c.pool.batch_size, 1 << 20);
    assert_eq!(c.pool.max_workers, 1024);
}

#[test]
fn an_unset_max_workers_is_never_below_min_workers() {
    let file = parse("minWorkers: 3\n").unwrap();
    let c = ModelConfig::resolve(&DEFAULTS, None, Some(&file));
    assert_eq!((c.pool.min_workers, c.pool.max_workers), (3, 3));
}

#[test]
fn cpu_fallback_is_the_models_else_the_servers() {
    let server_allows = ModelDefaults {
        cpu_fallback: true,
        ..DEFAULTS
    };
    assert!(
        ModelConfig::resolve(&server_allows, None, None)
            .session
            .cpu_fallback
    );
    let model_refuses = parse("ortserve:\n  cpuFallback: false\n").unwrap();
    assert!(
        !ModelConfig::resolve(&server_allows, None, Some(&model_refuses))
            .session
            .cpu_fallback
    );
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
        e.contains(
            "ortserve: unknown variant `yolo`, expected one of `tensor`, `image_classifier`, `text_generation`"
        ),
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
    assert_eq!(c.session.device_type, Some(DeviceType::Gpu));
    assert_eq!(c.session.device_ids, vec![1, 0]);
    assert_eq!(c.session.ortserve.version.as_deref(), Some("2.0"));
    assert_eq!(
        c.session.ortserve.handler,
        Some(HandlerName::ImageClassifier)
    );
    assert_eq!(c.session.ortserve.image_classifier.top_k(), 3);
    assert_eq!(
        c.session.ortserve.optimization_level(),
        OptimizationLevel::Basic
    );
    assert!(c.session.cpu_fallback);
}

#[test]
fn the_known_keys_come_from_the_layer() {
    assert_eq!(
        ModelConfigLayer::keys(),
        [
            "minWorkers",
            "maxWorkers",
            "batchSize",
            "maxBatchDelay",
            "responseTimeout",
            "startupTimeout",
            "maxRetryTimeoutInSec",
            "jobQueueSize",
            "deviceType",
            "deviceIds",
            "ortserve",
        ]
    );
    let e = ModelConfigFile::check_keys(
        "m.yaml",
        &parse_mapping("m", "minWorker: 1").unwrap().unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("the model keys are minWorkers, maxWorkers,"),
        "{e}"
    );
    // TorchServe's own keys and unknown ones are warned about, not refused.
    let file = parse("parallelType: pp\nsomethingElse: 1\nminWorkers: 3\n").unwrap();
    let c = ModelConfig::resolve(&DEFAULTS, None, Some(&file));
    assert_eq!(c.pool.min_workers, 3);
}

#[test]
fn an_unknown_ortserve_key_is_refused_naming_both_halves() {
    let e = parse("ortserve:\n  warmUp: false\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ortserve: unknown field `warmUp`, expected one of `defaultVersion`, `warmup`,"),
        "{e}"
    );
    assert!(e.contains("`handler`"), "{e}");
    let e = parse("ortserve: 3\n").unwrap_err().to_string();
    assert!(
        e.contains("ortserve: invalid type: integer `3`, expected struct OrtserveOptions"),
        "{e}"
    );
}

#[test]
fn the_entrys_default_flag_survives_a_files_ortserve_section() {
    let entry: serde_json::Map<String, Json> =
        serde_json::from_str(r#"{"defaultVersion": true, "batchSize": "4", "maxWorkers": 0}"#)
            .unwrap();
    let file = parse("ortserve:\n  handler: tensor\n").unwrap();
    let c = ModelConfig::resolve(&DEFAULTS, Some(&entry), Some(&file));
    assert!(c.pool.default_version);
    assert_eq!((c.pool.batch_size, c.pool.max_workers), (1, 2), "skipped");
    let file = parse("ortserve:\n").unwrap();
    assert!(
        ModelConfig::resolve(&DEFAULTS, Some(&entry), Some(&file))
            .pool
            .default_version
    );
    let file = parse("ortserve:\n  defaultVersion: false\n").unwrap();
    let c = ModelConfig::resolve(&DEFAULTS, Some(&entry), Some(&file));
    assert!(!c.pool.default_version, "the file's flag wins");
}

#[test]
fn pool_keys_change_only_the_pool() {
    let before = ModelConfig::resolve(&DEFAULTS, None, Some(&parse("minWorkers: 1\n").unwrap()));
    let pool_only = parse(
        "minWorkers: 2\nbatchSize: 4\nortserve:\n  warmup: false\n  workerIdleTimeoutSec: 0\n  defaultVersion: true\n  inlineRunMicros: 5000\n",
    )
    .unwrap();
    let after = ModelConfig::resolve(&DEFAULTS, None, Some(&pool_only));
    assert_eq!(after.session, before.session);
    assert_ne!(after.pool, before.pool);
    assert_eq!(
        after.pool.worker_idle_timeout,
        Duration::from_secs(1),
        "clamped"
    );
    assert_eq!(
        after.pool.inline_run_limit,
        Duration::from_millis(1),
        "clamped"
    );
    assert!(!after.pool.warmup && after.pool.default_version);
    let session = parse("minWorkers: 1\nortserve:\n  graphOptimizationLevel: basic\n").unwrap();
    let after = ModelConfig::resolve(&DEFAULTS, None, Some(&session));
    assert_eq!(after.pool, before.pool);
    assert_ne!(after.session, before.session);
}

#[test]
fn aliases_that_expand_past_the_node_bound_are_refused_before_they_are_built() {
    // Nine levels of ten aliases each: 10⁹ values from a file of 600 bytes.
    let mut text = String::from("a0: &a0 [0,0,0,0,0,0,0,0,0,0]\n");
    for level in 1..10 {
        let aliases = vec![format!("*a{}", level - 1); 10].join(",");
        text.push_str(&format!("a{level}: &a{level} [{aliases}]\n"));
    }
    let error = parse(&text).expect_err("refused").to_string();
    assert!(
        error.contains("once its aliases (*name) are expanded"),
        "{error}"
    );
    // An alias within reason is YAML as usual.
    let small = parse("minWorkers: &n 2\nmaxWorkers: *n\n").unwrap();
    let c = ModelConfig::resolve(&DEFAULTS, None, Some(&small));
    assert_eq!((c.pool.min_workers, c.pool.max_workers), (2, 2));
}
