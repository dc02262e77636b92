//! Attack tests: identity (see main.rs).
//!
//! Identities on the mesh and around the admin API that must stop working: a removed coordinator's
//! forwarded write, a denied agent's open connection, an expired certificate's connection, an agent that
//! reports more than was approved to attract jobs, certificates with host names for roles that serve none,
//! and a CLI lured to a non-coordinator server or to plain HTTP off loopback. Real `meridian` processes,
//! real QUIC and TLS with certificates of the dev CA.

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use protocol::pb;
use protocol::rpc::{Method, RpcClient, RpcError, StatusCode, CLOSE_CERT_EXPIRED, CLOSE_REVOKED};
use serde_json::{json, Value};

use crate::common::dev::DevProcess;
use crate::common::{cli, cli_json, free_tcp_port, http_status, meridian_bin, wait_for};

const CALL: Duration = Duration::from_secs(10);

fn runtime() -> tokio::runtime::Runtime {
    certs::install_crypto_provider();
    tokio::runtime::Runtime::new().expect("runtime")
}

/// Issues a certificate from the dev CA with the CLI and loads it.
fn issue(dev: &DevProcess, prefix: &Path, args: &[&str]) -> certs::TlsIdentity {
    let ca_dir = dev.dir.join("certs");
    let ca_dir = ca_dir.to_str().expect("utf-8 path");
    let prefix_text = prefix.to_str().expect("utf-8 path");
    let mut full = vec!["certs", "issue", "--ca-dir", ca_dir, "--out", prefix_text];
    full.extend_from_slice(args);
    let out = cli(&full, &[]);
    assert!(
        out.status.success(),
        "certs issue {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    load(dev, prefix)
}

fn load(dev: &DevProcess, prefix: &Path) -> certs::TlsIdentity {
    certs::TlsIdentity::load(&certs::TlsPaths {
        ca: dev.dir.join("certs/ca.pem"),
        cert: with_ext(prefix, "pem"),
        key: with_ext(prefix, "key"),
    })
    .expect("load the issued certificate")
}

fn with_ext(prefix: &Path, ext: &str) -> PathBuf {
    PathBuf::from(format!("{}.{ext}", prefix.display()))
}

fn env(dev: &DevProcess) -> Vec<(&'static str, String)> {
    vec![
        ("MERIDIAN_ADDR", dev.addr()),
        ("MERIDIAN_TOKEN", dev.token.clone()),
    ]
}

fn as_env<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A raw QUIC connection to the mesh with `tls`, so a test can watch it being closed.
async fn connect(tls: &certs::TlsIdentity, addr: &str) -> Result<quinn::Connection, String> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(
        tls.mtls_client_config(&[protocol::rpc::ALPN]),
    )
    .map_err(|e| e.to_string())?;
    let config = quinn::ClientConfig::new(Arc::new(crypto));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("literal"))
        .map_err(|e| e.to_string())?;
    let remote = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    endpoint
        .connect_with(config, remote, "localhost")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())
}

/// One `Ping` on a raw connection; the identity the server saw, or why it failed.
async fn ping(conn: &quinn::Connection) -> Result<String, String> {
    use prost::Message;
    let request = pb::RpcRequest {
        method: Method::Ping.id(),
        timeout_ms: 5_000,
        body: bytes::Bytes::new(),
    };
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        protocol::frame::write_frame(&mut send, &request.encode_to_vec())
            .await
            .map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let payload = protocol::frame::read_frame(&mut recv, protocol::DEFAULT_MAX_FRAME)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no answer")?;
        let response = pb::RpcResponse::decode(&payload[..]).map_err(|e| e.to_string())?;
        match response.result {
            Some(pb::rpc_response::Result::Ok(body)) => pb::PingResponse::decode(body)
                .map(|r| r.identity)
                .map_err(|e| e.to_string()),
            other => Err(format!("{other:?}")),
        }
    };
    tokio::time::timeout(CALL, exchange)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// How `conn` was closed, waiting at most `within`.
async fn close_code(conn: &quinn::Connection, within: Duration) -> Option<quinn::VarInt> {
    match tokio::time::timeout(within, conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => Some(close.error_code),
        Ok(other) => panic!("closed without an application code: {other:?}"),
        Err(_) => None,
    }
}

