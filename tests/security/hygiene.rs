//! Attack tests: hygiene (see main.rs). What a local attacker or a careless operator could find: the master
//! key in the process environment, key files anyone on the host may read, internal addresses in errors.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::dev::DevProcess;
use crate::common::wait_for;

#[test]
fn the_master_key_does_not_stay_in_the_dev_process_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let line =
        coordinator::crypto::MasterKeyring::generate_line(&mut rand::rngs::OsRng).to_string();
    let key_b64 = line
        .split_once(':')
        .map(|(_, k)| k.to_owned())
        .expect("id:key");
    let dev = DevProcess::start_with_env(dir.path(), &[], &[("MERIDIAN_MASTER_KEY", &line)]);

    // The key is in use: a secret is sealed with it, and no keyring file was written instead.
    let (status, put) = dev.request(
        "POST",
        "/v1/secrets",
        Some(&dev.token),
        None,
        Some(&json!({ "name": "probe", "value": "v" })),
    );
    assert_eq!(status, 201, "{put}");
    assert!(!dir.path().join("master.keys").exists());

    // Not in the environment the kernel shows for the process, nor in what its jobs inherit.
    let environ = std::fs::read(format!("/proc/{}/environ", dev.pid())).expect("read environ");
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains(&key_b64),
        "the master key is in /proc/<pid>/environ"
    );
    assert!(!environ.contains(&line));
    let (status, job) = dev.request(
        "POST",
        "/v1/jobs",
        Some(&dev.token),
        None,
        Some(&json!({ "command": "env" })),
    );
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().expect("id").to_owned();
    let out = wait_for("the job's output", Duration::from_secs(60), || {
        let (_, j) = dev.request(
            "GET",
            &format!("/v1/jobs/{id}"),
            Some(&dev.token),
            None,
            None,
        );
        if j["state"] != json!("succeeded") {
            return None;
        }
        let (_, logs) = dev.request(
            "GET",
            &format!("/v1/jobs/{id}/logs"),
            Some(&dev.token),
            None,
            None,
        );
        logs["data"].as_str().map(str::to_owned)
    });
    assert!(out.contains("MERIDIAN_JOB_ID"), "{out}");
    assert!(!out.contains(&key_b64), "a job saw the master key");
    assert!(!out.contains("MERIDIAN_MASTER_KEY"), "{out}");
    let _: Value = job;
}
