//! `meridian job run --wait` / `--follow`: after submitting, wait for the job to end while saying what
//! happens — its state changes and pending reason on stderr when stderr is a terminal, its output (both
//! streams merged, as `job logs` prints them) on stdout unless `--quiet` — and exit with its outcome: 0
//! when it succeeded, 7 when it did not, 9 when `--wait-timeout` ran out first (the job keeps running).
//!
//! Owns the wait loop; polls the admin API with a short, growing interval (never a fixed sleep in place of
//! a condition). Must never put anything but the job's output on stdout in table mode (the job id and
//! progress go to stderr), never exit 0 unless the job succeeded, and never cancel the job it gave up on.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;
use coordinator::api::dto::{JobState, JobView};

use crate::cli::OutputFormat;
use crate::client::{ApiClient, ClientError};
use crate::output;

use super::job_logs::{LogFollower, LogSelectArgs, Step};
use super::jobs::{ending, job_path, pause, POLL_FAILURES_TOLERATED, POLL_FIRST};
use super::{get_as, CommandError};

/// How `job run` waits, besides `--wait` itself.
#[derive(Debug, Clone, Default, Args)]
pub struct WaitArgs {
    /// Submit, then print the job's output (stdout and stderr merged) as it runs, until it ends: --wait
    /// that never goes quiet. Exits like --wait.
    #[arg(long, conflicts_with = "quiet")]
    pub follow: bool,
    /// Wait without printing the job's output (implies --wait).
    #[arg(long)]
    pub quiet: bool,
    /// Stop waiting after this long (implies --wait), e.g. 30s, 10m: exit code 9, and the job keeps
    /// running. (--timeout limits the job itself.)
    #[arg(long, value_name = "DURATION", value_parser = wait_timeout_arg)]
    pub wait_timeout: Option<Duration>,
}

impl WaitArgs {
    /// Whether these flags ask to wait even without `--wait`.
    pub fn implies_wait(&self) -> bool {
        self.follow || self.quiet || self.wait_timeout.is_some()
    }
}

