//! GPU discovery: chooses NVML or `nvidia-smi` once, then answers GPU and process queries.
//!
//! Owns the fallback order and the `gpu_error` text. It must never fail the caller because of a GPU problem:
//! every failure becomes an empty list with a reason, and a node without NVIDIA software is simply a node
//! without GPUs.

use std::path::PathBuf;
use std::time::Duration;

use super::nvml::{Nvml, NvmlError};
use super::smi::{self, SmiError};
use super::{GpuInfo, GpuOptions, GpuProcess, GpuSource};

/// The GPUs found by one query.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuReport {
    pub source: GpuSource,
    /// Sorted by index.
    pub gpus: Vec<GpuInfo>,
    pub driver_version: Option<String>,
    /// Why a source that exists failed (also when a later source then answered).
    pub error: Option<String>,
}

/// Why a GPU process query failed.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU source on this node")]
    NoSource,
    #[error("nvml: {0}")]
    Nvml(String),
    #[error("{0}")]
    NvidiaSmi(String),
}

enum Backend {
    Nvml(Nvml),
    NvidiaSmi {
        program: Option<PathBuf>,
        timeout: Duration,
    },
}

/// Open GPU discovery. `Send + Sync`; keep one for the agent's life and share it.
pub struct GpuProbe {
    backend: Backend,
    /// Why NVML was passed over, when it exists but failed.
    nvml_error: Option<String>,
}

impl std::fmt::Debug for GpuProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match &self.backend {
            Backend::Nvml(_) => "nvml",
            Backend::NvidiaSmi { .. } => "nvidia-smi",
        };
        f.debug_struct("GpuProbe")
            .field("backend", &backend)
            .field("nvml_error", &self.nvml_error)
            .finish()
    }
}

impl GpuProbe {
    /// Loads and initialises NVML; when that fails, later queries run `nvidia-smi`. Never fails.
    ///
    /// NVML's default library missing from the loader path is not an error (the node has no NVIDIA driver
    /// installed); an explicit `nvml_path` that cannot be loaded, or a library that fails to initialise, is.
    pub fn open(opts: &GpuOptions) -> GpuProbe {
        let smi = Backend::NvidiaSmi {
            program: opts.nvidia_smi_path.clone(),
            timeout: opts.nvidia_smi_timeout,
        };
        match Nvml::load(opts.nvml_path.as_deref()) {
            Ok(nvml) => GpuProbe {
                backend: Backend::Nvml(nvml),
                nvml_error: None,
            },
            Err(NvmlError::Load { library, message }) if opts.nvml_path.is_none() => {
                tracing::debug!(%library, %message, "NVML not installed");
                GpuProbe {
                    backend: smi,
                    nvml_error: None,
                }
            }
            Err(error) => {
                tracing::warn!(%error, "NVML unusable, falling back to nvidia-smi");
                GpuProbe {
                    backend: smi,
                    nvml_error: Some(format!("nvml: {error}")),
                }
            }
        }
    }

    /// The source queries go to first (`NvidiaSmi` also when it may turn out to be absent).
    pub fn backend_source(&self) -> GpuSource {
        match self.backend {
            Backend::Nvml(_) => GpuSource::Nvml,
            Backend::NvidiaSmi { .. } => GpuSource::NvidiaSmi,
        }
    }

    /// Queries the GPUs now.
    pub fn report(&self) -> GpuReport {
        match &self.backend {
            Backend::Nvml(nvml) => match nvml.gpus() {
                Ok(mut gpus) => {
                    gpus.sort_by_key(|g| g.index);
                    let source = if gpus.is_empty() {
                        GpuSource::None
                    } else {
                        GpuSource::Nvml
                    };
                    GpuReport {
                        source,
                        gpus,
                        driver_version: nvml.driver_version(),
                        error: None,
                    }
                }
                Err(error) => GpuReport {
                    source: GpuSource::None,
                    gpus: Vec::new(),
                    driver_version: None,
                    error: Some(format!("nvml: {error}")),
                },
            },
            Backend::NvidiaSmi { program, timeout } => {
                let args = smi::query_gpu_args();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                match smi::run(program.as_deref(), &args, *timeout) {
                    Ok(text) => {
                        let parsed = smi::parse_query_gpu(&text);
                        let mut errors: Vec<String> = self.nvml_error.iter().cloned().collect();
                        if !parsed.problems.is_empty() {
                            errors
                                .push(format!("nvidia-smi output: {}", parsed.problems.join("; ")));
                        }
                        let source = if parsed.gpus.is_empty() {
                            GpuSource::None
                        } else {
                            GpuSource::NvidiaSmi
                        };
                        GpuReport {
                            source,
                            gpus: parsed.gpus,
                            driver_version: parsed.driver_version,
                            error: (!errors.is_empty()).then(|| errors.join("; ")),
                        }
                    }
                    Err(SmiError::NotFound) if program.is_none() => GpuReport {
                        source: GpuSource::None,
                        gpus: Vec::new(),
                        driver_version: None,
                        error: self.nvml_error.clone(),
                    },
                    Err(error) => {
                        let mut errors: Vec<String> = self.nvml_error.iter().cloned().collect();
                        errors.push(error.to_string());
                        GpuReport {
                            source: GpuSource::None,
                            gpus: Vec::new(),
                            driver_version: None,
                            error: Some(errors.join("; ")),
                        }
                    }
                }
            }
        }
    }

    /// Compute processes holding memory on the GPU with this UUID (for idle detection and usage accounting).
    pub fn running_processes(&self, uuid: &str) -> Result<Vec<GpuProcess>, GpuError> {
        match &self.backend {
            Backend::Nvml(nvml) => nvml
                .running_processes(uuid)
                .map_err(|e| GpuError::Nvml(e.to_string())),
            Backend::NvidiaSmi { program, timeout } => {
                let args = smi::query_apps_args();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let text = smi::run(program.as_deref(), &args, *timeout).map_err(|e| match e {
                    SmiError::NotFound if program.is_none() => GpuError::NoSource,
                    e => GpuError::NvidiaSmi(e.to_string()),
                })?;
                let parsed = smi::parse_compute_apps(&text);
                if !parsed.problems.is_empty() {
                    tracing::warn!(problems = ?parsed.problems, "unreadable nvidia-smi process lines");
                }
                Ok(parsed
                    .processes
                    .into_iter()
                    .filter(|p| p.gpu_uuid == uuid)
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<GpuProbe>();
    }
}
