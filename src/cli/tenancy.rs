//! The command line of what the admin API keeps per project and platform: projects and their policies,
//! API keys, role bindings and secrets.

use clap::Subcommand;

use super::{duration_arg, ClientArgs, ListArgs};

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
