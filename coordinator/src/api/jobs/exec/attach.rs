//! Interactive terminal sessions inside a running job (`meridian job exec -it`), shared by REST and gRPC:
//! the request and its checks, the frames a caller exchanges with the session, and the relay between the
//! caller and the job's agent.
//!
//! A session is opened like a command is run (`mod.rs`): `run-jobs` in the job's project, another
//! project's job 404, a job holding secrets entered only by its own principal or a `manage-secrets`
//! holder, only a running replica, and a `job.attach` audit record with the command line before the
//! agent is asked. The agent is reached over the mesh with the session call `AgentAttachJob`, which runs
//! the command on a new pseudo-terminal in the job's sandbox; it bounds the session (its longest run, an
//! idle limit) and reports how it ended.
//!
//! The relay copies frames as they come, never buffering more than a few frames either way: QUIC's flow
//! control slows an agent whose caller reads slowly, and a caller that types faster than the command reads
//! waits for the agent. A caller that leaves ends the session (the agent kills the command). A principal
//! holds at most [`MAX_SESSIONS_PER_PRINCIPAL`] sessions through one coordinator at once (429 beyond), and
//! the end of every session is audited too (`job.attach.end`: how it ended and how long it lasted).
//!
//! On REST the session is a WebSocket (`GET /v1/jobs/{id}:attach?command=sh&command=-c&...`, subprotocol
//! [`TERMINAL_PROTOCOL`]) whose binary messages are the frames of `terminal_frames.rs`; on gRPC it is
//! `JobExecService.AttachJob`, a stream each way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use protocol::pb;
use protocol::rpc::{Method, SessionReceiver, SessionSender};
use tokio::sync::mpsc;

use crate::api::auth::RequestScope;
use crate::api::error::{ErrorKind, ServiceError};
use crate::api::service::AdminService;
use crate::state::{AuditOp, AuditOutcome, Op};

use super::terminal_frames::{end_view, TerminalClientFrame, TerminalEndView, TerminalServerFrame};
use super::{agent_error, command_line, invalid, replica_of, validate_command};

/// The WebSocket subprotocol of a terminal session.
pub const TERMINAL_PROTOCOL: &str = "meridian.terminal.v1";
/// A session's default and longest run.
pub(crate) const DEFAULT_ATTACH_TIMEOUT_SECS: u32 = 8 * 3600;
pub(crate) const MAX_ATTACH_TIMEOUT_SECS: u32 = 86_400;
/// The largest terminal a caller may describe.
const MAX_TERMINAL_SIDE: u64 = 1000;
/// How long the agent has to start the session.
const AGENT_OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the relay waits for the agent's last word once the caller left.
const AGENT_END_WAIT: Duration = Duration::from_secs(10);
/// Frames in flight between the relay's halves.
const RELAY_DEPTH: usize = 16;
/// Sessions one principal may hold open through one coordinator at once.
pub(crate) const MAX_SESSIONS_PER_PRINCIPAL: usize = 16;

/// The sessions open through this coordinator, counted per principal.
#[derive(Debug, Default)]
pub(crate) struct OpenSessions {
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

/// One principal's claim on a session; released when dropped.
#[derive(Debug)]
pub(crate) struct SessionClaim {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    principal: String,
}

impl OpenSessions {
    /// A claim for one more session of `principal`, unless it already holds as many as it may.
    pub(crate) fn claim(&self, principal: &str) -> Option<SessionClaim> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let held = counts.entry(principal.to_owned()).or_default();
        if *held >= MAX_SESSIONS_PER_PRINCIPAL {
            return None;
        }
        *held += 1;
        Some(SessionClaim {
            counts: self.counts.clone(),
            principal: principal.to_owned(),
        })
    }
}

impl Drop for SessionClaim {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = counts.get_mut(&self.principal) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.remove(&self.principal);
            }
        }
    }
}

