//! The job sandbox: what a job's processes may see and do on the node.
//!
//! Every job runs as its own unprivileged user (a uid from the agent's range, never shared by two running
//! jobs) in its own mount, pid, IPC and UTS namespaces, and — under the `none` network policy — its own
//! network namespace with only loopback. Its root is a fresh read-only tmpfs holding:
//!
//! - the host's system directories read-only (`/usr`, `/bin`, `/sbin`, `/lib*`, `/etc`, plus the operator's
//!   `read_only_paths`), with the agent's data directory and key files masked wherever they fall inside;
//! - its own work directory read-write, at the same path as on the host (so paths resolve alike);
//! - a private `/tmp` and `/dev/shm`, a minimal `/dev` (null, zero, full, random, urandom, tty and only the
//!   GPU device nodes assigned to it), its own `/proc`, `/sys` read-only without the cgroup mounts;
//! - its secrets as files on a tmpfs at `/run/secrets`, readable only by the job's user;
//! - `/etc/passwd` and `/etc/group` with an entry for the job's user.
//!
//! Under the `egress` policy the job shares the host's network namespace and an eBPF filter on its cgroup
//! ([`netfilter`]) refuses connections and datagrams to the coordinators, Meridian's own listeners on the
//! node, the metadata addresses and the operator's deny-list.
//!
//! Limits cannot be left: the job's user owns no cgroup file and `/sys` is read-only; `no_new_privs` is
//! set and no capability survives the change of user. The exit status comes from `waitpid` in the shim
//! (see [`child`]), which runs outside the sandbox and writes it where the job cannot reach.
//!
//! This module builds the sandbox's description before the fork ([`Sandbox::plan`]); [`child`] carries it
//! out. It never starts a process itself, and it must never make a host path visible that the plan did
//! not name.
//!
//! # Why direct namespace calls rather than bubblewrap
//!
//! bubblewrap is a well-reviewed setuid-free sandbox, but it is another package on every node, its
//! options and failure messages differ between versions, and it would still leave the uid choice, cgroup
//! placement, egress filter and exit-status recording to us. Calling `clone`, `mount` and `pivot_root`
//! ourselves keeps one binary, lets the shim record the exit status from `waitpid`, and makes every step's
//! failure a precise error. The price is this module's `unsafe` code, kept small, allocation-free after the
//! fork and covered by attack tests.

pub(crate) mod child;
pub mod netfilter;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use self::child::Step;
use self::netfilter::DenyRule;
use super::ExecError;

/// Host directories every job sees read-only (those that exist on the node).
pub const SYSTEM_PATHS: [&str; 9] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt",
];
/// Device nodes every job gets.
const BASIC_DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// NVIDIA control devices a GPU job gets besides its own `nvidia<minor>` nodes.
const NVIDIA_CONTROL_DEVICES: [&str; 4] = [
    "nvidiactl",
    "nvidia-uvm",
    "nvidia-uvm-tools",
    "nvidia-modeset",
];
/// The job's user name in its `/etc/passwd`.
pub const JOB_USER: &str = "meridian-job";
/// Where a job finds its secrets, one file per name.
pub const SECRETS_DIR: &str = "/run/secrets";

/// A job's network policy, set per project.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkPolicy {
    /// The host's network, minus the coordinators, Meridian's listeners and the metadata addresses.
    #[default]
    Egress,
    /// A private network namespace with loopback only.
    None,
}

impl NetworkPolicy {
    /// `"none"` → `None`, anything else (including empty) → `Egress`: the wire's default.
    pub fn from_wire(text: &str) -> NetworkPolicy {
        match text {
            "none" => NetworkPolicy::None,
            _ => NetworkPolicy::Egress,
        }
    }
}

