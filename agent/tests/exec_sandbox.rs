//! The job sandbox through the launcher, with real namespaces, users, cgroups and eBPF: what a job sees and
//! may do. Needs root; elsewhere each test says so and skips (the process-level attack tests in
//! `tests/security/sandbox.rs` cover the same ground through a real node).

mod exec_common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use agent::exec::{ExecError, JobDefaults, LogStream, NetworkPolicy, SandboxOptions, SecretValues};
use exec_common::{field, is_root, read_all, sandboxed, shell_spec};

#[tokio::test]
async fn a_job_without_network_has_loopback_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(launcher) = sandboxed(tmp.path(), SandboxOptions::default()) else {
        return;
    };
    let mut spec = shell_spec(
        tmp.path(),
        "no-net",
        "echo links=$(ls /sys/class/net 2>/dev/null | tr '\\n' ' '); \
         grep -c ':' /proc/net/dev; cat /proc/net/route | wc -l; \
         ip -o link 2>/dev/null | wc -l; echo hostname=$(hostname)",
    );
    spec.network = NetworkPolicy::None;
    let report = launcher.launch(&spec).expect("launch").wait().await;
    assert!(report.succeeded(), "{report:?}");
    let out = read_all(&spec.log.dir, LogStream::Stdout);
    let mut lines = out.lines().skip(1);
    // /proc/net/dev lists the namespace's interfaces: loopback alone.
    assert_eq!(lines.next().map(str::trim), Some("1"), "{out}");
    // No route at all: only the header line of /proc/net/route.
    assert_eq!(lines.next().map(str::trim), Some("1"), "{out}");

    if !Path::new("/usr/bin/python3").exists() {
        eprintln!("SKIPPED (rest): /usr/bin/python3 is not installed");
        return;
    }
    // Loopback works inside (a job's own processes can talk), nothing outside is reachable.
    let mut spec = shell_spec(
        tmp.path(),
        "no-net-loop",
        r#"/usr/bin/python3 - <<'EOF'
import socket
srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(1)
c = socket.socket(); c.connect(srv.getsockname()); print('loopback ok')
for host in ['8.8.8.8', '169.254.169.254', '10.0.0.1']:
    s = socket.socket(); s.settimeout(1)
    try:
        s.connect((host, 80)); print(host, 'CONNECTED')
    except OSError as e:
        print(host, 'errno', e.errno)
EOF"#,
    );
    spec.network = NetworkPolicy::None;
    let report = launcher.launch(&spec).expect("launch").wait().await;
    let out = read_all(&spec.log.dir, LogStream::Stdout);
    assert!(report.succeeded(), "{report:?} {out}");
    assert!(out.contains("loopback ok"), "{out}");
    assert!(!out.contains("CONNECTED"), "{out}");
    // ENETUNREACH: there is no route out of the namespace.
    assert!(out.contains("8.8.8.8 errno 101"), "{out}");
}

#[tokio::test]
async fn secrets_are_files_only_the_job_can_read_and_in_the_environment_only_when_asked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(launcher) = sandboxed(tmp.path(), SandboxOptions::default()) else {
        return;
    };
    let script = "echo value=$(cat $MERIDIAN_SECRETS_DIR/API_TOKEN); \
                  echo mode=$(stat -c '%a %u' /run/secrets/API_TOKEN); \
                  echo dir=$(stat -c '%a %u' /run/secrets); echo me=$(id -u); \
                  echo env=[${API_TOKEN-unset}]; \
                  echo mounts=$(grep -c ' /run/secrets ' /proc/self/mounts); \
                  if (echo x > /run/secrets/other) 2>/dev/null; then echo WROTE; fi";
    let mut spec = shell_spec(tmp.path(), "secret-files", script);
    spec.secrets = SecretValues(BTreeMap::from([(
        "API_TOKEN".to_owned(),
        "t0p-s3cret".to_owned(),
    )]));
    let report = launcher.launch(&spec).expect("launch").wait().await;
    assert!(report.succeeded(), "{report:?}");
    let out = read_all(&spec.log.dir, LogStream::Stdout);
    let me = field(&out, "me").expect("uid").to_owned();
    assert_eq!(field(&out, "value"), Some("t0p-s3cret"), "{out}");
    assert_eq!(
        field(&out, "mode"),
        Some(format!("400 {me}").as_str()),
        "{out}"
    );
    assert_eq!(
        field(&out, "dir"),
        Some(format!("500 {me}").as_str()),
        "{out}"
    );
    assert_eq!(field(&out, "env"), Some("[unset]"), "{out}");
    assert_eq!(field(&out, "mounts"), Some("1"), "{out}");
    assert!(!out.contains("WROTE"), "{out}");
    // Nothing of it reached the node's disk.
    let state = launcher.state_dir(&spec.job_id, 1, 0);
    assert!(
        !grep_tree(&state, "t0p-s3cret"),
        "secret found under {}",
        state.display()
    );

    spec = shell_spec(tmp.path(), "secret-env", "echo env=[${API_TOKEN-unset}]");
    spec.secrets = SecretValues(BTreeMap::from([("API_TOKEN".to_owned(), "v".to_owned())]));
    spec.secrets_in_env = true;
    assert!(launcher
        .launch(&spec)
        .expect("launch")
        .wait()
        .await
        .succeeded());
    let out = read_all(&spec.log.dir, LogStream::Stdout);
    assert_eq!(field(&out, "env"), Some("[v]"), "{out}");

    // A name that would leave the directory is refused before anything runs.
    spec = shell_spec(tmp.path(), "secret-escape", "true");
    spec.secrets = SecretValues(BTreeMap::from([("../x".to_owned(), "v".to_owned())]));
    assert!(matches!(
        launcher.launch(&spec),
        Err(ExecError::InvalidSpec(_))
    ));
}

