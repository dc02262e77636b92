//! `meridian`: one binary for every Meridian process and the operator CLI.

use clap::{ArgMatches, CommandFactory as _, FromArgMatches as _};
use meridian::cli::{Cli, OutputFormat};

fn main() {
    // First, while this is the only thread: no other thread may read the environment while it changes.
    meridian::master_key_env::take_from_environment();
    let matches = Cli::command()
        .try_get_matches()
        .unwrap_or_else(|e| command_line_error(e));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| command_line_error(e));
    let json_errors = asks_for_json(&matches);
    certs::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,meridian=info,coordinator=info")
            }),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: log files and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(meridian::commands::run(cli));
    if let Err(e) = result {
        if let meridian::commands::CommandError::JobCommandExit(code) = e {
            std::process::exit(code);
        }
        if json_errors {
            // Scripts that asked for JSON get their error as JSON too, on stderr: stdout only ever
            // carries results.
            let body = serde_json::json!({
                "error": { "kind": e.kind(), "message": e.to_string(), "exit_code": e.exit_code() }
            });
            eprintln!("{body}");
        } else {
            eprintln!("error: {e}");
        }
        std::process::exit(e.exit_code());
    }
}

/// A command line clap refused (or `--help`/`--version`, which clap prints itself). Under `-o json` the
/// refusal is one JSON object on stderr like every other error; the exit code is clap's (2).
fn command_line_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    let informational = matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if informational || !json_in_args(std::env::args()) {
        e.exit();
    }
    // The refusal and its tip ("a similar argument exists: '--gpus'"), without the usage lines.
    let text = e.to_string();
    let message: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .map(|l| l.trim_start_matches("error: "))
        .collect();
    let joined = message.iter().fold(String::new(), |mut out, line| {
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(line);
        out
    });
    let body = serde_json::json!({
        "error": { "kind": "usage", "message": joined, "exit_code": e.exit_code() }
    });
    eprintln!("{body}");
    std::process::exit(e.exit_code());
}

/// Whether the raw arguments ask for `-o json` (for a command line that did not parse).
fn json_in_args(args: impl Iterator<Item = String>) -> bool {
    let args: Vec<String> = args.collect();
    args.windows(2)
        .any(|w| matches!(w[0].as_str(), "-o" | "--output") && w[1] == "json")
        || args
            .iter()
            .any(|a| a == "-ojson" || a == "--output=json" || a == "-o=json")
}

/// Whether the command line chose `-o json` (the option is global, so it sits in the innermost
/// subcommand's matches).
fn asks_for_json(matches: &ArgMatches) -> bool {
    let mut m = matches;
    loop {
        if let Ok(Some(OutputFormat::Json)) = m.try_get_one::<OutputFormat>("output") {
            return true;
        }
        match m.subcommand() {
            Some((_, sub)) => m = sub,
            None => return false,
        }
    }
}