/// How jobs are sandboxed on this node (the agent's `[sandbox]` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxOptions {
    /// The first uid (and gid) of the range jobs run as.
    pub first_uid: u32,
    /// How many uids the range holds: at most this many jobs run at once.
    pub uid_count: u32,
    /// The memory limit of a job that asked for none, in bytes.
    pub default_memory_bytes: u64,
    /// The most processes and threads one job may have.
    pub pids_max: u64,
    /// More host paths every job sees read-only (e.g. `/opt/conda`).
    pub read_only_paths: Vec<PathBuf>,
    /// Host directories a job may name as its working directory (seen read-write).
    pub shared_paths: Vec<PathBuf>,
    /// Host paths no job may see even inside a read-only path (the agent adds its data directory and
    /// key files).
    pub hidden_paths: Vec<PathBuf>,
    /// Destinations refused to `egress` jobs, besides the coordinators and metadata addresses.
    pub deny: Vec<DenyRule>,
    /// Where device nodes live (`/dev`).
    pub dev_dir: PathBuf,
    /// Where the NVIDIA driver lists its GPUs (`/proc/driver/nvidia/gpus`).
    pub nvidia_gpus_dir: PathBuf,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            first_uid: 200_000,
            uid_count: 65_536,
            default_memory_bytes: 4 << 30,
            pids_max: 4096,
            read_only_paths: Vec::new(),
            shared_paths: Vec::new(),
            hidden_paths: Vec::new(),
            deny: Vec::new(),
            dev_dir: PathBuf::from("/dev"),
            nvidia_gpus_dir: PathBuf::from("/proc/driver/nvidia/gpus"),
        }
    }
}

/// The uids of running jobs: each job gets the lowest free one of the range.
#[derive(Debug)]
pub(crate) struct UidPool {
    first: u32,
    count: u32,
    used: Mutex<BTreeSet<u32>>,
}

