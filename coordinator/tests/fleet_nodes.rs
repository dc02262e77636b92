//! Agents joining a coordinator end to end: registration, heartbeats, the leader's health monitor turning
//! silence into Unreachable then Lost, re-registration with a higher lease epoch, and an agent refused (and
//! audited) when it speaks for another node. Real certificates, QUIC and sled; the agent is the real
//! `meridian-agent` runtime.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use coordinator::clock::{Clock, ManualClock};
use coordinator::fleet::FleetTimings;
use coordinator::node::{Coordinator, CoordinatorOptions, Handle, MemberNode, RaftTimings};
use coordinator::state::{
    AuditOutcome, FleetOp, IdentityOp, JobOp, NodeHealthState, NodeRecord, SecretOp, TenancyOp,
};
use protocol::pb;
use protocol::rpc::{Method, RpcClient, RpcError, StatusCode};
use tokio_util::sync::CancellationToken;

const TRUST_DOMAIN: &str = "fleet-test.meridian.local";
const NODE_KEY: &str = "eu/eu1/eu-a1";

struct Fixture {
    ca: certs::CertificateAuthority,
    coordinator: Coordinator,
    handle: Handle,
    dir: tempfile::TempDir,
    keyring: std::sync::Arc<coordinator::crypto::MasterKeyring>,
}

fn tls_for(
    ca: &certs::CertificateAuthority,
    identity: certs::Identity,
) -> anyhow::Result<certs::TlsIdentity> {
    // Only coordinators and gateways may carry host names.
    let leaf = ca.issue(&certs::LeafRequest::new(
        identity,
        Duration::from_secs(3_600),
    ))?;
    Ok(certs::TlsIdentity::from_pem(
        ca.cert_pem(),
        &leaf.cert_pem,
        &leaf.key_pem,
    )?)
}

fn agent_tls(
    ca: &certs::CertificateAuthority,
    region: &str,
    cluster: &str,
    node: &str,
) -> anyhow::Result<certs::TlsIdentity> {
    tls_for(
        ca,
        certs::Identity::agent(TRUST_DOMAIN, region, cluster, node)?,
    )
}

async fn start() -> anyhow::Result<Fixture> {
    start_with(true).await
}

/// A single coordinator; `approve_new_nodes` is its default for clusters without a policy.
async fn start_with(approve_new_nodes: bool) -> anyhow::Result<Fixture> {
    start_on(approve_new_nodes, coordinator::clock::system(), FAST_FLEET).await
}

/// Fleet timings short enough for tests on the system clock.
const FAST_FLEET: FleetTimings = FleetTimings {
    heartbeat: Duration::from_millis(100),
    ttl: Duration::from_millis(600),
    lost_after: Duration::from_millis(1500),
    tick: Duration::from_millis(50),
    dispatch_tick: Duration::from_millis(20),
};

/// A single coordinator reading the time from `clock`.
async fn start_on(
    approve_new_nodes: bool,
    clock: std::sync::Arc<dyn coordinator::clock::Clock>,
    fleet: FleetTimings,
) -> anyhow::Result<Fixture> {
    start_seeded(approve_new_nodes, clock, fleet, coordinator::random::os()).await
}

/// A single coordinator reading the time from `clock` and drawing ids and keys from `randomness`.
async fn start_seeded(
    approve_new_nodes: bool,
    clock: std::sync::Arc<dyn coordinator::clock::Clock>,
    fleet: FleetTimings,
    randomness: std::sync::Arc<dyn coordinator::random::Randomness>,
) -> anyhow::Result<Fixture> {
    certs::install_crypto_provider();
    let dir = tempfile::tempdir()?;
    let ca = certs::CertificateAuthority::generate(TRUST_DOMAIN, Duration::from_secs(86_400))?;
    let tls = tls_for(&ca, certs::Identity::coordinator(TRUST_DOMAIN, "c1")?)?;
    let keyring = std::sync::Arc::new(coordinator::crypto::MasterKeyring::parse(
        &coordinator::crypto::MasterKeyring::generate_line(&mut rand::rngs::OsRng),
    )?);
    let member = MemberNode {
        name: "c1".into(),
        raft_addr: String::new(),
        admin_addr: String::new(),
    };
    let (coordinator, handle) = Coordinator::start(CoordinatorOptions {
        node_id: 1,
        name: "c1".into(),
        data_dir: dir.path().join("raft"),
        raft_listen: "127.0.0.1:0".parse()?,
        advertise: member.clone(),
        tls,
        timings: RaftTimings::default(),
        snapshot_every: 10_000,
        bootstrap: Some(BTreeMap::from([(1, member)])),
        fleet,
        jobs: Default::default(),
        audit: Default::default(),
        keyring: Some(keyring.clone()),
        approve_new_nodes,
        clock,
        link_faults: None,
        randomness,
    })
    .await
    .context("starting the coordinator")?;
    handle
        .wait_for(|s| s.leader == Some(1), Duration::from_secs(30))
        .await
        .context("waiting for a leader")?;
    Ok(Fixture {
        ca,
        coordinator,
        handle,
        dir,
        keyring,
    })
}