fn grep_tree(dir: &Path, needle: &str) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let path = e.path();
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => grep_tree(&path, needle),
            Ok(m) if m.is_file() => {
                fs::read(&path).is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle))
            }
            _ => false,
        }
    })
}

#[tokio::test]
async fn a_gpu_job_sees_only_the_device_nodes_of_its_own_gpus() {
    let tmp = tempfile::tempdir().expect("tempdir");
    if !is_root() {
        eprintln!("SKIPPED: the job sandbox needs root");
        return;
    }
    // Two fake GPUs whose device nodes are real character devices (the null device's numbers), the way
    // the NVIDIA driver lists them under /proc/driver/nvidia/gpus.
    let dev = tmp.path().join("dev");
    let gpus = tmp.path().join("gpus");
    fs::create_dir_all(&dev).expect("mkdir");
    for name in [
        "null",
        "zero",
        "full",
        "random",
        "urandom",
        "tty",
        "nvidia0",
        "nvidia1",
        "nvidiactl",
    ] {
        let host = Path::new("/dev").join(if name.starts_with("nvidia") {
            "null"
        } else {
            name
        });
        let rdev = fs::metadata(&host).expect("host device").rdev();
        let path =
            std::ffi::CString::new(dev.join(name).as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid C path; mknod has no other preconditions.
        let made = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, rdev) };
        assert_eq!(made, 0, "mknod {name}: {}", std::io::Error::last_os_error());
        // Past the umask: the devices every job writes to (null, zero) are world-writable on real hosts.
        fs::set_permissions(
            dev.join(name),
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )
        .expect("chmod");
    }
    for (pci, uuid, minor) in [
        (
            "0000:01:00.0",
            "GPU-aaaaaaaa-0000-0000-0000-000000000000",
            0,
        ),
        (
            "0000:02:00.0",
            "GPU-bbbbbbbb-0000-0000-0000-000000000000",
            1,
        ),
    ] {
        fs::create_dir_all(gpus.join(pci)).expect("mkdir");
        fs::write(
            gpus.join(pci).join("information"),
            format!("Model: Test\nGPU UUID: {uuid}\nDevice Minor: {minor}\n"),
        )
        .expect("write");
    }
    let Some(launcher) = sandboxed(
        tmp.path(),
        SandboxOptions {
            dev_dir: dev,
            nvidia_gpus_dir: gpus,
            ..SandboxOptions::default()
        },
    ) else {
        return;
    };
    let mut spec = shell_spec(
        tmp.path(),
        "gpu-devices",
        "echo devices=$(ls /dev | grep nvidia | tr '\\n' ' '); \
         for d in /dev/nvidia0 /dev/nvidia1; do \
           if cat $d >/dev/null 2>&1; then echo OPENED $d; else echo REFUSED $d; fi; done; \
         echo cuda=$CUDA_VISIBLE_DEVICES",
    );
    spec.gpu_uuids = vec!["GPU-bbbbbbbb-0000-0000-0000-000000000000".into()];
    let report = launcher.launch(&spec).expect("launch").wait().await;
    assert!(report.succeeded(), "{report:?}");
    let out = read_all(&spec.log.dir, LogStream::Stdout);
    let err = read_all(&spec.log.dir, LogStream::Stderr);
    assert_eq!(
        field(&out, "devices"),
        Some("nvidia1 nvidiactl"),
        "{out}{err}"
    );
    assert!(out.contains("OPENED /dev/nvidia1"), "{out}{err}");
    assert!(out.contains("REFUSED /dev/nvidia0"), "{out}");
    assert_eq!(
        field(&out, "cuda"),
        Some("GPU-bbbbbbbb-0000-0000-0000-000000000000")
    );
}

