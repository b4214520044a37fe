//! `rallypoint`: parse the command line, set up logging, run the subcommand.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use rallypoint::config::LogFormat;
use rallypoint::daemon::{self, cli};
use tracing_subscriber::EnvFilter;

/// Logs to stderr in `format`, at the level from `RUST_LOG` (default `info`).
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let result: anyhow::Result<()> = match &args.command {
        // The configuration says how to log, so it is loaded first; its errors are
        // printed below, as every other error.
        cli::Command::Run(run) => match run.load() {
            Ok(config) => {
                init_logging(config.log_format);
                daemon::run(config, daemon::shutdown_signal())
                    .await
                    .map_err(Into::into)
            }
            Err(e) => Err(e.into()),
        },
        cli::Command::CheckConfig(c) => cli::check_config(c, &mut std::io::stdout()),
        cli::Command::Members(m) => {
            init_logging(LogFormat::Text);
            cli::members(m, &mut std::io::stdout())
                .await
                .map_err(Into::into)
        }
        cli::Command::Watch(w) => {
            init_logging(LogFormat::Text);
            cli::watch(w, &mut std::io::stdout())
                .await
                .map_err(Into::into)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rallypoint: {e:#}");
            ExitCode::FAILURE
        }
    }
}
