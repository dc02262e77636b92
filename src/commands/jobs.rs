//! `meridian job …`: submit a job (and wait for it), list, show, follow its output, cancel.
//!
//! Owns how the CLI turns flags into a submission and the polling pace shared by waiting (`job_wait.rs`)
//! and reading output (`job_logs.rs`): a short, growing interval until the job is terminal — never a fixed
//! sleep in place of a condition. Must never print anything but through `output`, and never exit 0 from
//! `--wait` unless the job succeeded.

use std::time::Duration;

use coordinator::api::dto::{
    ConstraintsBody, JobPlanView, JobView, LocalityBody, ResourcesBody, RetryBody, SubmitJobRequest,
};
use coordinator::state::AttemptOutcome;
use serde_json::json;

use crate::cli::{ClientArgs, JobCommand, JobRunArgs, ListOptions, OutputFormat, WatchOptions};
use crate::client::{segment, ApiClient, ClientError};
use crate::output;

use super::{list_all_as, newest_first, post_as, watching, CommandError};

/// First and longest pause between two polls of a job's state or output.
pub(super) const POLL_FIRST: Duration = Duration::from_millis(200);
const POLL_LONGEST: Duration = Duration::from_secs(2);
/// Consecutive failed polls (coordinator unreachable or without a leader) tolerated while waiting.
pub(super) const POLL_FAILURES_TOLERATED: u32 = 60;

pub async fn run(cmd: JobCommand) -> Result<(), CommandError> {
    match cmd {
        JobCommand::Run(args) => submit(*args).await,
        JobCommand::Plan(args) => plan(*args).await,
        JobCommand::List {
            state,
            list: options,
            watch,
            client,
        } => list(state, options, watch, client)
            .await
            .map_err(Into::into),
        JobCommand::Status { id, watch, client } => {
            status(&id, watch, client).await.map_err(Into::into)
        }
        JobCommand::Logs {
            id,
            follow,
            select,
            attempt,
            replica,
            client,
        } => {
            let api = ApiClient::from_args(&client)?;
            super::job_logs::logs(&id, follow, &select, attempt, replica, &api)
                .await
                .map_err(Into::into)
        }
        JobCommand::Cancel { id, client } => cancel(&id, client).await.map_err(Into::into),
        JobCommand::Exec(args) => super::job_exec::exec(*args).await,
        JobCommand::Cp(args) => super::job_exec::cp(*args).await,
    }
}

/// The submission `job run`'s flags describe (no command when none follows `--`; see `job_spec`).
pub(super) fn flag_submission(args: &JobRunArgs) -> Result<SubmitJobRequest, ClientError> {
    let (command, rest) = match args.command.split_first() {
        Some((command, rest)) => (Some(command.clone()), rest.to_vec()),
        None => (None, Vec::new()),
    };
    let data_locality =
        args.data_locality
            .as_ref()
            .map(|locality| match locality.split_once('/') {
                Some((region, cluster)) => LocalityBody {
                    region: region.to_owned(),
                    cluster: Some(cluster.to_owned()),
                },
                None => LocalityBody {
                    region: locality.clone(),
                    cluster: None,
                },
            });
    Ok(SubmitJobRequest {
        name: args.name.clone(),
        command,
        args: rest,
        env: args.env.iter().cloned().collect(),
        working_dir: args.workdir.clone(),
        resources: ResourcesBody {
            cpu_millis: args.cpu,
            memory_bytes: args.memory,
            gpus: args.gpus.map(u64::from),
            gpu_model: args.gpu_model.clone(),
            ..ResourcesBody::default()
        },
        replicas: args.replicas.map(u64::from),
        constraints: ConstraintsBody {
            region: args.region.clone(),
            cluster: args.cluster.clone(),
            labels: args.labels.iter().cloned().collect(),
        },
        data_locality,
        priority: args.priority.map(i64::from),
        preemption: args.preempt,
        preemptible: args.not_preemptible.then_some(false),
        strategy: args.spread.then(|| "spread".to_owned()),
        retry: RetryBody {
            max_attempts: args.max_attempts.map(u64::from),
            on_failure: args.retry_on_failure,
        },
        timeout_secs: args.timeout,
        cancel_grace_secs: args.cancel_grace,
        secrets: args.secrets.iter().cloned().collect(),
        secrets_env: args.secret_env && !args.secrets.is_empty(),
    })
}

pub(super) fn job_path(id: &str) -> String {
    format!("/v1/jobs/{}", segment(id))
}

