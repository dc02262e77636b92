//! The agent's log server end to end over real QUIC with mutual TLS: a coordinator reads a real attempt's
//! output by logical offset, each replica of an attempt its own; unknown attempts and replicas and bad
//! stream names are refused; an attempt forgotten after its retention period is NOT_FOUND with a message
//! saying why; an agent identity may not read logs at all.

mod exec_common;
mod jobs_common;

use std::sync::Arc;
use std::time::Duration;

use agent::exec::{LogOptions, LogStream, Replica};
use agent::jobs::{Assignment, AttemptPhase, AttemptRecord, JobStore, LogService};
use exec_common::{read_all, rlimit_launcher, shell_spec, DEADLINE};
use jobs_common::{agent_identity, assignment_for, tls_for, CALL, TRUST_DOMAIN};
use protocol::pb;
use protocol::rpc::{Method, RpcClient, RpcError, RpcServer, StatusCode};
use tokio_util::sync::CancellationToken;

fn read_request(
    job_id: &str,
    attempt: u32,
    stream: &str,
    offset: u64,
    max: u32,
) -> pb::ReadLogsRequest {
    pb::ReadLogsRequest {
        job_id: job_id.into(),
        attempt,
        stream: stream.into(),
        offset,
        max_bytes: max,
        replica: 0,
        ..pb::ReadLogsRequest::default()
    }
}

fn replica_request(job_id: &str, replica: u32, stream: &str) -> pb::ReadLogsRequest {
    pb::ReadLogsRequest {
        replica,
        ..read_request(job_id, 1, stream, 0, 0)
    }
}

