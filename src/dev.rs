//! `meridian dev`: a single-node coordinator, an agent for this machine and the inference gateway, with an
//! auto-generated dev CA, all state in one directory.
//!
//! Layout of the directory: `certs/` (dev CA, coordinator and agent certificates), `master.keys` (secrets
//! keyring, unless `MERIDIAN_MASTER_KEY` provides it), `coordinator/` (Raft log and snapshots), `agent/` (the
//! agent's data), `admin.token` (mode 0600).
//! Starting again on the same directory reuses all of it; only the short-lived certificates are re-issued.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::cli::DevArgs;
use crate::config::{
    AdminSection, BootstrapMember, BootstrapSection, CoordinatorConfig, RaftSection,
    SecretsSection, TlsSection,
};
use crate::gateway_source::RegistryRoutes;

const DEV_TRUST_DOMAIN: &str = "dev.meridian.local";

/// Runs dev mode until Ctrl-C.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if !args.admin_listen.ip().is_loopback() {
        anyhow::bail!("--admin-listen: dev mode serves plain HTTP and only listens on loopback");
    }
    if !args.gateway_listen.ip().is_loopback() {
        anyhow::bail!("--gateway-listen: dev mode serves plain HTTP and only listens on loopback");
    }
    let cfg = prepare(&args)?;
    // A file left by an earlier run names ports that are gone.
    let _ = std::fs::remove_file(args.data_dir.join(crate::server::ENDPOINTS_FILE));
    // Bound before anything starts, so a taken port stops dev mode before the coordinator runs.
    let gateway_listener = tokio::net::TcpListener::bind(args.gateway_listen)
        .await
        .with_context(|| format!("--gateway-listen: binding {}", args.gateway_listen))?;
    let gateway_addr = gateway_listener
        .local_addr()
        .with_context(|| format!("--gateway-listen: binding {}", args.gateway_listen))?;
    let agent_metrics = args
        .agent_metrics_listen
        .map(|addr| agent::MetricsListener::bind(addr, false))
        .transpose()
        .context("--agent-metrics-listen")?;
    let shutdown = CancellationToken::new();
    let running = crate::server::start(&cfg, shutdown.clone()).await?;
    let gateway_task = tokio::spawn(gateway::serve(
        gateway_listener,
        Arc::new(RegistryRoutes::new(running.handle.clone())),
        gateway::GatewayOptions::default(),
        shutdown.clone(),
    ));
    let agent_tls = certs::TlsIdentity::load(&certs::TlsPaths {
        ca: cfg.tls.ca.clone(),
        cert: args.data_dir.join("certs/agent.pem"),
        key: args.data_dir.join("certs/agent.key"),
    })
    .context("loading the dev agent's certificate")?;
    let agent_dir = args.data_dir.join("agent");
    std::fs::create_dir_all(&agent_dir)
        .with_context(|| format!("creating {}", agent_dir.display()))?;
    // The addresses actually bound (a port 0 asked for a free one), for the agent and for whoever drives
    // this process.
    let raft_addr = running.handle.raft_addr();
    let mut endpoints = vec![
        ("admin", format!("http://{}", running.admin_addr)),
        ("raft", raft_addr.to_string()),
        ("gateway", format!("http://{gateway_addr}")),
    ];
    if let Some(metrics) = &agent_metrics {
        endpoints.push(("agent_metrics", format!("http://{}", metrics.local_addr())));
    }
    crate::server::write_endpoints(&args.data_dir, &endpoints)?;
    let mut agent_options =
        agent::AgentOptions::new(vec![raft_addr.to_string()], agent_tls, agent_dir);
    agent_options.protected_local_ports = vec![running.admin_addr.port(), gateway_addr.port()];
    agent_options.job_defaults.pids_max = args.job_pids_max;
    agent_options.metrics = agent_metrics;
    match &mut agent_options.sandbox {
        Some(sandbox) if !args.insecure_no_sandbox => {
            // The whole dev directory (CA key, keyring, admin token, coordinator state) stays hidden.
            let dir = std::path::absolute(&args.data_dir).unwrap_or_else(|_| args.data_dir.clone());
            sandbox.hidden_paths.push(dir);
        }
        _ => agent_options.sandbox = None,
    }
    let agent_task = tokio::spawn(agent::run(agent_options, shutdown.clone()));
    tracing::info!(
        admin = %running.admin_addr,
        gateway = %gateway_addr,
        token_file = %args.data_dir.join("admin.token").display(),
        "meridian dev is ready"
    );
    eprintln!(
        "meridian dev: admin API on http://{} — inference gateway on http://{} — token in {}",
        running.admin_addr,
        gateway_addr,
        args.data_dir.join("admin.token").display()
    );
    let mut agent_task = agent_task;
    // The agent returns early only when it cannot start (e.g. jobs cannot be isolated here): then dev
    // mode stops too, rather than serve a fleet that can never run a job.
    let agent_failed = tokio::select! {
        signal = crate::server::wait_for_signal() => {
            signal?;
            None
        }
        ended = &mut agent_task => Some(match ended {
            Ok(Err(e)) => anyhow::Error::new(e).context("the dev agent could not start"),
            Ok(Ok(())) => anyhow::anyhow!("the dev agent stopped unexpectedly"),
            Err(e) => anyhow::Error::new(e).context("the dev agent task failed"),
        }),
    };
    eprintln!("meridian dev: stopping");
    let _ = std::fs::remove_file(args.data_dir.join(crate::server::ENDPOINTS_FILE));
    running.stop(&shutdown).await;
    if let Err(e) = gateway_task.await {
        tracing::warn!(error = %e, "the gateway task failed");
    }
    if let Some(error) = agent_failed {
        return Err(error);
    }
    match agent_task.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "the dev agent stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "the dev agent task failed"),
        Ok(Ok(())) => {}
    }
    Ok(())
}

