//! Reading a file out of a job's working directory (`meridian job cp JOB:PATH DEST`), with the job's
//! rights and never outside that directory.
//!
//! The path is relative to the working directory; it is refused when empty, absolute, or when it names
//! `..`. The working directory is opened by the agent; everything below it is resolved with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`, or component by
//! component with `O_NOFOLLOW` on kernels without it), so a symbolic link the job planted — to
//! `/etc/shadow`, to another job's directory, anywhere — is refused rather than followed. The open and
//! the read happen on a thread of their own that first takes the job's user and group as its filesystem
//! identity (`setfsuid`/`setfsgid`, no supplementary groups: the kernel drops the thread's filesystem
//! capabilities with it), so the agent reads only what the job itself could read; the thread ends after
//! the read, taking that identity with it. Only regular files are read (a FIFO the job planted is
//! opened without blocking and refused), one chunk per call, with the file's identity beside it so a
//! copy of several chunks can tell that the file changed under it.
//!
//! Must never follow a link, never read as root a file the job's user could not, and never change the
//! identity of a thread it does not own.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// The longest path accepted.
const MAX_PATH: usize = 4096;
/// The most entries one directory listing answers.
pub const MAX_DIR_ENTRIES: usize = 10_000;

/// What a directory entry is, as it is (a link is never followed to say what it points at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Link,
    Other,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Link => "link",
            EntryKind::Other => "other",
        }
    }
}

/// One entry of a directory in a job's working directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
}

/// One chunk of a job's file and the file's identity when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChunk {
    pub data: Vec<u8>,
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    pub device: u64,
    pub inode: u64,
    pub modified_ns: i64,
}

/// Why a job's file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    #[error("path {0:?}: {1}")]
    BadPath(String, &'static str),
    #[error("{0:?} does not exist in the job's working directory")]
    NotFound(String),
    #[error("{0:?} is a symbolic link or leads outside the job's working directory; links are not followed")]
    Escapes(String),
    #[error("{0:?} may not be read by the job's user")]
    PermissionDenied(String),
    #[error("{0:?} is not a regular file")]
    NotAFile(String),
    #[error("{0:?} is not a directory")]
    NotADirectory(String),
    #[error("{context} {path:?}: {source}")]
    Io {
        context: &'static str,
        path: String,
        source: io::Error,
    },
}

/// Reads at most `max` bytes from `offset` of `path` (relative to `workdir`) as `uid` (its group being
/// the same number; `None` reads with the agent's identity, for jobs run without a sandbox). Blocking.
pub fn read_job_file(
    workdir: &Path,
    uid: Option<u32>,
    path: &str,
    offset: u64,
    max: usize,
) -> Result<FileChunk, JobFileError> {
    let relative = checked_path(path)?;
    let dir = open_workdir(workdir)?;
    let shown = path.to_owned();
    as_job_user(uid, path, move || {
        let file = open_beneath(&dir, &relative, &shown)?;
        read_chunk(&file, &shown, offset, max)
    })
}

/// The job's working directory, opened by the agent.
fn open_workdir(workdir: &Path) -> Result<File, JobFileError> {
    File::open(workdir).map_err(|source| JobFileError::Io {
        context: "opening the job's working directory",
        path: workdir.display().to_string(),
        source,
    })
}

/// Runs `work` on a thread of its own that first takes `uid` as its filesystem identity (`None`: the
/// agent's); the identity ends with the thread. Blocking.
fn as_job_user<T: Send + 'static>(
    uid: Option<u32>,
    path: &str,
    work: impl FnOnce() -> Result<T, JobFileError> + Send + 'static,
) -> Result<T, JobFileError> {
    let shown = path.to_owned();
    let worker = std::thread::Builder::new()
        .name("job-file".into())
        .spawn(move || {
            if let Some(uid) = uid {
                become_user(uid).map_err(|source| JobFileError::Io {
                    context: "taking the job's identity for",
                    path: shown,
                    source,
                })?;
            }
            work()
        })
        .map_err(|source| JobFileError::Io {
            context: "starting a reader for",
            path: path.to_owned(),
            source,
        })?;
    worker.join().unwrap_or_else(|_| {
        Err(JobFileError::Io {
            context: "reading",
            path: String::new(),
            source: io::Error::other("the reader thread panicked"),
        })
    })
}