/// A forwarded write, as one coordinator hands a prepared command to the leader.
fn forward(command: &Value) -> bytes::Bytes {
    protocol::rpc::encode_message(&pb::ForwardWriteRequest {
        command: bytes::Bytes::from(command.to_string()),
    })
}

/// A coordinator process from a config file; killed when dropped.
struct CoordinatorProcess(Child);

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_removed_coordinator_cannot_forward_writes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    let env = env(&dev);
    let c2 = issue(
        &dev,
        &tmp.path().join("c2"),
        &["--role", "coordinator", "--name", "c2", "--ip", "127.0.0.1"],
    );

    // A second coordinator joins the dev group as a learner, and is removed again.
    // Both listeners on port 0: c2 names the ports it got in its endpoints.json.
    let config = tmp.path().join("c2.toml");
    let path = |p: PathBuf| p.display().to_string();
    std::fs::write(
        &config,
        format!(
            "node_id = 2\nname = \"c2\"\ndata_dir = \"{data}\"\n\n[raft]\nlisten = \"127.0.0.1:0\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntls = false\n\n[tls]\nca = \"{ca}\"\ncert = \"{cert}\"\n\
             key = \"{key}\"\n\n[secrets]\nmaster_key_file = \"{keys}\"\n",
            data = path(tmp.path().join("c2-data")),
            ca = path(dev.dir.join("certs/ca.pem")),
            cert = path(tmp.path().join("c2.pem")),
            key = path(tmp.path().join("c2.key")),
            keys = path(dev.dir.join("master.keys")),
        ),
    )
    .expect("write c2.toml");
    let process = CoordinatorProcess(
        Command::new(meridian_bin())
            .args(["coordinator", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start c2"),
    );
    let [admin2, raft2] = crate::common::endpoints(&tmp.path().join("c2-data"), ["admin", "raft"]);
    wait_for("c2 to listen", Duration::from_secs(60), || {
        (http_status(&admin2, "/healthz") == Some(200)).then_some(())
    });
    let added = cli(
        &[
            "cluster",
            "add",
            "--id",
            "2",
            "--name",
            "c2",
            "--raft-addr",
            &raft2,
            "--admin-addr",
            &admin2,
            "--learner",
        ],
        &as_env(&env),
    );
    assert!(
        added.status.success(),
        "cluster add: {}",
        String::from_utf8_lossy(&added.stderr)
    );

    let rt = runtime();
    let client = rt.block_on(async { RpcClient::new(&c2).expect("client") });
    let principal = cli_json(&["whoami", "-o", "json"], &as_env(&env));
    let admin_id = principal["principal"]["id"]
        .as_str()
        .expect("whoami names the principal")
        .to_owned();
    let deny = |serial: &str, request: &str| {
        json!({
            "at_ms": 1,
            "actor": { "principal_id": admin_id, "name": "platform-admin" },
            "op": { "deny_identity": { "kind": "serial", "value": serial, "reason": "" } },
            "request_id": request,
        })
    };
    // While it is a member, its forward is a coordinator's like any other.
    rt.block_on(client.call(
        &dev.raft,
        Method::ForwardWrite,
        forward(&deny("c0ffee", "r1")),
        CALL,
    ))
    .expect("a member forwards");
    let listed = dev.request("GET", "/v1/denied-identities", Some(&dev.token), None, None);
    assert!(listed.1.to_string().contains("c0ffee"), "{:?}", listed.1);

    let removed = cli(&["cluster", "remove", "2"], &as_env(&env));
    assert!(
        removed.status.success(),
        "cluster remove: {}",
        String::from_utf8_lossy(&removed.stderr)
    );
    drop(process);

    // Its certificate is still valid, and it still has the group's CA and keys: it forges a platform-admin
    // key for itself and a deny-list entry, forwarded to the leader as coordinators do.
    let token = coordinator::crypto::generate_token(&mut rand::rngs::OsRng);
    let default_project = dev
        .request("GET", "/v1/projects", Some(&dev.token), None, None)
        .1["items"]
        .as_array()
        .and_then(|items| items.iter().find(|p| p["name"] == "default"))
        .and_then(|p| p["id"].as_str())
        .expect("the default project")
        .to_owned();
    let forged_key = json!({
        "at_ms": 2,
        "actor": { "principal_id": admin_id, "name": "platform-admin" },
        "op": { "create_key": {
            "key_id": token.key_id, "name": "backdoor", "project_id": default_project,
            "hash": token.hash, "last4": token.last4, "expires_at": null,
            "principal": { "existing": { "principal_id": admin_id } }, "role": null,
        } },
        "request_id": "r2",
    });
    for command in [forged_key, deny("bad0", "r3")] {
        let answer =
            rt.block_on(client.call(&dev.raft, Method::ForwardWrite, forward(&command), CALL));
        match answer {
            Err(RpcError::Remote(status)) => {
                assert_eq!(status.code, StatusCode::PermissionDenied, "{status}");
                assert!(status.message.contains("not a member"), "{status}");
            }
            other => panic!("a removed coordinator's forward was not refused: {other:?}"),
        }
    }
    let (status, _) = dev.request("GET", "/v1/whoami", Some(&token.token), None, None);
    assert_eq!(status, 401, "the forged key works");
    let listed = dev.request("GET", "/v1/denied-identities", Some(&dev.token), None, None);
    assert!(!listed.1.to_string().contains("bad0"), "{:?}", listed.1);

    // Both membership changes are in the audit log, by the operator who made them.
    let audit = cli_json(
        &["audit", "list", "--limit", "1000", "-o", "json"],
        &as_env(&env),
    );
    let text = audit.to_string();
    for action in ["cluster.member.add", "cluster.member.remove"] {
        assert!(text.contains(action), "{action} is not audited: {text}");
    }
}

#[test]
fn a_denied_agent_is_cut_off_mid_connection() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    let env = env(&dev);
    // A stolen agent identity of the dev cluster.
    let stolen = issue(
        &dev,
        &tmp.path().join("spy"),
        &[
            "--role",
            "agent",
            "--region",
            "local",
            "--cluster",
            "dev",
            "--name",
            "spy",
        ],
    );
    let rt = runtime();
    let conn = rt.block_on(connect(&stolen, &dev.raft)).expect("handshake");
    let seen = rt.block_on(ping(&conn)).expect("served before the denial");
    assert_eq!(seen, stolen.identity().uri());

    let denied = cli(
        &["node", "deny", "local/dev/spy", "--reason", "stolen"],
        &as_env(&env),
    );
    assert!(
        denied.status.success(),
        "node deny: {}",
        String::from_utf8_lossy(&denied.stderr)
    );
    // The open connection is closed by the server within seconds, without the attacker calling.
    let started = Instant::now();
    let code = rt.block_on(close_code(&conn, Duration::from_secs(5)));
    assert_eq!(
        code,
        Some(CLOSE_REVOKED),
        "the denied identity kept its connection for {:?}",
        started.elapsed()
    );
    // A new connection is refused on its first call, through the RPC client too.
    let again = rt.block_on(connect(&stolen, &dev.raft)).expect("handshake");
    assert!(rt.block_on(ping(&again)).is_err());
    assert_eq!(rt.block_on(close_code(&again, CALL)), Some(CLOSE_REVOKED));
    let through_client = rt.block_on(async {
        RpcClient::new(&stolen)
            .expect("client")
            .call(&dev.raft, Method::Ping, bytes::Bytes::new(), CALL)
            .await
    });
    assert!(
        matches!(through_client, Err(RpcError::Refused(_))),
        "{through_client:?}"
    );
    let listed = cli_json(&["certs", "deny-list", "-o", "json"], &as_env(&env));
    assert!(listed.to_string().contains("agent/spy"), "{listed}");

    // The refusal is the deny-list's: allowed again, the same certificate is served.
    let undenied = cli(&["node", "undeny", "local/dev/spy"], &as_env(&env));
    assert!(undenied.status.success());
    let back = rt.block_on(connect(&stolen, &dev.raft)).expect("handshake");
    wait_for("the undenied identity to be served", CALL, || {
        rt.block_on(ping(&back)).ok()
    });
}

