//! The Meridian side: a three-coordinator group run by `deploy/local-cluster.sh`, written and read through the
//! HTTPS admin API with the platform-admin token.
//!
//! One write is `POST /v1/projects {"name": KEY}`. This module owns the cluster directory's processes for
//! the lifetime of a [`MeridianCluster`]: dropping it runs `local-cluster.sh down` and SIGKILLs whatever is
//! left. It never touches a cluster directory it did not create.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

use super::process;
use super::system::{RequestError, SystemUnderTest};
use super::workdir::WorkDir;

/// Number of coordinators `local-cluster.sh` starts.
pub(crate) const MEMBERS: usize = 3;

/// Where and how to run the group.
#[derive(Debug, Clone)]
pub(crate) struct MeridianOptions {
    /// The `meridian` executable.
    pub(crate) binary: PathBuf,
    /// `deploy/local-cluster.sh`.
    pub(crate) script: PathBuf,
    /// The cluster directory (created by the harness, empty at start).
    pub(crate) dir: PathBuf,
    /// `MERIDIAN_LOCAL_PORT_OFFSET`: admin APIs listen on 7071+offset ..= 7073+offset.
    pub(crate) port_offset: u16,
    /// The directory `dir` lives in; held so it outlives the processes (see [`WorkDir`]).
    pub(crate) workdir: Arc<WorkDir>,
}

/// A running coordinator group. Dropping it stops every coordinator.
pub(crate) struct MeridianCluster {
    options: MeridianOptions,
    token: String,
}

fn member_name(member: usize) -> String {
    format!("c{}", member + 1)
}

impl MeridianCluster {
    /// `local-cluster.sh up` (which returns once a leader is elected), then reads the admin token.
    pub(crate) async fn start(
        mut options: MeridianOptions,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        if !options.dir.starts_with(options.workdir.path()) {
            bail!("the cluster directory must lie inside the work directory");
        }
        std::fs::create_dir_all(&options.dir)
            .with_context(|| format!("creating {}", options.dir.display()))?;
        // The script resolves the directory the same way; pid checks compare against command lines.
        options.dir = options
            .dir
            .canonicalize()
            .with_context(|| format!("resolving {}", options.dir.display()))?;
        // Built before `up` so that a half-started cluster is still torn down.
        let mut cluster = MeridianCluster {
            options,
            token: String::new(),
        };
        cluster.script(&["up"], timeout).await?;
        let token_path = cluster.options.dir.join("admin.token");
        let token = std::fs::read_to_string(&token_path)
            .with_context(|| format!("reading the admin token {}", token_path.display()))?;
        cluster.token = token.trim().to_string();
        if cluster.token.is_empty() {
            bail!("the admin token file {} is empty", token_path.display());
        }
        Ok(cluster)
    }

    /// The CA directory (`ca.pem`, `ca.key`) the cluster's certificates come from.
    pub(crate) fn ca_dir(&self) -> PathBuf {
        self.options.dir.join("certs")
    }

    async fn script(&self, args: &[&str], timeout: Duration) -> anyhow::Result<()> {
        let o = &self.options;
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg(&o.script)
            .args(args)
            .arg("--dir")
            .arg(&o.dir)
            .env("MERIDIAN_BIN", &o.binary)
            .env("MERIDIAN_LOCAL_PORT_OFFSET", o.port_offset.to_string())
            .env(
                "MERIDIAN_LOCAL_TIMEOUT",
                timeout.as_secs().max(1).to_string(),
            )
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let what = format!("local-cluster.sh {}", args.join(" "));
        let out = tokio::time::timeout(timeout + Duration::from_secs(10), cmd.output())
            .await
            .map_err(|_| anyhow!("{what} did not finish within {timeout:?}"))?
            .with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!(
                "{what} failed ({}): {}{}; logs in {}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim(),
                o.dir.join("logs").display()
            );
        }
        Ok(())
    }

    fn url(&self, member: usize, path: &str) -> String {
        let port = 7071 + member as u32 + u32::from(self.options.port_offset);
        format!("https://127.0.0.1:{port}{path}")
    }

    fn pid_file(&self, member: usize) -> PathBuf {
        self.options
            .dir
            .join(format!("{}.pid", member_name(member)))
    }

    fn pid(&self, member: usize) -> Option<u32> {
        std::fs::read_to_string(self.pid_file(member))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    async fn get(
        &self,
        http: &reqwest::Client,
        member: usize,
        path: &str,
    ) -> Result<Value, RequestError> {
        let resp = http
            .get(self.url(member, path))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(RequestError::transport)?;
        let body = RequestError::check(resp).await?;
        serde_json::from_slice(&body).map_err(|e| RequestError::Answer(format!("{path}: {e}")))
    }

    async fn cluster_status(
        &self,
        http: &reqwest::Client,
        member: usize,
    ) -> Result<Value, RequestError> {
        self.get(http, member, "/v1/cluster/status").await
    }

    /// Stops the group (SIGTERM, then SIGKILL after a grace period).
    pub(crate) async fn shutdown(self) {
        if let Err(e) = self.script(&["down"], Duration::from_secs(30)).await {
            tracing::warn!("stopping the Meridian cluster: {e:#}");
        }
        // Drop runs next and SIGKILLs anything `down` left behind.
    }
}

