//! `meridian-bench coordinator`: the coordinator group against a three-member etcd 3.4 group on this machine,
//! in one process tree — write throughput and latency at several client counts, then leader failover with a
//! read-back of every acknowledged write.
//!
//! Owns the run's order, its temporary directory and the lifetime of both groups (each is stopped when its
//! value drops, on error and on panic alike). Levels are interleaved (Meridian, then etcd, per client count)
//! so slow drift of a shared machine hits both sides alike. It never binds anything but 127.0.0.1.

mod etcd;
mod failover;
mod grpc;
mod http;
mod load;
pub(crate) mod meridian;
mod process;
mod report;
pub(crate) mod stats;
mod system;
mod workdir;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use etcd::{EtcdCluster, EtcdOptions};
use failover::FailoverPlan;
use http::HttpSettings;
use load::LoadPlan;
use meridian::{MeridianCluster, MeridianOptions};
pub(crate) use report::Report;
use report::{Machine, Settings, SystemReport};
use system::SystemUnderTest;
use workdir::WorkDir;

/// Which side(s) to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Side {
    Meridian,
    Etcd,
}

/// Options of `meridian-bench coordinator`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CoordinatorArgs {
    /// Measured seconds per concurrency level.
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
    /// Warm-up seconds before each level's measurement.
    #[arg(long, default_value_t = 2)]
    pub(crate) warmup_seconds: u64,
    /// Concurrent clients per level (each a loop of sequential writes).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub(crate) clients: Vec<usize>,
    /// How clients write: `json` (etcd's JSON gateway, Meridian's REST API) or `grpc` (each one's native
    /// gRPC API).
    #[arg(long, value_enum, default_value = "json")]
    pub(crate) protocol: load::Protocol,
    /// Leader kills per system (0 skips the failover measurement).
    #[arg(long, default_value_t = 5)]
    pub(crate) failover_rounds: usize,
    /// Systems to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "meridian,etcd"
    )]
    pub(crate) systems: Vec<Side>,
    /// Print the report as JSON instead of Markdown.
    #[arg(long)]
    pub(crate) json: bool,
    /// The `meridian` binary (default: $MERIDIAN_BIN, next to this binary, target/release, target/debug, PATH).
    #[arg(long)]
    pub(crate) meridian_bin: Option<PathBuf>,
    /// The `etcd` binary (default: PATH).
    #[arg(long)]
    pub(crate) etcd_bin: Option<PathBuf>,
    /// The workspace holding deploy/local-cluster.sh (default: the current directory if it has one, else the
    /// workspace this binary was built from).
    #[arg(long)]
    pub(crate) workspace: Option<PathBuf>,
    /// MERIDIAN_LOCAL_PORT_OFFSET for the coordinators (admin APIs on 7071+N..7073+N, QUIC on 7171+N..).
    #[arg(long, default_value_t = 600)]
    pub(crate) port_offset: u16,
    /// etcd members listen for clients on BASE+1..BASE+3 and for peers on BASE+11..BASE+13.
    #[arg(long, default_value_t = 23790)]
    pub(crate) etcd_base_port: u16,
    /// Timeout of every load and control request, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub(crate) request_timeout_ms: u64,
    /// During failover, a new probe write starts this often (the measurement's resolution), in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub(crate) probe_interval_ms: u64,
    /// During failover, each probe write gives up after this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub(crate) probe_timeout_ms: u64,
    /// Abort the whole run after this many minutes.
    #[arg(long, default_value_t = 30)]
    pub(crate) max_minutes: u64,
    /// Keep the temporary directory (data, certificates, logs) and log its path.
    #[arg(long)]
    pub(crate) keep_dir: bool,
}

