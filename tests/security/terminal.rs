//! Attack tests: `job exec -it`'s terminal sessions used to get more than a job's own processes have — by a
//! viewer, from another project, into a finished job or one holding someone else's secrets, with frames
//! that break the protocol, or to see other jobs — on a real `meridian dev`, speaking the WebSocket
//! protocol directly (`GET /v1/jobs/{id}:attach`).
//!
//! The admin API's checks hold with or without the sandbox; what the command may see and do (the job's
//! user, its pid namespace) needs root and skips loudly elsewhere, like `exec.rs`.

use std::time::Duration;

use coordinator::api::dto::{TerminalClientFrame, TerminalEndView, TerminalServerFrame};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::exec::{job_holding_a_secret, new_key, running_job, start};
use crate::common::dev::DevProcess;
use crate::common::{cli, is_root, wait_for};

type Socket = WebSocketStream<TcpStream>;

/// How long one step may take.
const PATIENCE: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Opens a session on job `id` running `sh`; a refusal is its HTTP status and JSON body.
async fn open(
    dev: &DevProcess,
    token: &str,
    project: Option<&str>,
    id: &str,
) -> Result<Socket, (u16, Value)> {
    let addr = dev.addr().replace("http://", "");
    let url = format!("ws://{addr}/v1/jobs/{id}:attach?command=sh&cols=90&rows=30");
    let mut request = url.into_client_request().expect("request");
    let headers = request.headers_mut();
    headers.insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    if let Some(p) = project {
        headers.insert("x-meridian-project", p.parse().expect("header"));
    }
    let tcp = TcpStream::connect(&addr).await.expect("connect");
    match tokio_tungstenite::client_async(request, tcp).await {
        Ok((socket, _)) => Ok(socket),
        Err(WsError::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("opening the session: {e}"),
    }
}

async fn type_in(socket: &mut Socket, text: &str) {
    let frame = TerminalClientFrame::Input(text.as_bytes().to_vec()).encode();
    socket
        .send(Message::Binary(frame.into()))
        .await
        .expect("send");
}

/// Reads the session until `marker` appears in its output (returning everything read) or it ends.
async fn read_until(socket: &mut Socket, marker: &str) -> (String, Option<TerminalEndView>) {
    let mut seen = String::new();
    let read = async {
        while let Some(message) = socket.next().await {
            let Ok(Message::Binary(bytes)) = message else {
                break;
            };
            match TerminalServerFrame::decode(&bytes).expect("a terminal frame") {
                TerminalServerFrame::Output(data) => {
                    seen.push_str(&String::from_utf8_lossy(&data));
                    if !marker.is_empty() && seen.contains(marker) {
                        return None;
                    }
                }
                TerminalServerFrame::End(end) => return Some(end),
            }
        }
        None
    };
    let end = tokio::time::timeout(PATIENCE, read)
        .await
        .unwrap_or_else(|_| panic!("{marker:?} never came; the session showed {seen:?}"));
    (seen, end)
}

#[test]
fn a_viewer_another_project_and_a_finished_job_get_no_terminal() {
    let (_tmp, dev) = start();
    let id = running_job(&dev, "echo ready; sleep 120");
    let viewer = new_key(&dev, "default", "viewer");
    let (status, body) = dev.request(
        "POST",
        "/v1/projects",
        Some(&dev.token),
        None,
        Some(&json!({ "name": "other" })),
    );
    assert_eq!(status, 201, "{body}");
    let stranger = new_key(&dev, "other", "editor");
    let rt = runtime();
    rt.block_on(async {
        let (status, body) = open(&dev, &viewer, None, &id).await.expect_err("refused");
        assert_eq!(status, 403, "{body}");
        let (status, hidden) = open(&dev, &stranger, Some("other"), &id)
            .await
            .expect_err("refused");
        assert_eq!(status, 404, "{hidden}");
        let (_, missing) = open(&dev, &stranger, Some("other"), "job_nosuchjob")
            .await
            .expect_err("refused");
        assert_eq!(
            hidden["error"]["message"]
                .as_str()
                .map(|m| m.replace(&id, "ID")),
            missing["error"]["message"]
                .as_str()
                .map(|m| m.replace("job_nosuchjob", "ID"))
        );
    });
    // A plain GET (no upgrade) is a clear 400, not a hang.
    let (status, body) = dev.request(
        "GET",
        &format!("/v1/jobs/{id}:attach?command=sh"),
        Some(&dev.token),
        None,
        None,
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("WebSocket")),
        "{body}"
    );

    let addr = dev.addr();
    let env = dev.env_for(&addr, &dev.token);
    let out = cli(&["job", "run", "--wait", "-o", "json", "--", "true"], &env);
    let done: Value = serde_json::from_slice(&out.stdout).expect("job");
    let done = done["id"].as_str().expect("id").to_owned();
    rt.block_on(async {
        let (status, body) = open(&dev, &dev.token, None, &done)
            .await
            .expect_err("refused");
        assert_eq!(status, 409, "{body}");
    });
    // The refusals reach the audit log (coalesced, within the denial window); no session was opened.
    let attach_records = || {
        let (_, audit) = dev.request(
            "GET",
            "/v1/audit?page_size=1000",
            Some(&dev.token),
            None,
            None,
        );
        audit["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["action"] == "job.attach")
            .cloned()
            .collect::<Vec<Value>>()
    };
    let refused = wait_for(
        "the refusals to be audited",
        Duration::from_secs(30),
        || {
            let records = attach_records();
            let denied = records.iter().filter(|r| r["outcome"] == "denied").count();
            (denied >= 2).then_some(records)
        },
    );
    assert!(
        refused.iter().all(|r| r["outcome"] != "success"),
        "{refused:?}"
    );
}

#[test]
fn frames_that_break_the_protocol_end_the_session_not_the_coordinator() {
    let (_tmp, dev) = start();
    let id = running_job(&dev, "echo ready; sleep 120");
    let rt = runtime();
    rt.block_on(async {
        // (frame, what the caller is told, when the server can still tell it)
        for (bad, told) in [
            (Message::Text("ls".into()), Some("binary frames")),
            (
                Message::Binary(vec![0x7f, 1, 2].into()),
                Some("unknown frame type"),
            ),
            (
                Message::Binary(vec![0x01, 0, 80].into()),
                Some("resize frame"),
            ),
            // Past the message size limit the WebSocket itself fails: the connection closes.
            (Message::Binary(vec![0u8; 256 * 1024].into()), None),
        ] {
            let mut socket = open(&dev, &dev.token, None, &id).await.expect("opened");
            type_in(&mut socket, "echo O$((5+5))K\r").await;
            read_until(&mut socket, "O10K").await;
            let _ = socket.send(bad.clone()).await;
            // The session ends: its end frame or the connection closing.
            let drained = tokio::time::timeout(PATIENCE, async {
                let mut end = None;
                while let Some(Ok(message)) = socket.next().await {
                    if let Message::Binary(bytes) = message {
                        if let Ok(TerminalServerFrame::End(e)) = TerminalServerFrame::decode(&bytes)
                        {
                            end = Some(e);
                        }
                    }
                }
                end
            })
            .await;
            let Ok(end) = drained else {
                panic!("the session outlived {bad:?}");
            };
            if let Some(told) = told {
                let error = end.and_then(|e| e.error).unwrap_or_default();
                assert!(error.contains(told), "{bad:?}: {error:?}");
            }
        }
    });
    // The coordinator serves on, and the job still runs.
    let (status, body) = dev.request("GET", "/v1/whoami", Some(&dev.token), None, None);
    assert_eq!(status, 200, "{body}");
    let (status, job) = dev.request(
        "GET",
        &format!("/v1/jobs/{id}"),
        Some(&dev.token),
        None,
        None,
    );
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], "running", "{job}");
}

