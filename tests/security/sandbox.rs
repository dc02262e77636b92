//! Attack tests: a job trying to leave its sandbox on a real `meridian dev` node — its user, the agent's
//! keys and data directory, other jobs' processes and environments, its cgroup, the process limit, its
//! exit status and the coordinator's ports.
//!
//! The sandbox needs root (users of their own, namespaces, cgroups, eBPF). Where the tests do not run as
//! root they say so and skip: the node would refuse to start sandboxed, which `dev_refuses_to_start_
//! without_isolation_unless_told` checks instead.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::dev::DevProcess;
use crate::common::{cli, free_tcp_port, is_root, meridian_bin, wait_for};

/// Skips (loudly) where the sandbox cannot exist.
fn sandbox_host() -> bool {
    if !is_root() {
        eprintln!("SKIPPED: the job sandbox needs root; these attack tests run only as root");
        return false;
    }
    true
}

/// Runs `script` as a job with `sh -c` and waits; returns the final job object and its output.
fn run_job(dev: &DevProcess, extra: &[&str], script: &str) -> (Value, String) {
    let addr = dev.addr();
    let env = dev.env_for(&addr, &dev.token);
    let mut args = vec!["job", "run", "--wait", "-o", "json"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    let out = cli(&args, &env);
    let job: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "job run printed no job ({e}): {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let id = job["id"].as_str().expect("job id").to_owned();
    let logs = cli(&["job", "logs", &id], &env);
    (job, String::from_utf8_lossy(&logs.stdout).into_owned())
}

/// Submits `script` without waiting; returns the job id.
fn start_job(dev: &DevProcess, script: &str) -> String {
    let addr = dev.addr();
    let env = dev.env_for(&addr, &dev.token);
    let out = cli(
        &["job", "run", "-o", "json", "--", "sh", "-c", script],
        &env,
    );
    let job: Value = serde_json::from_slice(&out.stdout).expect("job object");
    job["id"].as_str().expect("id").to_owned()
}

fn logs(dev: &DevProcess, id: &str) -> String {
    let addr = dev.addr();
    let env = dev.env_for(&addr, &dev.token);
    String::from_utf8_lossy(&cli(&["job", "logs", id], &env).stdout).into_owned()
}

fn wait_for_output(dev: &DevProcess, id: &str, needle: &str) -> String {
    wait_for(
        &format!("{needle:?} in the job's output"),
        Duration::from_secs(60),
        || {
            let text = logs(dev, id);
            text.contains(needle).then_some(text)
        },
    )
}

fn exit_code(job: &Value) -> Option<i64> {
    job["attempts"].as_array()?.last()?["exit_code"].as_i64()
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
}

fn dev(tmp: &Path, extra: &[&str]) -> DevProcess {
    DevProcess::start(&tmp.join("dev"), extra)
}

/// A sandboxing `meridian dev` (with `extra` arguments) in a fresh directory, or `None` where the sandbox
/// cannot exist.
fn sandboxed_dev(extra: &[&str]) -> Option<(tempfile::TempDir, DevProcess)> {
    if !sandbox_host() {
        return None;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = dev(tmp.path(), extra);
    Some((tmp, dev))
}

#[test]
fn a_job_runs_as_an_unprivileged_user_of_its_own() {
    let Some((_tmp, dev)) = sandboxed_dev(&[]) else {
        return;
    };
    let holder = start_job(&dev, "echo uid=$(id -u); sleep 30");
    let first = wait_for_output(&dev, &holder, "uid=");
    let (job, out) = run_job(
        &dev,
        &[],
        "echo uid=$(id -u); echo gid=$(id -g); echo groups=$(id -G); \
         grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status",
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    let uid: u32 = field(&out, "uid")
        .and_then(|u| u.parse().ok())
        .expect("uid");
    assert_ne!(uid, 0, "{out}");
    assert!(uid >= 1000, "a system user: {out}");
    assert_eq!(field(&out, "gid"), Some(uid.to_string().as_str()), "{out}");
    assert_eq!(
        field(&out, "groups"),
        Some(uid.to_string().as_str()),
        "{out}"
    );
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    // Two jobs running at once never share a user.
    assert_ne!(field(&first, "uid"), Some(uid.to_string().as_str()));
}

#[test]
fn a_job_cannot_read_the_agents_keys_or_data_directory() {
    let Some((_tmp, dev)) = sandboxed_dev(&[]) else {
        return;
    };
    let dir = std::path::absolute(&dev.dir).expect("absolute");
    let script = format!(
        "for f in {d}/admin.token {d}/certs/ca.key {d}/certs/agent.key {d}/keyring \
                  {d}/agent/agent.db /etc/shadow; do \
           if cat \"$f\" >/dev/null 2>&1; then echo READ $f; else echo DENIED $f; fi; done; \
         echo listing=$(ls -A {d} 2>&1 | tr '\\n' ' '); echo agent=$(ls -A {d}/agent 2>&1 | tr '\\n' ' ')",
        d = dir.display()
    );
    let (job, out) = run_job(&dev, &[], &script);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(!out.contains("READ "), "{out}");
    assert!(
        out.contains(&format!("DENIED {}/admin.token", dir.display())),
        "{out}"
    );
    // All the job finds of the data directory is the path down to its own work directory.
    assert_eq!(field(&out, "listing"), Some("agent"), "{out}");
    assert_eq!(field(&out, "agent"), Some("jobs"), "{out}");
    // And the files are really there, outside.
    assert!(dir.join("admin.token").is_file());
    assert!(dir.join("certs/ca.key").is_file());
}

#[test]
fn a_job_cannot_see_other_jobs_processes_environment_or_files() {
    let Some((_tmp, dev)) = sandboxed_dev(&[]) else {
        return;
    };
    let addr = dev.addr();
    let env = dev.env_for(&addr, &dev.token);
    // The victim keeps a value in its environment and a file in its work directory.
    let out = cli(
        &[
            "job",
            "run",
            "-o",
            "json",
            "--env",
            "VICTIM_TOKEN=hunter2-victim",
            "--",
            "sh",
            "-c",
            "echo secret-file-hunter2 > mine.txt; echo workdir=$PWD; echo pid=$$; sleep 60",
        ],
        &env,
    );
    let victim: Value = serde_json::from_slice(&out.stdout).expect("victim");
    let victim_id = victim["id"].as_str().expect("id");
    let victim_out = wait_for_output(&dev, victim_id, "workdir=");
    let victim_dir = field(&victim_out, "workdir").expect("workdir").to_owned();
    let (job, out) = run_job(
        &dev,
        &[],
        &format!(
            "echo procs=$(ls /proc | grep -c '^[0-9]'); \
             cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c hunter2-victim; \
             cat {victim_dir}/mine.txt 2>&1 | head -1; ls {victim_dir} 2>&1 | head -1; \
             kill -9 -1 2>&1; echo done"
        ),
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(!out.contains("secret-file-hunter2"), "{out}");
    assert!(
        !out.lines().any(|l| l.trim() == "1"),
        "another job's environment was read: {out}"
    );
    // Its own shell, the pipeline's processes and init: a handful, never the node's.
    let procs: u32 = field(&out, "procs")
        .and_then(|p| p.parse().ok())
        .expect("procs");
    assert!(procs < 10, "{out}");
    // `kill -9 -1` reached nothing outside: the victim still runs.
    let status = cli(&["job", "status", victim_id, "-o", "json"], &env);
    let status: Value = serde_json::from_slice(&status.stdout).expect("status");
    assert_eq!(status["state"], "running", "{status}");
}

#[test]
fn a_job_cannot_leave_its_cgroup() {
    let Some((_tmp, dev)) = sandboxed_dev(&[]) else {
        return;
    };
    let (job, out) = run_job(
        &dev,
        &[],
        "for f in /sys/fs/cgroup/cgroup.procs /sys/fs/cgroup/memory/cgroup.procs \
                  /sys/fs/cgroup/pids/cgroup.procs /sys/fs/cgroup/unified/cgroup.procs \
                  /sys/fs/cgroup/memory/meridian/cgroup.procs; do \
           if echo $$ > $f 2>/dev/null; then echo MOVED $f; fi; done; \
         mkdir -p /tmp/cg && mount -t cgroup -o memory none /tmp/cg 2>/dev/null && echo MOUNTED; \
         cat /proc/self/cgroup",
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(!out.contains("MOVED"), "{out}");
    assert!(!out.contains("MOUNTED"), "{out}");
    let id = job["id"].as_str().expect("id");
    let memory_line = out
        .lines()
        .find(|l| l.contains(":memory:"))
        .unwrap_or_else(|| panic!("no memory cgroup line: {out}"));
    assert!(
        memory_line.contains(&format!("/meridian/{id}-1")),
        "the job left its group: {out}"
    );
}

#[test]
fn a_fork_bomb_stops_at_the_process_limit() {
    let Some((_tmp, dev)) = sandboxed_dev(&["--job-pids-max", "64"]) else {
        return;
    };
    // The bomb runs in a subshell that dies when fork fails; the outer shell then counts with builtins
    // only (no fork left to spare) and kills what the bomb left.
    let (job, out) = run_job(
        &dev,
        &[],
        "( n=0; while [ $n -lt 500 ]; do sleep 30 & n=$((n+1)); echo $n > started; done ) 2>/dev/null; \
         read n < started; kill -9 -1; echo started=$n",
    );
    assert_eq!(job["state"], "succeeded", "{job}\n{out}");
    let running: u32 = field(&out, "started")
        .and_then(|p| p.parse().ok())
        .expect("started");
    assert!(running <= 64, "more processes than the limit: {out}");
    assert!(running >= 32, "the limit stopped it far too early: {out}");
    assert!(running >= 32, "the limit stopped it far too early: {out}");
}

#[test]
fn a_job_cannot_forge_its_exit_status() {
    let Some((_tmp, dev)) = sandboxed_dev(&[]) else {
        return;
    };
    let (job, out) = run_job(
        &dev,
        &[],
        "for f in ../exit_status ../../exit_status exit_status; do echo 0 > $f 2>/dev/null && echo WROTE $f; done; \
         ln -s /etc/passwd ../stdout.log 2>/dev/null && echo LINKED; exit 3",
    );
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(exit_code(&job), Some(3), "{job}");
    assert!(!out.contains("LINKED"), "{out}");
}

#[test]
fn a_job_cannot_reach_the_coordinator_the_gateway_or_the_metadata_service() {
    if !Path::new("/usr/bin/python3").exists() {
        eprintln!("SKIPPED: /usr/bin/python3 is not installed; the network attack needs it");
        return;
    }
    let Some((_tmp, dev)) = sandboxed_dev(&[]) else {
        return;
    };
    let admin_port: u16 = dev
        .admin
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let gateway_port: u16 = dev
        .gateway
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    // A port nobody listens on: refused by the kernel, not by the filter.
    let closed = free_tcp_port();
    let script = r#"/usr/bin/python3 - <<'EOF'
import socket
for name, host, port in [('admin', '127.0.0.1', ADMIN), ('admin6', '::ffff:127.0.0.1', ADMIN),
                         ('zero', '0.0.0.0', ADMIN), ('gateway', '127.0.0.1', GATEWAY),
                         ('metadata', '169.254.169.254', 80), ('closed', '127.0.0.1', CLOSED)]:
    fam = socket.AF_INET6 if ':' in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect((host, port))
        print(name, 'CONNECTED')
    except OSError as e:
        print(name, 'errno', e.errno)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b'x', ('169.254.169.254', 53))
    print('udp SENT')
except OSError as e:
    print('udp errno', e.errno)
EOF"#
        .replace("ADMIN", &admin_port.to_string())
        .replace("GATEWAY", &gateway_port.to_string())
        .replace("CLOSED", &closed.to_string());
    let (job, out) = run_job(&dev, &[], &script);
    assert_eq!(job["state"], "succeeded", "{job}\n{out}");
    assert!(!out.contains("CONNECTED"), "{out}");
    assert!(!out.contains("SENT"), "{out}");
    for name in ["admin", "admin6", "zero", "gateway", "metadata", "udp"] {
        assert!(out.contains(&format!("{name} errno 1")), "{name}: {out}");
    }
    // The filter refuses only what it must: other local ports behave as usual.
    assert!(out.contains("closed errno 111"), "{out}");
}

#[test]
fn dev_refuses_to_start_without_isolation_unless_told() {
    if is_root() {
        // As root the sandbox is available; what happens without it is what this test is about.
        let tmp = tempfile::tempdir().expect("tempdir");
        let dev = dev(tmp.path(), &["--insecure-no-sandbox"]);
        let (job, out) = run_job(&dev, &[], "echo uid=$(id -u)");
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(field(&out, "uid"), Some("0"), "{out}");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(meridian_bin())
        .args(["dev", "--data-dir"])
        .arg(tmp.path().join("dev"))
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--raft-listen", "127.0.0.1:0"])
        .args(["--gateway-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dev");
    let status = child.wait().expect("wait");
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert!(err.contains("cannot be isolated"), "{err}");
    assert!(err.contains("--insecure-no-sandbox"), "{err}");
}