/// `GET /v1/jobs/{id}:attach`'s query: `command` once per word, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachJobRequest {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Which replica of a gang job (default 0).
    pub replica: Option<u64>,
    /// The caller's terminal size (default 80x24).
    pub cols: Option<u64>,
    pub rows: Option<u64>,
    /// Seconds before the session is ended (default 8 hours, at most 24).
    pub timeout_secs: Option<u64>,
    /// The caller's terminal type, given to the command as `TERM` (default `xterm`).
    pub term: Option<String>,
}

/// The query parameters of `GET /v1/jobs/{id}:attach`, for the OpenAPI document.
pub(crate) const ATTACH_QUERY: &[(&str, &str)] = &[
    (
        "command",
        "The program and its arguments, one `command` parameter per word, in order.",
    ),
    ("replica", "Replica of a gang job, 0-based (default 0)."),
    (
        "cols",
        "The terminal's width in columns, 1-1000 (default 80).",
    ),
    (
        "rows",
        "The terminal's height in rows, 1-1000 (default 24).",
    ),
    (
        "timeout_secs",
        "Seconds before the session is ended, 1-86400 (default 28800).",
    ),
    (
        "term",
        "The terminal type given to the command as TERM (default xterm).",
    ),
];

impl AttachJobRequest {
    /// Reads the query string of `GET /v1/jobs/{id}:attach`; a parameter it does not know is refused.
    pub(crate) fn from_query(query: &str) -> Result<AttachJobRequest, ServiceError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|e| invalid("query", format!("not a query string: {e}")))?;
        let mut req = AttachJobRequest::default();
        let number = |field: &str, value: &str| {
            value
                .parse::<u64>()
                .map_err(|_| invalid(field, "must be a whole number"))
        };
        for (key, value) in pairs {
            match key.as_str() {
                "command" => req.command.push(value),
                "replica" => req.replica = Some(number("replica", &value)?),
                "cols" => req.cols = Some(number("cols", &value)?),
                "rows" => req.rows = Some(number("rows", &value)?),
                "timeout_secs" => req.timeout_secs = Some(number("timeout_secs", &value)?),
                "term" => req.term = Some(value),
                other => {
                    return Err(invalid(
                        other,
                        "unknown parameter (command, replica, cols, rows, timeout_secs, term)",
                    ))
                }
            }
        }
        Ok(req)
    }

    /// The query string that [`from_query`](Self::from_query) reads back.
    pub fn to_query(&self) -> String {
        let mut pairs: Vec<(&str, String)> = self
            .command
            .iter()
            .map(|w| ("command", w.clone()))
            .collect();
        let numbers = [
            ("replica", self.replica),
            ("cols", self.cols),
            ("rows", self.rows),
            ("timeout_secs", self.timeout_secs),
        ];
        pairs.extend(
            numbers
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v.to_string()))),
        );
        if let Some(term) = &self.term {
            pairs.push(("term", term.clone()));
        }
        // Pairs of strings always encode; the empty string would only stand for an empty request.
        serde_urlencoded::to_string(&pairs).unwrap_or_default()
    }
}

/// A terminal size, each side 1-1000.
fn side(field: &str, value: Option<u64>, default: u32) -> Result<u32, ServiceError> {
    match value {
        None => Ok(default),
        Some(n) if (1..=MAX_TERMINAL_SIDE).contains(&n) => Ok(n as u32),
        Some(_) => Err(invalid(field, format!("must be 1-{MAX_TERMINAL_SIDE}"))),
    }
}

/// A terminal type as `TERM` may hold it: 1-64 of `[A-Za-z0-9._+-]`.
fn checked_term(term: Option<&str>) -> Result<String, ServiceError> {
    match term {
        None | Some("") => Ok("xterm".to_owned()),
        Some(t)
            if t.len() <= 64
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b)) =>
        {
            Ok(t.to_owned())
        }
        Some(_) => Err(invalid(
            "term",
            "1-64 letters, digits, `.`, `_`, `+` or `-`",
        )),
    }
}