#[test]
fn a_job_holding_secrets_gives_a_terminal_only_to_its_own_principal() {
    let (_tmp, dev) = start();
    let id = job_holding_a_secret(&dev);
    let editor = new_key(&dev, "default", "editor");
    let rt = runtime();
    rt.block_on(async {
        let (status, body) = open(&dev, &editor, None, &id).await.expect_err("refused");
        assert_eq!(status, 403, "{body}");
        assert!(!body.to_string().contains("hunter2"));
        let mut socket = open(&dev, &dev.token, None, &id)
            .await
            .expect("its principal enters");
        type_in(&mut socket, "exit 4\r").await;
        let (_, end) = read_until(&mut socket, "").await;
        assert_eq!(end.and_then(|e| e.exit_code), Some(4));
    });
}

#[test]
fn a_terminal_runs_as_the_jobs_user_and_sees_only_its_own_job() {
    if !is_root() {
        eprintln!(
            "SKIPPED: the job sandbox needs root; the terminal's sandbox test runs only as root"
        );
        return;
    }
    let (_tmp, dev) = start();
    let victim = running_job(&dev, "echo ready; exec sleep 61");
    let id = running_job(&dev, "echo uid=$(id -u); echo ready; sleep 120");
    let addr = dev.addr();
    let env = dev.env_for(&addr, &dev.token);
    let job_uid = String::from_utf8_lossy(&cli(&["job", "logs", &id], &env).stdout)
        .lines()
        .find_map(|l| l.strip_prefix("uid=").map(str::to_owned))
        .expect("uid");
    assert_ne!(job_uid, "0");
    let rt = runtime();
    let out = rt.block_on(async {
        let mut socket = open(&dev, &dev.token, None, &id).await.expect("opened");
        type_in(
            &mut socket,
            "echo U=$(id -u)=; grep CapEff /proc/self/status; cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '; \
             kill -9 -1; echo D$((1+1))NE\r",
        )
        .await;
        let (out, _) = read_until(&mut socket, "D2NE").await;
        type_in(&mut socket, "exit\r").await;
        read_until(&mut socket, "").await;
        out
    });
    assert!(out.contains(&format!("U={job_uid}=")), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(
        !out.contains("sleep 61"),
        "another job's process is visible: {out}"
    );
    let status = cli(&["job", "status", &victim, "-o", "json"], &env);
    let status: Value = serde_json::from_slice(&status.stdout).expect("status");
    assert_eq!(status["state"], "running", "{status}");
}