impl CoordinatorArgs {
    fn validate(&self) -> anyhow::Result<()> {
        if self.seconds == 0 {
            bail!("--seconds must be at least 1");
        }
        if self.clients.is_empty()
            || self.clients.contains(&0)
            || self.clients.iter().any(|&c| c > 1024)
        {
            bail!("--clients must be a list of counts between 1 and 1024");
        }
        if self.systems.is_empty() {
            bail!("--systems must name at least one system");
        }
        if self.probe_interval_ms == 0 || self.probe_timeout_ms == 0 || self.request_timeout_ms == 0
        {
            bail!("timeouts and the probe interval must be positive");
        }
        if self.etcd_base_port > u16::MAX - 20 || self.port_offset > u16::MAX - 7200 {
            bail!("port settings out of range");
        }
        Ok(())
    }

    pub(crate) fn max_duration(&self) -> Duration {
        Duration::from_secs(self.max_minutes.max(1) * 60)
    }
}

/// A started system with what its clients need.
struct Running<S> {
    sut: Arc<S>,
    http: HttpSettings,
}

/// Runs the benchmark and returns the report; every process it started is gone when this returns.
pub(crate) async fn run(args: CoordinatorArgs, command: String) -> anyhow::Result<Report> {
    args.validate()?;
    let workspace = workspace_root(args.workspace.as_deref())?;
    // Held by each group too, so it outlives their processes however the run ends.
    let workdir = WorkDir::create()?;
    if args.keep_dir {
        workdir.keep();
    }
    let root = workdir.path().to_path_buf();
    tracing::info!(dir = %root.display(), "working directory");
    let run_id = run_id();
    let request_timeout = Duration::from_millis(args.request_timeout_ms);
    let want = |s: Side| args.systems.contains(&s);

    let mut meridian_report = SystemReport::new("Meridian");
    let mut etcd_report = SystemReport::new("etcd");
    let meridian_bin =
        meridian::find_binary(args.meridian_bin.as_deref(), &workspace).filter(|p| p.is_file());
    let meridian_version = match &meridian_bin {
        Some(bin) => version_of(bin).await,
        None => None,
    };
    if let Some(bin) = &meridian_bin {
        if bin.components().any(|c| c.as_os_str() == "debug") {
            tracing::warn!(
                "{} is a debug build; build it with --release for numbers worth comparing",
                bin.display()
            );
        }
    }

    // Meridian: local-cluster.sh up.
    let mut meridian_side: Option<Running<MeridianCluster>> = None;
    if !want(Side::Meridian) {
        meridian_report.skipped = Some("not requested (--systems)".into());
    } else if let Some(bin) = &meridian_bin {
        let options = MeridianOptions {
            binary: bin.clone(),
            script: workspace.join("deploy/local-cluster.sh"),
            dir: root.join("meridian"),
            workdir: workdir.clone(),
            port_offset: args.port_offset,
        };
        tracing::info!(dir = %options.dir.display(), "starting the Meridian coordinators");
        match start_meridian(options, request_timeout).await {
            Ok(running) => meridian_side = Some(running),
            Err(e) => meridian_report
                .errors
                .push(format!("starting the coordinators: {e:#}")),
        }
    } else {
        meridian_report.skipped =
            Some("the meridian binary was not found (cargo build --release -p meridian, or set MERIDIAN_BIN)".into());
    }

    // etcd: certificates from Meridian's CA, then three members.
    let mut etcd_side: Option<Running<EtcdCluster>> = None;
    let etcd_bin = args.etcd_bin.clone().or_else(etcd::find_binary);
    let etcd_version = match &etcd_bin {
        Some(bin) => version_of(bin).await,
        None => None,
    };
    if !want(Side::Etcd) {
        etcd_report.skipped = Some("not requested (--systems)".into());
    } else if let (Some(etcd_bin), Some(meridian_bin)) = (&etcd_bin, &meridian_bin) {
        let ca_dir = match &meridian_side {
            Some(m) => Ok(m.sut.ca_dir()),
            None => init_ca(meridian_bin, &root.join("ca"))
                .await
                .map(|()| root.join("ca")),
        };
        let started = match ca_dir {
            Ok(ca_dir) => {
                start_etcd(
                    &args,
                    etcd_bin,
                    meridian_bin,
                    &ca_dir,
                    &workdir,
                    request_timeout,
                )
                .await
            }
            Err(e) => Err(e),
        };
        match started {
            Ok(running) => etcd_side = Some(running),
            Err(e) => etcd_report.errors.push(format!("starting etcd: {e:#}")),
        }
    } else if etcd_bin.is_none() {
        etcd_report.skipped = Some(
            "etcd was not found on PATH (bench/run-coordinator-bench.sh installs etcd-server and etcd-client \
             with apt-get when run as root)"
                .into(),
        );
    } else {
        etcd_report.skipped =
            Some("etcd's certificates are issued with `meridian certs issue`, and no meridian binary was found".into());
    }

    // Throughput and latency, interleaved per level.
    for (level, &clients) in args.clients.iter().enumerate() {
        let plan = |tag: &str| LoadPlan {
            clients,
            warmup: Duration::from_secs(args.warmup_seconds),
            measure: Duration::from_secs(args.seconds),
            key_prefix: format!("{run_id}-{tag}{level}"),
            protocol: args.protocol,
        };
        if let Some(m) = &meridian_side {
            measure_level(m, &plan("m"), &mut meridian_report).await;
        }
        if let Some(e) = &etcd_side {
            measure_level(e, &plan("e"), &mut etcd_report).await;
        }
    }

    // Failover.
    if args.failover_rounds > 0 {
        let plan = |tag: &str| FailoverPlan {
            rounds: args.failover_rounds,
            probe_interval: Duration::from_millis(args.probe_interval_ms),
            probe_timeout: Duration::from_millis(args.probe_timeout_ms),
            max_in_flight: 256,
            before_kill: Duration::from_secs(1),
            after_recovery: Duration::from_millis(500),
            recovery_timeout: Duration::from_secs(30),
            catch_up_timeout: Duration::from_secs(120),
            key_prefix: format!("{run_id}-{tag}f"),
        };
        if let Some(m) = &meridian_side {
            measure_failover(m, &plan("m"), &mut meridian_report).await;
        }
        if let Some(e) = &etcd_side {
            measure_failover(e, &plan("e"), &mut etcd_report).await;
        }
    }

    if let Some(m) = meridian_side {
        shutdown(m.sut, |c| c.shutdown()).await;
    }
    if let Some(e) = etcd_side {
        shutdown(e.sut, |c| c.shutdown()).await;
    }
    let failed = !meridian_report.errors.is_empty() || !etcd_report.errors.is_empty();
    if args.keep_dir || failed {
        workdir.keep();
        tracing::warn!("kept data, certificates and logs in {}", root.display());
    }

    Ok(Report {
        date_utc: report::utc_now(),
        command,
        machine: Machine::probe(),
        settings: Settings {
            clients: args.clients.clone(),
            warmup_seconds: args.warmup_seconds as f64,
            seconds: args.seconds as f64,
            failover_rounds: args.failover_rounds,
            probe_interval_ms: args.probe_interval_ms as f64,
            routing: "client i writes through member i mod 3 (followers forward to the leader), same for both".into(),
            transport: match args.protocol {
                load::Protocol::Json => "HTTPS with server certificates from Meridian's CA, HTTP/1.1 keep-alive, \
                                         one connection per client; JSON: etcd through its v3 JSON gateway, \
                                         Meridian's REST API; etcd peers on mutual TLS"
                    .into(),
                load::Protocol::Grpc => "TLS with server certificates from Meridian's CA, HTTP/2, one connection \
                                         per client; native gRPC: etcd's KV/Put, Meridian's \
                                         ProjectService/CreateProject; etcd peers on mutual TLS"
                    .into(),
            },
            meridian_version,
            etcd_version,
        },
        systems: vec![meridian_report, etcd_report],
    })
}

