//! The agent's side of `AgentAttachJob` (`meridian job exec -it`): an interactive terminal inside a
//! running attempt, streamed over a session call of the mesh RPC.
//!
//! [`ExecService`](super::ExecService) checks the request ([`attach_input`]), takes one of its
//! command permits for the session's whole life, finds the attempt exactly as for `AgentExecInJob`, and
//! opens the terminal (`exec::open_terminal`). [`run_session`] then pumps: `TerminalInput` frames from
//! the coordinator are typed into the terminal or resize it (a frame that does not decode, or a size
//! out of bounds, ends the session with `TerminalEnd.error`); what the command writes goes back as
//! `TerminalOutput.data` frames of at most [`READ_CHUNK`] bytes; when the terminal closes (or the
//! command ended and the terminal stayed quiet for [`DRAIN_QUIET`]) the last frame is
//! `TerminalOutput.end` with the exit code or signal. The session is killed when the coordinator
//! finishes its side or its stream fails, after [`SESSION_IDLE_LIMIT`] without input or output
//! (`idle`), at the request's timeout (the entry's own alarm, `timed_out`), and when the agent stops
//! (`error`).
//!
//! Logs when a session starts and ends (the attempt and the program's name, at most 128 characters),
//! never what is typed or shown.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prost::Message;
use protocol::pb;
use protocol::rpc::{RpcStatus, SessionReceiver, SessionSender};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::exec::{valid_term, JobTerminal, TerminalSize, DEFAULT_TERM};

/// A session with neither input nor output this long is killed.
pub const SESSION_IDLE_LIMIT: Duration = Duration::from_secs(30 * 60);
/// The longest a session may last (`timeout_secs`).
pub const MAX_SESSION_SECS: u32 = 86_400;
/// The most columns and rows of a terminal.
pub const MAX_TERMINAL_CELLS: u32 = 1000;
/// The most bytes of output one frame carries.
pub const READ_CHUNK: usize = 32 * 1024;
/// Once the command ended, how long a terminal that processes it left still hold may stay quiet before
/// the session ends anyway.
pub const DRAIN_QUIET: Duration = Duration::from_millis(500);
/// How long the end of a session waits for the coordinator to take its last frames.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// A checked `AttachJobRequest`.
#[derive(Debug, Clone)]
pub(super) struct AttachInput {
    pub command: Vec<String>,
    pub size: TerminalSize,
    pub term: String,
    pub timeout: Duration,
}

/// The request's terminal and bounds, checked (its command by `check_command`).
pub(super) fn attach_input(request: &mut pb::AttachJobRequest) -> Result<AttachInput, RpcStatus> {
    let command = std::mem::take(&mut request.command);
    super::exec_service::check_command(&command)?;
    let size = terminal_size(request.size.as_ref())?;
    if request.timeout_secs == 0 || request.timeout_secs > MAX_SESSION_SECS {
        return Err(RpcStatus::invalid_argument(format!(
            "timeout_secs must be 1-{MAX_SESSION_SECS}"
        )));
    }
    let term = match request.term.as_str() {
        "" => DEFAULT_TERM.to_owned(),
        term if valid_term(term) => term.to_owned(),
        _ => {
            return Err(RpcStatus::invalid_argument(
                "term must be 1-64 characters of A-Z a-z 0-9 . _ + -",
            ))
        }
    };
    Ok(AttachInput {
        command,
        size,
        term,
        timeout: Duration::from_secs(u64::from(request.timeout_secs)),
    })
}

/// A terminal size from the wire: 1–[`MAX_TERMINAL_CELLS`] each way, 0 (or none) meaning 80 columns or
/// 24 rows.
fn terminal_size(size: Option<&pb::TerminalSize>) -> Result<TerminalSize, RpcStatus> {
    let (cols, rows) = size.map_or((0, 0), |s| (s.cols, s.rows));
    if cols > MAX_TERMINAL_CELLS || rows > MAX_TERMINAL_CELLS {
        return Err(RpcStatus::invalid_argument(format!(
            "a terminal has at most {MAX_TERMINAL_CELLS} columns and rows"
        )));
    }
    let cell = |n: u32, default: u16| match n {
        0 => default,
        // At most MAX_TERMINAL_CELLS, checked above.
        n => u16::try_from(n).unwrap_or(default),
    };
    Ok(TerminalSize {
        cols: cell(cols, 80),
        rows: cell(rows, 24),
    })
}

