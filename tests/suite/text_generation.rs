//! The `text_generation` handler end to end: the generated decoder models
//! (`tiny_lm*`, see tests/models/README.md) whose greedy text is known
//! exactly, served over TorchServe's `/predictions` (whole and chunked),
//! the Open Inference Protocol's `generate`/`generate_stream`, OpenAI's
//! completions (with the `openai` client), and checked for fairness: queue
//! limits, deadlines, disconnects and drain.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// A store holding the generated language-model directories `names`, each
/// with `config` (model-config.yaml) where given.
fn lm_store(names: &[(&str, Option<&str>)]) -> Store {
    let store = Store::new();
    for (name, config) in names {
        let from = models_dir().join(name);
        for entry in std::fs::read_dir(&from).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_str().unwrap().to_string();
            store.file(&format!("{name}/{file}"), &std::fs::read(&path).unwrap());
        }
        if let Some(config) = config {
            store.file(&format!("{name}/model-config.yaml"), config.as_bytes());
        }
    }
    store
}

/// POSTs `body` as it is (a prompt, or a JSON object) to `path`.
async fn post_text(server: &Server, path: &str, body: impl Into<String>) -> reqwest::Response {
    server
        .client
        .post(server.url(path))
        .body(body.into())
        .send()
        .await
        .unwrap()
}

const GENERATES: &str = "ortserve:\n  handler: text_generation\n";

fn golden_lm() -> Value {
    golden("tiny_lm")
}

fn case(prompt: &str) -> Value {
    golden_lm()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["prompt"] == prompt)
        .unwrap()
        .clone()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// POSTs `body` over a raw socket and returns the status line, the headers
/// and the body's chunks exactly as the server framed them.
async fn chunked_post(server: &Server, path: &str, body: &str) -> (String, String, Vec<String>) {
    let address = server.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut raw))
        .await
        .expect("the answer ends")
        .unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap();
    let mut rest = &raw[split + 4..];
    let mut chunks = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            break;
        }
        chunks.push(String::from_utf8(rest[..size].to_vec()).expect("every chunk is whole UTF-8"));
        rest = &rest[size + 2..];
    }
    (status.to_string(), headers.to_ascii_lowercase(), chunks)
}

/// The JSON objects of a server-sent-event body, and whether it ended with
/// OpenAI's `data: [DONE]`.
fn events(body: &str) -> (Vec<Value>, bool) {
    let mut done = false;
    let mut objects = Vec::new();
    for event in body.split("\n\n").filter(|e| !e.is_empty()) {
        let data = event
            .strip_prefix("data: ")
            .expect("every event is one data line");
        match data {
            "[DONE]" => done = true,
            json => objects.push(serde_json::from_str(json).unwrap()),
        }
    }
    (objects, done)
}