/// How long a test waits for what another task makes true.
const DEADLINE: Duration = Duration::from_secs(15);

/// Waits until `condition` holds, for at most [`DEADLINE`].
async fn eventually(what: &str, condition: impl FnMut() -> bool) -> anyhow::Result<()> {
    Ok(testkit::eventually(what, DEADLINE, condition).await?)
}

/// Waits until the node's record satisfies `condition`.
async fn wait_node(
    handle: &Handle,
    what: &str,
    condition: impl Fn(&NodeRecord) -> bool,
) -> anyhow::Result<NodeRecord> {
    let found = testkit::eventually_some(&format!("node becoming {what}"), DEADLINE, || {
        handle
            .read(|s| s.node(NODE_KEY).cloned())
            .filter(|n| condition(n))
    })
    .await;
    found.with_context(|| format!("last seen {:?}", handle.read(|s| s.node(NODE_KEY).cloned())))
}

fn spawn_agent(
    fx: &Fixture,
) -> anyhow::Result<(
    CancellationToken,
    tokio::task::JoinHandle<Result<(), agent::RuntimeError>>,
)> {
    let stop = CancellationToken::new();
    let opts = agent::AgentOptions {
        heartbeat: Duration::from_millis(100),
        ..agent::AgentOptions::new(
            vec![fx.handle.raft_addr().to_string()],
            agent_tls(&fx.ca, "eu", "eu1", "eu-a1")?,
            fx.dir.path().to_path_buf(),
        )
    };
    Ok((stop.clone(), tokio::spawn(agent::run(opts, stop))))
}

