//! A single-node coordinator with its admin API for the `api_*` tests: real certificates from our CA, real
//! QUIC, real sled in a temporary directory, a bootstrapped registry and the platform-admin token.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use coordinator::api::{AdminApi, AdminApiOptions, ApiLimits, DenialLimits};
use coordinator::crypto::MasterKeyring;
use coordinator::node::{Coordinator, CoordinatorOptions, Handle, MemberNode, RaftTimings};
use rand::RngCore;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub const TRUST_DOMAIN: &str = "api-test.meridian.local";

/// A running coordinator and admin API.
pub struct TestApi {
    pub base: String,
    pub addr: SocketAddr,
    pub admin_token: String,
    pub handle: Handle,
    pub http: reqwest::Client,
    pub ca_pem: String,
    pub keyring: Arc<MasterKeyring>,
    shutdown: CancellationToken,
    api_task: Option<tokio::task::JoinHandle<()>>,
    _coordinator: Coordinator,
    _dir: tempfile::TempDir,
}

/// How to start the API.
pub struct Setup {
    pub tls: bool,
    pub max_body_bytes: usize,
    pub limits: ApiLimits,
    /// How many audit records stay live before the leader archives the oldest.
    pub audit: coordinator::AuditRetention,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            tls: false,
            max_body_bytes: 64 * 1024,
            limits: test_limits(),
            audit: Default::default(),
        }
    }
}

/// The API's limits for tests: refusals are written to the audit log every 50 ms, and hardly limited, so
/// tests that probe many routes with bad keys see every answer (rate limits have their own tests).
pub fn test_limits() -> ApiLimits {
    ApiLimits {
        denials: DenialLimits {
            burst: 100_000,
            per_second: 100_000,
            window: Duration::from_millis(50),
        },
        ..ApiLimits::default()
    }
}

pub async fn start() -> anyhow::Result<TestApi> {
    start_with(Setup::default()).await
}

pub async fn start_with(setup: Setup) -> anyhow::Result<TestApi> {
    certs::install_crypto_provider();
    let dir = tempfile::tempdir()?;
    let ca = certs::CertificateAuthority::generate(TRUST_DOMAIN, Duration::from_secs(86_400))?;
    let identity = certs::Identity::coordinator(TRUST_DOMAIN, "c1")?;
    let leaf = ca.issue(
        &certs::LeafRequest::new(identity, Duration::from_secs(3_600))
            .with_dns_name("localhost")
            .with_ip_address("127.0.0.1".parse()?),
    )?;
    let tls = certs::TlsIdentity::from_pem(ca.cert_pem(), &leaf.cert_pem, &leaf.key_pem)?;

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
        tls: tls.clone(),
        timings: RaftTimings::default(),
        snapshot_every: 10_000,
        bootstrap: Some(BTreeMap::from([(1, member)])),
        fleet: Default::default(),
        jobs: Default::default(),
        audit: setup.audit,
        keyring: None,
        approve_new_nodes: false,
        clock: coordinator::clock::system(),
        link_faults: None,
        randomness: coordinator::random::os(),
    })
    .await
    .context("starting the coordinator")?;
    handle
        .wait_for(|s| s.leader == Some(1), Duration::from_secs(30))
        .await
        .context("waiting for a leader")?;

    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let keyring = Arc::new(MasterKeyring::from_entries([("mk1".to_owned(), key)])?);
    let admin_token = coordinator::crypto::generate_token(&mut rand::rngs::OsRng)
        .token
        .to_string();
    coordinator::bootstrap::propose(&handle, &keyring, &admin_token)
        .await
        .context("bootstrapping")?;

    let api = AdminApi::bind(AdminApiOptions {
        listen: "127.0.0.1:0".parse()?,
        listener: None,
        tls: setup.tls.then(|| tls.clone()),
        handle: handle.clone(),
        keyring: keyring.clone(),
        max_body_bytes: setup.max_body_bytes,
        limits: setup.limits,
        project_defaults: Default::default(),
        default_key_ttl: coordinator::api::DEFAULT_KEY_TTL,
    })
    .await?;
    let addr = api.local_addr();
    let shutdown = CancellationToken::new();
    let api_task = tokio::spawn(api.run(shutdown.clone()));

    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    let base = if setup.tls {
        let mut config = certs::https_client_config(ca.cert_pem())?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        builder = builder.use_preconfigured_tls(config);
        format!("https://localhost:{}", addr.port())
    } else {
        format!("http://{addr}")
    };
    let http = builder.build()?;
    Ok(TestApi {
        base,
        addr,
        admin_token,
        handle,
        http,
        ca_pem: ca.cert_pem().to_owned(),
        keyring,
        shutdown,
        api_task: Some(api_task),
        _coordinator: coordinator,
        _dir: dir,
    })
}

/// An HTTP answer: status and JSON body (`Value::Null` when empty, a string when not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub content_type: String,
}

impl Answer {
    pub fn error_code(&self) -> &str {
        self.body
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn error_message(&self) -> &str {
        self.body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn str(&self, pointer: &str) -> String {
        self.body
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }
}

/// A request being built.
pub struct Call<'a> {
    api: &'a TestApi,
    method: reqwest::Method,
    path: String,
    token: Option<String>,
    project: Option<String>,
    body: Option<(String, Vec<u8>)>,
}

impl<'a> Call<'a> {
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    pub fn no_token(mut self) -> Self {
        self.token = None;
        self
    }

