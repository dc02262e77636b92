//! `collect()` end to end: on this machine, and with stand-in `nvidia-smi` programs that print the H200
//! captures, fail, hang or print garbage.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use agent::inventory::{
    collect, validate_labels, GpuError, GpuOptions, GpuProbe, GpuProcess, GpuSource,
    InventoryError, InventoryOptions,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const QUERY_GPU: &str = "--query-gpu=index,uuid,name,pci.bus_id,memory.total,memory.used,memory.free,\
utilization.gpu,utilization.memory,temperature.gpu,power.draw,power.limit,compute_cap,mig.mode.current,driver_version";
const QUERY_APPS: &str = "--query-compute-apps=pid,gpu_uuid,used_memory";
const FORMAT: &str = "--format=csv,noheader,nounits";
const BUSY_UUID: &str = "GPU-11f4dd46-e32b-6944-7071-92596d083618";

/// Stand-in `nvidia-smi` programs, written once per test process before any test starts a process (a program
/// still open for writing in a forked child cannot be executed).
struct FakeSmi {
    dir: PathBuf,
}

impl FakeSmi {
    fn get() -> &'static FakeSmi {
        static FAKES: OnceLock<FakeSmi> = OnceLock::new();
        FAKES.get_or_init(|| {
            let result = FakeSmi::write();
            assert!(
                result.is_ok(),
                "writing stand-in nvidia-smi programs: {result:?}"
            );
            FakeSmi {
                dir: result.unwrap_or_default(),
            }
        })
    }

    fn write() -> Result<PathBuf, std::io::Error> {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpu");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("inventory-collect-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let answering = |gpus: &str, apps: &str| {
            format!(
                "#!/bin/sh\nif [ \"$1\" = '{QUERY_GPU}' ] && [ \"$2\" = '{FORMAT}' ] && [ $# -eq 2 ]; then cat '{}'\n\
                 elif [ \"$1\" = '{QUERY_APPS}' ] && [ \"$2\" = '{FORMAT}' ] && [ $# -eq 2 ]; then {apps}\n\
                 else echo \"unexpected arguments: $*\" >&2; exit 2; fi\n",
                fixtures.join(gpus).display()
            )
        };
        let busy_apps = format!(
            "cat '{}'",
            fixtures.join("query-compute-apps-busy.csv").display()
        );
        let scripts = [
            ("idle", answering("query-gpu.csv", "true")),
            ("busy", answering("query-gpu-busy.csv", &busy_apps)),
            (
                "failing",
                "#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"\n\
                 exit 9\n"
                    .to_string(),
            ),
            // The hanging program's child holds the output pipe too: only killing the group ends both.
            ("hanging", format!("#!/bin/sh\nsleep 60 &\necho $! > '{}'\nwait\n", dir.join("hanging.pid").display())),
            ("garbage", "#!/bin/sh\necho 'Segmentation fault, core dumped'\nprintf '\\377\\376,,,\\n'\n".to_string()),
        ];
        for (name, text) in scripts {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn options(data_dir: &Path, gpu: GpuOptions) -> InventoryOptions {
    let labels = BTreeMap::from([
        ("zone".to_string(), "eu-1a".to_string()),
        ("instance".into(), "spot".into()),
    ]);
    InventoryOptions {
        data_dir: data_dir.to_path_buf(),
        labels,
        gpu,
    }
}

/// GPU options that use the named stand-in and never this machine's own NVML.
fn fake_gpu(name: &str) -> GpuOptions {
    GpuOptions {
        nvml_path: Some(PathBuf::from("/nonexistent/libnvidia-ml.so.1")),
        nvidia_smi_path: Some(FakeSmi::get().path(name)),
        nvidia_smi_timeout: Duration::from_secs(10),
    }
}

#[test]
fn collects_this_machine() -> TestResult {
    FakeSmi::get();
    let dir = tempfile::tempdir()?;
    let inv = collect(&options(dir.path(), GpuOptions::default()))?;
    assert!(!inv.hostname.is_empty() && !inv.os.is_empty() && !inv.kernel.is_empty());
    assert_eq!(inv.arch, std::env::consts::ARCH);
    assert!(inv.cpu_cores >= 1);
    assert!(inv.cpu_cores as usize >= std::thread::available_parallelism()?.get());
    assert!(inv.memory_bytes > 64 * 1024 * 1024);
    assert!(inv.disk_total_bytes > 0 && inv.disk_free_bytes <= inv.disk_total_bytes);
    assert_eq!(inv.labels.get("instance").map(String::as_str), Some("spot"));
    if Path::new("/dev/nvidiactl").exists() {
        assert_ne!(
            inv.gpu_source,
            GpuSource::None,
            "NVIDIA device present: {inv:?}"
        );
    } else {
        assert!(inv.gpus.is_empty(), "{inv:?}");
        assert_eq!(inv.gpu_source, GpuSource::None);
        assert_eq!(
            inv.gpu_error, None,
            "no NVIDIA software here, so nothing failed"
        );
    }
    // The inventory travels as JSON.
    let back: agent::inventory::NodeInventory =
        serde_json::from_str(&serde_json::to_string(&inv)?)?;
    assert_eq!(back, inv);
    Ok(())
}

#[test]
fn missing_data_dir_and_bad_labels_are_errors() -> TestResult {
    FakeSmi::get();
    let dir = tempfile::tempdir()?;
    let missing = collect(&options(&dir.path().join("absent"), fake_gpu("idle")));
    assert!(
        matches!(missing, Err(InventoryError::Disk { .. })),
        "{missing:?}"
    );
    let mut opts = options(dir.path(), fake_gpu("idle"));
    opts.labels.insert("bad key".into(), "x".into());
    assert!(matches!(
        collect(&opts),
        Err(InventoryError::InvalidLabel { .. })
    ));
    assert!(validate_labels(&options(dir.path(), fake_gpu("idle")).labels).is_ok());
    Ok(())
}

#[test]
fn falls_back_to_nvidia_smi_when_nvml_cannot_load() -> TestResult {
    FakeSmi::get();
    let dir = tempfile::tempdir()?;
    let inv = collect(&options(dir.path(), fake_gpu("idle")))?;
    assert_eq!(inv.gpu_source, GpuSource::NvidiaSmi);
    assert_eq!(inv.gpus.len(), 1);
    let gpu = &inv.gpus[0];
    assert_eq!(gpu.uuid, "GPU-0824f7c9-1cc0-41ef-7ba4-d4e33500582c");
    assert_eq!(
        (gpu.model.as_str(), gpu.memory_total_mib),
        ("NVIDIA H200", 143_771)
    );
    assert_eq!(gpu.compute_capability, Some((9, 0)));
    assert!(gpu.healthy);
    assert_eq!(inv.gpu_driver_version.as_deref(), Some("580.159.04"));
    // The NVML library was named explicitly and could not be loaded: that is reported.
    let error = inv.gpu_error.unwrap_or_default();
    assert!(
        error.contains("nvml") && error.contains("/nonexistent/libnvidia-ml.so.1"),
        "{error}"
    );
    Ok(())
}

#[test]
fn a_library_that_is_not_nvml_is_reported_and_passed_over() -> TestResult {
    FakeSmi::get();
    let probe = GpuProbe::open(&GpuOptions {
        nvml_path: Some("libc.so.6".into()),
        ..fake_gpu("busy")
    });
    assert_eq!(probe.backend_source(), GpuSource::NvidiaSmi);
    let report = probe.report();
    assert_eq!(report.source, GpuSource::NvidiaSmi);
    assert_eq!(report.gpus[0].utilization_gpu_percent, Some(100));
    let error = report.error.unwrap_or_default();
    assert!(error.contains("nvmlInit_v2"), "{error}");
    Ok(())
}

#[test]
fn running_processes_through_nvidia_smi() -> TestResult {
    let fakes = FakeSmi::get();
    let busy = GpuProbe::open(&fake_gpu("busy"));
    assert_eq!(
        busy.running_processes(BUSY_UUID)?,
        vec![GpuProcess {
            pid: 418,
            gpu_uuid: BUSY_UUID.into(),
            used_memory_mib: Some(1386)
        }]
    );
    assert_eq!(busy.running_processes("GPU-other")?, vec![]);
    let idle = GpuProbe::open(&fake_gpu("idle"));
    assert_eq!(
        idle.running_processes("GPU-0824f7c9-1cc0-41ef-7ba4-d4e33500582c")?,
        vec![]
    );
    let failing = GpuProbe::open(&fake_gpu("failing"));
    assert!(matches!(
        failing.running_processes(BUSY_UUID),
        Err(GpuError::NvidiaSmi(_))
    ));
    let absent = GpuProbe::open(&GpuOptions {
        nvml_path: Some("/nonexistent".into()),
        nvidia_smi_path: Some(fakes.path("absent")),
        ..GpuOptions::default()
    });
    assert!(matches!(
        absent.running_processes(BUSY_UUID),
        Err(GpuError::NvidiaSmi(_))
    ));
    Ok(())
}

#[test]
fn a_failing_nvidia_smi_leaves_no_gpus_and_says_why() -> TestResult {
    FakeSmi::get();
    let dir = tempfile::tempdir()?;
    let inv = collect(&options(dir.path(), fake_gpu("failing")))?;
    assert!(inv.gpus.is_empty());
    assert_eq!(inv.gpu_source, GpuSource::None);
    let error = inv.gpu_error.unwrap_or_default();
    assert!(
        error.contains("couldn't communicate with the NVIDIA driver")
            && error.contains("exit status: 9"),
        "{error}"
    );
    assert!(inv.memory_bytes > 0, "host facts are still there");
    Ok(())
}

#[test]
fn garbage_from_nvidia_smi_leaves_no_gpus_and_says_why() -> TestResult {
    FakeSmi::get();
    let dir = tempfile::tempdir()?;
    let inv = collect(&options(dir.path(), fake_gpu("garbage")))?;
    assert!(inv.gpus.is_empty());
    assert_eq!(inv.gpu_source, GpuSource::None);
    assert!(inv
        .gpu_error
        .unwrap_or_default()
        .contains("Segmentation fault"));
    Ok(())
}

#[test]
fn a_hanging_nvidia_smi_is_killed_with_its_children() -> TestResult {
    let fakes = FakeSmi::get();
    let dir = tempfile::tempdir()?;
    let mut gpu = fake_gpu("hanging");
    gpu.nvidia_smi_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let inv = collect(&options(dir.path(), gpu))?;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(inv.gpu_source, GpuSource::None);
    assert!(inv.gpu_error.unwrap_or_default().contains("did not answer"));

    // The program's own child (`sleep 60`) died with it.
    let pid = std::fs::read_to_string(fakes.path("hanging.pid"))?
        .trim()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let alive = state.as_deref().is_some_and(|s| {
            let after_name = s.rsplit_once(')').map_or("", |(_, rest)| rest);
            !after_name.trim_start().starts_with('Z')
        });
        if !alive {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sleep {pid} still running: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