impl UidPool {
    pub(crate) fn new(first: u32, count: u32) -> Arc<UidPool> {
        Arc::new(UidPool {
            first,
            count,
            used: Mutex::new(BTreeSet::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u32>> {
        // A panic while holding this lock leaves a set of integers, still consistent.
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A uid no running job has, or `None` when the range is exhausted.
    pub(crate) fn acquire(self: &Arc<Self>) -> Option<UidLease> {
        let mut used = self.lock();
        let uid =
            (self.first..self.first.saturating_add(self.count)).find(|u| !used.contains(u))?;
        used.insert(uid);
        Some(UidLease {
            pool: self.clone(),
            uid,
        })
    }

    /// Marks `uid` as taken by an adopted job; `None` if it is outside the range.
    pub(crate) fn adopt(self: &Arc<Self>, uid: u32) -> Option<UidLease> {
        if uid < self.first || uid - self.first >= self.count {
            return None;
        }
        self.lock().insert(uid);
        Some(UidLease {
            pool: self.clone(),
            uid,
        })
    }
}

/// One running job's uid; returned to the pool when dropped (after the job has ended).
#[derive(Debug)]
pub(crate) struct UidLease {
    pool: Arc<UidPool>,
    pub(crate) uid: u32,
}

impl Drop for UidLease {
    fn drop(&mut self) {
        self.pool.lock().remove(&self.uid);
    }
}

/// What the plan needs to know about one job.
pub(crate) struct JobView<'a> {
    /// The state directory on the host (root-owned, `0700`): holds the mount point of the new root and
    /// the generated `passwd`/`group` files.
    pub state_dir: &'a Path,
    /// The working directory on the host, bound read-write at the same path.
    pub workdir: &'a Path,
    pub uid: u32,
    pub gid: u32,
    pub gpu_uuids: &'a [String],
    /// Secret file name → contents.
    pub secrets: &'a BTreeMap<String, String>,
}

/// A built plan: the steps, what each one does (for error messages) and the new root.
pub(crate) struct Plan {
    pub steps: Vec<Step>,
    pub descriptions: Vec<String>,
    pub new_root: CString,
}

/// Builds the mount plan of one job's sandbox.
pub(crate) struct Sandbox<'a> {
    pub options: &'a SandboxOptions,
}

impl Sandbox<'_> {
    /// Describes the sandbox of `job`: reads the host (which system paths exist, symlinks, GPU minors) and
    /// writes the job's `passwd` and `group` files into its state directory.
    pub(crate) fn plan(&self, job: &JobView<'_>) -> Result<Plan, ExecError> {
        let root = job.state_dir.join("root");
        fs::create_dir_all(&root).map_err(ExecError::io("creating", &root))?;
        let mut b = PlanBuilder {
            root: root.clone(),
            steps: Vec::new(),
            descriptions: Vec::new(),
            made: BTreeSet::new(),
        };
        b.mount(
            "tmpfs",
            Path::new("/"),
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755,size=16m",
        )?;

        let mut visible: Vec<PathBuf> = SYSTEM_PATHS.iter().map(PathBuf::from).collect();
        visible.extend(self.options.read_only_paths.iter().cloned());
        for path in &visible {
            let Ok(meta) = fs::symlink_metadata(path) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let target = fs::read_link(path).map_err(ExecError::io("reading link", path))?;
                b.mkdir_parents(path)?;
                b.symlink(&target, path)?;
            } else if meta.is_dir() {
                b.mkdir_all(path)?;
                b.bind(path, path, true, true, false)?;
            }
        }
        for hidden in &self.options.hidden_paths {
            if !visible.iter().any(|v| hidden.starts_with(v)) {
                continue;
            }
            match fs::symlink_metadata(hidden) {
                Ok(meta) if meta.is_dir() => b.mount(
                    "tmpfs",
                    hidden,
                    libc::MS_NOSUID | libc::MS_NODEV,
                    "mode=0000,size=4k",
                )?,
                Ok(_) => {
                    let null = self.options.dev_dir.join("null");
                    b.bind(&null, hidden, true, false, false)?;
                }
                Err(_) => {}
            }
        }

        let passwd = job.state_dir.join("passwd");
        let group = job.state_dir.join("group");
        let home = job.workdir.display();
        let mut passwd_text = fs::read_to_string("/etc/passwd").unwrap_or_default();
        passwd_text.push_str(&format!(
            "{JOB_USER}:x:{}:{}:Meridian job:{home}:/bin/sh\n",
            job.uid, job.gid
        ));
        let mut group_text = fs::read_to_string("/etc/group").unwrap_or_default();
        group_text.push_str(&format!("{JOB_USER}:x:{}:\n", job.gid));
        for (path, text) in [(&passwd, passwd_text), (&group, group_text)] {
            fs::write(path, text).map_err(ExecError::io("writing", path))?;
        }
        if fs::metadata("/etc").is_ok_and(|m| m.is_dir()) {
            b.bind(&passwd, Path::new("/etc/passwd"), true, false, false)?;
            b.bind(&group, Path::new("/etc/group"), true, false, false)?;
        }

        // /dev: a few harmless devices and the job's own GPUs.
        let dev = Path::new("/dev");
        b.mkdir_all(dev)?;
        b.mount(
            "tmpfs",
            dev,
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "mode=0755,size=64k",
        )?;
        let mut devices: Vec<String> = BASIC_DEVICES.iter().map(|d| d.to_string()).collect();
        if !job.gpu_uuids.is_empty() {
            devices.extend(NVIDIA_CONTROL_DEVICES.iter().map(|d| d.to_string()));
            let minors = gpu_minors(&self.options.nvidia_gpus_dir);
            for uuid in job.gpu_uuids {
                match minors.get(uuid) {
                    Some(minor) => devices.push(format!("nvidia{minor}")),
                    None => tracing::warn!(%uuid, "no device node found for an assigned GPU"),
                }
            }
        }
        for name in devices {
            let host = self.options.dev_dir.join(&name);
            if fs::metadata(&host).is_err() {
                continue;
            }
            let inside = dev.join(&name);
            b.file(&inside, Vec::new(), 0o666, None)?;
            b.bind(&host, &inside, false, false, true)?;
        }
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            b.symlink(Path::new(target), &dev.join(link))?;
        }
        let shm = dev.join("shm");
        b.mkdir_all(&shm)?;
        b.mount("tmpfs", &shm, libc::MS_NOSUID | libc::MS_NODEV, "mode=1777")?;

        let proc = Path::new("/proc");
        b.mkdir_all(proc)?;
        b.mount(
            "proc",
            proc,
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            "",
        )?;
        let sys = Path::new("/sys");
        if fs::metadata(sys).is_ok_and(|m| m.is_dir()) {
            b.mkdir_all(sys)?;
            // Not recursive: the cgroup hierarchies mounted under /sys/fs/cgroup stay out of sight.
            b.bind(sys, sys, true, false, false)?;
        }
        let tmp = Path::new("/tmp");
        b.mkdir_all(tmp)?;
        b.mount("tmpfs", tmp, libc::MS_NOSUID | libc::MS_NODEV, "mode=1777")?;

        let secrets = Path::new(SECRETS_DIR);
        b.mkdir_all(secrets)?;
        b.mount(
            "tmpfs",
            secrets,
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            &format!("mode=0500,uid={},gid={},size=1m", job.uid, job.gid),
        )?;
        for (name, value) in job.secrets {
            if !secret_file_name_ok(name) {
                return Err(ExecError::InvalidSpec(format!(
                    "secret name {name:?} cannot name a file"
                )));
            }
            b.file(
                &secrets.join(name),
                value.as_bytes().to_vec(),
                0o400,
                Some((job.uid, job.gid)),
            )?;
        }

        b.mkdir_all(job.workdir)?;
        b.bind(job.workdir, job.workdir, false, false, false)?;

        let new_root = c_path(&root)?;
        Ok(Plan {
            steps: b.steps,
            descriptions: b.descriptions,
            new_root,
        })
    }
}

