//! The `meridian` command line: clap definitions only.
//!
//! Parsing lives here; what each command does lives in `commands/`, `server` and `dev`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod job;
mod process;
mod tenancy;

pub use job::{JobCommand, JobRunArgs};
pub use process::{
    AgentAction, AgentArgs, CertsCommand, ConfigArgs, DenyListCommand, DevArgs, RevokeSelector,
    RoleArg,
};
pub use tenancy::{KeyCommand, PolicyCommand, ProjectCommand, RoleCommand, SecretCommand};

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
