//! Command line, `config.properties` and environment handling, checked on the
//! real binary: its exit status, its log and its behaviour.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

const EXIT: Duration = Duration::from_secs(20);

fn assert_clear_library_error(code: Option<i32>, output: &str) {
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("--onnxruntime-lib"), "{output}");
    assert!(output.contains("make setup"), "{output}");
    assert!(!output.contains("panicked"), "{output}");
}

#[test]
fn a_missing_onnxruntime_library_is_one_clear_error() {
    let (code, output) = run_to_exit(
        Launch::default()
            .arg("--onnxruntime-lib")
            .arg("/nonexistent/libonnxruntime.so"),
        EXIT,
    );
    assert_clear_library_error(code, &output);
    assert!(
        output.contains("the ONNX Runtime library was not found at /nonexistent/libonnxruntime.so"),
        "{output}"
    );
}

#[test]
fn a_wrong_library_is_one_clear_error() {
    let garbage = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(garbage.path(), b"not a shared object").unwrap();
    let (code, output) = run_to_exit(
        Launch::default()
            .arg("--onnxruntime-lib")
            .arg(garbage.path().to_str().unwrap()),
        EXIT,
    );
    assert_clear_library_error(code, &output);
    assert!(
        output.contains("is not a usable ONNX Runtime library"),
        "{output}"
    );
    // A real shared object that is not ONNX Runtime, named by the environment variable.
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("libc");
    let (code, output) = run_to_exit(Launch::default().env("ORT_DYLIB_PATH", libc), EXIT);
    assert_clear_library_error(code, &output);
    assert!(
        output.contains("does not export `OrtGetApiBase`"),
        "{output}"
    );
}

#[tokio::test]
async fn properties_files_use_java_syntax_interpolation_and_torchserve_keys() {
    let store = Store::new();
    store.dir_model("linear", "linear", None);
    let launch = Launch::store(&store, "all")
        .property("job_queue_size = $$ORTSERVE_TEST_QUEUE$$")
        .property("max_request_size: 12\\")
        .property("    345")
        .property("models={\\")
        .property("  \"linear\": {\\")
        .property("    \"1.0\": {\"minWorkers\": 2, \"maxWorkers\": 2, \"batchSize\": 4}\\")
        .property("  }\\")
        .property("}")
        .property("vmargs=-Xmx1g")
        .property("surely_unknown_key=1")
        .env("ORTSERVE_TEST_QUEUE", "7");
    let server = Server::healthy(launch).await;
    let log = server.log();
    assert!(log.contains("job_queue_size: 7\n"), "{log}");
    assert!(log.contains("max_request_size: 12345\n"), "{log}");
    let ready = server.wait_for_log("model ready", Duration::from_secs(5));
    assert!(
        ready.contains("workers=2") && ready.contains("batch_size=4"),
        "{ready}"
    );
    assert_eq!(
        log.matches("unknown setting in config.properties; ignored")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("key=\"surely_unknown_key\""), "{log}");
    assert!(
        log.contains("TorchServe setting has no effect in ortserve; ignored")
            && log.contains("key=\"vmargs\""),
        "{log}"
    );
}

#[test]
fn an_unset_interpolated_variable_stops_start_up_naming_it() {
    let (code, output) = run_to_exit(
        Launch::default().property("model_store=$$ORTSERVE_SURELY_UNSET$$"),
        EXIT,
    );
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("key 'model_store': Invalid Environment Variable ORTSERVE_SURELY_UNSET"),
        "{output}"
    );
}

#[test]
fn https_addresses_are_refused_with_advice() {
    let (code, output) = run_to_exit(
        Launch::default().property("inference_address=https://127.0.0.1:8443"),
        EXIT,
    );
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("inference_address=https://127.0.0.1:8443: https is not supported"),
        "{output}"
    );
}

#[tokio::test]
async fn ts_environment_variables_apply_only_when_enabled() {
    let store = Store::new();
    store.dir_model("linear", "linear", Some("minWorkers: 1\n"));
    let off = Server::healthy(Launch::store(&store, "all").env("TS_JOB_QUEUE_SIZE", "3")).await;
    assert!(off.log().contains("job_queue_size: 100\n"), "{}", off.log());
    let on = Server::healthy(
        Launch::store(&store, "all")
            .property("enable_envvars_config=true")
            .property("job_queue_size=50")
            .env("TS_JOB_QUEUE_SIZE", "3")
            .env("TS_MAX_REQUEST_SIZE", "100"),
    )
    .await;
    assert!(on.log().contains("job_queue_size: 3\n"), "{}", on.log());
    // The override is live: a 200-byte body is now too large.
    let body = format!("[{}]", ["[1,2,3,4]"; 20].join(","));
    assert_error(
        on.post_json("/predictions/linear", &body).await,
        413,
        "RequestEntityTooLargeException",
        "max_request_size=100",
    )
    .await;
}

