//! Model store layouts, versions, model-config.yaml and load failures, each
//! checked through the real server: what loads answers, what cannot load is
//! reported (in `/ping` and with 503s) without affecting the others.

use crate::common::*;
use serde_json::json;

const ONE_WORKER: &str = "minWorkers: 1\nmaxWorkers: 1\n";

async fn assert_linear_answers(server: &Server, path: &str) {
    let (status, answer) = server.predict(path, "[[1, 2, 3, 4]]").await;
    assert_eq!(status, 200, "{path}: {answer}");
    assert_close(&answer[0], &linear_expected(&[1.0, 2.0, 3.0, 4.0]), 1e-5);
}

#[tokio::test]
async fn archives_unpacked_archives_directories_and_bare_files_all_load() {
    let store = Store::new();
    store
        .mar("linear.mar", &Manifest::new("linear", "1.0"), "linear", &[("model-config.yaml", ONE_WORKER.as_bytes())])
        .dir_model("plain", "linear", Some(ONE_WORKER))
        .file("bare.onnx", &model_bytes("linear"))
        .file("unpacked/model.onnx", &model_bytes("linear"))
        .file(
            "unpacked/MAR-INF/MANIFEST.json",
            br#"{"model": {"modelName": "lin2", "serializedFile": "model.onnx", "modelVersion": "3.1"}}"#,
        )
        .file("README.txt", b"not a model; ignored");
    let server = Server::healthy(Launch::store(&store, "all")).await;
    for path in [
        "/predictions/linear",
        "/predictions/linear/1.0",
        "/predictions/plain",
        "/predictions/bare",
        "/predictions/lin2/3.1",
    ] {
        assert_linear_answers(&server, path).await;
    }
}

#[tokio::test]
async fn a_python_handler_fails_only_its_model() {
    let store = Store::new();
    store
        .mar(
            "custom.mar",
            &Manifest::new("custom", "1.0").handler("my_handler.py"),
            "linear",
            &[],
        )
        .mar(
            "linear.mar",
            &Manifest::new("linear", "1.0"),
            "linear",
            &[("model-config.yaml", ONE_WORKER.as_bytes())],
        );
    let server = Server::start(Launch::store(&store, "all"));
    let error = failure_of(&server, "custom").await;
    assert!(
        error.contains("handler 'my_handler.py' is custom Python code, which ortserve cannot run"),
        "{error}"
    );
    assert!(error.contains("tensor, image_classifier"), "{error}");
    let response = server.post_json("/predictions/custom", "[[1,2,3,4]]").await;
    assert_eq!(response.headers()["retry-after"], "1");
    assert_error(
        response,
        503,
        "ServiceUnavailableException",
        "custom Python code",
    )
    .await;
    assert_linear_answers(&server, "/predictions/linear").await;
}

#[tokio::test]
async fn built_in_manifest_handlers_and_config_overrides_are_honoured() {
    let store = Store::new();
    let labels = br#"{"0": "r", "1": "g", "2": "b"}"#;
    let config = b"minWorkers: 1\nortserve:\n  imageClassifier:\n    resize: 16\n";
    store
        .mar(
            "color.mar",
            &Manifest::new("color", "1.0").handler("image_classifier"),
            "color_mean",
            &[
                ("index_to_name.json", labels),
                ("model-config.yaml", config),
            ],
        )
        .mar(
            "rescued.mar",
            &Manifest::new("rescued", "1.0").handler("custom.py"),
            "linear",
            &[(
                "model-config.yaml",
                b"minWorkers: 1\nortserve:\n  handler: tensor\n",
            )],
        );
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(16, 16, image::Rgb([0, 0, 255]))
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let (_, answer) = status_json(
        server
            .put_bytes("/predictions/color", png.into_inner())
            .await,
    )
    .await;
    assert_eq!(answer["class"], "b", "{answer}");
    assert_linear_answers(&server, "/predictions/rescued").await;
}

