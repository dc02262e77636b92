//! The node's inventory: what the agent reports about the machine it owns.
//!
//! Owns the discovery of host facts (hostname, OS, kernel, architecture, logical CPUs, memory, disk space of
//! the agent's data directory), of NVIDIA GPUs (through NVML loaded at run time, or by parsing `nvidia-smi`
//! output when NVML is unusable), the operator's labels, and the pure idle-GPU signal. It must never fail or
//! panic because of a GPU problem (a node without GPUs, or with a broken driver, is still a node), never link
//! against NVIDIA libraries, and never talk to the coordinator: it only describes the node.
//!
//! # API
//! ```text
//! collect(&InventoryOptions) -> Result<NodeInventory, InventoryError>          // one-shot, blocking
//! collect_with(&InventoryOptions, &GpuProbe) -> Result<NodeInventory, InventoryError>
//! validate_labels(&BTreeMap<String, String>) -> Result<(), InventoryError>
//!
//! GpuProbe::open(&GpuOptions) -> GpuProbe                       // never fails; keep it for the agent's life
//! GpuProbe::backend_source(&self) -> GpuSource                  // Nvml, or NvidiaSmi after a fallback
//! GpuProbe::report(&self) -> GpuReport                           // GPUs now, with source and error
//! GpuProbe::running_processes(&self, uuid) -> Result<Vec<GpuProcess>, GpuError>
//!
//! parse_query_gpu(&str) -> QueryGpuOutput                        // pure, never panics
//! parse_compute_apps(&str) -> ComputeAppsOutput                  // pure, never panics
//!
//! IdleTracker::new(IdlePolicy)                                   // pure; time is passed in
//!   .set_allocated(uuids, at) / .record(uuid, util, at) / .observe(&[GpuInfo], at) / .forget(uuid)
//!   .idle_gpus(at) -> Vec<IdleGpu>
//! ```
//!
//! Every call here blocks (file reads, NVML calls, running `nvidia-smi` with a timeout). Async callers run
//! them on `tokio::task::spawn_blocking`. A `GpuProbe` is `Send + Sync` and can be shared in an `Arc`.
//!
//! GPU discovery order: NVML (`libnvidia-ml.so.1`, or `GpuOptions::nvml_path`); when it cannot be loaded or
//! initialised, `nvidia-smi` (on `PATH`, or `GpuOptions::nvidia_smi_path`); when neither exists, no GPUs and
//! [`GpuSource::None`]. A source that exists but fails is reported in `gpu_error` (diagnostic text for
//! operators) and the next source is tried.

mod host;
mod idle;
mod nvml;
mod probe;
mod smi;
mod sys;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use idle::{IdleGpu, IdlePolicy, IdleTracker};
pub use probe::{GpuError, GpuProbe, GpuReport};
pub use smi::{parse_compute_apps, parse_query_gpu, ComputeAppsOutput, QueryGpuOutput};

/// Everything the agent reports about its node. Serialized as JSON in node registration and status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInventory {
    pub hostname: String,
    /// `PRETTY_NAME` from `/etc/os-release` (e.g. `Debian GNU/Linux 12 (bookworm)`), else the OS family.
    pub os: String,
    /// Kernel release, e.g. `6.1.0-18-amd64`.
    pub kernel: String,
    /// CPU architecture as Rust names it (`x86_64`, `aarch64`).
    pub arch: String,
    /// Logical CPUs online on the node (not limited by this process's affinity or cgroup).
    pub cpu_cores: u32,
    /// `model name` of the first CPU in `/proc/cpuinfo`, when the kernel reports one.
    pub cpu_model: Option<String>,
    /// `MemTotal` in bytes.
    pub memory_bytes: u64,
    /// Size of the file system holding the agent's data directory.
    pub disk_total_bytes: u64,
    /// Space on that file system available to the agent (not counting blocks reserved for root).
    pub disk_free_bytes: u64,
    /// GPUs sorted by index. Empty on nodes without GPUs.
    pub gpus: Vec<GpuInfo>,
    /// Where `gpus` came from; `None` when no GPU was found.
    pub gpu_source: GpuSource,
    /// NVIDIA driver version, when a GPU source answered.
    pub gpu_driver_version: Option<String>,
    /// Why GPU discovery failed or fell back (a source existed but failed). Diagnostic text only: `gpus` is
    /// what the node offers.
    pub gpu_error: Option<String>,
    /// Operator labels from the agent's configuration (e.g. `zone`, `instance=spot`).
    pub labels: BTreeMap<String, String>,
}

/// One physical GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// The driver's index (`nvidia-smi -i`), not necessarily a CUDA ordinal.
    pub index: u32,
    /// `GPU-…` UUID, the stable identity used for `CUDA_VISIBLE_DEVICES`. Empty only when `healthy` is false
    /// and the driver could not name the device.
    pub uuid: String,
    /// Product name, e.g. `NVIDIA H200`.
    pub model: String,
    pub memory_total_mib: u64,
    /// Memory in use, excluding what the driver reserves for itself (as `nvidia-smi` shows it).
    pub memory_used_mib: u64,
    /// CUDA compute capability `(major, minor)`.
    pub compute_capability: Option<(u32, u32)>,
    /// Current MIG mode; `None` where the GPU does not support MIG.
    pub mig_enabled: Option<bool>,
    pub utilization_gpu_percent: Option<u32>,
    pub utilization_memory_percent: Option<u32>,
    pub temperature_c: Option<u32>,
    pub power_draw_w: Option<f64>,
    pub power_limit_w: Option<f64>,
    /// PCI bus id in NVML's long form, e.g. `00000000:00:06.0`; empty when unknown.
    pub pci_bus_id: String,
    /// False when the driver could not answer the required queries or reported the GPU lost or failing.
    pub healthy: bool,
}

