//! How a job's end is told, through a real agent: a job that outgrows its memory limit is reported as out
//! of memory with the limit (not as "killed by signal 9"), with the CPU time the agent measured.

mod common;

use std::time::Duration;

use common::dev::DevProcess;
use common::{cli, cli_json, wait_for};
use serde_json::Value;

#[test]
fn a_job_killed_at_its_memory_limit_is_reported_out_of_memory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = DevProcess::start(&tmp.path().join("dev"), &[]);
    let addr = dev.addr();
    let env = [
        ("MERIDIAN_ADDR", addr.as_str()),
        ("MERIDIAN_TOKEN", &dev.token),
    ];

    let nodes = cli_json(&["node", "list", "-o", "json"], &env);
    let mode = nodes[0]["limit_mode"].as_str().unwrap_or("").to_owned();
    if !mode.starts_with("cgroup") {
        eprintln!(
            "SKIPPED: the agent limits jobs with {mode:?}, not a cgroup; only a cgroup counts \
             out-of-memory kills (run the tests as root on a host with cgroups)"
        );
        return;
    }

    // Reporting the kill as such is apply version 5: wait until the group runs the newest semantics.
    wait_for("the newest apply version", Duration::from_secs(30), || {
        let s = cli_json(&["cluster", "status", "-o", "json"], &env);
        (s["apply_version"].as_u64()? >= 5 && s["apply_version"] == s["apply_version_known"])
            .then_some(())
    });

    // `tail` of an endless stream without newlines keeps everything it read: it grows until the kernel
    // kills it at the limit.
    let job = cli_json(
        &[
            "job",
            "run",
            "-o",
            "json",
            "--memory",
            "32Mi",
            "--",
            "tail",
            "/dev/zero",
        ],
        &env,
    );
    let id = job["id"].as_str().expect("job id").to_owned();
    let ended: Value = wait_for("the job to end", Duration::from_secs(60), || {
        let j = cli_json(&["job", "status", &id, "-o", "json"], &env);
        matches!(
            j["state"].as_str(),
            Some("failed" | "succeeded" | "cancelled" | "lost")
        )
        .then_some(j)
    });
    assert_eq!(ended["state"], "failed", "{ended}");
    let attempt = &ended["attempts"][0];
    assert_eq!(
        attempt["detail"], "out of memory: killed at its 32 MiB memory limit",
        "{attempt}"
    );
    assert!(
        attempt["cpu_time_ms"].is_u64(),
        "the agent measured CPU time: {attempt}"
    );

    // The table says it too.
    let out = cli(&["job", "status", &id], &env);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("out of memory"), "{text}");
    assert!(text.contains("CPU") && text.contains("PEAK-MEM"), "{text}");
    // Twice on the attempt's line: the peak the agent measured, and the limit in the detail.
    let mib = text
        .lines()
        .find(|l| l.contains("out of memory"))
        .map_or(0, |l| l.matches("MiB").count());
    assert!(
        mib >= 2,
        "the peak memory the agent measured is shown: {text}"
    );
}
