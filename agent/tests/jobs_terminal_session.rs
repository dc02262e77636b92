//! `AgentAttachJob` end to end: a coordinator opens a terminal session in a real running attempt over
//! real QUIC with mutual TLS, types into it and reads it to its end with the exit code; a bad request
//! is INVALID_ARGUMENT and an attempt the node does not know NOT_FOUND; a session with no traffic is
//! ended as idle; one running when the agent stops ends with an error saying so; a node holds at most
//! its bound of sessions (RESOURCE_EXHAUSTED beyond) and frees a place when one ends.

mod exec_common;
mod jobs_common;

use std::sync::Arc;
use std::time::Duration;

use agent::exec::RunningJob;
use agent::jobs::{AttemptPhase, AttemptRecord, ExecService, JobStore};
use bytes::Bytes;
use exec_common::{rlimit_launcher, started, DEADLINE};
use jobs_common::{agent_identity, assignment_for, tls_for, CALL, TRUST_DOMAIN};
use prost::Message;
use protocol::pb;
use protocol::rpc::{
    Method, RpcClient, RpcError, RpcServer, SessionReceiver, SessionSender, StatusCode,
};
use tokio_util::sync::CancellationToken;

/// An agent's RPC server over `service`, a coordinator's client, and what stops the server.
struct Mesh {
    addr: String,
    client: RpcClient,
    stop: CancellationToken,
    serving: tokio::task::JoinHandle<()>,
}

impl Mesh {
    fn start(service: ExecService) -> Mesh {
        certs::install_crypto_provider();
        let ca = certs::CertificateAuthority::generate(TRUST_DOMAIN, Duration::from_secs(86_400))
            .expect("ca");
        let server = RpcServer::bind(
            "127.0.0.1:0".parse().expect("literal"),
            &tls_for(&ca, agent_identity("eu-a1")),
            Arc::new(service),
        )
        .expect("bind");
        let addr = server.local_addr().to_string();
        let stop = CancellationToken::new();
        let serving = tokio::spawn(server.run(stop.clone()));
        let client = RpcClient::with_server_roles(
            &tls_for(
                &ca,
                certs::Identity::coordinator(TRUST_DOMAIN, "c1").expect("id"),
            ),
            &[certs::Role::Agent],
        )
        .expect("client");
        Mesh {
            addr,
            client,
            stop,
            serving,
        }
    }

    async fn attach(
        &self,
        request: &pb::AttachJobRequest,
    ) -> Result<(SessionSender, SessionReceiver), RpcError> {
        self.client
            .open_session(
                &self.addr,
                Method::AgentAttachJob,
                Bytes::from(request.encode_to_vec()),
                CALL,
            )
            .await
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(DEADLINE, self.serving)
            .await
            .expect("the server stops")
            .expect("server task");
    }
}

/// A running attempt, recorded in a store as the supervisor records it.
async fn running_attempt(root: &std::path::Path) -> (Arc<JobStore>, RunningJob, String) {
    let launcher = rlimit_launcher(root);
    let job = started(&launcher, root, "attach", "echo ready; sleep 60").await;
    let job_id = job.handle().job_id.clone();
    let store = Arc::new(JobStore::open(root).expect("store"));
    let mut record = AttemptRecord::launching(assignment_for(&job_id));
    assert!(store.begin_launch(&record).expect("begin"));
    record.phase = AttemptPhase::Running;
    record.handle = Some(job.handle().clone());
    store.save(&record).expect("save");
    (store, job, job_id)
}

fn attach_request(job_id: &str, command: &[&str]) -> pb::AttachJobRequest {
    pb::AttachJobRequest {
        job_id: job_id.into(),
        attempt: 1,
        replica: 0,
        command: command.iter().map(|s| s.to_string()).collect(),
        size: Some(pb::TerminalSize { cols: 80, rows: 24 }),
        timeout_secs: 60,
        term: String::new(),
    }
}

fn refusal(result: Result<(SessionSender, SessionReceiver), RpcError>) -> StatusCode {
    match result {
        Err(RpcError::Remote(status)) => status.code,
        Err(other) => panic!("expected a refusal, got {other:?}"),
        Ok(_) => panic!("expected a refusal, the session opened"),
    }
}

async fn type_in(tx: &mut SessionSender, text: &str) {
    let input = pb::TerminalInput {
        input: Some(pb::terminal_input::Input::Data(text.as_bytes().to_vec())),
    };
    tx.send(&input.encode_to_vec()).await.expect("send input");
}