#[tokio::test]
async fn ts_config_file_wins_and_the_command_line_overrides_the_file() {
    let store = Store::new();
    store
        .dir_model("linear", "linear", Some("minWorkers: 1\n"))
        .dir_model("other", "linear", Some("minWorkers: 1\n"));
    let chosen = tempfile::NamedTempFile::new().unwrap();
    let text = format!(
        "inference_address=http://127.0.0.1:0\njob_queue_size=42\nmodel_store={}\nload_models=other\n",
        store.path().display()
    );
    std::fs::write(chosen.path(), text).unwrap();
    // TS_CONFIG_FILE beats --ts-config; --models beats the file's load_models.
    let launch = Launch {
        args: vec!["--models".into(), "linear".into()],
        ..Launch::default()
    }
    .env("TS_CONFIG_FILE", chosen.path().to_str().unwrap());
    let server = Server::healthy(launch).await;
    let log = server.log();
    assert!(
        log.contains(&format!("config file: {}\n", chosen.path().display())),
        "{log}"
    );
    assert!(
        log.contains("job_queue_size: 42\n") && log.contains("load_models: linear\n"),
        "{log}"
    );
    assert_eq!(
        server
            .post_json("/predictions/linear", "[[1,2,3,4]]")
            .await
            .status(),
        200
    );
    assert_eq!(
        server
            .post_json("/predictions/other", "[[1,2,3,4]]")
            .await
            .status(),
        404
    );
}

#[test]
fn config_properties_in_the_working_directory_is_found() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.properties"),
        "inference_address=http://127.0.0.1:0\njob_queue_size=5\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ortserve"))
        .arg("--allow-no-models")
        .current_dir(dir.path())
        .env_remove("TS_CONFIG_FILE")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut output = String::new();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    while !output.contains("listening on") {
        use std::io::BufRead;
        assert!(reader.read_line(&mut output).unwrap() > 0, "{output}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        output.contains("config file: config.properties\n"),
        "{output}"
    );
    assert!(output.contains("job_queue_size: 5\n"), "{output}");
}

#[test]
fn torchserve_launcher_flags_are_accepted() {
    let (code, output) = run_to_exit(
        Launch::default()
            .arg("--start")
            .arg("--ncs")
            .arg("--disable-token-auth")
            .arg("--enable-model-api")
            .arg("--version"),
        EXIT,
    );
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains(env!("CARGO_PKG_VERSION")), "{output}");
}

#[test]
fn version_names_the_build_its_revision_and_the_onnx_runtime_it_loads() {
    let (code, output) = run_to_exit(Launch::default().arg("--version"), EXIT);
    assert_eq!(code, Some(0), "{output}");
    let revision = env!("ORTSERVE_GIT_REVISION");
    let mut lines = output.lines();
    assert_eq!(
        lines.next(),
        Some(format!("ortserve {} (git {revision})", env!("CARGO_PKG_VERSION")).as_str()),
        "{output}"
    );
    // Built from a git checkout (this suite always is): a real commit.
    assert!(
        revision.len() == 12 && revision.chars().all(|c| c.is_ascii_hexdigit()),
        "{revision}"
    );
    // `make setup` installs 1.32.0; the line names the file it loaded.
    let runtime = lines.next().unwrap_or_default();
    assert!(
        runtime.starts_with("ONNX Runtime 1.32.0 (commit ") && runtime.contains(" build) from /"),
        "{output}"
    );
}

#[test]
fn version_says_when_onnx_runtime_does_not_load() {
    let launch = Launch::default()
        .arg("--version")
        .arg("--onnxruntime-lib")
        .arg("/nonexistent/libonnxruntime.so");
    let (code, output) = run_to_exit(launch, EXIT);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.starts_with("ortserve "), "{output}");
    assert!(
        output.contains("ONNX Runtime not loaded: ") && output.contains("--onnxruntime-lib PATH"),
        "{output}"
    );
}

/// Start-up says, per model, what loads from where on which device, and
/// then how long the session build and the warm-up took; a model still
/// loading after two seconds (`slower_warmup` warms up for seconds) says
/// so, so that a long load does not look like a hang.
#[tokio::test]
async fn start_up_logs_each_model_its_source_device_timings_and_progress() {
    let store = Store::new();
    store
        .dir_model(
            "linear",
            "linear",
            Some("minWorkers: 1\nmaxWorkers: 1\ndeviceType: cpu\n"),
        )
        .dir_model(
            "warm",
            "slower_warmup",
            Some("minWorkers: 1\nmaxWorkers: 1\n"),
        );
    let server = Server::start(Launch::store(&store, "all"));
    let loading = server.wait_for_log("loading model model=linear", EXIT);
    let source = store.path().join("linear/model.onnx");
    for field in [
        format!("from={}", source.display()),
        "handler=\"tensor\"".into(),
        "device=\"cpu\"".into(),
        "workers=1".into(),
        "warmup=true".into(),
    ] {
        assert!(loading.contains(&field), "{field} missing in: {loading}");
    }
    let ready = server.wait_for_log("model ready model=linear", EXIT);
    for field in ["device=\"cpu\"", "load_ms=", "session_ms=", "warmup_ms="] {
        assert!(ready.contains(field), "{field} missing in: {ready}");
    }
    let progress = server.wait_for_log("still loading model", EXIT);
    assert!(
        progress.contains("model=warm") && progress.contains("elapsed_s=2"),
        "{progress}"
    );
}