// ---- opening and relaying ----------------------------------------------------------------------------------

/// An open session with the job's agent, ready to be relayed.
pub(crate) struct TerminalRelay {
    to_agent: SessionSender,
    from_agent: SessionReceiver,
    node: String,
    /// What the end of the session is audited with.
    service: AdminService,
    scope: RequestScope,
    job: String,
    opened: Instant,
    _claim: SessionClaim,
}

impl AdminService {
    /// Opens a terminal session in job `id` after every check of entering a job, audited before the
    /// agent is asked.
    pub(crate) async fn attach_job(
        &self,
        scope: &RequestScope,
        id: &str,
        req: AttachJobRequest,
    ) -> Result<TerminalRelay, ServiceError> {
        let replica = replica_of(req.replica)?;
        validate_command(&req.command)?;
        let cols = side("cols", req.cols, 80)?;
        let rows = side("rows", req.rows, 24)?;
        let term = checked_term(req.term.as_deref())?;
        let timeout_secs = match req.timeout_secs {
            None => DEFAULT_ATTACH_TIMEOUT_SECS,
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_ATTACH_TIMEOUT_SECS).contains(n))
                .ok_or_else(|| {
                    invalid(
                        "timeout_secs",
                        format!("must be 1-{MAX_ATTACH_TIMEOUT_SECS}"),
                    )
                })?,
        };
        let target = self.running_target(scope, id, replica).await?;
        let claim = self
            .terminals()
            .claim(&scope.caller.principal_id)
            .ok_or_else(|| {
                ServiceError::new(
                    ErrorKind::QuotaExceeded,
                    format!(
                        "you already hold {MAX_SESSIONS_PER_PRINCIPAL} terminal sessions through this \
                         coordinator; end one first"
                    ),
                )
            })?;
        self.audit_entry(
            scope,
            id,
            &target,
            format!("terminal: {}", command_line(&req.command)),
        )
        .await?;
        let request = pb::AttachJobRequest {
            job_id: id.to_owned(),
            attempt: target.attempt,
            replica: target.replica,
            command: req.command,
            size: Some(pb::TerminalSize { cols, rows }),
            timeout_secs,
            term,
        };
        let (to_agent, from_agent) = self
            .handle()
            .open_agent_session(
                &target.rpc_addr,
                Method::AgentAttachJob,
                Bytes::from(request.encode_to_vec()),
                AGENT_OPEN_TIMEOUT,
            )
            .await
            .map_err(|e| agent_error(e, &target.node))?;
        Ok(TerminalRelay {
            to_agent,
            from_agent,
            node: target.node,
            service: self.clone(),
            scope: scope.clone(),
            job: id.to_owned(),
            opened: Instant::now(),
            _claim: claim,
        })
    }
}

/// The two ends a transport (WebSocket, gRPC) gives the relay: the caller's frames in, frames for the
/// caller out. The caller's end of `input` closing means it left.
pub(crate) struct CallerEnds {
    pub(crate) input: mpsc::Receiver<TerminalClientFrame>,
    pub(crate) output: mpsc::Sender<TerminalServerFrame>,
}

/// What a transport holds of a session: the caller's frames go into `input` (dropping it means the caller
/// left), the relay's come out of `output`, and `refuse` ends the session over a frame the caller should not
/// have sent, telling it why.
pub(crate) struct CallerSide {
    pub(crate) input: mpsc::Sender<TerminalClientFrame>,
    pub(crate) output: mpsc::Receiver<TerminalServerFrame>,
    pub(crate) refuse: Refusal,
}

/// Ends a session over what its caller sent: the caller's last frame says why (the relay's own end, which
/// follows once the command is killed, goes nowhere: a transport stops at the first end).
pub(crate) struct Refusal(mpsc::Sender<TerminalServerFrame>);

