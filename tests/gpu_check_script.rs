//! `deploy/gpu-check.sh`, the end-to-end check an operator runs on a GPU node, run here without a GPU: it
//! refuses to check more GPUs than the node has (exit 3), and with `GPU_CHECK_GPUS=0` it takes the whole
//! path — a throw-away `meridian dev` on ports the system picks (read back from its `endpoints.json`), a job
//! placed by its scheduler and run by its agent — and succeeds.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn gpu_check(gpus: &str) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/gpu-check.sh");
    let tmp = tempfile::tempdir().expect("tempdir");
    let output = Command::new("bash")
        .arg(&script)
        .env("MERIDIAN_BIN", meridian_bin())
        .env("GPU_CHECK_GPUS", gpus)
        .env_remove("GPU_CHECK_ADMIN_PORT")
        .env_remove("GPU_CHECK_RAFT_PORT")
        .env_remove("GPU_CHECK_GATEWAY_PORT")
        .env("TMPDIR", tmp.path())
        .env_remove("MERIDIAN_ADDR")
        .env_remove("MERIDIAN_TOKEN")
        .output()
        .expect("run deploy/gpu-check.sh");
    drop(tmp);
    output
}

#[test]
fn the_gpu_check_runs_a_job_through_dev_and_refuses_gpus_the_node_lacks() {
    // No node has 64 GPUs: nothing to check, and the script says so with its own exit status.
    let refused = gpu_check("64");
    assert_eq!(
        refused.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("the check needs 64"));

    let ran = gpu_check("0");
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&ran.stderr)
    );
    // The job's own output, read back through the API: it saw an empty device list.
    assert!(stdout.contains("CUDA_VISIBLE_DEVICES=\n"), "{stdout}");
    assert!(stdout.contains("succeeded"), "{stdout}");
    // Dev mode was asked for port 0 and the script found the port it got.
    assert!(
        stdout.contains("meridian dev: admin API at http://127.0.0.1:"),
        "{stdout}"
    );
    assert!(!stdout.contains("127.0.0.1:0\n"), "{stdout}");
}
