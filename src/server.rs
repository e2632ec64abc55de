//! Wiring: load ONNX Runtime, register and load the models, follow the model
//! declarations, bind the listeners (inference, management, metrics), serve
//! until SIGTERM/SIGINT, then drain:
//! readiness off at once, still serving for the drain delay, then no new
//! connections and up to the shutdown timeout for requests in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{self, ConnectionSettings, LifecycleSettings, ServerConfig};
use crate::engine::{self, EngineError};
use crate::kube::Cluster;
use crate::protocol::{
    self, AppState, BodyLimits, ConnectionLimits, ControlPlane, GrpcControl, ManagementState,
    TokenGate,
};
use crate::registry::{ModelRegistry, Reconciler};
use crate::store;
use crate::telemetry::Metrics;
use crate::types::{EventSink, ServerEvent};

/// How long the last Kubernetes Events may hold up the exit.
const EVENT_FLUSH: Duration = Duration::from_secs(2);
/// Connections per inference listener (REST, gRPC) unless
/// `max_connections` says otherwise.
const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// The listeners that get `max_connections` each: REST's and gRPC's.
const INFERENCE_LISTENERS: usize = 2;
/// Descriptors kept for everything but connections: model files, the
/// runtime's own, the config watch, the API client, logs.
const RESERVED_DESCRIPTORS: usize = 32;
/// Scrapers and operators need few connections: the metrics and the
/// management ports (REST and gRPC) each get at most this many.
const SIDE_CONNECTIONS: usize = 16;
/// The fewest connections a listener is given, however low the limit.
const MIN_CONNECTIONS: usize = 4;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "{0}\n  Pass --onnxruntime-lib PATH (or set ORT_DYLIB_PATH) to libonnxruntime.so from ONNX Runtime 1.31 or newer, \
         or run `make setup` to install ONNX Runtime 1.32.0 into .onnxruntime/"
    )]
    OnnxRuntime(EngineError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {address} for the {what} ({setting}): {detail}")]
    Bind {
        address: String,
        what: &'static str,
        setting: &'static str,
        detail: String,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(String),
    #[error("{0}")]
    Cluster(String),
    #[error("metrics: {0}")]
    Metrics(String),
}

/// `ortserve --version`: this build, the git revision it was built from, and
/// the ONNX Runtime `library` it would serve with, loaded to prove it loads.
/// `Err` carries the same report when the library does not load.
pub fn version_report(library: &std::path::Path) -> Result<String, String> {
    let build = format!(
        "ortserve {} (git {})",
        env!("CARGO_PKG_VERSION"),
        env!("ORTSERVE_GIT_REVISION")
    );
    match crate::engine::init(library) {
        Ok(info) => Ok(format!(
            "{build}\nONNX Runtime {} from {}",
            runtime_summary(library, &info),
            library.display()
        )),
        Err(error) => Err(format!(
            "{build}\nONNX Runtime not loaded: {}",
            StartupError::OnnxRuntime(error)
        )),
    }
}

/// `1.32.0 (commit fab30a4, Release build)`: the version from the loaded
/// file's name (`libonnxruntime.so.1` links to `libonnxruntime.so.1.32.0`;
/// ORT's build string does not carry it), the rest from the build string
/// (`ORT Build Info: git-branch=…, git-commit-id=…, build type=Release`).
fn runtime_summary(library: &std::path::Path, info: &str) -> String {
    let version =
        runtime_version(library).unwrap_or_else(|| "(version not in the file name)".into());
    let field = |key: &str| {
        info.split(", ")
            .find_map(|part| part.strip_prefix(key))
            .map(|value| value.chars().take(40).collect::<String>())
            .unwrap_or_else(|| "unknown".into())
    };
    let commit = field("git-commit-id=");
    let build = field("build type=");
    format!("{version} (commit {commit}, {build} build)")
}

/// ONNX Runtime's version, from the name of the file `library` resolves to
/// (`libonnxruntime.so.1.32.0`).
fn runtime_version(library: &std::path::Path) -> Option<String> {
    let file = std::fs::canonicalize(library).unwrap_or_else(|_| library.to_path_buf());
    let name = file.file_name()?.to_string_lossy().into_owned();
    let (_, version) = name.split_once(".so.")?;
    version
        .contains('.')
        .then(|| version.chars().take(40).collect())
}

/// Runs the server on a new multi-threaded runtime until it is told to stop.
pub fn run(config: ServerConfig) -> Result<(), StartupError> {
    let cores = config.model_defaults.cores;
    crate::memory::limit_arenas(cores);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .thread_name("ortserve-io")
        .build()
        .map_err(|e| StartupError::Runtime(e.to_string()))?;
    let outcome = runtime.block_on(serve(config));
    // Whatever still runs after the shutdown timeout is abandoned, not awaited.
    runtime.shutdown_background();
    outcome
}

async fn serve(config: ServerConfig) -> Result<(), StartupError> {
    let build = engine::init(&config.onnxruntime_library).map_err(StartupError::OnnxRuntime)?;
    tracing::info!(library = %config.onnxruntime_library.display(), "ONNX Runtime loaded: {build}");
    tracing::info!("effective configuration:\n{}", config.summary());
    tracing::info!(
        cores = config.model_defaults.cores,
        "sized for {} cores: async runtime threads, pre-processing pool, default workers and ONNX Runtime threads",
        config.model_defaults.cores
    );

    let config = Arc::new(config);
    let cluster = Cluster::connect().await;
    let events = cluster
        .as_ref()
        .map_or_else(EventSink::default, Cluster::record_events);
    let observability = &config.observability;
    crate::telemetry::set_access_log(observability.access_log);
    let metrics = Metrics::new(&observability.metrics).map_err(StartupError::Metrics)?;
    let runtime_version = runtime_version(&config.onnxruntime_library);
    metrics.build_info(runtime_version.as_deref().unwrap_or("unknown"));
    let registry = ModelRegistry::new(
        config.allow_no_models,
        config.model_defaults.cores,
        events.clone(),
        metrics.clone(),
    );
    let found = store::discover(
        config.model_store.as_deref(),
        &config.load_models,
        config.max_model_size,
    );
    registry.load_all(found, &config);
    follow_declarations(&registry, &config, cluster.as_ref()).await?;

    let limits = BodyLimits {
        max_request_size: config.max_request_size,
        max_response_size: config.max_response_size,
        body_timeout: config.request_body_timeout,
        max_request_memory: config.max_request_memory,
    };
    let tokens = match &config.tokens.keys {
        Some(source) => {
            let file = source.file()?;
            tracing::info!(file = %file.display(), open_probes = config.tokens.open_probes, "token authorization is on");
            let keys = config::watch_keys(file)?;
            Some(TokenGate::new(keys, config.tokens.open_probes))
        }
        None => None,
    };
    let management = ManagementState::new(registry.clone(), config.clone());
    let control = ControlPlane {
        tokens: tokens.clone(),
        management: Some(management.clone()),
    };
    let state = AppState::with_control(registry.clone(), limits, metrics.clone(), control);
    let grpc_control = GrpcControl {
        tokens,
        management,
        bodies: state.bodies.clone(),
    };
    let scrape_here = observability.metrics_on_inference_port && metrics.enabled();
    // Equal addresses mean one listener for both, as in TorchServe; port 0
    // means a port of each listener's own.
    let shared_listener = config.management_address == config.inference_address
        && config.inference_address.port() != 0;
    let app = match shared_listener {
        true => protocol::shared_app(state.clone(), scrape_here),
        false => protocol::inference_app(state.clone(), scrape_here),
    };
    let (inference_limits, side_limits) = connection_limits(
        &config.connections,
        config.request_body_timeout,
        metrics.enabled(),
    );
    let listener = bind(
        config.inference_address,
        "Inference API",
        "inference_address",
    )
    .await?;
    let grpc_management_listener = bind(
        config.grpc_management_address,
        "gRPC management API",
        "grpc_management_port",
    )
    .await?;
    tokio::spawn(protocol::serve_grpc_management(
        grpc_management_listener,
        protocol::management_router(state.clone()),
        side_limits,
        config.request_body_timeout,
        config.max_request_size,
        state.bodies.clone(),
    ));
    if !shared_listener {
        let management_listener = bind(
            config.management_address,
            "Management API",
            "management_address",
        )
        .await?;
        let management_app = protocol::management_router(state.clone());
        // Like scrapes, management calls are served until the process
        // exits: an operator can still look at a draining server.
        tokio::spawn(protocol::serve(
            management_listener,
            management_app.into(),
            side_limits,
            std::future::pending(),
        ));
    }
    if metrics.enabled() {
        let metrics_listener =
            bind(config.metrics_address, "Metrics API", "metrics_address").await?;
        let metrics_app = protocol::metrics_router(state);
        // Scrapes stop with the process, not with the drain: the last
        // seconds of a pod are worth seeing.
        let forever = std::future::pending();
        tokio::spawn(protocol::serve(
            metrics_listener,
            metrics_app.into(),
            side_limits,
            forever,
        ));
    }
    let grpc_listener = bind(
        config.grpc_inference_address,
        "gRPC inference API",
        "grpc_inference_port",
    )
    .await?;
    let (closing, closed) = watch::channel(false);
    let drain = drain(
        registry.clone(),
        events.clone(),
        config.lifecycle.clone(),
        closing,
    );
    let server = protocol::serve(listener, app, inference_limits, drain);
    let grpc = protocol::serve_grpc(
        grpc_listener,
        registry,
        grpc_control,
        &config,
        inference_limits,
        closed.clone(),
    );
    let shutdown_timeout = config.lifecycle.shutdown_timeout;
    tokio::select! {
        _ = async { tokio::join!(server, grpc) } => {}
        () = async {
            until(closed).await;
            tokio::time::sleep(shutdown_timeout).await;
        } => tracing::warn!(?shutdown_timeout, "requests were still running at the shutdown timeout; stopping anyway"),
    }
    // The Draining Event, and any other still on its way to the API server.
    events.flush(EVENT_FLUSH).await;
    tracing::info!("stopped");
    Ok(())
}

/// Each listener's connection limits. Unless `max_connections` is set, the
/// cap follows the file descriptor limit (first raised to its hard limit),
/// so that connections can never exhaust descriptors and stall accepting.
fn connection_limits(
    settings: &ConnectionSettings,
    send_timeout: Duration,
    metrics_port: bool,
) -> (ConnectionLimits, ConnectionLimits) {
    let descriptors = raise_descriptor_limit();
    let side_listeners = 2 + usize::from(metrics_port);
    let fitting = (descriptors
        .saturating_sub(RESERVED_DESCRIPTORS + side_listeners * SIDE_CONNECTIONS)
        / INFERENCE_LISTENERS)
        .max(MIN_CONNECTIONS);
    let inference_cap = match settings.max_connections {
        Some(configured) if configured > fitting => {
            tracing::warn!(
                max_connections = configured,
                used = fitting,
                descriptors,
                "max_connections is more than the file descriptor limit allows; lowered (raise the limit with ulimit -n or the container runtime)"
            );
            fitting
        }
        Some(configured) => configured,
        None => DEFAULT_MAX_CONNECTIONS.min(fitting),
    };
    tracing::info!(
        max_connections = inference_cap,
        descriptors,
        header_read_timeout = ?settings.header_read_timeout,
        keep_alive_timeout = ?settings.keep_alive_timeout,
        "connection limits"
    );
    let limits = |max_connections| ConnectionLimits {
        max_connections,
        header_read_timeout: settings.header_read_timeout,
        keep_alive_timeout: settings.keep_alive_timeout,
        send_timeout,
    };
    (limits(inference_cap), limits(SIDE_CONNECTIONS.min(fitting)))
}

/// Raises the soft limit on open files to the hard one, as Go's runtime
/// does (the soft default of 1024 is a relic of `select`), and returns it.
fn raise_descriptor_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return DEFAULT_MAX_CONNECTIONS;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                ..limit
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

/// Binds a listener and logs its address (tests and operators read it).
/// Binds the listener `setting` places at `address`; a refusal says which
/// setting to change.
async fn bind(
    address: SocketAddr,
    what: &'static str,
    setting: &'static str,
) -> Result<TcpListener, StartupError> {
    let bind_error = |error: std::io::Error| StartupError::Bind {
        address: address.to_string(),
        what,
        setting,
        detail: match error.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "{error}: another process (or another ortserve) listens there; stop it, or set {setting} to a free port"
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "{error}: ports below 1024 need privileges this process lacks; set {setting} to a port above 1023"
            ),
            _ => error.to_string(),
        },
    };
    let listener = TcpListener::bind(address).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    tracing::info!(address = %bound, "{what} listening on http://{bound}");
    Ok(listener)
}

