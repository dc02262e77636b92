//! The `nvidia-smi` fallback: running it with a timeout, and pure parsers of its CSV output.
//!
//! Owns the exact queries the agent asks `nvidia-smi` and the parsing of their `csv,noheader,nounits` answers.
//! The parsers take any text and must never panic: a line they cannot read becomes a problem note, a value
//! they cannot read becomes `None`. Running `nvidia-smi` must never block past its timeout, even when the
//! driver hangs it in the kernel.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{sys, GpuInfo, GpuProcess};

/// Fields asked of `nvidia-smi --query-gpu`, in the order [`parse_query_gpu`] expects them.
pub(crate) const QUERY_GPU_FIELDS: &str = "index,uuid,name,pci.bus_id,memory.total,memory.used,memory.free,\
utilization.gpu,utilization.memory,temperature.gpu,power.draw,power.limit,compute_cap,mig.mode.current,driver_version";
const QUERY_GPU_COLUMNS: usize = 15;

/// Fields asked of `nvidia-smi --query-compute-apps`, in the order [`parse_compute_apps`] expects them.
pub(crate) const QUERY_APPS_FIELDS: &str = "pid,gpu_uuid,used_memory";
const QUERY_APPS_COLUMNS: usize = 3;

/// Most bytes of output kept from one run; `nvidia-smi` prints about 200 bytes per GPU.
const MAX_OUTPUT: u64 = 1 << 20;

/// What [`parse_query_gpu`] read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueryGpuOutput {
    /// GPUs sorted by index.
    pub gpus: Vec<GpuInfo>,
    /// Driver version of the first GPU that reported one.
    pub driver_version: Option<String>,
    /// Lines or values that could not be read, e.g. `Unable to determine the device handle for GPU …`.
    pub problems: Vec<String>,
}

/// What [`parse_compute_apps`] read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ComputeAppsOutput {
    pub processes: Vec<GpuProcess>,
    pub problems: Vec<String>,
}

/// How one CSV value reads.
enum Value<'a> {
    /// A value to parse.
    Text(&'a str),
    /// Blank, `[N/A]`, `[Not Supported]`, `[Insufficient Permissions]`: unknown, and nothing is wrong.
    Absent,
    /// Another bracketed marker (`[GPU is lost]`, `[Unknown Error]`, `[GPU requires reset]`): the GPU failed.
    Failed(&'a str),
}

fn classify(raw: &str) -> Value<'_> {
    let v = raw.trim();
    let lower = v.to_ascii_lowercase();
    if v.is_empty()
        || matches!(
            lower.as_str(),
            "n/a" | "[n/a]" | "[not supported]" | "not supported" | "[insufficient permissions]"
        )
    {
        Value::Absent
    } else if v.starts_with('[') {
        Value::Failed(v)
    } else {
        Value::Text(v)
    }
}

/// Reads one line's values into a `GpuInfo`, noting what it could not read in `problems`.
struct RowReader<'a> {
    line_no: usize,
    healthy: bool,
    problems: &'a mut Vec<String>,
}

impl RowReader<'_> {
    fn value<T>(
        &mut self,
        name: &str,
        raw: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        match classify(raw) {
            Value::Absent => None,
            Value::Failed(marker) => {
                self.healthy = false;
                self.problems
                    .push(format!("line {}: {name}: {marker}", self.line_no));
                None
            }
            Value::Text(text) => {
                let parsed = parse(text);
                if parsed.is_none() {
                    self.problems.push(format!(
                        "line {}: {name}: cannot read {:?}",
                        self.line_no,
                        clip(text)
                    ));
                }
                parsed
            }
        }
    }
}