/// Sleeps for the current poll interval and grows it for next time.
pub(super) async fn pause(interval: &mut Duration) {
    tokio::time::sleep(*interval).await;
    *interval = (*interval * 3 / 2).min(POLL_LONGEST);
}

/// One line saying how a job ended, for people.
pub(super) fn ending(job: &JobView) -> String {
    let mut text = format!("job {} {}", job.id, job.state.as_str());
    // The entry that decided the last attempt: for a gang, the replica that ended it rather than one
    // stopped with it.
    let last_no = job.attempts.last().map(|a| a.attempt);
    let last = job
        .attempts
        .iter()
        .rev()
        .filter(|a| Some(a.attempt) == last_no)
        .find(|a| {
            !matches!(
                a.outcome,
                Some(AttemptOutcome::Stopped | AttemptOutcome::Succeeded)
            )
        })
        .or_else(|| job.attempts.last());
    if let Some(a) = last {
        if let Some(code) = a.exit_code {
            text.push_str(&format!(", exit code {code}"));
        } else if let Some(signal) = a.signal {
            text.push_str(&format!(", signal {signal}"));
        }
        if !a.node.is_empty() {
            text.push_str(&format!(" on {}", a.node));
        }
        if !a.detail.is_empty() {
            text.push_str(&format!(" ({})", a.detail));
        }
    }
    text
}

async fn submit(args: JobRunArgs) -> Result<(), CommandError> {
    let body = super::job_spec::submission(&args)?;
    let api = ApiClient::from_args(&args.client)?;
    let job: JobView = post_as(&api, "/v1/jobs", &body).await?;
    let format = args.client.output;
    if let (OutputFormat::Table, Some(reason)) = (format, &job.unsatisfiable) {
        output::note(&format!(
            "warning: no node of the fleet could ever run job {}: {reason}\n\
             it waits until the fleet changes; `meridian job cancel {}` withdraws it",
            job.id, job.id
        ));
    }
    if !args.wait && !args.waiting.implies_wait() {
        match format {
            OutputFormat::Json => output::json_of(&job),
            OutputFormat::Table => output::line(&job.id),
        }
        return Ok(());
    }
    super::job_wait::wait(&api, job, &args.waiting, format).await
}

