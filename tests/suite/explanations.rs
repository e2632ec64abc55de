//! Explanations over real HTTP on the TorchServe, KServe v1 and v2 routes:
//! exact attributions on models whose answers are known in closed form, the
//! same numbers on every route, batching and bounds, bad parameters, and
//! predictions kept fast while explanations run.

use std::time::{Duration, Instant};

use crate::common::*;
use base64::Engine;
use serde_json::{Value, json};

/// The timing test measures latencies; the others must not load the CPU meanwhile.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ONE_WORKER: &str = "minWorkers: 1\nmaxWorkers: 1\n";

/// `linear`'s weight W[i][j].
fn w(i: usize, j: usize) -> f32 {
    (4 * i + j + 1) as f32 / 10.0
}

/// `multi_io`'s projection V[i][j].
fn v(i: usize, j: usize) -> f32 {
    ((i + 2 * j) % 5) as f32 / 4.0 - 0.5
}

/// Every number of a nested JSON array, in order.
fn flat(value: &Value) -> Vec<f32> {
    match value {
        Value::Array(items) => items.iter().flat_map(flat).collect(),
        number => vec![
            number
                .as_f64()
                .unwrap_or_else(|| panic!("not a number: {number}")) as f32,
        ],
    }
}

fn assert_all_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "got {got:?}\nwant {want:?}");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "element {k}: got {g}, want {w}\ngot {got:?}"
        );
    }
}

/// The `region_conv` test image: x[i][j] = (8i + j + 1) / 64, so s > 0 and
/// the predicted class is 0.
fn region_image() -> Vec<f32> {
    (0..64).map(|k| (k + 1) as f32 / 64.0).collect()
}

/// The image as a TorchServe/KServe instance: shape [1, 8, 8].
fn region_instance(x: &[f32]) -> Value {
    json!([x.chunks(8).collect::<Vec<_>>()])
}

/// Whether pixel (r, c) lies in the region `region_conv` sums: rows 2–3, columns 5–6.
fn in_region(r: usize, c: usize) -> bool {
    (2..4).contains(&r) && (5..7).contains(&c)
}

/// Window starts along an 8-pixel axis as Captum places them: ⌈(8 − w)/s⌉ + 1
/// positions, the last one cut off at the edge.
fn starts(window: usize, stride: usize) -> Vec<usize> {
    (0..(8 - window).div_ceil(stride) + 1)
        .map(|k| k * stride)
        .collect()
}

/// Captum's Occlusion on `region_conv`, written out: for each window, the
/// drop in s when the window is zeroed, averaged over the windows covering
/// each pixel.
fn occlusion_reference(x: &[f32], window: usize, stride: usize) -> Vec<f32> {
    let (mut sums, mut hits) = (vec![0f32; 64], vec![0f32; 64]);
    for &r0 in &starts(window, stride) {
        for &c0 in &starts(window, stride) {
            let pixels: Vec<(usize, usize)> = (r0..(r0 + window).min(8))
                .flat_map(|r| (c0..(c0 + window).min(8)).map(move |c| (r, c)))
                .collect();
            let drop: f32 = pixels
                .iter()
                .filter(|&&(r, c)| in_region(r, c))
                .map(|&(r, c)| x[r * 8 + c])
                .sum();
            for (r, c) in pixels {
                sums[r * 8 + c] += drop;
                hits[r * 8 + c] += 1.0;
            }
        }
    }
    sums.iter().zip(&hits).map(|(s, h)| s / h).collect()
}

/// Whether some window containing pixel (r, c) also covers part of the region.
fn touches_region(r: usize, c: usize, window: usize, stride: usize) -> bool {
    let covering = |p: usize| {
        starts(window, stride)
            .into_iter()
            .filter(move |&s| (s..s + window).contains(&p))
    };
    covering(r).any(|r0| {
        covering(c).any(|c0| {
            (r0..r0 + window)
                .any(|rr| (c0..c0 + window).any(|cc| rr < 8 && cc < 8 && in_region(rr, cc)))
        })
    })
}

async fn explain(server: &Server, path: &str, body: &Value) -> Value {
    let (status, answer) = server.predict(path, &body.to_string()).await;
    assert_eq!(status, 200, "{path}: {answer}");
    answer
}