/// Parses `nvidia-smi --query-gpu=<QUERY_GPU_FIELDS> --format=csv,noheader,nounits` (memory in MiB, power in W).
///
/// A line with the wrong number of values or no readable index is skipped with a problem note; a GPU whose
/// UUID or memory cannot be read, or that reports a failure marker such as `[GPU is lost]`, is kept with
/// `healthy: false`.
pub fn parse_query_gpu(text: &str) -> QueryGpuOutput {
    let mut out = QueryGpuOutput::default();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim().trim_start_matches('\u{feff}');
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != QUERY_GPU_COLUMNS {
            out.problems
                .push(format!("line {line_no}: {:?}", clip(line)));
            continue;
        }
        let Ok(index) = fields[0].trim().parse::<u32>() else {
            out.problems
                .push(format!("line {line_no}: no GPU index in {:?}", clip(line)));
            continue;
        };
        let mut row = RowReader {
            line_no,
            healthy: true,
            problems: &mut out.problems,
        };
        let uuid = row
            .value("uuid", fields[1], |v| Some(v.to_string()))
            .unwrap_or_default();
        let model = row
            .value("name", fields[2], |v| Some(v.to_string()))
            .unwrap_or_default();
        let pci_bus_id = row
            .value("pci.bus_id", fields[3], |v| Some(v.to_string()))
            .unwrap_or_default();
        let memory_total_mib = row.value("memory.total", fields[4], parse_u64);
        let memory_used_mib = row.value("memory.used", fields[5], parse_u64);
        let _memory_free = row.value("memory.free", fields[6], parse_u64);
        let utilization_gpu_percent = row.value("utilization.gpu", fields[7], parse_percent);
        let utilization_memory_percent = row.value("utilization.memory", fields[8], parse_percent);
        let temperature_c = row.value("temperature.gpu", fields[9], parse_u32);
        let power_draw_w = row.value("power.draw", fields[10], parse_watts);
        let power_limit_w = row.value("power.limit", fields[11], parse_watts);
        let compute_capability = row.value("compute_cap", fields[12], parse_compute_capability);
        let mig_enabled = row.value("mig.mode.current", fields[13], parse_mig_mode);
        let driver_version = row.value("driver_version", fields[14], |v| Some(v.to_string()));
        let healthy = row.healthy && !uuid.is_empty() && memory_total_mib.is_some_and(|m| m > 0);
        if out.driver_version.is_none() {
            out.driver_version = driver_version;
        }
        out.gpus.push(GpuInfo {
            index,
            uuid,
            model,
            memory_total_mib: memory_total_mib.unwrap_or(0),
            memory_used_mib: memory_used_mib.unwrap_or(0),
            compute_capability,
            mig_enabled,
            utilization_gpu_percent,
            utilization_memory_percent,
            temperature_c,
            power_draw_w,
            power_limit_w,
            pci_bus_id,
            healthy,
        });
    }
    out.gpus.sort_by_key(|g| g.index);
    out
}

/// Parses `nvidia-smi --query-compute-apps=<QUERY_APPS_FIELDS> --format=csv,noheader,nounits` (memory in MiB).
pub fn parse_compute_apps(text: &str) -> ComputeAppsOutput {
    let mut out = ComputeAppsOutput::default();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim().trim_start_matches('\u{feff}');
        if line.is_empty() || line.eq_ignore_ascii_case("no running processes found") {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != QUERY_APPS_COLUMNS {
            out.problems
                .push(format!("line {line_no}: {:?}", clip(line)));
            continue;
        }
        let mut row = RowReader {
            line_no,
            healthy: true,
            problems: &mut out.problems,
        };
        let pid = row.value("pid", fields[0], parse_u32);
        let uuid = row.value("gpu_uuid", fields[1], |v| Some(v.to_string()));
        let used_memory_mib = row.value("used_memory", fields[2], parse_u64);
        match (pid, uuid) {
            (Some(pid), Some(gpu_uuid)) => out.processes.push(GpuProcess {
                pid,
                gpu_uuid,
                used_memory_mib,
            }),
            _ => out
                .problems
                .push(format!("line {line_no}: no pid or GPU uuid")),
        }
    }
    out
}

fn parse_u64(v: &str) -> Option<u64> {
    v.parse().ok()
}

fn parse_u32(v: &str) -> Option<u32> {
    v.parse().ok()
}

fn parse_percent(v: &str) -> Option<u32> {
    v.trim_end_matches('%')
        .trim()
        .parse()
        .ok()
        .filter(|p| *p <= 100)
}

