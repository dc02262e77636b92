//! The three-coordinator topology from `deploy/local-cluster.sh`, as real processes with TLS admin APIs and
//! the QUIC mesh: writes through every member, a leader SIGKILLed without losing an acknowledged write, the
//! old leader restarted and caught up, and wrong identities refused at the mesh.

mod common;

use std::time::Duration;

use common::cluster::{identity_from, LocalCluster};
use common::*;
use serde_json::Value;

/// Ports of this test's cluster are shifted so it can run beside `meridian dev` and other tests.
const PORT_OFFSET: u16 = 400;

#[test]
fn three_coordinators_survive_a_leader_kill() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cluster = LocalCluster::new(tmp.path().join("mc"), PORT_OFFSET);
    cluster.ok(&["up", "--regions", "2"]);
    mesh_refuses_wrong_identities(&cluster);
    every_key_file_is_private(&tmp.path().join("mc"));

    let status: Value =
        serde_json::from_str(&cluster.ok(&["status", "-o", "json"])).expect("status JSON");
    let procs = status.as_array().expect("array");
    assert_eq!(
        procs.len(),
        7,
        "three coordinators and two agents in each of two regions: {status}"
    );
    for p in procs {
        assert_eq!(p["state"], "running", "{p}");
        assert!(p["pid"].is_u64(), "{p}");
        assert!(p["region"].as_str().is_some(), "{p}");
        match p["role"].as_str() {
            Some("coordinator") => assert!(p["admin_addr"].as_str().is_some(), "{p}"),
            Some("agent") => assert!(p["admin_addr"].is_null(), "{p}"),
            other => panic!("unexpected role {other:?}"),
        }
    }

    // Every agent registers its node; a killed agent's node becomes unreachable.
    let node_health = |key: &str| -> Option<String> {
        let nodes = cluster.cli_on(1, &["node", "list"]).ok()?;
        let node = nodes.as_array()?.iter().find(|n| n["key"] == key)?.clone();
        node["health"].as_str().map(String::from)
    };
    for key in [
        "eu/eu1/eu-a1",
        "eu/eu1/eu-a2",
        "us/us1/us-a1",
        "us/us1/us-a2",
    ] {
        wait_for(
            "an agent's node to be ready",
            Duration::from_secs(30),
            || (node_health(key).as_deref() == Some("ready")).then_some(()),
        );
    }
    cluster.ok(&["kill", "us-a2"]);
    wait_for(
        "the killed agent's node to be unreachable",
        Duration::from_secs(30),
        || (node_health("us/us1/us-a2").as_deref() == Some("unreachable")).then_some(()),
    );

    // Writes through every member (followers forward to the leader).
    let mut acknowledged = Vec::new();
    for i in 1..=3u16 {
        let name = format!("p-via-c{i}");
        let p = wait_for("a write through a member", Duration::from_secs(20), || {
            cluster.cli_on(i, &["project", "create", &name]).ok()
        });
        assert_eq!(p["name"].as_str(), Some(name.as_str()));
        acknowledged.push(name);
    }

    let leader = cluster.leader(&[1, 2, 3]);
    cluster.ok(&["kill", &format!("c{leader}")]);
    let survivors: Vec<u16> = (1..=3).filter(|&i| i != leader).collect();
    let new_leader = cluster.leader(&survivors);
    assert_ne!(new_leader, leader);

    // Every acknowledged write is still there, and new writes are accepted.
    for &i in &survivors {
        let listed = wait_for("projects on a survivor", Duration::from_secs(20), || {
            cluster.cli_on(i, &["project", "list"]).ok()
        });
        let names: Vec<String> = listed
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|p| p["name"].as_str().map(String::from))
            .collect();
        for name in &acknowledged {
            assert!(
                names.contains(name),
                "c{i} lost acknowledged project {name}: {names:?}"
            );
        }
    }
    let after = wait_for("a write after failover", Duration::from_secs(20), || {
        cluster
            .cli_on(survivors[0], &["project", "create", "after-failover"])
            .ok()
    });
    assert_eq!(after["name"], "after-failover");

    // The killed member restarts on its data and catches up.
    cluster.ok(&["start", &format!("c{leader}")]);
    wait_for(
        "the restarted member to catch up",
        Duration::from_secs(30),
        || {
            let listed = cluster.cli_on(leader, &["project", "list"]).ok()?;
            listed
                .as_array()?
                .iter()
                .any(|p| p["name"] == "after-failover")
                .then_some(())
        },
    );

    cluster.ok(&["down"]);
    let status: Value =
        serde_json::from_str(&cluster.ok(&["status", "-o", "json"])).expect("status JSON");
    assert!(status
        .as_array()
        .expect("array")
        .iter()
        .all(|p| p["state"] == "stopped"));
}