/// Fails with a clear message when another process already listens where a group is about to.
fn ensure_ports_free(tcp: &[u16], udp: &[u16], what: &str) -> anyhow::Result<()> {
    for &port in tcp {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!("TCP port {port} on 127.0.0.1 is already in use, so {what} cannot start (choose other ports)");
        }
    }
    for &port in udp {
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
            bail!("UDP port {port} on 127.0.0.1 is already in use, so {what} cannot start (choose other ports)");
        }
    }
    Ok(())
}

async fn start_meridian(
    options: MeridianOptions,
    request_timeout: Duration,
) -> anyhow::Result<Running<MeridianCluster>> {
    let offset = options.port_offset;
    let admin: Vec<u16> = (7071..=7073).map(|p| p + offset).collect();
    let raft: Vec<u16> = (7171..=7173).map(|p| p + offset).collect();
    ensure_ports_free(&admin, &raft, "the Meridian coordinators (--port-offset)")?;
    let cluster = MeridianCluster::start(options, Duration::from_secs(90)).await?;
    let ca = std::fs::read(cluster.ca_dir().join("ca.pem")).context("reading the cluster's CA")?;
    let http = HttpSettings::new(&ca, request_timeout)?;
    let running = Running {
        sut: Arc::new(cluster),
        http,
    };
    ready(&running).await?;
    Ok(running)
}