/// Lists the directory `path` (relative to `workdir`; empty or `.` for the working directory itself) as
/// `uid`, like [`read_job_file`]: resolved beneath the working directory without following links, read with
/// the job's filesystem identity. Entries are described as they are (`lstat`), sorted by name, at most
/// [`MAX_DIR_ENTRIES`]; names that are not UTF-8 are left out. Blocking.
pub fn list_job_dir(
    workdir: &Path,
    uid: Option<u32>,
    path: &str,
) -> Result<Vec<DirEntry>, JobFileError> {
    let whole = path.is_empty() || Path::new(path).components().all(|c| c == Component::CurDir);
    let relative = if whole {
        None
    } else {
        Some(checked_path(path)?)
    };
    let dir = open_workdir(workdir)?;
    let shown = path.to_owned();
    as_job_user(uid, path, move || {
        let target = match &relative {
            // Opened again under the job's identity, so its permissions apply to the listing too.
            None => open_beneath_or_self(&dir, &shown)?,
            Some(relative) => open_beneath(&dir, relative, &shown)?,
        };
        read_dir_entries(&target, &shown)
    })
}

/// The working directory itself, opened again (`.`) with the calling thread's identity.
fn open_beneath_or_self(dir: &File, shown: &str) -> Result<File, JobFileError> {
    let dot =
        CString::new(".").map_err(|_| JobFileError::BadPath(shown.into(), "holds a NUL byte"))?;
    // SAFETY: openat on a descriptor we hold, with a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            dot.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return Err(classify(errno, shown, "opening"));
    }
    // SAFETY: a descriptor openat just returned, owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The entries of the open directory `dir`, each `lstat`ed relative to it.
fn read_dir_entries(dir: &File, shown: &str) -> Result<Vec<DirEntry>, JobFileError> {
    let meta = dir.metadata().map_err(|source| JobFileError::Io {
        context: "reading the metadata of",
        path: shown.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(JobFileError::NotADirectory(
            shown.chars().take(256).collect(),
        ));
    }
    let io_error = |context| {
        let path = shown.to_owned();
        move |source| JobFileError::Io {
            context,
            path,
            source,
        }
    };
    // fdopendir takes over a descriptor of its own, closed by closedir.
    // SAFETY: dup of a descriptor we hold.
    let copy = unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if copy < 0 {
        return Err(io_error("listing")(io::Error::last_os_error()));
    }
    // SAFETY: `copy` is a directory descriptor we own; on success the stream owns it.
    let stream = unsafe { libc::fdopendir(copy) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `copy` is still ours to close.
        unsafe { libc::close(copy) };
        return Err(io_error("listing")(e));
    }
    let mut entries = Vec::new();
    let mut failure = None;
    loop {
        // readdir reports an error only through errno, which must be cleared first.
        // SAFETY: the thread's errno location is always valid.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `stream` is an open directory stream used by this thread only.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if errno != 0 {
                failure = Some(io::Error::from_raw_os_error(errno));
            }
            break;
        }
        // SAFETY: readdir returned an entry whose d_name is NUL-terminated and valid until the next call.
        let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) };
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            continue;
        };
        // SAFETY: fstatat on a descriptor we hold, with a NUL-terminated name, into a stat buffer that
        // outlives the call; the link itself is described, never its target.
        let st = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            (libc::fstatat(
                dir.as_raw_fd(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            ) == 0)
                .then_some(st)
        };
        let Some(st) = st else { continue };
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => EntryKind::File,
            libc::S_IFDIR => EntryKind::Dir,
            libc::S_IFLNK => EntryKind::Link,
            _ => EntryKind::Other,
        };
        entries.push(DirEntry {
            name: text.to_owned(),
            kind,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mode: st.st_mode & 0o7777,
        });
        if entries.len() >= MAX_DIR_ENTRIES {
            break;
        }
    }
    // SAFETY: the stream is open and closed once, here.
    unsafe { libc::closedir(stream) };
    if let Some(e) = failure {
        return Err(io_error("listing")(e));
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// The path's components, refused when it is empty, absolute, too long, holds a NUL or names `..`.
fn checked_path(path: &str) -> Result<PathBuf, JobFileError> {
    let bad = |why| Err(JobFileError::BadPath(path.chars().take(256).collect(), why));
    if path.is_empty() {
        return bad("empty");
    }
    if path.len() > MAX_PATH || path.contains('\0') {
        return bad("too long or holds a NUL byte");
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return bad("absolute paths are refused; name it relative to the job's working directory");
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return bad("`..` is refused"),
            Component::RootDir | Component::Prefix(_) => return bad("absolute paths are refused"),
        }
    }
    if out.as_os_str().is_empty() {
        return bad("names the working directory itself");
    }
    Ok(out)
}