#[tokio::test]
async fn archives_must_hold_onnx_and_names_must_follow_torchserve_rules() {
    let store = Store::new();
    store
        .mar(
            "torch.mar",
            &Manifest::new("torch", "1.0").serialized("model.pt"),
            "linear",
            &[],
        )
        .dir_model("linear", "linear", Some(ONE_WORKER));
    let server = Server::start(Launch::store(
        &store,
        "torch.mar,9lives=linear,remote=https://example.com/m.mar",
    ));
    let ping = server.wait_settled().await;
    let error = |m: &str| {
        ping["models"][m]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{m}: {ping}"))
            .to_string()
    };
    assert!(
        error("torch").contains("serializedFile 'model.pt' is not an ONNX model"),
        "{ping}"
    );
    assert!(
        error("9lives").contains("'9lives' is not a valid model name: it must start with a letter"),
        "{ping}"
    );
    assert!(
        error("remote").contains("ortserve never downloads models"),
        "{ping}"
    );
}

#[tokio::test]
async fn versions_route_and_the_default_is_explicit_or_highest() {
    let store = Store::new();
    // Each version is a different graph, so the answer shows which one ran.
    store
        .mar(
            "m_v1.mar",
            &Manifest::new("m", "1.0"),
            "linear",
            &[("model-config.yaml", ONE_WORKER.as_bytes())],
        )
        .mar(
            "m_v2.mar",
            &Manifest::new("m", "2.0"),
            "gray_mean",
            &[("model-config.yaml", ONE_WORKER.as_bytes())],
        )
        .dir_model(
            "m_v10",
            "multi_io",
            Some("minWorkers: 1\nortserve:\n  version: \"10.0\"\n"),
        );
    let gray = json!([[vec![vec![0.5f32; 8]; 8]]]).to_string();
    let multi = json!({"features": [vec![0; 16]], "ids": [[2]]}).to_string();
    let server = Server::healthy(Launch::store(&store, "m=m_v1.mar,m=m_v2.mar,m=m_v10")).await;
    server.wait_versions_ready("m", &["1.0", "2.0"]).await;
    assert_linear_answers(&server, "/predictions/m/1.0").await;
    let (_, answer) = server.predict("/predictions/m/2.0", &gray).await;
    assert_eq!(answer, json!([[0.5, -0.5]]));
    // 10.0 > 2.0 numerically, so it is the default.
    let (_, answer) = server.predict("/predictions/m", &multi).await;
    assert_eq!(answer["scores"], json!([[2.0, 2.0, 2.0, 2.0]]), "{answer}");
    drop(server);

    // `models=` in config.properties can name the default, as in TorchServe.
    let launch = Launch::store(&store, "m=m_v1.mar,m=m_v2.mar,m=m_v10")
        .property(r#"models={"m": {"2.0": {"defaultVersion": true}}}"#);
    let server = Server::healthy(launch).await;
    let (_, answer) = server.predict("/predictions/m", &gray).await;
    assert_eq!(answer, json!([[0.5, -0.5]]));
}

#[tokio::test]
async fn a_bad_model_config_fails_that_model_naming_file_key_and_values() {
    let store = Store::new();
    store
        .dir_model("typo", "linear", Some("batchSize: eight\n"))
        .dir_model("device", "linear", Some("deviceType: tpu\n"))
        .dir_model("section", "linear", Some("ortserve:\n  topK: 3\n"))
        .dir_model("linear", "linear", Some(ONE_WORKER));
    let server = Server::start(Launch::store(&store, "all"));
    assert!(
        failure_of(&server, "typo")
            .await
            .contains("typo/model-config.yaml: batchSize: expected a whole number, got eight")
    );
    assert!(
        failure_of(&server, "device")
            .await
            .contains("device/model-config.yaml: deviceType: expected one of cpu, gpu; got tpu")
    );
    let error = failure_of(&server, "section").await;
    assert!(
        error
            .contains("section/model-config.yaml: ortserve: unknown field `topK`, expected one of"),
        "{error}"
    );
    assert_error(
        server.post_json("/predictions/typo", "[[1,2,3,4]]").await,
        503,
        "ServiceUnavailableException",
        "batchSize",
    )
    .await;
    assert_linear_answers(&server, "/predictions/linear").await;
}

#[tokio::test]
async fn unservable_graphs_fail_with_the_reason() {
    let store = Store::new();
    store
        .dir_model("zipmap", "zipmap", Some(ONE_WORKER))
        .dir_model(
            "fixed2",
            "fixed_batch",
            Some("minWorkers: 1\nbatchSize: 2\n"),
        )
        .dir_model("fixed1", "fixed_batch", Some(ONE_WORKER));
    let server = Server::start(Launch::store(&store, "all"));
    for model in ["zipmap", "fixed2"] {
        assert_eq!(failure_kind_of(&server, model).await, "unsupported_io");
    }
    let error = failure_of(&server, "zipmap").await;
    assert!(
        error.contains("output 'probabilities' is a seq(map(int64, float32)), not a tensor"),
        "{error}"
    );
    let error = failure_of(&server, "fixed2").await;
    assert!(
        error.contains(
            "batchSize is 2 but 'x' has shape [1, 4], without a dynamic first (batch) axis"
        ),
        "{error}"
    );
    assert_linear_answers(&server, "/predictions/fixed1").await;
    // A fixed batch of 1 (torch.onnx.export's default) also takes one instance
    // without the batch axis, and answers without it.
    let (_, single) = server.predict("/predictions/fixed1", "[1, 2, 3, 4]").await;
    assert_close(&single, &linear_expected(&[1.0, 2.0, 3.0, 4.0]), 1e-5);
    assert_error(
        server
            .post_json("/predictions/fixed1", "[[1,2,3,4],[1,2,3,4]]")
            .await,
        400,
        "BadRequestException",
        "input 'x' expects shape [1, 4] (-1 = any size) but got shape [2, 4]: axis 0 must be 1",
    )
    .await;
}

#[tokio::test]
async fn warm_up_runs_before_a_model_counts_as_ready() {
    let store = Store::new();
    store
        .dir_model("strict", "reshape_by_value", Some(ONE_WORKER))
        .dir_model(
            "lenient",
            "reshape_by_value",
            Some("minWorkers: 1\nortserve:\n  warmup: false\n"),
        );
    let server = Server::start(Launch::store(&store, "all"));
    let error = failure_of(&server, "strict").await;
    assert!(
        error.contains("the warm-up run at the declared input shapes failed"),
        "{error}"
    );
    let (status, answer) = server.predict("/predictions/lenient", "[2, 3]").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]));
}

