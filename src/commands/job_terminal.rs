//! `meridian job exec -it JOB -- CMD`: an interactive terminal session inside a running job. The command
//! runs on a pseudo-terminal in the job's sandbox; what it writes appears here as it comes, what is
//! typed here reaches it (with `-i`), and the job's terminal follows this one's size.
//!
//! Speaks to the admin API only (`GET /v1/jobs/{id}:attach`, a WebSocket whose frames are the server's
//! own [`TerminalClientFrame`]/[`TerminalServerFrame`]). With `-i` this terminal is put in raw mode for
//! the session — every key, Ctrl-C included, goes to the command — and restored however the session
//! ends, SIGTERM and SIGHUP to the CLI included (which end the session). The CLI exits with the command's
//! exit code (128 + the signal when one ended it).

use std::io::{Read, Write};
use std::os::fd::RawFd;

use coordinator::api::dto::{
    AttachJobRequest, TerminalClientFrame, TerminalEndView, TerminalServerFrame, MAX_INPUT_FRAME,
    TERMINAL_PROTOCOL,
};
use futures::{SinkExt, StreamExt};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{segment, ApiClient, ClientError};
use crate::output;

use super::job_exec::{command_exit, JobExecArgs};
use super::CommandError;

/// The largest message the server sends (its frames carry what the agent read, at most 1 MiB).
const MAX_SERVER_MESSAGE: usize = 2 * 1024 * 1024;
/// How much of stdin one read forwards.
const READ_CHUNK: usize = 4096;

/// Runs the session; the CLI then exits with the command's exit code.
pub async fn attach(args: JobExecArgs) -> Result<(), CommandError> {
    if args.stdin && !is_terminal(0) {
        return Err(ClientError::Usage(
            "-t needs standard input to be a terminal; to send piped input, drop -t (`job exec -i`)"
                .into(),
        )
        .into());
    }
    let size = window_size(1).or_else(|| window_size(0));
    let request = AttachJobRequest {
        command: args.command,
        replica: Some(u64::from(args.replica)),
        cols: size.map(|(c, _)| u64::from(c)),
        rows: size.map(|(_, r)| u64::from(r)),
        timeout_secs: args.timeout,
        term: std::env::var("TERM").ok().filter(|t| !t.is_empty()),
    };
    let api = ApiClient::from_args(&args.client)?;
    let path = format!(
        "/v1/jobs/{}:attach?{}",
        segment(&args.id),
        request.to_query()
    );
    let socket = api
        .websocket(&path, TERMINAL_PROTOCOL, MAX_SERVER_MESSAGE)
        .await?;
    let (mut sink, mut stream) = socket.split();

    let (typed_tx, mut typed) = mpsc::channel::<Vec<u8>>(16);
    let raw = if args.stdin {
        let raw = RawMode::enter(0)
            .map_err(|e| ClientError::Usage(format!("putting the terminal in raw mode: {e}")))?;
        // A blocking read of stdin has no place on the runtime: a thread of its own, left behind when
        // the session ends (the process exits right after).
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; READ_CHUNK];
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 || typed_tx.blocking_send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Some(raw)
    } else {
        drop(typed_tx);
        None
    };
    let watch = |kind: SignalKind| {
        signal(kind).map_err(|e| ClientError::Failed(format!("watching for signals: {e}")))
    };
    let mut resized = watch(SignalKind::window_change())?;
    // Asked to stop, or the terminal went away: end the session and give the terminal back first.
    let mut terminated = watch(SignalKind::terminate())?;
    let mut hung_up = watch(SignalKind::hangup())?;
    let mut stopped_by = None;

    let mut out = std::io::stdout();
    let ended: Result<Option<TerminalEndView>, ClientError> = loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Binary(bytes))) => match TerminalServerFrame::decode(&bytes) {
                    Ok(TerminalServerFrame::Output(data)) => {
                        if out.write_all(&data).and_then(|()| out.flush()).is_err() {
                            break Ok(None);
                        }
                    }
                    Ok(TerminalServerFrame::End(end)) => break Ok(Some(end)),
                    Err(e) => break Err(ClientError::Failed(format!("the session: {e}"))),
                },
                Some(Ok(Message::Close(_))) | None => break Ok(None),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(ClientError::Unavailable(format!("the session's connection failed: {e}"))),
            },
            Some(data) = typed.recv() => {
                // Reads are at most READ_CHUNK bytes, well within one input frame.
                debug_assert!(data.len() <= MAX_INPUT_FRAME);
                let frame = TerminalClientFrame::Input(data).encode();
                if sink.send(Message::Binary(frame.into())).await.is_err() {
                    break Ok(None);
                }
            }
            _ = terminated.recv() => {
                stopped_by = Some(libc::SIGTERM);
                break Ok(None);
            }
            _ = hung_up.recv() => {
                stopped_by = Some(libc::SIGHUP);
                break Ok(None);
            }
            _ = resized.recv() => {
                if let Some((cols, rows)) = window_size(1).or_else(|| window_size(0)) {
                    let frame = TerminalClientFrame::Resize { cols, rows }.encode();
                    if sink.send(Message::Binary(frame.into())).await.is_err() {
                        break Ok(None);
                    }
                }
            }
        }
    };
    // Give the terminal back before saying anything.
    drop(raw);
    let _ = sink.send(Message::Close(None)).await;
    if let Some(signal) = stopped_by {
        // Leaving ends the session: the command is killed in the job, which goes on.
        return Err(CommandError::JobCommandExit(128 + signal));
    }
    let Some(end) = ended? else {
        return Err(ClientError::Unavailable(
            "the connection closed before the session ended; the command may still be running in the job"
                .into(),
        )
        .into());
    };
    if let Some(error) = end.error {
        return Err(ClientError::Unavailable(error).into());
    }
    if end.timed_out {
        output::note("the session ran past its timeout (--timeout) and was ended");
    }
    if end.idle {
        output::note("the session sat idle for too long and was ended");
    }
    command_exit(end.exit_code, end.signal)
}

fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// The terminal's width and height on `fd`, when it is a terminal that knows them.
fn window_size(fd: RawFd) -> Option<(u16, u16)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a `winsize` into the struct it is given, which outlives the call.
    let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col, size.ws_row))
}

/// This terminal in raw mode (no echo, no line editing, no signals from keys) until dropped.
struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    fn enter(fd: RawFd) -> std::io::Result<RawMode> {
        // SAFETY: an all-zero termios is a valid value for tcgetattr to overwrite.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes into `saved`, which outlives the call.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the struct it is given; tcsetattr reads it.
        unsafe {
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter` on the same descriptor.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
        }
    }
}