#[tokio::test]
async fn every_route_gives_the_models_exact_text() {
    let store = lm_store(&[("tiny_lm", None), ("tiny_lm_merged", None)]);
    let server = Server::healthy(Launch::store(&store, "all")).await;
    for case in golden_lm()["cases"].as_array().unwrap() {
        let (prompt, text) = (
            case["prompt"].as_str().unwrap(),
            case["text"].as_str().unwrap(),
        );
        let generated = case["tokens"].as_array().unwrap().len();
        for model in ["tiny_lm", "tiny_lm_merged"] {
            let whole = post_text(
                &server,
                &format!("/predictions/{model}"),
                prompt.to_string(),
            )
            .await;
            assert_eq!(whole.status(), 200);
            assert_eq!(whole.headers()["content-type"], "text/plain; charset=utf-8");
            assert_eq!(whole.text().await.unwrap(), text, "{model} on {prompt:?}");
            let (status, v2) = status_json(
                server
                    .post_json(
                        &format!("/v2/models/{model}/generate"),
                        &json!({"text_input": prompt}).to_string(),
                    )
                    .await,
            )
            .await;
            assert_eq!(status, 200);
            assert_eq!(
                v2,
                json!({"model_name": model, "model_version": "1.0", "text_output": text, "finish_reason": "stop"})
            );
        }
        let (status, completion) = status_json(
            server
                .post_json(
                    "/openai/v1/completions",
                    &json!({"model": "tiny_lm", "prompt": prompt}).to_string(),
                )
                .await,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(completion["object"], "text_completion");
        assert_eq!(
            completion["choices"],
            json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": "stop"}])
        );
        let prompt_tokens = case["prompt_tokens"].as_array().unwrap().len();
        assert_eq!(
            completion["usage"],
            json!({"prompt_tokens": prompt_tokens, "completion_tokens": generated, "total_tokens": prompt_tokens + generated})
        );
    }
    let log = server.wait_for_log("generated_tokens=35", Duration::from_secs(5));
    assert!(
        log.contains("prompt_tokens=1"),
        "the access log line counts tokens: {log}"
    );
}

#[tokio::test]
async fn streams_send_one_piece_per_chunk_or_event() {
    let store = lm_store(&[("tiny_lm", None)]);
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let pieces = strings(&golden_lm()["pieces"]);
    assert!(
        pieces.contains(&"€".to_string()),
        "the golden pieces hold a 3-byte character whole"
    );

    let (status, headers, chunks) = chunked_post(
        &server,
        "/predictions/tiny_lm",
        r#"{"prompt": "Hello", "stream": true}"#,
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("transfer-encoding: chunked"), "{headers}");
    assert_eq!(chunks, pieces);

    let body = server
        .post_json(
            "/v2/models/tiny_lm/generate_stream",
            r#"{"text_input": "Hello"}"#,
        )
        .await;
    assert_eq!(body.headers()["content-type"], "text/event-stream");
    let (objects, done) = events(&body.text().await.unwrap());
    assert!(!done);
    let (last, texts) = objects.split_last().unwrap();
    assert_eq!(
        texts
            .iter()
            .map(|o| o["text_output"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        pieces
    );
    assert_eq!(
        texts[0],
        json!({"model_name": "tiny_lm", "model_version": "1.0", "text_output": ","})
    );
    assert_eq!(
        *last,
        json!({"model_name": "tiny_lm", "model_version": "1.0", "text_output": "", "finish_reason": "stop"})
    );

    let request = json!({"model": "tiny_lm", "prompt": "Hello", "stream": true, "max_tokens": 4, "stream_options": {"include_usage": true}});
    let body = server
        .post_json("/openai/v1/completions", &request.to_string())
        .await
        .text()
        .await
        .unwrap();
    let (objects, done) = events(&body);
    assert!(done, "OpenAI's stream ends with data: [DONE]");
    let texts: Vec<&str> = objects
        .iter()
        .filter_map(|o| o["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(
        texts,
        [",", " wör", "ld", "!", ""],
        "4 tokens, then the end"
    );
    assert_eq!(objects[4]["choices"][0]["finish_reason"], "length");
    assert_eq!(objects[5]["choices"], json!([]));
    assert_eq!(
        objects[5]["usage"],
        json!({"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5})
    );
    assert!(
        objects
            .iter()
            .all(|o| o["id"] == objects[0]["id"] && o["object"] == "text_completion")
    );
}

#[tokio::test]
async fn stop_strings_lengths_and_seeds() {
    let store = lm_store(&[("tiny_lm", None)]);
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let generate = |body: Value| {
        let server = &server;
        async move {
            let (status, answer) = status_json(
                server
                    .post_json("/v2/models/tiny_lm/generate", &body.to_string())
                    .await,
            )
            .await;
            assert_eq!(status, 200, "{answer}");
            (
                answer["text_output"].as_str().unwrap().to_string(),
                answer["finish_reason"].as_str().unwrap().to_string(),
            )
        }
    };
    let stopped =
        generate(json!({"text_input": "Hello", "parameters": {"stop": ["cents", "€ ="]}})).await;
    assert_eq!(
        stopped,
        (", wörld! 1 ".to_string(), "stop".to_string()),
        "the earliest stop string ends the text, left out"
    );
    let short = generate(json!({"text_input": "Hello", "parameters": {"max_tokens": 3}})).await;
    assert_eq!(short, (", wörld".to_string(), "length".to_string()));
    // A character split over tokens is never sent in part: 7 tokens end inside "€".
    let split = generate(json!({"text_input": "Hello", "parameters": {"max_tokens": 8}})).await;
    assert_eq!(
        split.0, ", wörld! 1 \u{FFFD}",
        "a broken character at the very end is replaced, never sent as raw bytes"
    );

    let sampled = json!({"text_input": "Hello", "parameters": {"temperature": 1.0, "seed": 42, "max_tokens": 30}});
    let first = generate(sampled.clone()).await;
    assert_eq!(
        generate(sampled).await,
        first,
        "the same seed gives the same text"
    );
    let other = generate(json!({"text_input": "Hello", "parameters": {"temperature": 1.0, "seed": 43, "max_tokens": 30}})).await;
    assert_ne!(other.0, first.0, "another seed gives other text");
    assert_ne!(
        first.0,
        case("Hello")["text"].as_str().unwrap(),
        "sampling strays from the greedy text"
    );
    let top1 = generate(
        json!({"text_input": "Hello", "parameters": {"temperature": 1.0, "top_k": 1, "seed": 42}}),
    )
    .await;
    assert_eq!(
        top1.0,
        case("Hello")["text"].as_str().unwrap(),
        "top_k 1 is greedy"
    );
}

#[tokio::test]
async fn bad_requests_are_4xx_naming_what_to_fix() {
    let capped = "ortserve:\n  handler: text_generation\n  textGeneration:\n    maxNewTokens: 40\n";
    let store = lm_store(&[("tiny_lm", Some(capped))]);
    store.dir_model("linear", "linear", None);
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let v2 = |body: &str| {
        let body = body.to_string();
        let server = &server;
        async move { server.post_json("/v2/models/tiny_lm/generate", &body).await }
    };
    assert_kserve_error(v2(r#"{"text_input": "Hi", "parameters": {"max_tokens": 41}}"#).await, 400,
        "max_new_tokens (max_tokens) is 41 but this model generates at most 40 tokens per request (ortserve.textGeneration.maxNewTokens)").await;
    let long_prompt = "x".repeat(95);
    assert_kserve_error(v2(&json!({"text_input": long_prompt, "parameters": {"max_tokens": 2}}).to_string()).await, 400,
        "the prompt (95 tokens) plus max_new_tokens (max_tokens) 2 is more than the model's context of 96 tokens; ask for at most 1 new tokens").await;
    assert_kserve_error(
        v2(r#"{"text_input": "Hi", "parameters": {"temperature": -1}}"#).await,
        400,
        "temperature must be between 0 and 100 (0 chooses greedily)",
    )
    .await;
    assert_kserve_error(
        v2(r#"{"text_input": ""}"#).await,
        400,
        "the prompt is empty; send some text to continue",
    )
    .await;
    assert_kserve_error(v2(r#"{"prompt": "Hi"}"#).await, 400,
        r#"the body has no 'text_input'; send {"text_input": "...", "parameters": {"max_tokens": 20}}"#).await;
    assert_kserve_error(server.post_json("/v2/models/linear/generate", r#"{"text_input": "Hi"}"#).await, 400,
        "model \"linear\" does not generate text: its handler is not text_generation (set ortserve.handler: text_generation in its model-config.yaml for a decoder model)").await;

    let torchserve = post_text(
        &server,
        "/predictions/tiny_lm",
        r#"{"prompt": "Hi", "top_p": 2}"#,
    )
    .await;
    assert_error(
        torchserve,
        400,
        "BadRequestException",
        "top_p must be above 0 and at most 1",
    )
    .await;

    let openai = |body: Value| {
        let server = &server;
        async move {
            server
                .post_json("/openai/v1/completions", &body.to_string())
                .await
        }
    };
    let (status, body) = status_json(openai(json!({"model": "nope", "prompt": "Hi"})).await).await;
    assert_eq!(
        (status, body),
        (
            404,
            json!({"error": {"message": "Model not found: nope", "type": "invalid_request_error", "param": null, "code": null}})
        )
    );
    let (status, body) =
        status_json(openai(json!({"model": "tiny_lm", "prompt": "Hi", "n": 3})).await).await;
    assert_eq!(
        (status, body["error"]["message"].as_str().unwrap()),
        (400, "'n' is not supported by ortserve (got 3)")
    );
    let (status, body) = status_json(
        openai(json!({"model": "tiny_lm", "prompt": "Hi", "stop": vec!["a"; 17]})).await,
    )
    .await;
    assert_eq!(
        (status, body["error"]["message"].as_str().unwrap()),
        (400, "stop has 17 strings; send at most 16")
    );

    let (status, models) = status_json(server.get("/openai/v1/models").await).await;
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "tiny_lm")
    );
}

#[tokio::test]
async fn graphs_and_files_that_do_not_fit_fail_to_load_with_the_reason() {
    let store = lm_store(&[("tiny_lm_no_present", None)]);
    for file in ["model.onnx", "generation_config.json", "config.json"] {
        store.file(
            &format!("no_tokenizer/{file}"),
            &std::fs::read(models_dir().join("tiny_lm").join(file)).unwrap(),
        );
    }
    store.file("no_tokenizer/model-config.yaml", GENERATES.as_bytes());
    let server = Server::start(Launch::store(&store, "all"));
    assert!(failure_of(&server, "tiny_lm_no_present").await.contains(
        "the graph has past_key_values.0.key but no 'present.0.key' output to feed it back"
    ));
    assert!(failure_of(&server, "no_tokenizer").await.contains(
        "the text_generation handler needs the model's tokenizer.json beside the graph (or among the .mar's extra files)"
    ));
}

#[tokio::test]
async fn a_mar_carries_the_tokenizer_and_generation_config() {
    let store = Store::new();
    let dir = models_dir().join("tiny_lm");
    let read = |file: &str| std::fs::read(dir.join(file)).unwrap();
    let (tokenizer, generation) = (read("tokenizer.json"), read("generation_config.json"));
    store.mar(
        "lm.mar",
        &Manifest::new("lm", "2.0")
            .handler("text_generation")
            .serialized("decoder.onnx"),
        "tiny_lm/model",
        &[
            ("tokenizer.json", &tokenizer),
            ("generation_config.json", &generation),
        ],
    );
    let server = Server::healthy(Launch::store(&store, "lm.mar")).await;
    let answer = post_text(&server, "/predictions/lm/2.0", "a").await;
    assert_eq!(
        answer.text().await.unwrap(),
        case("a")["text"].as_str().unwrap()
    );
}

#[tokio::test]
async fn the_openai_client_completes_and_streams() {
    let store = lm_store(&[("tiny_lm", None)]);
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let golden = Path::new(&models_dir()).join("golden/tiny_lm.json");
    let url = format!("{}/openai/v1", server.base);
    tokio::task::spawn_blocking(move || {
        crate::real_clients::run("openai_completions.py", &[&url, golden.to_str().unwrap()]);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn generation_metrics_count_tokens_and_time_them() {
    let store = lm_store(&[("tiny_lm", None)]);
    let server = Server::healthy(Launch::store(&store, "all")).await;
    for _ in 0..2 {
        let answer = post_text(&server, "/predictions/tiny_lm", "Hello").await;
        assert_eq!(answer.status(), 200);
    }
    let metrics = server.metrics().await;
    let labels = |kind: &str| {
        format!("ortserve_tokens_total{{kind=\"{kind}\",model=\"tiny_lm\",version=\"1.0\"}}")
    };
    assert_eq!(metrics[&labels("generated")], 70.0);
    assert_eq!(metrics[&labels("prompt")], 2.0);
    let series = |name: &str| format!("{name}_count{{model=\"tiny_lm\",version=\"1.0\"}}");
    assert_eq!(
        metrics[&series("ortserve_time_to_first_token_seconds")],
        2.0
    );
    assert_eq!(
        metrics[&series("ortserve_inter_token_latency_seconds")],
        2.0 * 25.0,
        "26 pieces each"
    );
    let requests = "ortserve_request_duration_seconds_count{model=\"tiny_lm\",protocol=\"torchserve\",status_class=\"2xx\",version=\"1.0\"}";
    assert_eq!(metrics[requests], 2.0);
}

/// `tiny_lm_slow` (about 100 ms a step, tiny_lm's text) on one worker.
fn slow_store(extra: &str) -> Store {
    let config = format!("minWorkers: 1\nmaxWorkers: 1\n{extra}{GENERATES}");
    lm_store(&[("tiny_lm_slow", Some(config.as_str()))])
}

/// Decoding steps run so far (each is one `run()` in the compute histogram).
async fn steps(server: &Server) -> f64 {
    server.metrics().await["ortserve_compute_seconds_count{model=\"tiny_lm_slow\",version=\"1.0\"}"]
}

/// Starts a streamed generation of "Hello" and returns once its first piece
/// has arrived, with the response still being read.
async fn streaming(server: &Server) -> reqwest::Response {
    let mut response = server
        .post_json(
            "/predictions/tiny_lm_slow",
            r#"{"prompt": "Hello", "stream": true}"#,
        )
        .await;
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b",");
    response
}

#[tokio::test]
async fn a_client_that_leaves_stops_its_generation_within_a_step() {
    let store = slow_store("");
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let response = streaming(&server).await;
    drop(response);
    let at_leave = steps(&server).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = steps(&server).await;
    // Left running, "Hello" takes 36 steps of about 100 ms. The server sees
    // the socket closed at its next write, one or two pieces on.
    assert!(
        later - at_leave <= 3.0,
        "{} steps ran after the client left",
        later - at_leave
    );
    let started = Instant::now();
    let answer = post_text(&server, "/predictions/tiny_lm_slow", "a").await;
    assert_eq!(
        answer.text().await.unwrap(),
        case("a")["text"].as_str().unwrap()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the worker was free"
    );
    server.wait_for_log(
        "generation stopped: the client left",
        Duration::from_secs(5),
    );
}

#[tokio::test]
async fn the_queue_bounds_waiting_generations_and_timeouts_bound_running_ones() {
    let store = slow_store("jobQueueSize: 1\n");
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let running = streaming(&server).await;
    let queued = {
        let (client, url) = (
            server.client.clone(),
            server.url("/predictions/tiny_lm_slow"),
        );
        tokio::spawn(async move {
            client
                .post(url)
                .body("a")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = server
        .post_json(
            "/v2/models/tiny_lm_slow/generate",
            r#"{"text_input": "Hi"}"#,
        )
        .await;
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_kserve_error(
        refused,
        503,
        "queue already holds its limit of 1 rows (jobQueueSize)",
    )
    .await;
    assert_eq!(
        running.text().await.unwrap(),
        case("Hello")["text"].as_str().unwrap()[1..]
    );
    assert_eq!(queued.await.unwrap(), case("a")["text"].as_str().unwrap());

    let store = slow_store("responseTimeout: 1\n");
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let cut = post_text(&server, "/predictions/tiny_lm_slow", "Hello").await;
    assert_error(
        cut,
        504,
        "RequestTimeoutException",
        "did not answer within responseTimeout=1s",
    )
    .await;
    let mut streamed = streaming(&server).await;
    let mut text = String::from(",");
    let broken = loop {
        match streamed.chunk().await {
            Ok(Some(piece)) => text.push_str(std::str::from_utf8(&piece).unwrap()),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(
        broken,
        "a stream cut by responseTimeout ends in error, not as if complete: {text:?}"
    );
    assert!(
        case("Hello")["text"].as_str().unwrap().starts_with(&text) && text.len() < 30,
        "{text:?}"
    );
}

#[tokio::test]
async fn sigterm_lets_a_running_generation_finish() {
    let store = slow_store("");
    // No drain delay: the listener closes at once, with the stream (about
    // 3.6 s) still running.
    let launch = Launch::store(&store, "all").arg("--drain-delay").arg("0");
    let mut server = Server::healthy(launch).await;
    let running = streaming(&server).await;
    server.signal("TERM");
    assert_eq!(
        running.text().await.unwrap(),
        case("Hello")["text"].as_str().unwrap()[1..]
    );
    let exit = server.wait_exit(Duration::from_secs(30));
    assert_eq!(exit, Some(0));
}

#[tokio::test]
async fn torchserves_grpc_stubs_stream_the_pieces() {
    let store = lm_store(&[("tiny_lm", None)]);
    let server = Server::healthy(Launch::store(&store, "all")).await;
    let address = server.grpc_address();
    let protos = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let golden = models_dir().join("golden/tiny_lm.json");
    tokio::task::spawn_blocking(move || {
        crate::real_clients::run(
            "torchserve_grpc_generation.py",
            &[&address, protos.to_str().unwrap(), golden.to_str().unwrap()],
        );
    })
    .await
    .unwrap();
}
