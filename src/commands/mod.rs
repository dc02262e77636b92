//! What each CLI command does; `run` dispatches a parsed [`crate::cli::Cli`].

mod admin;
mod agent;
mod audit;
mod certs;
mod context;
pub mod job_exec;
pub(crate) mod job_logs;
mod job_spec;
pub mod job_terminal;
pub(crate) mod job_wait;
mod jobs;
mod locate;
mod tables;
mod usage;

use std::future::Future;

use clap::CommandFactory;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::cli::{Cli, Command, ListOptions, WatchOptions};
use crate::client::{ApiClient, ClientError};
use crate::output;

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
    /// A command run in a job (`job exec`) ended with this code; its own stderr, already printed, is the
    /// whole story, so the CLI exits with the code and says nothing more.
    #[error("the command in the job exited with code {0}")]
    JobCommandExit(i32),
    /// A job waited for (`job run --wait`) ended in a state other than `succeeded`.
    #[error("job {id} ended {state}")]
    JobDidNotSucceed { id: String, state: String },
    /// No node of the fleet could ever run the job (`job run --wait`, `job plan`).
    #[error("{what} cannot run on this fleet: {reason}")]
    JobCannotRun { what: String, reason: String },
    /// `job run --wait-timeout` ran out while the job was still going (it keeps running).
    #[error("stopped waiting for job {id}, still {state}")]
    WaitTimedOut { id: String, state: String },
}

/// The exit code of `job run --wait` when the job failed, was cancelled or was lost.
pub const JOB_DID_NOT_SUCCEED: i32 = 7;
/// The exit code of `job run --wait` and `job plan` when no node of the fleet could ever run the job.
pub const JOB_CANNOT_RUN: i32 = 8;
/// The exit code of `job run --wait-timeout` when the limit ran out before the job ended.
pub const WAIT_TIMED_OUT: i32 = 9;

impl CommandError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CommandError::Client(e) => e.exit_code(),
            CommandError::Fatal(_) => 1,
            CommandError::Exit(code) | CommandError::JobCommandExit(code) => *code,
            CommandError::JobDidNotSucceed { .. } => JOB_DID_NOT_SUCCEED,
            CommandError::JobCannotRun { .. } => JOB_CANNOT_RUN,
            CommandError::WaitTimedOut { .. } => WAIT_TIMED_OUT,
        }
    }

    /// A stable name for the kind of failure, as `-o json` writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            CommandError::Client(e) => e.kind(),
            CommandError::Fatal(_) => "failed",
            CommandError::Exit(_) | CommandError::JobCommandExit(_) => "exit",
            CommandError::JobDidNotSucceed { .. } => "job_did_not_succeed",
            CommandError::JobCannotRun { .. } => "job_cannot_run",
            CommandError::WaitTimedOut { .. } => "wait_timed_out",
        }
    }
}

// ---- typed replies ---------------------------------------------------------------------------------------

/// `GET path`, the reply read as `T` (one of the API's reply types, `coordinator::api::dto`).
pub(crate) async fn get_as<T: DeserializeOwned>(
    api: &ApiClient,
    path: &str,
) -> Result<T, ClientError> {
    decode(&format!("GET {path}"), api.get(path).await?)
}

/// `POST path` with a typed request body, the reply read as `T`.
pub(crate) async fn post_as<T: DeserializeOwned, B: Serialize>(
    api: &ApiClient,
    path: &str,
    body: &B,
) -> Result<T, ClientError> {
    decode(
        &format!("POST {path}"),
        api.post(path, body_of(body)?).await?,
    )
}

/// `PUT path` with a typed request body, the reply read as `T`.
pub(crate) async fn put_as<T: DeserializeOwned, B: Serialize>(
    api: &ApiClient,
    path: &str,
    body: &B,
) -> Result<T, ClientError> {
    decode(&format!("PUT {path}"), api.put(path, body_of(body)?).await?)
}

/// Every item of a paged listing, each read as `T`.
pub(crate) async fn list_all_as<T: DeserializeOwned>(
    api: &ApiClient,
    path: &str,
) -> Result<Vec<T>, ClientError> {
    let what = format!("GET {path}");
    api.list_all(path)
        .await?
        .into_iter()
        .map(|item| decode(&what, item))
        .collect()
}

/// A request body as JSON.
fn body_of<B: Serialize>(body: &B) -> Result<Value, ClientError> {
    serde_json::to_value(body)
        .map_err(|e| ClientError::Failed(format!("encoding the request: {e}")))
}