#[tokio::test]
async fn a_job_without_requests_gets_the_default_memory_limit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(launcher) = sandboxed(tmp.path(), SandboxOptions::default()) else {
        return;
    };
    let spec = shell_spec(tmp.path(), "default-memory", "sleep 0");
    let job = launcher.launch(&spec).expect("launch");
    let limits: Vec<String> = job
        .handle()
        .cgroups
        .iter()
        .filter_map(|g| {
            fs::read_to_string(g.join("memory.limit_in_bytes"))
                .or_else(|_| fs::read_to_string(g.join("memory.max")))
                .ok()
        })
        .map(|t| t.trim().to_owned())
        .collect();
    assert_eq!(limits, [(JobDefaults::default().memory_bytes).to_string()]);
    let pids: Vec<String> = job
        .handle()
        .cgroups
        .iter()
        .filter_map(|g| fs::read_to_string(g.join("pids.max")).ok())
        .map(|t| t.trim().to_owned())
        .collect();
    assert_eq!(pids, [JobDefaults::default().pids_max.to_string()]);
    assert!(job.wait().await.succeeded());
}

#[tokio::test]
async fn launches_that_cannot_work_in_a_sandbox_fail_with_the_reason() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shared = tmp.path().join("shared");
    fs::create_dir_all(shared.join("project")).expect("mkdir");
    let Some(launcher) = sandboxed(
        tmp.path(),
        SandboxOptions {
            shared_paths: vec![shared.clone()],
            ..SandboxOptions::default()
        },
    ) else {
        return;
    };
    // A program outside what the sandbox shows (it exists on the host, in the test's directory).
    let tool = tmp.path().join("tool.sh");
    fs::write(&tool, "#!/bin/sh\necho ran\n").expect("write");
    fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let mut spec = shell_spec(tmp.path(), "hidden-program", "");
    spec.command = tool.display().to_string();
    spec.args.clear();
    match launcher.launch(&spec) {
        Err(ExecError::CommandNotFound(m)) => assert!(m.contains("sandbox"), "{m}"),
        other => panic!("expected command-not-found, got {other:?}"),
    }
    // A working directory outside the shared paths is refused; inside them it is used.
    let mut spec = shell_spec(tmp.path(), "outside-dir", "pwd");
    spec.working_dir = Some(tmp.path().to_path_buf());
    match launcher.launch(&spec) {
        Err(ExecError::InvalidSpec(m)) => assert!(m.contains("shared path"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    spec.working_dir = Some(shared.join("project"));
    let report = launcher.launch(&spec).expect("launch").wait().await;
    assert!(report.succeeded(), "{report:?}");
    let out = read_all(&spec.log.dir, LogStream::Stdout);
    assert_eq!(out.trim(), shared.join("project").display().to_string());
}

#[tokio::test]
async fn a_cancel_reaches_the_job_through_its_init_and_ends_everything() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(launcher) = sandboxed(tmp.path(), SandboxOptions::default()) else {
        return;
    };
    let spec = shell_spec(
        tmp.path(),
        "cancel",
        "trap 'echo got TERM; exit 143' TERM; (sleep 300; echo LEFTOVER) & echo started; while :; do sleep 0.05; done",
    );
    let job = launcher.launch(&spec).expect("launch");
    exec_common::eventually("the job to start", || {
        read_all(&spec.log.dir, LogStream::Stdout).contains("started")
    })
    .await;
    let report = job.cancel(std::time::Duration::from_secs(10)).await;
    assert!(report.cancelled, "{report:?}");
    let out = read_all(&spec.log.dir, LogStream::Stdout);
    assert!(out.contains("got TERM"), "{out}");
    // Nothing of the job outlives it: its cgroups are gone, so no process is left in them.
    for group in &job.handle().cgroups {
        assert!(!group.exists(), "{} left behind", group.display());
    }
}

#[tokio::test]
async fn a_restarted_agent_adopts_a_sandboxed_job_and_reads_the_status_its_shim_recorded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(launcher) = sandboxed(tmp.path(), SandboxOptions::default()) else {
        return;
    };
    let spec = shell_spec(
        tmp.path(),
        "adopted",
        "echo started; while [ ! -e go ]; do sleep 0.02; done; exit 7",
    );
    let job = launcher.launch(&spec).expect("launch");
    let uid = job.handle().uid.expect("a sandboxed job has a user");
    exec_common::eventually("the job to start", || {
        read_all(&spec.log.dir, LogStream::Stdout).contains("started")
    })
    .await;
    // The agent goes away; a new one (same data directory) takes the job over.
    let handle = job.detach();
    let restarted = sandboxed(tmp.path(), SandboxOptions::default()).expect("launcher");
    let adopted = restarted.adopt(&handle).expect("adopted");
    assert!(adopted.is_adopted());
    // The job's user stays its own: a new job gets another one.
    let other = shell_spec(tmp.path(), "other", "id -u");
    assert!(restarted
        .launch(&other)
        .expect("launch")
        .wait()
        .await
        .succeeded());
    let other_uid = read_all(&other.log.dir, LogStream::Stdout);
    assert_ne!(other_uid.trim(), uid.to_string());
    exec_common::touch(&handle.state_dir.join("work/go"));
    let report = adopted.wait().await;
    assert_eq!(report.exit_code, Some(7), "{report:?}");
    assert!(report.cpu_seconds.is_some(), "{report:?}");
}
