//! The command line of Meridian's own processes and their certificates: `meridian dev`, `meridian agent`,
//! the coordinator's configuration, and `meridian certs` with the mesh deny-list.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::{ClientArgs, ListArgs, OutputFormat};

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory for state, certificates and the admin token.
    #[arg(long, env = "MERIDIAN_DATA_DIR", default_value = ".meridian")]
    pub data_dir: PathBuf,
    /// Admin API listen address (loopback only: dev mode serves plain HTTP). Port 0 picks a free port; the
    /// addresses in use are written to `<data-dir>/endpoints.json`.
    #[arg(
        long,
        env = "MERIDIAN_DEV_ADMIN_LISTEN",
        default_value = "127.0.0.1:7070"
    )]
    pub admin_listen: std::net::SocketAddr,
    /// QUIC listen address for coordinator RPCs.
    #[arg(
        long,
        env = "MERIDIAN_DEV_RAFT_LISTEN",
        default_value = "127.0.0.1:7170"
    )]
    pub raft_listen: std::net::SocketAddr,
    /// Inference gateway listen address: Open Inference Protocol v2 under `/v2` (loopback only: dev mode serves
    /// plain HTTP).
    #[arg(
        long,
        env = "MERIDIAN_DEV_GATEWAY_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub gateway_listen: std::net::SocketAddr,
    /// Serve the embedded agent's Prometheus metrics at `GET /metrics` on this address (loopback only; port
    /// 0 picks a free port, named `agent_metrics` in `<data-dir>/endpoints.json`). Unset: not served.
    #[arg(long, env = "MERIDIAN_DEV_AGENT_METRICS_LISTEN")]
    pub agent_metrics_listen: Option<std::net::SocketAddr>,
    /// Run jobs without their sandbox, as this process's own user, able to read its keys and every other
    /// job's data. For development on hosts that cannot sandbox (not root, no namespaces or eBPF) only.
    #[arg(long)]
    pub insecure_no_sandbox: bool,
    /// The most processes and threads one job may have.
    #[arg(long, env = "MERIDIAN_DEV_JOB_PIDS_MAX", default_value_t = 4096)]
    pub job_pids_max: u64,
    /// Most admin API connections open at once.
    #[arg(
        long,
        env = "MERIDIAN_DEV_ADMIN_MAX_CONNECTIONS",
        default_value_t = 1024
    )]
    pub admin_max_connections: usize,
    /// How long an admin API client may take to send its request headers, in milliseconds.
    #[arg(
        long,
        env = "MERIDIAN_DEV_ADMIN_HEADER_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub admin_header_timeout_ms: u64,
    /// How long an admin API client may take to send a request body, in milliseconds (then 408).
    #[arg(
        long,
        env = "MERIDIAN_DEV_ADMIN_BODY_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub admin_body_timeout_ms: u64,
    /// Refused admin API requests a key or an address may collect in a burst before it gets 429.
    #[arg(long, env = "MERIDIAN_DEV_ADMIN_REFUSED_BURST", default_value_t = 20)]
    pub admin_refused_burst: u32,
    /// Refused requests per second a key or an address earns back.
    #[arg(
        long,
        env = "MERIDIAN_DEV_ADMIN_REFUSED_PER_SECOND",
        default_value_t = 2
    )]
    pub admin_refused_per_second: u32,
    /// How often coalesced counts of refused requests are written to the audit log, in milliseconds.
    #[arg(
        long,
        env = "MERIDIAN_DEV_ADMIN_REFUSED_AUDIT_WINDOW_MS",
        default_value_t = 5_000
    )]
    pub admin_refused_audit_window_ms: u64,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub action: Option<AgentAction>,
    /// TOML config file (runs the agent).
    #[arg(long, short = 'c', env = "MERIDIAN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Run jobs without their sandbox, as the agent's own user, able to read its keys and every other
    /// job's data. For development only; the agent logs it loudly.
    #[arg(long, global = true)]
    pub insecure_no_sandbox: bool,
}