fn remote_code(result: Result<pb::ReadLogsResponse, RpcError>) -> StatusCode {
    match result {
        Err(RpcError::Remote(status)) => status.code,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_reads_an_attempts_output_and_an_agent_is_refused() {
    certs::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = certs::CertificateAuthority::generate(TRUST_DOMAIN, Duration::from_secs(86_400))
        .expect("ca");

    // A real attempt: launched, recorded in the store like the supervisor does, run to its end.
    let launcher = rlimit_launcher(tmp.path());
    let spec = shell_spec(
        tmp.path(),
        "logs",
        "i=0; while [ $i -lt 200 ]; do echo line-$i; i=$((i+1)); done; echo oops >&2",
    );
    let store = Arc::new(JobStore::open(tmp.path()).expect("store"));
    let mut record = AttemptRecord::launching(assignment_for(&spec.job_id));
    assert!(store.begin_launch(&record).expect("begin"));
    let job = launcher.launch(&spec).expect("launch");
    record.phase = AttemptPhase::Running;
    record.handle = Some(job.handle().clone());
    store.save(&record).expect("save");
    let report = tokio::time::timeout(DEADLINE, job.wait())
        .await
        .expect("the job ends");
    assert_eq!(report.exit_code, Some(0));
    let expected: String = (0..200).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(read_all(&spec.log.dir, LogStream::Stdout), expected);
    // Replica 1 of the same attempt on this node: its own process, its own output.
    let mut sibling_spec = shell_spec(
        tmp.path(),
        "logs",
        "echo replica-$MERIDIAN_REPLICA-of-$MERIDIAN_REPLICAS; echo sibling-err >&2",
    );
    sibling_spec.job_id = spec.job_id.clone();
    sibling_spec.log = LogOptions::new(tmp.path().join("logs").join("sibling"));
    let mut sibling = AttemptRecord::launching(Assignment {
        replica: 1,
        replicas: 2,
        ..assignment_for(&spec.job_id)
    });
    assert!(store.begin_launch(&sibling).expect("begin replica 1"));
    let sibling_job = launcher
        .launch_replica(
            &sibling_spec,
            &Replica {
                index: 1,
                count: 2,
                hosts: vec![],
            },
        )
        .expect("launch replica 1");
    sibling.phase = AttemptPhase::Running;
    sibling.handle = Some(sibling_job.handle().clone());
    store.save(&sibling).expect("save");
    tokio::time::timeout(DEADLINE, sibling_job.wait())
        .await
        .expect("replica 1 ends");
    // An attempt that never started has a record but no output.
    let never = AttemptRecord::launching(assignment_for("never-started"));
    store.begin_launch(&never).expect("begin");

    let server = RpcServer::bind(
        "127.0.0.1:0".parse().expect("literal"),
        &tls_for(&ca, agent_identity("eu-a1")),
        Arc::new(LogService::new(store.clone())),
    )
    .expect("bind");
    let addr = server.local_addr().to_string();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(server.run(stop.clone()));

    let coordinator = RpcClient::with_server_roles(
        &tls_for(
            &ca,
            certs::Identity::coordinator(TRUST_DOMAIN, "c1").expect("id"),
        ),
        &[certs::Role::Agent],
    )
    .expect("client");

    // Read the whole stream in small pieces, following next_offset.
    let mut collected = Vec::new();
    let mut offset = 0;
    loop {
        let answer: pb::ReadLogsResponse = coordinator
            .call_message(
                &addr,
                Method::AgentReadLogs,
                &read_request(&spec.job_id, 1, "stdout", offset, 500),
                CALL,
            )
            .await
            .expect("read stdout");
        assert_eq!(answer.start_offset, offset);
        assert!(answer.data.len() <= 500);
        assert_eq!(answer.next_offset, offset + answer.data.len() as u64);
        if answer.data.is_empty() {
            break;
        }
        collected.extend_from_slice(&answer.data);
        offset = answer.next_offset;
    }
    assert_eq!(String::from_utf8(collected).expect("utf8"), expected);

    // From an offset in the middle; max_bytes 0 means as much as allowed.
    let tail: pb::ReadLogsResponse = coordinator
        .call_message(
            &addr,
            Method::AgentReadLogs,
            &read_request(&spec.job_id, 1, "stdout", 7, 0),
            CALL,
        )
        .await
        .expect("read from 7");
    assert_eq!(tail.start_offset, 7);
    assert_eq!(tail.data, expected.as_bytes()[7..].to_vec());

    let stderr: pb::ReadLogsResponse = coordinator
        .call_message(
            &addr,
            Method::AgentReadLogs,
            &read_request(&spec.job_id, 1, "stderr", 0, 100),
            CALL,
        )
        .await
        .expect("read stderr");
    assert_eq!(stderr.data, b"oops\n".to_vec());

    // From the output index: both streams with their times, one stream's last lines, and "all" refused
    // outside a records read.
    let merged: pb::ReadLogsResponse = coordinator
        .call_message(
            &addr,
            Method::AgentReadLogs,
            &pb::ReadLogsRequest {
                records: true,
                ..read_request(&spec.job_id, 1, "all", 0, 0)
            },
            CALL,
        )
        .await
        .expect("read all records");
    assert!(merged.data.is_empty());
    let mut by_stream = std::collections::BTreeMap::<String, Vec<u8>>::new();
    for r in &merged.records {
        assert!(r.at_ms > 0, "{r:?}");
        by_stream
            .entry(r.stream.clone())
            .or_default()
            .extend_from_slice(&r.data);
    }
    assert_eq!(
        by_stream.get("stdout").map(Vec::as_slice),
        Some(expected.as_bytes())
    );
    assert_eq!(
        by_stream.get("stderr").map(Vec::as_slice),
        Some(&b"oops\n"[..])
    );
    let last: pb::ReadLogsResponse = coordinator
        .call_message(
            &addr,
            Method::AgentReadLogs,
            &pb::ReadLogsRequest {
                records: true,
                tail_lines: Some(2),
                ..read_request(&spec.job_id, 1, "stdout", 0, 0)
            },
            CALL,
        )
        .await
        .expect("read the last lines");
    let last_text: Vec<u8> = last.records.iter().flat_map(|r| r.data.clone()).collect();
    assert_eq!(last_text, b"line-198\nline-199\n".to_vec());
    let refused = coordinator
        .call_message::<_, pb::ReadLogsResponse>(
            &addr,
            Method::AgentReadLogs,
            &read_request(&spec.job_id, 1, "all", 0, 0),
            CALL,
        )
        .await;
    assert_eq!(remote_code(refused), StatusCode::InvalidArgument);

    let empty: pb::ReadLogsResponse = coordinator
        .call_message(
            &addr,
            Method::AgentReadLogs,
            &read_request("never-started", 1, "stdout", 0, 100),
            CALL,
        )
        .await
        .expect("read a never-started attempt");
    assert!(empty.data.is_empty());

    // Each replica's output is read by its replica number.
    let ones: pb::ReadLogsResponse = coordinator
        .call_message(
            &addr,
            Method::AgentReadLogs,
            &replica_request(&spec.job_id, 1, "stdout"),
            CALL,
        )
        .await
        .expect("read replica 1");
    assert_eq!(ones.data, b"replica-1-of-2\n".to_vec());
    let ones_err: pb::ReadLogsResponse = coordinator
        .call_message(
            &addr,
            Method::AgentReadLogs,
            &replica_request(&spec.job_id, 1, "stderr"),
            CALL,
        )
        .await
        .expect("read replica 1 stderr");
    assert_eq!(ones_err.data, b"sibling-err\n".to_vec());
    let zeros: pb::ReadLogsResponse = coordinator
        .call_message(
            &addr,
            Method::AgentReadLogs,
            &replica_request(&spec.job_id, 0, "stdout"),
            CALL,
        )
        .await
        .expect("read replica 0");
    assert_eq!(zeros.data, expected.as_bytes().to_vec());
    let code = remote_code(
        coordinator
            .call_message(
                &addr,
                Method::AgentReadLogs,
                &replica_request(&spec.job_id, 2, "stdout"),
                CALL,
            )
            .await,
    );
    assert_eq!(code, StatusCode::NotFound, "replica 2 never ran here");

    // Forgotten after its retention period: not found, and the message says why.
    let mut forgotten = AttemptRecord::launching(assignment_for("forgotten"));
    assert!(store.begin_launch(&forgotten).expect("begin"));
    forgotten.mark_finished(1_000);
    forgotten.final_reported = true;
    store.save(&forgotten).expect("save");
    let read_forgotten = coordinator
        .call_message::<_, pb::ReadLogsResponse>(
            &addr,
            Method::AgentReadLogs,
            &read_request("forgotten", 1, "stdout", 0, 100),
            CALL,
        )
        .await;
    assert!(read_forgotten.is_ok(), "{read_forgotten:?}");
    assert_eq!(
        store
            .forget(&[forgotten.key()], 2_000)
            .expect("forget")
            .len(),
        1
    );
    match coordinator
        .call_message::<_, pb::ReadLogsResponse>(
            &addr,
            Method::AgentReadLogs,
            &read_request("forgotten", 1, "stdout", 0, 100),
            CALL,
        )
        .await
    {
        Err(RpcError::Remote(status)) => {
            assert_eq!(status.code, StatusCode::NotFound);
            assert!(
                status.message.contains("removed") && status.message.contains("retention period"),
                "{}",
                status.message
            );
        }
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }

    // Unknown attempts, including anything shaped like a path, are not found.
    for (job, attempt) in [
        (spec.job_id.as_str(), 2),
        ("no-such-job", 1),
        ("../../etc", 1),
    ] {
        let code = remote_code(
            coordinator
                .call_message(
                    &addr,
                    Method::AgentReadLogs,
                    &read_request(job, attempt, "stdout", 0, 100),
                    CALL,
                )
                .await,
        );
        assert_eq!(code, StatusCode::NotFound, "{job} attempt {attempt}");
    }
    for stream in ["", "STDOUT", "stdin", "../stdout.log"] {
        let code = remote_code(
            coordinator
                .call_message(
                    &addr,
                    Method::AgentReadLogs,
                    &read_request(&spec.job_id, 1, stream, 0, 100),
                    CALL,
                )
                .await,
        );
        assert_eq!(code, StatusCode::InvalidArgument, "stream {stream:?}");
    }

    // Another agent (even one of the same cluster) may not read logs.
    let other_agent = RpcClient::with_server_roles(
        &tls_for(&ca, agent_identity("eu-a2")),
        &[certs::Role::Agent],
    )
    .expect("agent client");
    let code = remote_code(
        other_agent
            .call_message(
                &addr,
                Method::AgentReadLogs,
                &read_request(&spec.job_id, 1, "stdout", 0, 100),
                CALL,
            )
            .await,
    );
    assert_eq!(code, StatusCode::PermissionDenied);

    stop.cancel();
    tokio::time::timeout(DEADLINE, serving)
        .await
        .expect("the server stops")
        .expect("server task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_is_capped_at_one_mebibyte() {
    certs::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = certs::CertificateAuthority::generate(TRUST_DOMAIN, Duration::from_secs(86_400))
        .expect("ca");
    let launcher = rlimit_launcher(tmp.path());
    // 1.5 MiB of output.
    let spec = shell_spec(
        tmp.path(),
        "big",
        "head -c 1572864 /dev/zero | tr '\\0' 'x'",
    );
    let store = Arc::new(JobStore::open(tmp.path()).expect("store"));
    let mut record = AttemptRecord::launching(assignment_for(&spec.job_id));
    store.begin_launch(&record).expect("begin");
    let job = launcher.launch(&spec).expect("launch");
    record.phase = AttemptPhase::Running;
    record.handle = Some(job.handle().clone());
    store.save(&record).expect("save");
    tokio::time::timeout(DEADLINE, job.wait())
        .await
        .expect("the job ends");

    let server = RpcServer::bind(
        "127.0.0.1:0".parse().expect("literal"),
        &tls_for(&ca, agent_identity("eu-a1")),
        Arc::new(LogService::new(store)),
    )
    .expect("bind");
    let addr = server.local_addr().to_string();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(server.run(stop.clone()));
    let coordinator = RpcClient::with_server_roles(
        &tls_for(
            &ca,
            certs::Identity::coordinator(TRUST_DOMAIN, "c1").expect("id"),
        ),
        &[certs::Role::Agent],
    )
    .expect("client");
    for max in [0, u32::MAX] {
        let answer: pb::ReadLogsResponse = coordinator
            .call_message(
                &addr,
                Method::AgentReadLogs,
                &read_request(&spec.job_id, 1, "stdout", 0, max),
                CALL,
            )
            .await
            .expect("read");
        assert_eq!(answer.data.len(), 1024 * 1024, "max_bytes {max}");
        assert_eq!(answer.next_offset, 1024 * 1024);
    }
    stop.cancel();
    tokio::time::timeout(DEADLINE, serving)
        .await
        .expect("the server stops")
        .expect("server task");
}