    pub fn project(mut self, project: &str) -> Self {
        self.project = Some(project.to_owned());
        self
    }

    pub fn json(mut self, body: Value) -> Self {
        self.body = Some(("application/json".into(), body.to_string().into_bytes()));
        self
    }

    pub fn raw(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some((content_type.to_owned(), body.into()));
        self
    }

    pub async fn send(self) -> anyhow::Result<Answer> {
        let url = format!("{}{}", self.api.base, self.path);
        let mut req = self.api.http.request(self.method.clone(), &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(p) = &self.project {
            req = req.header("x-meridian-project", p);
        }
        if let Some((ct, body)) = self.body {
            req = req.header("content-type", ct).body(body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{} {url}", self.method))?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = resp.text().await?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Answer {
            status,
            body,
            content_type,
        })
    }
}

impl TestApi {
    fn call(&self, method: reqwest::Method, path: &str) -> Call<'_> {
        Call {
            api: self,
            method,
            path: path.to_owned(),
            token: Some(self.admin_token.clone()),
            project: None,
            body: None,
        }
    }

    /// A request with the admin token (override with `.token()` / `.no_token()`).
    pub fn get(&self, path: &str) -> Call<'_> {
        self.call(reqwest::Method::GET, path)
    }

    pub fn post(&self, path: &str) -> Call<'_> {
        self.call(reqwest::Method::POST, path)
    }

    pub fn delete(&self, path: &str) -> Call<'_> {
        self.call(reqwest::Method::DELETE, path)
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> Call<'_> {
        self.call(method, path)
    }

    /// Creates a project as platform admin; returns its id.
    pub async fn create_project(&self, name: &str) -> anyhow::Result<String> {
        let a = self
            .post("/v1/projects")
            .json(json!({ "name": name }))
            .send()
            .await?;
        if a.status != 201 {
            bail!("creating project {name}: {} {}", a.status, a.body);
        }
        Ok(a.str("/id"))
    }

    /// Creates a key with `role` in `project` (as platform admin); returns (token, key id, principal id).
    pub async fn create_key(
        &self,
        project: &str,
        name: &str,
        role: &str,
    ) -> anyhow::Result<(String, String, String)> {
        let a = self
            .post("/v1/keys")
            .project(project)
            .json(json!({ "name": name, "role": role }))
            .send()
            .await?;
        if a.status != 201 {
            bail!("creating key {name}: {} {}", a.status, a.body);
        }
        Ok((a.str("/token"), a.str("/key/id"), a.str("/principal/id")))
    }

    /// Every audit record, paging through the log as the platform admin.
    pub async fn audit_all(&self) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut after = 0u64;
        loop {
            let a = self
                .get(&format!("/v1/audit?after_seq={after}&page_size=1000"))
                .send()
                .await?;
            if a.status != 200 {
                bail!("reading the audit log: {} {}", a.status, a.body);
            }
            let items = a.body["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                return Ok(all);
            }
            after = items
                .last()
                .and_then(|r| r["seq"].as_u64())
                .context("record without seq")?;
            all.extend(items);
        }
    }

    /// The audit log once `pred` holds for it (refusals reach it coalesced, a window after they happen);
    /// fails after 10 s with `what`.
    pub async fn audit_until(
        &self,
        what: &str,
        pred: impl Fn(&[Value]) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        let found = testkit::eventually_async(what, Duration::from_secs(10), || async {
            self.audit_all().await.ok().filter(|records| pred(records))
        })
        .await;
        match found {
            Ok(records) => Ok(records),
            Err(e) => bail!("{e}: not in the audit log: {:#?}", self.audit_all().await?),
        }
    }

    /// Cancels the API's shutdown token and waits (at most `limit`) for `run` to return.
    pub async fn stop_api(&mut self, limit: Duration) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(task) = self.api_task.take() {
            tokio::time::timeout(limit, task)
                .await
                .context("the admin API did not stop in time")??;
        }
        Ok(())
    }

    /// Stops the API and the coordinator.
    pub async fn stop(mut self) {
        let _ = self.stop_api(Duration::from_secs(30)).await;
        self.handle.shutdown().await;
    }
}

impl TestApi {
    /// Registers node `eu/eu1/<node>` (16 CPUs, 16 GiB, `gpu_count` GPUs, `labels`) as its agent would;
    /// `admit_new` is what the leader stamps for a node new to a cluster without a policy.
    pub async fn register_node(
        &self,
        node: &str,
        gpu_count: u32,
        labels: &[(&str, &str)],
        admit_new: Option<bool>,
    ) -> anyhow::Result<()> {
        use coordinator::state::{Actor, Command, FleetOp, Op};
        let op = Op::Fleet(FleetOp::RegisterNode {
            region: "eu".into(),
            cluster: "eu1".into(),
            node: node.into(),
            cpu_cores: 16,
            memory_bytes: 1 << 34,
            gpu_count,
            agent_version: "test".into(),
            gpus: Vec::new(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            rpc_addr: String::new(),
            held: Vec::new(),
            os: String::new(),
            limit_mode: String::new(),
            admit_new,
        });
        self.handle
            .write(Command::new(1_700_000_000_000, Actor::system(), op))
            .await?;
        Ok(())
    }
}