/// Makes the calling thread (only it: raw system calls, not the C library's process-wide wrappers) act
/// on files as `uid`/`uid` with no supplementary groups.
fn become_user(uid: u32) -> io::Result<()> {
    // SAFETY: raw system calls on this thread's credentials; setgroups is given no list.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::syscall(libc::SYS_setfsgid, uid);
        libc::syscall(libc::SYS_setfsuid, uid);
        // Both calls answer the previous value whatever happens: ask again to know it took.
        let fsuid = libc::syscall(libc::SYS_setfsuid, u32::MAX);
        let fsgid = libc::syscall(libc::SYS_setfsgid, u32::MAX);
        if fsuid != i64::from(uid) || fsgid != i64::from(uid) {
            return Err(io::Error::other("the filesystem identity did not change"));
        }
    }
    Ok(())
}

fn classify(errno: i32, path: &str, context: &'static str) -> JobFileError {
    let path = path.chars().take(256).collect::<String>();
    match errno {
        libc::ENOENT | libc::ENOTDIR => JobFileError::NotFound(path),
        libc::ELOOP | libc::EXDEV => JobFileError::Escapes(path),
        libc::EACCES | libc::EPERM => JobFileError::PermissionDenied(path),
        libc::ENXIO => JobFileError::NotAFile(path),
        errno => JobFileError::Io {
            context,
            path,
            source: io::Error::from_raw_os_error(errno),
        },
    }
}

/// Opens `relative` beneath `dir` without following any link.
fn open_beneath(dir: &File, relative: &Path, shown: &str) -> Result<File, JobFileError> {
    let c_path = CString::new(relative.as_os_str().as_encoded_bytes())
        .map_err(|_| JobFileError::BadPath(shown.into(), "holds a NUL byte"))?;
    let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
    let mut how: libc::open_how = unsafe_zeroed_how();
    how.flags = flags as u64;
    how.resolve = libc::RESOLVE_BENEATH
        | libc::RESOLVE_NO_SYMLINKS
        | libc::RESOLVE_NO_MAGICLINKS
        | libc::RESOLVE_NO_XDEV;
    // SAFETY: openat2 reads the path and `how` (of the size given) and returns a new descriptor.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c_path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd >= 0 {
        // SAFETY: a descriptor openat2 just returned, owned by nothing else.
        return Ok(unsafe { File::from_raw_fd(fd as RawFd) });
    }
    let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    if errno != libc::ENOSYS {
        return Err(classify(errno, shown, "opening"));
    }
    open_by_components(dir, relative, shown, flags)
}

