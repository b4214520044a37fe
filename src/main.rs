//! `rallypoint`: parse the command line, set up logging, run the subcommand.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use rallypoint::daemon::{self, cli};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result: anyhow::Result<()> = match &args.command {
        cli::Command::Run(run) => match run.load() {
            Ok(config) => daemon::run(config, daemon::shutdown_signal())
                .await
                .map_err(Into::into),
            Err(e) => Err(e.into()),
        },
        cli::Command::CheckConfig(c) => cli::check_config(c, &mut std::io::stdout()),
        cli::Command::Members(m) => cli::members(m, &mut std::io::stdout())
            .await
            .map_err(Into::into),
        cli::Command::Watch(w) => cli::watch(w, &mut std::io::stdout())
            .await
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rallypoint: {e:#}");
            ExitCode::FAILURE
        }
    }
}