#[tokio::test]
async fn ablation_and_shapley_on_linear_models_are_exact() {
    let _serial = SERIAL.lock().await;
    let store = Store::new();
    store
        .dir_model("linear", "linear", Some(ONE_WORKER))
        .dir_model("multi", "multi_io", Some(ONE_WORKER));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let x = [1.0f32, 2.0, -3.0, 4.0];
    let y = linear_expected(&x);
    let predicted = (0..3).max_by(|&a, &b| y[a].total_cmp(&y[b])).unwrap();
    for method in ["feature_ablation", "shapley_sampling"] {
        for (query, target, baseline) in [
            (String::new(), predicted, 0.0),
            ("&target=0&baseline=0.5".to_string(), 0, 0.5),
            (
                "&target=1&baseline=-1&samples=3&seed=9".to_string(),
                1,
                -1.0,
            ),
        ] {
            let path = format!("/explanations/linear?method={method}{query}");
            let answer = explain(&server, &path, &json!(x)).await;
            // One entry per instance, shaped like the input without the batch axis.
            assert_eq!(answer.as_array().unwrap().len(), 1, "{answer}");
            let want: Vec<f32> = (0..4).map(|i| w(target, i) * (x[i] - baseline)).collect();
            assert_all_close(&flat(&answer[0]), &want, 1e-5);
        }
    }
    // A feature group is ablated together; each member gets the group's total.
    let answer = explain(
        &server,
        "/explanations/linear?method=feature_ablation&target=2&featureMask=0,0,1,1",
        &json!(x),
    )
    .await;
    let (first, second) = (
        w(2, 0) * x[0] + w(2, 1) * x[1],
        w(2, 2) * x[2] + w(2, 3) * x[3],
    );
    assert_all_close(&flat(&answer[0]), &[first, first, second, second], 1e-5);

    // Two inputs: an object keyed by input name. scores = features·Vᵀ + ids.
    let features: Vec<f32> = (0..16).map(|j| (j as f32 - 7.0) / 8.0).collect();
    let body = json!({"features": [features], "ids": [[3]]});
    let answer = explain(&server, "/explanations/multi?target=2", &body).await;
    let want: Vec<f32> = (0..16).map(|j| v(2, j) * features[j]).collect();
    assert_all_close(&flat(&answer[0]["features"]), &want, 1e-5);
    assert_all_close(&flat(&answer[0]["ids"]), &[3.0], 1e-5);
}

/// Shapley value sampling on `interaction`, y = x0·x1 + x2, baseline 0,
/// instance (a, b, c). Every sampled permutation gives x2 exactly c, and the
/// product ab whole to whichever of features 0 and 1 it adds last (adding
/// the first of them to a baseline 0 leaves the product 0). So with n
/// samples, k of which add feature 0 last, the estimate is exactly
/// (ab·k/n, ab·(n−k)/n, c), k ~ Binomial(n, ½); the exact Shapley values are
/// (ab/2, ab/2, c). An additive model cannot show any of this: there every
/// permutation, or none, gives the exact answer.
#[tokio::test]
async fn shapley_sampling_averages_permutations_of_an_interaction() {
    let _serial = SERIAL.lock().await;
    let store = Store::new();
    // batchSize 3: one sampled permutation's three steps are one batch.
    store.dir_model(
        "product",
        "interaction",
        Some("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 3\nmaxBatchDelay: 1\n"),
    );
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let (a, b, c) = (2.0f32, 3.0f32, 5.0f32);
    let x = json!([a, b, c]);
    let shapley = |samples: usize, seed: u64| {
        let (server, x) = (&server, &x);
        async move {
            let path = format!(
                "/explanations/product?method=shapley_sampling&baseline=0&samples={samples}&seed={seed}"
            );
            let answer = explain(server, &path, x).await;
            let phi = flat(&answer[0]);
            assert_eq!(phi.len(), 3, "{answer}");
            // The parts every permutation gets exactly.
            assert!((phi[2] - c).abs() <= 1e-5, "x2 gets exactly c: {phi:?}");
            assert!(
                (phi[0] + phi[1] - a * b).abs() <= 1e-4,
                "features 0 and 1 share ab: {phi:?}"
            );
            // Each sample gives ab to one of them: phi0 is ab·k/n, k whole.
            let k = phi[0] / (a * b) * samples as f32;
            assert!(
                (k - k.round()).abs() <= 1e-3 && (0.0..=samples as f32).contains(&k.round()),
                "phi0 = {} is not ab·k/{samples}: {phi:?}",
                phi[0]
            );
            phi
        }
    };

    // Many samples: within 5 standard deviations of the exact (ab/2, ab/2).
    // k/n has standard deviation 1/(2√n) = 0.025 at n = 400, so the bound is
    // 0.125·ab. (A fixed seed makes the answer fixed; the bound says how far
    // any seed may sensibly land.)
    let n = 400;
    let many = shapley(n, 1).await;
    let tolerance = 5.0 * a * b / (2.0 * (n as f32).sqrt());
    for phi in &many[..2] {
        assert!(
            (phi - a * b / 2.0).abs() <= tolerance,
            "{n} samples: {many:?}, want ({}, {}, {c}) ± {tolerance}",
            a * b / 2.0,
            a * b / 2.0
        );
    }

    // Few samples: the estimate depends on the seed, and a seed repeats exactly.
    let mut estimates = Vec::new();
    for seed in 0..6 {
        let first = shapley(4, seed).await;
        assert_eq!(shapley(4, seed).await, first, "seed {seed} repeats exactly");
        estimates.push(first);
    }
    let mut sorted: Vec<f32> = estimates.iter().map(|phi| phi[0]).collect();
    sorted.sort_by(f32::total_cmp);
    sorted.dedup();
    assert!(
        sorted.len() > 1,
        "six seeds gave one estimate with 4 samples: {estimates:?}"
    );
}

