//! The `meridian` command line: clap definitions only.
//!
//! Parsing lives here; what each command does lives in `commands/`, `server` and `dev`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod job;

pub use job::{JobCommand, JobRunArgs};

const ABOUT: &str = "Meridian: a federated, multi-cluster compute platform for ML.";

const AFTER_HELP: &str = "\
Examples:
  meridian dev                                  # single-node coordinator on 127.0.0.1:7070
  export MERIDIAN_TOKEN=$(cat .meridian/admin.token)
  meridian project create vision
  meridian key create ci --role editor --project vision
  meridian cluster status -o json
  meridian job run --gpus 1 --wait -- python3 train.py
  meridian job logs -f job_3kq9x2

Environment:
  MERIDIAN_ADDR     admin API address, or several comma-separated (default: the context's, else
                    http://127.0.0.1:7070)
  MERIDIAN_TOKEN    API key (default: the context's token file, else ./.meridian/admin.token)
  MERIDIAN_CACERT   CA certificate to trust for an https:// admin API
  MERIDIAN_PROJECT  project to act in (default: the context's, else the key's own project)
  MERIDIAN_CONTEXT  named context to use (default: the current one; see meridian context)
  MERIDIAN_CONFIG   the CLI's config file (default ~/.config/meridian/config.toml)

Exit codes:
  0 success   1 failure   2 bad usage or invalid input
  3 unauthenticated, forbidden, or over a project quota or rate limit
  4 not found 5 conflict  6 unavailable (no connection, no leader, not ready)
  7 the job ended without succeeding (failed, cancelled or lost; job run --wait)
  8 no node of the fleet could ever run the job (job run --wait, job plan)
  9 job run --wait-timeout ran out before the job ended (it keeps running)";

/// Top-level command line.
#[derive(Debug, Parser)]
#[command(name = "meridian", version, about = ABOUT, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command that talks to the admin API.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Admin API address, or several comma-separated (tried in turn when one cannot be reached), e.g.
    /// https://10.0.0.1:7071,https://10.0.0.2:7071 [default: the context's, else http://127.0.0.1:7070].
    #[arg(long, env = "MERIDIAN_ADDR", global = true)]
    pub addr: Option<String>,
    /// Named context to use for this command (see `meridian context`) instead of the current one.
    #[arg(long, env = "MERIDIAN_CONTEXT", global = true)]
    pub context: Option<String>,
    /// API key (Bearer token).
    #[arg(long, env = "MERIDIAN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the admin API's certificate.
    #[arg(long, env = "MERIDIAN_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
    /// Project to act in (name or id).
    #[arg(long, env = "MERIDIAN_PROJECT", global = true)]
    pub project: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a single-node coordinator with an embedded dev CA (admin API on 127.0.0.1:7070).
    #[command(after_help = "Example:\n  meridian dev --data-dir ./.meridian\n\n\
The admin token is written to DIR/admin.token (mode 0600). Ctrl-C stops cleanly; running again on the same \
directory keeps all state.")]
    Dev(DevArgs),
    /// Run a coordinator from a TOML config file (every option also settable as MERIDIAN_* env var).
    #[command(
        after_help = "Example:\n  meridian coordinator --config /etc/meridian/coordinator.toml"
    )]
    Coordinator(ConfigArgs),
    /// Run a node agent from a TOML config file, or check this node (inventory, a trial run).
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Examples:\n  meridian agent --config /etc/meridian/agent.toml\n  \
meridian agent inventory -o json\n  \
meridian agent try --gpus 1 -- python3 -c 'import torch; print(torch.cuda.get_device_name(0))'"
    )]
    Agent(AgentArgs),
    /// Certificate authority and certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Projects.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Role bindings.
    #[command(subcommand)]
    Role(RoleCommand),
    /// Project secrets (write-only: values are never shown again).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Coordinator cluster status and membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Nodes registered by their agents, with health and lease epoch.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Jobs: run commands on the fleet, watch them, read their output, cancel them.
    #[command(subcommand)]
    Job(JobCommand),
    /// The project's reserved CPU-, memory- and GPU-seconds, in total and per job, over a time range.
    #[command(
        after_help = "Examples:\n  meridian usage                               # the last 24 hours\n  \
meridian usage --project vision --since 7d\n  \
meridian usage --since 2026-11-01T00:00:00Z --until 2026-12-01T00:00:00Z -o json\n\n\
TIME is RFC 3339, Unix milliseconds, or a duration back from now (30m, 2h, 7d)."
    )]
    Usage(UsageArgs),
    /// The hash-chained audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Who the current token belongs to.
    Whoami(ClientOnly),
    /// Named contexts (addresses, CA, token file, project) in the CLI's config file, like kubectl's.
    #[command(
        subcommand,
        after_help = "Examples:\n  meridian context add prod --addr https://10.0.0.1:7071,https://10.0.0.2:7071 \\\n      \
--cacert ./certs/ca.pem --token-file ./prod.token --project vision\n  meridian context use prod\n  \
meridian context list\n\n\
The file is $MERIDIAN_CONFIG, else $XDG_CONFIG_HOME/meridian/config.toml, else ~/.config/meridian/config.toml. \
Flags and MERIDIAN_* variables override the context's values; --context NAME picks another for one command."
    )]
    Context(ContextCommand),
    /// Print shell completions.
    #[command(
        after_help = "Example:\n  meridian completions bash > /etc/bash_completion.d/meridian"
    )]
    Completions {
        /// Shell to generate for.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// Add a context (or replace one of the same name); the first one added becomes current.
    Add {
        name: String,
        /// Admin API address, or several comma-separated.
        #[arg(long)]
        addr: String,
        /// PEM file of the CA that signed the admin API's certificate (needed for https://).
        #[arg(long)]
        cacert: Option<PathBuf>,
        /// File holding the API key (the key itself is never copied into the config file).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Project to act in.
        #[arg(long)]
        project: Option<String>,
        /// Also make it the current context.
        #[arg(long = "use")]
        make_current: bool,
    },
    /// Make a context the current one.
    Use { name: String },
    /// List the contexts; `*` marks the current one.
    List {
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Remove a context.
    Remove { name: String },
}

#[derive(Debug, Args)]
pub struct ClientOnly {
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A list command: newest first, at most `--limit` items.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub list: ListOptions,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// How much of a list to show.
#[derive(Debug, Clone, Copy, Args)]
pub struct ListOptions {
    /// Show only the N newest.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

/// `--watch`: show the answer again every interval until Ctrl-C.
#[derive(Debug, Clone, Copy, Args)]
pub struct WatchOptions {
    /// Redraw every 2 seconds until Ctrl-C; when stdout is not a terminal, print a new table each time,
    /// after a blank line.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Time between two redraws with --watch (`500ms`, `2s`).
    #[arg(long, hide = true, value_name = "DURATION", value_parser = interval_arg, default_value = "2s")]
    pub interval: std::time::Duration,
}

/// A list command that can also watch: `--limit`, `--watch`.
#[derive(Debug, Args)]
pub struct WatchListArgs {
    #[command(flatten)]
    pub list: ListOptions,
    #[command(flatten)]
    pub watch: WatchOptions,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A command that can watch: `--watch`.
#[derive(Debug, Args)]
pub struct WatchOnly {
    #[command(flatten)]
    pub watch: WatchOptions,
    #[command(flatten)]
    pub client: ClientArgs,
}

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

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project.
    #[command(
        after_help = "Example:\n  meridian project create vision --description 'image models'"
    )]
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the projects you can see, newest first.
    List(ListArgs),
    /// Show one project (name or id).
    Get {
        #[arg(value_name = "PROJECT")]
        name_or_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete an empty project.
    Delete {
        #[arg(value_name = "PROJECT")]
        name_or_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A project's policy: quotas, network and preemption ceiling (set by a platform-admin).
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show a project's policy.
    #[command(after_help = "Example:\n  meridian project policy get vision -o json")]
    Get {
        #[arg(value_name = "PROJECT")]
        name_or_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a project's policy; options left out keep their value (platform-admin only).
    #[command(after_help = "Examples:\n  \
meridian project policy set vision --max-pending-jobs 200 --max-running-gpus 16\n  \
meridian project policy set vision --max-running-cpu 64 --max-running-memory 256Gi --max-spec-bytes 32Mi\n  \
meridian project policy set sandbox --network none\n  \
meridian project policy set batch --preemption-ceiling 10   # may evict other projects' jobs below priority 10")]
    Set {
        #[arg(value_name = "PROJECT")]
        name_or_id: String,
        /// Most jobs pending at once.
        #[arg(long)]
        max_pending_jobs: Option<u64>,
        /// Most CPU cores reserved by the project's scheduled and running jobs (`64`, `0.5`, `500m`).
        #[arg(long, value_name = "CORES")]
        max_running_cpu: Option<String>,
        /// Most memory reserved by them (`256Gi`, `1T`, bytes).
        #[arg(long, value_name = "SIZE")]
        max_running_memory: Option<String>,
        /// Most GPUs held by them.
        #[arg(long)]
        max_running_gpus: Option<u64>,
        /// Most bytes of job specs held by unfinished jobs (`32Mi`, bytes).
        #[arg(long, value_name = "SIZE")]
        max_spec_bytes: Option<String>,
        /// The network of the project's jobs: `none` (loopback only) or `egress`.
        #[arg(long, value_name = "none|egress")]
        network: Option<String>,
        /// Other projects' jobs below this priority may be evicted for this project's preempting jobs
        /// (0: never).
        #[arg(long, value_name = "PRIORITY")]
        preemption_ceiling: Option<i64>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an API key (with a new service account bound to ROLE); the token is shown once.
    #[command(after_help = "Examples:
  meridian key create ci --role editor --project vision --expires-in 30d
  meridian key create break-glass --principal sa_12ab --no-expiry      (platform-admin only)

Keys expire: without --expires-in or --no-expiry, after the coordinator's [keys] default_ttl (90 days).
You can only bind a role you hold yourself in the project, and only mint keys for principals you manage
everywhere they are bound.")]
    Create {
        /// Key name.
        name: String,
        /// Role bound to the key's principal in the project (default: viewer for a new service account,
        /// none for --principal).
        #[arg(long)]
        role: Option<String>,
        /// A key for this existing principal instead of a new service account.
        #[arg(long, value_name = "PRINCIPAL_ID")]
        principal: Option<String>,
        /// Expire after this long, e.g. 12h, 30d, 1d12h (default: the coordinator's default lifetime).
        #[arg(long, value_name = "DURATION", value_parser = duration_arg, conflicts_with = "no_expiry")]
        expires_in: Option<u64>,
        /// Never expire (platform-admins only).
        #[arg(long)]
        no_expiry: bool,
        /// Narrow the key to these roles (comma-separated): it grants only what they allow of the
        /// principal's rights, e.g. --roles viewer for a read-only key of an admin.
        #[arg(long, value_name = "ROLE,...", value_delimiter = ',')]
        roles: Vec<String>,
        /// The key acts only in the project it is created in (others answer "not found").
        #[arg(long)]
        project_only: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List keys (prefix and last 4 characters only), newest first.
    List(ListArgs),
    /// Revoke a key; it stops working on every coordinator.
    Revoke {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Bind a role to a principal in the current project (or the platform).
    #[command(
        after_help = "Example:\n  meridian role bind --principal sa_12ab --role deployer --project vision"
    )]
    Bind {
        #[arg(long)]
        principal: String,
        #[arg(long)]
        role: String,
        /// Bind platform-wide (platform-admin only).
        #[arg(long)]
        platform: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List role bindings of the current project, newest first.
    List(ListArgs),
    /// Remove a role binding.
    Unbind {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create or add a version of a secret; the value is read from stdin unless --value is given.
    #[command(after_help = "Examples:
  printf %s \"$S3_KEY\" | meridian secret put s3-key --bind principal:sa_3kq9x0c2m4v7b1zd
  printf %s \"$WANDB\" | meridian secret put wandb --bind 'principal:sa_3kq9x0c2m4v7b1zd/job:train-*'

A binding names who may use the secret: jobs submitted by that principal (user or service account), or only
those of its jobs whose name matches the pattern. The submitter also needs the use-secrets right (the
secret-user or project-admin role). A job's name alone never selects a secret.")]
    Put {
        name: String,
        /// Value (prefer stdin so it stays out of shell history).
        #[arg(long)]
        value: Option<String>,
        /// Who may use it (repeatable): principal:ID or principal:ID/job:PATTERN. Without --bind the
        /// current bindings are kept.
        #[arg(long = "bind", value_name = "BINDING")]
        bindings: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List secrets (names and versions only), newest first.
    List(ListArgs),
    /// Delete a secret.
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Re-wrap every project's data key with the current master key (platform-admin).
    Rewrap {
        /// Also replace every project's data key and re-encrypt every secret version under the new ones,
        /// in one replicated command.
        #[arg(long)]
        new_data_keys: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, leader, term and applied index, and the fleet per region and cluster.
    #[command(
        after_help = "Examples:\n  meridian cluster status\n  meridian cluster status --watch     # redraw every 2 s until Ctrl-C"
    )]
    Status(WatchOnly),
    /// Add a coordinator (learner first, then voter unless --learner).
    #[command(
        after_help = "Example:\n  meridian cluster add --id 4 --name c4 --raft-addr 10.0.0.4:7170 --admin-addr 10.0.0.4:7070"
    )]
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        name: String,
        #[arg(long)]
        raft_addr: String,
        #[arg(long)]
        admin_addr: String,
        /// Keep it a non-voting learner.
        #[arg(long)]
        learner: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a coordinator. Its certificate is refused by every member as soon as the removal reaches it.
    Remove {
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set whether nodes new to a cluster are approved on arrival (platform-admin).
    #[command(
        after_help = "Examples:\n  meridian cluster policy eu-west/gpu-a --auto-approve true\n  \
meridian cluster policy eu-west/gpu-a --auto-approve false\n\n\
Without a policy, a cluster follows the coordinators' [fleet] approve_new_nodes (off by default, on in\n\
meridian dev). A node that waits is approved with `meridian node approve`."
    )]
    Policy {
        /// The cluster: REGION/CLUSTER.
        cluster: String,
        /// Approve new nodes on arrival (true) or make them wait for `meridian node approve` (false).
        #[arg(long, action = clap::ArgAction::Set)]
        auto_approve: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List registered nodes (platform-admin), newest first. HEALTH reads `ready,draining` for a drained
    /// node.
    #[command(
        after_help = "Examples:\n  meridian node list -o json\n  meridian node list --watch          # redraw every 2 s until Ctrl-C"
    )]
    List(WatchListArgs),
    /// Drain a node (platform-admin): no new work lands on it; jobs already there keep running.
    #[command(
        after_help = "Examples:\n  meridian node drain eu-west/gpu-a/node-17\n  \
meridian node drain eu-west/gpu-a/node-17 -o json\n\n\
KEY is the node as `meridian node list` shows it: REGION/CLUSTER/NODE. The flag survives agent restarts;\n\
undo it with `meridian node undrain KEY`."
    )]
    Drain {
        /// The node: REGION/CLUSTER/NODE.
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Undrain a node (platform-admin): it receives new work again.
    #[command(after_help = "Example:\n  meridian node undrain eu-west/gpu-a/node-17")]
    Undrain {
        /// The node: REGION/CLUSTER/NODE.
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Approve a node (platform-admin): a new node waiting for approval, or one quarantined for reporting
    /// more than was approved, is approved with what it reports now and receives work.
    #[command(
        after_help = "Example:\n  meridian node approve eu-west/gpu-a/node-17\n\n\
`meridian node list` shows ADMISSION (approved, pending_approval, quarantined, denied) and the REASON."
    )]
    Approve {
        /// The node: REGION/CLUSTER/NODE.
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deny a node's agent identity (platform-admin): every coordinator refuses it at once and closes its
    /// connections within seconds; it receives no work.
    #[command(
        after_help = "Example:\n  meridian node deny eu-west/gpu-a/node-17 --reason 'disk stolen'\n\n\
Undo it with `meridian node undeny KEY`."
    )]
    Deny {
        /// The node: REGION/CLUSTER/NODE.
        key: String,
        /// Why, for the deny-list and the audit log.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Allow a denied node's agent identity again (platform-admin).
    #[command(after_help = "Example:\n  meridian node undeny eu-west/gpu-a/node-17")]
    Undeny {
        /// The node: REGION/CLUSTER/NODE.
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Start of the range (default: 24 hours before --until).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// End of the range (default: now).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub(crate) fn cpu_millis_arg(s: &str) -> Result<u64, String> {
    match coordinator::api::parse_cpu_millis(s) {
        Ok(0) => Err("must be more than 0".to_owned()),
        Ok(m) => Ok(m),
        Err(e) => Err(e.to_string()),
    }
}

pub(crate) fn byte_size_arg(s: &str) -> Result<u64, String> {
    match coordinator::api::parse_byte_size(s) {
        Ok(0) => Err("must be more than 0".to_owned()),
        Ok(b) => Ok(b),
        Err(e) => Err(e.to_string()),
    }
}

/// A job's memory: a size with its unit. A plain number is refused with a hint rather than read as bytes
/// (`--memory 16` meant 16 bytes, which no job runs in).
pub(crate) fn job_memory_arg(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "{t} has no unit: did you mean {t}Mi or {t}Gi? (units: Ki, Mi, Gi, Ti or K, M, G, T)"
        ));
    }
    byte_size_arg(t)
}

