//! A `deploy/local-cluster.sh` topology as real processes, driven from a test: the script, the CLI against
//! one member, the leader, and certificates issued from the cluster's CA.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::*;

/// One local cluster in a temporary directory; `down` when dropped.
pub struct LocalCluster {
    pub dir: PathBuf,
    /// Shifts every port, so tests can run beside `meridian dev` and each other.
    pub port_offset: u16,
    /// Extra environment for the processes (e.g. `MERIDIAN_FLEET_TTL_MS`).
    pub env: Vec<(String, String)>,
}

impl LocalCluster {
    pub fn new(dir: PathBuf, port_offset: u16) -> Self {
        Self {
            dir,
            port_offset,
            env: Vec::new(),
        }
    }

    pub fn script(&self, args: &[&str]) -> std::process::Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local-cluster.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(script)
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .env("MERIDIAN_BIN", meridian_bin())
            .env("MERIDIAN_LOCAL_PORT_OFFSET", self.port_offset.to_string());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.output().expect("run local-cluster.sh")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.script(args);
        assert!(
            out.status.success(),
            "local-cluster.sh {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn admin_addr(&self, i: u16) -> String {
        format!("https://127.0.0.1:{}", 7070 + i + self.port_offset)
    }

    /// The QUIC (Raft and agent) address of member `i`.
    pub fn raft_addr(&self, i: u16) -> String {
        format!("127.0.0.1:{}", 7170 + i + self.port_offset)
    }

    pub fn token(&self) -> String {
        read_trimmed(&self.dir.join("admin.token")).expect("admin token")
    }

    pub fn ca(&self) -> String {
        self.dir.join("certs/ca.pem").display().to_string()
    }

    /// Runs the CLI against member `i` (1-based) and returns its raw output.
    pub fn cli_raw(&self, i: u16, args: &[&str]) -> std::process::Output {
        let addr = self.admin_addr(i);
        let (token, ca) = (self.token(), self.ca());
        let env = [
            ("MERIDIAN_ADDR", addr.as_str()),
            ("MERIDIAN_TOKEN", token.as_str()),
            ("MERIDIAN_CACERT", ca.as_str()),
        ];
        cli(args, &env)
    }

    /// Runs the CLI against member `i` (1-based) and parses its JSON output.
    pub fn cli_on(&self, i: u16, args: &[&str]) -> Result<Value, (Option<i32>, String)> {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["-o", "json"]);
        let out = self.cli_raw(i, &full);
        if out.status.success() {
            serde_json::from_slice(&out.stdout).map_err(|e| (None, e.to_string()))
        } else {
            Err((
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    }

    /// The leader's node id as seen by any live member among `members`.
    pub fn leader(&self, members: &[u16]) -> u16 {
        wait_for("a leader", Duration::from_secs(30), || {
            members.iter().find_map(|&i| {
                let s = self.cli_on(i, &["cluster", "status"]).ok()?;
                let leader = s["leader"].as_u64()? as u16;
                members.contains(&leader).then_some(leader)
            })
        })
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.script(&["down"]);
    }
}

/// Issues a certificate with the CLI and loads it as a TLS identity.
pub fn identity_from(ca_dir: &Path, out: &Path, args: &[&str]) -> certs::TlsIdentity {
    let ca = ca_dir.display().to_string();
    let prefix = out.display().to_string();
    let mut full = vec![
        "certs",
        "issue",
        "--ca-dir",
        ca.as_str(),
        "--out",
        prefix.as_str(),
    ];
    full.extend_from_slice(args);
    let out_run = cli(&full, &[]);
    assert!(
        out_run.status.success(),
        "certs issue: {}",
        String::from_utf8_lossy(&out_run.stderr)
    );
    certs::TlsIdentity::load(&certs::TlsPaths {
        ca: ca_dir.join("ca.pem"),
        cert: PathBuf::from(format!("{prefix}.pem")),
        key: PathBuf::from(format!("{prefix}.key")),
    })
    .expect("load issued identity")
}
