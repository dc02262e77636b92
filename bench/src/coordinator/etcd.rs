//! The etcd side: a three-member etcd 3.4 group on loopback, started and crashed by the harness, written and
//! read through etcd's v3 JSON gateway over HTTPS.
//!
//! Every member runs with etcd's defaults for durability (fsync on, default snapshot count, default 100 ms
//! heartbeat and 1 s election timeout), server TLS on the client port and mutual TLS between peers, with
//! certificates issued from Meridian's CA. This module owns those processes: they die with the
//! [`EtcdCluster`] value (SIGKILL on drop). It never binds anything but 127.0.0.1 and never passes
//! `--unsafe-no-fsync`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

use super::process;
use super::system::{RequestError, SystemUnderTest};
use super::workdir::WorkDir;

/// Number of members (the comparison is always three against three).
pub(crate) const MEMBERS: usize = 3;

/// Every key the harness writes lives under this prefix.
const KEY_PREFIX: &str = "bench/";
/// The first key after every `bench/…` key.
const KEY_PREFIX_END: &str = "bench0";

/// Where and how to run the group.
#[derive(Debug, Clone)]
pub(crate) struct EtcdOptions {
    /// The `etcd` executable.
    pub(crate) binary: PathBuf,
    /// Holds `ca.pem` and `etcdN.pem` / `etcdN.key` for N in 1..=3.
    pub(crate) cert_dir: PathBuf,
    /// Data directories and logs go here.
    pub(crate) data_root: PathBuf,
    /// Client (gateway) ports of members 1..=3.
    pub(crate) client_ports: [u16; MEMBERS],
    /// Peer ports of members 1..=3.
    pub(crate) peer_ports: [u16; MEMBERS],
    /// The directory `data_root` lives in; held so it outlives the processes (see [`WorkDir`]).
    pub(crate) workdir: Arc<WorkDir>,
}

/// A running etcd group. Dropping it SIGKILLs every member still running.
pub(crate) struct EtcdCluster {
    options: EtcdOptions,
    children: Vec<Mutex<Option<tokio::process::Child>>>,
    /// etcd's member id of each member, learned at start.
    member_ids: Vec<u64>,
}

fn member_name(member: usize) -> String {
    format!("etcd{}", member + 1)
}

/// A JSON number that the gateway may encode as a string (it does for 64-bit integers).
fn json_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