/// Where the GPU list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuSource {
    Nvml,
    NvidiaSmi,
    None,
}

/// A process holding memory on a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuProcess {
    pub pid: u32,
    pub gpu_uuid: String,
    /// `None` where the driver cannot tell (e.g. inside some containers).
    pub used_memory_mib: Option<u64>,
}

/// How GPUs are discovered.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuOptions {
    /// NVML library to load; `None` loads `libnvidia-ml.so.1` from the loader's search path.
    pub nvml_path: Option<PathBuf>,
    /// `nvidia-smi` to run; `None` looks it up on `PATH`.
    pub nvidia_smi_path: Option<PathBuf>,
    /// How long one `nvidia-smi` run may take before it is killed.
    pub nvidia_smi_timeout: Duration,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            nvml_path: None,
            nvidia_smi_path: None,
            nvidia_smi_timeout: Duration::from_secs(10),
        }
    }
}

/// What [`collect`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct InventoryOptions {
    /// The agent's data directory: disk figures are those of the file system holding it.
    pub data_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub gpu: GpuOptions,
}

/// Why the inventory could not be collected. GPU problems never end up here.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("reading {what}: {source}")]
    Host {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    HostFormat(String),
    #[error("disk space of {path}: {source}")]
    Disk {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("label {key:?}: {reason}")]
    InvalidLabel { key: String, reason: &'static str },
}

/// Longest label key and value accepted.
const MAX_LABEL_KEY: usize = 63;
const MAX_LABEL_VALUE: usize = 256;

/// Checks operator labels: keys of 1–63 ASCII letters, digits, `.`, `_`, `-` or `/`, starting with a letter or
/// digit; values of at most 256 characters without control characters.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), InventoryError> {
    for (key, value) in labels {
        let bad = |reason| {
            Err(InventoryError::InvalidLabel {
                key: key.clone(),
                reason,
            })
        };
        if key.is_empty() || key.len() > MAX_LABEL_KEY {
            return bad("keys have 1 to 63 characters");
        }
        if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
        {
            return bad("keys use only ASCII letters, digits, '.', '_', '-' and '/'");
        }
        if !key.as_bytes()[0].is_ascii_alphanumeric() {
            return bad("keys start with a letter or a digit");
        }
        if value.chars().count() > MAX_LABEL_VALUE {
            return bad("values have at most 256 characters");
        }
        if value.chars().any(char::is_control) {
            return bad("values contain no control characters");
        }
    }
    Ok(())
}

/// Collects the node's inventory, opening GPU discovery just for this call.
pub fn collect(opts: &InventoryOptions) -> Result<NodeInventory, InventoryError> {
    let probe = GpuProbe::open(&opts.gpu);
    collect_with(opts, &probe)
}

/// Collects the node's inventory with a GPU probe the caller keeps open.
pub fn collect_with(
    opts: &InventoryOptions,
    probe: &GpuProbe,
) -> Result<NodeInventory, InventoryError> {
    validate_labels(&opts.labels)?;
    let host = host::HostFacts::read(&opts.data_dir)?;
    let gpu = probe.report();
    if let Some(error) = &gpu.error {
        tracing::warn!(%error, source = ?gpu.source, "GPU discovery degraded");
    }
    Ok(NodeInventory {
        hostname: host.hostname,
        os: host.os,
        kernel: host.kernel,
        arch: host.arch,
        cpu_cores: host.cpu_cores,
        cpu_model: host.cpu_model,
        memory_bytes: host.memory_bytes,
        disk_total_bytes: host.disk_total_bytes,
        disk_free_bytes: host.disk_free_bytes,
        gpus: gpu.gpus,
        gpu_source: gpu.source,
        gpu_driver_version: gpu.driver_version,
        gpu_error: gpu.error,
        labels: opts.labels.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_are_validated() {
        assert!(validate_labels(&labels(&[
            ("zone", "eu-1a"),
            ("instance", "spot"),
            ("meridian.io/rack", "")
        ]))
        .is_ok());
        for bad in [
            labels(&[("", "x")]),
            labels(&[("-zone", "x")]),
            labels(&[("zo ne", "x")]),
            labels(&[("zöne", "x")]),
            labels(&[(&"k".repeat(64), "x")]),
            labels(&[("zone", "a\nb")]),
            labels(&[("zone", &"v".repeat(257))]),
        ] {
            assert!(
                matches!(
                    validate_labels(&bad),
                    Err(InventoryError::InvalidLabel { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn gpu_source_serializes_in_snake_case() -> Result<(), serde_json::Error> {
        assert_eq!(serde_json::to_string(&GpuSource::Nvml)?, "\"nvml\"");
        assert_eq!(
            serde_json::to_string(&GpuSource::NvidiaSmi)?,
            "\"nvidia_smi\""
        );
        assert_eq!(
            serde_json::from_str::<GpuSource>("\"none\"")?,
            GpuSource::None
        );
        Ok(())
    }
}
