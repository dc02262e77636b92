//! The admin API on every member of a three-coordinator group: writes through followers, reads that see
//! writes acknowledged elsewhere, keys usable everywhere at once, and revocation biting on every
//! coordinator within a second of being acknowledged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use coordinator::api::{AdminApi, AdminApiOptions};
use coordinator::crypto::MasterKeyring;
use coordinator::node::{Coordinator, CoordinatorOptions, Handle, MemberNode, RaftTimings};
use rand::RngCore;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const TRUST_DOMAIN: &str = "api-cluster.meridian.local";
const DEADLINE: Duration = Duration::from_secs(30);

struct Member {
    base: String,
    handle: Handle,
    shutdown: CancellationToken,
    api: tokio::task::JoinHandle<()>,
    _coordinator: Coordinator,
}

async fn start_member(
    id: u64,
    ca: &certs::CertificateAuthority,
    dir: &std::path::Path,
    keyring: &Arc<MasterKeyring>,
    bootstrap: bool,
) -> anyhow::Result<Member> {
    let name = format!("c{id}");
    let identity = certs::Identity::coordinator(TRUST_DOMAIN, &name)?;
    let leaf = ca.issue(
        &certs::LeafRequest::new(identity, Duration::from_secs(3_600))
            .with_ip_address("127.0.0.1".parse()?),
    )?;
    let tls = certs::TlsIdentity::from_pem(ca.cert_pem(), &leaf.cert_pem, &leaf.key_pem)?;
    let member = MemberNode {
        name: name.clone(),
        raft_addr: String::new(),
        admin_addr: String::new(),
    };
    let (coordinator, handle) = Coordinator::start(CoordinatorOptions {
        node_id: id,
        name,
        data_dir: dir.join(format!("c{id}")),
        raft_listen: "127.0.0.1:0".parse()?,
        advertise: member.clone(),
        tls: tls.clone(),
        timings: RaftTimings {
            heartbeat_ms: 100,
            election_min_ms: 800,
            election_max_ms: 1600,
        },
        snapshot_every: 10_000,
        bootstrap: bootstrap.then(|| BTreeMap::from([(id, member)])),
        fleet: Default::default(),
        jobs: Default::default(),
        audit: Default::default(),
        keyring: None,
        approve_new_nodes: false,
        clock: coordinator::clock::system(),
        link_faults: None,
        randomness: coordinator::random::os(),
    })
    .await?;
    let api = AdminApi::bind(AdminApiOptions {
        listen: "127.0.0.1:0".parse()?,
        listener: None,
        tls: None,
        handle: handle.clone(),
        keyring: keyring.clone(),
        max_body_bytes: 64 * 1024,
        limits: Default::default(),
        project_defaults: Default::default(),
        default_key_ttl: coordinator::api::DEFAULT_KEY_TTL,
    })
    .await?;
    let base = format!("http://{}", api.local_addr());
    let shutdown = CancellationToken::new();
    let api = tokio::spawn(api.run(shutdown.clone()));
    Ok(Member {
        base,
        handle,
        shutdown,
        api,
        _coordinator: coordinator,
    })
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    project: Option<&str>,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut req = http.request(method, url).bearer_auth(token);
    if let Some(p) = project {
        req = req.header("x-meridian-project", p);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

#[tokio::test]
async fn every_coordinator_serves_the_same_registry() -> anyhow::Result<()> {
    certs::install_crypto_provider();
    let dir = tempfile::tempdir()?;
    let ca = certs::CertificateAuthority::generate(TRUST_DOMAIN, Duration::from_secs(86_400))?;
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let keyring = Arc::new(MasterKeyring::from_entries([("mk1".to_owned(), key)])?);

    let first = start_member(1, &ca, dir.path(), &keyring, true).await?;
    first
        .handle
        .wait_for(|s| s.leader == Some(1), DEADLINE)
        .await?;
    let admin = coordinator::crypto::generate_token(&mut rand::rngs::OsRng).token;
    coordinator::bootstrap::propose(&first.handle, &keyring, &admin).await?;
    let mut members = vec![first];
    for id in [2, 3] {
        let m = start_member(id, &ca, dir.path(), &keyring, false).await?;
        let node = MemberNode {
            name: format!("c{id}"),
            raft_addr: m.handle.raft_addr().to_string(),
            admin_addr: String::new(),
        };
        members[0].handle.add_member(id, node, true).await?;
        members.push(m);
    }
    for m in &members {
        m.handle
            .wait_for(|s| s.leader == Some(1) && s.members.len() == 3, DEADLINE)
            .await?;
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = |i: usize, path: &str| format!("{}{path}", members[i].base);
    use reqwest::Method;

    // A write through a follower, read back at once through the other follower.
    let (status, project) = call(
        &http,
        Method::POST,
        url(1, "/v1/projects"),
        &admin,
        None,
        Some(json!({ "name": "shared" })),
    )
    .await?;
    assert_eq!(status, 201, "{project}");
    let (status, seen) = call(
        &http,
        Method::GET,
        url(2, "/v1/projects/shared"),
        &admin,
        None,
        None,
    )
    .await?;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["id"], project["id"]);

    // A key made on the leader works on every member right away.
    let (status, created) = call(
        &http,
        Method::POST,
        url(0, "/v1/keys"),
        &admin,
        Some("shared"),
        Some(json!({ "name": "ci", "role": "editor" })),
    )
    .await?;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().context("token")?.to_owned();
    let key_id = created["key"]["id"].as_str().context("key id")?.to_owned();
    for i in [2, 1, 0] {
        let (status, me) =
            call(&http, Method::GET, url(i, "/v1/whoami"), &token, None, None).await?;
        assert_eq!(status, 200, "member {i}: {me}");
        assert_eq!(me["project"]["name"], json!("shared"));
    }

    // Revoked through a follower: every member that has applied the revocation refuses the key, the very
    // next request, whatever the clock says.
    let (status, revoked) = call(
        &http,
        Method::POST,
        url(1, &format!("/v1/keys/{key_id}:revoke")),
        &admin,
        Some("shared"),
        None,
    )
    .await?;
    assert_eq!(status, 200, "{revoked}");
    let revoked_at = members[0]
        .handle
        .log_status()
        .applied_index
        .context("the leader applied nothing")?;
    for (i, member) in members.iter().enumerate() {
        member
            .handle
            .wait_for(|s| s.applied_index >= revoked_at, Duration::from_secs(30))
            .await?;
        let (status, _) =
            call(&http, Method::GET, url(i, "/v1/whoami"), &token, None, None).await?;
        assert_eq!(status, 401, "member {i} accepts a key it knows is revoked");
    }

    // Every member reports the same cluster and an intact audit chain.
    for i in 0..3 {
        let (status, cluster) = call(
            &http,
            Method::GET,
            url(i, "/v1/cluster/status"),
            &admin,
            None,
            None,
        )
        .await?;
        assert_eq!(status, 200);
        assert_eq!(cluster["leader"], json!(1));
        assert_eq!(cluster["members"].as_array().map(Vec::len), Some(3));
        let (status, verified) = call(
            &http,
            Method::GET,
            url(i, "/v1/audit/verify"),
            &admin,
            None,
            None,
        )
        .await?;
        assert_eq!(status, 200);
        assert_eq!(verified["ok"], json!(true), "member {i}: {verified}");
    }

    for m in members {
        m.shutdown.cancel();
        let _ = m.api.await;
        m.handle.shutdown().await;
    }
    Ok(())
}