/// Why the coordinator's side stopped feeding the terminal.
#[derive(Debug)]
enum InputEnd {
    /// It finished its side, or its stream failed.
    Gone,
    /// It sent a frame that is not a valid `TerminalInput`.
    Bad(String),
}

/// When the last input or output passed.
type Activity = Arc<Mutex<Instant>>;

fn touch(activity: &Activity) {
    *activity.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
}

/// Runs one accepted session to its end and says how it ended (as sent, when the coordinator still
/// listens). Kills the terminal's command on every way out but its own end.
pub(super) async fn run_session(
    terminal: JobTerminal,
    mut tx: SessionSender,
    rx: SessionReceiver,
    stopping: CancellationToken,
    idle_limit: Duration,
) -> pb::TerminalEnd {
    let terminal = Arc::new(terminal);
    let activity: Activity = Arc::new(Mutex::new(Instant::now()));
    let (ended_tx, mut input_ended) = mpsc::channel(1);
    // `recv` is not cancel-safe: it runs to completion in a task of its own.
    let feeding = tokio::spawn(feed(terminal.clone(), rx, activity.clone(), ended_tx));
    let mut end = pb::TerminalEnd::default();
    let mut caller_gone = false;
    let mut buf = vec![0u8; READ_CHUNK];
    let wait = terminal.wait();
    tokio::pin!(wait);
    let mut exit = None;
    // Set once the command ended: when to stop waiting for the terminal to close.
    let mut drain_until: Option<Instant> = None;
    loop {
        let idle_at = *activity.lock().unwrap_or_else(PoisonError::into_inner) + idle_limit;
        tokio::select! {
            _ = stopping.cancelled() => {
                terminal.kill();
                end.error = "the agent is shutting down".into();
                break;
            }
            why = input_ended.recv() => {
                terminal.kill();
                match why {
                    Some(InputEnd::Bad(message)) => end.error = message,
                    Some(InputEnd::Gone) | None => caller_gone = true,
                }
                break;
            }
            read = terminal.read(&mut buf) => match read {
                Ok(n) if n > 0 => {
                    touch(&activity);
                    if drain_until.is_some() {
                        drain_until = Some(Instant::now() + DRAIN_QUIET);
                    }
                    let frame = pb::TerminalOutput {
                        output: Some(pb::terminal_output::Output::Data(buf[..n].to_vec())),
                    };
                    if !send(&mut tx, &frame, idle_limit).await {
                        terminal.kill();
                        caller_gone = true;
                        break;
                    }
                }
                // The terminal closed (or can no longer be read): the command's side is done.
                _ => break,
            },
            result = &mut wait, if exit.is_none() => {
                exit = Some(result);
                drain_until = Some(Instant::now() + DRAIN_QUIET);
            }
            _ = tokio::time::sleep_until(drain_until.unwrap_or(idle_at)), if drain_until.is_some() => {
                break;
            }
            _ = tokio::time::sleep_until(idle_at) => {
                let last = *activity.lock().unwrap_or_else(PoisonError::into_inner);
                if last + idle_limit <= Instant::now() {
                    terminal.kill();
                    end.idle = true;
                    break;
                }
            }
        }
    }
    feeding.abort();
    let exit = match exit {
        Some(exit) => exit,
        None => (&mut wait).await,
    };
    match exit {
        Ok(exit) => {
            end.exit_code = exit.exit_code;
            end.signal = exit.signal;
            end.timed_out = exit.timed_out;
            if let (Some(message), false) = (exit.message, caller_gone) {
                let frame = pb::TerminalOutput {
                    output: Some(pb::terminal_output::Output::Data(
                        format!("{message}\r\n").into_bytes(),
                    )),
                };
                caller_gone = !send(&mut tx, &frame, FLUSH_LIMIT).await;
            }
        }
        Err(e) if end.error.is_empty() => end.error = e.to_string(),
        Err(_) => {}
    }
    if !caller_gone {
        let frame = pb::TerminalOutput {
            output: Some(pb::terminal_output::Output::End(end.clone())),
        };
        if send(&mut tx, &frame, FLUSH_LIMIT).await {
            tx.finish();
            tx.flushed(FLUSH_LIMIT).await;
        }
    }
    end
}

