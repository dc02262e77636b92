//! `meridian-bench`: benchmark harnesses that run Meridian and its anchor systems side by side on one machine
//! and report ratios.
//!
//! Owns the command line, logging and signal handling: on Ctrl-C or SIGTERM the running benchmark is dropped,
//! which stops every process it started. Results go to stdout; progress and diagnostics go to stderr through
//! `tracing`. It never writes anywhere but stdout, stderr and its own temporary directories.

mod coordinator;
mod exec;

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Benchmarks Meridian against the systems it measures itself against.
#[derive(Debug, Parser)]
#[command(name = "meridian-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Coordinator group vs a three-member etcd 3.4 group: write throughput/latency and leader failover.
    #[command(
        after_help = "Example:\n  meridian-bench coordinator --seconds 10 --clients 1,16,64 --failover-rounds 5"
    )]
    Coordinator(coordinator::CoordinatorArgs),
    /// Getting into a running job (`job exec`, a `job exec -it` key's echo) against doing the same here.
    #[command(after_help = "Example:\n  meridian-bench exec --commands 200 --keys 1000")]
    Exec(exec::ExecArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Coordinator(args) => runtime.block_on(coordinator_main(args, command_line)),
        Command::Exec(args) => runtime.block_on(exec_main(args, command_line)),
    }
}

async fn coordinator_main(args: coordinator::CoordinatorArgs, command_line: String) -> ExitCode {
    let json = args.json;
    let limit = args.max_duration();
    let Some(report) = finished(limit, coordinator::run(args, command_line)).await else {
        return ExitCode::FAILURE;
    };
    if !print(json, &report, report.markdown()) {
        return ExitCode::FAILURE;
    }
    if report.systems.iter().any(|s| !s.errors.is_empty()) {
        tracing::error!("some measurements failed; see the report");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

async fn exec_main(args: exec::ExecArgs, command_line: String) -> ExitCode {
    if args.keys > exec::MAX_KEYS {
        tracing::error!(
            "--keys: at most {} (one line of a terminal)",
            exec::MAX_KEYS
        );
        return ExitCode::FAILURE;
    }
    let json = args.json;
    let limit = std::time::Duration::from_secs(600);
    match finished(limit, exec::run(args, command_line)).await {
        Some(report) if print(json, &report, report.markdown()) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// Runs a benchmark to its report within `limit`, or logs why it has none (an error, the limit, Ctrl-C or
/// SIGTERM). When this returns, the benchmark's future has been dropped or has returned: every process it
/// started is gone.
async fn finished<R>(
    limit: std::time::Duration,
    run: impl std::future::Future<Output = anyhow::Result<R>>,
) -> Option<R> {
    let outcome = tokio::select! {
        r = tokio::time::timeout(limit, run) => match r {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("the benchmark did not finish within {limit:?}")),
        },
        s = stop_signal() => Err(anyhow::anyhow!("interrupted by {s}")),
    };
    outcome.map_err(|e| tracing::error!("{e:#}")).ok()
}

/// Writes the report to stdout, as JSON or as `markdown`; `false` (logged) when it could not.
fn print(json: bool, report: &impl serde::Serialize, markdown: String) -> bool {
    let text = if json {
        match serde_json::to_string_pretty(report) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("encoding the report: {e}");
                return false;
            }
        }
    } else {
        markdown
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        tracing::error!("writing the report: {e}");
        return false;
    }
    true
}

/// Resolves on Ctrl-C or SIGTERM with the signal's name.
async fn stop_signal() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