/// `GET /metrics` on the agent's metrics listener: status, content type and body.
async fn agent_metrics(addr: std::net::SocketAddr) -> anyhow::Result<(u16, String, String)> {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((status, content_type, response.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_serves_its_metrics_on_the_listener_it_was_given() -> anyhow::Result<()> {
    let fx = start().await?;
    let listener = agent::MetricsListener::bind("127.0.0.1:0".parse()?, false)?;
    let addr = listener.local_addr();
    let stop = CancellationToken::new();
    let opts = agent::AgentOptions {
        heartbeat: Duration::from_millis(100),
        metrics: Some(listener),
        ..agent::AgentOptions::new(
            vec![fx.handle.raft_addr().to_string()],
            agent_tls(&fx.ca, "eu", "eu1", "eu-a1")?,
            fx.dir.path().to_path_buf(),
        )
    };
    let task = tokio::spawn(agent::run(opts, stop.clone()));
    wait_node(&fx.handle, "ready", |n| n.health == NodeHealthState::Ready).await?;

    // Registered and heartbeating: the series say so once a heartbeat was answered.
    let text =
        testkit::eventually_async("the agent's metrics show a heartbeat", DEADLINE, || async {
            let (status, content_type, text) = agent_metrics(addr).await.ok()?;
            assert_eq!(status, 200, "{text}");
            assert!(
                content_type.starts_with("application/openmetrics-text; version=1.0.0"),
                "{content_type}"
            );
            text.contains("meridian_agent_heartbeats_total{result=\"ok\"}")
                .then_some(text)
        })
        .await?;
    for series in [
        "meridian_agent_registrations_total{result=\"ok\"} ",
        "meridian_agent_registered 1\n",
        "meridian_agent_coordinator_link_up 1\n",
        "meridian_agent_reports_queued 0\n",
        "meridian_agent_gpus ",
        "# TYPE meridian_agent_job_starts counter\n",
    ] {
        assert!(text.contains(series), "{series} missing from\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
    let elsewhere = reqwest::get(format!("http://{addr}/v1/projects")).await?;
    assert_eq!(elsewhere.status().as_u16(), 404, "only /metrics is served");

    stop.cancel();
    task.await??;
    assert!(
        agent_metrics(addr).await.is_err(),
        "the metrics listener outlived the agent"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_registers_goes_unreachable_then_lost_and_comes_back() -> anyhow::Result<()> {
    // The coordinator's time moves only when the test moves it: silence is exactly what the test says.
    let clock = std::sync::Arc::new(ManualClock::new(
        coordinator::clock::SystemClock::new().unix_ms(),
    ));
    let ttl_ms = 5_000;
    let lost_ms = 30_000;
    let fleet = FleetTimings {
        ttl: Duration::from_millis(ttl_ms),
        lost_after: Duration::from_millis(lost_ms),
        ..FAST_FLEET
    };
    let fx = start_on(true, clock.clone(), fleet).await?;
    let inventory = agent::inventory::collect(&agent::inventory::InventoryOptions {
        data_dir: fx.dir.path().to_path_buf(),
        labels: Default::default(),
        gpu: Default::default(),
    })?;

    let (stop, task) = spawn_agent(&fx)?;
    let ready = wait_node(&fx.handle, "ready", |n| n.health == NodeHealthState::Ready).await?;
    assert_eq!(ready.cpu_cores, inventory.cpu_cores);
    assert_eq!(ready.memory_bytes, inventory.memory_bytes);
    assert_eq!(ready.lease_epoch, 1);

    // Heartbeats keep it Ready well past the TTL: time moves a third of the TTL at a time, and each step
    // waits for a heartbeat heard after it, so the node is never silent for a TTL.
    for _ in 0..6 {
        clock.advance_ms(ttl_ms / 3);
        let stepped_at = clock.mono_ms();
        eventually("a heartbeat after the step", || {
            fx.handle
                .last_heard_ms(NODE_KEY)
                .is_some_and(|at| at >= stepped_at)
        })
        .await?;
        let health = fx.handle.read(|s| s.node(NODE_KEY).map(|n| n.health));
        assert_eq!(
            health,
            Some(NodeHealthState::Ready),
            "a beating node lost its health"
        );
    }

    // Silent now; a TTL later it is Unreachable, and `lost_after` after that, Lost.
    stop.cancel();
    task.await??;
    let last = fx.handle.last_heard_ms(NODE_KEY).context("never heard")?;
    clock.advance_ms(last + ttl_ms - clock.mono_ms());
    wait_node(&fx.handle, "unreachable", |n| {
        n.health == NodeHealthState::Unreachable
    })
    .await?;
    clock.advance_ms(lost_ms);
    wait_node(&fx.handle, "lost", |n| n.health == NodeHealthState::Lost).await?;

    let (stop, task) = spawn_agent(&fx)?;
    let back = wait_node(&fx.handle, "ready again", |n| {
        n.health == NodeHealthState::Ready && n.lease_epoch > ready.lease_epoch
    })
    .await?;
    assert_eq!(back.registered_at, ready.registered_at);
    stop.cancel();
    task.await??;
    fx.coordinator.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_may_speak_only_for_its_own_node() -> anyhow::Result<()> {
    let fx = start().await?;
    let addr = fx.handle.raft_addr().to_string();
    let client = RpcClient::new(&agent_tls(&fx.ca, "eu", "eu1", "eu-a1")?)?;
    let foreign = pb::NodeRegistration {
        node: "us-a1".into(),
        region: "us".into(),
        cluster: "us1".into(),
        resources: Some(pb::NodeResources {
            cpu_cores: 4,
            memory_bytes: 1 << 30,
            ..Default::default()
        }),
        agent_version: "test".into(),
        ..Default::default()
    };
    let answer: Result<pb::NodeRegistrationAck, _> = client
        .call_message(
            &addr,
            Method::AgentRegister,
            &foreign,
            Duration::from_secs(5),
        )
        .await;
    match answer {
        Err(RpcError::Remote(status)) => assert_eq!(status.code, StatusCode::PermissionDenied),
        other => bail!("expected PERMISSION_DENIED, got {other:?}"),
    }
    assert!(fx.handle.read(|s| s.node("us/us1/us-a1").is_none()));
    let denied = fx.handle.read(|s| {
        s.audit_records()
            .iter()
            .filter(|r| r.outcome == AuditOutcome::Denied && r.target == "us/us1/us-a1")
            .count()
    });
    assert_eq!(denied, 1, "the refused registration is audited once");

    // A heartbeat from a node that never registered is NOT_FOUND, so its agent registers.
    let beat = pb::Heartbeat {
        node: "eu-a1".into(),
        region: "eu".into(),
        cluster: "eu1".into(),
        lease_epoch: 1,
        sequence: 1,
        ..Default::default()
    };
    let answer: Result<pb::HeartbeatAck, _> = client
        .call_message(&addr, Method::AgentHeartbeat, &beat, Duration::from_secs(5))
        .await;
    match answer {
        Err(RpcError::Remote(status)) => assert_eq!(status.code, StatusCode::NotFound),
        other => bail!("expected NOT_FOUND, got {other:?}"),
    }
    fx.coordinator.shutdown().await;
    Ok(())
}

/// An agent driven by hand over real QUIC: registration with GPUs, a job placed by the leader's
/// dispatcher, the long poll answering with the assignment, reports fenced by lease epoch and attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_flow_through_sync_and_reports_fenced_by_epoch_and_attempt() -> anyhow::Result<()> {
    use coordinator::scheduler::ResourceRequest;
    use coordinator::state::{Actor, Command, JobSpec, JobState, Op, RetryPolicy};

    let fx = start().await?;
    let token = coordinator::crypto::generate_token(&mut rand::rngs::OsRng).token;
    coordinator::bootstrap::propose(&fx.handle, &fx.keyring, &token).await?;
    let project = fx
        .handle
        .read(|s| s.default_project_id().map(String::from))
        .context("default project")?;
    let addr = fx.handle.raft_addr().to_string();
    let client = RpcClient::new(&agent_tls(&fx.ca, "eu", "eu1", "eu-a1")?)?;
    let call = Duration::from_secs(10);
    let register = |held: Vec<pb::HeldAttempt>| pb::NodeRegistration {
        node: "eu-a1".into(),
        region: "eu".into(),
        cluster: "eu1".into(),
        resources: Some(pb::NodeResources {
            cpu_cores: 8,
            memory_bytes: 16 << 30,
            gpu_count: 1,
            gpus: vec![pb::GpuDevice {
                uuid: "GPU-test-0".into(),
                index: 0,
                model: "NVIDIA H200".into(),
                memory_mib: 143_771,
                healthy: true,
            }],
        }),
        agent_version: "test".into(),
        labels: [("zone".to_owned(), "a".to_owned())].into(),
        rpc_addr: "127.0.0.1:7443".into(),
        held,
        os: "test".into(),
        limit_mode: "rlimits".into(),
    };
    let ack: pb::NodeRegistrationAck = client
        .call_message(&addr, Method::AgentRegister, &register(Vec::new()), call)
        .await?;
    let epoch = ack.lease_epoch;
    let node = fx
        .handle
        .read(|s| s.node(NODE_KEY).cloned())
        .context("node")?;
    assert_eq!(node.gpus.len(), 1);
    assert_eq!(node.labels.get("zone").map(String::as_str), Some("a"));

    // Nothing assigned yet: a long poll with the current version waits, then answers unchanged.
    let sync = |version: u64, wait_ms: u64, lease_epoch: u64| pb::SyncRequest {
        node: "eu-a1".into(),
        region: "eu".into(),
        cluster: "eu1".into(),
        lease_epoch,
        version,
        wait_ms,
    };
    let first: pb::SyncResponse = client
        .call_message(&addr, Method::AgentSync, &sync(u64::MAX, 0, epoch), call)
        .await?;
    assert!(first.assignments.is_empty());

    // A GPU job is placed on the node's GPU; the pending long poll answers with it.
    let poll = {
        let client = client.clone();
        let addr = addr.clone();
        let req = sync(first.version, 10_000, epoch);
        tokio::spawn(async move {
            client
                .call_message::<_, pb::SyncResponse>(&addr, Method::AgentSync, &req, call)
                .await
        })
    };
    let mut spec = JobSpec::new("python3");
    spec.args = vec!["train.py".into()];
    spec.resources = ResourceRequest {
        cpu_millis: 1_000,
        memory_bytes: 1 << 30,
        gpus: 1,
        ..Default::default()
    };
    spec.retry = RetryPolicy {
        max_attempts: 2,
        on_failure: false,
    };
    let submit = |id: &str| {
        Command::new(
            1,
            Actor::system(),
            Op::Jobs(JobOp::SubmitJob {
                id: id.into(),
                project_id: project.clone(),
                spec: spec.clone(),
                principal_id: None,
            }),
        )
    };
    fx.handle.write(submit("job_one")).await?;
    let answer = poll.await??;
    assert_ne!(answer.version, first.version);
    let [assignment] = answer.assignments.as_slice() else {
        bail!("expected one assignment, got {:?}", answer.assignments);
    };
    assert_eq!(assignment.job_id, "job_one");
    assert_eq!(assignment.attempt, 1);
    assert_eq!(assignment.gpu_uuids, vec!["GPU-test-0".to_owned()]);
    assert_eq!(assignment.command, "python3");
    assert!(!assignment.cancel);

    let event = |attempt: u32, kind: pb::job_event::Kind| pb::JobEvent {
        job_id: "job_one".into(),
        attempt,
        replica: 0,
        at_ms: 10,
        kind: Some(kind),
    };
    let report = |lease_epoch: u64, events: Vec<pb::JobEvent>| pb::ReportRequest {
        node: "eu-a1".into(),
        region: "eu".into(),
        cluster: "eu1".into(),
        lease_epoch,
        events,
    };
    let started = pb::job_event::Kind::Started(pb::JobStarted { pid: 42 });
    let acks: pb::ReportResponse = client
        .call_message(
            &addr,
            Method::AgentReport,
            &report(epoch, vec![event(1, started.clone()), event(7, started)]),
            call,
        )
        .await?;
    assert_eq!(acks.acks.len(), 2);
    assert!(acks.acks[0].accepted, "{acks:?}");
    assert!(!acks.acks[1].accepted, "attempt 7 is not current: {acks:?}");
    let state = fx
        .handle
        .read(|s| s.job(&project, "job_one").map(|j| j.state));
    assert_eq!(state, Some(JobState::Running));

    // A report under an old lease epoch is refused as a whole: the agent must register again.
    let stale: Result<pb::ReportResponse, _> = client
        .call_message(
            &addr,
            Method::AgentReport,
            &report(epoch + 5, Vec::new()),
            call,
        )
        .await;
    match stale {
        Err(RpcError::Remote(status)) => assert_eq!(status.code, StatusCode::NotFound),
        other => bail!("expected NOT_FOUND for a stale epoch, got {other:?}"),
    }

    // The agent restarts without the attempt: it is lost and goes back to pending for a retry.
    let ack: pb::NodeRegistrationAck = client
        .call_message(&addr, Method::AgentRegister, &register(Vec::new()), call)
        .await?;
    assert!(ack.lease_epoch > epoch);
    let retried = wait_job(&fx.handle, &project, "job_one", |j| {
        j.attempts.len() == 2 && j.state == JobState::Scheduled
    })
    .await?;
    assert_eq!(
        retried.attempts[0].outcome.map(|o| o.as_str()),
        Some("lost")
    );

    // Attempt 1's late success is stale; attempt 2's is the job's.
    let exited = pb::job_event::Kind::Exited(pb::JobExited {
        exit_code: Some(0),
        wall_ms: 5,
        ..Default::default()
    });
    let acks: pb::ReportResponse = client
        .call_message(
            &addr,
            Method::AgentReport,
            &report(
                ack.lease_epoch,
                vec![event(1, exited.clone()), event(2, exited)],
            ),
            call,
        )
        .await?;
    assert!(!acks.acks[0].accepted && acks.acks[1].accepted, "{acks:?}");
    let done = fx
        .handle
        .read(|s| s.job(&project, "job_one").cloned())
        .context("job")?;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.attempts.len(), 2);

    // A job naming a secret bound to it receives the value in its assignment, and only then.
    let wrapped = fx
        .handle
        .read(|s| s.project_scope(&project).data_key().cloned())
        .context("data key")?;
    let data_key = coordinator::crypto::unwrap_data_key(&fx.keyring, &wrapped)?;
    let put = |name: &str, bindings: Vec<String>| {
        let aad = coordinator::crypto::SecretAad {
            project_id: &project,
            name,
            version: 1,
        };
        Command::new(
            2,
            Actor::system(),
            Op::Secrets(SecretOp::PutSecret {
                project_id: project.clone(),
                name: name.into(),
                version: 1,
                sealed: coordinator::crypto::encrypt_secret(
                    &data_key,
                    b"hunter2",
                    aad,
                    &mut rand::rngs::OsRng,
                ),
                bindings: Some(bindings),
            }),
        )
    };
    // The trainer service account may use secrets in the project; the secret is bound to it, for jobs
    // named train-*.
    fx.handle
        .write(Command::new(
            2,
            Actor::system(),
            Op::Tenancy(TenancyOp::CreateKey {
                key_id: "trainer".into(),
                name: "trainer".into(),
                project_id: project.clone(),
                hash: coordinator::crypto::hash_token("trainer"),
                last4: "abcd".into(),
                expires_at: None,
                principal: coordinator::state::KeyPrincipal::NewServiceAccount {
                    principal_id: "sa_trainer".into(),
                    name: "trainer".into(),
                },
                role: Some(coordinator::authz::Role::SecretUser),
                limits: Default::default(),
            }),
        ))
        .await?;
    fx.handle
        .write(put(
            "wandb",
            vec!["principal:sa_trainer/job:train-*".into(), "job:*".into()],
        ))
        .await?;
    fx.handle
        .write(put("other", vec!["deployment:x".into()]))
        .await?;
    let mut with_secret = JobSpec::new("python3");
    with_secret.name = "train-7".into();
    with_secret.secrets = [("WANDB_API_KEY".to_owned(), "wandb".to_owned())].into();
    let unbound = JobSpec {
        secrets: [("TOKEN".to_owned(), "other".to_owned())].into(),
        ..with_secret.clone()
    };
    let refused = fx
        .handle
        .write(Command::new(
            3,
            Actor::system(),
            Op::Jobs(JobOp::SubmitJob {
                id: "job_unbound".into(),
                project_id: project.clone(),
                spec: unbound,
                principal_id: Some("sa_trainer".into()),
            }),
        ))
        .await;
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("not bound")),
        "a secret not bound to the job is refused: {refused:?}"
    );
    fx.handle
        .write(Command::new(
            3,
            Actor::system(),
            Op::Jobs(JobOp::SubmitJob {
                id: "job_secret".into(),
                project_id: project.clone(),
                spec: with_secret,
                principal_id: Some("sa_trainer".into()),
            }),
        ))
        .await?;
    let secret_assignment =
        testkit::eventually_async("job_secret's assignment", DEADLINE, || async {
            let answer: Result<pb::SyncResponse, _> = client
                .call_message(
                    &addr,
                    Method::AgentSync,
                    &sync(u64::MAX, 0, ack.lease_epoch),
                    call,
                )
                .await;
            answer
                .ok()?
                .assignments
                .into_iter()
                .find(|a| a.job_id == "job_secret")
        })
        .await?;
    assert_eq!(
        secret_assignment
            .secret_env
            .get("WANDB_API_KEY")
            .map(String::as_str),
        Some("hunter2")
    );
    assert!(secret_assignment.launch_error.is_empty());
    assert!(
        !secret_assignment.secrets_in_env,
        "files only unless the job asked for its environment"
    );
    assert!(!secret_assignment.env.contains_key("WANDB_API_KEY"));
    // The release is on record once: which job, attempt, node, secret and version; answering the same
    // assignment again (the agent's next poll) does not record it again.
    let releases = || {
        fx.handle.read(|s| {
            s.audit_records()
                .iter()
                .filter(|r| r.action == "secret.release")
                .cloned()
                .collect::<Vec<_>>()
        })
    };
    let recorded = releases();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].target, "job_secret");
    assert_eq!(recorded[0].project.as_deref(), Some(project.as_str()));
    assert!(
        recorded[0].detail.starts_with("attempt=1 replica=0 node=")
            && recorded[0].detail.ends_with("secrets=wandb@v1"),
        "{}",
        recorded[0].detail
    );
    let again: pb::SyncResponse = client
        .call_message(
            &addr,
            Method::AgentSync,
            &sync(u64::MAX, 0, ack.lease_epoch),
            call,
        )
        .await?;
    assert!(again.assignments.iter().any(|a| a.job_id == "job_secret"));
    assert_eq!(releases().len(), 1, "released again without a new record");
    let stored = fx
        .handle
        .read(|s| serde_json::to_string(&s.job(&project, "job_secret").cloned()))?;
    assert!(
        !stored.contains("hunter2"),
        "the job record holds names only"
    );
    fx.coordinator.shutdown().await;
    Ok(())
}

/// Waits until the job's record satisfies `condition`.
async fn wait_job(
    handle: &Handle,
    project: &str,
    id: &str,
    condition: impl Fn(&coordinator::state::JobRecord) -> bool,
) -> anyhow::Result<coordinator::state::JobRecord> {
    let found = testkit::eventually_some(
        &format!("job {id} reaching the condition"),
        DEADLINE,
        || {
            handle
                .read(|s| s.job(project, id).cloned())
                .filter(|j| condition(j))
        },
    )
    .await;
    found.with_context(|| {
        format!(
            "last seen {:?}",
            handle.read(|s| s.job(project, id).cloned())
        )
    })
}

/// A registration of node `eu-a1` with `cpu_cores` CPUs and `labels`.
fn registration(cpu_cores: u32, labels: &[(&str, &str)]) -> pb::NodeRegistration {
    pb::NodeRegistration {
        node: "eu-a1".into(),
        region: "eu".into(),
        cluster: "eu1".into(),
        resources: Some(pb::NodeResources {
            cpu_cores,
            memory_bytes: 16 << 30,
            ..Default::default()
        }),
        agent_version: "test".into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        rpc_addr: "127.0.0.1:7443".into(),
        ..Default::default()
    }
}

/// A new node waits for approval and gets no work; approved, it does; reporting more than was approved
/// (a stolen identity attracting jobs), it is quarantined and gets no new work until approved again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_work_only_within_what_was_approved() -> anyhow::Result<()> {
    use coordinator::scheduler::ResourceRequest;
    use coordinator::state::{Actor, Command, JobSpec, JobState, NodeAdmission, Op};

    let fx = start_with(false).await?;
    let token = coordinator::crypto::generate_token(&mut rand::rngs::OsRng).token;
    coordinator::bootstrap::propose(&fx.handle, &fx.keyring, &token).await?;
    let project = fx
        .handle
        .read(|s| s.default_project_id().map(String::from))
        .context("default project")?;
    let addr = fx.handle.raft_addr().to_string();
    let client = RpcClient::new(&agent_tls(&fx.ca, "eu", "eu1", "eu-a1")?)?;
    let call = Duration::from_secs(10);
    let _: pb::NodeRegistrationAck = client
        .call_message(
            &addr,
            Method::AgentRegister,
            &registration(8, &[("zone", "a")]),
            call,
        )
        .await?;
    let node = wait_node(&fx.handle, "registered", |_| true).await?;
    assert_eq!(node.admission, NodeAdmission::PendingApproval);

    let mut spec = JobSpec::new("true");
    spec.resources = ResourceRequest {
        cpu_millis: 1_000,
        ..Default::default()
    };
    let submit = |id: &str| {
        Command::new(
            1,
            Actor::system(),
            Op::Jobs(JobOp::SubmitJob {
                principal_id: None,
                id: id.into(),
                project_id: project.clone(),
                spec: spec.clone(),
            }),
        )
    };
    fx.handle.write(submit("job_waits")).await?;
    let waiting = wait_job(&fx.handle, &project, "job_waits", |j| {
        j.pending_reason
            .as_deref()
            .is_some_and(|r| r.contains("not admitted"))
    })
    .await?;
    assert_eq!(waiting.state, JobState::Pending);

    let approve = Command::new(
        2,
        Actor::system(),
        Op::Fleet(FleetOp::ApproveNode {
            key: NODE_KEY.into(),
        }),
    );
    fx.handle.write(approve).await?;
    wait_job(&fx.handle, &project, "job_waits", |j| {
        j.state == JobState::Scheduled
    })
    .await?;

    // The same identity now claims 64 CPUs and a label nobody approved: quarantined, not trusted.
    let _: pb::NodeRegistrationAck = client
        .call_message(
            &addr,
            Method::AgentRegister,
            &registration(64, &[("zone", "a"), ("gpu", "h200")]),
            call,
        )
        .await?;
    let node = wait_node(&fx.handle, "quarantined", |n| {
        n.admission == NodeAdmission::Quarantined
    })
    .await?;
    assert!(
        node.admission_reason
            .contains("64 CPU cores reported, 8 approved"),
        "{}",
        node.admission_reason
    );
    assert!(
        node.admission_reason.contains("label gpu=h200"),
        "{}",
        node.admission_reason
    );
    fx.handle.write(submit("job_after_quarantine")).await?;
    let job = wait_job(&fx.handle, &project, "job_after_quarantine", |j| {
        j.pending_reason
            .as_deref()
            .is_some_and(|r| r.contains("not admitted"))
    })
    .await?;
    assert_eq!(job.state, JobState::Pending);
    fx.coordinator.shutdown().await;
    Ok(())
}

/// A denied agent identity loses the connection it holds open, without making a call, and cannot open
/// another; a certificate denied by serial is refused while a renewed one for the same node is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_agent_is_cut_off_and_stays_out() -> anyhow::Result<()> {
    use coordinator::state::{Actor, Command, DenyKind, Op};

    let fx = start().await?;
    let addr = fx.handle.raft_addr().to_string();
    let tls = agent_tls(&fx.ca, "eu", "eu1", "eu-a1")?;
    let identity = tls.identity();
    let client = RpcClient::new(&tls)?;
    let call = Duration::from_secs(10);
    let ack: pb::NodeRegistrationAck = client
        .call_message(&addr, Method::AgentRegister, &registration(8, &[]), call)
        .await?;
    let mesh = fx.handle.mesh_connections();
    assert_eq!(mesh.connections_of(&identity), 1);
    assert_eq!(ack.deny_list.map(|d| d.version), Some(0));

    let deny = Command::new(
        1,
        Actor::system(),
        Op::Identity(IdentityOp::DenyIdentity {
            kind: DenyKind::Identity,
            value: identity.uri(),
            reason: "stolen".into(),
        }),
    );
    fx.handle.write(deny).await?;
    eventually("the denied agent's connection closing", || {
        mesh.connections_of(&identity) == 0
    })
    .await?;
    assert!(fx.handle.read(|s| s.node_denied(NODE_KEY)));
    let beat = pb::Heartbeat {
        node: "eu-a1".into(),
        region: "eu".into(),
        cluster: "eu1".into(),
        lease_epoch: ack.lease_epoch,
        ..Default::default()
    };
    let again: Result<pb::HeartbeatAck, _> = client
        .call_message(&addr, Method::AgentHeartbeat, &beat, call)
        .await;
    assert!(matches!(again, Err(RpcError::Refused(_))), "{again:?}");

    // By serial: that one certificate is refused, a renewed one for the same node is admitted.
    let other = agent_tls(&fx.ca, "eu", "eu1", "eu-a2")?;
    let serial = certs::inspect_der(&other.certificate_chain()[0])?.serial;
    let other_client = RpcClient::new(&other)?;
    other_client
        .call(&addr, Method::Ping, bytes::Bytes::new(), call)
        .await?;
    let revoke = Command::new(
        2,
        Actor::system(),
        Op::Identity(IdentityOp::DenyIdentity {
            kind: DenyKind::Serial,
            value: serial,
            reason: String::new(),
        }),
    );
    fx.handle.write(revoke).await?;
    eventually("the revoked certificate's connection closing", || {
        mesh.connections_of(&other.identity()) == 0
    })
    .await?;
    let refused = other_client
        .call(&addr, Method::Ping, bytes::Bytes::new(), call)
        .await;
    assert!(matches!(refused, Err(RpcError::Refused(_))), "{refused:?}");
    let renewed = RpcClient::new(&agent_tls(&fx.ca, "eu", "eu1", "eu-a2")?)?;
    renewed
        .call(&addr, Method::Ping, bytes::Bytes::new(), call)
        .await?;
    fx.coordinator.shutdown().await;
    Ok(())
}