impl Refusal {
    pub(crate) async fn because(self, why: impl Into<String>) {
        let end = TerminalEndView {
            error: Some(why.into()),
            ..TerminalEndView::default()
        };
        let _ = self.0.send(TerminalServerFrame::End(end)).await;
    }
}

/// The channels between a transport and the relay: the transport's [`CallerSide`], the relay's
/// [`CallerEnds`].
pub(crate) fn caller_channels() -> (CallerSide, CallerEnds) {
    let (input_tx, input) = mpsc::channel(RELAY_DEPTH);
    let (output, output_rx) = mpsc::channel(RELAY_DEPTH);
    let side = CallerSide {
        input: input_tx,
        output: output_rx,
        refuse: Refusal(output.clone()),
    };
    (side, CallerEnds { input, output })
}

impl TerminalRelay {
    /// Copies frames between the caller and the agent until the session ends; the caller's last frame
    /// is always an end (the agent's, or one saying the session was lost). Then audits how it ended.
    pub(crate) async fn run(self, caller: CallerEnds) {
        let TerminalRelay {
            mut to_agent,
            mut from_agent,
            node,
            service,
            scope,
            job,
            opened,
            _claim,
        } = self;
        let CallerEnds { mut input, output } = caller;
        let (end, caller_left) = {
            let downstream = async {
                loop {
                    let frame = match from_agent.recv().await {
                        Ok(Some(frame)) => frame,
                        Ok(None) | Err(_) => break,
                    };
                    let Ok(message) = pb::TerminalOutput::decode(frame) else {
                        tracing::warn!(node, "an undecodable terminal frame from an agent");
                        break;
                    };
                    let frame = match message.output {
                        Some(pb::terminal_output::Output::Data(bytes)) => {
                            TerminalServerFrame::Output(bytes)
                        }
                        Some(pb::terminal_output::Output::End(end)) => {
                            let end = end_view(end);
                            let _ = output.send(TerminalServerFrame::End(end.clone())).await;
                            return Some(end);
                        }
                        None => continue,
                    };
                    if output.send(frame).await.is_err() {
                        // The caller left; the upstream half tells the agent.
                        return None;
                    }
                }
                let lost = TerminalEndView {
                    error: Some(format!(
                        "the session with node {node} ended without the command's exit status"
                    )),
                    ..TerminalEndView::default()
                };
                let _ = output.send(TerminalServerFrame::End(lost.clone())).await;
                Some(lost)
            };
            let upstream = async {
                while let Some(frame) = input.recv().await {
                    let message = match frame {
                        TerminalClientFrame::Input(bytes) => pb::terminal_input::Input::Data(bytes),
                        TerminalClientFrame::Resize { cols, rows } => {
                            // The agent takes sides of 1-1000 cells.
                            let clamp = |n: u16| u32::from(n).clamp(1, MAX_TERMINAL_SIDE as u32);
                            pb::terminal_input::Input::Resize(pb::TerminalSize {
                                cols: clamp(cols),
                                rows: clamp(rows),
                            })
                        }
                    };
                    let message = pb::TerminalInput {
                        input: Some(message),
                    };
                    if to_agent.send(&message.encode_to_vec()).await.is_err() {
                        return;
                    }
                }
                // The caller left: the agent ends the command when our side finishes.
                to_agent.finish();
            };
            tokio::pin!(downstream);
            tokio::select! {
                end = &mut downstream => (end, false),
                () = upstream => {
                    // The caller left (or the agent's stream failed): wait a moment for the agent's last word.
                    let end = tokio::time::timeout(AGENT_END_WAIT, &mut downstream).await.ok().flatten();
                    (end, true)
                }
            }
        };
        // The caller's stream ends now; the audit record follows.
        drop((output, input, to_agent, from_agent));
        let detail = format!(
            "on node {node}: {} after {} s",
            how_it_ended(end.as_ref().filter(|_| !caller_left)),
            opened.elapsed().as_secs()
        );
        let op = Op::Audit(AuditOp::RecordAudit {
            action: "job.attach.end".to_owned(),
            project: Some(scope.project_id.clone()),
            target: job.chars().take(256).collect(),
            outcome: AuditOutcome::Success,
            detail: detail.chars().take(1024).collect(),
        });
        if let Err(e) = service.write(&scope, op).await {
            tracing::warn!(job, error = %e.message, "the end of a terminal session could not be audited");
        }
    }
}

