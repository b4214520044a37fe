//! `rallypoint`: parse the command line, set up logging, run the subcommand.
//!
//! `run` takes SIGTERM, SIGINT and SIGHUP from its first instant (before the
//! configuration and the cookie are read): a signal before the node is up stops the
//! process at once with status 0, as one after it does once the node has left.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use rallypoint::config::LogFormat;
use rallypoint::daemon::{self, cli};
use tracing_subscriber::EnvFilter;

/// Standard error that never fails: what cannot be written (stderr closed, as in
/// `rallypoint run 2>&1 | head -3`, or full) is dropped, so logging can neither stop
/// nor crash the daemon.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Logs to stderr in `format`, at the level from `RUST_LOG` (default `info`).
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Stderr)
        // Its own errors would go to stderr with `eprintln!`, which panics when stderr
        // is closed.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(Stderr, "rallypoint: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(command());
    // A read of a file that is still blocked when a signal came (a hung file system)
    // is not waited for.
    runtime.shutdown_background();
    code
}

/// Parses the command line and runs the subcommand.
async fn command() -> ExitCode {
    let args = cli::Cli::parse();
    let result: anyhow::Result<()> = match args.command {
        cli::Command::Run(run) => run_daemon(run).await,
        cli::Command::CheckConfig(c) => {
            // Warnings about the configuration (a cookie file others can read) to stderr.
            init_logging(LogFormat::Text);
            cli::check_config(&c, &mut std::io::stdout())
        }
        cli::Command::Members(m) => {
            init_logging(LogFormat::Text);
            cli::members(&m, &mut std::io::stdout())
                .await
                .map_err(Into::into)
        }
        cli::Command::Probe(p) => {
            init_logging(LogFormat::Text);
            cli::probe(&p, &mut std::io::stdout())
                .await
                .map_err(Into::into)
        }
        cli::Command::Watch(w) => {
            init_logging(LogFormat::Text);
            cli::watch(&w, &mut std::io::stdout())
                .await
                .map_err(Into::into)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(Stderr, "rallypoint: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `rallypoint run`.
async fn run_daemon(run: cli::RunArgs) -> anyhow::Result<()> {
    // First of all (only the command line has been parsed): from here on SIGTERM,
    // SIGINT and SIGHUP are handled here, so they are watched from here on, through the
    // loading below too. Only for `run`: once installed, a handler stays for the
    // process's life, and `members` and `watch` must keep dying on Ctrl-C as they do.
    let mut shutdown = Box::pin(daemon::shutdown_signal());
    // The configuration says how to log, so it is loaded first; its errors are printed
    // as every other error. Reading it can block (a FIFO, a hung file system): on a
    // blocking thread, given up on a signal.
    let load = tokio::task::spawn_blocking(move || run.load());
    let config = tokio::select! {
        loaded = load => loaded??,
        () = &mut shutdown => {
            let _ = writeln!(Stderr, "rallypoint: stopped by a signal before the node was up");
            return Ok(());
        }
    };
    init_logging(config.log_format);
    daemon::run(config, shutdown).await.map_err(Into::into)
}