/// Reads a reply as `T`; a reply that does not fit is a failure (exit code 1) that names the call, the type
/// and what did not fit — a coordinator of another version, or not a coordinator at all.
pub(crate) fn decode<T: DeserializeOwned>(what: &str, reply: Value) -> Result<T, ClientError> {
    serde_json::from_value(reply).map_err(|e| {
        let full = std::any::type_name::<T>();
        // `alloc::vec::Vec<meridian_coordinator::api::jobs::JobView>` → `Vec<JobView>`.
        let short: String = full
            .split_inclusive(['<', '>', ','])
            .map(|part| part.rsplit("::").next().unwrap_or(part))
            .collect();
        ClientError::Failed(format!(
            "the admin API's answer to {what} does not read as {short}: {e} \
             (is the coordinator the same version as this CLI?)"
        ))
    })
}

// ---- lists for people --------------------------------------------------------------------------------------

/// `items` newest first by `at` (items with the same time in the reverse of the server's order), cut to
/// `--limit`.
pub(crate) fn newest_first<T>(
    mut items: Vec<T>,
    at: impl Fn(&T) -> u64,
    options: ListOptions,
) -> Vec<T> {
    items.reverse();
    items.sort_by_key(|item| std::cmp::Reverse(at(item)));
    if let Some(limit) = options.limit {
        items.truncate(limit);
    }
    items
}

/// Fetches and renders once, or with `--watch` again every interval until Ctrl-C: on a terminal each frame
/// replaces the last; otherwise frames follow each other after a blank line. A coordinator briefly
/// unavailable is noted on stderr and asked again at the next interval; any other error ends the watch. Stops
/// quietly when stdout's reader goes away.
pub(crate) async fn watching<T, F, Fut>(
    watch: WatchOptions,
    title: &str,
    fetch: F,
    render: impl Fn(&T),
) -> Result<(), ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    watching_until(watch, title, fetch, render, |_| false).await
}

/// [`watching`] that also stops, after drawing it, at the first answer `done` accepts (a job that ended).
pub(crate) async fn watching_until<T, F, Fut>(
    watch: WatchOptions,
    title: &str,
    mut fetch: F,
    render: impl Fn(&T),
    done: impl Fn(&T) -> bool,
) -> Result<(), ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    if !watch.watch {
        render(&fetch().await?);
        return Ok(());
    }
    let every = match u64::try_from(watch.interval.as_millis()).unwrap_or(u64::MAX) {
        ms if ms < 1000 => format!("{ms}ms"),
        ms => output::span(ms),
    };
    let title = format!("{title}, every {every}");
    let stop = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No signal handling here: the default Ctrl-C ends the process.
            std::future::pending::<()>().await;
        }
    };
    let frames = async {
        let mut first = true;
        loop {
            match fetch().await {
                Ok(answer) => {
                    output::watch_frame(first, &title);
                    render(&answer);
                    first = false;
                    if done(&answer) {
                        return Ok(());
                    }
                }
                Err(ClientError::Unavailable(m)) => output::note(&format!("unavailable: {m}")),
                Err(e) => return Err(e),
            }
            if output::stdout_closed() {
                return Ok(());
            }
            tokio::time::sleep(watch.interval).await;
        }
    };
    tokio::select! {
        () = stop => Ok(()),
        result = frames => result,
    }
}

#[cfg(test)]
mod tests {
    use coordinator::api::dto::{ListPage, ProjectView};
    use serde_json::json;

    use super::*;

    #[test]
    fn a_reply_that_does_not_fit_is_a_failure_that_names_the_call_and_type() {
        let e = decode::<ProjectView>("GET /v1/projects/x", json!({"id": 5}))
            .expect_err("an id is text");
        assert_eq!(e.exit_code(), 1);
        let text = e.to_string();
        assert!(text.contains("GET /v1/projects/x"), "{text}");
        assert!(text.contains("does not read as ProjectView"), "{text}");
        assert!(text.contains("invalid type"), "{text}");
        let e = decode::<ListPage<ProjectView>>("GET /v1/projects", json!("<html>"))
            .expect_err("not a page");
        assert!(
            e.to_string()
                .contains("does not read as ListPage<ProjectView>"),
            "{e}"
        );
    }

    #[test]
    fn lists_read_newest_first_and_stop_at_the_limit() {
        // (time, id) as the server pages them: oldest first.
        let items = vec![(1, "a"), (5, "b"), (3, "c"), (5, "d")];
        let all = newest_first(items.clone(), |i| i.0, ListOptions { limit: None });
        assert_eq!(all, [(5, "d"), (5, "b"), (3, "c"), (1, "a")]);
        let two = newest_first(items, |i| i.0, ListOptions { limit: Some(2) });
        assert_eq!(two, [(5, "d"), (5, "b")]);
    }
}