impl Drop for MeridianCluster {
    fn drop(&mut self) {
        // Synchronous on purpose: this also runs while unwinding, when no runtime may be left to drive a task.
        let status = std::process::Command::new("bash")
            .arg(&self.options.script)
            .arg("down")
            .arg("--dir")
            .arg(&self.options.dir)
            .env("MERIDIAN_BIN", &self.options.binary)
            .env(
                "MERIDIAN_LOCAL_PORT_OFFSET",
                self.options.port_offset.to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(e) = status {
            tracing::warn!("local-cluster.sh down: {e}");
        }
        for member in 0..MEMBERS {
            if let Some(pid) = self.pid(member) {
                if process::cmdline(pid).is_some_and(|l| {
                    l.contains("--config") && l.contains(&self.options.dir.display().to_string())
                }) {
                    let _ = std::process::Command::new("kill")
                        .arg("-KILL")
                        .arg(pid.to_string())
                        .status();
                }
            }
        }
    }
}

impl SystemUnderTest for MeridianCluster {
    fn name(&self) -> &'static str {
        "Meridian"
    }

    fn members(&self) -> usize {
        MEMBERS
    }

    async fn write(
        &self,
        http: &reqwest::Client,
        member: usize,
        key: &str,
    ) -> Result<(), RequestError> {
        let resp = http
            .post(self.url(member, "/v1/projects"))
            .bearer_auth(&self.token)
            .json(&json!({ "name": key }))
            .send()
            .await
            .map_err(RequestError::transport)?;
        RequestError::check(resp).await.map(drop)
    }

    fn grpc_port(&self, member: usize) -> u16 {
        7071 + member as u16 + self.options.port_offset
    }

