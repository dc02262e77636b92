//! GPU pinning against a real NVIDIA driver: inside a job, CUDA sees exactly the GPUs the job was given
//! (by UUID) and none when it was given none. Needs an NVIDIA GPU, `nvidia-smi` and `python3`:
//! `cargo test -p meridian-agent --test exec_gpu -- --ignored`.

mod exec_common;

use std::process::Command;

use agent::exec::LogStream;
use exec_common::{field, read_all, rlimit_launcher, shell_spec};

/// Asks the CUDA driver API (through ctypes, no CUDA toolkit needed) which devices it sees.
const CUDA_PROBE: &str = r#"
import ctypes
cuda = ctypes.CDLL("libcuda.so.1")
rc = cuda.cuInit(0)
count = ctypes.c_int(0)
if rc == 0:
    cuda.cuDeviceGetCount(ctypes.byref(count))
print(f"init={rc}")
print(f"count={count.value}")
for i in range(count.value):
    dev = ctypes.c_int(0)
    cuda.cuDeviceGet(ctypes.byref(dev), i)
    name = ctypes.create_string_buffer(256)
    cuda.cuDeviceGetName(name, 256, dev)
    raw = (ctypes.c_ubyte * 16)()
    cuda.cuDeviceGetUuid(raw, dev)
    h = bytes(raw).hex()
    print(f"uuid{i}=GPU-{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}")
    print(f"name{i}={name.value.decode()}")
"#;

fn gpu_uuids() -> Vec<String> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=uuid", "--format=csv,noheader"])
        .output()
        .expect("nvidia-smi runs");
    assert!(out.status.success(), "nvidia-smi failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[tokio::test]
#[ignore = "needs an NVIDIA GPU"]
async fn cuda_in_a_job_sees_exactly_its_assigned_gpus() {
    let uuids = gpu_uuids();
    assert!(!uuids.is_empty(), "no GPU listed");
    let tmp = tempfile::tempdir().expect("tempdir");
    let launcher = rlimit_launcher(tmp.path());

    let mut spec = shell_spec(tmp.path(), "gpu-one", "");
    spec.command = "python3".into();
    spec.args = vec!["-c".into(), CUDA_PROBE.into()];
    let last = uuids.last().expect("non-empty").clone();
    spec.gpu_uuids = vec![last.clone()];
    let report = launcher.launch(&spec).expect("launch").wait().await;
    let out = read_all(&spec.log.dir, LogStream::Stdout);
    let err = read_all(&spec.log.dir, LogStream::Stderr);
    assert!(report.succeeded(), "{report:?}\n{out}\n{err}");
    assert_eq!(field(&out, "init"), Some("0"), "{out}");
    assert_eq!(field(&out, "count"), Some("1"), "{out}");
    assert_eq!(field(&out, "uuid0"), Some(last.as_str()), "{out}");
    assert!(field(&out, "name0").is_some_and(|n| !n.is_empty()), "{out}");

    let mut none = spec.clone();
    none.job_id = exec_common::job_id("gpu-none");
    none.log.dir = tmp.path().join("logs-none");
    none.gpu_uuids.clear();
    let report = launcher.launch(&none).expect("launch").wait().await;
    let out = read_all(&none.log.dir, LogStream::Stdout);
    assert!(report.succeeded(), "{report:?}\n{out}");
    // CUDA_ERROR_NO_DEVICE: an empty CUDA_VISIBLE_DEVICES hides every GPU.
    assert_eq!(field(&out, "init"), Some("100"), "{out}");
    assert_eq!(field(&out, "count"), Some("0"), "{out}");
}
