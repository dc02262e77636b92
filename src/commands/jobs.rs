//! `meridian job …`: submit a job (and wait for it), list, show, follow its output, cancel.
//!
//! Owns how the CLI turns flags into a submission and how it waits: by polling the admin API with a short,
//! growing interval until the job is terminal — never by sleeping a fixed time in place of a condition.
//! Must never print anything but through `output`, and never exit 0 from `--wait` unless the job succeeded.

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::cli::{ClientArgs, JobCommand, JobRunArgs, OutputFormat};
use crate::client::{segment, ApiClient, ClientError};
use crate::output;

use super::CommandError;

/// First and longest pause between two polls of a job's state or output.
const POLL_FIRST: Duration = Duration::from_millis(200);
const POLL_LONGEST: Duration = Duration::from_secs(2);
/// Consecutive failed polls (coordinator unreachable or without a leader) tolerated while waiting.
const POLL_FAILURES_TOLERATED: u32 = 60;
/// Bytes asked for per log read.
const LOG_CHUNK: u64 = 1 << 20;

/// The states a job never leaves.
const TERMINAL: [&str; 4] = ["succeeded", "failed", "cancelled", "lost"];

pub async fn run(cmd: JobCommand) -> Result<(), CommandError> {
    match cmd {
        JobCommand::Run(args) => submit(*args).await,
        JobCommand::List { state, client } => list(state, client).await.map_err(Into::into),
        JobCommand::Status { id, client } => status(&id, client).await.map_err(Into::into),
        JobCommand::Logs {
            id,
            follow,
            stderr,
            attempt,
            replica,
            client,
        } => logs(&id, follow, stderr, attempt, replica, client)
            .await
            .map_err(Into::into),
        JobCommand::Cancel { id, client } => cancel(&id, client).await.map_err(Into::into),
    }
}