    async fn write_grpc(
        &self,
        channel: &tonic::transport::Channel,
        key: &str,
    ) -> Result<(), RequestError> {
        let mut request = tonic::Request::new(protocol::pb::CreateProjectRequest {
            name: key.to_owned(),
            description: String::new(),
        });
        let bearer = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| RequestError::Answer("the token is not a header value".into()))?;
        request.metadata_mut().insert("authorization", bearer);
        protocol::pb::project_service_client::ProjectServiceClient::new(channel.clone())
            .create_project(request)
            .await
            .map(drop)
            .map_err(|status| {
                RequestError::Answer(format!("{}: {}", status.code(), status.message()))
            })
    }

    async fn leader_seen_by(
        &self,
        http: &reqwest::Client,
        member: usize,
    ) -> Result<Option<usize>, RequestError> {
        let status = self.cluster_status(http, member).await?;
        match status.get("leader") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(id) if (1..=MEMBERS as u64).contains(&id) => Ok(Some(id as usize - 1)),
                _ => Err(RequestError::Answer(format!(
                    "leader {v} is not one of 1..={MEMBERS}"
                ))),
            },
        }
    }

    async fn applied_index(
        &self,
        http: &reqwest::Client,
        member: usize,
    ) -> Result<u64, RequestError> {
        let status = self.cluster_status(http, member).await?;
        status
            .get("applied_index")
            .and_then(Value::as_u64)
            .ok_or_else(|| RequestError::Answer(format!("no applied_index in {status}")))
    }

    async fn kill(&self, member: usize) -> anyhow::Result<Instant> {
        let pid = self
            .pid(member)
            .ok_or_else(|| anyhow!("coordinator {} has no pid file", member_name(member)))?;
        // The coordinator's command line names its config file inside our cluster directory.
        let marker = self
            .options
            .dir
            .join(format!("{}.toml", member_name(member)));
        process::sigkill(pid, &marker.display().to_string()).await
    }

    async fn restart(&self, member: usize) -> anyhow::Result<()> {
        self.script(&["start", &member_name(member)], Duration::from_secs(30))
            .await
    }

    async fn unreadable(
        &self,
        http: &reqwest::Client,
        reader: usize,
        keys: &[String],
    ) -> anyhow::Result<Vec<String>> {
        let mut listed: HashSet<String> = HashSet::new();
        let mut token: Option<String> = None;
        loop {
            let path = match &token {
                Some(t) => format!("/v1/projects?page_size=1000&page_token={}", encode_query(t)),
                None => "/v1/projects?page_size=1000".to_string(),
            };
            let page = self.get(http, reader, &path).await?;
            let items = page
                .get("items")
                .and_then(Value::as_array)
                .ok_or_else(|| anyhow!("no items in {path}"))?;
            for item in items {
                if let Some(name) = item.get("name").and_then(Value::as_str) {
                    listed.insert(name.to_string());
                }
            }
            match page.get("next_page_token").and_then(Value::as_str) {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        // A name missing from the listing is looked up on its own before it counts as lost.
        let mut lost = Vec::new();
        for key in keys.iter().filter(|k| !listed.contains(k.as_str())) {
            match self.get(http, reader, &format!("/v1/projects/{key}")).await {
                Ok(_) => {}
                Err(RequestError::Status { status: 404, .. }) => lost.push(key.clone()),
                Err(e) => return Err(anyhow!("reading project {key}: {e}")),
            }
        }
        Ok(lost)
    }
}

/// Percent-encodes a page token for a query string.
fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `meridian` binary: `explicit`, else `$MERIDIAN_BIN`, else next to this executable, else the workspace's
/// `target/release` or `target/debug`, else `PATH`.
pub(crate) fn find_binary(explicit: Option<&Path>, workspace: &Path) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("MERIDIAN_BIN").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("meridian")));
    let candidates = beside.into_iter().chain([
        workspace.join("target/release/meridian"),
        workspace.join("target/debug/meridian"),
    ]);
    for c in candidates {
        if c.is_file() {
            return Some(c);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("meridian"))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::super::http::HttpSettings;
    use super::super::system;
    use super::*;

    async fn wait_gone(pid: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if process::cmdline(pid).is_none() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_real_coordinator_group_takes_writes_fails_over_and_dies_with_its_value() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let Some(binary) = find_binary(None, &workspace).filter(|p| p.is_file()) else {
            eprintln!(
                "no meridian binary has been built; skipping the real coordinator group test"
            );
            return;
        };
        let workdir = WorkDir::create().unwrap();
        let options = MeridianOptions {
            binary,
            script: workspace.join("deploy/local-cluster.sh"),
            dir: workdir.path().join("cluster"),
            port_offset: 800,
            workdir,
        };
        let cluster = MeridianCluster::start(options, Duration::from_secs(90))
            .await
            .unwrap();
        let ca = std::fs::read(cluster.ca_dir().join("ca.pem")).unwrap();
        let http = HttpSettings::new(&ca, Duration::from_secs(5)).unwrap();
        let client = http.client().unwrap();
        let all = [0, 1, 2];
        let pids: Vec<u32> = all.iter().map(|&m| cluster.pid(m).unwrap()).collect();
        system::wait_writable(&cluster, &client, &all, "t-ready", Duration::from_secs(60))
            .await
            .unwrap();

        // A write through the gRPC admin API is a project too.
        let channel = http.grpc_channel(cluster.grpc_port(1)).unwrap();
        cluster.write_grpc(&channel, "t-grpc").await.unwrap();

        // The loss check finds a project that was never created, and only that one.
        cluster.write(&client, 2, "t-known").await.unwrap();
        let leader = system::wait_for_leader(&cluster, &client, &all, Duration::from_secs(30))
            .await
            .unwrap();
        let keys = [
            "t-known".to_string(),
            "t-grpc".to_string(),
            "t-never".to_string(),
        ];
        assert_eq!(
            cluster.unreadable(&client, leader, &keys).await.unwrap(),
            vec!["t-never".to_string()]
        );

        // Killing the leader kills exactly that process; a survivor takes over and takes writes.
        cluster.kill(leader).await.unwrap();
        assert!(
            wait_gone(pids[leader]).await,
            "the killed coordinator is still running"
        );
        let survivors: Vec<usize> = all.iter().copied().filter(|&m| m != leader).collect();
        for &m in &survivors {
            assert!(
                process::cmdline(pids[m]).is_some(),
                "coordinator {m} died with the leader"
            );
        }
        let new_leader =
            system::wait_for_leader(&cluster, &client, &survivors, Duration::from_secs(30))
                .await
                .unwrap();
        assert_ne!(new_leader, leader);
        system::wait_writable(
            &cluster,
            &client,
            &survivors,
            "t-after",
            Duration::from_secs(30),
        )
        .await
        .unwrap();

        drop(cluster);
        for &m in &survivors {
            assert!(
                wait_gone(pids[m]).await,
                "coordinator {m} survived the drop"
            );
        }
    }
}
