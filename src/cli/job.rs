//! `meridian job …`'s command line: the job subcommands and `job run`'s (and `job plan`'s) flags.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{
    cpu_millis_arg, duration_arg, job_memory_arg, key_value_arg, ClientArgs, ListOptions,
    WatchOptions,
};

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job (prints its id; with --wait, waits until it ends).
    #[command(after_help = JOB_RUN_HELP)]
    Run(Box<JobRunArgs>),
    /// Show where a job would land now, or why it would wait, without submitting it (same flags as run).
    #[command(
        after_help = "Examples:\n  meridian job plan --gpus 2 --region eu -- python3 train.py\n  \
meridian job plan -f job.toml\n  meridian job plan -f job.yaml -o json\n\n\
The plan is the scheduler's decision against the fleet and what runs there now, under the project's quota; \
pending jobs ahead of it are counted, not placed first. Exit code 0 when it would be placed now or would \
wait for room, 8 when no node of the fleet could ever run it."
    )]
    Plan(Box<JobRunArgs>),
    /// List the project's jobs, newest first.
    #[command(
        after_help = "Examples:\n  meridian job list\n  meridian job list --limit 20\n  \
meridian job list --state running -o json\n  \
meridian job list --watch           # redraw every 2 s until Ctrl-C"
    )]
    List {
        /// Only jobs in this state: pending, scheduled, running, succeeded, failed, cancelled or lost.
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        list: ListOptions,
        #[command(flatten)]
        watch: WatchOptions,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a job: state, node and region, attempts, why it is pending, exit code.
    #[command(
        after_help = "Examples:\n  meridian job status job_3kq9x2\n  meridian job status job_3kq9x2 -o json\n  \
meridian job status -w job_3kq9x2   # redraw every 2 s until the job ends"
    )]
    Status {
        id: String,
        #[command(flatten)]
        watch: WatchOptions,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a job's output: stdout and stderr merged in the order they were written (or one with --stdout
    /// or --stderr), all of it, its last lines or from a time, optionally with each line's time.
    #[command(
        after_help = "Examples:\n  meridian job logs job_3kq9x2               # stdout and stderr, merged\n  \
meridian job logs -f job_3kq9x2           # follow until the job ends\n  \
meridian job logs --tail 20 -f job_3kq9x2 # the last 20 lines, then follow\n  \
meridian job logs --since 10m --timestamps job_3kq9x2\n  \
meridian job logs --since 2026-11-27T09:30:00Z job_3kq9x2\n  \
meridian job logs --stderr --attempt 1 job_3kq9x2\n  \
meridian job logs --replica 1 job_3kq9x2   # the second process of a gang job\n\n\
Both streams come merged in the order the agent read them from the job; output written to the two\n\
closer together than the agent reads may come in either order. Times are the agent's clock."
    )]
    Logs {
        id: String,
        /// Keep reading until the job has ended and all its output is printed.
        #[arg(short = 'f', long)]
        follow: bool,
        #[command(flatten)]
        select: crate::commands::job_logs::LogSelectArgs,
        /// Read this attempt (default: the latest one that ran on a node).
        #[arg(long)]
        attempt: Option<u32>,
        /// Read this replica of a gang job (default 0).
        #[arg(long, default_value_t = 0)]
        replica: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a job: a pending one at once, a running one is stopped on its node (SIGTERM, then SIGKILL).
    #[command(after_help = "Example:\n  meridian job cancel job_3kq9x2")]
    Cancel {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run a command inside a running job's sandbox (its user, namespaces, cgroup and working directory);
    /// prints its output and exits with its exit code. Not interactive: --stdin sends stdin whole.
    #[command(after_help = "Examples:\n  meridian job exec job_3kq9x2 -- ls -la\n  \
meridian job exec --replica 1 job_3kq9x2 -- nvidia-smi\n  \
echo data | meridian job exec -i job_3kq9x2 -- sh -c 'cat > input.txt'")]
    Exec(Box<crate::commands::job_exec::JobExecArgs>),
    /// Copy a regular file out of a running job's working directory (read with the job's rights).
    #[command(
        after_help = "Examples:\n  meridian job cp job_3kq9x2:out/metrics.json .\n  \
meridian job cp job_3kq9x2:model.pt /tmp/model.pt\n  meridian job cp job_3kq9x2:log.txt -   # to stdout"
    )]
    Cp(Box<crate::commands::job_exec::JobCpArgs>),
}

const JOB_RUN_HELP: &str = "\
Examples:
  meridian job run -- echo hello
  meridian job run --gpus 1 --wait -- python3 -c 'import torch; print(torch.cuda.get_device_name(0))'
  meridian job run --name train --cpu 4 --memory 16Gi --gpus 2 --gpu-model H200 --region eu \\
      --label instance=spot --max-attempts 3 --retry-on-failure --timeout 2h \\
      --env EPOCHS=10 --workdir /data/run1 -- python3 train.py --epochs 10
  meridian job run --priority 100 --preempt --data-locality eu/eu1 -- python3 etl.py
  meridian job run --replicas 4 --gpus 8 -- sh -c 'torchrun --nnodes $MERIDIAN_REPLICAS \\
      --node_rank $MERIDIAN_REPLICA --master_addr ${MERIDIAN_REPLICA_HOSTS%%,*} train.py'