/// The agent's own RPC server (log reads, which coordinators call) refuses a coordinator identity the
/// moment the deny-list reaches it with a heartbeat, and closes the connection that identity holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_a_denied_coordinator() -> anyhow::Result<()> {
    use coordinator::state::{Actor, Command, DenyKind, Op};

    let fx = start().await?;
    let (stop, task) = spawn_agent(&fx)?;
    let node = wait_node(&fx.handle, "ready", |n| n.health == NodeHealthState::Ready).await?;
    let call = Duration::from_secs(5);
    let rogue_tls = tls_for(&fx.ca, certs::Identity::coordinator(TRUST_DOMAIN, "c9")?)?;
    let rogue = RpcClient::with_server_roles(&rogue_tls, &[certs::Role::Agent])?;
    rogue
        .call(&node.rpc_addr, Method::Ping, bytes::Bytes::new(), call)
        .await?;

    let deny = Command::new(
        1,
        Actor::system(),
        Op::Identity(IdentityOp::DenyIdentity {
            kind: DenyKind::Identity,
            value: rogue_tls.identity().uri(),
            reason: "decommissioned".into(),
        }),
    );
    fx.handle.write(deny).await?;
    testkit::eventually_async(
        "the agent refusing the denied coordinator",
        DEADLINE,
        || async {
            let answer = rogue
                .call(&node.rpc_addr, Method::Ping, bytes::Bytes::new(), call)
                .await;
            matches!(answer, Err(RpcError::Refused(_))).then_some(())
        },
    )
    .await?;
    // The coordinators it belongs to are served as before.
    let honest = RpcClient::with_server_roles(
        &tls_for(&fx.ca, certs::Identity::coordinator(TRUST_DOMAIN, "c1")?)?,
        &[certs::Role::Agent],
    )?;
    honest
        .call(&node.rpc_addr, Method::Ping, bytes::Bytes::new(), call)
        .await?;
    stop.cancel();
    task.await??;
    fx.coordinator.shutdown().await;
    Ok(())
}