#[test]
fn an_expired_certificate_loses_its_connection() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    let ca = certs::CertificateAuthority::load(
        &dev.dir.join("certs/ca.pem"),
        &dev.dir.join("certs/ca.key"),
    )
    .expect("the dev CA");
    let identity =
        certs::Identity::agent(ca.trust_domain(), "local", "dev", "brief").expect("identity");
    // Valid for an hour and three seconds, of which the hour is over.
    let leaf = ca
        .issue(
            &certs::LeafRequest::new(identity, Duration::from_secs(3_603))
                .valid_from(SystemTime::now() - Duration::from_secs(3_600)),
        )
        .expect("issue");
    let tls =
        certs::TlsIdentity::from_pem(ca.cert_pem(), &leaf.cert_pem, &leaf.key_pem).expect("tls");
    let rt = runtime();
    let conn = rt.block_on(connect(&tls, &dev.raft)).expect("handshake");
    rt.block_on(ping(&conn)).expect("served while valid");
    // Busy until the end: only the expiry may close it (not the idle timeout).
    let closed = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while conn.close_reason().is_none() && tokio::time::Instant::now() < deadline {
            let _ = ping(&conn).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        conn.close_reason()
    });
    match closed {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(close.error_code, CLOSE_CERT_EXPIRED)
        }
        other => panic!("the expired certificate kept its connection: {other:?}"),
    }
    // And it cannot come back.
    let again = rt.block_on(async {
        match connect(&tls, &dev.raft).await {
            Ok(conn) => ping(&conn).await.map(|_| ()),
            Err(e) => Err(e),
        }
    });
    assert!(again.is_err(), "an expired certificate was served again");
}