async fn start_etcd(
    args: &CoordinatorArgs,
    etcd_bin: &Path,
    meridian_bin: &Path,
    ca_dir: &Path,
    workdir: &Arc<WorkDir>,
    request_timeout: Duration,
) -> anyhow::Result<Running<EtcdCluster>> {
    let root = workdir.path();
    let cert_dir = root.join("etcd-certs");
    std::fs::create_dir_all(&cert_dir)
        .with_context(|| format!("creating {}", cert_dir.display()))?;
    std::fs::copy(ca_dir.join("ca.pem"), cert_dir.join("ca.pem"))
        .context("copying the CA certificate")?;
    for n in 1..=etcd::MEMBERS {
        let name = format!("etcd{n}");
        let out = cert_dir.join(&name);
        meridian_cli(
            meridian_bin,
            &[
                "certs",
                "issue",
                "--ca-dir",
                &ca_dir.display().to_string(),
                "--role",
                "coordinator",
                "--name",
                &name,
                "--dns",
                "localhost",
                "--ip",
                "127.0.0.1",
                "--hours",
                "24",
                "--out",
                &out.display().to_string(),
            ],
        )
        .await?;
    }
    let base = args.etcd_base_port;
    let options = EtcdOptions {
        binary: etcd_bin.to_path_buf(),
        cert_dir,
        data_root: root.join("etcd"),
        workdir: workdir.clone(),
        client_ports: [base + 1, base + 2, base + 3],
        peer_ports: [base + 11, base + 12, base + 13],
    };
    let ports: Vec<u16> = options
        .client_ports
        .iter()
        .chain(&options.peer_ports)
        .copied()
        .collect();
    ensure_ports_free(&ports, &[], "etcd (--etcd-base-port)")?;
    let ca = std::fs::read(options.cert_dir.join("ca.pem")).context("reading the CA")?;
    let http = HttpSettings::new(&ca, request_timeout)?;
    tracing::info!(dir = %options.data_root.display(), "starting the etcd members");
    let cluster = EtcdCluster::start(options, &http.client()?, Duration::from_secs(60)).await?;
    let running = Running {
        sut: Arc::new(cluster),
        http,
    };
    ready(&running).await?;
    Ok(running)
}

/// Every member takes a write.
async fn ready<S: SystemUnderTest>(running: &Running<S>) -> anyhow::Result<()> {
    let all: Vec<usize> = (0..running.sut.members()).collect();
    let client = running.http.client()?;
    system::wait_writable(
        running.sut.as_ref(),
        &client,
        &all,
        &format!("{}-ready", run_id()),
        Duration::from_secs(60),
    )
    .await
}

