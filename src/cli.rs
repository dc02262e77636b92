//! The `meridian` command line: clap definitions only.
//!
//! Parsing lives here; what each command does lives in `commands/`, `server` and `dev`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Meridian: a federated, multi-cluster compute platform for ML.";

const AFTER_HELP: &str = "\
Examples:
  meridian dev                                  # single-node coordinator on 127.0.0.1:7070
  export MERIDIAN_TOKEN=$(cat .meridian/admin.token)
  meridian project create vision
  meridian key create ci --role editor --project vision
  meridian cluster status -o json

Environment:
  MERIDIAN_ADDR     admin API address (default http://127.0.0.1:7070)
  MERIDIAN_TOKEN    API key (default: ./.meridian/admin.token when present)
  MERIDIAN_CACERT   CA certificate to trust for an https:// admin API
  MERIDIAN_PROJECT  project to act in (default: the key's own project)

Exit codes:
  0 success   1 failure   2 bad usage or invalid input   3 unauthenticated or forbidden
  4 not found 5 conflict  6 unavailable (no connection, no leader, not ready)";

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
    /// Admin API address, e.g. http://127.0.0.1:7070 or https://127.0.0.1:7071.
    #[arg(
        long,
        env = "MERIDIAN_ADDR",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub addr: String,
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
    /// The hash-chained audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Who the current token belongs to.
    Whoami(ClientOnly),
    /// Print shell completions.
    #[command(
        after_help = "Example:\n  meridian completions bash > /etc/bash_completion.d/meridian"
    )]
    Completions {
        /// Shell to generate for.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct ClientOnly {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory for state, certificates and the admin token.
    #[arg(long, env = "MERIDIAN_DATA_DIR", default_value = ".meridian")]
    pub data_dir: PathBuf,
    /// Admin API listen address (loopback only: dev mode serves plain HTTP).
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
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub action: Option<AgentAction>,
    /// TOML config file (runs the agent).
    #[arg(long, short = 'c', env = "MERIDIAN_CONFIG")]
    pub config: Option<PathBuf>,
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
meridian certs issue --ca-dir ca --role operator --name alice --hours 8 --out alice")]
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
        /// Lifetime in hours.
        #[arg(long, default_value_t = 24)]
        hours: u64,
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
    /// List the projects you can see.
    List(ClientOnly),
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
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an API key (with a new service account bound to ROLE); the token is shown once.
    #[command(
        after_help = "Example:\n  meridian key create ci --role editor --project vision --expires-in-days 30"
    )]
    Create {
        /// Key name.
        name: String,
        /// Role of the key's service account in the project.
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Expire after this many days (default: never).
        #[arg(long)]
        expires_in_days: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List keys (prefix and last 4 characters only).
    List(ClientOnly),
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
    /// List role bindings of the current project.
    List(ClientOnly),
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
    #[command(
        after_help = "Example:\n  printf %s \"$S3_KEY\" | meridian secret put s3-key --bind job:*"
    )]
    Put {
        name: String,
        /// Value (prefer stdin so it stays out of shell history).
        #[arg(long)]
        value: Option<String>,
        /// Workloads allowed to read it, e.g. job:* or deployment:fraud.
        #[arg(long = "bind")]
        bindings: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List secrets (names and versions only).
    List(ClientOnly),
    /// Delete a secret.
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Re-wrap every project's data key with the current master key (platform-admin).
    Rewrap(ClientOnly),
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, leader, term and applied index.
    Status(ClientOnly),
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
    /// Remove a coordinator.
    Remove {
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List registered nodes (platform-admin).
    #[command(after_help = "Example:\n  meridian node list -o json")]
    List(ClientOnly),
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Download the audit log and verify its hash chain locally.
    Verify(ClientOnly),
    /// Show audit records.
    List {
        /// Only records after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