#[tokio::test]
async fn models_take_torchserve_space_separated_entries_too() {
    let store = Store::new();
    store
        .file("a.onnx", &model_bytes("linear"))
        .file("b.onnx", &model_bytes("linear"));
    let launch = Launch {
        args: vec![
            "--model-store".into(),
            store.path().display().to_string(),
            "--models".into(),
            "a.onnx".into(),
            "renamed=b.onnx".into(),
        ],
        ..Launch::default()
    };
    let server = Server::healthy(launch).await;
    assert!(
        server
            .log()
            .contains("load_models: a.onnx,renamed=b.onnx\n"),
        "{}",
        server.log()
    );
    for model in ["a", "renamed"] {
        assert_eq!(
            server
                .post_json(&format!("/predictions/{model}"), "[[1,2,3,4]]")
                .await
                .status(),
            200
        );
    }
}

#[tokio::test]
async fn enabled_ts_environment_variables_override_the_command_line() {
    let store = Store::new();
    store
        .file("a.onnx", &model_bytes("linear"))
        .file("b.onnx", &model_bytes("linear"));
    let launch = Launch::store(&store, "a.onnx")
        .property("enable_envvars_config=true")
        .env("TS_LOAD_MODELS", "b.onnx");
    let server = Server::healthy(launch).await;
    assert!(
        server.log().contains("load_models: b.onnx\n"),
        "{}",
        server.log()
    );
    assert_eq!(
        server
            .post_json("/predictions/b", "[[1,2,3,4]]")
            .await
            .status(),
        200
    );
    assert_eq!(
        server
            .post_json("/predictions/a", "[[1,2,3,4]]")
            .await
            .status(),
        404
    );
}

/// Threads of a process by name (`/proc/PID/task/*/comm`).
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .filter(|comm| {
            comm.trim_end() == name
                || (name.ends_with('*') && comm.starts_with(&name[..name.len() - 1]))
        })
        .count()
}

#[tokio::test]
async fn the_cpus_setting_sizes_the_server_whatever_the_machine() {
    // The flag, the environment variable (as the chart passes the pod's CPU
    // request) and the config.properties key.
    for (cpus, how) in [(1, "flag"), (2, "env"), (1, "key")] {
        let store = Store::new();
        store.dir_model("linear", "linear", None);
        let mut launch = Launch::store(&store, "linear");
        launch = match how {
            "flag" => launch.arg("--cpus").arg(&cpus.to_string()),
            "env" => launch.env("ORTSERVE_CPUS", &cpus.to_string()),
            _ => launch.property(&format!("cpus={cpus}")),
        };
        let server = Server::healthy(launch).await;
        let log = server.log();
        assert!(
            log.contains(&format!("sized for {cpus} cores")),
            "{how}: {log}"
        );
        assert!(log.contains(&format!("cpus: {cpus}\n")), "{how}: {log}");
        let ready = server.wait_for_log("model ready", Duration::from_secs(5));
        assert!(
            ready.contains(&format!("workers={cpus}")),
            "{how}: default workers follow: {ready}"
        );
        let pid = server.pid();
        // tokio gives its blocking pool's threads the runtime's name, and
        // keeps one 10 s after its last task: a count taken then is one
        // too many (seen under the suite's load), so the count must settle.
        let settled = format!("{how}: {cpus} async runtime threads");
        eventually(Duration::from_secs(15), &settled, || async {
            threads_named(pid, "ortserve-io") == cpus
        })
        .await;
        assert_eq!(
            threads_named(pid, "linear-w*"),
            cpus,
            "{how}: model workers"
        );
    }
}

#[test]
fn token_authorization_disabled_or_unset_serves_without_tokens() {
    for launch in [
        Launch::default().property("disable_token_authorization=true"),
        // The launcher's flag wins over the file, as in TorchServe.
        Launch::default()
            .property("disable_token_authorization=false")
            .arg("--disable-token-auth"),
        Launch::default(),
    ] {
        let server = Server::start(launch.arg("--allow-no-models"));
        server.wait_for_log("token authorization: off", EXIT);
        assert!(
            !server.log().contains("token authorization is on"),
            "{}",
            server.log()
        );
    }
}
