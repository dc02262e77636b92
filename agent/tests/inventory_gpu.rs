//! GPU discovery on a real NVIDIA machine: NVML and `nvidia-smi` must agree.
//!
//! Ignored by default (machines without GPUs cannot run it). On a GPU machine:
//! `cargo test -p meridian-agent --test inventory_gpu -- --ignored`. With `MERIDIAN_TEST_GPU_PID` set to the
//! pid of a process keeping GPU 0 busy, it also checks utilization and the process list; with
//! `MERIDIAN_TEST_GPU_OUT` set to a file name, it writes the collected inventory there as JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use agent::inventory::{
    collect, GpuOptions, GpuProbe, GpuSource, IdlePolicy, IdleTracker, InventoryOptions,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
#[ignore = "needs an NVIDIA GPU with its driver"]
fn nvml_and_nvidia_smi_agree_on_a_real_gpu() -> TestResult {
    let nvml = GpuProbe::open(&GpuOptions::default());
    assert_eq!(nvml.backend_source(), GpuSource::Nvml, "{nvml:?}");
    let from_nvml = nvml.report();
    assert_eq!(from_nvml.source, GpuSource::Nvml, "{from_nvml:?}");
    assert_eq!(from_nvml.error, None);
    assert!(!from_nvml.gpus.is_empty());

    let smi = GpuProbe::open(&GpuOptions {
        nvml_path: Some("/nonexistent/libnvidia-ml.so.1".into()),
        ..GpuOptions::default()
    });
    let from_smi = smi.report();
    assert_eq!(from_smi.source, GpuSource::NvidiaSmi, "{from_smi:?}");
    assert_eq!(from_nvml.driver_version, from_smi.driver_version);
    assert_eq!(from_nvml.gpus.len(), from_smi.gpus.len());

    for (a, b) in from_nvml.gpus.iter().zip(&from_smi.gpus) {
        assert!(a.healthy && b.healthy, "{a:?} {b:?}");
        assert!(a.uuid.starts_with("GPU-"), "{a:?}");
        assert_eq!(
            (a.index, &a.uuid, &a.model, &a.pci_bus_id),
            (b.index, &b.uuid, &b.model, &b.pci_bus_id)
        );
        assert_eq!(a.memory_total_mib, b.memory_total_mib);
        assert!(
            a.memory_used_mib.abs_diff(b.memory_used_mib) <= 64,
            "used: nvml {a:?} smi {b:?}"
        );
        assert_eq!(a.compute_capability, b.compute_capability);
        assert!(a.compute_capability.is_some());
        assert_eq!(a.mig_enabled, b.mig_enabled);
        assert_eq!(a.power_limit_w, b.power_limit_w);
        assert!(
            a.temperature_c.is_some()
                && a.utilization_gpu_percent.is_some()
                && a.power_draw_w.is_some()
        );
    }

    let gpu0 = &from_nvml.gpus[0];
    let nvml_procs = nvml.running_processes(&gpu0.uuid)?;
    let smi_procs = smi.running_processes(&gpu0.uuid)?;
    let pids =
        |procs: &[agent::inventory::GpuProcess]| procs.iter().map(|p| p.pid).collect::<Vec<_>>();
    assert_eq!(pids(&nvml_procs), pids(&smi_procs));

    if let Some(pid) = std::env::var("MERIDIAN_TEST_GPU_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        let mine = nvml_procs.iter().find(|p| p.pid == pid);
        assert!(
            mine.is_some_and(|p| p.used_memory_mib.is_some_and(|m| m > 0)),
            "{pid} in {nvml_procs:?}"
        );
        assert_eq!(
            mine.and_then(|p| p.used_memory_mib),
            smi_procs
                .iter()
                .find(|p| p.pid == pid)
                .and_then(|p| p.used_memory_mib)
        );
        // A GPU kept busy is not idle; sample it for a few seconds.
        let mut tracker = IdleTracker::new(IdlePolicy {
            max_utilization_percent: 5,
            min_idle: Duration::from_secs(2),
            max_sample_gap: Duration::from_secs(2),
        });
        tracker.set_allocated([gpu0.uuid.as_str()], Duration::ZERO);
        let mut busiest = 0;
        for tenth in 0..=30 {
            let report = nvml.report();
            busiest = busiest.max(report.gpus[0].utilization_gpu_percent.unwrap_or(0));
            tracker.observe(&report.gpus, Duration::from_millis(tenth * 100));
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(busiest >= 50, "utilization peaked at {busiest}%");
        assert!(tracker.idle_gpus(Duration::from_secs(3)).is_empty());
    }

    if let Some(out) = std::env::var_os("MERIDIAN_TEST_GPU_OUT") {
        let data = tempfile::tempdir()?;
        let inv = collect(&InventoryOptions {
            data_dir: data.path().to_path_buf(),
            labels: BTreeMap::from([("zone".to_string(), "test".to_string())]),
            gpu: GpuOptions::default(),
        })?;
        assert_eq!(inv.gpu_source, GpuSource::Nvml);
        let mut json = serde_json::to_string_pretty(&inv)?;
        json.push('\n');
        json.push_str(&serde_json::to_string_pretty(&smi.report().gpus)?);
        std::fs::write(PathBuf::from(out), json)?;
    }
    Ok(())
}
