use super::*;

fn props(pairs: &[(&str, &str)]) -> Properties {
    Properties {
        values: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[test]
fn load_models_forms() {
    assert_eq!(parse_load_models("all"), LoadModels::All);
    assert_eq!(parse_load_models("standalone"), LoadModels::None);
    assert_eq!(
        parse_load_models("a.mar, b=dir"),
        LoadModels::List(vec![
            ModelRef {
                name: None,
                archive: "a.mar".into()
            },
            ModelRef {
                name: Some("b".into()),
                archive: "dir".into()
            },
        ])
    );
}

#[test]
fn addresses_take_torchserve_forms() {
    assert_eq!(
        parse_address("k", "http://0.0.0.0:8085").unwrap(),
        "0.0.0.0:8085".parse().unwrap()
    );
    assert_eq!(
        parse_address("k", "127.0.0.1:9").unwrap(),
        "127.0.0.1:9".parse().unwrap()
    );
    let e = parse_address("inference_address", "https://127.0.0.1:8443").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("inference_address=https://127.0.0.1:8443: https is not supported")
    );
}

#[test]
fn a_settings_error_quotes_only_the_start_of_its_value() {
    let long = "x".repeat(1_000_000);
    let settings = props(&[("flag", &long), ("buckets", &long)]);
    let errors = [
        parse_address("inference_address", &format!("https://{long}")).unwrap_err(),
        parse_bool(&settings, "flag", false).unwrap_err(),
        parse_buckets(&settings, "buckets", &[1.0]).unwrap_err(),
        parse_bounded("job_queue_size", Some(&long), 1, 0, 10).unwrap_err(),
    ];
    for error in errors {
        let text = error.to_string();
        assert!(text.len() < 300, "quotes {} bytes", text.len());
        assert!(text.contains("xxxxxxxxxx…"), "{text}");
    }
}

#[test]
fn a_kserve_model_name_or_dir_that_load_models_would_split_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spaced = dir.path().join("my models");
    std::fs::create_dir(&spaced).unwrap();
    let cli = |name: &str, dir: &Path| {
        let mut cli = Cli::default();
        cli.kserve.model_name = Some(name.into());
        cli.kserve.model_dir = Some(dir.to_path_buf());
        cli
    };
    for (cli, flag) in [
        (cli("a,b", dir.path()), "--model_name 'a,b'"),
        (cli("x=y", dir.path()), "--model_name 'x=y'"),
        (cli("model", &spaced), "--model_dir '"),
    ] {
        let error = ServerConfig::load(&cli).unwrap_err().to_string();
        assert!(
            error.contains(flag) && error.contains("holds a comma"),
            "{error}"
        );
    }
}

#[test]
fn the_default_worker_count_is_bounded_like_the_setting() {
    let settings = props(&[("cpus", "4096")]);
    let c = ServerConfig::from_properties(None, &settings, &Cli::default()).unwrap();
    assert_eq!(c.model_defaults.cores, 4096);
    assert!(
        c.model_defaults.workers <= MAX_WORKERS,
        "{}",
        c.model_defaults.workers
    );
}

#[test]
fn an_empty_model_store_is_no_model_store() {
    for empty in ["", "  "] {
        let settings = props(&[("model_store", empty)]);
        let c = ServerConfig::from_properties(None, &settings, &Cli::default()).unwrap();
        assert_eq!(c.model_store, None);
    }
}

#[test]
fn defaults_match_torchserve() {
    let c = ServerConfig::from_properties(None, &props(&[]), &Cli::default()).unwrap();
    assert_eq!(c.inference_address, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.management_address, "127.0.0.1:8081".parse().unwrap());
    assert_eq!(c.metrics_address, "127.0.0.1:8082".parse().unwrap());
    assert_eq!(c.max_request_size, 6_553_500);
    assert_eq!(c.max_response_size, 6_553_500);
    assert_eq!(c.model_defaults.job_queue_size, 100);
    assert_eq!(c.model_defaults.response_timeout_secs, 120);
    assert_eq!(c.model_defaults.workers, available_cores());
    assert_eq!(c.model_defaults.cores, available_cores());
    assert_eq!(c.load_models, LoadModels::None);
}