#[test]
fn an_agent_reporting_more_than_was_approved_is_quarantined_and_gets_no_jobs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    let env = env(&dev);
    let node = wait_for(
        "the dev node to be approved",
        Duration::from_secs(30),
        || {
            let nodes = cli_json(&["node", "list", "-o", "json"], &as_env(&env));
            let node = nodes.as_array()?.first()?.clone();
            (node["admission"] == "approved" && node["health"] == "ready").then_some(node)
        },
    );
    let real_cpus = node["cpu_cores"].as_u64().expect("cpu_cores");

    // Someone holding the dev agent's key registers its node with far more than it has.
    let stolen = load(&dev, &dev.dir.join("certs/agent"));
    let rt = runtime();
    let lure = pb::NodeRegistration {
        node: "dev".into(),
        region: "local".into(),
        cluster: "dev".into(),
        resources: Some(pb::NodeResources {
            cpu_cores: 1024,
            memory_bytes: 4 << 40,
            gpu_count: 8,
            gpus: (0..8)
                .map(|i| pb::GpuDevice {
                    uuid: format!("GPU-fake-{i}"),
                    index: i,
                    model: "NVIDIA H200".into(),
                    memory_mib: 143_771,
                    healthy: true,
                })
                .collect(),
        }),
        agent_version: "lure".into(),
        labels: [("tier".to_owned(), "gold".to_owned())].into(),
        rpc_addr: "127.0.0.1:9".into(),
        ..Default::default()
    };
    rt.block_on(async {
        RpcClient::new(&stolen)
            .expect("client")
            .call_message::<_, pb::NodeRegistrationAck>(
                &dev.raft,
                Method::AgentRegister,
                &lure,
                CALL,
            )
            .await
    })
    .expect("the registration itself is accepted, and judged");

    let quarantined = wait_for("the node to be quarantined", CALL, || {
        let nodes = cli_json(&["node", "list", "-o", "json"], &as_env(&env));
        let node = nodes.as_array()?.first()?.clone();
        (node["admission"] == "quarantined").then_some(node)
    });
    let reason = quarantined["admission_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("1024 CPU cores reported, {real_cpus} approved")),
        "{reason}"
    );
    assert!(reason.contains("GPU GPU-fake-0"), "{reason}");
    assert!(reason.contains("label tier=gold"), "{reason}");
    let table = cli(&["node", "list"], &as_env(&env));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("quarantined"), "{table}");

    // Jobs that only the lie could hold, and jobs the node really could run, both wait: the scheduler has
    // looked at each (it says why it waits) and placed neither.
    for (args, reason) in [
        (
            &[
                "job", "run", "--gpus", "8", "-o", "json", "--", "echo", "lured",
            ][..],
            "no node has 8 GPUs",
        ),
        (
            &["job", "run", "-o", "json", "--", "echo", "small"][..],
            "not admitted",
        ),
    ] {
        let job = cli_json(args, &as_env(&env));
        let id = job["id"].as_str().expect("job id").to_owned();
        let waiting = wait_for("the job's pending reason", CALL, || {
            let job = cli_json(&["job", "status", &id, "-o", "json"], &as_env(&env));
            job["pending_reason"]
                .as_str()
                .is_some_and(|r| r.contains(reason))
                .then_some(job)
        });
        assert_eq!(waiting["state"], "pending", "{waiting}");
        assert_eq!(waiting["attempts"], json!([]), "{waiting}");
    }
}

