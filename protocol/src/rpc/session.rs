//! Session calls: a method whose stream stays open after the call is accepted, carrying framed
//! messages both ways (an interactive terminal inside a job is one).
//!
//! On the wire a session starts like any call — one `RpcRequest` frame from the caller, one `RpcResponse`
//! frame back — except that the caller does not finish its send side after the request. A response that
//! carries an error ends the call as usual. A response that carries a body (empty) accepts the session:
//! from then on each side writes length-prefixed frames of at most [`SESSION_MAX_FRAME`] bytes, whose
//! payload only the method interprets, and finishes its send side when it has nothing more to say. A
//! frame that breaks the rules ends the session for both sides, never the connection.
//!
//! The RPC layer authenticates and authorizes the caller before the service sees the request (the same
//! table as every call), and bounds only the opening by the call's deadline: a session lasts as long as
//! its service lets it, which must bound it (an idle limit, a longest run) and end it when
//! [`CallContext::stopping`](super::CallContext::stopping) is cancelled.

use bytes::Bytes;
use futures::future::BoxFuture;

use super::RpcError;
use crate::frame::{self, FrameError};

/// The largest frame either side of a session may send.
pub const SESSION_MAX_FRAME: usize = 1024 * 1024;

/// What a service does with an accepted session: given the two halves of the stream, it runs until it
/// is done with them.
pub type SessionRunner =
    Box<dyn FnOnce(SessionSender, SessionReceiver) -> BoxFuture<'static, ()> + Send>;

/// The sending half of an accepted session.
#[derive(Debug)]
pub struct SessionSender {
    send: quinn::SendStream,
}

/// The receiving half of an accepted session.
#[derive(Debug)]
pub struct SessionReceiver {
    recv: quinn::RecvStream,
}

/// The two halves of a freshly accepted session.
pub(crate) fn halves(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> (SessionSender, SessionReceiver) {
    (SessionSender { send }, SessionReceiver { recv })
}

impl SessionSender {
    /// Sends one frame. Waits while the peer's flow-control window is full, which is how a reader that
    /// falls behind slows the writer down.
    pub async fn send(&mut self, payload: &[u8]) -> Result<(), RpcError> {
        if payload.len() > SESSION_MAX_FRAME {
            return Err(RpcError::Decode(format!(
                "session frame of {} bytes exceeds the maximum of {SESSION_MAX_FRAME} bytes",
                payload.len()
            )));
        }
        frame::write_frame(&mut self.send, payload)
            .await
            .map_err(stream_error)
    }

    /// Says that nothing more will be sent; the peer's [`SessionReceiver::recv`] then answers `None`.
    pub fn finish(&mut self) {
        // Already finished or reset: the peer knows there is no more either way.
        let _ = self.send.finish();
    }

    /// Waits until the peer has received everything sent (or stopped reading), at most `limit`.
    pub async fn flushed(&mut self, limit: std::time::Duration) {
        let _ = tokio::time::timeout(limit, self.send.stopped()).await;
    }
}

impl SessionReceiver {
    /// The next frame, or `None` once the peer finished its side. Not cancel-safe: a frame half read
    /// when the future is dropped is lost, so drive it to completion (in a task of its own when another
    /// event must be waited for at the same time).
    pub async fn recv(&mut self) -> Result<Option<Bytes>, RpcError> {
        match frame::read_frame(&mut self.recv, SESSION_MAX_FRAME).await {
            Ok(frame) => Ok(frame.map(Bytes::from)),
            Err(e) => {
                // The peer broke the framing rules: stop reading this stream (never the connection).
                let _ = self.recv.stop(super::STREAM_BAD_FRAME);
                Err(stream_error(e))
            }
        }
    }
}

fn stream_error(e: FrameError) -> RpcError {
    match e {
        FrameError::Io(io) => RpcError::Transport(format!("session stream: {io}")),
        other => RpcError::Decode(format!("session frame: {other}")),
    }
}