fn parse_watts(v: &str) -> Option<f64> {
    v.trim_end_matches('W')
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|w| w.is_finite() && *w >= 0.0)
}

fn parse_compute_capability(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn parse_mig_mode(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "enabled" => Some(true),
        "disabled" => Some(false),
        _ => None,
    }
}

/// At most 80 characters of `text`, for problem notes.
fn clip(text: &str) -> String {
    text.chars().take(80).collect()
}

/// Why `nvidia-smi` gave no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SmiError {
    #[error("nvidia-smi not found")]
    NotFound,
    #[error("starting nvidia-smi: {0}")]
    Spawn(std::io::Error),
    #[error("nvidia-smi did not answer within {0:?} and was killed")]
    Timeout(Duration),
    #[error("nvidia-smi failed ({status}): {message}")]
    Failed { status: String, message: String },
    #[error("nvidia-smi: {0}")]
    Io(std::io::Error),
}

/// Runs `nvidia-smi` (`program`, or the one on `PATH`) with `args`, returning its standard output.
///
/// The child leads its own process group; past `timeout` the whole group is killed, and a child that still
/// does not exit (stuck in the driver) is left to a reaper thread rather than waited for.
pub(crate) fn run(
    program: Option<&Path>,
    args: &[&str],
    timeout: Duration,
) -> Result<String, SmiError> {
    let mut command = Command::new(program.map_or(Path::new("nvidia-smi"), |p| p));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SmiError::NotFound,
        _ => SmiError::Spawn(e),
    })?;
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);

    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                if let Err(error) = sys::kill_process_group(child.id()) {
                    tracing::warn!(%error, "killing nvidia-smi");
                }
                let grace = Instant::now() + Duration::from_secs(1);
                while Instant::now() < grace {
                    if let Ok(Some(_)) = child.try_wait() {
                        return Err(SmiError::Timeout(timeout));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                // Stuck in the kernel: reap it whenever it finally exits, without blocking the caller.
                std::thread::spawn(move || child.wait());
                return Err(SmiError::Timeout(timeout));
            }
            Ok(None) => {
                std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(SmiError::Io(e)),
        }
    };
    // The child has exited; its pipes close unless it left descendants holding them, so wait only until the
    // deadline for the output.
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let out = stdout
        .and_then(|rx| rx.recv_timeout(remaining).ok())
        .unwrap_or_default();
    let err = stderr
        .and_then(|rx| rx.recv_timeout(Duration::from_millis(100)).ok())
        .unwrap_or_default();
    let out = String::from_utf8_lossy(&out).into_owned();
    if !status.success() {
        let message = String::from_utf8_lossy(&err);
        let message = if message.trim().is_empty() {
            out.as_str()
        } else {
            message.as_ref()
        };
        return Err(SmiError::Failed {
            status: status.to_string(),
            message: clip(message.trim()),
        });
    }
    Ok(out)
}

/// Reads a pipe to its end (at most `MAX_OUTPUT` bytes) on a thread, handing the bytes over a channel.
fn drain(mut pipe: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.by_ref().take(MAX_OUTPUT).read_to_end(&mut buf);
        // Keep reading past the limit so a chatty child does not block on a full pipe.
        let _ = std::io::copy(&mut pipe, &mut std::io::sink());
        let _ = tx.send(buf);
    });
    rx
}

/// `--query-gpu` arguments.
pub(crate) fn query_gpu_args() -> [String; 2] {
    [
        format!("--query-gpu={QUERY_GPU_FIELDS}"),
        "--format=csv,noheader,nounits".to_string(),
    ]
}