/// `meridian job plan`: the scheduler's dry run of the submission the flags (and `-f`) describe.
async fn plan(args: JobRunArgs) -> Result<(), CommandError> {
    if args.wait {
        return Err(ClientError::Usage(
            "job plan submits nothing, so there is nothing to --wait for".into(),
        )
        .into());
    }
    let body = super::job_spec::submission(&args)?;
    let api = ApiClient::from_args(&args.client)?;
    let plan: JobPlanView = post_as(&api, "/v1/jobs:plan", &body).await?;
    match args.client.output {
        OutputFormat::Json => output::json_of(&plan),
        OutputFormat::Table => {
            for r in &plan.replicas {
                let gpus = if r.gpu_uuids.is_empty() {
                    String::new()
                } else {
                    format!(", GPUs {}", r.gpu_uuids.join(","))
                };
                let who = if plan.replicas.len() > 1 {
                    format!("replica {} would run on", r.replica)
                } else {
                    "would run on".to_owned()
                };
                output::line(&format!("{who} {}{gpus}", r.node));
            }
            if plan.preempts > 0 {
                output::line(&format!("preempting {} running job(s)", plan.preempts));
            }
            if let Some(reason) = plan
                .pending_reason
                .as_deref()
                .filter(|_| plan.unsatisfiable.is_none())
            {
                output::line(&format!("would wait: {reason}"));
            }
            if plan.queue_ahead > 0 {
                output::line(&format!(
                    "{} pending job(s) of higher or equal priority would be considered first",
                    plan.queue_ahead
                ));
            }
        }
    }
    match plan.unsatisfiable {
        Some(reason) => Err(CommandError::JobCannotRun {
            what: "the job".to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

async fn list(
    state: Option<String>,
    options: ListOptions,
    watch: WatchOptions,
    client: ClientArgs,
) -> Result<(), ClientError> {
    let api = ApiClient::from_args(&client)?;
    let path = match state {
        Some(s) => format!("/v1/jobs?state={}", segment(&s)),
        None => "/v1/jobs".to_owned(),
    };
    let format = client.output;
    watching(
        watch,
        "meridian job list",
        || async {
            let jobs: Vec<JobView> = list_all_as(&api, &path).await?;
            Ok(newest_first(jobs, |j| j.created_at, options))
        },
        |jobs| output::rows(format, jobs),
    )
    .await
}

async fn status(id: &str, watch: WatchOptions, client: ClientArgs) -> Result<(), ClientError> {
    let api = ApiClient::from_args(&client)?;
    let path = job_path(id);
    let (api, found) = super::locate::locate_read(api, &format!("job {id}"), &path).await?;
    let first: JobView = super::decode(&format!("GET {path}"), found)?;
    let render = |job: &JobView| {
        output::show(client.output, job);
        if client.output == OutputFormat::Table && !job.attempts.is_empty() {
            output::line("");
            output::rows(OutputFormat::Table, &job.attempts);
        }
    };
    if !watch.watch {
        render(&first);
        return Ok(());
    }
    let mut first = Some(first);
    super::watching_until(
        watch,
        &format!("job {id}"),
        || {
            let ready = first.take();
            let api = &api;
            let path = &path;
            async move {
                match ready {
                    Some(job) => Ok(job),
                    None => super::get_as::<JobView>(api, path).await,
                }
            }
        },
        render,
        |job| job.state.is_terminal(),
    )
    .await
}

async fn cancel(id: &str, client: ClientArgs) -> Result<(), ClientError> {
    let api = ApiClient::from_args(&client)?;
    let api = super::locate::locate(api, &format!("job {id}"), &job_path(id)).await?;
    let job: JobView = post_as(&api, &format!("{}:cancel", job_path(id)), &json!({})).await?;
    match client.output {
        OutputFormat::Json => output::json_of(&job),
        OutputFormat::Table => {
            let state = job.state.as_str();
            if job.cancel_requested && !job.state.is_terminal() {
                output::note(&format!(
                    "job {id}: cancel requested; its agent stops it (state {state})"
                ));
            } else {
                output::note(&format!("job {id} {state}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};
    use coordinator::api::dto::JobState;

    fn run_args(argv: &[&str]) -> JobRunArgs {
        let mut full = vec!["meridian", "job", "run"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).expect("parses").command {
            Command::Job(JobCommand::Run(args)) => *args,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn flags_become_the_submission() {
        let body = flag_submission(&run_args(&[
            "--name",
            "t",
            "--cpu",
            "1.5",
            "--memory",
            "2G",
            "--gpus",
            "2",
            "--gpu-model",
            "H200",
            "--region",
            "eu",
            "--label",
            "zone=a",
            "--priority",
            "3",
            "--max-attempts",
            "4",
            "--retry-on-failure",
            "--timeout",
            "5m",
            "--env",
            "A=1",
            "--workdir",
            "/w",
            "--replicas",
            "2",
            "--preempt",
            "--not-preemptible",
            "--spread",
            "--data-locality",
            "us/us1",
            "--",
            "python3",
            "train.py",
        ]))
        .expect("body");
        assert_eq!(
            sent(&body),
            json!({
                "command": "python3",
                "args": ["train.py"],
                "name": "t",
                "resources": {"cpu_millis": 1500, "memory_bytes": 2_000_000_000u64, "gpus": 2,
                              "gpu_model": "H200"},
                "constraints": {"region": "eu", "labels": {"zone": "a"}},
                "env": {"A": "1"},
                "working_dir": "/w",
                "priority": 3,
                "retry": {"max_attempts": 4, "on_failure": true},
                "timeout_secs": 300,
                "replicas": 2,
                "preemption": true,
                "preemptible": false,
                "strategy": "spread",
                "data_locality": {"region": "us", "cluster": "us1"},
                "secrets": {},
                "secrets_env": false,
            })
        );
        let with_secrets = flag_submission(&run_args(&[
            "--secret",
            "TOKEN=api-token",
            "--secret-env",
            "--",
            "true",
        ]))
        .expect("body");
        assert_eq!(
            with_secrets.secrets,
            [("TOKEN".to_owned(), "api-token".to_owned())].into()
        );
        assert!(with_secrets.secrets_env);
        let files_only = flag_submission(&run_args(&["--secret", "TOKEN=api-token", "--", "true"]))
            .expect("body");
        assert!(!files_only.secrets_env);
        let region_only =
            flag_submission(&run_args(&["--data-locality", "eu", "--", "true"])).expect("body");
        assert_eq!(sent(&region_only)["data_locality"], json!({"region": "eu"}));
        let minimal = flag_submission(&run_args(&["--", "true"])).expect("body");
        assert_eq!(
            sent(&minimal),
            json!({
                "command": "true",
                "args": [],
                "env": {},
                "resources": {},
                "constraints": {"labels": {}},
                "preemption": false,
                "retry": {"on_failure": false},
                "secrets": {},
                "secrets_env": false,
            }),
            "what is not asked for is left to the server's defaults"
        );
    }

    /// A request body as sent, without its null (absent) fields.
    fn sent(body: &SubmitJobRequest) -> serde_json::Value {
        fn strip(v: serde_json::Value) -> serde_json::Value {
            match v {
                serde_json::Value::Object(map) => map
                    .into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k, strip(v)))
                    .collect(),
                other => other,
            }
        }
        strip(serde_json::to_value(body).expect("a request body"))
    }

    /// A job in `state` with these attempts (given as the API writes them).
    fn job(id: &str, state: JobState, attempts: serde_json::Value) -> JobView {
        let attempts = attempts
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let mut full = json!({
                    "attempt": 1, "replica": 0, "node": "", "region": "eu", "cluster": "eu1",
                    "gpu_uuids": [], "resources": {"cpu_millis": 0, "memory_bytes": 0, "gpus": 0},
                    "scheduled_at": 1, "started_at": null, "ended_at": null, "outcome": null,
                    "exit_code": null, "signal": null, "cpu_time_ms": null, "max_rss_bytes": null,
                    "detail": "",
                });
                if let (Some(base), Some(given)) = (full.as_object_mut(), a.as_object()) {
                    base.extend(given.clone());
                }
                full
            })
            .collect::<Vec<_>>();
        serde_json::from_value(json!({
            "id": id, "project_id": "p1", "name": "", "state": state, "command": "true", "args": [],
            "env": {}, "working_dir": null,
            "resources": {"cpu_millis": 0, "memory_bytes": 0, "gpus": 0},
            "replicas": 1, "constraints": {"region": null, "cluster": null, "labels": {}},
            "data_locality": null, "priority": 0, "preemption": false, "preemptible": true,
            "strategy": "bin_pack", "retry": {"max_attempts": 3, "on_failure": false},
            "timeout_secs": null, "cancel_grace_secs": 10, "secrets": {}, "secrets_env": false,
            "node": null, "region": null, "cluster": null, "attempt_count": attempts.len(),
            "attempts": attempts, "pending_reason": null, "cancel_requested": false, "exit_code": null,
            "created_by": "ci", "principal_id": null, "created_at": 1, "updated_at": 1,
            "finished_at": null,
        }))
        .expect("a job as the API writes it")
    }

    #[test]
    fn endings_say_state_exit_and_node() {
        let failed = job(
            "job_1",
            JobState::Failed,
            json!([{"node": "eu/eu1/a1", "exit_code": 3, "detail": ""}]),
        );
        assert_eq!(
            ending(&failed),
            "job job_1 failed, exit code 3 on eu/eu1/a1"
        );
        let cancelled = job("job_2", JobState::Cancelled, json!([]));
        assert_eq!(ending(&cancelled), "job job_2 cancelled");
        // A gang: the replica that failed, not the one stopped with it nor the older attempt.
        let gang = job(
            "job_3",
            JobState::Failed,
            json!([
                {"attempt": 1, "replica": 0, "node": "n0", "outcome": "failed", "exit_code": 9,
                 "detail": "x"},
                {"attempt": 2, "replica": 0, "node": "n1", "outcome": "failed", "exit_code": 4,
                 "detail": "exited with code 4"},
                {"attempt": 2, "replica": 1, "node": "n2", "outcome": "stopped",
                 "detail": "stopped with its gang (replica 0 failed: exited with code 4)"}]),
        );
        assert_eq!(
            ending(&gang),
            "job job_3 failed, exit code 4 on n1 (exited with code 4)"
        );
    }

    #[test]
    fn a_job_reads_as_a_row_and_as_lines_without_raw_times() {
        use crate::output::{Fields as _, Row as _};
        let now = 1_700_000_300_000;
        let mut j = job(
            "job_4",
            JobState::Running,
            json!([{"started_at": 1_700_000_000_000u64}]),
        );
        j.created_at = 1_700_000_000_000;
        let row = j.row(now);
        assert_eq!(row, ["job_4", "-", "running", "-", "1", "5m"]);
        let lines = j.fields(now);
        let created = lines
            .iter()
            .find(|(k, _)| *k == "created")
            .map(|(_, v)| v.as_str());
        assert_eq!(created, Some("2023-11-14T22:13:20.000Z (5m ago)"));
        let attempt = j.attempts[0].row(now);
        assert_eq!(attempt[4], "2023-11-14T22:13:20.000Z");
    }
}