impl EtcdCluster {
    /// Starts the three members and waits until each answers and a leader is elected.
    pub(crate) async fn start(
        options: EtcdOptions,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        for member in 0..MEMBERS {
            for ext in ["pem", "key"] {
                let path = options
                    .cert_dir
                    .join(format!("{}.{ext}", member_name(member)));
                if !path.is_file() {
                    bail!("etcd certificate file {} is missing", path.display());
                }
            }
        }
        if !options.data_root.starts_with(options.workdir.path()) {
            bail!("the etcd data directory must lie inside the work directory");
        }
        std::fs::create_dir_all(&options.data_root)
            .with_context(|| format!("creating {}", options.data_root.display()))?;
        let mut cluster = EtcdCluster {
            options,
            children: (0..MEMBERS).map(|_| Mutex::new(None)).collect(),
            member_ids: Vec::new(),
        };
        for member in 0..MEMBERS {
            cluster.spawn(member)?;
        }
        let deadline = Instant::now() + timeout;
        for member in 0..MEMBERS {
            let id = loop {
                let last = match cluster.status(http, member).await {
                    Ok(status) => match json_u64(status.pointer("/header/member_id")) {
                        Some(id) => break id,
                        None => format!("no member id in {status}"),
                    },
                    Err(e) => e.to_string(),
                };
                cluster.ensure_running(member)?;
                if Instant::now() >= deadline {
                    bail!(
                        "etcd member {} did not answer within {timeout:?} ({last}); see {}",
                        member_name(member),
                        cluster.log_path(member).display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            cluster.member_ids.push(id);
        }
        let all: Vec<usize> = (0..MEMBERS).collect();
        let left = deadline.saturating_duration_since(Instant::now());
        super::system::wait_for_leader(&cluster, http, &all, left).await?;
        Ok(cluster)
    }

    fn log_path(&self, member: usize) -> PathBuf {
        self.options
            .data_root
            .join(format!("{}.log", member_name(member)))
    }

    fn url(&self, member: usize, path: &str) -> String {
        format!(
            "https://127.0.0.1:{}{path}",
            self.options.client_ports[member]
        )
    }

    fn slot(&self, member: usize) -> std::sync::MutexGuard<'_, Option<tokio::process::Child>> {
        // A poisoned slot only means another task panicked while holding it; the child handle is still valid.
        self.children[member]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fails when `member`'s process has exited on its own (so waits do not run into their deadline).
    fn ensure_running(&self, member: usize) -> anyhow::Result<()> {
        let mut slot = self.slot(member);
        if let Some(child) = slot.as_mut() {
            if let Some(status) = child.try_wait().context("checking an etcd process")? {
                *slot = None;
                bail!(
                    "etcd member {} exited with {status}; see {}",
                    member_name(member),
                    self.log_path(member).display()
                );
            }
        }
        Ok(())
    }

    fn spawn(&self, member: usize) -> anyhow::Result<()> {
        let o = &self.options;
        let name = member_name(member);
        let peer_url = |m: usize| format!("https://127.0.0.1:{}", o.peer_ports[m]);
        let client_url = format!("https://127.0.0.1:{}", o.client_ports[member]);
        let initial_cluster: Vec<String> = (0..MEMBERS)
            .map(|m| format!("{}={}", member_name(m), peer_url(m)))
            .collect();
        let cert = o.cert_dir.join(format!("{name}.pem"));
        let key = o.cert_dir.join(format!("{name}.key"));
        let ca = o.cert_dir.join("ca.pem");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(member))
            .with_context(|| format!("opening {}", self.log_path(member).display()))?;
        let log_err = log.try_clone().context("duplicating the log file handle")?;
        let mut cmd = tokio::process::Command::new(&o.binary);
        cmd.arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(o.data_root.join(format!("{name}.data")))
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(peer_url(member))
            .arg("--initial-advertise-peer-urls")
            .arg(peer_url(member))
            .arg("--initial-cluster")
            .arg(initial_cluster.join(","))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg("meridian-bench")
            .arg("--cert-file")
            .arg(&cert)
            .arg("--key-file")
            .arg(&key)
            .arg("--peer-cert-file")
            .arg(&cert)
            .arg("--peer-key-file")
            .arg(&key)
            .arg("--peer-trusted-ca-file")
            .arg(&ca)
            .arg("--peer-client-cert-auth")
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr")
            .arg("--log-level")
            .arg("warn");
        // etcd reads ETCD_* variables as flags; none may leak in from the caller's environment.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", o.binary.display()))?;
        *self.slot(member) = Some(child);
        Ok(())
    }

    async fn post(
        &self,
        http: &reqwest::Client,
        member: usize,
        path: &str,
        body: &Value,
    ) -> Result<Value, RequestError> {
        let resp = http
            .post(self.url(member, path))
            .json(body)
            .send()
            .await
            .map_err(RequestError::transport)?;
        let body = RequestError::check(resp).await?;
        serde_json::from_slice(&body).map_err(|e| RequestError::Answer(format!("{path}: {e}")))
    }

    async fn status(&self, http: &reqwest::Client, member: usize) -> Result<Value, RequestError> {
        self.post(http, member, "/v3/maintenance/status", &json!({}))
            .await
    }

    /// Kills every member and waits for them to exit.
    pub(crate) async fn shutdown(self) {
        for member in 0..MEMBERS {
            let child = self.slot(member).take();
            if let Some(mut child) = child {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
            }
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in 0..MEMBERS {
            if let Some(child) = self.slot(member).as_mut() {
                let _ = child.start_kill();
            }
        }
    }
}

impl SystemUnderTest for EtcdCluster {
    fn name(&self) -> &'static str {
        "etcd"
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
        let value = json!({ "name": key }).to_string();
        let body = json!({
            "key": B64.encode(format!("{KEY_PREFIX}{key}")),
            "value": B64.encode(value),
        });
        let resp = http
            .post(self.url(member, "/v3/kv/put"))
            .json(&body)
            .send()
            .await
            .map_err(RequestError::transport)?;
        RequestError::check(resp).await.map(drop)
    }

    fn grpc_port(&self, member: usize) -> u16 {
        self.options.client_ports[member]
    }

    async fn write_grpc(
        &self,
        channel: &tonic::transport::Channel,
        key: &str,
    ) -> Result<(), RequestError> {
        let request = super::grpc::EtcdPutRequest {
            key: format!("{KEY_PREFIX}{key}").into_bytes(),
            value: json!({ "name": key }).to_string().into_bytes(),
        };
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready()
            .await
            .map_err(|e| RequestError::Transport(e.to_string()))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(super::grpc::ETCD_PUT);
        let codec: tonic_prost::ProstCodec<
            super::grpc::EtcdPutRequest,
            super::grpc::EtcdPutResponse,
        > = tonic_prost::ProstCodec::default();
        grpc.unary(tonic::Request::new(request), path, codec)
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
        let status = self.status(http, member).await?;
        match json_u64(status.get("leader")) {
            None | Some(0) => Ok(None),
            Some(id) => match self.member_ids.iter().position(|&m| m == id) {
                Some(index) => Ok(Some(index)),
                None => Err(RequestError::Answer(format!(
                    "leader {id} is not one of {:?}",
                    self.member_ids
                ))),
            },
        }
    }

    async fn applied_index(
        &self,
        http: &reqwest::Client,
        member: usize,
    ) -> Result<u64, RequestError> {
        let status = self.status(http, member).await?;
        json_u64(status.get("raftAppliedIndex"))
            .ok_or_else(|| RequestError::Answer(format!("no raftAppliedIndex in {status}")))
    }

    async fn kill(&self, member: usize) -> anyhow::Result<Instant> {
        let pid = self
            .slot(member)
            .as_ref()
            .and_then(|c| c.id())
            .ok_or_else(|| anyhow!("etcd member {} is not running", member_name(member)))?;
        let marker = format!("--name {}", member_name(member));
        let killed_at = process::sigkill(pid, &marker).await?;
        let child = self.slot(member).take();
        if let Some(mut child) = child {
            tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .context("a SIGKILLed etcd did not exit within 10 s")?
                .context("waiting for etcd")?;
        }
        Ok(killed_at)
    }

    async fn restart(&self, member: usize) -> anyhow::Result<()> {
        if self.slot(member).is_some() {
            bail!("etcd member {} is still running", member_name(member));
        }
        self.spawn(member)
    }

    async fn unreadable(
        &self,
        http: &reqwest::Client,
        reader: usize,
        keys: &[String],
    ) -> anyhow::Result<Vec<String>> {
        let mut found: HashSet<String> = HashSet::new();
        let mut start = KEY_PREFIX.as_bytes().to_vec();
        loop {
            let body = json!({
                "key": B64.encode(&start),
                "range_end": B64.encode(KEY_PREFIX_END),
                "keys_only": true,
                "limit": 5000,
            });
            let page = self.post(http, reader, "/v3/kv/range", &body).await?;
            let kvs = page
                .get("kvs")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut last: Option<Vec<u8>> = None;
            for kv in &kvs {
                let encoded = kv
                    .get("key")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("a range item has no key"))?;
                let raw = B64.decode(encoded).context("decoding a key from etcd")?;
                if let Some(name) = raw.strip_prefix(KEY_PREFIX.as_bytes()) {
                    found.insert(String::from_utf8_lossy(name).into_owned());
                }
                last = Some(raw);
            }
            let more = page.get("more").and_then(Value::as_bool).unwrap_or(false);
            match last {
                Some(mut next) if more => {
                    next.push(0);
                    start = next;
                }
                _ => break,
            }
        }
        Ok(keys
            .iter()
            .filter(|k| !found.contains(k.as_str()))
            .cloned()
            .collect())
    }
}

/// Looks for `etcd` on `PATH`.
pub(crate) fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::super::failover::{self, FailoverPlan};
    use super::super::http::HttpSettings;
    use super::super::load::{self, LoadPlan};
    use super::*;