/// The coordinators' QUIC mesh accepts an operator's ping, refuses an agent calling a coordinator-only RPC,
/// and refuses a certificate from another CA at the handshake.
fn mesh_refuses_wrong_identities(cluster: &LocalCluster) {
    use protocol::rpc::{Method, RpcClient, RpcError, StatusCode};
    certs::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let work = cluster.dir.join("identities");
    std::fs::create_dir_all(&work).expect("mkdir");
    let ca_dir = cluster.dir.join("certs");
    let raft_addr = cluster.raft_addr(1);
    let ping = protocol::rpc::encode_message(&protocol::pb::PingRequest {});
    let timeout = Duration::from_secs(10);

    let operator = identity_from(
        &ca_dir,
        &work.join("alice"),
        &["--role", "operator", "--name", "alice"],
    );
    let agent = identity_from(
        &ca_dir,
        &work.join("eu-a1"),
        &[
            "--role",
            "agent",
            "--region",
            "eu",
            "--cluster",
            "eu1",
            "--name",
            "eu-a1",
        ],
    );
    let other_ca = work.join("other-ca");
    let init = cli(
        &[
            "certs",
            "init",
            "--trust-domain",
            "local.meridian",
            "--out",
            &other_ca.display().to_string(),
        ],
        &[],
    );
    assert!(init.status.success());
    let stranger = identity_from(
        &other_ca,
        &work.join("mallory"),
        &["--role", "operator", "--name", "mallory"],
    );

    rt.block_on(async {
        let client = RpcClient::new(&operator).expect("client");
        let answer = client
            .call(&raft_addr, Method::Ping, ping.clone(), timeout)
            .await;
        assert!(answer.is_ok(), "an operator of our CA may ping: {answer:?}");

        let client = RpcClient::new(&agent).expect("client");
        let vote = client
            .call(&raft_addr, Method::RaftVote, ping.clone(), timeout)
            .await;
        match vote {
            Err(RpcError::Remote(status)) => {
                assert_eq!(status.code, StatusCode::PermissionDenied, "{status:?}")
            }
            other => panic!("an agent calling RaftVote must be refused, got {other:?}"),
        }

        let client = RpcClient::new(&stranger).expect("client");
        let refused = client
            .call(&raft_addr, Method::Ping, ping.clone(), timeout)
            .await;
        assert!(
            matches!(refused, Err(RpcError::Refused(_) | RpcError::Transport(_))),
            "a certificate from another CA must be refused: {refused:?}"
        );
    });
}

/// The master keyring, the admin token and every private key the script wrote are `0600`, and no process the
/// script left running carries the admin token on its command line.
fn every_key_file_is_private(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    fn keys_under(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                keys_under(&path, found);
            } else if path.extension().is_some_and(|e| e == "key") {
                found.push(path);
            }
        }
    }
    let mut files = vec![dir.join("master.keys"), dir.join("admin.token")];
    keys_under(&dir.join("certs"), &mut files);
    assert!(files.len() > 3, "{files:?}");
    for file in &files {
        let mode = std::fs::metadata(file)
            .expect("key file")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", file.display());
    }
    let token = std::fs::read_to_string(dir.join("admin.token")).expect("token");
    let token = token.trim();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            assert!(
                !String::from_utf8_lossy(&cmdline).contains(token),
                "the admin token is on the command line of {}",
                entry.path().display()
            );
        }
    }
}
