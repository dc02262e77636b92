//! Jobs on the two-region topology from `deploy/local-cluster.sh` (three coordinators, agents eu-a1, eu-a2,
//! us-a1, us-a2 as real processes): jobs land and finish with their logs; a GPU job waits with a reason; a
//! cancel ends a job that ignores SIGTERM; a gang job runs all its replicas or none, and one failing replica
//! stops the others; an agent restarted mid-job re-adopts it without running it twice;
//! a killed agent's job and a killed region's job are rescheduled and complete once; running jobs outlive
//! every coordinator being down for 30 s; an agent certificate cannot report for another cluster.

mod common;

use std::path::Path;
use std::time::Duration;

use common::cluster::{identity_from, LocalCluster};
use common::*;
use serde_json::Value;

/// Ports of this test's cluster are shifted so it can run beside the other process tests.
const PORT_OFFSET: u16 = 500;
/// How long a job may take to reach a state in these tests (placement, start and report included).
const JOB_DEADLINE: Duration = Duration::from_secs(60);

fn cluster(dir: &Path) -> LocalCluster {
    let mut cluster = LocalCluster::new(dir.join("fleet"), PORT_OFFSET);
    // Fast failure detection: unreachable after 1 s of silence, lost 1.5 s later.
    cluster.env = [
        ("MERIDIAN_FLEET_HEARTBEAT_MS", "200"),
        ("MERIDIAN_FLEET_TTL_MS", "1000"),
        ("MERIDIAN_FLEET_LOST_AFTER_MS", "1500"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    cluster
}

/// Submits a job through member 1 and returns its id.
fn run(cluster: &LocalCluster, flags: &[&str], command: &[&str]) -> String {
    // `-o json` goes before `--`: everything after it is the job's command line.
    let mut args = vec!["job", "run", "-o", "json"];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend_from_slice(command);
    let job = wait_for("a job submission", Duration::from_secs(20), || {
        let out = cluster.cli_raw(1, &args);
        if !out.status.success() {
            eprintln!("job run: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        serde_json::from_slice::<Value>(&out.stdout).ok()
    });
    job["id"].as_str().expect("job id").to_owned()
}

fn status(cluster: &LocalCluster, id: &str) -> Option<Value> {
    [1, 2, 3]
        .iter()
        .find_map(|&i| cluster.cli_on(i, &["job", "status", id]).ok())
}

/// Waits until the job's state satisfies `accept`, returning the job.
fn wait_state(cluster: &LocalCluster, id: &str, what: &str, accept: &[&str]) -> Value {
    wait_for(what, JOB_DEADLINE, || {
        let job = status(cluster, id)?;
        let state = job["state"].as_str()?;
        accept.contains(&state).then_some(job)
    })
}

/// The node key (`region/cluster/node`) of the job's current or last attempt.
fn node_of(job: &Value) -> String {
    job["node"].as_str().unwrap_or_default().to_owned()
}

fn attempts(job: &Value) -> Vec<Value> {
    job["attempts"].as_array().cloned().unwrap_or_default()
}

/// The agent process name of a node key (`eu/eu1/eu-a1` → `eu-a1`).
fn agent_name(node_key: &str) -> &str {
    node_key.rsplit('/').next().unwrap_or(node_key)
}

fn logs(cluster: &LocalCluster, id: &str) -> String {
    let out = cluster.cli_raw(1, &["job", "logs", id]);
    assert!(
        out.status.success(),
        "job logs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The job's output so far, or `None` while there is none to read.
fn try_logs(cluster: &LocalCluster, id: &str) -> Option<String> {
    let out = cluster.cli_raw(1, &["job", "logs", id]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn jobs_survive_agents_regions_and_coordinators_failing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cluster = cluster(tmp.path());
    cluster.ok(&["up", "--regions", "2"]);
    for key in [
        "eu/eu1/eu-a1",
        "eu/eu1/eu-a2",
        "us/us1/us-a1",
        "us/us1/us-a2",
    ] {
        wait_for("every agent's node to be ready", JOB_DEADLINE, || {
            let nodes = cluster.cli_on(1, &["node", "list"]).ok()?;
            nodes
                .as_array()?
                .iter()
                .any(|n| n["key"] == key && n["health"] == "ready")
                .then_some(())
        });
    }

    // `cluster status` shows the fleet per region and cluster.
    let overview = cluster
        .cli_on(1, &["cluster", "status"])
        .expect("cluster status");
    let sites: Vec<(String, String, u64, u64)> = overview["sites"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["region"].as_str().unwrap_or_default().to_owned(),
                s["cluster"].as_str().unwrap_or_default().to_owned(),
                s["nodes"].as_u64().unwrap_or_default(),
                s["ready"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        sites,
        [
            ("eu".to_owned(), "eu1".to_owned(), 2, 2),
            ("us".to_owned(), "us1".to_owned(), 2, 2)
        ],
        "{overview}"
    );

    // (g) An agent certificate of cluster eu1 cannot report or sync for a node of cluster us1.
    wrong_cluster_is_refused(&cluster);

    // (a) Jobs land on nodes that fit, succeed, and their output is readable.
    let hello = run(
        &cluster,
        &[],
        &["sh", "-c", "echo hello from $MERIDIAN_JOB_ID"],
    );
    let done = wait_state(&cluster, &hello, "a job to succeed", &["succeeded"]);
    assert_eq!(attempts(&done).len(), 1, "{done}");
    assert_eq!(done["exit_code"], 0, "{done}");
    assert_eq!(logs(&cluster, &hello).trim(), format!("hello from {hello}"));
    let in_us = run(&cluster, &["--region", "us"], &["true"]);
    let done = wait_state(&cluster, &in_us, "a job in us to succeed", &["succeeded"]);
    assert!(node_of(&done).starts_with("us/"), "{done}");
    let failing = run(&cluster, &[], &["sh", "-c", "exit 3"]);
    let done = wait_state(&cluster, &failing, "a job to fail", &["failed"]);
    assert_eq!(done["exit_code"], 3, "{done}");
    // `--wait` exits 0 only on success.
    let waited = cluster.cli_raw(1, &["job", "run", "--wait", "--", "true"]);
    assert!(waited.status.success(), "{waited:?}");

    // A terminal session into a job in the other region, through a coordinator's TLS admin API (the
    // WebSocket over HTTPS with the cluster's CA) and the mesh to that region's agent.
    let far = run(
        &cluster,
        &["--region", "us"],
        &["sh", "-c", "echo ready; sleep 120"],
    );
    wait_state(&cluster, &far, "a job in us to run", &["running"]);
    let session = cluster.cli_raw(
        1,
        &[
            "job",
            "exec",
            "-t",
            &far,
            "--",
            "sh",
            "-c",
            "echo T$((1+1))LS; exit 4",
        ],
    );
    assert_eq!(session.status.code(), Some(4), "{session:?}");
    assert!(
        String::from_utf8_lossy(&session.stdout).contains("T2LS"),
        "{session:?}"
    );
    let cancelled = cluster.cli_raw(1, &["job", "cancel", &far]);
    assert!(cancelled.status.success(), "{cancelled:?}");
    let waited = cluster.cli_raw(1, &["job", "run", "--wait", "--", "false"]);
    assert!(!waited.status.success(), "{waited:?}");

    // (b) A GPU job is refused by nodes without GPUs and waits with a reason.
    let gpu = run(&cluster, &["--gpus", "1"], &["nvidia-smi"]);
    let pending = wait_for("a pending reason", JOB_DEADLINE, || {
        let job = status(&cluster, &gpu)?;
        job["pending_reason"].as_str().map(|_| job.clone())
    });
    assert_eq!(pending["state"], "pending", "{pending}");
    let reason = pending["pending_reason"].as_str().unwrap_or_default();
    assert!(reason.to_lowercase().contains("gpu"), "{reason}");
    cluster.cli_on(1, &["job", "cancel", &gpu]).expect("cancel");
    wait_state(
        &cluster,
        &gpu,
        "the GPU job to be cancelled",
        &["cancelled"],
    );

    // (h) Cancel ends a job that ignores SIGTERM (SIGKILL after the grace period).
    let stubborn = run(
        &cluster,
        &["--cancel-grace", "1s"],
        &[
            "sh",
            "-c",
            "trap '' TERM; echo started; while true; do sleep 1; done",
        ],
    );
    wait_for("the stubborn job's output", JOB_DEADLINE, || {
        let job = status(&cluster, &stubborn)?;
        let out = try_logs(&cluster, &stubborn)?;
        (job["state"] == "running" && out.contains("started")).then_some(())
    });
    cluster
        .cli_on(1, &["job", "cancel", &stubborn])
        .expect("cancel");
    let cancelled = wait_state(&cluster, &stubborn, "a cancel to end", &["cancelled"]);
    assert_eq!(attempts(&cancelled).len(), 1, "{cancelled}");

    // Gang jobs (scheduler item 5): both replicas placed at once, one per eu node because each asks for a
    // whole node's CPU; each process knows its rank and its peers; the job succeeds once both have.
    gang_jobs_run_whole(&cluster);

    // (e) An agent restarted mid-job re-adopts it: the job runs once and its end is reported. Jobs leave
    // their marks in a working directory under the agents' shared path, the one place outside its own
    // that a sandboxed job may write to.
    let marks = cluster.dir.join("shared/marks");
    std::fs::create_dir_all(&marks).expect("mkdir");
    std::fs::set_permissions(&marks, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
        .expect("chmod");
    let in_marks = marks.display().to_string();
    let readopt_mark = marks.join("readopt");
    let readopt = run(
        &cluster,
        &["--workdir", &in_marks],
        &["sh", "-c", "echo run >> readopt; sleep 4; echo finished"],
    );
    let running = wait_state(&cluster, &readopt, "the job to run", &["running"]);
    let agent = agent_name(&node_of(&running)).to_owned();
    cluster.ok(&["kill", &agent]);
    cluster.ok(&["start", &agent]);
    let done = wait_state(
        &cluster,
        &readopt,
        "the re-adopted job to end",
        &["succeeded"],
    );
    assert_eq!(attempts(&done).len(), 1, "no second attempt: {done}");
    assert_eq!(lines(&readopt_mark), 1, "the job ran once");

    // (c) A killed agent's job is rescheduled (in its region first) and completes once.
    let moved = run(
        &cluster,
        &["--region", "eu", "--workdir", &in_marks],
        &[
            "sh",
            "-c",
            "echo $MERIDIAN_ATTEMPT >> lost-$MERIDIAN_ATTEMPT; sleep 3",
        ],
    );
    let running = wait_state(&cluster, &moved, "the job to run", &["running"]);
    let first = node_of(&running);
    cluster.ok(&["kill", agent_name(&first)]);
    let done = wait_state(&cluster, &moved, "the moved job to succeed", &["succeeded"]);
    let tries = attempts(&done);
    assert_eq!(tries.len(), 2, "{done}");
    assert_eq!(tries[0]["outcome"], "lost", "{done}");
    assert_eq!(tries[1]["outcome"], "succeeded", "{done}");
    assert_ne!(node_of(&done), first, "{done}");
    assert!(node_of(&done).starts_with("eu/"), "{done}");
    cluster.ok(&["start", agent_name(&first)]);

    // (d) Every agent of a region killed: the work moves to the other region.
    let roaming = run(&cluster, &["--max-attempts", "3"], &["sh", "-c", "sleep 3"]);
    let running = wait_state(&cluster, &roaming, "the roaming job to run", &["running"]);
    let region = node_of(&running)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    for n in 1..=2 {
        cluster.ok(&["kill", &format!("{region}-a{n}")]);
    }
    let done = wait_state(
        &cluster,
        &roaming,
        "the roaming job to succeed",
        &["succeeded"],
    );
    assert!(
        !node_of(&done).starts_with(&format!("{region}/")),
        "the job left region {region}: {done}"
    );
    for n in 1..=2 {
        cluster.ok(&["start", &format!("{region}-a{n}")]);
    }

    // (f) Every coordinator down for 30 s: a running job keeps running; its end is reported afterwards.
    let outage_mark = marks.join("outage");
    let outlives = run(
        &cluster,
        &["--workdir", &in_marks],
        &["sh", "-c", "sleep 5; echo done >> outage"],
    );
    wait_state(&cluster, &outlives, "the job to run", &["running"]);
    let outage_began = std::time::Instant::now();
    for c in ["c1", "c2", "c3"] {
        cluster.ok(&["kill", c]);
    }
    wait_for(
        "the job to finish while coordinators are away",
        JOB_DEADLINE,
        || (lines(&outage_mark) == 1).then_some(()),
    );
    // The outage lasts 30 s in all: its length is the scenario, not a synchronization.
    std::thread::sleep(Duration::from_secs(30).saturating_sub(outage_began.elapsed()));
    for c in ["c1", "c2", "c3"] {
        cluster.ok(&["start", c]);
    }
    let done = wait_state(
        &cluster,
        &outlives,
        "the outage job's report",
        &["succeeded"],
    );
    assert_eq!(attempts(&done).len(), 1, "{done}");
    assert_eq!(lines(&outage_mark), 1);
}

/// An agent of `eu/eu1` calling the agent methods for `us/us1/us-a1` is refused, and the refusal is
/// audited.
fn wrong_cluster_is_refused(cluster: &LocalCluster) {
    use protocol::pb;
    use protocol::rpc::{Method, RpcClient, RpcError, StatusCode};
    certs::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let work = cluster.dir.join("identities");
    std::fs::create_dir_all(&work).expect("mkdir");
    let agent = identity_from(
        &cluster.dir.join("certs"),
        &work.join("eu-intruder"),
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
    let leader = cluster.leader(&[1, 2, 3]);
    let addr = cluster.raft_addr(leader);
    rt.block_on(async {
        let client = RpcClient::new(&agent).expect("client");
        let report = pb::ReportRequest {
            node: "us-a1".into(),
            region: "us".into(),
            cluster: "us1".into(),
            lease_epoch: 1,
            events: Vec::new(),
        };
        let answer: Result<pb::ReportResponse, _> = client
            .call_message(&addr, Method::AgentReport, &report, Duration::from_secs(10))
            .await;
        match answer {
            Err(RpcError::Remote(status)) => {
                assert_eq!(status.code, StatusCode::PermissionDenied, "{status:?}")
            }
            other => panic!("a report for another cluster must be refused, got {other:?}"),
        }
        let sync = pb::SyncRequest {
            node: "us-a1".into(),
            region: "us".into(),
            cluster: "us1".into(),
            lease_epoch: 1,
            version: 0,
            wait_ms: 0,
        };
        let answer: Result<pb::SyncResponse, _> = client
            .call_message(&addr, Method::AgentSync, &sync, Duration::from_secs(10))
            .await;
        assert!(
            matches!(&answer, Err(RpcError::Remote(s)) if s.code == StatusCode::PermissionDenied),
            "a sync for another cluster must be refused, got {answer:?}"
        );
    });
    let audit = cluster
        .cli_on(1, &["audit", "list", "--limit", "1000"])
        .expect("audit list");
    let denied = audit
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["action"] == "node.report" && r["outcome"] == "denied");
    assert!(denied, "the refused report is audited: {audit}");
}

fn gang_jobs_run_whole(cluster: &LocalCluster) {
    let nodes = cluster.cli_on(1, &["node", "list"]).expect("node list");
    let cores = nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["region"] == "eu")
        .filter_map(|n| n["cpu_cores"].as_u64())
        .min()
        .expect("eu nodes report their cores");
    let cpu = cores.to_string();
    let gang = run(
        cluster,
        &["--replicas", "2", "--region", "eu", "--cpu", &cpu],
        &[
            "sh",
            "-c",
            "echo replica $MERIDIAN_REPLICA of $MERIDIAN_REPLICAS hosts $MERIDIAN_REPLICA_HOSTS",
        ],
    );
    let done = wait_state(cluster, &gang, "a gang to succeed", &["succeeded"]);
    let replicas = attempts(&done);
    let placed: Vec<(u64, u64, &str, &str)> = replicas
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap_or_default(),
                a["replica"].as_u64().unwrap_or(99),
                a["outcome"].as_str().unwrap_or_default(),
                a["node"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(placed.len(), 2, "{done}");
    assert_eq!(
        placed.iter().map(|p| (p.0, p.1, p.2)).collect::<Vec<_>>(),
        [(1, 0, "succeeded"), (1, 1, "succeeded")],
        "{done}"
    );
    assert_ne!(placed[0].3, placed[1].3, "one replica per node: {done}");
    assert!(placed.iter().all(|p| p.3.starts_with("eu/")), "{done}");
    for replica in ["0", "1"] {
        let out = cluster.cli_raw(1, &["job", "logs", "--replica", replica, &gang]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("replica {replica} of 2 hosts 127.0.0.1,127.0.0.1")
        );
    }
    let no_such = cluster.cli_raw(1, &["job", "logs", "--replica", "2", &gang]);
    assert!(!no_such.status.success(), "replica 2 of a gang of 2");

    // One replica failing stops the other (SIGTERM on its node) and fails the job with its exit code.
    // Replica 1 fails once replica 0 is up and waiting; they meet in a working directory under the agents'
    // shared path (each replica runs sandboxed, as its own user, seeing nothing else of the host).
    let meeting = cluster.dir.join("shared/gang-meeting");
    std::fs::create_dir_all(&meeting).expect("meeting dir");
    std::fs::set_permissions(
        &meeting,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .expect("chmod");
    let script = "if [ \"$MERIDIAN_REPLICA\" = 1 ]; then \
           while [ ! -f up ]; do sleep 0.1; done; exit 5; \
         fi; \
         trap 'echo got TERM; exit 143' TERM; touch up; sleep 120 & wait";
    let workdir = meeting.display().to_string();
    let failing = run(
        cluster,
        &[
            "--replicas",
            "2",
            "--region",
            "eu",
            "--cpu",
            &cpu,
            "--workdir",
            &workdir,
        ],
        &["sh", "-c", script],
    );
    let failed = wait_state(cluster, &failing, "a gang to fail", &["failed"]);
    assert_eq!(failed["exit_code"], 5, "{failed}");
    let outcomes: Vec<&str> = failed["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["outcome"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(outcomes, ["stopped", "failed"], "{failed}");
    wait_for("the stopped replica to get SIGTERM", JOB_DEADLINE, || {
        let out = cluster.cli_raw(1, &["job", "logs", "--replica", "0", &failing]);
        String::from_utf8_lossy(&out.stdout)
            .contains("got TERM")
            .then_some(())
    });

    // A gang that cannot be placed whole waits whole, with the reason.
    let too_big = run(
        cluster,
        &["--replicas", "3", "--region", "eu", "--cpu", &cpu],
        &["true"],
    );
    let pending = wait_for("a gang's pending reason", JOB_DEADLINE, || {
        let job = status(cluster, &too_big)?;
        job["pending_reason"].as_str().map(|_| job.clone())
    });
    assert_eq!(pending["state"], "pending", "{pending}");
    assert!(attempts(&pending).is_empty(), "{pending}");
    let reason = pending["pending_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("gang of 3"), "{reason}");
    cluster
        .cli_on(1, &["job", "cancel", &too_big])
        .expect("cancel");
}
