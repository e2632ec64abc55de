//! The `ortserve` binary: parse the command line, build the configuration,
//! run the server (or `ortserve check` it). Everything else lives in the
//! library.

use std::process::ExitCode;

use clap::Parser;
use ortserve::config::{Cli, Command, Invocation, ServerConfig};

fn main() -> ExitCode {
    keep_onnxruntime_offline();
    let invocation = Invocation::parse();
    if let Some(Command::Check(args)) = invocation.command {
        return match ortserve::check(&args.cli, args.output) {
            true => ExitCode::SUCCESS,
            false => ExitCode::FAILURE,
        };
    }
    let cli = invocation.serve;
    if cli.version {
        return print_version(&cli);
    }
    let telemetry = ortserve::telemetry::init(cli.log_format);
    let outcome = ServerConfig::load(&cli)
        .map_err(ortserve::StartupError::from)
        .and_then(ortserve::run);
    if let Err(error) = &outcome {
        tracing::error!("{error}");
    }
    telemetry.shutdown();
    match outcome {
        Ok(()) => exit_now(0),
        Err(error) => {
            eprintln!("error: {error}");
            exit_now(1)
        }
    }
}

/// Ends the process without running static destructors. A model may still
/// be loading or running on a thread of its own (the start failed while it
/// loaded, or a run outlived `shutdown_timeout`), and ONNX Runtime's
/// globals torn down under it crashed about half such exits (SIGSEGV,
/// `free(): invalid pointer`): a core dump in place of the exit status.
/// Logs are written as they happen; only the standard streams need a flush.
fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` ends the process at once; nothing runs after it.
    unsafe { libc::_exit(code) }
}

/// `--version`: printed whether or not ONNX Runtime loads; the exit status
/// says which.
fn print_version(cli: &Cli) -> ExitCode {
    match ortserve::version_report(&cli.onnxruntime_library()) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(report) => {
            println!("{report}");
            ExitCode::FAILURE
        }
    }
}

/// ONNX Runtime 1.32 starts a telemetry uploader (it resolves
/// `mobile.events.data.microsoft.com`) when its environment is created,
/// before any API can turn it off; it reads this variable once, at
/// initialisation. A model server makes no connection it was not asked to
/// make, so it is set for the process unless the operator set it.
fn keep_onnxruntime_offline() {
    const OPT_OUT: &str = "ORT_DISABLE_TELEMETRY";
    if std::env::var_os(OPT_OUT).is_none() {
        // SAFETY: the first statement of main, before any thread exists.
        unsafe { std::env::set_var(OPT_OUT, "1") };
    }
}
