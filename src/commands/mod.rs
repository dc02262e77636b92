//! What each CLI command does; `run` dispatches a parsed [`crate::cli::Cli`].

mod admin;
mod agent;
mod audit;
mod certs;
mod context;
mod jobs;
mod usage;

use clap::CommandFactory;

use crate::cli::{Cli, Command};
use crate::client::ClientError;

/// Runs one command; the result's error decides the exit code.
pub async fn run(cli: Cli) -> Result<(), CommandError> {
    match cli.command {
        Command::Dev(args) => crate::dev::run(args).await.map_err(CommandError::Fatal),
        Command::Coordinator(args) => crate::server::run_from_file(&args.config)
            .await
            .map_err(CommandError::Fatal),
        Command::Agent(args) => agent::run(args).await,
        Command::Certs(crate::cli::CertsCommand::DenyList(cmd)) => {
            admin::deny_list(cmd).await.map_err(CommandError::Client)
        }
        Command::Certs(cmd) => certs::run(cmd).map_err(CommandError::Fatal),
        Command::Project(cmd) => admin::project(cmd).await.map_err(CommandError::Client),
        Command::Key(cmd) => admin::key(cmd).await.map_err(CommandError::Client),
        Command::Role(cmd) => admin::role(cmd).await.map_err(CommandError::Client),
        Command::Secret(cmd) => admin::secret(cmd).await.map_err(CommandError::Client),
        Command::Cluster(cmd) => admin::cluster(cmd).await.map_err(CommandError::Client),
        Command::Node(cmd) => admin::node(cmd).await.map_err(CommandError::Client),
        Command::Job(cmd) => jobs::run(cmd).await,
        Command::Usage(args) => usage::run(args).await.map_err(CommandError::Client),
        Command::Audit(cmd) => audit::run(cmd).await.map_err(CommandError::Client),
        Command::Whoami(c) => admin::whoami(c.client).await.map_err(CommandError::Client),
        Command::Context(cmd) => context::run(cmd).map_err(CommandError::Client),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "meridian", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// A command's failure.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0:#}")]
    Fatal(anyhow::Error),
    /// A command run on the user's behalf ended with this exit code.
    #[error("the command exited with code {0}")]
    Exit(i32),
    /// A job waited for (`job run --wait`) ended in a state other than `succeeded`.
    #[error("job {id} ended {state}")]
    JobDidNotSucceed { id: String, state: String },
}

/// The exit code of `job run --wait` when the job failed, was cancelled or was lost.
pub const JOB_DID_NOT_SUCCEED: i32 = 7;

impl CommandError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CommandError::Client(e) => e.exit_code(),
            CommandError::Fatal(_) => 1,
            CommandError::Exit(code) => *code,
            CommandError::JobDidNotSucceed { .. } => JOB_DID_NOT_SUCCEED,
        }
    }

    /// A stable name for the kind of failure, as `-o json` writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            CommandError::Client(e) => e.kind(),
            CommandError::Fatal(_) => "failed",
            CommandError::Exit(_) => "exit",
            CommandError::JobDidNotSucceed { .. } => "job_did_not_succeed",
        }
    }
}