/// Secret names become file names under `/run/secrets`: letters, digits, `_`, `-` and `.`, not starting
/// with a dot.
pub(crate) fn secret_file_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

struct PlanBuilder {
    root: PathBuf,
    steps: Vec<Step>,
    descriptions: Vec<String>,
    /// Directories the plan creates already (so `mkdir_all` does not repeat them).
    made: BTreeSet<PathBuf>,
}

impl PlanBuilder {
    /// The host path of `inside` under the new root.
    fn at(&self, inside: &Path) -> Result<CString, ExecError> {
        let mut path = self.root.clone();
        for component in inside.components() {
            match component {
                Component::Normal(part) => path.push(part),
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(ExecError::InvalidSpec(format!(
                        "sandbox path {} is not plain",
                        inside.display()
                    )))
                }
            }
        }
        c_path(&path)
    }

    fn push(&mut self, step: Step, description: String) {
        self.steps.push(step);
        self.descriptions.push(description);
    }

    fn mkdir_all(&mut self, inside: &Path) -> Result<(), ExecError> {
        let mut so_far = PathBuf::from("/");
        for component in inside.components() {
            if let Component::Normal(part) = component {
                so_far.push(part);
                if self.made.insert(so_far.clone()) {
                    let path = self.at(&so_far)?;
                    self.push(
                        Step::Mkdir { path, mode: 0o755 },
                        format!("creating {}", so_far.display()),
                    );
                }
            }
        }
        Ok(())
    }

    fn mkdir_parents(&mut self, inside: &Path) -> Result<(), ExecError> {
        match inside.parent() {
            Some(parent) => self.mkdir_all(parent),
            None => Ok(()),
        }
    }

    fn bind(
        &mut self,
        source: &Path,
        inside: &Path,
        read_only: bool,
        recursive: bool,
        device: bool,
    ) -> Result<(), ExecError> {
        let step = Step::Bind {
            source: c_path(source)?,
            target: self.at(inside)?,
            read_only,
            recursive,
            device,
        };
        let mode = if read_only { "read-only" } else { "read-write" };
        self.push(
            step,
            format!(
                "binding {} at {} ({mode})",
                source.display(),
                inside.display()
            ),
        );
        Ok(())
    }

    fn mount(
        &mut self,
        fstype: &str,
        inside: &Path,
        flags: libc::c_ulong,
        data: &str,
    ) -> Result<(), ExecError> {
        let step = Step::Mount {
            fstype: c_text(fstype)?,
            target: self.at(inside)?,
            flags,
            data: c_text(data)?,
        };
        self.push(step, format!("mounting {fstype} at {}", inside.display()));
        Ok(())
    }

    fn file(
        &mut self,
        inside: &Path,
        contents: Vec<u8>,
        mode: libc::mode_t,
        owner: Option<(u32, u32)>,
    ) -> Result<(), ExecError> {
        let step = Step::File {
            path: self.at(inside)?,
            contents,
            mode,
            owner,
        };
        self.push(step, format!("creating {}", inside.display()));
        Ok(())
    }

    fn symlink(&mut self, target: &Path, inside: &Path) -> Result<(), ExecError> {
        let step = Step::Symlink {
            target: c_path(target)?,
            link: self.at(inside)?,
        };
        self.push(
            step,
            format!("linking {} to {}", inside.display(), target.display()),
        );
        Ok(())
    }
}

