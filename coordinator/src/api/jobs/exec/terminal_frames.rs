//! The frames a caller exchanges with a terminal session in a job, one binary WebSocket message each (the
//! gRPC face carries the same content as messages of its own): what a caller sends ([`TerminalClientFrame`]:
//! input, a resize) and what it receives ([`TerminalServerFrame`]: output and, last, how the session ended).
//! The codec is public (`coordinator::api::dto`) so clients decode the server's own types. Pure: no I/O,
//! and no input makes it panic.

use protocol::pb;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The most bytes of input one frame carries.
pub const MAX_INPUT_FRAME: usize = 64 * 1024;

/// What a caller sends during a session (a binary WebSocket message each): `0x00` then the bytes typed,
/// or `0x01` then the terminal's new width and height as two big-endian `u16`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TerminalClientFrame {
    Input(Vec<u8>),
    Resize { cols: u16, rows: u16 },
}

/// What a caller receives during a session (a binary WebSocket message each): `0x10` then bytes the
/// command wrote to the terminal, or, last, `0x11` then a JSON [`TerminalEndView`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TerminalServerFrame {
    Output(Vec<u8>),
    End(TerminalEndView),
}

const TAG_INPUT: u8 = 0x00;
const TAG_RESIZE: u8 = 0x01;
const TAG_OUTPUT: u8 = 0x10;
const TAG_END: u8 = 0x11;

/// How a terminal session ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = TerminalEnd)]
pub struct TerminalEndView {
    /// The command's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// It ran past the session's `timeout_secs` and was killed.
    #[serde(default)]
    pub timed_out: bool,
    /// It sat without input or output past the idle limit and was killed.
    #[serde(default)]
    pub idle: bool,
    /// Why the session failed, when it did rather than the command ending.
    #[serde(default)]
    pub error: Option<String>,
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad terminal frame: {0}")]
pub struct FrameError(String);

impl TerminalClientFrame {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            TerminalClientFrame::Input(bytes) => {
                let mut out = Vec::with_capacity(bytes.len() + 1);
                out.push(TAG_INPUT);
                out.extend_from_slice(bytes);
                out
            }
            TerminalClientFrame::Resize { cols, rows } => {
                let mut out = vec![TAG_RESIZE];
                out.extend_from_slice(&cols.to_be_bytes());
                out.extend_from_slice(&rows.to_be_bytes());
                out
            }
        }
    }

    pub fn decode(frame: &[u8]) -> Result<TerminalClientFrame, FrameError> {
        match frame.split_first() {
            Some((&TAG_INPUT, bytes)) if bytes.len() <= MAX_INPUT_FRAME => {
                Ok(TerminalClientFrame::Input(bytes.to_vec()))
            }
            Some((&TAG_INPUT, _)) => Err(FrameError(format!(
                "input frames carry at most {MAX_INPUT_FRAME} bytes"
            ))),
            Some((&TAG_RESIZE, &[c0, c1, r0, r1])) => Ok(TerminalClientFrame::Resize {
                cols: u16::from_be_bytes([c0, c1]),
                rows: u16::from_be_bytes([r0, r1]),
            }),
            Some((&TAG_RESIZE, _)) => Err(FrameError(
                "a resize frame is 0x01 then two big-endian u16s".into(),
            )),
            Some((tag, _)) => Err(FrameError(format!("unknown frame type {tag:#04x}"))),
            None => Err(FrameError("an empty frame".into())),
        }
    }
}

impl TerminalServerFrame {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            TerminalServerFrame::Output(bytes) => {
                let mut out = Vec::with_capacity(bytes.len() + 1);
                out.push(TAG_OUTPUT);
                out.extend_from_slice(bytes);
                out
            }
            TerminalServerFrame::End(end) => {
                let mut out = vec![TAG_END];
                // Serializing plain fields cannot fail.
                out.extend(serde_json::to_vec(end).unwrap_or_default());
                out
            }
        }
    }

    pub fn decode(frame: &[u8]) -> Result<TerminalServerFrame, FrameError> {
        match frame.split_first() {
            Some((&TAG_OUTPUT, bytes)) => Ok(TerminalServerFrame::Output(bytes.to_vec())),
            Some((&TAG_END, json)) => serde_json::from_slice(json)
                .map(TerminalServerFrame::End)
                .map_err(|e| FrameError(format!("an end frame that is not its JSON: {e}"))),
            Some((tag, _)) => Err(FrameError(format!("unknown frame type {tag:#04x}"))),
            None => Err(FrameError("an empty frame".into())),
        }
    }
}

/// The caller's view of the agent's end message.
pub(crate) fn end_view(end: pb::TerminalEnd) -> TerminalEndView {
    TerminalEndView {
        exit_code: end.exit_code,
        signal: end.signal,
        timed_out: end.timed_out,
        idle: end.idle,
        error: (!end.error.is_empty()).then_some(end.error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_malformed_ones_are_refused() {
        for frame in [
            TerminalClientFrame::Input(b"ls\r".to_vec()),
            TerminalClientFrame::Input(Vec::new()),
            TerminalClientFrame::Resize {
                cols: 300,
                rows: 70,
            },
        ] {
            assert_eq!(TerminalClientFrame::decode(&frame.encode()), Ok(frame));
        }
        for frame in [
            TerminalServerFrame::Output(b"\x1b[31mred".to_vec()),
            TerminalServerFrame::End(TerminalEndView {
                exit_code: Some(3),
                ..TerminalEndView::default()
            }),
        ] {
            assert_eq!(TerminalServerFrame::decode(&frame.encode()), Ok(frame));
        }
        let too_much = [vec![TAG_INPUT], vec![0; MAX_INPUT_FRAME + 1]].concat();
        for bad in [&[][..], &[0x01, 0, 80][..], &[0x7f, 1][..], &too_much[..]] {
            assert!(TerminalClientFrame::decode(bad).is_err(), "{bad:?}");
        }
        assert!(TerminalServerFrame::decode(&[TAG_END, b'{']).is_err());
    }
}