/// Sends one frame, at most `limit` waiting for the coordinator to take it; `false` when it did not.
async fn send(tx: &mut SessionSender, frame: &pb::TerminalOutput, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, tx.send(&frame.encode_to_vec())).await,
        Ok(Ok(()))
    )
}

/// Types the coordinator's input into the terminal and applies its resizes until its side ends, then
/// says why on `ended`.
async fn feed(
    terminal: Arc<JobTerminal>,
    mut rx: SessionReceiver,
    activity: Activity,
    ended: mpsc::Sender<InputEnd>,
) {
    let why = loop {
        let frame = match rx.recv().await {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => break InputEnd::Gone,
        };
        let input = match pb::TerminalInput::decode(frame) {
            Ok(pb::TerminalInput { input: Some(input) }) => input,
            // Nothing set: nothing to do (a field this agent does not know yet).
            Ok(pb::TerminalInput { input: None }) => continue,
            Err(e) => break InputEnd::Bad(format!("a terminal input frame does not decode: {e}")),
        };
        touch(&activity);
        match input {
            pb::terminal_input::Input::Data(bytes) => {
                // A terminal that closed ends the session from the output side; later input is dropped.
                let _ = terminal.write_all(&bytes).await;
            }
            pb::terminal_input::Input::Resize(size) => match terminal_size(Some(&size)) {
                Ok(size) => {
                    let _ = terminal.resize(size);
                }
                Err(status) => break InputEnd::Bad(status.message),
            },
        }
    };
    let _ = ended.send(why).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> pb::AttachJobRequest {
        pb::AttachJobRequest {
            job_id: "j".into(),
            attempt: 1,
            replica: 0,
            command: vec!["sh".into()],
            size: Some(pb::TerminalSize {
                cols: 120,
                rows: 40,
            }),
            timeout_secs: 600,
            term: String::new(),
        }
    }

    #[test]
    fn attach_requests_are_checked_before_anything_runs() {
        use protocol::StatusCode::InvalidArgument;
        let code =
            |mut r: pb::AttachJobRequest| attach_input(&mut r).map(|_| ()).map_err(|s| s.code);
        let good = attach_input(&mut request()).expect("valid");
        assert_eq!(
            good.size,
            TerminalSize {
                cols: 120,
                rows: 40
            }
        );
        assert_eq!(good.term, DEFAULT_TERM);
        let unsized_ = attach_input(&mut pb::AttachJobRequest {
            size: None,
            ..request()
        })
        .expect("valid");
        assert_eq!(unsized_.size, TerminalSize { cols: 80, rows: 24 });
        assert_eq!(
            code(pb::AttachJobRequest {
                command: vec![],
                ..request()
            }),
            Err(InvalidArgument)
        );
        assert_eq!(
            code(pb::AttachJobRequest {
                command: vec!["sh".into(), "a\0b".into()],
                ..request()
            }),
            Err(InvalidArgument)
        );
        for timeout_secs in [0, MAX_SESSION_SECS + 1] {
            assert_eq!(
                code(pb::AttachJobRequest {
                    timeout_secs,
                    ..request()
                }),
                Err(InvalidArgument)
            );
        }
        assert_eq!(
            code(pb::AttachJobRequest {
                size: Some(pb::TerminalSize {
                    cols: MAX_TERMINAL_CELLS + 1,
                    rows: 10
                }),
                ..request()
            }),
            Err(InvalidArgument)
        );
        for term in ["x term", "a;b", &"x".repeat(65)] {
            assert_eq!(
                code(pb::AttachJobRequest {
                    term: term.to_owned(),
                    ..request()
                }),
                Err(InvalidArgument),
                "{term:?}"
            );
        }
        let screen = attach_input(&mut pb::AttachJobRequest {
            term: "screen-256color".into(),
            ..request()
        })
        .expect("valid");
        assert_eq!(screen.term, "screen-256color");
    }
}
