//! Parses the `nvidia-smi` captures of real H200 machines and cross-checks them against what NVML (through
//! pynvml) reported on the same machines.

use std::path::PathBuf;
use std::time::Duration;

use agent::inventory::{parse_compute_apps, parse_query_gpu, GpuProcess, IdlePolicy, IdleTracker};
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const MIB: u64 = 1024 * 1024;

fn fixture(name: &str) -> Result<String, std::io::Error> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gpu")
        .join(name);
    std::fs::read_to_string(path)
}

fn json(name: &str) -> Result<Value, Box<dyn std::error::Error>> {
    Ok(serde_json::from_str(&fixture(name)?)?)
}

fn u64_at(v: &Value, pointer: &str) -> Result<u64, String> {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("{pointer} missing"))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Result<&'a str, String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{pointer} missing"))
}

#[test]
fn idle_h200_capture_matches_nvml() -> TestResult {
    let out = parse_query_gpu(&fixture("query-gpu.csv")?);
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    assert_eq!(out.gpus.len(), 1);
    let gpu = &out.gpus[0];
    let nvml = json("nvml.json")?;

    assert_eq!(
        out.driver_version.as_deref(),
        Some(str_at(&nvml, "/driver")?)
    );
    assert_eq!(u64::from(gpu.index), u64_at(&nvml, "/devices/0/index")?);
    assert_eq!(gpu.uuid, str_at(&nvml, "/devices/0/uuid")?);
    assert_eq!(gpu.model, str_at(&nvml, "/devices/0/name")?);
    assert_eq!(gpu.pci_bus_id, str_at(&nvml, "/devices/0/pci_bus_id")?);
    // nvidia-smi's MiB are NVML's bytes divided exactly.
    assert_eq!(
        gpu.memory_total_mib * MIB,
        u64_at(&nvml, "/devices/0/memory_total")?
    );
    assert_eq!(gpu.memory_total_mib, 143_771);
    // NVML's v1 memory query (what pynvml used) counts the driver's reservation as used; nvidia-smi does not.
    assert_eq!(gpu.memory_used_mib, 0);
    assert!(u64_at(&nvml, "/devices/0/memory_used")? > gpu.memory_used_mib * MIB);
    let cc = (
        u64_at(&nvml, "/devices/0/cc/0")?,
        u64_at(&nvml, "/devices/0/cc/1")?,
    );
    assert_eq!(
        gpu.compute_capability
            .map(|(a, b)| (u64::from(a), u64::from(b))),
        Some(cc)
    );
    assert_eq!(
        gpu.mig_enabled,
        Some(u64_at(&nvml, "/devices/0/mig_mode/0")? == 1)
    );
    assert_eq!(gpu.mig_enabled, Some(false));
    assert_eq!(
        gpu.utilization_gpu_percent.map(u64::from),
        Some(u64_at(&nvml, "/devices/0/util_gpu")?)
    );
    assert_eq!(
        gpu.utilization_memory_percent.map(u64::from),
        Some(u64_at(&nvml, "/devices/0/util_mem")?)
    );
    let limit_mw = u64_at(&nvml, "/devices/0/power_limit_mw")? as f64;
    assert_eq!(gpu.power_limit_w, Some(limit_mw / 1000.0));
    assert_eq!(gpu.power_draw_w, Some(131.73));
    assert_eq!(gpu.temperature_c, Some(42));
    assert!(gpu.healthy);
    Ok(())
}

#[test]
fn busy_h200_capture_matches_nvml() -> TestResult {
    let out = parse_query_gpu(&fixture("query-gpu-busy.csv")?);
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    let gpu = &out.gpus[0];
    let nvml = json("nvml-busy.json")?;
    assert_eq!(gpu.uuid, str_at(&nvml, "/uuid")?);
    assert_eq!(gpu.memory_total_mib * MIB, u64_at(&nvml, "/memory_total")?);
    assert_eq!(
        gpu.utilization_gpu_percent.map(u64::from),
        Some(u64_at(&nvml, "/util_gpu")?)
    );
    assert_eq!(
        gpu.utilization_memory_percent.map(u64::from),
        Some(u64_at(&nvml, "/util_mem")?)
    );
    assert_eq!(gpu.memory_used_mib, 1395);
    assert_eq!(gpu.power_draw_w, Some(661.43));
    assert!(gpu.healthy);

    let apps = parse_compute_apps(&fixture("query-compute-apps-busy.csv")?);
    assert!(apps.problems.is_empty(), "{:?}", apps.problems);
    let load_pid = u64_at(&nvml, "/load_pid")?;
    assert_eq!(
        apps.processes,
        vec![GpuProcess {
            pid: u32::try_from(load_pid)?,
            gpu_uuid: gpu.uuid.clone(),
            used_memory_mib: Some(u64_at(&nvml, "/processes/0/used_gpu_memory")? / MIB),
        }]
    );
    assert_eq!(u64_at(&nvml, "/processes/0/pid")?, load_pid);
    // The process's memory is within what the GPU reports as used.
    assert!(apps.processes[0]
        .used_memory_mib
        .is_some_and(|m| m <= gpu.memory_used_mib));
    Ok(())
}

#[test]
fn idle_tracker_flags_the_idle_capture_and_not_the_busy_one() -> TestResult {
    let idle = parse_query_gpu(&fixture("query-gpu.csv")?).gpus;
    let busy = parse_query_gpu(&fixture("query-gpu-busy.csv")?).gpus;
    let policy = IdlePolicy {
        max_utilization_percent: 5,
        min_idle: Duration::from_secs(300),
        max_sample_gap: Duration::from_secs(60),
    };
    let mut tracker = IdleTracker::new(policy);
    let uuids: Vec<&str> = idle.iter().chain(&busy).map(|g| g.uuid.as_str()).collect();
    tracker.set_allocated(uuids, Duration::ZERO);
    for second in (0..=300).step_by(30) {
        let at = Duration::from_secs(second);
        tracker.observe(&idle, at);
        tracker.observe(&busy, at);
    }
    let flagged = tracker.idle_gpus(Duration::from_secs(300));
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    assert_eq!(flagged[0].uuid, idle[0].uuid);
    assert_eq!(flagged[0].idle_for, Duration::from_secs(300));
    Ok(())
}

#[test]
fn captures_of_both_machines_together() -> TestResult {
    let text = fixture("query-gpu.csv")?.replacen("0,", "1,", 1) + &fixture("query-gpu-busy.csv")?;
    let out = parse_query_gpu(&text);
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    let indexes: Vec<u32> = out.gpus.iter().map(|g| g.index).collect();
    assert_eq!(indexes, vec![0, 1]);
    assert_eq!(out.gpus[0].utilization_gpu_percent, Some(100));
    assert_eq!(out.gpus[1].utilization_gpu_percent, Some(0));
    Ok(())
}