fn unsafe_zeroed_how() -> libc::open_how {
    // SAFETY: open_how is plain integers, for which all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Kernels without `openat2`: one component at a time, each opened with `O_NOFOLLOW`.
fn open_by_components(
    dir: &File,
    relative: &Path,
    shown: &str,
    flags: i32,
) -> Result<File, JobFileError> {
    let parts: Vec<_> = relative.components().collect();
    let mut current: Option<OwnedFd> = None;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let name = CString::new(part.as_os_str().as_encoded_bytes())
            .map_err(|_| JobFileError::BadPath(shown.into(), "holds a NUL byte"))?;
        let at = current.as_ref().map_or(dir.as_raw_fd(), AsRawFd::as_raw_fd);
        let step_flags = if last {
            flags | libc::O_NOFOLLOW
        } else {
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC
        };
        // SAFETY: openat on a descriptor we hold, with a NUL-terminated name.
        let fd = unsafe { libc::openat(at, name.as_ptr(), step_flags) };
        if fd < 0 {
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            // `O_PATH | O_NOFOLLOW` opens a link itself, which `O_DIRECTORY` then refuses: say why.
            // SAFETY: fstatat on a descriptor we hold, into a stat buffer that outlives the call.
            let is_link = unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                libc::fstatat(at, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) == 0
                    && st.st_mode & libc::S_IFMT == libc::S_IFLNK
            };
            let errno = if is_link { libc::ELOOP } else { errno };
            return Err(classify(errno, shown, "opening"));
        }
        // SAFETY: a descriptor openat just returned, owned by nothing else.
        current = Some(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    current
        .map(File::from)
        .ok_or_else(|| JobFileError::BadPath(shown.into(), "names the working directory itself"))
}

fn read_chunk(file: &File, path: &str, offset: u64, max: usize) -> Result<FileChunk, JobFileError> {
    let io = |context| {
        let path = path.to_owned();
        move |source| JobFileError::Io {
            context,
            path,
            source,
        }
    };
    let meta = file.metadata().map_err(io("reading the metadata of"))?;
    if !meta.file_type().is_file() {
        return Err(JobFileError::NotAFile(path.chars().take(256).collect()));
    }
    let want = usize::try_from(meta.len().saturating_sub(offset))
        .unwrap_or(usize::MAX)
        .min(max);
    let mut data = vec![0u8; want];
    let mut filled = 0;
    while filled < want {
        let n = file
            .read_at(&mut data[filled..], offset + filled as u64)
            .map_err(io("reading"))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    data.truncate(filled);
    Ok(FileChunk {
        data,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        device: meta.dev(),
        inode: meta.ino(),
        modified_ns: meta
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.mtime_nsec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_listing_describes_links_without_following_them_and_never_climbs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("secret"), b"s3cret").expect("write");
        std::fs::create_dir(tmp.path().join("out")).expect("mkdir");
        std::fs::write(tmp.path().join("out/model.bin"), b"0123").expect("write");
        std::fs::create_dir(tmp.path().join("out/logs")).expect("mkdir");
        symlink(outside.path(), tmp.path().join("out/elsewhere")).expect("symlink");
        symlink(outside.path(), tmp.path().join("dirlink")).expect("symlink");

        let listed = list_job_dir(tmp.path(), None, "out").expect("list");
        let seen: Vec<(&str, EntryKind, u64)> = listed
            .iter()
            .map(|e| (e.name.as_str(), e.kind, e.size))
            .collect();
        assert_eq!(seen[0], ("elsewhere", EntryKind::Link, seen[0].2));
        assert_eq!(seen[1].0, "logs");
        assert_eq!(seen[1].1, EntryKind::Dir);
        assert_eq!(seen[2], ("model.bin", EntryKind::File, 4));
        assert_eq!(seen.len(), 3);

        let top = list_job_dir(tmp.path(), None, "").expect("the working directory");
        assert!(top
            .iter()
            .any(|e| e.name == "out" && e.kind == EntryKind::Dir));
        assert_eq!(list_job_dir(tmp.path(), None, ".").expect("dot"), top);
        // A link to a directory is listed as a link and never entered; climbing is refused.
        assert!(matches!(
            list_job_dir(tmp.path(), None, "dirlink"),
            Err(JobFileError::Escapes(_))
        ));
        assert!(matches!(
            list_job_dir(tmp.path(), None, "out/elsewhere"),
            Err(JobFileError::Escapes(_))
        ));
        assert!(matches!(
            list_job_dir(tmp.path(), None, "../"),
            Err(JobFileError::BadPath(..))
        ));
        assert!(matches!(
            list_job_dir(tmp.path(), None, "out/model.bin"),
            Err(JobFileError::NotADirectory(_))
        ));
    }

    #[test]
    fn paths_that_name_outside_or_nothing_are_refused_before_any_open() {
        for bad in [
            "",
            "/etc/shadow",
            "../../etc/shadow",
            "a/../../b",
            ".",
            "./",
            "a\0b",
        ] {
            assert!(
                matches!(checked_path(bad), Err(JobFileError::BadPath(..))),
                "{bad:?}"
            );
        }
        assert_eq!(checked_path("./a//b/").expect("fine"), PathBuf::from("a/b"));
    }

    #[test]
    fn a_file_is_read_in_chunks_with_its_identity() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("out")).expect("mkdir");
        std::fs::write(tmp.path().join("out/result.txt"), b"0123456789").expect("write");
        let first = read_job_file(tmp.path(), None, "out/result.txt", 0, 4).expect("read");
        assert_eq!(first.data, b"0123");
        assert_eq!(first.size, 10);
        let rest = read_job_file(tmp.path(), None, "./out/result.txt", 4, 100).expect("read");
        assert_eq!(rest.data, b"456789");
        assert_eq!((rest.device, rest.inode), (first.device, first.inode));
        let past = read_job_file(tmp.path(), None, "out/result.txt", 50, 100).expect("read");
        assert!(past.data.is_empty());
    }

    #[test]
    fn links_fifos_and_directories_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("secret"), b"s3cret").expect("write");
        symlink(outside.path().join("secret"), tmp.path().join("planted")).expect("symlink");
        symlink(outside.path(), tmp.path().join("dirlink")).expect("symlink");
        std::fs::write(tmp.path().join("inside"), b"x").expect("write");
        symlink("inside", tmp.path().join("relative-link")).expect("symlink");
        for path in ["planted", "dirlink/secret", "relative-link"] {
            let got = read_job_file(tmp.path(), None, path, 0, 100);
            assert!(
                matches!(got, Err(JobFileError::Escapes(_))),
                "{path}: {got:?}"
            );
        }
        let fifo = CString::new(tmp.path().join("fifo").as_os_str().as_encoded_bytes()).expect("c");
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            read_job_file(tmp.path(), None, "fifo", 0, 100),
            Err(JobFileError::NotAFile(_))
        ));
        std::fs::create_dir(tmp.path().join("sub")).expect("mkdir");
        assert!(matches!(
            read_job_file(tmp.path(), None, "sub", 0, 100),
            Err(JobFileError::NotAFile(_))
        ));
        assert!(matches!(
            read_job_file(tmp.path(), None, "missing", 0, 100),
            Err(JobFileError::NotFound(_))
        ));
        // The component-by-component fallback refuses the same links.
        let dir = File::open(tmp.path()).expect("open");
        for path in ["planted", "dirlink/secret"] {
            let got = open_by_components(&dir, Path::new(path), path, libc::O_RDONLY);
            assert!(
                matches!(got, Err(JobFileError::Escapes(_))),
                "{path}: {got:?}"
            );
        }
    }

    #[test]
    fn the_read_uses_the_jobs_identity_not_the_agents() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: reading as another user needs root");
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("work");
        std::fs::create_dir(&dir).expect("mkdir");
        let job_uid = 64_123;
        std::os::unix::fs::chown(&dir, Some(job_uid), Some(job_uid)).expect("chown");
        std::fs::write(dir.join("root-only"), b"root").expect("write");
        std::fs::set_permissions(
            dir.join("root-only"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        std::fs::write(dir.join("mine"), b"job").expect("write");
        std::os::unix::fs::chown(dir.join("mine"), Some(job_uid), Some(job_uid)).expect("chown");
        std::fs::set_permissions(
            dir.join("mine"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        assert!(matches!(
            read_job_file(&dir, Some(job_uid), "root-only", 0, 100),
            Err(JobFileError::PermissionDenied(_))
        ));
        let mine = read_job_file(&dir, Some(job_uid), "mine", 0, 100).expect("read");
        assert_eq!(mine.data, b"job");
        // The agent's own threads kept their identity.
        assert_eq!(
            read_job_file(&dir, None, "root-only", 0, 100)
                .expect("root reads")
                .data,
            b"root"
        );
    }
}
