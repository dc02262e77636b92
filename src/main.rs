//! `meridian`: one binary for every Meridian process and the operator CLI.

use clap::Parser;

fn main() {
    // First, while this is the only thread: no other thread may read the environment while it changes.
    meridian::master_key_env::take_from_environment();
    let cli = meridian::cli::Cli::parse();
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
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
