//! The model states and scripts behind every protocol's error cases, and
//! the messages the core error carries for them; each protocol's tests send
//! their own request to these servers and check their own body shape.

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;

use super::{BODY_TIMEOUT, MODEL, Reply, Server, VERSION, eventually, send};
use crate::registry::testing::Script;

/// The reason [`failed`]'s version carries.
pub(super) const LOAD_FAILURE: &str = "fake.onnx: the graph is broken";
pub(super) const QUEUE_FULL: &str = "Model \"m\" is overloaded: its queue already holds its limit \
     of 1 rows (jobQueueSize); retry later or raise jobQueueSize/maxWorkers";
pub(super) const TIMEOUT: &str = "Model \"m\" did not answer within responseTimeout=1s; the \
     request was cancelled (raise responseTimeout in model-config.yaml if this is expected)";
pub(super) const RUN_FAILED: &str = "Prediction failed: the fake runner failed, as scripted";
/// A model's queue in [`small_queue`], in rows.
pub(super) const SMALL_QUEUE: usize = 2;

/// [`MODEL`] registered and still loading.
pub(super) fn loading() -> Server {
    let server = Server::empty(false);
    server.registry.add_loading(super::id(MODEL, VERSION));
    server
}

/// [`MODEL`] registered as failed to load, with [`LOAD_FAILURE`].
pub(super) fn failed() -> Server {
    let server = Server::empty(false);
    server.add_failed(MODEL, VERSION, LOAD_FAILURE);
    server
}

/// [`MODEL`] whose queue holds [`SMALL_QUEUE`] rows.
pub(super) async fn small_queue() -> Server {
    let tweak = |c: &mut crate::config::ModelConfig| c.pool.job_queue_size = SMALL_QUEUE;
    Server::with_model(Script::default(), tweak).await.0
}

/// [`MODEL`] whose every run fails.
pub(super) async fn failing() -> Server {
    let script = Script {
        fail_runs: true,
        ..Script::default()
    };
    Server::with_model(script, |_| {}).await.0
}

/// [`MODEL`] slower than its `responseTimeout` of 1 s. The test's clock is
/// paused once it serves, so the request's wait for its deadline takes no
/// time; the fake's worker thread sleeps on the real clock meanwhile.
pub(super) async fn too_slow() -> Server {
    let script = Script {
        run_latency: Duration::from_secs(3),
        ..Script::default()
    };
    let tweak =
        |c: &mut crate::config::ModelConfig| c.pool.response_timeout = Duration::from_secs(1);
    let server = Server::with_model(script, tweak).await.0;
    tokio::time::pause();
    server
}

/// [`MODEL`] answering at once, with a body timeout of [`BODY_TIMEOUT`];
/// the test's clock is paused once it serves, so waiting out the body
/// timeout takes no time.
pub(super) async fn short_body_timeout() -> Server {
    let server = Server::echo().await;
    tokio::time::pause();
    server.with_limits(|l| l.body_timeout = BODY_TIMEOUT)
}

/// Sends `request()` to [`MODEL`] while its one worker is busy with a
/// first request and its one-row queue holds a second; both of those still
/// succeed afterwards.
pub(super) async fn while_queue_full(request: impl Fn() -> Request<Body>) -> Reply {
    let script = Script {
        run_latency: Duration::from_millis(150),
        ..Script::default()
    };
    let (server, fake) = Server::with_model(script, |c| c.pool.job_queue_size = 1).await;
    let app = server.app();
    let running = tokio::spawn(send(app.clone(), request()));
    eventually("the first request runs", || fake.runs().len() == 1).await;
    let queued = tokio::spawn(send(app.clone(), request()));
    eventually("the second request waits", || server.queued_rows() == 1).await;
    let refused = send(app, request()).await;
    for earlier in [running, queued] {
        let reply = earlier.await.expect("the request task finishes");
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    refused
}