/// Reads output frames until the `end` frame; returns what was shown and the end. The session's stream
/// finishes after it.
async fn read_to_end(rx: &mut SessionReceiver) -> (String, pb::TerminalEnd) {
    let reading = async {
        let mut shown = String::new();
        loop {
            let frame = rx
                .recv()
                .await
                .expect("the session stream")
                .unwrap_or_else(|| panic!("the stream finished without an end: {shown:?}"));
            match pb::TerminalOutput::decode(frame).expect("decodes").output {
                Some(pb::terminal_output::Output::Data(data)) => {
                    shown.push_str(&String::from_utf8_lossy(&data))
                }
                Some(pb::terminal_output::Output::End(end)) => {
                    assert_eq!(rx.recv().await.expect("stream"), None, "nothing after end");
                    return (shown, end);
                }
                None => panic!("an empty output frame"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, reading)
        .await
        .expect("the session ends in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_types_into_a_jobs_terminal_and_reads_it_to_its_end() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (store, job, job_id) = running_attempt(tmp.path()).await;
    let mesh = Mesh::start(ExecService::new(store));

    assert_eq!(
        refusal(mesh.attach(&attach_request(&job_id, &[])).await),
        StatusCode::InvalidArgument
    );
    let mut bad_term = attach_request(&job_id, &["sh"]);
    bad_term.term = "x term".into();
    assert_eq!(
        refusal(mesh.attach(&bad_term).await),
        StatusCode::InvalidArgument
    );
    let mut unknown = attach_request(&job_id, &["sh"]);
    unknown.attempt = 9;
    assert_eq!(refusal(mesh.attach(&unknown).await), StatusCode::NotFound);

    let (mut tx, mut rx) = mesh
        .attach(&attach_request(&job_id, &["sh"]))
        .await
        .expect("the session opens");
    type_in(&mut tx, "echo R$((6*7))X; echo term=$TERM; exit 5\n").await;
    let (shown, end) = read_to_end(&mut rx).await;
    assert!(shown.contains("R42X"), "{shown:?}");
    assert!(shown.contains("term=xterm"), "{shown:?}");
    assert_eq!(end.exit_code, Some(5), "{end:?}");
    assert_eq!((end.signal, end.timed_out, end.idle), (None, false, false));
    assert!(end.error.is_empty(), "{end:?}");

    // A program that does not exist: 127 and the reason, on the terminal.
    let (_tx, mut rx) = mesh
        .attach(&attach_request(&job_id, &["no-such-program-here"]))
        .await
        .expect("the session opens");
    let (shown, end) = read_to_end(&mut rx).await;
    assert_eq!(end.exit_code, Some(127), "{end:?}");
    assert!(shown.contains("cannot run the command"), "{shown:?}");

    // A frame that is not a TerminalInput ends the session with an error.
    let (mut tx, mut rx) = mesh
        .attach(&attach_request(&job_id, &["sh"]))
        .await
        .expect("the session opens");
    tx.send(&[0xff, 0xff, 0xff]).await.expect("send");
    let (_, end) = read_to_end(&mut rx).await;
    assert!(end.error.contains("does not decode"), "{end:?}");

    // A session still running when the agent stops is ended, and says why.
    let (_tx, mut rx) = mesh
        .attach(&attach_request(&job_id, &["sh"]))
        .await
        .expect("the session opens");
    let stopping = tokio::spawn(mesh.stop());
    let (_, end) = read_to_end(&mut rx).await;
    assert_eq!(end.error, "the agent is shutting down");
    stopping.await.expect("stop");
    job.cancel(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_without_input_or_output_is_ended_as_idle() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (store, job, job_id) = running_attempt(tmp.path()).await;
    let mesh = Mesh::start(ExecService::new(store).with_idle_limit(Duration::from_secs(1)));
    // A command that prints nothing and reads nothing.
    let (_tx, mut rx) = mesh
        .attach(&attach_request(&job_id, &["sleep", "100"]))
        .await
        .expect("the session opens");
    let (_, end) = read_to_end(&mut rx).await;
    assert!(end.idle, "{end:?}");
    assert_eq!(end.signal, Some(libc::SIGKILL), "{end:?}");
    mesh.stop().await;
    job.cancel(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_holds_a_bounded_number_of_sessions_and_frees_a_place_when_one_ends() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (store, job, job_id) = running_attempt(tmp.path()).await;
    let mesh = Mesh::start(ExecService::new(store));
    let mut open = Vec::new();
    for _ in 0..agent::jobs::exec_service::MAX_CONCURRENT {
        open.push(
            mesh.attach(&attach_request(&job_id, &["sh"]))
                .await
                .expect("within the bound"),
        );
    }
    assert_eq!(
        refusal(mesh.attach(&attach_request(&job_id, &["sh"])).await),
        StatusCode::ResourceExhausted
    );
    // One session ends: its place is free again.
    let (mut tx, mut rx) = open.pop().expect("a session");
    type_in(&mut tx, "exit 0\n").await;
    let (_, end) = read_to_end(&mut rx).await;
    assert_eq!(end.exit_code, Some(0), "{end:?}");
    let again = testkit::eventually_async("a place to free up", DEADLINE, || async {
        mesh.attach(&attach_request(&job_id, &["sh"])).await.ok()
    })
    .await;
    assert!(again.is_ok(), "no place freed up");
    drop((open, again));
    mesh.stop().await;
    job.cancel(Duration::from_secs(1)).await;
}