async fn measure_level<S: SystemUnderTest>(
    running: &Running<S>,
    plan: &LoadPlan,
    report: &mut SystemReport,
) {
    tracing::info!(
        system = running.sut.name(),
        clients = plan.clients,
        "measuring writes"
    );
    match load::run_level(running.sut.clone(), &running.http, plan).await {
        Ok(level) => {
            tracing::info!(
                system = running.sut.name(),
                clients = plan.clients,
                writes_per_sec = format!("{:.1}", level.writes_per_sec),
                errors = level.errors,
                "level done"
            );
            if let Some(e) = &level.first_error {
                tracing::warn!(
                    system = running.sut.name(),
                    clients = plan.clients,
                    "first failed write: {e}"
                );
            }
            report.levels.push(level);
        }
        Err(e) => report
            .errors
            .push(format!("{} clients: {e:#}", plan.clients)),
    }
}

async fn measure_failover<S: SystemUnderTest>(
    running: &Running<S>,
    plan: &FailoverPlan,
    report: &mut SystemReport,
) {
    tracing::info!(
        system = running.sut.name(),
        rounds = plan.rounds,
        "measuring leader failover"
    );
    match failover::run(running.sut.clone(), &running.http, plan).await {
        Ok(result) => report.failover = Some(result),
        Err(e) => report.errors.push(format!("failover: {e:#}")),
    }
}

/// Calls `stop` on the group once no load task holds it any more (they have all been joined by now).
async fn shutdown<S, F, Fut>(sut: Arc<S>, stop: F)
where
    F: FnOnce(S) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    match Arc::try_unwrap(sut) {
        Ok(cluster) => stop(cluster).await,
        // Still shared: the last holder's drop kills the processes.
        Err(shared) => drop(shared),
    }
}

async fn init_ca(meridian_bin: &Path, out: &Path) -> anyhow::Result<()> {
    meridian_cli(
        meridian_bin,
        &[
            "certs",
            "init",
            "--trust-domain",
            "bench.meridian",
            "--out",
            &out.display().to_string(),
        ],
    )
    .await
}

async fn meridian_cli(bin: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(bin)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("meridian {} did not finish within 60 s", args.join(" ")))?
    .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "meridian {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The first line of `BIN --version`.
async fn version_of(bin: &Path) -> Option<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(bin).arg("--version").output(),
    )
    .await
    .ok()?
    .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
}

fn workspace_root(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir().context("reading the current directory")?;
    if cwd.join("deploy/local-cluster.sh").is_file() {
        return Ok(cwd);
    }
    Ok(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

/// A short name-safe id for this run, so keys never collide with an earlier run's.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut v = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
    let mut id = String::from("b");
    for _ in 0..6 {
        let digit = (v % 36) as u32;
        id.push(std::char::from_digit(digit, 36).unwrap_or('0'));
        v /= 36;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The project name rule of the admin API: `[a-z0-9][a-z0-9-]{0,62}`.
    fn valid_name(s: &str) -> bool {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    }

    #[test]
    fn generated_keys_are_valid_project_names_even_at_their_longest() {
        let id = run_id();
        assert!(valid_name(&id), "{id}");
        // Load keys: {run}-{tag}{level}-{client}-{seq}; failover keys: {run}-{tag}f-{round}-{seq}.
        let longest_load = format!("{id}-e9-1023-{}", u64::MAX);
        let longest_probe = format!("{id}-ef-99-{}", u64::MAX);
        assert!(valid_name(&longest_load), "{longest_load}");
        assert!(valid_name(&longest_probe), "{longest_probe}");
    }

    #[test]
    fn arguments_are_validated_once() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: CoordinatorArgs,
        }
        let ok = Cli::parse_from(["x", "--clients", "1,4", "--systems", "etcd"]).args;
        assert_eq!(ok.clients, vec![1, 4]);
        assert_eq!(ok.systems, vec![Side::Etcd]);
        assert!(ok.validate().is_ok());
        assert!(Cli::parse_from(["x", "--clients", "0"])
            .args
            .validate()
            .is_err());
        assert!(Cli::parse_from(["x", "--seconds", "0"])
            .args
            .validate()
            .is_err());
    }
}
