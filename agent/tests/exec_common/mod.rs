//! Shared helpers of the `exec_*` tests: specs, unique job ids, launchers without real cgroups, jobs
//! started and ready, how to enter them, reading logs back, and waiting on conditions with a deadline.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use agent::exec::{
    read_logs, JobEntry, Launcher, LauncherOptions, LogOptions, LogStream, ProcessSpec, RunningJob,
};

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A job id unique in this machine's test runs (tests share real cgroup hierarchies).
pub fn job_id(name: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A shell-script job with logs under `root/logs/<job>`.
pub fn shell_spec(root: &Path, name: &str, script: &str) -> ProcessSpec {
    let job_id = job_id(name);
    ProcessSpec {
        log: LogOptions::new(root.join("logs").join(&job_id)),
        job_id,
        attempt: 1,
        command: "sh".into(),
        args: vec!["-c".into(), script.into()],
        env: BTreeMap::new(),
        working_dir: None,
        cpu_millis: 0,
        memory_bytes: 0,
        gpu_uuids: Vec::new(),
        network: Default::default(),
        secrets: Default::default(),
        secrets_in_env: false,
    }
}

/// A launcher whose cgroup root is an empty directory: rlimits mode, no real cgroup is touched.
pub fn rlimit_launcher(root: &Path) -> Launcher {
    let fake = root.join("no-cgroups");
    std::fs::create_dir_all(&fake).expect("create fake cgroup root");
    Launcher::new(LauncherOptions {
        data_dir: root.join("data"),
        cgroup_root: Some(fake),
        sandbox: None,
        defaults: agent::exec::JobDefaults {
            memory_bytes: 0,
            pids_max: 0,
        },
    })
    .expect("launcher")
}

/// A sandboxed launcher on this host's cgroups, or `None` (and a loud skip) where that cannot be.
pub fn sandboxed(root: &Path, options: agent::exec::SandboxOptions) -> Option<Launcher> {
    if !is_root() {
        eprintln!("SKIPPED: the job sandbox needs root");
        return None;
    }
    let launcher = Launcher::new(LauncherOptions {
        data_dir: root.join("data"),
        cgroup_root: None,
        sandbox: Some(options),
        defaults: agent::exec::JobDefaults::default(),
    })
    .expect("launcher");
    let isolation = launcher.isolation();
    assert!(
        isolation.complete(),
        "root, yet no full sandbox: {isolation:?}"
    );
    Some(launcher)
}

/// Everything of `stream` from offset 0, read in small pieces.
pub fn read_all(dir: &Path, stream: LogStream) -> String {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let chunk = read_logs(dir, stream, offset, 1000).expect("read logs");
        if chunk.data.is_empty() {
            return String::from_utf8_lossy(&out).into_owned();
        }
        out.extend_from_slice(&chunk.data);
        offset = chunk.next_offset;
    }
}

/// Polls `condition` until it holds, failing the test after [`DEADLINE`].
pub async fn eventually(what: &str, condition: impl FnMut() -> bool) {
    if let Err(e) = testkit::eventually(what, DEADLINE, condition).await {
        panic!("{e}");
    }
}

/// The value after `key=` on its own line of `text`.
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

/// The process exists and has not ended (zombies count as ended: nothing reaps orphans on some hosts).
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("X");
    !matches!(state, "Z" | "X")
}

/// Creates `path` so that a job waiting for it goes on.
pub fn touch(path: &PathBuf) {
    std::fs::write(path, b"").expect("touch");
}

/// Whether the tests run as root (the job sandbox needs it).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// How to enter `job`, with `PATH`, `MARKER=from-the-job` and `TERM=dumb` as its environment.
pub fn entry_of(job: &RunningJob) -> JobEntry {
    let handle = job.handle();
    let mut env = BTreeMap::new();
    env.insert("PATH".to_owned(), "/usr/bin:/bin".to_owned());
    env.insert("MARKER".to_owned(), "from-the-job".to_owned());
    env.insert("TERM".to_owned(), "dumb".to_owned());
    JobEntry {
        pid: handle.pid,
        start_time: handle.start_time,
        cgroups: handle.cgroups.clone(),
        uid: handle.uid,
        workdir: handle.state_dir.join("work"),
        env,
    }
}

/// Starts `script` and waits until it printed `ready`.
pub async fn started(launcher: &Launcher, root: &Path, name: &str, script: &str) -> RunningJob {
    let spec = shell_spec(root, name, script);
    let job = launcher.launch(&spec).expect("launch");
    let dir = spec.log.dir.clone();
    eventually("the job to be ready", || {
        read_all(&dir, LogStream::Stdout).contains("ready")
    })
    .await;
    job
}