fn wait_timeout_arg(s: &str) -> Result<Duration, String> {
    match coordinator::api::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be more than 0".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// What the wait knows of the job, kept outside the loop so that a timeout can still say it.
struct Seen {
    job: JobView,
    /// The last (state, pending reason, attempt, node) reported, so each change is said once.
    said: Option<(JobState, Option<String>, u32, String)>,
}

/// Waits for `job` (just submitted) to end, as described in the module's documentation.
pub(crate) async fn wait(
    api: &ApiClient,
    job: JobView,
    args: &WaitArgs,
    format: OutputFormat,
) -> Result<(), CommandError> {
    let table = format == OutputFormat::Table;
    if table {
        output::note(&format!("job {} submitted", job.id));
    }
    // Progress is for people watching a terminal; a log file or a pipe gets the outcome only.
    let progress = table && std::io::stderr().is_terminal();
    // In JSON mode stdout carries the final job document, nothing else.
    let mut follower = (table && !args.quiet)
        .then(|| LogFollower::new(&job.id, &LogSelectArgs::default(), None, 0));
    let id = job.id.clone();
    let mut seen = Seen { job, said: None };
    let waited = match args.wait_timeout {
        Some(limit) => tokio::time::timeout(
            limit,
            until_done(api, &mut seen, follower.as_mut(), progress),
        )
        .await
        .ok(),
        None => Some(until_done(api, &mut seen, follower.as_mut(), progress).await),
    };
    let Some(done) = waited else {
        let limit = args.wait_timeout.unwrap_or_default();
        output::note(&format!(
            "stopped waiting after {}: job {id} is still {} and keeps running; follow it with `meridian job logs -f {id}`, see it with `meridian job status {id}`",
            humantime(limit),
            seen.job.state.as_str()
        ));
        return Err(CommandError::WaitTimedOut {
            id,
            state: seen.job.state.as_str().to_owned(),
        });
    };
    let done = done?;
    match format {
        OutputFormat::Json => output::json_of(&done),
        OutputFormat::Table if done.unsatisfiable.is_none() => output::note(&ending(&done)),
        OutputFormat::Table => {}
    }
    if let (false, Some(reason)) = (done.state.is_terminal(), done.unsatisfiable) {
        return Err(CommandError::JobCannotRun {
            what: format!(
                "job {} (still pending; `meridian job cancel {}` withdraws it)",
                done.id, done.id
            ),
            reason,
        });
    }
    if done.state == JobState::Succeeded {
        Ok(())
    } else {
        Err(CommandError::JobDidNotSucceed {
            id: done.id,
            state: done.state.as_str().to_owned(),
        })
    }
}

/// `30s`, `2m5s`: a wait limit as people typed it.
fn humantime(d: Duration) -> String {
    let secs = d.as_secs();
    match (secs / 60, secs % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

/// Polls the job until it is terminal, saying each change and printing its output as it comes; then
/// drains the output. Tolerates a coordinator or agent that is briefly unavailable.
async fn until_done(
    api: &ApiClient,
    seen: &mut Seen,
    mut follower: Option<&mut LogFollower>,
    progress: bool,
) -> Result<JobView, ClientError> {
    let mut interval = POLL_FIRST;
    let mut failures = 0;
    loop {
        match get_as::<JobView>(api, &job_path(&seen.job.id)).await {
            Ok(job) => {
                failures = 0;
                seen.job = job;
            }
            Err(ClientError::Unavailable(m)) => {
                failures += 1;
                if failures > POLL_FAILURES_TOLERATED {
                    return Err(ClientError::Unavailable(m));
                }
                pause(&mut interval).await;
                continue;
            }
            Err(e) => return Err(e),
        }
        if progress {
            say_change(seen);
        }
        // A job no node of the fleet as registered could ever run stays pending until the fleet changes:
        // the wait ends here, and `wait` turns it into exit code 8.
        if seen.job.unsatisfiable.is_some() && !seen.job.state.is_terminal() {
            return Ok(seen.job.clone());
        }
        let terminal = seen.job.state.is_terminal();
        let on_node = seen.job.attempts.iter().any(|a| !a.node.is_empty());
        if let Some(f) = follower.as_deref_mut().filter(|_| on_node) {
            // Everything there is now; after the job ended, that is all of it (the agent stores the
            // output before it reports the exit).
            loop {
                match f.step(api).await {
                    Ok(Step::Moved) => interval = POLL_FIRST,
                    Ok(Step::Idle { .. }) => break,
                    Ok(Step::Closed) => {
                        follower = None;
                        break;
                    }
                    // Not readable right now (the attempt moved, the agent is away): try next round.
                    Err(ClientError::Conflict(_) | ClientError::Unavailable(_)) if !terminal => {
                        break
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if terminal {
            return Ok(seen.job.clone());
        }
        pause(&mut interval).await;
    }
}

/// Says on stderr what changed since the last time: the state, the pending reason, or the attempt and its
/// node.
fn say_change(seen: &mut Seen) {
    let job = &seen.job;
    let last = job.attempts.last();
    let now = (
        job.state,
        job.pending_reason
            .clone()
            .filter(|_| job.state == JobState::Pending),
        last.map_or(0, |a| a.attempt),
        last.map_or_else(String::new, |a| a.node.clone()),
    );
    if seen.said.as_ref() == Some(&now) || job.state.is_terminal() {
        return;
    }
    let (state, reason, attempt, node) = &now;
    let mut line = format!("job {}: {}", job.id, state.as_str());
    match state {
        JobState::Pending => {
            if let Some(reason) = reason {
                line.push_str(&format!(" ({reason})"));
            }
        }
        JobState::Scheduled | JobState::Running if !node.is_empty() => {
            line.push_str(&format!(" on {node}"));
            if *attempt > 1 {
                line.push_str(&format!(", attempt {attempt}"));
            }
        }
        _ => {}
    }
    output::note(&line);
    seen.said = Some(now);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_limits_read_as_durations_and_print_as_typed() {
        assert_eq!(wait_timeout_arg("1s"), Ok(Duration::from_secs(1)));
        assert!(wait_timeout_arg("0s").is_err());
        assert!(wait_timeout_arg("soon").is_err());
        assert_eq!(humantime(Duration::from_secs(1)), "1s");
        assert_eq!(humantime(Duration::from_secs(600)), "10m");
        assert_eq!(humantime(Duration::from_secs(125)), "2m5s");
    }

    #[test]
    fn only_follow_quiet_and_a_limit_imply_waiting() {
        assert!(!WaitArgs::default().implies_wait());
        assert!(WaitArgs {
            quiet: true,
            ..WaitArgs::default()
        }
        .implies_wait());
        assert!(WaitArgs {
            wait_timeout: Some(Duration::from_secs(1)),
            ..WaitArgs::default()
        }
        .implies_wait());
    }
}