#[tokio::test]
async fn cuda_is_strict_unless_cpu_fallback_is_allowed() {
    // The test library is ONNX Runtime's CPU build, which has no CUDA provider.
    let store = Store::new();
    store
        .dir_model("strict", "linear", Some("minWorkers: 1\ndeviceType: gpu\n"))
        .dir_model(
            "fallback",
            "linear",
            Some(
                "minWorkers: 1\ndeviceType: gpu\ndeviceIds: [0]\nortserve:\n  cpuFallback: true\n",
            ),
        );
    let server = Server::start(Launch::store(&store, "all"));
    let error = failure_of(&server, "strict").await;
    assert!(
        error.contains("the CUDA execution provider could not be used"),
        "{error}"
    );
    // One of the common mistakes (docs/troubleshooting.md): what to do.
    assert!(
        error.ends_with(
            "the model asks for deviceType: gpu; run it on a node with an NVIDIA GPU and the CUDA image, \
             set deviceType: cpu, or let it serve on CPU with ortserve.cpuFallback: true (or --cpu-fallback)"
        ),
        "{error}"
    );
    assert_linear_answers(&server, "/predictions/fallback").await;
    let warning = server.wait_for_log(
        "serving on CPU because CPU fallback is allowed",
        std::time::Duration::from_secs(5),
    );
    assert!(warning.contains("WARN"), "{warning}");
    assert_eq!(
        server.log().matches("serving on CPU because").count(),
        1,
        "one warning per model"
    );
}