#[test]
fn certs_issue_refuses_host_names_for_agents_and_unbounded_lifetimes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca_dir = tmp.path().join("ca");
    let init = cli(
        &[
            "certs",
            "init",
            "--trust-domain",
            "attack.test",
            "--out",
            ca_dir.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert!(init.status.success());
    let ca = ca_dir.to_str().expect("utf-8");
    let out = tmp.path().join("leaf");
    let out = out.to_str().expect("utf-8");
    let agent = [
        "--role",
        "agent",
        "--region",
        "eu",
        "--cluster",
        "a",
        "--name",
        "n1",
    ];
    for (extra, expect) in [
        (&["--dns", "admin.attack.test"][..], "--dns/--ip"),
        (&["--ip", "127.0.0.1"][..], "--dns/--ip"),
        (
            &["--hours", "9529"][..],
            "exceeds the maximum lifetime of 397 days",
        ),
        (&["--hours", "24", "--max-days", "826"][..], "--max-days"),
    ] {
        let args = [
            &["certs", "issue", "--ca-dir", ca, "--out", out][..],
            &agent[..],
            extra,
        ]
        .concat();
        let refused = cli(&args, &[]);
        assert!(!refused.status.success(), "{extra:?} was issued");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(expect), "{extra:?}: {stderr}");
        assert!(
            !Path::new(&format!("{out}.pem")).exists(),
            "{extra:?} wrote a certificate"
        );
    }
    // An operator certificate may not name hosts either; a coordinator's and a gateway's may.
    let operator = cli(
        &[
            "certs",
            "issue",
            "--ca-dir",
            ca,
            "--out",
            out,
            "--role",
            "operator",
            "--name",
            "eve",
            "--dns",
            "x.attack.test",
        ],
        &[],
    );
    assert!(!operator.status.success());
    let coordinator = cli(
        &[
            "certs",
            "issue",
            "--ca-dir",
            ca,
            "--out",
            out,
            "--role",
            "coordinator",
            "--name",
            "c1",
            "--dns",
            "c1.attack.test",
        ],
        &[],
    );
    assert!(
        coordinator.status.success(),
        "{}",
        String::from_utf8_lossy(&coordinator.stderr)
    );
}