pub(crate) fn c_path(path: &Path) -> Result<CString, ExecError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| ExecError::InvalidSpec(format!("path {} contains a NUL byte", path.display())))
}

fn c_text(text: &str) -> Result<CString, ExecError> {
    CString::new(text).map_err(|_| ExecError::InvalidSpec(format!("{text:?} contains a NUL byte")))
}

/// GPU UUID → device minor, from the driver's `<gpus_dir>/<pci address>/information` files
/// (`GPU UUID: GPU-…` and `Device Minor: 0` lines). Empty when the driver is not loaded.
pub(crate) fn gpu_minors(gpus_dir: &Path) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let Ok(entries) = fs::read_dir(gpus_dir) else {
        return out;
    };
    for entry in entries.flatten() {
        if let Ok(text) = fs::read_to_string(entry.path().join("information")) {
            if let Some((uuid, minor)) = parse_gpu_information(&text) {
                out.insert(uuid, minor);
            }
        }
    }
    out
}

/// The UUID and device minor in one GPU's `information` file.
pub(crate) fn parse_gpu_information(text: &str) -> Option<(String, u32)> {
    let value = |key: &str| {
        text.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        })
    };
    let uuid = value("GPU UUID")?;
    let minor = value("Device Minor")?.parse().ok()?;
    (!uuid.is_empty()).then_some((uuid, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_unique_among_running_jobs_and_come_back() {
        let pool = UidPool::new(1000, 3);
        let a = pool.acquire().expect("a");
        let b = pool.acquire().expect("b");
        let c = pool.acquire().expect("c");
        assert_eq!((a.uid, b.uid, c.uid), (1000, 1001, 1002));
        assert!(pool.acquire().is_none(), "the range is exhausted");
        drop(b);
        let again = pool.acquire().expect("again");
        assert_eq!(again.uid, 1001);
        assert!(pool.adopt(999).is_none());
        assert!(pool.adopt(1003).is_none());
        drop(a);
        let adopted = pool.adopt(1000).expect("adopted");
        assert!(pool.acquire().is_none(), "an adopted uid is taken");
        drop(adopted);
        assert_eq!(pool.acquire().expect("freed").uid, 1000);
        drop((again, c));
    }

    #[test]
    fn gpu_information_files_give_uuid_and_minor() {
        let text = "Model: \t\t NVIDIA H200\nIRQ:             42\n\
                    GPU UUID: \t GPU-0824f7c9-1cc0-41ef-7ba4-d4e33500582c\n\
                    Video BIOS: \t 96.00.a5.00.01\nBus Type: \t PCIe\nDevice Minor: \t 3\n";
        assert_eq!(
            parse_gpu_information(text),
            Some(("GPU-0824f7c9-1cc0-41ef-7ba4-d4e33500582c".to_owned(), 3))
        );
        assert_eq!(parse_gpu_information("Model: X\nDevice Minor: 1\n"), None);
        assert_eq!(
            parse_gpu_information("GPU UUID: GPU-1\nDevice Minor: x\n"),
            None
        );
    }

    #[test]
    fn secret_names_cannot_leave_their_directory() {
        for ok in ["API_TOKEN", "db-password", "cert.pem"] {
            assert!(secret_file_name_ok(ok), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "../x", "a b", "x\0"] {
            assert!(!secret_file_name_ok(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_plan_shows_system_paths_read_only_and_only_the_jobs_own_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = tmp.path().join("jobs/j/1");
        let work = state.join("work");
        fs::create_dir_all(&work).expect("mkdir");
        let options = SandboxOptions {
            hidden_paths: vec![PathBuf::from("/etc/shadow"), tmp.path().to_path_buf()],
            ..SandboxOptions::default()
        };
        let secrets = BTreeMap::from([("TOKEN".to_owned(), "s3cret".to_owned())]);
        let plan = Sandbox { options: &options }
            .plan(&JobView {
                state_dir: &state,
                workdir: &work,
                uid: 200_001,
                gid: 200_001,
                gpu_uuids: &[],
                secrets: &secrets,
            })
            .expect("plan");
        let text = plan.descriptions.join("\n");
        assert!(text.contains("binding /usr at /usr (read-only)"), "{text}");
        assert!(text.contains("binding /etc at /etc (read-only)"), "{text}");
        assert!(text.contains("at /etc/shadow (read-only)"), "{text}");
        assert!(
            text.contains(&format!(
                "binding {} at {} (read-write)",
                work.display(),
                work.display()
            )),
            "{text}"
        );
        assert!(text.contains("mounting proc at /proc"), "{text}");
        assert!(text.contains("mounting tmpfs at /tmp"), "{text}");
        assert!(text.contains("creating /run/secrets/TOKEN"), "{text}");
        // Of the data directory, only the work directory is mounted in the sandbox.
        let binds_of_data_dir = plan
            .descriptions
            .iter()
            .filter(|d| {
                d.starts_with("binding") && d.contains(&format!(" at {}", tmp.path().display()))
            })
            .count();
        assert_eq!(binds_of_data_dir, 1, "{text}");
        // The /etc/passwd the job sees names its user.
        let passwd = fs::read_to_string(state.join("passwd")).expect("passwd");
        assert!(passwd.ends_with(&format!(
            "{JOB_USER}:x:200001:200001:Meridian job:{}:/bin/sh\n",
            work.display()
        )));
        assert_eq!(plan.steps.len(), plan.descriptions.len());
    }

    #[test]
    fn a_gpu_job_gets_its_own_device_nodes_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dev = tmp.path().join("dev");
        let gpus = tmp.path().join("gpus");
        fs::create_dir_all(&dev).expect("mkdir");
        for (i, name) in ["nvidia0", "nvidia1", "nvidiactl", "null"]
            .iter()
            .enumerate()
        {
            fs::write(dev.join(name), "").expect("node");
            let _ = i;
        }
        for (pci, uuid, minor) in [("0000:01:00.0", "GPU-a", 0), ("0000:02:00.0", "GPU-b", 1)] {
            fs::create_dir_all(gpus.join(pci)).expect("mkdir");
            fs::write(
                gpus.join(pci).join("information"),
                format!("GPU UUID: {uuid}\nDevice Minor: {minor}\n"),
            )
            .expect("write");
        }
        let options = SandboxOptions {
            dev_dir: dev.clone(),
            nvidia_gpus_dir: gpus,
            ..SandboxOptions::default()
        };
        let state = tmp.path().join("state");
        let work = state.join("work");
        fs::create_dir_all(&work).expect("mkdir");
        let plan = Sandbox { options: &options }
            .plan(&JobView {
                state_dir: &state,
                workdir: &work,
                uid: 1,
                gid: 1,
                gpu_uuids: &["GPU-b".to_owned()],
                secrets: &BTreeMap::new(),
            })
            .expect("plan");
        let text = plan.descriptions.join("\n");
        assert!(text.contains("/dev/nvidia1 at /dev/nvidia1"), "{text}");
        assert!(text.contains("/dev/nvidiactl at /dev/nvidiactl"), "{text}");
        assert!(!text.contains("nvidia0"), "{text}");
    }
}
