//! Agents joining a coordinator end to end: registration, heartbeats, the leader's health monitor turning
//! silence into Unreachable then Lost, re-registration with a higher lease epoch, and an agent refused (and
//! audited) when it speaks for another node. Real certificates, QUIC and sled; the agent is the real
//! `meridian-agent` runtime.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use coordinator::fleet::FleetTimings;
use coordinator::node::{Coordinator, CoordinatorOptions, Handle, MemberNode, RaftTimings};
use coordinator::state::{AuditOutcome, NodeHealthState, NodeRecord};
use protocol::pb;
use protocol::rpc::{Method, RpcClient, RpcError, StatusCode};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const TRUST_DOMAIN: &str = "fleet-test.meridian.local";
const NODE_KEY: &str = "eu/eu1/eu-a1";

struct Fixture {
    ca: certs::CertificateAuthority,
    coordinator: Coordinator,
    handle: Handle,
    dir: tempfile::TempDir,
}

fn tls_for(
    ca: &certs::CertificateAuthority,
    identity: certs::Identity,
) -> anyhow::Result<certs::TlsIdentity> {
    let leaf = ca.issue(
        &certs::LeafRequest::new(identity, Duration::from_secs(3_600))
            .with_dns_name("localhost")
            .with_ip_address("127.0.0.1".parse()?),
    )?;
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
    certs::install_crypto_provider();
    let dir = tempfile::tempdir()?;
    let ca = certs::CertificateAuthority::generate(TRUST_DOMAIN, Duration::from_secs(86_400))?;
    let tls = tls_for(&ca, certs::Identity::coordinator(TRUST_DOMAIN, "c1")?)?;
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
        fleet: FleetTimings {
            heartbeat: Duration::from_millis(100),
            ttl: Duration::from_millis(600),
            lost_after: Duration::from_millis(1500),
            tick: Duration::from_millis(50),
        },
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
    })
}

/// Waits (re-checking every 20 ms) until the node's record satisfies `condition`.
async fn wait_node(
    handle: &Handle,
    what: &str,
    condition: impl Fn(&NodeRecord) -> bool,
) -> anyhow::Result<NodeRecord> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let record = handle.read(|s| s.node(NODE_KEY).cloned());
        if let Some(record) = &record {
            if condition(record) {
                return Ok(record.clone());
            }
        }
        if Instant::now() > deadline {
            bail!("node never became {what}; last seen {record:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn_agent(
    fx: &Fixture,
) -> anyhow::Result<(
    CancellationToken,
    tokio::task::JoinHandle<Result<(), agent::RuntimeError>>,
)> {
    let stop = CancellationToken::new();
    let opts = agent::AgentOptions {
        coordinators: vec![fx.handle.raft_addr().to_string()],
        tls: agent_tls(&fx.ca, "eu", "eu1", "eu-a1")?,
        data_dir: fx.dir.path().to_path_buf(),
        heartbeat: Duration::from_millis(100),
    };
    Ok((stop.clone(), tokio::spawn(agent::run(opts, stop))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_registers_goes_unreachable_then_lost_and_comes_back() -> anyhow::Result<()> {
    let fx = start().await?;
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

    // Heartbeats keep it Ready well past the TTL.
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        let health = fx.handle.read(|s| s.node(NODE_KEY).map(|n| n.health));
        assert_eq!(
            health,
            Some(NodeHealthState::Ready),
            "a beating node lost its health"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    stop.cancel();
    task.await??;
    wait_node(&fx.handle, "unreachable", |n| {
        n.health == NodeHealthState::Unreachable
    })
    .await?;
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
            gpu_count: 0,
        }),
        agent_version: "test".into(),
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
        allocatable: None,
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