SIZE: 512Mi, 2G, 1GiB, … (K, M, G, T are powers of 1000; Ki, Mi, Gi, Ti of 1024).
DURATION: 30s, 5m, 2h, 1h30m.
With --replicas N the job is a gang: N processes, each with the resources asked for, placed all at once or
not at all; the job succeeds when every replica has, and one that fails or is lost stops the others.
With --wait, the job id and (on a terminal) its state changes go to stderr and its output to stdout; the
exit code is 0 when the job succeeded, 7 when it failed, was cancelled or was lost, and 8 when no node of the
fleet could ever run it (it stays pending; job cancel withdraws it). --follow is --wait that always prints
the output; --quiet waits without it; --wait-timeout 10m stops waiting with exit code 9 (the job keeps
running: meridian job logs -f ID). With -o json, --wait prints only the job as it ended.
-f FILE reads the submission from a TOML, YAML or JSON spec file (the API's SubmitJobRequest); flags given
beside it override its values.";

/// What `meridian job run` submits.
#[derive(Debug, Args)]
pub struct JobRunArgs {
    /// A name for people (need not be unique).
    #[arg(long)]
    pub name: Option<String>,
    /// CPU cores to reserve (decimals allowed: 0.5, 2, 1.25).
    #[arg(long, value_name = "CORES", value_parser = cpu_millis_arg)]
    pub cpu: Option<u64>,
    /// Memory to reserve and limit the job to, e.g. 512Mi, 2G, 1GiB (a unit is required).
    #[arg(long, value_name = "SIZE", value_parser = job_memory_arg)]
    pub memory: Option<u64>,
    /// Whole GPUs; the job sees exactly these through CUDA_VISIBLE_DEVICES.
    #[arg(long)]
    pub gpus: Option<u32>,
    /// Only GPUs whose model contains this text (case-insensitive), e.g. H200.
    #[arg(long, value_name = "MODEL")]
    pub gpu_model: Option<String>,
    /// Run N processes as a gang (1..=64), each with the resources above: all placed or none. Each sees
    /// MERIDIAN_REPLICA, MERIDIAN_REPLICAS and MERIDIAN_REPLICA_HOSTS.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub replicas: Option<u32>,
    /// Only nodes in this region.
    #[arg(long)]
    pub region: Option<String>,
    /// Only nodes in this cluster.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Only nodes with this label (repeatable), e.g. --label instance=spot.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = key_value_arg)]
    pub labels: Vec<(String, String)>,
    /// Scheduling priority, -1000..=1000 (higher goes first).
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// When nothing fits, evict lower-priority jobs that allow it (they go back to pending): the project's
    /// own, and other projects' only below the project's preemption ceiling. Needs project-admin.
    #[arg(long)]
    pub preempt: bool,
    /// Never evict this job for a higher-priority one.
    #[arg(long)]
    pub not_preemptible: bool,
    /// Prefer the emptiest node that fits instead of the fullest (bin-packing, the default).
    #[arg(long)]
    pub spread: bool,
    /// Prefer nodes near the job's data: a region, or REGION/CLUSTER (a preference, never a constraint).
    #[arg(long, value_name = "REGION[/CLUSTER]")]
    pub data_locality: Option<String>,
    /// Attempts in all, 1..=20 (lost attempts are retried; failed ones with --retry-on-failure). Default 3.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Retry attempts that exit non-zero, time out or fail to launch.
    #[arg(long)]
    pub retry_on_failure: bool,
    /// Stop an attempt after this long, e.g. 30s, 5m, 2h.
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub timeout: Option<u64>,
    /// An environment variable for the job (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = key_value_arg)]
    pub env: Vec<(String, String)>,
    /// Absolute working directory on the node (default: a fresh directory per attempt).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Pass a project secret to the job: VAR=SECRET (repeatable). Needs use-secrets, and the secret must be
    /// bound to you (`meridian secret put NAME --bind principal:<your id>` or `principal:<id>/job:<pattern>`).
    #[arg(long = "secret", value_name = "VAR=SECRET", value_parser = key_value_arg)]
    pub secrets: Vec<(String, String)>,
    /// Also pass the --secret values as environment variables VAR (by default they reach the job only as
    /// files readable by it).
    #[arg(long, requires = "secrets")]
    pub secret_env: bool,
    /// Time between SIGTERM and SIGKILL when the job is cancelled (default 10s).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub cancel_grace: Option<u64>,
    /// Wait until the job ends, showing its state changes (on a terminal, on stderr) and its output (stdout
    /// and stderr merged, on stdout); exit 0 only if it succeeded (7 otherwise).
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub waiting: crate::commands::job_wait::WaitArgs,
    /// The program and its arguments, after `--`. An unknown option before it is an error, never the
    /// program.
    #[arg(
        required_unless_present = "file",
        trailing_var_arg = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
    /// A job spec file: the API's submission body in TOML, YAML or JSON (by extension; `-` reads stdin).
    /// Flags given beside it override its values; a command after -- replaces its command.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
}