/// `--query-compute-apps` arguments.
pub(crate) fn query_apps_args() -> [String; 2] {
    [
        format!("--query-compute-apps={QUERY_APPS_FIELDS}"),
        "--format=csv,noheader,nounits".to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const H200: &str = "0, GPU-0824f7c9-1cc0-41ef-7ba4-d4e33500582c, NVIDIA H200, 00000000:00:06.0, 143771, 0, 143156, \
                        0, 0, 42, 131.73, 700.00, 9.0, Disabled, 580.159.04\n";

    #[test]
    fn reads_a_full_row() {
        let out = parse_query_gpu(H200);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(out.driver_version.as_deref(), Some("580.159.04"));
        let gpu = &out.gpus[0];
        assert_eq!(
            (gpu.index, gpu.model.as_str(), gpu.memory_total_mib),
            (0, "NVIDIA H200", 143771)
        );
        assert_eq!(gpu.compute_capability, Some((9, 0)));
        assert_eq!(gpu.mig_enabled, Some(false));
        assert_eq!(gpu.power_draw_w, Some(131.73));
        assert!(gpu.healthy);
    }

    #[test]
    fn absent_values_are_none_and_healthy() {
        let text =
            "1, GPU-a, Tesla T4 ,0000:3B:00.0,15360,[N/A],, [Not Supported] ,N/A,[N/A],[N/A],\
                    [Insufficient Permissions],7.5,[N/A],535.1\n";
        let out = parse_query_gpu(text);
        let gpu = &out.gpus[0];
        assert_eq!(gpu.model, "Tesla T4");
        assert_eq!(
            (
                gpu.memory_used_mib,
                gpu.utilization_gpu_percent,
                gpu.temperature_c
            ),
            (0, None, None)
        );
        assert_eq!(
            (gpu.power_draw_w, gpu.power_limit_w, gpu.mig_enabled),
            (None, None, None)
        );
        assert!(gpu.healthy);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
    }

    #[test]
    fn failure_markers_make_a_gpu_unhealthy() {
        let text = "2, GPU-b, NVIDIA A100, 0000:00:07.0, 81920, [GPU is lost], 0, [Unknown Error], 0, 40, 60, 400, \
                    8.0, Enabled, 550\n3, [GPU requires reset], NVIDIA A100, x, 81920, 0, 0, 0, 0, 0, 0, 0, 8.0, Enabled, 550\n";
        let out = parse_query_gpu(text);
        assert_eq!(out.gpus.len(), 2);
        assert!(!out.gpus[0].healthy && out.gpus[0].mig_enabled == Some(true));
        assert!(!out.gpus[1].healthy && out.gpus[1].uuid.is_empty());
    }

    #[test]
    fn unreadable_lines_become_problems() {
        let text = "Unable to determine the device handle for GPU 0000:3B:00.0: GPU is lost.\n\n\
                    x, GPU-c, n, p, 1, 1, 1, 1, 1, 1, 1, 1, 1.1, Disabled, 1\n\
                    4, GPU-d, n, p, lots, 1, 1, 101, 1, 1, -3, inf, 9, Disabled, 1\n";
        let out = parse_query_gpu(text);
        assert_eq!(out.gpus.len(), 1);
        let gpu = &out.gpus[0];
        assert_eq!(gpu.index, 4);
        assert!(!gpu.healthy, "no readable memory");
        assert_eq!(
            (
                gpu.utilization_gpu_percent,
                gpu.power_draw_w,
                gpu.power_limit_w
            ),
            (None, None, None)
        );
        assert_eq!(gpu.compute_capability, None);
        assert_eq!(out.problems.len(), 7, "{:?}", out.problems);
    }

    #[test]
    fn rows_are_sorted_by_index() {
        let row =
            |i: u32| format!("{i}, GPU-{i}, m, p, 10, 1, 9, 0, 0, 30, 50, 100, 8.6, [N/A], 1\n");
        let out = parse_query_gpu(&(row(3) + &row(1) + "\r\n" + &row(2)));
        assert_eq!(
            out.gpus.iter().map(|g| g.index).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn compute_apps() {
        let out = parse_compute_apps("418, GPU-11, 1386\n\n19, GPU-12, [N/A]\nNo running processes found\nx, GPU-1, 3\n1,2\n");
        assert_eq!(
            out.processes,
            vec![
                GpuProcess {
                    pid: 418,
                    gpu_uuid: "GPU-11".into(),
                    used_memory_mib: Some(1386)
                },
                GpuProcess {
                    pid: 19,
                    gpu_uuid: "GPU-12".into(),
                    used_memory_mib: None
                },
            ]
        );
        assert_eq!(out.problems.len(), 3, "{:?}", out.problems);
    }
}