    /// A CA and one leaf per member, valid for 127.0.0.1 and localhost; returns the CA's PEM.
    fn write_certs(dir: &Path) -> Vec<u8> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        for member in 0..MEMBERS {
            let key = KeyPair::generate().unwrap();
            let params =
                CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                    .unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{}.pem", member_name(member))), cert.pem()).unwrap();
            std::fs::write(
                dir.join(format!("{}.key", member_name(member))),
                key.serialize_pem(),
            )
            .unwrap();
        }
        ca_cert.pem().into_bytes()
    }

    fn free_ports<const N: usize>() -> [u16; N] {
        let listeners: Vec<std::net::TcpListener> = (0..N)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
    }

    async fn wait_gone(pid: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if process::cmdline(pid).is_none() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_real_group_takes_load_survives_leader_kills_and_dies_with_its_value() {
        let Some(binary) = find_binary() else {
            eprintln!("etcd is not installed; skipping the real etcd group test");
            return;
        };
        let workdir = WorkDir::create().unwrap();
        let cert_dir = workdir.path().join("certs");
        std::fs::create_dir_all(&cert_dir).unwrap();
        let ca = write_certs(&cert_dir);
        let ports: [u16; 6] = free_ports();
        let options = EtcdOptions {
            binary,
            cert_dir,
            data_root: workdir.path().join("data"),
            client_ports: [ports[0], ports[1], ports[2]],
            peer_ports: [ports[3], ports[4], ports[5]],
            workdir,
        };
        let http = HttpSettings::new(&ca, Duration::from_secs(5)).unwrap();
        let control = http.client().unwrap();
        let cluster = EtcdCluster::start(options, &control, Duration::from_secs(60))
            .await
            .unwrap();
        let pids: Vec<u32> = (0..MEMBERS)
            .map(|m| cluster.slot(m).as_ref().and_then(|c| c.id()).unwrap())
            .collect();
        let sut = Arc::new(cluster);

        for protocol in [load::Protocol::Json, load::Protocol::Grpc] {
            let plan = LoadPlan {
                clients: 3,
                warmup: Duration::from_millis(200),
                measure: Duration::from_secs(1),
                key_prefix: format!("t-load-{protocol:?}"),
                protocol,
            };
            let level = load::run_level(sut.clone(), &http, &plan).await.unwrap();
            assert!(level.writes > 0, "{protocol:?}: {level:?}");
            assert_eq!(level.errors, 0, "{protocol:?}: {level:?}");
            assert!(
                level
                    .latency
                    .is_some_and(|p| p.p50_ms > 0.0 && p.p50_ms <= p.max_ms),
                "{protocol:?}: {level:?}"
            );
        }

        let plan = FailoverPlan {
            rounds: 2,
            probe_interval: Duration::from_millis(10),
            probe_timeout: Duration::from_secs(1),
            max_in_flight: 256,
            before_kill: Duration::from_millis(300),
            after_recovery: Duration::from_millis(200),
            recovery_timeout: Duration::from_secs(30),
            catch_up_timeout: Duration::from_secs(60),
            key_prefix: "t-fail".into(),
        };
        let result = failover::run(sut.clone(), &http, &plan).await.unwrap();
        assert_eq!(result.rounds.len(), 2);
        for round in &result.rounds {
            assert_ne!(round.killed, round.new_leader);
            // etcd cannot elect before its 1 s election timeout has passed on a follower.
            assert!(
                round.recovery_ms > 100.0 && round.recovery_ms < 30_000.0,
                "{round:?}"
            );
        }
        assert!(result.acknowledged_writes > 0);
        assert_eq!(result.lost_writes, 0, "{result:?}");

        // The loss check finds a key that was never written, and only that one.
        sut.write(&control, 1, "t-known").await.unwrap();
        let missing = sut
            .unreadable(&control, 2, &["t-known".to_string(), "t-never".to_string()])
            .await
            .unwrap();
        assert_eq!(missing, vec!["t-never".to_string()]);

        // Every member (restarted ones included) is running now, and dropping the value kills them all.
        let pids_now: Vec<u32> = (0..MEMBERS)
            .map(|m| sut.slot(m).as_ref().and_then(|c| c.id()).unwrap())
            .collect();
        assert_eq!(pids_now.len(), pids.len());
        drop(sut);
        for pid in pids_now {
            assert!(wait_gone(pid).await, "etcd pid {pid} survived the drop");
        }
    }
}