#[test]
fn snapshot_declares_models_to_load() {
    let p = props(&[(
        "model_snapshot",
        r#"{"name":"startup.cfg","modelCount":1,"models":{"mnist":{"1.0":{"defaultVersion":true,"marName":"mnist.mar","minWorkers":1}}}}"#,
    )]);
    let c = ServerConfig::from_properties(None, &p, &Cli::default()).unwrap();
    assert_eq!(
        c.load_models,
        LoadModels::List(vec![ModelRef {
            name: Some("mnist".into()),
            archive: "mnist.mar".into()
        }])
    );
    assert_eq!(c.model_entries["mnist"]["1.0"]["minWorkers"], 1);
}

#[test]
fn bad_numbers_name_the_key() {
    let e =
        ServerConfig::from_properties(None, &props(&[("job_queue_size", "ten")]), &Cli::default())
            .unwrap_err();
    assert_eq!(
        e.to_string(),
        "job_queue_size=ten: expected a whole number ≥ 0"
    );
}

#[test]
fn observability_settings_parse_and_name_the_key() {
    let p = props(&[
        ("enable_metrics_api", "FALSE"),
        ("metrics_latency_buckets", " 0.01, 0.1 ,1"),
        ("access_log", "false"),
    ]);
    let c = ServerConfig::from_properties(None, &p, &Cli::default()).unwrap();
    let o = &c.observability;
    assert!(!o.metrics.enabled && !o.access_log && !o.metrics_on_inference_port);
    assert_eq!(o.metrics.latency_buckets, vec![0.01, 0.1, 1.0]);
    assert_eq!(o.metrics.batch_buckets, DEFAULT_BATCH_BUCKETS.to_vec());
    assert!(!o.metrics.prometheus_mode);
    for (mode, on) in [
        ("prometheus", true),
        ("Prometheus", true),
        ("log", false),
        ("legacy", false),
    ] {
        let c =
            ServerConfig::from_properties(None, &props(&[("metrics_mode", mode)]), &Cli::default())
                .unwrap();
        assert_eq!(c.observability.metrics.prometheus_mode, on, "{mode}");
    }
    for (key, value, message) in [
        (
            "access_log",
            "yes",
            "access_log=yes: expected true or false",
        ),
        (
            "metrics_batch_buckets",
            "1,1",
            "metrics_batch_buckets=1,1: expected",
        ),
        (
            "metrics_latency_buckets",
            "0,1",
            "metrics_latency_buckets=0,1: expected",
        ),
        (
            "metrics_latency_buckets",
            "a",
            "metrics_latency_buckets=a: expected",
        ),
        (
            "metrics_mode",
            "json",
            "metrics_mode=json: expected log, prometheus or legacy",
        ),
    ] {
        let e = ServerConfig::from_properties(None, &props(&[(key, value)]), &Cli::default())
            .unwrap_err();
        assert!(e.to_string().starts_with(message), "{e}");
    }
}

#[test]
fn a_misspelled_key_gets_the_closest_known_one() {
    let known = [
        "job_queue_size",
        "minWorkers",
        "batchSize",
        "inference_address",
    ];
    assert_eq!(closest_key("job_queue_sise", known), Some("job_queue_size"));
    assert_eq!(closest_key("minworker", known), Some("minWorkers"));
    assert_eq!(closest_key("batch_size", known), Some("batchSize"));
    assert_eq!(
        closest_key("inference_adress", known),
        Some("inference_address")
    );
    assert_eq!(closest_key("colour", known), None);
    assert_eq!(closest_key("bat", known), None);
    assert_eq!(closest_key(&"job_queue_size".repeat(100), known), None);
}

#[test]
fn request_memory_defaults_to_a_quarter_of_memory_and_holds_one_largest_body() {
    let load = |pairs: &[(&str, &str)]| {
        ServerConfig::from_properties(None, &props(pairs), &Cli::default()).unwrap()
    };
    let usable = memory_limit().expect("this machine's memory is known");
    assert_eq!(load(&[]).max_request_memory, (usable / 4) as usize);
    assert_eq!(
        load(&[("max_request_memory", "50000000")]).max_request_memory,
        50_000_000
    );
    // Below one body of max_request_size, no such body could be read.
    let raised = load(&[
        ("max_request_size", "2000000"),
        ("max_request_memory", "1000"),
    ]);
    assert_eq!(raised.max_request_memory, 2_000_000);
}
