//! `ortserve check` on good and bad stores, declaration directories and
//! settings: every class of input the server refuses at start (or fails a
//! model for) is reported here too, naming the file and key, with exit 1.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::common::*;

/// Runs `ortserve check ARGS` in `dir` (so no stray `config.properties` is
/// read); returns the exit code, stdout and stderr.
fn check_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ortserve"))
        .arg("check")
        .args(args)
        .current_dir(dir)
        .env_remove("TS_CONFIG_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("run ortserve check");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("utf-8 output");
    let code = output.status.code().expect("exited");
    (code, text(output.stdout), text(output.stderr))
}

/// As [`check_in`], with `--output json`: the exit code and the report.
fn check_json(dir: &Path, args: &[&str]) -> (i32, Value) {
    let (code, stdout, stderr) = check_in(dir, &[args, &["--output", "json"]].concat());
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\nstderr: {stderr}"));
    (code, report)
}

/// The report's entry for `name`.
fn model<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["models"]
        .as_array()
        .and_then(|models| models.iter().find(|m| m["name"] == name))
        .unwrap_or_else(|| panic!("{name} is not in {report}"))
}

fn error_kind<'a>(report: &'a Value, name: &str) -> &'a str {
    model(report, name)["error"]["kind"].as_str().unwrap_or("")
}

fn demo_args() -> Vec<String> {
    let store = demo_dir().join("model-store");
    vec![
        "--model-store".into(),
        store.display().to_string(),
        "--models".into(),
        "digits=digits.mar,digits=digits_v2".into(),
    ]
}

#[test]
fn the_demo_store_passes_with_each_models_inputs_and_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let args = demo_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, report) = check_json(dir.path(), &args);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["errors"], json!([]), "{report}");
    let versions: Vec<&Value> = report["models"].as_array().unwrap().iter().collect();
    assert_eq!(versions.len(), 2, "{report}");
    for (entry, version, origin) in [
        (versions[0], "1.0", "digits.mar"),
        (versions[1], "2.0", "digits_v2"),
    ] {
        assert_eq!(
            *entry,
            json!({
                "name": "digits", "version": version, "origin": origin, "ready": true,
                "device": "cpu",
                "inputs": [{"name": "image", "datatype": "float32", "shape": [-1, 1, 8, 8]}],
                "outputs": [{"name": "logits", "datatype": "float32", "shape": [-1, 10]}],
            })
        );
    }
    let (code, text, _) = check_in(dir.path(), &args);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("ready   digits 1.0 from digits.mar on cpu\n          input  image float32 [-1, 1, 8, 8]\n          output logits float32 [-1, 10]\n"), "{text}");
    assert!(
        text.ends_with("check passed: 2 of 2 model versions ready, 0 warnings, 0 errors\n"),
        "{text}"
    );
}

/// One store holding each kind of model the server fails at load: a broken
/// archive entry, a Python handler, a graph ONNX Runtime refuses, a graph
/// that does not fit its settings, a warm-up that fails, a bad
/// model-config.yaml; the good model beside them still checks out.
#[test]
fn every_kind_of_load_failure_is_reported_with_its_reason_and_exit_1() {
    let store = Store::new();
    store
        .dir_model("good", "linear", Some("minWorkers: 1\nmaxWorkers: 1\n"))
        .mar(
            "python.mar",
            &Manifest::new("python", "1.0").handler("my_handler.py"),
            "linear",
            &[],
        )
        .dir_model(
            "fixed",
            "fixed_batch",
            Some("minWorkers: 1\nbatchSize: 2\n"),
        )
        .dir_model("badyaml", "linear", Some("minWorkers: lots\n"))
        .file("garbage/model.onnx", b"not a graph");
    let (code, report) = check_json(
        store.path(),
        &[
            "--model-store",
            &store.path().display().to_string(),
            "--models",
            "good,python=python.mar,fixed,badyaml,garbage,missing=missing.mar",
        ],
    );
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["passed"], false, "{report}");
    assert_eq!(model(&report, "good")["ready"], true, "{report}");
    for (name, kind, reason) in [
        (
            "python",
            "bad_config",
            "handler 'my_handler.py' is custom Python code",
        ),
        ("fixed", "unsupported_io", "batchSize is 2 but"),
        ("badyaml", "bad_config", "minWorkers"),
        ("garbage", "bad_graph", ""),
        ("missing", "bad_archive", "missing.mar"),
    ] {
        assert_eq!(error_kind(&report, name), kind, "{name}: {report}");
        let message = model(&report, name)["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{name}: {message}");
    }
    // Failures are listed once, under their model, not again as log errors.
    assert_eq!(report["errors"], json!([]), "{report}");
    let (_, text, _) = check_in(
        store.path(),
        &[
            "--model-store",
            &store.path().display().to_string(),
            "--models",
            "all",
        ],
    );
    assert!(
        text.contains("FAILED  garbage 1.0 from garbage (bad_graph): "),
        "{text}"
    );
    assert!(
        text.contains("check FAILED: 1 of 5 model versions ready"),
        "{text}"
    );
}