/// Loads the model declarations — the config directory's and, in a cluster
/// with a selector, the ConfigMaps' — then applies their changes as they come.
async fn follow_declarations(
    registry: &Arc<ModelRegistry>,
    config: &Arc<ServerConfig>,
    cluster: Option<&Cluster>,
) -> Result<(), StartupError> {
    let lifecycle = &config.lifecycle;
    let mut sources = Vec::new();
    if let Some(dir) = &lifecycle.model_config_dir {
        let initial = config::read_declarations(dir)?;
        tracing::info!(dir = %dir.display(), files = initial.files.len(), "following the model config directory");
        sources.push(config::watch_dir(
            dir.clone(),
            lifecycle.poll_interval,
            initial,
        ));
    }
    match (&lifecycle.configmap_selector, cluster) {
        (Some(selector), Some(cluster)) => {
            let maps = cluster.declarations(selector).await;
            sources.push(maps.map_err(StartupError::Cluster)?);
        }
        (Some(_), None) => tracing::warn!(
            "configmap_selector is set but ortserve is not in a cluster (POD_NAME/POD_NAMESPACE and API access); ignored"
        ),
        (None, _) => {}
    }
    let updates = match (sources.pop(), sources.pop()) {
        (None, _) => return Ok(()),
        (Some(only), None) => only,
        (Some(second), Some(first)) => config::merge_declarations(first, second),
    };
    let initial = updates.borrow().clone();
    let reconciler = Reconciler::start(registry.clone(), config.clone(), &initial);
    tokio::spawn(reconciler.follow(updates));
    Ok(())
}

/// Resolves when the listener should close: after a stop signal, readiness
/// goes off at once and requests are still served for the drain delay, so
/// endpoint controllers stop routing here before connections are refused.
async fn drain(
    registry: Arc<ModelRegistry>,
    events: EventSink,
    lifecycle: LifecycleSettings,
    closing: watch::Sender<bool>,
) {
    stop_signal().await;
    registry.start_draining();
    events.emit(ServerEvent::Draining);
    tracing::info!(drain_delay = ?lifecycle.drain_delay, "stop signal received: readiness is off; still serving during the drain delay");
    tokio::time::sleep(lifecycle.drain_delay).await;
    tracing::info!(shutdown_timeout = ?lifecycle.shutdown_timeout, "drain delay over: no new connections; finishing in-flight requests");
    closing.send_replace(true);
}

/// Resolves once the drain delay is over and the listeners close.
async fn until(mut closed: watch::Receiver<bool>) {
    let _ = closed.wait_for(|closed| *closed).await;
}

/// Resolves on SIGTERM or SIGINT.
async fn stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