/// The submission body for `job run`'s flags.
fn submission(args: &JobRunArgs) -> Result<Value, ClientError> {
    let (command, rest) = args
        .command
        .split_first()
        .ok_or_else(|| ClientError::Usage("give the command to run after --".into()))?;
    let mut body = Map::new();
    body.insert("command".into(), json!(command));
    body.insert("args".into(), json!(rest));
    if let Some(name) = &args.name {
        body.insert("name".into(), json!(name));
    }
    let mut resources = Map::new();
    if let Some(millis) = args.cpu {
        resources.insert("cpu_millis".into(), json!(millis));
    }
    if let Some(bytes) = args.memory {
        resources.insert("memory_bytes".into(), json!(bytes));
    }
    if let Some(gpus) = args.gpus {
        resources.insert("gpus".into(), json!(gpus));
    }
    if let Some(model) = &args.gpu_model {
        resources.insert("gpu_model".into(), json!(model));
    }
    body.insert("resources".into(), Value::Object(resources));
    if let Some(n) = args.replicas {
        body.insert("replicas".into(), json!(n));
    }
    let labels: Map<String, Value> = args
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    body.insert(
        "constraints".into(),
        json!({ "region": args.region, "cluster": args.cluster, "labels": labels }),
    );
    let env: Map<String, Value> = args
        .env
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    body.insert("env".into(), Value::Object(env));
    if let Some(dir) = &args.workdir {
        body.insert("working_dir".into(), json!(dir));
    }
    if let Some(p) = args.priority {
        body.insert("priority".into(), json!(p));
    }
    if args.preempt {
        body.insert("preemption".into(), json!(true));
    }
    if args.not_preemptible {
        body.insert("preemptible".into(), json!(false));
    }
    if args.spread {
        body.insert("strategy".into(), json!("spread"));
    }
    if let Some(locality) = &args.data_locality {
        let (region, cluster) = match locality.split_once('/') {
            Some((region, cluster)) => (region, Some(cluster)),
            None => (locality.as_str(), None),
        };
        body.insert(
            "data_locality".into(),
            json!({ "region": region, "cluster": cluster }),
        );
    }
    let mut retry = Map::new();
    if let Some(n) = args.max_attempts {
        retry.insert("max_attempts".into(), json!(n));
    }
    retry.insert("on_failure".into(), json!(args.retry_on_failure));
    body.insert("retry".into(), Value::Object(retry));
    if !args.secrets.is_empty() {
        let secrets: Map<String, Value> = args
            .secrets
            .iter()
            .map(|(var, name)| (var.clone(), json!(name)))
            .collect();
        body.insert("secrets".into(), Value::Object(secrets));
        if args.secret_env {
            body.insert("secrets_env".into(), json!(true));
        }
    }
    if let Some(secs) = args.cancel_grace {
        body.insert("cancel_grace_secs".into(), json!(secs));
    }
    if let Some(secs) = args.timeout {
        body.insert("timeout_secs".into(), json!(secs));
    }
    Ok(Value::Object(body))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn is_terminal(job: &Value) -> bool {
    TERMINAL.contains(&str_of(job, "state"))
}

fn job_path(id: &str) -> String {
    format!("/v1/jobs/{}", segment(id))
}

/// Sleeps for the current poll interval and grows it for next time.
async fn pause(interval: &mut Duration) {
    tokio::time::sleep(*interval).await;
    *interval = (*interval * 3 / 2).min(POLL_LONGEST);
}

/// Polls the job until it is terminal; tolerates a coordinator that is briefly unavailable.
async fn wait_until_terminal(api: &ApiClient, id: &str) -> Result<Value, ClientError> {
    let mut interval = POLL_FIRST;
    let mut failures = 0;
    loop {
        match api.get(&job_path(id)).await {
            Ok(job) if is_terminal(&job) => return Ok(job),
            Ok(_) => failures = 0,
            Err(ClientError::Unavailable(m)) => {
                failures += 1;
                if failures > POLL_FAILURES_TOLERATED {
                    return Err(ClientError::Unavailable(m));
                }
            }
            Err(e) => return Err(e),
        }
        pause(&mut interval).await;
    }
}

/// One line saying how a job ended, for people.
fn ending(job: &Value) -> String {
    let id = str_of(job, "id");
    let state = str_of(job, "state");
    let mut text = format!("job {id} {state}");
    // The entry that decided the last attempt: for a gang, the replica that ended it rather than one
    // stopped with it.
    let attempts = job
        .get("attempts")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let last_no = attempts.last().and_then(|a| a.get("attempt"));
    let last = attempts
        .iter()
        .rev()
        .filter(|a| a.get("attempt") == last_no)
        .find(|a| str_of(a, "outcome") != "stopped" && str_of(a, "outcome") != "succeeded")
        .or_else(|| attempts.last());
    if let Some(a) = last {
        if let Some(code) = a.get("exit_code").and_then(Value::as_i64) {
            text.push_str(&format!(", exit code {code}"));
        } else if let Some(signal) = a.get("signal").and_then(Value::as_i64) {
            text.push_str(&format!(", signal {signal}"));
        }
        let node = str_of(a, "node");
        if !node.is_empty() {
            text.push_str(&format!(" on {node}"));
        }
        let detail = str_of(a, "detail");
        if !detail.is_empty() {
            text.push_str(&format!(" ({detail})"));
        }
    }
    text
}

async fn submit(args: JobRunArgs) -> Result<(), CommandError> {
    let body = submission(&args)?;
    let api = ApiClient::from_args(&args.client)?;
    let job = api.post("/v1/jobs", body).await?;
    let id = str_of(&job, "id").to_owned();
    let format = args.client.output;
    if !args.wait {
        match format {
            OutputFormat::Json => output::json(&job),
            OutputFormat::Table => output::line(&id),
        }
        return Ok(());
    }
    if format == OutputFormat::Table {
        output::line(&id);
    }
    let done = wait_until_terminal(&api, &id).await?;
    match format {
        OutputFormat::Json => output::json(&done),
        OutputFormat::Table => output::note(&ending(&done)),
    }
    if str_of(&done, "state") == "succeeded" {
        Ok(())
    } else {
        Err(CommandError::JobDidNotSucceed {
            id,
            state: str_of(&done, "state").to_owned(),
        })
    }
}

/// A job's row in `job list`.
fn row(job: &Value) -> Vec<String> {
    vec![
        str_of(job, "id").to_owned(),
        output::cell(job.get("name").unwrap_or(&Value::Null)),
        str_of(job, "state").to_owned(),
        output::cell(job.get("node").unwrap_or(&Value::Null)),
        output::cell(job.get("attempt_count").unwrap_or(&Value::Null)),
        output::time(job.get("created_at").unwrap_or(&Value::Null)),
    ]
}

async fn list(state: Option<String>, client: ClientArgs) -> Result<(), ClientError> {
    let api = ApiClient::from_args(&client)?;
    let path = match state {
        Some(s) => format!("/v1/jobs?state={}", segment(&s)),
        None => "/v1/jobs".to_owned(),
    };
    let items = api.list_all(&path).await?;
    match client.output {
        OutputFormat::Json => output::json(&Value::Array(items)),
        OutputFormat::Table => {
            let headers: Vec<String> = ["ID", "NAME", "STATE", "NODE", "ATTEMPTS", "CREATED"]
                .iter()
                .map(|h| (*h).to_owned())
                .collect();
            let rows: Vec<Vec<String>> = items.iter().map(row).collect();
            output::table(&headers, &rows);
        }
    }
    Ok(())
}

fn field(job: &Value, key: &str) -> String {
    let v = job.get(key).unwrap_or(&Value::Null);
    match v {
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::Array(a) if a.is_empty() => "-".to_owned(),
        _ => output::cell(v),
    }
}

async fn status(id: &str, client: ClientArgs) -> Result<(), ClientError> {
    let api = ApiClient::from_args(&client)?;
    let job = api.get(&job_path(id)).await?;
    if client.output == OutputFormat::Json {
        output::json(&job);
        return Ok(());
    }
    let mut command = vec![str_of(&job, "command").to_owned()];
    if let Some(args) = job.get("args").and_then(Value::as_array) {
        command.extend(args.iter().map(output::cell));
    }
    let r = job.get("resources").cloned().unwrap_or(Value::Null);
    let cpu = r
        .get("cpu_millis")
        .and_then(Value::as_u64)
        .filter(|m| *m > 0)
        .map_or_else(|| "-".to_owned(), |m| format!("{}", m as f64 / 1000.0));
    let gpus = match (r.get("gpus").and_then(Value::as_u64), r.get("gpu_model")) {
        (Some(0) | None, _) => "-".to_owned(),
        (Some(n), Some(Value::String(model))) => format!("{n} × {model}"),
        (Some(n), _) => n.to_string(),
    };
    output::fields(&[
        ("id", field(&job, "id")),
        ("name", field(&job, "name")),
        ("state", field(&job, "state")),
        ("node", field(&job, "node")),
        ("region", field(&job, "region")),
        ("cluster", field(&job, "cluster")),
        ("attempts", field(&job, "attempt_count")),
        ("replicas", field(&job, "replicas")),
        ("pending reason", field(&job, "pending_reason")),
        ("exit code", field(&job, "exit_code")),
        ("cancel requested", field(&job, "cancel_requested")),
        ("command", command.join(" ")),
        ("cpu", cpu),
        (
            "memory",
            output::bytes(r.get("memory_bytes").unwrap_or(&Value::Null)),
        ),
        ("gpus", gpus),
        (
            "created",
            output::time(job.get("created_at").unwrap_or(&Value::Null)),
        ),
        (
            "finished",
            output::time(job.get("finished_at").unwrap_or(&Value::Null)),
        ),
    ]);
    let attempts = job
        .get("attempts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !attempts.is_empty() {
        output::line("");
        let headers: Vec<String> = [
            "ATTEMPT", "REPLICA", "NODE", "GPUS", "STARTED", "ENDED", "OUTCOME", "EXIT", "SIGNAL",
            "DETAIL",
        ]
        .iter()
        .map(|h| (*h).to_owned())
        .collect();
        let rows: Vec<Vec<String>> = attempts
            .iter()
            .map(|a| {
                vec![
                    field(a, "attempt"),
                    field(a, "replica"),
                    field(a, "node"),
                    field(a, "gpu_uuids"),
                    output::time(a.get("started_at").unwrap_or(&Value::Null)),
                    output::time(a.get("ended_at").unwrap_or(&Value::Null)),
                    field(a, "outcome"),
                    field(a, "exit_code"),
                    field(a, "signal"),
                    field(a, "detail"),
                ]
            })
            .collect();
        output::table(&headers, &rows);
    }
    Ok(())
}

/// Prints a job's output from the start: everything there is, or with `follow` until the job has ended
/// and its output is drained. Without `--attempt`, a newer attempt that starts while following is printed
/// from its beginning after a note.
async fn logs(
    id: &str,
    follow: bool,
    stderr: bool,
    attempt: Option<u32>,
    replica: u32,
    client: ClientArgs,
) -> Result<(), ClientError> {
    let api = ApiClient::from_args(&client)?;
    let stream = if stderr { "stderr" } else { "stdout" };
    let mut pinned = attempt.map_or_else(String::new, |n| format!("&attempt={n}"));
    if replica > 0 {
        pinned.push_str(&format!("&replica={replica}"));
    }
    let mut current: Option<u64> = None;
    let mut offset: u64 = 0;
    let mut interval = POLL_FIRST;
    let mut failures = 0;
    loop {
        let path = format!(
            "{}/logs?stream={stream}&offset={offset}&max_bytes={LOG_CHUNK}{pinned}",
            job_path(id)
        );
        let chunk = match api.get(&path).await {
            Ok(chunk) => chunk,
            // Not on a node yet: wait for it to start, unless it ended without ever running.
            Err(ClientError::Conflict(_)) if follow => {
                let job = api.get(&job_path(id)).await?;
                if is_terminal(&job) {
                    output::note(&format!("{}; it produced no output", ending(&job)));
                    return Ok(());
                }
                pause(&mut interval).await;
                continue;
            }
            // The agent or the coordinator is briefly away: keep following while the job may still run.
            Err(ClientError::Unavailable(message)) if follow => {
                failures += 1;
                let job = api.get(&job_path(id)).await.ok();
                if failures > POLL_FAILURES_TOLERATED || job.as_ref().is_some_and(is_terminal) {
                    return Err(ClientError::Unavailable(message));
                }
                pause(&mut interval).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        failures = 0;
        let this_attempt = chunk.get("attempt").and_then(Value::as_u64);
        if attempt.is_none() && current.is_some() && this_attempt != current {
            output::note(&format!(
                "--- attempt {} on {} ---",
                output::cell(chunk.get("attempt").unwrap_or(&Value::Null)),
                str_of(&chunk, "node")
            ));
            current = this_attempt;
            offset = 0;
            continue;
        }
        current = this_attempt;
        let data = str_of(&chunk, "data");
        if !data.is_empty() {
            match output::raw(data.as_bytes()) {
                Ok(()) => {}
                // Whoever read our output stopped (`| head`): nothing left to do.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(ClientError::Failed(format!("writing the output: {e}"))),
            }
        }
        let next = chunk
            .get("next_offset")
            .and_then(Value::as_u64)
            .unwrap_or(offset);
        let moved = next != offset || !data.is_empty();
        offset = next;
        if moved {
            interval = POLL_FIRST;
            continue;
        }
        let done = chunk.get("done").and_then(Value::as_bool).unwrap_or(true);
        if !follow || done {
            return Ok(());
        }
        pause(&mut interval).await;
    }
}

async fn cancel(id: &str, client: ClientArgs) -> Result<(), ClientError> {
    let api = ApiClient::from_args(&client)?;
    let job = api
        .post(&format!("{}:cancel", job_path(id)), json!({}))
        .await?;
    match client.output {
        OutputFormat::Json => output::json(&job),
        OutputFormat::Table => {
            let state = str_of(&job, "state");
            let requested = job
                .get("cancel_requested")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if requested && !TERMINAL.contains(&state) {
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
        let body = submission(&run_args(&[
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
            body,
            json!({
                "command": "python3",
                "args": ["train.py"],
                "name": "t",
                "resources": {"cpu_millis": 1500, "memory_bytes": 2_000_000_000u64, "gpus": 2,
                              "gpu_model": "H200"},
                "constraints": {"region": "eu", "cluster": null, "labels": {"zone": "a"}},
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
            })
        );
        let with_secrets = submission(&run_args(&[
            "--secret",
            "TOKEN=api-token",
            "--secret-env",
            "--",
            "true",
        ]))
        .expect("body");
        assert_eq!(with_secrets["secrets"], json!({"TOKEN": "api-token"}));
        assert_eq!(with_secrets["secrets_env"], json!(true));
        let files_only =
            submission(&run_args(&["--secret", "TOKEN=api-token", "--", "true"])).expect("body");
        assert!(files_only.get("secrets_env").is_none());
        let region_only =
            submission(&run_args(&["--data-locality", "eu", "--", "true"])).expect("body");
        assert_eq!(
            region_only["data_locality"],
            json!({"region": "eu", "cluster": null})
        );
        let minimal = submission(&run_args(&["--", "true"])).expect("body");
        assert_eq!(minimal["command"], "true");
        assert_eq!(minimal["args"], json!([]));
        assert_eq!(minimal["resources"], json!({}));
        assert!(minimal.get("timeout_secs").is_none());
        for absent in [
            "replicas",
            "preemption",
            "preemptible",
            "strategy",
            "data_locality",
        ] {
            assert!(minimal.get(absent).is_none(), "{absent}");
        }
    }

    #[test]
    fn endings_say_state_exit_and_node() {
        let job = json!({"id": "job_1", "state": "failed", "attempts": [
            {"node": "eu/eu1/a1", "exit_code": 3, "detail": ""}]});
        assert_eq!(ending(&job), "job job_1 failed, exit code 3 on eu/eu1/a1");
        let job = json!({"id": "job_2", "state": "cancelled", "attempts": []});
        assert_eq!(ending(&job), "job job_2 cancelled");
        // A gang: the replica that failed, not the one stopped with it nor the older attempt.
        let job = json!({"id": "job_3", "state": "failed", "attempts": [
            {"attempt": 1, "replica": 0, "node": "n0", "outcome": "failed", "exit_code": 9, "detail": "x"},
            {"attempt": 2, "replica": 0, "node": "n1", "outcome": "failed", "exit_code": 4,
             "detail": "exited with code 4"},
            {"attempt": 2, "replica": 1, "node": "n2", "outcome": "stopped",
             "detail": "stopped with its gang (replica 0 failed: exited with code 4)"}]});
        assert_eq!(
            ending(&job),
            "job job_3 failed, exit code 4 on n1 (exited with code 4)"
        );
        assert!(is_terminal(&json!({"state": "lost"})));
        assert!(!is_terminal(&json!({"state": "running"})));
    }
}