#[tokio::test]
async fn occlusion_is_non_zero_only_over_windows_touching_the_region() {
    let _serial = SERIAL.lock().await;
    let store = Store::new();
    store.dir_model(
        "region",
        "region_conv",
        Some("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 4\nmaxBatchDelay: 50\n"),
    );
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let x = region_image();
    let body = region_instance(&x);
    // Default window for 8×8: an eighth of each side, so one pixel: the
    // region's pixels get their own value, every other pixel 0.
    let answer = explain(&server, "/explanations/region", &body).await;
    let want: Vec<f32> = (0..64)
        .map(|k| if in_region(k / 8, k % 8) { x[k] } else { 0.0 })
        .collect();
    assert_all_close(&flat(&answer[0]), &want, 1e-6);
    // 64 windows in batches of batchSize 4, each batch one explanation request.
    server.wait_for_log_lines(
        "model=region (version 1.0) rows=4 requests=1",
        16,
        Duration::from_secs(5),
    );

    for (window, stride) in [(2, 2), (3, 2), (3, 1)] {
        let path =
            format!("/explanations/region?window=1,{window},{window}&stride=1,{stride},{stride}");
        let got = flat(&explain(&server, &path, &body).await[0]);
        assert_all_close(&got, &occlusion_reference(&x, window, stride), 1e-5);
        for k in 0..64 {
            let (r, c) = (k / 8, k % 8);
            assert_eq!(
                got[k] != 0.0,
                touches_region(r, c, window, stride),
                "window {window} stride {stride}, pixel ({r},{c}): {got:?}"
            );
        }
    }
    // Explaining class 1 (−s) flips every sign.
    let answer = explain(&server, "/explanations/region?target=1", &body).await;
    let negated: Vec<f32> = want.iter().map(|a| -a).collect();
    assert_all_close(&flat(&answer[0]), &negated, 1e-6);
}