#[tokio::test]
async fn no_models_is_unhealthy_unless_allowed() {
    let store = Store::new();
    let server = Server::start(Launch::store(&store, "all"));
    let (status, body) = status_json(server.get("/ping").await).await;
    assert_eq!(
        (status, body),
        (500, json!({"status": "Unhealthy", "models": {}}))
    );
    drop(server);
    let server = Server::start(Launch::store(&store, "all").arg("--allow-no-models"));
    assert_eq!(server.get("/ping").await.status(), 200);
}

/// `linear` in Triton's repository layout, configured as Triton's model
/// configuration guide shows: batching, two CPU instances, a specific
/// version policy, and a warm-up setting that has no equivalent here.
const TRITON_LINEAR: &str = r#"
name: "linear"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "x"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output [
  {
    name: "y"
    data_type: TYPE_FP32
    dims: [ 3 ]
  }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 2000
}
instance_group [
  {
    count: 2
    kind: KIND_CPU
  }
]
version_policy: { specific { versions: [ 1, 3 ] } }
model_warmup [ { name: "zeros" batch_size: 1 } ]
"#;

fn triton_repository() -> Store {
    let store = Store::new();
    store.file("linear/config.pbtxt", TRITON_LINEAR.as_bytes());
    for version in ["1", "2", "3"] {
        store.file(
            &format!("linear/{version}/model.onnx"),
            &model_bytes("linear"),
        );
    }
    store
        .file(
            "mismatched/config.pbtxt",
            b"platform: \"onnxruntime_onnx\"\nmax_batch_size: 4\ninput [ { name: \"wrong\" data_type: TYPE_FP32 dims: [ 4 ] } ]\n",
        )
        .file("mismatched/1/model.onnx", &model_bytes("linear"));
    store
}

#[tokio::test]
async fn triton_model_repositories_serve_their_versions_with_their_settings() {
    let store = triton_repository();
    let server = Server::start(Launch::store(&store, "all"));
    let reason = failure_of(&server, "mismatched").await;
    assert!(
        reason.contains(
            "config.pbtxt declares input 'wrong', which the graph does not have (its inputs: x)"
        ),
        "{reason}"
    );
    server.wait_versions_ready("linear", &["1", "3"]).await;
    let (status, metadata) = status_json(server.get("/v2/models/linear").await).await;
    assert_eq!(status, 200);
    assert_eq!(
        metadata["versions"],
        serde_json::json!(["1", "3"]),
        "version_policy specific [1, 3]"
    );
    for version in ["1", "3"] {
        assert_linear_answers(&server, &format!("/predictions/linear/{version}")).await;
    }
    assert_eq!(
        server
            .get("/v2/models/linear/versions/2/ready")
            .await
            .status(),
        404
    );
    let log = server.log();
    let ready = log
        .lines()
        .find(|l| l.contains("model ready") && l.contains("model=linear"))
        .unwrap();
    assert!(
        ready.contains("workers=2") && ready.contains("batch_size=8"),
        "{ready}"
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("model_warmup") && l.contains("no equivalent"))
            .count(),
        1,
        "one warning for the setting with no equivalent:\n{log}"
    );
}

#[tokio::test]
async fn kserve_serves_a_triton_repository_from_its_model_dir() {
    let store = triton_repository();
    let launch = Launch {
        args: vec![
            "--model_name=linear".into(),
            format!("--model_dir={}", store.path().display()),
            "--http_port=0".into(),
        ],
        no_config_file: true,
        ..Launch::default()
    };
    let server = Server::start(launch);
    server.wait_versions_ready("linear", &["3"]).await;
    let body =
        r#"{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}"#;
    let (status, answer) = server.predict("/v2/models/linear/infer", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["model_version"], "3",
        "the default is the highest served version"
    );
    assert_close(
        &answer["outputs"][0]["data"],
        &linear_expected(&[1.0, 2.0, 3.0, 4.0]),
        1e-5,
    );
}

/// One entry of a test `.tar.gz`.
enum TarEntry {
    /// A plain file; the path is written as given, even one that `tar`
    /// itself refuses to write (`../x`).
    File(String, Vec<u8>),
    /// A symbolic link and its target.
    Symlink(String, String),
}

