//! Requests that take the connection over: a WebSocket opened on the admin API (an interactive terminal
//! session), over HTTP/1.1 with the same addresses, failover, token, project header and error kinds as
//! every other request.
//!
//! The WebSocket handshake is done here with the client's own HTTP stack (so TLS, the CA and the error
//! classification are the same); the socket that comes back is then framed by `tokio-tungstenite`.

use std::sync::atomic::Ordering;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::RngCore;
use reqwest::header::{
    CONNECTION, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use reqwest::StatusCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::{answer, ApiClient, Cause, ClientError};

/// An open WebSocket to the admin API.
pub type Socket = WebSocketStream<reqwest::Upgraded>;

impl ApiClient {
    /// Opens a WebSocket on `path` (with its query) speaking `protocol`. A refusal before the upgrade
    /// (bad request, denied, not found, conflict...) is the same [`ClientError`] as for any request; an
    /// address that cannot be reached is left for the next one. Never repeated once a server answered.
    pub async fn websocket(
        &self,
        path: &str,
        protocol: &str,
        max_message: usize,
    ) -> Result<Socket, ClientError> {
        let token = self.token()?;
        let first = self.preferred.load(Ordering::Relaxed) % self.bases.len();
        let mut failures: Vec<String> = Vec::new();
        for i in 0..self.bases.len() {
            let at = (first + i) % self.bases.len();
            let base = &self.bases[at];
            let mut nonce = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut nonce);
            let mut req = self
                .http1
                .get(format!("{base}{path}"))
                .bearer_auth(token)
                .header(CONNECTION, "upgrade")
                .header(UPGRADE, "websocket")
                .header(SEC_WEBSOCKET_VERSION, "13")
                .header(SEC_WEBSOCKET_KEY, STANDARD.encode(nonce))
                .header(SEC_WEBSOCKET_PROTOCOL, protocol);
            if let Some(p) = &self.project {
                req = req.header("x-meridian-project", p);
            }
            let resp = match req.send().await {
                Ok(resp) => resp,
                Err(e) => {
                    let cause = Cause::of(&e);
                    failures.push(cause.describe(base));
                    if cause.reached_server() {
                        break;
                    }
                    continue;
                }
            };
            self.preferred.store(at, Ordering::Relaxed);
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                return Err(match answer(resp, base).await {
                    Err(e) => e,
                    Ok(_) => ClientError::Failed(format!(
                        "GET {path}: the server answered without opening a WebSocket"
                    )),
                });
            }
            let upgraded = resp.upgrade().await.map_err(|e| {
                ClientError::Unavailable(format!("{base}: opening the WebSocket: {e}"))
            })?;
            let mut config = WebSocketConfig::default();
            config.max_message_size = Some(max_message);
            config.max_frame_size = Some(max_message);
            return Ok(
                WebSocketStream::from_raw_socket(upgraded, Role::Client, Some(config)).await,
            );
        }
        Err(ClientError::Unavailable(match failures.as_slice() {
            [one] => one.clone(),
            many => format!("no admin API address answered:\n  {}", many.join("\n  ")),
        }))
    }
}