#[tokio::test]
async fn torchserve_v1_and_v2_routes_give_the_same_numbers() {
    let _serial = SERIAL.lock().await;
    let store = Store::new();
    store.dir_model("region", "region_conv", Some(ONE_WORKER)).dir_model(
        "configured",
        "region_conv",
        Some("minWorkers: 1\nmaxWorkers: 1\nortserve:\n  explain:\n    window: [1, 3, 3]\n    stride: [1, 2, 2]\n"),
    );
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let x = region_image();
    let want = occlusion_reference(&x, 3, 2);
    let negated: Vec<f32> = want.iter().map(|a| -a).collect();
    let window = json!({"window": [1, 3, 3], "stride": [1, 2, 2]});

    // The same choices from model-config.yaml.
    let answer = explain(&server, "/explanations/configured", &region_instance(&x)).await;
    assert_all_close(&flat(&answer), &want, 1e-5);
    // Multipart: one entry per part, in order (the second image is doubled).
    let doubled_image: Vec<f32> = x.iter().map(|v| 2.0 * v).collect();
    let form = reqwest::multipart::Form::new()
        .text("data", region_instance(&x).to_string())
        .text("data", region_instance(&doubled_image).to_string());
    let response = server
        .post_multipart("/explanations/configured", form)
        .await;
    let (status, answer) = status_json(response).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer.as_array().unwrap().len(), 2, "{answer}");
    assert_all_close(&flat(&answer[0]), &want, 1e-5);
    let twice: Vec<f32> = want.iter().map(|a| 2.0 * a).collect();
    assert_all_close(&flat(&answer[1]), &twice, 1e-5);

    for path in ["/explanations/region", "/explanations/region/1.0"] {
        let path = format!("{path}?window=1,3,3&stride=1,2,2");
        let answer = explain(&server, &path, &region_instance(&x)).await;
        assert_all_close(&flat(&answer), &want, 1e-5);
    }
    // v1: parameters in the body, and a per-instance target as in the mnist sample.
    let body = json!({
        "instances": [region_instance(&x), {"image": region_instance(&x), "target": 1}],
        "parameters": window,
    });
    let answer = explain(&server, "/v1/models/region:explain", &body).await;
    let explanations = answer["explanations"].as_array().unwrap();
    assert_eq!(explanations.len(), 2, "{answer}");
    assert_all_close(&flat(&explanations[0]), &want, 1e-5);
    assert_all_close(&flat(&explanations[1]), &negated, 1e-5);

    // v2: outputs named after the inputs; rows explained one by one.
    let both: Vec<f32> = x.iter().chain(&doubled_image).copied().collect();
    let body = json!({
        "id": "e1",
        "inputs": [{"name": "image", "shape": [2, 1, 8, 8], "datatype": "FP32", "data": both}],
        "parameters": window,
    });
    for path in [
        "/v2/models/region/explain",
        "/v2/models/region/versions/1.0/explain",
    ] {
        let answer = explain(&server, path, &body).await;
        let output = &answer["outputs"][0];
        assert_eq!(answer["id"], "e1");
        assert_eq!(
            (&output["name"], &output["datatype"], &output["shape"]),
            (&json!("image"), &json!("FP32"), &json!([2, 1, 8, 8])),
            "{answer}"
        );
        let data = flat(&output["data"]);
        assert_all_close(&data[..64], &want, 1e-5);
        assert_all_close(&data[64..], &twice, 1e-5);
    }
    // And as binary data when asked.
    let mut binary = body.clone();
    binary["parameters"]["binary_data_output"] = json!(true);
    let response = server
        .post_json("/v2/models/region/explain", &binary.to_string())
        .await;
    let (header, bytes) = binary_parts(response).await;
    assert_eq!(
        header["outputs"][0]["parameters"]["binary_data_size"],
        2 * 64 * 4
    );
    let values: Vec<f32> = bytes
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_all_close(&values[..64], &want, 1e-5);
}

#[tokio::test]
async fn image_models_are_explained_over_the_tensor_the_model_sees() {
    let _serial = SERIAL.lock().await;
    let store = Store::new();
    let config = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 8\nmaxBatchDelay: 50\nortserve:\n  handler: image_classifier\n  imageClassifier:\n    resize: 28\n";
    store.dir_model("mnist", "mnist_cnn", Some(config));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let (png, tensor) = sample_png_and_tensor();

    // The reference request, byte for byte: {"data": "<base64 png>", "target": 0}.
    let sample = std::fs::read_to_string(
        data_dir().join("reference/torchserve_kserve_v1_mnist_request.json"),
    )
    .unwrap();
    let (status, answer) = server.predict("/v1/models/mnist:explain", &sample).await;
    assert_eq!(status, 200, "{answer}");
    let explanation = &answer["explanations"][0];
    let rows = explanation[0].as_array().unwrap();
    assert_eq!(
        (
            explanation.as_array().unwrap().len(),
            rows.len(),
            rows[0].as_array().unwrap().len()
        ),
        (1, 28, 28)
    );
    let from_v1 = flat(explanation);
    // Default occlusion window for 28×28: 4×4 blocks, each one value.
    for k in 0..784 {
        let (r, c) = (k / 28, k % 28);
        assert_eq!(
            from_v1[k],
            from_v1[(r / 4 * 4) * 28 + c / 4 * 4],
            "pixel ({r},{c})"
        );
    }
    assert!(from_v1.iter().any(|a| *a != 0.0));

    // The same tensor sent directly (v2) and the PNG sent raw (TorchServe).
    let pixels: Vec<f32> = tensor.iter().flatten().flatten().copied().collect();
    let body = json!({
        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": pixels}],
        "parameters": {"target": 0},
    });
    let answer = explain(&server, "/v2/models/mnist/explain", &body).await;
    assert_all_close(&flat(&answer["outputs"][0]["data"]), &from_v1, 1e-6);
    let response = server
        .put_bytes("/explanations/mnist?target=0", png.clone())
        .await;
    let (status, answer) = status_json(response).await;
    assert_eq!(status, 200, "{answer}");
    assert_all_close(&flat(&answer), &from_v1, 1e-6);

    // Another target explains another class.
    let encoded = base64::engine::general_purpose::STANDARD.encode(&png);
    let body = json!({"instances": [{"data": encoded, "target": 3}]});
    let answer = explain(&server, "/v1/models/mnist:explain", &body).await;
    assert_ne!(flat(&answer["explanations"][0]), from_v1);
}

