//! The command line, with TorchServe's flag names so existing start commands work.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// What the command line asks for: serve (no subcommand) or check.
#[derive(Debug, Parser)]
#[command(
    name = "ortserve",
    about,
    long_about = None,
    disable_version_flag = true,
    args_conflicts_with_subcommands = true
)]
pub struct Invocation {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: Cli,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a model store, a model config directory (a ConfigMap's
    /// files) and config.properties without serving: load every model once
    /// (warm-up included), print its inputs and outputs, every warning and
    /// error; exit 1 if anything would fail. Takes the server's flags.
    Check(CheckArgs),
}

/// `ortserve check`'s flags: the server's, and the report's format.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub cli: Cli,
    /// `text` for people, `json` for pipelines.
    #[arg(long = "output", value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// How `ortserve check` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

/// Serve ONNX models over the TorchServe inference API.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "ortserve", about, long_about = None, disable_version_flag = true)]
pub struct Cli {
    /// Print the version, the git revision it was built from and the ONNX
    /// Runtime library it loads (loading it), then exit.
    #[arg(short = 'V', long = "version")]
    pub version: bool,

    /// Model store directory (TorchServe's `model_store`).
    #[arg(long = "model-store", value_name = "DIR")]
    pub model_store: Option<PathBuf>,

    /// Models to load at start: `all`, or `NAME=ARCHIVE` / `ARCHIVE` entries,
    /// comma- or space-separated (TorchServe's `load_models`).
    #[arg(long = "models", value_name = "SPEC", num_args = 1.., value_delimiter = ',')]
    pub models: Vec<String>,

    /// TorchServe `config.properties` file. `TS_CONFIG_FILE` wins over it;
    /// without either, `./config.properties` is read if present.
    #[arg(long = "ts-config", value_name = "FILE")]
    pub ts_config: Option<PathBuf>,

    /// ONNX Runtime shared library (`libonnxruntime.so`). Default: the one
    /// `make setup` installs into this checkout.
    #[arg(long = "onnxruntime-lib", env = "ORT_DYLIB_PATH", value_name = "PATH")]
    pub onnxruntime_lib: Option<PathBuf>,

    /// Cores to size the server by (default workers, ONNX Runtime threads, the
    /// async runtime, the pre-processing pool): in Kubernetes, the container's
    /// CPU request through the downward API. 0 or unset: the cores this
    /// process may use (CPU limits included).
    #[arg(long = "cpus", env = "ORTSERVE_CPUS", value_name = "N")]
    pub cpus: Option<u64>,

    /// Let `/ping` report Healthy when no model is configured.
    #[arg(long = "allow-no-models")]
    pub allow_no_models: bool,

    /// Let models with `deviceType: gpu` serve on CPU (with one warning) when
    /// CUDA cannot be used; a model's `ortserve.cpuFallback` overrides this.
    #[arg(long = "cpu-fallback", env = "ORTSERVE_CPU_FALLBACK")]
    pub cpu_fallback: bool,

    /// Directory of model declarations, one file per model version (a mounted
    /// ConfigMap), watched for changes. A `config.properties` in it is read
    /// as server settings when no other properties file is given.
    #[arg(long = "model-config-dir", value_name = "DIR")]
    pub model_config_dir: Option<PathBuf>,

    /// Seconds between re-reads of --model-config-dir, in case a filesystem
    /// event was missed (default 10).
    #[arg(long = "model-config-poll-interval", value_name = "SECONDS")]
    pub model_config_poll_interval: Option<u64>,

    /// In a cluster, also take model declarations from the ConfigMaps with
    /// this label selector, through the Kubernetes API (instant reloads).
    #[arg(long = "configmap-selector", value_name = "SELECTOR")]
    pub configmap_selector: Option<String>,

    /// Seconds to keep serving after SIGTERM, with readiness already off, so
    /// endpoint controllers stop routing here first (default 5).
    #[arg(long = "drain-delay", value_name = "SECONDS")]
    pub drain_delay: Option<u64>,

    /// Seconds after the drain delay for in-flight and queued requests to
    /// finish before the process exits anyway (default 20).
    #[arg(long = "shutdown-timeout", value_name = "SECONDS")]
    pub shutdown_timeout: Option<u64>,

