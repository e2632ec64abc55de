//! The `ortserve` binary: parse the command line, build the configuration,
//! run the server. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use ortserve::config::{Cli, ServerConfig};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = ortserve::telemetry::init(cli.log_format);
    let outcome = ServerConfig::load(&cli)
        .map_err(ortserve::StartupError::from)
        .and_then(ortserve::run);
    if let Err(error) = &outcome {
        tracing::error!("{error}");
    }
    telemetry.shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