#[tokio::test]
async fn bad_parameters_get_400s_that_name_them() {
    let _serial = SERIAL.lock().await;
    let store = Store::new();
    store
        .dir_model(
            "region",
            "region_conv",
            Some("minWorkers: 1\nmaxWorkers: 1\nortserve:\n  explain:\n    maxForwardPasses: 20\n"),
        )
        .dir_model("multi", "multi_io", Some(ONE_WORKER));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let body = region_instance(&region_image()).to_string();
    for (query, message) in [
        (
            "window=1,9,2",
            "window [1, 9, 2] does not fit the instance shape [1, 8, 8]",
        ),
        ("window=2,2", "need one value per axis"),
        (
            "window=1,4,4&stride=1,5,5",
            "stride [1, 5, 5] must be between 1 and the window",
        ),
        (
            "method=gradients",
            "unknown explanation method 'gradients'; use one of occlusion, feature_ablation, shapley_sampling",
        ),
        ("bogus=1", "unknown explanation parameter 'bogus'"),
        (
            "window=1,2,2&target=2",
            "target 2 is out of range: output 'scores' has 2 values per row",
        ),
        (
            "window=1,2,2&samples=x",
            "explanation parameter 'samples' must be a whole number",
        ),
        // 64 one-pixel windows + the original input: over the model's cap of 20.
        (
            "",
            "needs 65 forward passes, over the limit of 20 (ortserve.explain.maxForwardPasses)",
        ),
        (
            "method=shapley_sampling&featureMask=0,1",
            "featureMask has 2 entries but the instance has 64 features",
        ),
        (
            "method=shapley_sampling&samples=0",
            "samples must be at least 1",
        ),
        // A count that would wrap around is refused, not wrapped under the cap.
        (
            "method=shapley_sampling&samples=18446744073709551615",
            "needs 18446744073709551615 forward passes, over the limit of 20",
        ),
    ] {
        let response = server
            .post_json(&format!("/explanations/region?{query}"), &body)
            .await;
        assert_error(response, 400, "BadRequestException", message).await;
    }
    // 16 windows of 2×2 fit under the cap.
    explain(
        &server,
        "/explanations/region?window=1,2,2",
        &region_instance(&region_image()),
    )
    .await;

    // KServe's routes answer {"error": ...}.
    let v1 =
        json!({"instances": [region_instance(&region_image())], "parameters": {"method": "lime"}});
    assert_kserve_error(
        server
            .post_json("/v1/models/region:explain", &v1.to_string())
            .await,
        400,
        "unknown explanation method 'lime'",
    )
    .await;
    let v1 = json!({"instances": [{"image": region_instance(&region_image()), "target": "cat"}]});
    assert_kserve_error(
        server
            .post_json("/v1/models/region:explain", &v1.to_string())
            .await,
        400,
        "the instance's 'target' must be a whole number",
    )
    .await;
    let v2 = json!({
        "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": region_image()}],
        "parameters": {"window": [1, 8, 9]},
    });
    assert_kserve_error(
        server
            .post_json("/v2/models/region/explain", &v2.to_string())
            .await,
        400,
        "does not fit the instance shape",
    )
    .await;
    // A trillion rows of nothing: refused before a row is counted, where
    // explaining it instance by instance once took the server down.
    let empty = json!({
        "inputs": [{"name": "image", "shape": [1_000_000_000_000u64, 1, 8, 0], "datatype": "FP32", "data": []}],
    });
    assert_kserve_error(
        server
            .post_json("/v2/models/region/explain", &empty.to_string())
            .await,
        400,
        "is empty, but its other axes span more than",
    )
    .await;
    // What the request names is quoted, not repeated whole.
    let long = json!({"instances": [region_instance(&region_image())], "parameters": {"method": "x".repeat(100_000)}});
    assert_kserve_error(
        server
            .post_json("/v1/models/region:explain", &long.to_string())
            .await,
        400,
        &format!("unknown explanation method '{}…';", "x".repeat(40)),
    )
    .await;
    // An integer input cannot take a fractional baseline.
    let multi = json!({"features": [vec![0.0; 16]], "ids": [[3]]});
    assert_error(
        server
            .post_json("/explanations/multi?baseline=0.5", &multi.to_string())
            .await,
        400,
        "BadRequestException",
        "baseline 0.5 is not a int64 value, the type of input 'ids'",
    )
    .await;
    // Nothing else was harmed: predictions still answer.
    let (status, _) = server.predict("/predictions/region", &body).await;
    assert_eq!(status, 200);
}