/// `config.properties`: an unknown key is a warning naming the file and the
/// key (exit 0); a value the server refuses stops the check (exit 1).
#[test]
fn settings_warnings_name_the_file_and_key_and_refusals_fail() {
    let store = Store::new();
    store.dir_model("good", "linear", Some("minWorkers: 1\n"));
    let dir = tempfile::tempdir().unwrap();
    let write = |extra: &str| {
        let store = store.path().display();
        let text = format!("model_store={store}\nload_models=all\n{extra}\n");
        std::fs::write(dir.path().join("config.properties"), text).unwrap();
    };
    let args = ["--ts-config", "config.properties"];
    write("job_queue_sise=5");
    let (code, report) = check_json(dir.path(), &args);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report["warnings"],
        json!([{"message": "unknown setting in config.properties; ignored",
                "fields": {"file": "config.properties", "key": "job_queue_sise",
                           "did_you_mean": "job_queue_size"}}]),
        "{report}"
    );
    write("job_queue_size=lots");
    let (code, text, _) = check_in(dir.path(), &args);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("error: job_queue_size"), "{text}");
    write("inference_address=https://0.0.0.0:8443");
    let (code, text, _) = check_in(dir.path(), &args);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("error: inference_address") && text.contains("https"),
        "{text}"
    );
}

/// A ConfigMap's files: a good declaration loads, a bad one fails its model
/// naming the file and the key.
#[test]
fn declarations_are_checked_file_by_file() {
    let store = Store::new();
    store.dir_model("linear", "linear", None);
    let declarations = tempfile::tempdir().unwrap();
    for (file, text) in [
        ("good.yaml", "source: linear\nminWorkers: 1\n"),
        ("typo.yaml", "source: linear\nminWorker: 1\n"),
    ] {
        std::fs::write(declarations.path().join(file), text).unwrap();
    }
    let store_path = store.path().display().to_string();
    let dir = declarations.path().display().to_string();
    let args = ["--model-store", &store_path, "--model-config-dir", &dir];
    let (code, report) = check_json(store.path(), &args);
    assert_eq!(code, 1, "{report}");
    assert_eq!(model(&report, "good")["ready"], true, "{report}");
    let typo = model(&report, "typo");
    assert_eq!(typo["error"]["kind"], "bad_config", "{report}");
    let message = typo["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("typo.yaml: minWorker: unknown key"),
        "{message}"
    );
}

/// What stops the server before any model: no ONNX Runtime, an unreadable
/// token key file, a model config directory that is not one, nothing to check.
#[test]
fn start_up_refusals_are_errors_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new();
    store.dir_model("good", "linear", None);
    let store_path = store.path().display().to_string();
    let good = ["--model-store", &store_path, "--models", "all"];
    let cases: [(&[&str], &str); 4] = [
        (
            &["--onnxruntime-lib", "/nonexistent/libonnxruntime.so"],
            "--onnxruntime-lib PATH",
        ),
        (
            &["--token-key-file", "/nonexistent/keys.json"],
            "/nonexistent/keys.json",
        ),
        (
            &["--model-config-dir", "/nonexistent/configmap"],
            "/nonexistent/configmap",
        ),
        (&[], "no model to check"),
    ];
    for (extra, needle) in cases {
        let args = match extra {
            [] => vec!["--model-store", &store_path],
            _ => [&good[..], extra].concat(),
        };
        let (code, report) = check_json(dir.path(), &args);
        assert_eq!(code, 1, "{args:?}: {report}");
        let errors = report["errors"].to_string();
        assert!(
            errors.contains(needle),
            "{args:?}: {needle} not in {errors}"
        );
    }
}
