//! The mistakes new users make most (docs/troubleshooting.md), each
//! answered by a message that says what happened and what to do. Three of
//! the ten are asserted beside the feature they belong to:
//! `model_sources::a_python_handler_fails_only_its_model`,
//! `configuration::a_missing_onnxruntime_library_is_one_clear_error` and
//! `model_sources::cuda_is_strict_unless_cpu_fallback_is_allowed`.

use std::time::Duration;

use crate::common::*;

const EXIT: Duration = Duration::from_secs(20);
const ONE_WORKER: &str = "minWorkers: 1\nmaxWorkers: 1\n";

#[tokio::test]
async fn a_wrong_model_store_names_the_setting_and_what_the_store_holds() {
    let launch = Launch {
        args: [
            "--model-store",
            "/nonexistent/store",
            "--models",
            "digits.mar",
        ]
        .map(String::from)
        .to_vec(),
        ..Launch::default()
    };
    let server = Server::start(launch);
    assert_eq!(
        failure_of(&server, "digits").await,
        "digits.mar: the model store /nonexistent/store is not a directory; set --model-store \
         (model_store) to the directory that holds the .mar archives or model directories"
    );
    // The store exists but the name is not in it: say what is.
    let store = Store::new();
    store.dir_model("linear", "linear", Some(ONE_WORKER));
    let server = Server::start(Launch::store(&store, "digits.mar"));
    let error = failure_of(&server, "digits").await;
    assert!(error.ends_with("; the store holds linear"), "{error}");
}

#[test]
fn a_model_name_with_a_slash_is_refused_with_how_to_rename_it() {
    let store = Store::new();
    store.dir_model("linear", "linear", Some(ONE_WORKER));
    let server = Server::start(Launch::store(&store, "team/linear=linear"));
    let line = server.wait_for_log("is not a valid model name", EXIT);
    assert!(
        line.contains(
            "'team/linear' is not a valid model name: it must start with a letter, contain only \
             letters, digits, '_', '-' and '.', and be at most 255 characters (rename it with NAME=ARCHIVE)"
        ),
        "{line}"
    );
}

#[tokio::test]
async fn json_sent_to_an_image_model_says_to_send_the_image() {
    let launch = Launch {
        args: vec![
            "--model-store".into(),
            demo_dir().join("model-store").display().to_string(),
            "--models".into(),
            "digits=digits.mar".into(),
        ],
        ..Launch::default()
    };
    let server = Server::healthy(launch).await;
    assert_error(
        server
            .post_json("/predictions/digits", r#"{"data": [1, 2, 3]}"#)
            .await,
        400,
        "BadRequestException",
        "the body is JSON, but this model's handler is image_classifier, which takes an image \
         (tensors go to the Open Inference Protocol route, /v2/models/NAME/infer); send the image \
         file as the body (curl -T image.png) or as a multipart part named data",
    )
    .await;
}

#[tokio::test]
async fn an_image_sent_to_a_tensor_model_names_the_handler_to_set() {
    let store = Store::new();
    store.dir_model("linear", "linear", Some(ONE_WORKER));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let png = std::fs::read(demo_dir().join("samples/digit_7.png")).unwrap();
    assert_error(
        server.put_bytes("/predictions/linear", png).await,
        400,
        "BadRequestException",
        "the body is a PNG image, but this model's handler is tensor (for images, set \
         ortserve.handler: image_classifier in its model-config.yaml); this model takes JSON",
    )
    .await;
}

#[test]
fn a_port_in_use_names_the_setting_to_change() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let launch = Launch::default()
        .arg("--allow-no-models")
        .property(&format!("inference_address=http://127.0.0.1:{port}"));
    let (code, output) = run_to_exit(launch, EXIT);
    assert_eq!(code, Some(1), "{output}");
    let want = format!(
        "error: cannot listen on 127.0.0.1:{port} for the Inference API (inference_address): \
         Address already in use (os error 98): another process (or another ortserve) listens \
         there; stop it, or set inference_address to a free port"
    );
    assert!(output.contains(&want), "{output}");
}

/// A start that fails while models are still loading (here the port is
/// taken and thirty models load) exits with status 1, not a crash. Before,
/// ONNX Runtime's globals were torn down at exit under the loads still
/// running on their own threads: about half such exits died of SIGSEGV or
/// `free(): invalid pointer`, so eight in a row passing by luck is rare.
#[test]
fn a_start_that_fails_while_models_load_exits_cleanly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let store = Store::new();
    for i in 0..30 {
        store.dir_model(&format!("m{i}"), "mnist_cnn", Some(ONE_WORKER));
    }
    for attempt in 1..=8 {
        let launch = Launch::store(&store, "all")
            .property(&format!("inference_address=http://127.0.0.1:{port}"));
        let (code, output) = run_to_exit(launch, EXIT);
        assert_eq!(code, Some(1), "attempt {attempt}: {output}");
        assert!(output.contains("error: cannot listen on"), "{output}");
    }
}

#[test]
fn a_misspelled_key_gets_a_did_you_mean() {
    let store = Store::new();
    store.dir_model("linear", "linear", Some("minWorker: 1\nmaxWorkers: 1\n"));
    let launch = Launch::store(&store, "all").property("job_queue_sise=5");
    let server = Server::start(launch);
    let line = server.wait_for_log("unknown setting in config.properties", EXIT);
    assert!(
        line.contains("key=\"job_queue_sise\" did_you_mean=\"job_queue_size\""),
        "{line}"
    );
    let line = server.wait_for_log("unknown model setting", EXIT);
    assert!(
        line.contains("key=\"minWorker\" did_you_mean=\"minWorkers\""),
        "{line}"
    );
}

#[test]
fn a_configmap_key_mounted_with_subpath_is_refused_with_how_to_mount_it() {
    let mount = tempfile::tempdir().unwrap();
    let file = mount.path().join("linear.yaml");
    std::fs::write(&file, "source: linear\n").unwrap();
    let file = file.display().to_string();
    let launch = Launch::default().arg("--model-config-dir").arg(&file);
    let (code, output) = run_to_exit(launch, EXIT);
    assert_eq!(code, Some(1), "{output}");
    let want = format!(
        "--model-config-dir {file} is a file, not a directory: mount the whole ConfigMap as a \
         volume directory (without subPath, which kubelet never updates) and pass that directory"
    );
    assert!(output.contains(&want), "{output}");
}