#[derive(Debug, Subcommand)]
pub enum AgentAction {
    /// Print what this node offers: CPUs, memory, disk, OS and GPUs (NVML, else nvidia-smi).
    Inventory {
        /// Data directory whose file system is reported as the node's disk.
        #[arg(long, default_value = ".")]
        data_dir: PathBuf,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Run a command once on this node exactly as a job would run (own process group and directory,
    /// resource limits, GPUs pinned through CUDA_VISIBLE_DEVICES, captured logs), without a coordinator.
    /// Exits with the command's exit code.
    Try {
        /// GPUs to pin (the first healthy ones from the inventory).
        #[arg(long, default_value_t = 0)]
        gpus: u32,
        /// CPU cores (fractions allowed, e.g. 0.5); 0 means no limit.
        #[arg(long, default_value_t = 0.0)]
        cpu: f64,
        /// Memory limit in MiB; 0 means no limit.
        #[arg(long, default_value_t = 0)]
        memory_mib: u64,
        /// Where the trial keeps its state and logs (default: a temporary directory).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// TOML config file.
    #[arg(long, short = 'c', env = "MERIDIAN_CONFIG")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a trust domain's CA (ca.pem, and ca.key with mode 0600).
    #[command(
        after_help = "Example:\n  meridian certs init --trust-domain prod.example --out /etc/meridian/ca"
    )]
    Init {
        /// Trust domain, e.g. prod.example.
        #[arg(long, default_value = "meridian.local")]
        trust_domain: String,
        /// Directory to write ca.pem and ca.key into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// CA lifetime in days.
        #[arg(long, default_value_t = 3650)]
        days: u64,
        /// Overwrite an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issue a leaf certificate for a coordinator, agent, gateway or operator.
    #[command(after_help = "Examples:\n  \
meridian certs issue --ca-dir ca --role coordinator --name c1 --dns localhost --ip 127.0.0.1 --out c1\n  \
meridian certs issue --ca-dir ca --role agent --region eu --cluster eu1 --name eu-a1 --out eu-a1\n  \
meridian certs issue --ca-dir ca --role operator --name alice --hours 8 --out alice\n\n\
Only coordinators and gateways may carry --dns/--ip names. Lifetimes are bounded: --hours may not exceed\n\
--max-days (397 by default), which may not exceed 825.")]
    Issue {
        /// Directory holding ca.pem and ca.key.
        #[arg(long, default_value = ".")]
        ca_dir: PathBuf,
        /// Role of the identity.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Name of the coordinator, gateway, operator, or the agent's node.
        #[arg(long)]
        name: String,
        /// Region (agents and gateways).
        #[arg(long)]
        region: Option<String>,
        /// Cluster (agents).
        #[arg(long)]
        cluster: Option<String>,
        /// Extra DNS names (for HTTPS clients checking the host name).
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// Extra IP addresses.
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
        /// Lifetime in hours; at most --max-days.
        #[arg(long, default_value_t = 24)]
        hours: u64,
        /// The longest lifetime this command accepts, in days (default 397; at most 825, the hard cap).
        #[arg(long, default_value_t = 397)]
        max_days: u64,
        /// Output path prefix: writes PREFIX.pem and PREFIX.key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a certificate's identity and validity.
    #[command(after_help = "Example:\n  meridian certs inspect c1.pem -o json")]
    Inspect {
        /// PEM certificate file.
        file: PathBuf,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Print a new master key line (`id:base64key`) for the secrets keyring; the last line of the file is current.
    #[command(after_help = "Example:\n  meridian certs master-key >> /etc/meridian/master.keys")]
    MasterKey,
    #[command(flatten)]
    DenyList(DenyListCommand),
}

/// The mesh deny-list, through the admin API (platform-admin).
#[derive(Debug, Subcommand)]
pub enum DenyListCommand {
    /// Revoke a certificate (or every certificate of an identity): coordinators and agents refuse it at once
    /// and close its open connections within seconds (platform-admin).
    #[command(
        after_help = "Examples:\n  meridian certs revoke stolen.pem --reason 'laptop lost'\n  \
meridian certs revoke --serial 4a:0b:ff:...\n  \
meridian certs revoke --identity spiffe://prod.example/coordinator/c4\n\n\
A certificate file or --serial revokes that one certificate (a renewed one keeps working); --identity revokes\n\
every certificate naming the identity. Undo with `meridian certs unrevoke` and the same argument."
    )]
    Revoke {
        #[command(flatten)]
        selector: RevokeSelector,
        /// Why, for the deny-list and the audit log.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a certificate or identity from the deny-list (platform-admin).
    #[command(after_help = "Example:\n  meridian certs unrevoke --serial 4a0bff...")]
    Unrevoke {
        #[command(flatten)]
        selector: RevokeSelector,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the deny-list: revoked certificates and identities, denied nodes (platform-admin).
    #[command(
        name = "deny-list",
        after_help = "Example:\n  meridian certs deny-list -o json"
    )]
    List(ListArgs),
}

/// What `certs revoke` names: exactly one of a certificate file, a serial number or an identity.
#[derive(Debug, Clone, Args)]
pub struct RevokeSelector {
    /// PEM certificate file: revokes this certificate (by its serial number).
    #[arg(value_name = "CERT_FILE")]
    pub cert: Option<PathBuf>,
    /// Serial number in hex (as `meridian certs inspect` prints it; `:` separators allowed).
    #[arg(long, conflicts_with = "cert")]
    pub serial: Option<String>,
    /// A SPIFFE identity, e.g. spiffe://prod.example/region/eu/cluster/a/agent/n1.
    #[arg(long, conflicts_with_all = ["cert", "serial"])]
    pub identity: Option<String>,
}

/// Roles a certificate can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Coordinator,
    Agent,
    Gateway,
    Operator,
}
