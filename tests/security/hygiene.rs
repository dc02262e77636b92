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

/// Starts `meridian dev` on `dir` expecting it to refuse: its exit status and what it said. One that is
/// still running after a minute has not refused: it is killed and reported as running (`None`).
fn dev_refusal(dir: &std::path::Path) -> (Option<std::process::ExitStatus>, String) {
    use crate::common::meridian_bin;
    use std::io::Read as _;
    let mut child = std::process::Command::new(meridian_bin())
        .args(["dev"])
        .args(crate::common::dev_sandbox_args())
        .arg("--data-dir")
        .arg(dir)
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--raft-listen", "127.0.0.1:0"])
        .args(["--gateway-listen", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run meridian dev");
    // Read while it runs, so a chatty process never blocks on a full pipe.
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut said = String::new();
        let _ = err.read_to_string(&mut said);
        said
    });
    let exited =
        testkit::eventually_blocking("meridian dev exiting", Duration::from_secs(60), || {
            child.try_wait().expect("wait for meridian dev")
        });
    let status = match exited {
        Ok(status) => Some(status),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    };
    (status, reader.join().unwrap_or_default())
}

#[test]
fn key_files_that_others_may_read_are_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    drop(DevProcess::start(dir.path(), &[]));

    let chmod = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    for file in ["master.keys", "certs/ca.key", "admin.token"] {
        let path = dir.path().join(file);
        assert!(path.exists(), "{file} was written by the first start");
        for mode in [0o644, 0o640] {
            chmod(&path, mode);
            let (status, said) = dev_refusal(dir.path());
            assert!(
                status.is_some_and(|s| !s.success()),
                "started with {file} at {mode:o}: {said}"
            );
            assert!(said.contains(file), "{file} {mode:o}: {said}");
            assert!(said.contains("chmod 600"), "{file} {mode:o}: {said}");
        }
        chmod(&path, 0o600);
    }
    // With every file private again, the same directory starts and its data is intact.
    let dev = DevProcess::start(dir.path(), &[]);
    let (status, me) = dev.request("GET", "/v1/whoami", Some(&dev.token), None, None);
    assert_eq!(status, 200, "{me}");
}
