//! The `ortserve` binary: parse the command line, build the configuration,
//! run the server. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use ortserve::config::{Cli, ServerConfig};

fn main() -> ExitCode {
    let cli = Cli::parse();
    ortserve::telemetry::init_logging();
    let outcome = ServerConfig::load(&cli)
        .map_err(ortserve::StartupError::from)
        .and_then(ortserve::run);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
