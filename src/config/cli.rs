//! The command line, with TorchServe's flag names so existing start commands work.

use std::path::PathBuf;

use clap::Parser;

/// Serve ONNX models over the TorchServe inference API.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "ortserve", version, about, long_about = None)]
pub struct Cli {
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

    /// Let `/ping` report Healthy when no model is configured.
    #[arg(long = "allow-no-models")]
    pub allow_no_models: bool,

    /// Let models with `deviceType: gpu` serve on CPU (with one warning) when
    /// CUDA cannot be used; a model's `ortserve.cpuFallback` overrides this.
    #[arg(long = "cpu-fallback", env = "ORTSERVE_CPU_FALLBACK")]
    pub cpu_fallback: bool,

    #[command(flatten)]
    pub torchserve_compat: TorchServeFlags,
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
    /// ortserve has no token authorization to disable.
    #[arg(long = "disable-token-auth")]
    pub disable_token_auth: bool,
    /// ortserve has no model-management API to enable.
    #[arg(long = "enable-model-api")]
    pub enable_model_api: bool,
}
