//! What the benchmark needs from a replicated store under test, and the waits built on it.
//!
//! [`SystemUnderTest`] is implemented once for the Meridian coordinator group and once for etcd, so the load and
//! failover code is literally the same for both. This module never starts processes and never decides what
//! to measure; it only asks the members questions and waits, always with a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

/// Why one request to a member did not succeed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    /// No answer: refused, reset, timed out.
    #[error("transport: {0}")]
    Transport(String),
    /// An answer that is not a success.
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    /// A success whose body is not what the API documents.
    #[error("unexpected answer: {0}")]
    Answer(String),
}

impl RequestError {
    pub(crate) fn transport(e: reqwest::Error) -> Self {
        // The chain carries the useful part ("connection refused", "operation timed out").
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        RequestError::Transport(text)
    }

    /// Reads an answer: its body on success, [`RequestError::Status`] otherwise.
    pub(crate) async fn check(resp: reqwest::Response) -> Result<bytes::Bytes, RequestError> {
        let status = resp.status();
        let body = resp.bytes().await.map_err(RequestError::transport)?;
        if status.is_success() {
            Ok(body)
        } else {
            let mut text = String::from_utf8_lossy(&body).into_owned();
            text.truncate(300);
            Err(RequestError::Status {
                status: status.as_u16(),
                body: text,
            })
        }
    }
}

/// A three-member replicated store the harness can load, query and crash.
///
/// Members are numbered `0..members()`; keys are harness-generated names matching `[a-z0-9][a-z0-9-]{0,62}`.
pub(crate) trait SystemUnderTest: Send + Sync + 'static {
    /// The name used in reports.
    fn name(&self) -> &'static str;

    /// How many members the group has.
    fn members(&self) -> usize;

    /// One replicated, durable write of `key` sent to `member`; `Ok` means the system acknowledged it.
    fn write(
        &self,
        http: &reqwest::Client,
        member: usize,
        key: &str,
    ) -> impl Future<Output = Result<(), RequestError>> + Send;

    /// The port of `member`'s gRPC API on 127.0.0.1.
    fn grpc_port(&self, member: usize) -> u16;

    /// [`write`](Self::write) through the system's native gRPC API, over `channel` (to one member).
    fn write_grpc(
        &self,
        channel: &tonic::transport::Channel,
        key: &str,
    ) -> impl Future<Output = Result<(), RequestError>> + Send;

    /// The leader as `member` sees it, if it knows one.
    fn leader_seen_by(
        &self,
        http: &reqwest::Client,
        member: usize,
    ) -> impl Future<Output = Result<Option<usize>, RequestError>> + Send;

    /// The Raft index `member` has applied.
    fn applied_index(
        &self,
        http: &reqwest::Client,
        member: usize,
    ) -> impl Future<Output = Result<u64, RequestError>> + Send;

    /// SIGKILLs `member`; returns the instant right after the signal was delivered.
    fn kill(&self, member: usize) -> impl Future<Output = anyhow::Result<Instant>> + Send;

    /// Starts `member` again on its existing data.
    fn restart(&self, member: usize) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// The keys among `keys` that a linearizable read through `reader` does not find.
    fn unreadable(
        &self,
        http: &reqwest::Client,
        reader: usize,
        keys: &[String],
    ) -> impl Future<Output = anyhow::Result<Vec<String>>> + Send;
}

/// How often the waits below ask again.
const POLL: Duration = Duration::from_millis(50);

/// Waits until a member in `alive` that the others agree on reports itself as leader.
pub(crate) async fn wait_for_leader<S: SystemUnderTest>(
    sut: &S,
    http: &reqwest::Client,
    alive: &[usize],
    timeout: Duration,
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no member answered");
    loop {
        for &m in alive {
            match sut.leader_seen_by(http, m).await {
                Ok(Some(leader)) if alive.contains(&leader) => {
                    // Trust it only when the leader itself agrees (a follower may lag behind an election).
                    match sut.leader_seen_by(http, leader).await {
                        Ok(Some(l)) if l == leader => return Ok(leader),
                        Ok(other) => last = format!("member {leader} reports leader {other:?}"),
                        Err(e) => last = format!("member {leader}: {e}"),
                    }
                }
                Ok(other) => last = format!("member {m} reports leader {other:?}"),
                Err(e) => last = format!("member {m}: {e}"),
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "{}: no leader among members {alive:?} within {timeout:?} ({last})",
                sut.name()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until one write through each of `members` is acknowledged.
pub(crate) async fn wait_writable<S: SystemUnderTest>(
    sut: &S,
    http: &reqwest::Client,
    members: &[usize],
    key_prefix: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut attempt = 0u64;
    for &m in members {
        loop {
            attempt += 1;
            match sut.write(http, m, &format!("{key_prefix}-{attempt}")).await {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(anyhow!(
                        "{}: member {m} accepts no write within {timeout:?}: {e}",
                        sut.name()
                    ))
                }
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }
    Ok(())
}

/// Waits until `member` has applied at least `index`.
pub(crate) async fn wait_applied<S: SystemUnderTest>(
    sut: &S,
    http: &reqwest::Client,
    member: usize,
    index: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = sut.applied_index(http, member).await;
        if matches!(seen, Ok(i) if i >= index) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{}: member {member} has not applied index {index} within {timeout:?} (last: {seen:?})", sut.name());
        }
        tokio::time::sleep(POLL).await;
    }
}
