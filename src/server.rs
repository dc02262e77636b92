//! Wiring a coordinator process: storage + Raft + QUIC mesh + admin API, and the bootstrap admin token.
//!
//! Used by `meridian coordinator` (from a config file) and `meridian dev` (from a generated one).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use coordinator::api::{AdminApi, AdminApiOptions};
use coordinator::crypto::MasterKeyring;
use coordinator::node::{Coordinator, CoordinatorOptions, Handle, MemberNode, RaftTimings};

use crate::config::CoordinatorConfig;

/// A running coordinator process.
pub struct RunningCoordinator {
    pub handle: Handle,
    pub admin_addr: std::net::SocketAddr,
    api_task: tokio::task::JoinHandle<()>,
    _coordinator: Coordinator,
}

impl RunningCoordinator {
    /// Stops the admin API and Raft.
    pub async fn stop(self, shutdown: &CancellationToken) {
        shutdown.cancel();
        let _ = self.api_task.await;
        self.handle.shutdown().await;
    }
}

/// Starts every part of a coordinator and, on the bootstrap node, makes sure the admin token exists.
pub async fn start(
    cfg: &CoordinatorConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningCoordinator> {
    certs::install_crypto_provider();
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let tls = certs::TlsIdentity::load(&certs::TlsPaths {
        ca: cfg.tls.ca.clone(),
        cert: cfg.tls.cert.clone(),
        key: cfg.tls.key.clone(),
    })
    .context("loading TLS material")?;
    // Peers admit a coordinator only while its certificate names a current member: the certificate must
    // name this member.
    let identity = tls.identity();
    if identity.role() != certs::Role::Coordinator || identity.name() != cfg.name {
        bail!(
            "tls.cert names {identity}, but this is coordinator {:?}: issue it a certificate with \
             `meridian certs issue --role coordinator --name {}`",
            cfg.name,
            cfg.name
        );
    }
    let keyring = Arc::new(load_keyring(cfg)?);

    // The admin listener is bound first, so the address this member advertises (and records in a new
    // cluster's membership) is the one it serves on, also when the configuration asks for port 0.
    let admin_listener = std::net::TcpListener::bind(cfg.admin.listen)
        .with_context(|| format!("binding the admin API on {}", cfg.admin.listen))?;
    let admin_bound = admin_listener
        .local_addr()
        .with_context(|| format!("binding the admin API on {}", cfg.admin.listen))?;
    let admin_advertise = cfg
        .admin
        .advertise
        .clone()
        .unwrap_or_else(|| admin_bound.to_string());
    let bootstrap = if cfg.bootstrap.init {
        Some(
            cfg.bootstrap
                .members
                .iter()
                .map(|m| {
                    (
                        m.id,
                        MemberNode {
                            name: m.name.clone(),
                            raft_addr: m.raft_addr.clone(),
                            // This member's own entry names where it actually listens.
                            admin_addr: if m.id == cfg.node_id
                                && m.admin_addr == cfg.admin.listen.to_string()
                            {
                                admin_advertise.clone()
                            } else {
                                m.admin_addr.clone()
                            },
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        )
    } else {
        None
    };
    let opts = CoordinatorOptions {
        node_id: cfg.node_id,
        name: cfg.name.clone(),
        data_dir: cfg.data_dir.clone(),
        raft_listen: cfg.raft.listen,
        advertise: MemberNode {
            name: cfg.name.clone(),
            raft_addr: cfg.raft_advertise(),
            admin_addr: admin_advertise.clone(),
        },
        tls: tls.clone(),
        timings: RaftTimings {
            heartbeat_ms: cfg.raft.heartbeat_ms,
            election_min_ms: cfg.raft.election_min_ms,
            election_max_ms: cfg.raft.election_max_ms,
        },
        snapshot_every: cfg.raft.snapshot_every,
        bootstrap,
        fleet: cfg.fleet.timings(),
        jobs: cfg.jobs.retention(),
        audit: cfg.audit.retention(),
        keyring: Some(keyring.clone()),
        approve_new_nodes: cfg.fleet.approve_new_nodes,
        clock: coordinator::clock::system(),
        link_faults: None,
        randomness: coordinator::random::os(),
    };
    let (coordinator, handle) = Coordinator::start(opts)
        .await
        .context("starting coordinator")?;

    let api = AdminApi::bind(AdminApiOptions {
        listen: cfg.admin.listen,
        listener: Some(admin_listener),
        tls: if cfg.admin.tls { Some(tls) } else { None },
        handle: handle.clone(),
        keyring: keyring.clone(),
        max_body_bytes: cfg.admin.max_body_bytes,
        limits: cfg.admin.limits(),
        project_defaults: cfg.quotas.project_defaults(),
        default_key_ttl: cfg.keys.default_ttl(),
    })
    .await
    .context("binding admin API")?;
    let admin_addr = api.local_addr();
    let api_task = tokio::spawn(api.run(shutdown.clone()));

    if cfg.bootstrap.init {
        if let Some(path) = &cfg.bootstrap.admin_token_file {
            ensure_bootstrapped(&handle, &keyring, path).await?;
        }
    }
    Ok(RunningCoordinator {
        handle,
        admin_addr,
        api_task,
        _coordinator: coordinator,
    })
}

fn load_keyring(cfg: &CoordinatorConfig) -> anyhow::Result<MasterKeyring> {
    if let Some(path) = &cfg.secrets.master_key_file {
        return MasterKeyring::load_file(path)
            .with_context(|| format!("master keyring {}", path.display()));
    }
    // Taken out of the environment when the process started (see `master_key_env`).
    match crate::master_key_env::master_key() {
        Some(v) => MasterKeyring::from_env_value(&v).context("MERIDIAN_MASTER_KEY"),
        None => bail!("no master key: set secrets.master_key_file or MERIDIAN_MASTER_KEY"),
    }
}

/// Waits for a leader, then commits the bootstrap (default project + platform-admin key) if it has not been.
/// The token is written before it is proposed, so a crash in between is repaired by the next start.
async fn ensure_bootstrapped(
    handle: &Handle,
    keyring: &MasterKeyring,
    token_file: &Path,
) -> anyhow::Result<()> {
    // Checked on every start, not only the first: a token file others may read is a leaked admin key.
    coordinator::bootstrap::refuse_loose_token_file(token_file)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if handle.read(|s| s.is_bootstrapped()) {
            return Ok(());
        }
        let token = coordinator::bootstrap::read_or_create_token(token_file)
            .with_context(|| format!("admin token file {}", token_file.display()))?;
        match coordinator::bootstrap::propose(handle, keyring, &token).await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "bootstrap not committed yet; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).context("bootstrapping the registry"),
        }
    }
}

/// The file in a data directory naming the addresses a running process listens on.
pub const ENDPOINTS_FILE: &str = "endpoints.json";

/// Writes `<dir>/endpoints.json` (`{"admin": …, "raft": …}` and whatever else `entries` name) atomically, so a
/// reader never sees half of it: with a port 0 in its configuration, a process says here which it got.
pub fn write_endpoints(dir: &Path, entries: &[(&str, String)]) -> anyhow::Result<()> {
    let map: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v.clone())))
        .collect();
    let text = serde_json::Value::Object(map).to_string();
    let path = dir.join(ENDPOINTS_FILE);
    let partial = dir.join(format!("{ENDPOINTS_FILE}.partial"));
    std::fs::write(&partial, text).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))
}

