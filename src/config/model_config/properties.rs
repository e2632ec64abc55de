use super::tests::DEFAULTS;
use super::*;
use proptest::prelude::*;

fn yaml_like() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "minWorkers",
        "maxWorkers",
        "batchSize",
        "maxBatchDelay",
        "responseTimeout",
        "jobQueueSize",
        "deviceType",
        "deviceIds",
        "ortserve",
        "parallelType",
        "unknownKey",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        Just("gpu".to_string()),
        Just("[0, -1, 99999999999]".to_string()),
        Just("{intraOpThreads: 99999, maxTensorElements: 0, explain: {samples: 0}}".to_string()),
        Just("{imageClassifier: {topK: 18446744073709551615, resize: 0}}".to_string()),
        "[a-z: \\[\\]{},0-9-]{0,12}",
    ];
    proptest::collection::vec((key, value), 0..6).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| format!("{k}: {v}\n"))
            .collect()
    })
}

proptest! {
    #[test]
    fn any_text_gives_settings_or_a_message(text in "\\PC{0,200}") {
        if let Err(e) = ModelConfigFile::parse("m/model-config.yaml", &text) {
            prop_assert!(e.to_string().starts_with("m/model-config.yaml"), "{}", e);
        }
    }

    #[test]
    fn accepted_settings_resolve_within_bounds(text in yaml_like()) {
        if let Ok(file) = ModelConfigFile::parse("m/model-config.yaml", &text) {
            let entry = serde_json::from_str(r#"{"defaultVersion": true, "minWorkers": 2}"#).unwrap();
            // A models= entry under any accepted file resolves too.
            ModelConfig::resolve(&DEFAULTS, Some(&entry), Some(&file));
            let c = ModelConfig::resolve(&DEFAULTS, None, Some(&file));
            prop_assert!((1..=1024).contains(&c.pool.min_workers) && c.pool.min_workers <= c.pool.max_workers);
            prop_assert!(c.pool.max_workers <= 1024 && (1..=1 << 20).contains(&c.pool.batch_size));
            prop_assert!((1..=1 << 20).contains(&c.pool.job_queue_size));
            let o = &c.session.ortserve;
            prop_assert!(o.intra_op_threads.is_none_or(|n| (1..=DEFAULTS.cores).contains(&n)));
            prop_assert!((1..=MAX_TENSOR_ELEMENTS).contains(&o.max_tensor_elements));
            prop_assert!(o.explain.samples >= 1 && o.image_classifier.top_k() >= 1);
        }
    }
}