/// An agent cut off from the coordinators keeps its job running; once the link heals, it reports the end
/// exactly once. The coordinator's clock stands still, so the silence never makes the node Unreachable:
/// what is tested is the agent riding out the cut, not the health monitor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_from_the_coordinators_keeps_its_job_and_reports_once_after(
) -> anyhow::Result<()> {
    use coordinator::state::{Actor, Command, JobSpec, JobState, Op};
    use protocol::rpc::Partitions;

    let clock = std::sync::Arc::new(ManualClock::new(
        coordinator::clock::SystemClock::new().unix_ms(),
    ));
    let fx = start_on(true, clock, FAST_FLEET).await?;
    let token = coordinator::crypto::generate_token(&mut rand::rngs::OsRng).token;
    coordinator::bootstrap::propose(&fx.handle, &fx.keyring, &token).await?;
    let project = fx
        .handle
        .read(|s| s.default_project_id().map(String::from))
        .context("default project")?;
    // Agent reports are counted from this version on, which is what the test reads.
    eventually("the newest apply version", || {
        fx.handle.read(|s| s.apply_version) == coordinator::state::APPLY_VERSION
    })
    .await?;

    let net = Partitions::new();
    net.register("c1", &fx.handle.raft_addr().to_string());
    let agent_dir = fx.dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir)?;
    let stop = CancellationToken::new();
    let opts = agent::AgentOptions {
        heartbeat: Duration::from_millis(100),
        // Unisolated: this test is about the link, and must run without the privileges a sandbox needs.
        sandbox: None,
        link_faults: Some(net.view("agent")),
        ..agent::AgentOptions::new(
            vec![fx.handle.raft_addr().to_string()],
            agent_tls(&fx.ca, "eu", "eu1", "eu-a1")?,
            agent_dir,
        )
    };
    let task = tokio::spawn(agent::run(opts, stop.clone()));
    if let Err(e) = wait_node(&fx.handle, "ready", |n| n.health == NodeHealthState::Ready).await {
        if task.is_finished() {
            task.await??;
        }
        return Err(e);
    }

    let work = fx.dir.path().join("work");
    std::fs::create_dir_all(&work)?;
    let (release, finished) = (work.join("release"), work.join("finished"));
    let script = format!(
        "while [ ! -e {r} ]; do sleep 0.05; done; echo done > {f}",
        r = release.display(),
        f = finished.display()
    );
    let mut spec = JobSpec::new("sh");
    spec.args = vec!["-c".into(), script];
    fx.handle
        .write(Command::new(
            fx.handle.now_ms(),
            Actor::system(),
            Op::Jobs(JobOp::SubmitJob {
                principal_id: None,
                id: "job_rides_out".into(),
                project_id: project.clone(),
                spec,
            }),
        ))
        .await?;
    wait_job(&fx.handle, &project, "job_rides_out", |j| {
        j.state == JobState::Running
    })
    .await?;

    // Cut off, the job runs on to its end; the coordinator cannot hear of it.
    net.cut(&["agent"], &["c1"]);
    std::fs::write(&release, b"go")?;
    eventually("the job finishing while its agent is cut off", || {
        finished.exists()
    })
    .await?;
    let events = |s: &coordinator::state::RegistryState| {
        (
            s.machine_counter("job.event/accepted"),
            s.machine_counter("job.event/stale"),
        )
    };
    let (state, before) = fx
        .handle
        .read(|s| (s.job(&project, "job_rides_out").map(|j| j.state), events(s)));
    assert_eq!(
        state,
        Some(JobState::Running),
        "the coordinator heard through the cut"
    );

    net.heal();
    let done = wait_job(&fx.handle, &project, "job_rides_out", |j| {
        j.state == JobState::Succeeded
    })
    .await?;
    assert_eq!(done.attempts.len(), 1, "the job ran more than once");
    // Every event reported after the heal: the exit, accepted once, and nothing stale or repeated.
    let after = fx.handle.read(events);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 0),
        "events accepted and stale after the heal"
    );
    stop.cancel();
    task.await??;
    fx.coordinator.shutdown().await;
    Ok(())
}

/// Given the same seed, a coordinator mints the same ids: every id and key it draws comes through the
/// randomness it was started with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_coordinator_mints_the_same_ids_on_every_run() -> anyhow::Result<()> {
    let mut minted = Vec::new();
    for seed in [7, 7, 8] {
        let fx = start_seeded(
            true,
            coordinator::clock::system(),
            FAST_FLEET,
            std::sync::Arc::new(coordinator::random::SeededRandomness::new(seed)),
        )
        .await?;
        let token = coordinator::crypto::generate_token(&mut rand::rngs::OsRng).token;
        coordinator::bootstrap::propose(&fx.handle, &fx.keyring, &token).await?;
        minted.push(fx.handle.read(|s| {
            (
                s.default_project_id().map(String::from),
                s.tenancy().principals().keys().cloned().collect::<Vec<_>>(),
            )
        }));
        fx.coordinator.shutdown().await;
    }
    assert_eq!(minted[0], minted[1], "the same seed minted different ids");
    assert_ne!(minted[0], minted[2], "another seed minted the same ids");
    Ok(())
}