/// How a session ended, as its audit record says it (`None`: the caller left, and the command was ended
/// for it).
fn how_it_ended(end: Option<&TerminalEndView>) -> String {
    let Some(end) = end else {
        return "the caller left (its command was ended)".to_owned();
    };
    if let Some(error) = &end.error {
        return format!("failed: {error}");
    }
    let status = match (end.exit_code, end.signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "no exit status".to_owned(),
    };
    match (end.timed_out, end.idle) {
        (true, _) => format!("{status} (ran past its timeout)"),
        (_, true) => format!("{status} (idle too long)"),
        _ => status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::ErrorKind;

    #[test]
    fn the_query_round_trips_and_keeps_the_words_in_order() {
        let req = AttachJobRequest {
            command: vec!["sh".into(), "-c".into(), "echo a&b=c; ls".into()],
            replica: Some(2),
            cols: Some(132),
            rows: Some(43),
            timeout_secs: None,
            term: Some("xterm-256color".into()),
        };
        let query = req.to_query();
        assert!(
            query.starts_with("command=sh&command=-c&command="),
            "{query}"
        );
        assert_eq!(AttachJobRequest::from_query(&query).ok(), Some(req));
        let e = AttachJobRequest::from_query("command=sh&rows=ten").expect_err("refused");
        assert!(e.message.starts_with("rows:"), "{}", e.message);
        let e = AttachJobRequest::from_query("command=sh&shell=bash").expect_err("refused");
        assert!(e.message.starts_with("shell:"), "{}", e.message);
    }

    #[test]
    fn sizes_and_terminal_types_are_bounded() {
        assert_eq!(side("cols", None, 80).ok(), Some(80));
        assert_eq!(side("cols", Some(1000), 80).ok(), Some(1000));
        for bad in [0, 1001, u64::MAX] {
            assert_eq!(
                side("cols", Some(bad), 80).map_err(|e| e.kind).err(),
                Some(ErrorKind::InvalidArgument)
            );
        }
        assert_eq!(checked_term(None).ok().as_deref(), Some("xterm"));
        assert_eq!(
            checked_term(Some("screen.xterm-256color")).ok().as_deref(),
            Some("screen.xterm-256color")
        );
        for bad in ["x\nPATH=/tmp", "a b", &"x".repeat(65)] {
            assert!(checked_term(Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_principal_holds_a_bounded_number_of_sessions_and_gets_them_back() {
        let open = OpenSessions::default();
        let mut claims: Vec<SessionClaim> = (0..MAX_SESSIONS_PER_PRINCIPAL)
            .map(|_| open.claim("alice").expect("within the cap"))
            .collect();
        assert!(open.claim("alice").is_none());
        assert!(open.claim("bob").is_some(), "the cap is per principal");
        claims.pop();
        assert!(open.claim("alice").is_some());
        drop(claims);
        let counts = open.counts.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(!counts.contains_key("alice"), "{counts:?}");
    }

    #[test]
    fn the_end_of_a_session_reads_plainly() {
        assert_eq!(
            how_it_ended(None),
            "the caller left (its command was ended)"
        );
        let end = |exit_code, signal, idle| TerminalEndView {
            exit_code,
            signal,
            idle,
            ..TerminalEndView::default()
        };
        assert_eq!(
            how_it_ended(Some(&end(Some(0), None, false))),
            "exit code 0"
        );
        assert_eq!(
            how_it_ended(Some(&end(None, Some(9), true))),
            "killed by signal 9 (idle too long)"
        );
    }
}