    /// Where `GET /metrics` listens (`metrics_address`), e.g.
    /// http://0.0.0.0:8082; overrides config.properties.
    #[arg(
        long = "metrics-address",
        env = "ORTSERVE_METRICS_ADDRESS",
        value_name = "URL"
    )]
    pub metrics_address: Option<String>,

    /// Where TorchServe's management API listens (`management_address`),
    /// e.g. http://0.0.0.0:8081; overrides config.properties.
    #[arg(
        long = "management-address",
        env = "ORTSERVE_MANAGEMENT_ADDRESS",
        value_name = "URL"
    )]
    pub management_address: Option<String>,

    /// Where the Open Inference Protocol's gRPC service listens, as
    /// http://HOST:PORT; overrides `grpc_inference_address`/`_port`.
    #[arg(
        long = "grpc-address",
        env = "ORTSERVE_GRPC_ADDRESS",
        value_name = "URL"
    )]
    pub grpc_address: Option<String>,

    /// Where TorchServe's gRPC management API listens, as http://HOST:PORT;
    /// overrides `grpc_management_address`/`_port`.
    #[arg(
        long = "grpc-management-address",
        env = "ORTSERVE_GRPC_MANAGEMENT_ADDRESS",
        value_name = "URL"
    )]
    pub grpc_management_address: Option<String>,

    /// A key file in TorchServe's `key_file.json` layout (`token_key_file`):
    /// turns token authorization on; re-read when it changes.
    #[arg(
        long = "token-key-file",
        env = "ORTSERVE_TOKEN_KEY_FILE",
        value_name = "FILE"
    )]
    pub token_key_file: Option<PathBuf>,

    /// Log lines as human-readable text or one JSON object per line (the
    /// container image sets json).
    #[arg(
        long = "log-format",
        env = "ORTSERVE_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: crate::telemetry::LogFormat,

    #[command(flatten)]
    pub kserve: KServeFlags,

    #[command(flatten)]
    pub torchserve_compat: TorchServeFlags,
}

/// The arguments KServe passes to a serving runtime
/// (`--model_name={{.Name}} --model_dir=/mnt/models --http_port=8080`).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "KServe runtime")]
pub struct KServeFlags {
    /// Serve the model in --model_dir under this name (default `model`).
    #[arg(long = "model_name", value_name = "NAME")]
    pub model_name: Option<String>,
    /// The model directory: a `model.onnx` (or one `*.onnx`) with an optional
    /// `model-config.yaml`, or kserve-torchserve's `config/config.properties`
    /// + `model-store/`. Default `/mnt/models` when --model_name is given.
    #[arg(long = "model_dir", value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// Listen on 0.0.0.0:PORT (KServe's default 8080 whenever a model
    /// directory is served).
    #[arg(long = "http_port", value_name = "PORT")]
    pub http_port: Option<u16>,
    /// Serve gRPC on 0.0.0.0:PORT (KServe's `--grpc_port`).
    #[arg(long = "grpc_port", value_name = "PORT")]
    pub grpc_port: Option<u16>,
}

impl KServeFlags {
    /// The model directory, when ortserve runs as a KServe runtime.
    pub fn model_dir(&self) -> Option<PathBuf> {
        let dir = self.model_dir.clone().or_else(|| {
            self.model_name
                .as_ref()
                .map(|_| PathBuf::from("/mnt/models"))
        })?;
        Some(std::path::absolute(&dir).unwrap_or(dir))
    }
}

/// Flags TorchServe's launcher takes that mean nothing here; accepted so that
/// existing command lines (and KServe's runtime args) keep working.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "TorchServe compatibility (accepted, no effect)")]
pub struct TorchServeFlags {
    /// ortserve always runs in the foreground.
    #[arg(long = "start")]
    pub start: bool,
    #[arg(long = "foreground")]
    pub foreground: bool,
    /// ortserve never writes config snapshots.
    #[arg(long = "ncs", alias = "no-config-snapshots")]
    pub no_config_snapshots: bool,
    /// Same as `disable_token_authorization=true`: no token authorization,
    /// whatever the configuration file says.
    #[arg(long = "disable-token-auth")]
    pub disable_token_auth: bool,
    /// Same as `enable_model_api=true`: registering and unregistering
    /// models through the management API.
    #[arg(long = "enable-model-api")]
    pub enable_model_api: bool,
}

impl Cli {
    /// The ONNX Runtime library to load: `--onnxruntime-lib`, else the one
    /// `make setup` installs into this checkout.
    pub fn onnxruntime_library(&self) -> PathBuf {
        self.onnxruntime_lib
            .clone()
            .unwrap_or_else(|| PathBuf::from(super::DEFAULT_ORT_LIBRARY))
    }
}
