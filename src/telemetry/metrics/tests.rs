use std::time::Duration;

use super::*;

fn id() -> ModelId {
    ModelId {
        name: "m".into(),
        version: "2.0".into(),
    }
}

#[test]
fn a_version_keeps_its_handles_across_loads_and_counts_once_per_call() {
    let metrics = Metrics::new(&MetricsSettings::default()).unwrap();
    let (first, again) = (metrics.model(&id()), metrics.model(&id()));
    assert!(Arc::ptr_eq(&first, &again));
    first.request(Protocol::KServeV1, 503, Duration::from_millis(2));
    first.rejected(Rejection::QueueFull);
    let text = metrics.render(&[]);
    let has = |line: &str| text.lines().any(|l| l == line);
    assert!(
        has(
            r#"ortserve_request_duration_seconds_count{model="m",protocol="kserve_v1",status_class="5xx",version="2.0"} 1"#
        ),
        "{text}"
    );
    assert!(
        has(
            r#"ortserve_request_duration_seconds_bucket{model="m",protocol="kserve_v1",status_class="5xx",version="2.0",le="0.0025"} 1"#
        ),
        "{text}"
    );
    assert!(
        has(
            r#"ortserve_request_duration_seconds_bucket{model="m",protocol="kserve_v1",status_class="5xx",version="2.0",le="0.001"} 0"#
        ),
        "{text}"
    );
    assert!(
        has(r#"ortserve_rejections_total{model="m",reason="queue_full",version="2.0"} 1"#),
        "{text}"
    );
}

#[test]
fn state_gauges_follow_the_latest_snapshot_only() {
    let metrics = Metrics::new(&MetricsSettings::default()).unwrap();
    let gauges = VersionGauges {
        model: id(),
        ready: true,
        queue_rows: 7,
        workers_starting: 0,
        workers_idle: 1,
        workers_busy: 2,
        workers_recovering: 0,
        min_workers: 3,
        device: Some("cuda:1".into()),
    };
    let text = metrics.render(&[gauges]);
    for line in [
        r#"ortserve_queue_rows{model="m",version="2.0"} 7"#,
        r#"ortserve_workers_ready{model="m",version="2.0"} 3"#,
        r#"ortserve_workers{model="m",state="busy",version="2.0"} 2"#,
        r#"ortserve_model_device{device="cuda:1",model="m",version="2.0"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    // A removed version's gauges go with it.
    assert!(!metrics.render(&[]).contains("ortserve_queue_rows{"));
}

#[test]
fn discriminants_index_the_handle_arrays() {
    for (i, reason) in Rejection::ALL.iter().enumerate() {
        assert_eq!(*reason as usize, i);
    }
    assert_eq!(Protocol::OpenAi as usize + 1, Protocol::COUNT);
}

#[test]
fn prometheus_mode_adds_the_frontend_counters_in_torchserve_format() {
    let metrics = Metrics::new(&MetricsSettings {
        prometheus_mode: true,
        ..MetricsSettings::default()
    })
    .unwrap();
    for status in [200, 204, 404, 405, 500, 302] {
        metrics.response(status);
    }
    metrics
        .model(&id())
        .request(Protocol::TorchServe, 200, Duration::from_micros(70));
    let text = metrics.render(&[]);
    let hostname = hostname();
    for line in [
        format!(r#"Requests2XX{{Level="Host",Hostname="{hostname}",}} 2.0"#),
        format!(r#"Requests4XX{{Level="Host",Hostname="{hostname}",}} 2.0"#),
        format!(r#"Requests5XX{{Level="Host",Hostname="{hostname}",}} 2.0"#),
        format!(
            r#"ts_inference_requests_total{{model_name="m",model_version="2.0",hostname="{hostname}",}} 1.0"#
        ),
        format!(
            r#"ts_inference_latency_microseconds{{model_name="m",model_version="2.0",hostname="{hostname}",}} 70.0"#
        ),
        "# TYPE ts_inference_requests_total counter".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    // Each family once: the crate's encoder no longer writes TorchServe's.
    assert_eq!(
        text.matches("# TYPE ts_inference_requests_total").count(),
        1
    );
    assert!(text.contains("ortserve_request_duration_seconds_count{"));
}

#[test]
fn without_prometheus_mode_the_frontend_counters_are_absent() {
    let metrics = Metrics::new(&MetricsSettings::default()).unwrap();
    metrics.response(200);
    metrics
        .model(&id())
        .request(Protocol::TorchServe, 200, Duration::from_micros(70));
    let text = metrics.render(&[]);
    assert!(!text.contains("Requests2XX"), "{text}");
    assert!(
        text.contains("ts_inference_requests_total{hostname="),
        "{text}"
    );
}

#[test]
fn statistics_read_the_histograms() {
    let metrics = Metrics::new(&MetricsSettings::default()).unwrap();
    let model = metrics.model(&id());
    assert_eq!(model.statistics(), VersionStatistics::default());
    model.request(Protocol::KServeV2, 200, Duration::from_millis(3));
    model.request(Protocol::TorchServe, 200, Duration::from_millis(1));
    model.request(Protocol::KServeV2, 400, Duration::from_millis(2));
    model.queue_wait(Duration::from_micros(5));
    model.batch(3, Duration::from_millis(1));
    let stats = model.statistics();
    assert_eq!(stats.success.count, 2);
    assert!(
        (3_999_000..=4_001_000).contains(&stats.success.ns),
        "{stats:?}"
    );
    assert_eq!(stats.fail.count, 1);
    assert_eq!(stats.queue.count, 1);
    assert_eq!(
        (stats.compute_infer.count, stats.compute_input.count),
        (1, 0)
    );
    assert_eq!((stats.inference_count, stats.execution_count), (3, 1));
    assert!(stats.last_inference_ms > 1_600_000_000_000, "{stats:?}");
    assert_eq!(
        Metrics::disabled().model(&id()).statistics(),
        VersionStatistics::default()
    );
}

#[test]
fn with_metrics_off_nothing_is_recorded_or_rendered() {
    let metrics = Metrics::disabled();
    let model = metrics.model(&id());
    model.request(Protocol::TorchServe, 200, Duration::from_millis(1));
    assert!(model.handles.is_none());
    assert_eq!(metrics.render(&[]), "");
}