/// Writes `entries` into the store as a gzip'd tar named `file`.
fn write_tgz(store: &Store, file: &str, entries: Vec<TarEntry>) {
    let out = std::fs::File::create(store.path().join(file)).unwrap();
    let gzip = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gzip);
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o644);
        let (path, bytes) = match entry {
            TarEntry::File(path, bytes) => {
                header.set_entry_type(tar::EntryType::Regular);
                (path, bytes)
            }
            TarEntry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_link_name(&target).unwrap();
                (path, Vec::new())
            }
        };
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_size(bytes.len() as u64);
        header.set_cksum();
        tar.append(&header, bytes.as_slice()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

/// The files of a model archive, as `torch-model-archiver` lays them out
/// under `top` (`NAME/` for `--archive-format tgz`): the manifest, test
/// model `onnx` as `model.onnx`, and `extra`.
fn archived(top: &str, manifest: &Manifest, onnx: &str, extra: &[(&str, &[u8])]) -> Vec<TarEntry> {
    let mut entries = vec![
        TarEntry::File(
            format!("{top}MAR-INF/MANIFEST.json"),
            manifest.json().into_bytes(),
        ),
        TarEntry::File(format!("{top}model.onnx"), model_bytes(onnx)),
    ];
    for (name, bytes) in extra {
        entries.push(TarEntry::File(format!("{top}{name}"), bytes.to_vec()));
    }
    entries
}

#[tokio::test]
async fn tgz_archives_load_by_their_manifest_name_from_all_and_when_named() {
    let store = Store::new();
    let config: &[(&str, &[u8])] = &[("model-config.yaml", ONE_WORKER.as_bytes())];
    write_tgz(
        &store,
        "linear_archive.tar.gz",
        archived(
            "linear_archive/",
            &Manifest::new("lin_tgz", "2.0"),
            "linear",
            config,
        ),
    );
    // Files at the top, without the folder, load too.
    write_tgz(
        &store,
        "flat.tgz",
        archived("", &Manifest::new("flat", "1.0"), "linear", config),
    );
    let server = Server::healthy(Launch::store(&store, "all")).await;
    for path in [
        "/predictions/lin_tgz/2.0",
        "/predictions/lin_tgz",
        "/predictions/flat",
    ] {
        assert_linear_answers(&server, path).await;
    }
    drop(server);

    let server = Server::healthy(Launch::store(&store, "linear_archive.tar.gz")).await;
    assert_linear_answers(&server, "/predictions/lin_tgz/2.0").await;
    let (status, _) = server.predict("/predictions/flat", "[[1, 2, 3, 4]]").await;
    assert_eq!(status, 404, "only the named archive loads");
}

#[tokio::test]
async fn tgz_entries_that_could_land_outside_fail_their_model_with_the_reason() {
    let store = Store::new();
    let outside = store.path().join("outside.onnx");
    std::fs::write(&outside, model_bytes("linear")).unwrap();
    let mut climbing = archived("climb/", &Manifest::new("climb", "1.0"), "linear", &[]);
    climbing.push(TarEntry::File(
        "climb/../../evil.txt".into(),
        b"evil".to_vec(),
    ));
    write_tgz(&store, "climb.tar.gz", climbing);
    let mut linked = archived("link/", &Manifest::new("link", "1.0"), "linear", &[]);
    linked.remove(1);
    linked.push(TarEntry::Symlink(
        "link/model.onnx".into(),
        outside.display().to_string(),
    ));
    write_tgz(&store, "link.tar.gz", linked);
    store.dir_model("linear", "linear", Some(ONE_WORKER));
    let server = Server::start(Launch::store(&store, "all"));
    let error = failure_of(&server, "climb").await;
    assert!(
        error.contains(
            "climb.tar.gz: the archive entry 'climb/../../evil.txt' climbs out with '..'"
        ),
        "{error}"
    );
    let error = failure_of(&server, "link").await;
    assert!(
        error.contains(&format!(
            "link.tar.gz: the archive entry 'link/model.onnx' is a link to '{}'; \
             ortserve follows no links in archives",
            outside.display()
        )),
        "{error}"
    );
    assert_linear_answers(&server, "/predictions/linear").await;
}

/// The log line holding `message`, which must be a warning.
fn warning(server: &Server, message: &str) -> String {
    let line = server.wait_for_log(message, std::time::Duration::from_secs(10));
    assert!(line.contains(" WARN "), "{line}");
    line
}

#[tokio::test]
async fn store_entries_that_all_passes_over_are_each_named_in_a_warning() {
    let store = Store::new();
    store
        .dir_model("linear", "linear", Some(ONE_WORKER))
        .file("README.txt", b"not a model")
        .file("notes/todo.txt", b"not a model either");
    let server = Server::healthy(Launch::store(&store, "all")).await;
    warning(
        &server,
        "model store entry 'README.txt' skipped: not a model: expected a .mar, .tar.gz or .tgz \
         archive, an .onnx file, or a directory",
    );
    warning(
        &server,
        "model store entry 'notes' skipped: not a model: the directory holds no model.onnx \
         (nor exactly one *.onnx), MAR-INF/MANIFEST.json or config.pbtxt",
    );
    assert_eq!(server.log().matches("skipped: not a model").count(), 2);
}

#[tokio::test]
async fn files_and_settings_without_effect_are_each_named_in_a_warning() {
    let store = Store::new();
    let requirements: (&str, &[u8]) = ("requirements.txt", b"torch\n");
    store
        .mar(
            "linear.mar",
            &Manifest::new("linear", "1.0"),
            "linear",
            &[
                requirements,
                ("setup_config.json", b"{}"),
                ("utils/helper.py", b"pass\n"),
            ],
        )
        .mar("snap.mar", &Manifest::new("snap", "2.0"), "linear", &[])
        .dir_model("plain", "linear", None)
        .file("plain/requirements.txt", b"numpy\n");
    write_tgz(
        &store,
        "lin.tar.gz",
        archived(
            "lin/",
            &Manifest::new("lin", "1.0"),
            "linear",
            &[requirements],
        ),
    );
    let snapshot = json!({
        "name": "startup.cfg",
        "modelCount": 4,
        "models": {
            "linear": {"1.0": {"marName": "linear.mar", "minWorkers": 1}},
            "snap": {"1.0": {"marName": "snap.mar", "minWorkers": 1}},
            "plain": {"1.0": {"marName": "plain", "minWorkers": 1}},
            "lin": {"1.0": {"marName": "lin.tar.gz", "minWorkers": 1}},
        }
    });
    let launch = Launch {
        args: vec!["--model-store".into(), store.path().display().to_string()],
        ..Launch::default()
    }
    .property(&format!("model_snapshot={snapshot}"))
    .property("install_py_dep_per_model=true");
    let server = Server::healthy(launch).await;
    let pip = "TorchServe would pip-install it (install_py_dep_per_model); ortserve runs no \
               Python and installs nothing";
    for origin in ["linear.mar", "plain", "lin.tar.gz"] {
        warning(
            &server,
            &format!("{origin}: 'requirements.txt' is ignored: {pip}"),
        );
    }
    warning(
        &server,
        "linear.mar: 'setup_config.json' is ignored: only a Python handler reads it; give \
         ortserve's built-in handlers their options in model-config.yaml",
    );
    warning(
        &server,
        "linear.mar: 'utils/helper.py' is ignored: ortserve runs no Python; its built-in \
         handlers do the pre- and post-processing",
    );
    warning(
        &server,
        "model_snapshot names snap.mar as version '1.0' of 'snap', but its MANIFEST says \
         version '2.0': it serves as version '2.0', without the snapshot's settings for '1.0'",
    );
    let setting = warning(&server, "key=\"install_py_dep_per_model\"");
    assert!(
        setting.contains("TorchServe setting has no effect in ortserve; ignored")
            && setting.contains("it installs no per-model requirements.txt"),
        "{setting}"
    );
    assert_eq!(server.log().matches("' is ignored: ").count(), 5);
    assert_linear_answers(&server, "/predictions/snap/2.0").await;
}