/// A one-connection HTTPS server presenting `cert`/`key`; records whether a request reached it and answers
/// `whoami` with a made-up principal.
fn https_server(cert: &Path, key: &Path) -> (String, Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("cert")
        .collect::<Result<_, _>>()
        .expect("cert");
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server config");
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let reached = Arc::new(AtomicBool::new(false));
    let seen = reached.clone();
    let thread = std::thread::spawn(move || {
        let Ok((tcp, _)) = listener.accept() else {
            return;
        };
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
        let Ok(conn) = rustls::ServerConnection::new(config) else {
            return;
        };
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut buf = [0u8; 4096];
        match tls.read(&mut buf) {
            Ok(n) if n > 0 => {
                seen.store(true, Ordering::SeqCst);
                // A whole `whoami` answer: the CLI reads replies into the API's types.
                let body = concat!(
                    r#"{"principal":{"id":"sa_fake","kind":"service_account","name":"fake","#,
                    r#""project_id":null,"created_at":1,"disabled":false},"#,
                    r#""key":{"id":"k1","prefix":"mrd_k1_","principal_id":"sa_fake","project_id":"p1","#,
                    r#""name":"fake","last4":"abcd","created_at":1,"expires_at":null,"revoked_at":null,"#,
                    r#""roles":null,"project_scoped":false},"#,
                    r#""project":{"id":"p1","name":"default","description":"","created_at":1},"#,
                    r#""bindings":[]}"#
                );
                let _ = write!(
                    tls,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.flush();
            }
            _ => {}
        }
    });
    (addr, reached, thread)
}

#[test]
fn the_cli_refuses_an_admin_api_that_is_not_a_coordinator() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    let ca = dev.dir.join("certs/ca.pem").display().to_string();
    // A gateway certificate of the same CA, naming the host the CLI connects to.
    issue(
        &dev,
        &tmp.path().join("gw"),
        &[
            "--role",
            "gateway",
            "--region",
            "local",
            "--name",
            "gw",
            "--ip",
            "127.0.0.1",
        ],
    );
    let (addr, reached, server) =
        https_server(&tmp.path().join("gw.pem"), &tmp.path().join("gw.key"));
    let url = format!("https://{addr}");
    let refused = cli(
        &["whoami"],
        &[
            ("MERIDIAN_ADDR", &url),
            ("MERIDIAN_TOKEN", &dev.token),
            ("MERIDIAN_CACERT", &ca),
        ],
    );
    assert!(
        !refused.status.success(),
        "the CLI talked to a gateway as the admin API"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("gateway/gw") && stderr.contains("coordinator"),
        "{stderr}"
    );
    let _ = server.join();
    assert!(
        !reached.load(Ordering::SeqCst),
        "the token reached a non-coordinator server"
    );

    // The same server with the dev coordinator's certificate is talked to: the refusal was the role.
    let (addr, reached, server) = https_server(
        &dev.dir.join("certs/coordinator.pem"),
        &dev.dir.join("certs/coordinator.key"),
    );
    let url = format!("https://{addr}");
    let answered = cli(
        &["whoami", "-o", "json"],
        &[
            ("MERIDIAN_ADDR", &url),
            ("MERIDIAN_TOKEN", &dev.token),
            ("MERIDIAN_CACERT", &ca),
        ],
    );
    let _ = server.join();
    assert!(
        reached.load(Ordering::SeqCst),
        "{}",
        String::from_utf8_lossy(&answered.stderr)
    );
    assert!(
        answered.status.success(),
        "{}",
        String::from_utf8_lossy(&answered.stderr)
    );
}

/// This machine's address on the route towards a public address (no packet is sent), when it has one.
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn the_cli_never_sends_a_token_over_plain_http_off_loopback() {
    let listener = TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let host = non_loopback_ip().map_or_else(|| "192.0.2.1".to_owned(), |ip| ip.to_string());
    let addr = format!("http://{host}:{port}");
    let started = Instant::now();
    let refused = cli(
        &["whoami"],
        &[
            ("MERIDIAN_ADDR", &addr),
            ("MERIDIAN_TOKEN", "mrd_abc_secretsecretsecret"),
        ],
    );
    assert_eq!(
        refused.status.code(),
        Some(2),
        "exit code for refusing to send the token"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("plain HTTP"), "{stderr}");
    assert!(
        !stderr.contains("secretsecret"),
        "the token is echoed: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it tried to connect first"
    );
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the CLI connected to {addr}"
    );
    // Loopback stays allowed (that is `meridian dev`).
    let loopback = cli(
        &["whoami"],
        &[
            (
                "MERIDIAN_ADDR",
                &format!("http://127.0.0.1:{}", free_tcp_port()),
            ),
            ("MERIDIAN_TOKEN", "mrd_abc_x"),
        ],
    );
    let stderr = String::from_utf8_lossy(&loopback.stderr);
    assert!(!stderr.contains("plain HTTP"), "{stderr}");
}
