//! `meridian agent …`: run the node agent, or check a node before it joins (inventory, a trial run).

use std::path::PathBuf;

use anyhow::Context;

use crate::cli::{AgentAction, AgentArgs, OutputFormat};
use crate::commands::CommandError;
use crate::output;

pub async fn run(args: AgentArgs) -> Result<(), CommandError> {
    let insecure = args.insecure_no_sandbox;
    match (args.action, args.config) {
        (Some(AgentAction::Inventory { data_dir, output: format }), _) => {
            inventory(data_dir, format).map_err(CommandError::Fatal)
        }
        (Some(AgentAction::Try { gpus, cpu, memory_mib, data_dir, command }), _) => {
            let code = trial(gpus, cpu, memory_mib, data_dir, command, insecure)
                .await
                .map_err(CommandError::Fatal)?;
            if code == 0 {
                Ok(())
            } else {
                Err(CommandError::Exit(code))
            }
        }
        (None, Some(config)) => agent::run_from_file(&config, insecure).await.map_err(|e| CommandError::Fatal(e.into())),
        (None, None) => Err(CommandError::Fatal(anyhow::anyhow!(
            "give --config FILE to run the agent, or a subcommand (inventory, try); see meridian agent --help"
        ))),
    }
}

fn inventory(data_dir: PathBuf, format: OutputFormat) -> anyhow::Result<()> {
    let inv = agent::inventory::collect(&agent::inventory::InventoryOptions {
        data_dir,
        labels: Default::default(),
        gpu: Default::default(),
    })
    .context("collecting the node inventory")?;
    match format {
        OutputFormat::Json => output::json_of(&inv),
        OutputFormat::Table => {
            let mut summary = serde_json::to_value(&inv).context("encoding the inventory")?;
            if let Some(map) = summary.as_object_mut() {
                map.remove("gpus");
            }
            output::object(format, &summary);
            output::line("");
            let rows: Vec<Vec<String>> = inv
                .gpus
                .iter()
                .map(|g| {
                    vec![
                        g.index.to_string(),
                        output::text(&g.uuid),
                        g.model.clone(),
                        g.memory_total_mib.to_string(),
                        g.memory_used_mib.to_string(),
                        output::opt_num(g.utilization_gpu_percent),
                        g.healthy.to_string(),
                    ]
                })
                .collect();
            output::table(
                &[
                    "INDEX",
                    "UUID",
                    "MODEL",
                    "MEMORY-TOTAL-MIB",
                    "MEMORY-USED-MIB",
                    "UTILIZATION-GPU-PERCENT",
                    "HEALTHY",
                ],
                &rows,
            );
        }
    }
    Ok(())
}

/// Runs `command` through the job launcher and streams its logs afterwards; returns its exit code.
async fn trial(
    gpus: u32,
    cpu: f64,
    memory_mib: u64,
    data_dir: Option<PathBuf>,
    command: Vec<String>,
    insecure: bool,
) -> anyhow::Result<i32> {
    use agent::exec::{read_logs, LauncherOptions, LogOptions, LogStream, ProcessSpec};

    let temp;
    let data_dir = match data_dir {
        Some(d) => d,
        None => {
            temp = tempfile::tempdir().context("creating a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let gpu_uuids = if gpus == 0 {
        Vec::new()
    } else {
        let inv = agent::inventory::collect(&agent::inventory::InventoryOptions {
            data_dir: data_dir.clone(),
            labels: Default::default(),
            gpu: Default::default(),
        })
        .context("collecting the node inventory")?;
        let healthy: Vec<String> = inv
            .gpus
            .iter()
            .filter(|g| g.healthy)
            .map(|g| g.uuid.clone())
            .collect();
        if healthy.len() < gpus as usize {
            anyhow::bail!(
                "--gpus {gpus}: this node has {} healthy GPU(s) (source: {:?}{})",
                healthy.len(),
                inv.gpu_source,
                inv.gpu_error.map(|e| format!(", {e}")).unwrap_or_default()
            );
        }
        healthy.into_iter().take(gpus as usize).collect()
    };
    let mut options = LauncherOptions::new(data_dir.clone());
    if insecure {
        options.sandbox = None;
    }
    let launcher = agent::exec::Launcher::new(options).context("preparing the job launcher")?;
    let isolation = launcher.isolation();
    if isolation.sandboxed && !isolation.complete() {
        anyhow::bail!(
            "jobs cannot be isolated on this node: {} (pass --insecure-no-sandbox to try without isolation)",
            isolation.problems.join("; ")
        );
    }
    let Some((program, args)) = command.split_first() else {
        anyhow::bail!("no command given");
    };
    let job_id = format!("trial-{}", std::process::id());
    let log_dir = data_dir.join("logs").join(&job_id);
    let spec = ProcessSpec {
        job_id,
        attempt: 1,
        command: program.clone(),
        args: args.to_vec(),
        env: Default::default(),
        working_dir: None,
        cpu_millis: (cpu.max(0.0) * 1000.0).round() as u64,
        memory_bytes: memory_mib.saturating_mul(1 << 20),
        gpu_uuids: gpu_uuids.clone(),
        log: LogOptions::new(&log_dir),
        network: Default::default(),
        secrets: Default::default(),
        secrets_in_env: false,
    };
    eprintln!(
        "limits: {}; isolation: {}; GPUs: {}",
        launcher.mode().status(),
        isolation.status(),
        if gpu_uuids.is_empty() {
            "none".to_string()
        } else {
            gpu_uuids.join(",")
        }
    );
    let job = launcher.launch(&spec).context("launching the command")?;
    let report = job.wait().await;
    for (stream, to_stderr) in [(LogStream::Stdout, false), (LogStream::Stderr, true)] {
        let mut offset = 0;
        loop {
            let chunk = read_logs(&log_dir, stream, offset, 1 << 20)
                .context("reading the command's output")?;
            if chunk.data.is_empty() {
                break;
            }
            offset = chunk.next_offset;
            let text = String::from_utf8_lossy(&chunk.data);
            if to_stderr {
                eprint!("{text}");
            } else {
                output::raw(text.as_bytes()).context("writing the command's output")?;
            }
        }
    }
    let ended = match (report.exit_code, report.signal) {
        _ if report.oom_killed => "killed at its memory limit (out of memory)".to_owned(),
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended without a status".to_owned(),
    };
    let cpu = report.cpu_seconds.map_or_else(
        || "CPU time unknown".to_owned(),
        |c| format!("{c:.2} s CPU"),
    );
    output::note(&format!(
        "{ended}; {:.2} s wall, {cpu}",
        report.wall_seconds
    ));
    Ok(report.exit_code.unwrap_or(128 + report.signal.unwrap_or(0)))
}