/// `slow_loop` at x = 400 runs ≈ 60 ms per pass and returns x.
async fn slow_prediction(server: &Server) -> Duration {
    let started = Instant::now();
    let (status, answer) = server.predict("/predictions/slow", "[400]").await;
    assert_eq!((status, answer), (200, json!([400.0])));
    started.elapsed()
}

#[tokio::test]
async fn predictions_stay_fast_while_explanations_run() {
    let _serial = SERIAL.lock().await;
    let store = Store::new();
    store.dir_model("slow", "slow_loop", Some(ONE_WORKER));
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let mut alone = Vec::new();
    for _ in 0..3 {
        alone.push(slow_prediction(&server).await);
    }
    let pass = *alone.iter().min().unwrap();

    // Sixteen explanations of 3 slow passes each (the input, and one per
    // permutation): without a share rule, 16 batches would be queued ahead of
    // a prediction. With it, at most one explanation batch is ahead of a
    // prediction on this one-worker model.
    let started = Instant::now();
    let explanations: Vec<_> = (0..16)
        .map(|_| {
            let client = server.client.clone();
            let url = server.url("/explanations/slow?method=shapley_sampling&samples=2");
            tokio::spawn(async move {
                let response = client.post(url).body("[400]").send().await.unwrap();
                let (status, answer) = status_json(response).await;
                assert_eq!((status, answer), (200, json!([[400.0]])));
                Instant::now()
            })
        })
        .collect();
    tokio::time::sleep(pass * 3).await;
    let mut during = Vec::new();
    for _ in 0..4 {
        during.push(slow_prediction(&server).await);
    }
    let predictions_done = Instant::now();
    let mut last_explanation = started;
    for handle in explanations {
        last_explanation = last_explanation.max(handle.await.unwrap());
    }
    assert!(
        last_explanation > predictions_done,
        "the explanations ended before the predictions: nothing overlapped"
    );
    let bound = pass * 4 + Duration::from_millis(50);
    for latency in &during {
        assert!(
            *latency < bound,
            "a prediction took {latency:?} while explanations ran (one pass: {pass:?}; all: {during:?})"
        );
    }
}

#[tokio::test]
async fn an_explained_output_the_model_lacks_fails_its_load() {
    let _serial = SERIAL.lock().await;
    let store = Store::new();
    store
        .dir_model(
            "multi",
            "multi_io",
            Some("ortserve:\n  explain:\n    output: 2\n"),
        )
        .dir_model("linear", "linear", Some(ONE_WORKER));
    let server = Server::start(Launch::store(&store, "all"));
    let ping = server.wait_settled().await;
    let error = ping["models"]["multi"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("ortserve.explain.output is 2 but the model has 2 outputs"),
        "{ping}"
    );
    // The other model serves explanations as usual.
    let (status, answer) = server
        .predict("/explanations/linear?target=0", "[1, 0, 0, 0]")
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_all_close(&flat(&answer), &[0.1, 0.0, 0.0, 0.0], 1e-6);
}
