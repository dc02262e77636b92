//! With no NVML library installed, `collect()` finds `nvidia-smi` on `PATH` by itself.
//!
//! This file holds one test because it changes the process's `PATH`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use agent::inventory::{collect, GpuOptions, GpuProbe, GpuSource, InventoryOptions};

#[test]
fn nvidia_smi_on_path_is_used_when_nvml_is_absent() -> Result<(), Box<dyn std::error::Error>> {
    if GpuProbe::open(&GpuOptions::default()).backend_source() == GpuSource::Nvml {
        // This machine has NVML, which takes precedence; the fallback is covered by inventory_collect.rs.
        return Ok(());
    }
    let bin = tempfile::tempdir()?;
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpu/query-gpu-busy.csv");
    let script = bin.path().join("nvidia-smi");
    std::fs::write(&script, format!("#!/bin/sh\ncat '{}'\n", fixture.display()))?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin.path().to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    std::env::set_var("PATH", std::env::join_paths(dirs)?);

    let data = tempfile::tempdir()?;
    let inv = collect(&InventoryOptions {
        data_dir: data.path().to_path_buf(),
        labels: BTreeMap::new(),
        gpu: GpuOptions::default(),
    })?;
    std::env::set_var("PATH", path);

    assert_eq!(inv.gpu_source, GpuSource::NvidiaSmi);
    assert_eq!(
        inv.gpu_error, None,
        "NVML is simply not installed: {:?}",
        inv.gpu_error
    );
    assert_eq!(inv.gpus.len(), 1);
    assert_eq!(inv.gpus[0].uuid, "GPU-11f4dd46-e32b-6944-7071-92596d083618");
    assert_eq!(inv.gpus[0].utilization_gpu_percent, Some(100));
    assert_eq!(inv.gpus[0].power_limit_w, Some(700.0));
    Ok(())
}