/// Creates (or reuses) the dev directory's CA, certificate and keyring; returns the coordinator config.
pub fn prepare(args: &DevArgs) -> anyhow::Result<CoordinatorConfig> {
    let dir = &args.data_dir;
    let certs_dir = dir.join("certs");
    std::fs::create_dir_all(&certs_dir)
        .with_context(|| format!("creating {}", certs_dir.display()))?;
    restrict_dir(dir)?;

    let ca_pem = certs_dir.join("ca.pem");
    let ca_key = certs_dir.join("ca.key");
    let ca = if ca_pem.exists() && ca_key.exists() {
        certs::CertificateAuthority::load(&ca_pem, &ca_key).context("loading the dev CA")?
    } else {
        let ca = certs::CertificateAuthority::generate(
            DEV_TRUST_DOMAIN,
            std::time::Duration::from_secs(10 * 365 * 86400),
        )
        .context("generating the dev CA")?;
        ca.write_to(&certs_dir).context("writing the dev CA")?;
        ca
    };
    let identity =
        certs::Identity::coordinator(ca.trust_domain(), "dev").context("dev identity")?;
    let mut req = certs::LeafRequest::new(identity, certs::DEFAULT_LEAF_LIFETIME);
    req.dns_names = vec!["localhost".into()];
    req.ip_addresses = vec![args.admin_listen.ip()];
    let leaf = ca
        .issue(&req)
        .context("issuing the dev coordinator certificate")?;
    let cert = certs_dir.join("coordinator.pem");
    let key = certs_dir.join("coordinator.key");
    leaf.write(&cert, &key)
        .context("writing the dev coordinator certificate")?;
    let agent_identity = certs::Identity::agent(ca.trust_domain(), "local", "dev", "dev")
        .context("dev agent identity")?;
    let agent_leaf = ca
        .issue(&certs::LeafRequest::new(
            agent_identity,
            certs::DEFAULT_LEAF_LIFETIME,
        ))
        .context("issuing the dev agent certificate")?;
    agent_leaf
        .write(&certs_dir.join("agent.pem"), &certs_dir.join("agent.key"))
        .context("writing the dev agent certificate")?;

    // MERIDIAN_MASTER_KEY, when set, is the keyring (taken out of the environment at start-up);
    // otherwise `master.keys`, created on first start.
    let master_key_file = match crate::master_key_env::master_key() {
        Some(from_env) => {
            crate::master_key_env::restore(from_env);
            None
        }
        None => {
            let keyring = dir.join("master.keys");
            if !keyring.exists() {
                let line =
                    coordinator::crypto::MasterKeyring::generate_line(&mut rand::rngs::OsRng);
                let text = zeroize::Zeroizing::new(format!("{}\n", line.as_str()));
                write_private(&keyring, &text)?;
            }
            Some(keyring)
        }
    };

    Ok(CoordinatorConfig {
        node_id: 1,
        name: "dev".into(),
        data_dir: dir.join("coordinator"),
        region: "local".into(),
        raft: RaftSection {
            listen: args.raft_listen,
            advertise: None,
            heartbeat_ms: 50,
            election_min_ms: 300,
            election_max_ms: 600,
            snapshot_every: 10_000,
        },
        admin: AdminSection {
            listen: args.admin_listen,
            advertise: None,
            tls: false,
            max_body_bytes: 1 << 20,
            max_connections: args.admin_max_connections,
            max_connections_per_source: args.admin_max_connections,
            header_timeout_ms: args.admin_header_timeout_ms,
            body_timeout_ms: args.admin_body_timeout_ms,
            refused_burst: args.admin_refused_burst,
            refused_per_second: args.admin_refused_per_second,
            refused_audit_window_ms: args.admin_refused_audit_window_ms,
        },
        tls: TlsSection {
            ca: ca_pem,
            cert,
            key,
        },
        secrets: SecretsSection { master_key_file },
        bootstrap: BootstrapSection {
            init: true,
            admin_token_file: Some(dir.join("admin.token")),
            members: vec![BootstrapMember {
                id: 1,
                name: "dev".into(),
                raft_addr: args.raft_listen.to_string(),
                admin_addr: args.admin_listen.to_string(),
            }],
        },
        // The dev cluster approves its node on arrival; production clusters wait for an operator.
        fleet: crate::config::FleetSection {
            approve_new_nodes: true,
            ..Default::default()
        },
        jobs: Default::default(),
        audit: Default::default(),
        quotas: Default::default(),
        keys: Default::default(),
    })
}

fn restrict_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", dir.display()))
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