pub(crate) fn duration_arg(s: &str) -> Result<u64, String> {
    match coordinator::api::parse_duration_secs(s) {
        Ok(0) => Err("must be more than 0".to_owned()),
        Ok(secs) => Ok(secs),
        Err(e) => Err(e.to_string()),
    }
}

/// `--interval`: `500ms`, or a duration as `parse_duration` reads it (`2s`, `1m`); more than 0.
pub(crate) fn interval_arg(s: &str) -> Result<std::time::Duration, String> {
    let interval = match s.trim().strip_suffix("ms") {
        Some(ms) => ms
            .parse::<u64>()
            .map(std::time::Duration::from_millis)
            .map_err(|_| format!("{s:?} is not like 500ms or 2s"))?,
        None => coordinator::api::parse_duration(s).map_err(|e| e.to_string())?,
    };
    if interval.is_zero() {
        return Err("must be more than 0".to_owned());
    }
    Ok(interval)
}

pub(crate) fn key_value_arg(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Download the audit log and verify its hash chain locally.
    Verify(ClientOnly),
    /// Show audit records: the newest first, or with --after those after a sequence number in order.
    #[command(
        after_help = "Examples:\n  meridian audit list                 # the 100 newest records, newest first\n  \
meridian audit list --after 1200 --limit 50 -o json   # the 50 records after seq 1200, in order"
    )]
    List {
        /// Read forward from this sequence number: the records after it, oldest first.
        #[arg(long)]
        after: Option<u64>,
        /// Show at most N records.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use clap::Parser;

    use super::{Cli, Command, JobCommand};

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn job_run_parses_units_and_keeps_the_command_whole() {
        let cli = Cli::try_parse_from([
            "meridian",
            "job",
            "run",
            "--cpu",
            "0.5",
            "--memory",
            "512Mi",
            "--gpus",
            "1",
            "--timeout",
            "1h30m",
            "--label",
            "zone=a",
            "--env",
            "K=v=w",
            "--priority",
            "-5",
            "--wait",
            "--",
            "python3",
            "-c",
            "print(1)",
            "-o",
            "json",
        ])
        .expect("parses");
        let Command::Job(JobCommand::Run(run)) = cli.command else {
            panic!("not job run")
        };
        assert_eq!(run.cpu, Some(500));
        assert_eq!(run.memory, Some(512 << 20));
        assert_eq!(run.gpus, Some(1));
        assert_eq!(run.timeout, Some(5_400));
        assert_eq!(run.labels, [("zone".to_owned(), "a".to_owned())]);
        assert_eq!(run.env, [("K".to_owned(), "v=w".to_owned())]);
        assert_eq!(run.priority, Some(-5));
        assert!(run.wait);
        // Everything after `--` belongs to the job, even what looks like our own flags.
        assert_eq!(run.command, ["python3", "-c", "print(1)", "-o", "json"]);
    }

    #[test]
    fn job_memory_without_a_unit_is_refused_with_a_hint() {
        let refused =
            Cli::try_parse_from(["meridian", "job", "run", "--memory", "16", "--", "true"])
                .expect_err("a bare number is not a size");
        let message = refused.to_string();
        assert!(message.contains("did you mean 16Mi"), "{message}");
        let ok = Cli::try_parse_from(["meridian", "job", "run", "--memory", "16Gi", "--", "true"])
            .expect("a size with its unit");
        let Command::Job(JobCommand::Run(run)) = ok.command else {
            panic!("not job run")
        };
        assert_eq!(run.memory, Some(16 << 30));
    }

    #[test]
    fn job_run_refuses_bad_quantities() {
        for bad in [
            ["--cpu", "0"],
            ["--cpu", "lots"],
            ["--memory", "12X"],
            ["--timeout", "0s"],
            ["--timeout", "soon"],
            ["--env", "NOVALUE"],
        ] {
            let args = ["meridian", "job", "run", bad[0], bad[1], "--", "true"];
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
        assert!(
            Cli::try_parse_from(["meridian", "job", "run"]).is_err(),
            "a command is required"
        );
        assert!(
            Cli::try_parse_from(["meridian", "job", "run", "--no-such-flag", "--", "true"])
                .is_err(),
            "an unknown option is an error, not the program"
        );
    }

    #[test]
    fn list_commands_take_limit_and_watch_with_an_interval() {
        let cli = Cli::try_parse_from([
            "meridian",
            "job",
            "list",
            "-w",
            "--limit",
            "5",
            "--interval",
            "500ms",
        ])
        .expect("parses");
        let Command::Job(JobCommand::List { list, watch, .. }) = cli.command else {
            panic!("not job list")
        };
        assert_eq!(list.limit, Some(5));
        assert!(watch.watch);
        assert_eq!(watch.interval, std::time::Duration::from_millis(500));
        let cli = Cli::try_parse_from(["meridian", "node", "list"]).expect("parses");
        let Command::Node(super::NodeCommand::List(args)) = cli.command else {
            panic!("not node list")
        };
        assert!(!args.watch.watch);
        assert_eq!(args.watch.interval, std::time::Duration::from_secs(2));
        assert_eq!(args.list.limit, None);
        for bad in ["0ms", "0s", "soon", "-1ms"] {
            let args = ["meridian", "cluster", "status", "-w", "--interval", bad];
            assert!(Cli::try_parse_from(args).is_err(), "{bad}");
        }
    }

    #[test]
    fn job_run_takes_a_command_without_dashes_and_a_cancel_grace() {
        let cli = Cli::try_parse_from([
            "meridian",
            "job",
            "run",
            "--cancel-grace",
            "2s",
            "python3",
            "-u",
            "train.py",
        ])
        .expect("parses");
        let Command::Job(JobCommand::Run(run)) = cli.command else {
            panic!("not job run")
        };
        assert_eq!(run.cancel_grace, Some(2));
        assert_eq!(run.command, ["python3", "-u", "train.py"]);
    }
}