/// `meridian coordinator --config FILE`: runs until SIGINT or SIGTERM. The addresses it listens on are
/// written to `<data_dir>/endpoints.json` (useful with port 0, which picks free ports).
pub async fn run_from_file(path: &Path) -> anyhow::Result<()> {
    let cfg = CoordinatorConfig::load(path, &crate::config::process_env())?;
    if !cfg.admin.tls {
        tracing::warn!("admin API without TLS: only acceptable on loopback for local testing");
    }
    let shutdown = CancellationToken::new();
    let _ = std::fs::remove_file(cfg.data_dir.join(ENDPOINTS_FILE));
    let running = start(&cfg, shutdown.clone()).await?;
    let scheme = if cfg.admin.tls { "https" } else { "http" };
    let raft_addr = running.handle.raft_addr();
    write_endpoints(
        &cfg.data_dir,
        &[
            ("admin", format!("{scheme}://{}", running.admin_addr)),
            ("raft", raft_addr.to_string()),
        ],
    )?;
    tracing::info!(name = %cfg.name, admin = %running.admin_addr, raft = %raft_addr, "coordinator running");
    wait_for_signal().await?;
    tracing::info!("stopping");
    let _ = std::fs::remove_file(cfg.data_dir.join(ENDPOINTS_FILE));
    running.stop(&shutdown).await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
