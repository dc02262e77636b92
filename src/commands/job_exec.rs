//! `meridian job exec` (a command run inside a running job's sandbox, its output printed and its exit
//! code made the CLI's) and `meridian job cp JOB:PATH DEST` (a file copied out of a running job's working
//! directory, byte for byte, with its permission bits; with `-r` a directory, file by file, its links and
//! special files named and left out).
//!
//! Both speak to the admin API only (`POST /v1/jobs/{id}:exec`, `GET /v1/jobs/{id}/files`,
//! `GET /v1/jobs/{id}/dir`); never to an agent. Without `-t`, non-interactive: stdin is read whole (with
//! `-i`, at most 1 MiB) and sent with the command; with `-t` the command gets a terminal and the session
//! is interactive (`job_terminal`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use clap::Args;
use coordinator::api::dto::{ExecJobRequest, ExecJobView, JobDirView, JobFileKind};

use crate::cli::ClientArgs;
use crate::client::{segment, ApiClient, ClientError};
use crate::output;

use super::{get_as, CommandError};

/// The most files `job cp -r` copies, and how deep it goes.
const MAX_TREE_FILES: usize = 10_000;
const MAX_TREE_DEPTH: usize = 64;

/// The most bytes `--stdin` sends.
const MAX_STDIN: u64 = 1024 * 1024;

/// `meridian job exec`.
#[derive(Debug, Clone, Args)]
pub struct JobExecArgs {
    /// The job.
    pub id: String,
    /// Which replica of a gang job (default 0).
    #[arg(long, default_value_t = 0)]
    pub replica: u32,
    /// Seconds before the command is killed (default 60, at most 3600; with -t the session's limit,
    /// default 28800, at most 86400).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Send this command's standard input to the command: read to its end (at most 1 MiB), or with -t
    /// typed into its terminal as the session goes.
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Run the command on a terminal, interactively (`-it` for a shell): its output appears as it comes
    /// and, with -i, what is typed here reaches it.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `meridian job cp`.
#[derive(Debug, Clone, Args)]
pub struct JobCpArgs {
    /// `JOB:PATH`, the path relative to the job's working directory.
    pub source: String,
    /// A file to write, a directory to write into (under the file's name), or `-` for stdout.
    pub dest: PathBuf,
    /// Which replica of a gang job (default 0).
    #[arg(long, default_value_t = 0)]
    pub replica: u32,
    /// Copy a directory and everything beneath it (links and special files are named and left out).
    #[arg(short = 'r', long)]
    pub recursive: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs the command in the job; the CLI then exits with its exit code (128 + the signal when one ended
/// it, as a shell reports it).
pub async fn exec(args: JobExecArgs) -> Result<(), CommandError> {
    if args.tty {
        return super::job_terminal::attach(args).await;
    }
    let api = ApiClient::from_args(&args.client)?;
    let stdin = if args.stdin {
        let mut bytes = Vec::new();
        std::io::stdin()
            .take(MAX_STDIN + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ClientError::Usage(format!("reading stdin: {e}")))?;
        if bytes.len() as u64 > MAX_STDIN {
            return Err(ClientError::Usage("--stdin sends at most 1 MiB".into()).into());
        }
        Some(STANDARD.encode(bytes))
    } else {
        None
    };
    let request = ExecJobRequest {
        command: args.command,
        replica: Some(u64::from(args.replica)),
        stdin,
        timeout_secs: args.timeout,
    };
    let body = serde_json::to_value(&request)
        .map_err(|e| ClientError::Failed(format!("encoding the request: {e}")))?;
    let wait = Duration::from_secs(args.timeout.unwrap_or(60).saturating_add(30));
    let path = format!("/v1/jobs/{}:exec", segment(&args.id));
    let reply = api.post_waiting(&path, body, wait).await?;
    let result: ExecJobView = serde_json::from_value(reply).map_err(|e| {
        ClientError::Failed(format!("POST {path}: an answer that does not fit: {e}"))
    })?;
    let decode = |text: &str| {
        STANDARD
            .decode(text)
            .map_err(|_| ClientError::Failed(format!("POST {path}: output that is not base64")))
    };
    output::raw(&decode(&result.stdout)?)
        .map_err(|e| ClientError::Failed(format!("writing the output: {e}")))?;
    let stderr = decode(&result.stderr)?;
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(&stderr);
    let _ = err.flush();
    if result.stdout_truncated || result.stderr_truncated {
        output::note("(output beyond 1 MiB per stream was dropped)");
    }
    if result.timed_out {
        output::note("the command ran past its timeout and was killed");
    }
    command_exit(result.exit_code, result.signal)
}

/// The CLI's ending for a command that ended in a job: its exit code, or 128 + the signal that ended it
/// (as a shell reports it), or 1 when neither is known.
pub(super) fn command_exit(
    exit_code: Option<i32>,
    signal: Option<i32>,
) -> Result<(), CommandError> {
    let code = match (exit_code, signal) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    if code == 0 {
        Ok(())
    } else {
        Err(CommandError::JobCommandExit(code))
    }
}

/// Copies `JOB:PATH` to the destination, through a temporary file renamed into place once every byte
/// arrived.
pub async fn cp(args: JobCpArgs) -> Result<(), CommandError> {
    let Some((id, path)) = args
        .source
        .split_once(':')
        .filter(|(j, p)| !j.is_empty() && !p.is_empty())
    else {
        return Err(ClientError::Usage(format!(
            "{:?}: expected JOB:PATH, the path relative to the job's working directory",
            args.source
        ))
        .into());
    };
    let api = ApiClient::from_args(&args.client)?;
    if args.recursive {
        return copy_tree(&api, id, path, &args).await;
    }
    let target = if args.dest == Path::new("-") {
        None
    } else {
        Some(destination(&args.dest, path))
    };
    let written = copy_file(&api, id, path, args.replica, target.as_deref()).await?;
    if target.is_some() {
        output::note(&format!("copied {} ({written} bytes)", path));
    }
    Ok(())
}

/// Copies one file of the job to `target` (stdout when `None`); the bytes written.
async fn copy_file(
    api: &ApiClient,
    id: &str,
    path: &str,
    replica: u32,
    target: Option<&Path>,
) -> Result<u64, ClientError> {
    let query: String = url_query(&[("path", path), ("replica", &replica.to_string())]);
    let url = format!("/v1/jobs/{}/files?{query}", segment(id));
    let mut resp = api.download(&url).await?;
    let expected = resp.content_length();
    let mode = resp
        .headers()
        .get("x-meridian-file-mode")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| u32::from_str_radix(v, 8).ok())
        .unwrap_or(0o644);
    let shown = target.map_or_else(|| "stdout".to_owned(), |t| t.display().to_string());
    let failed = |e: std::io::Error| ClientError::Failed(format!("writing {shown}: {e}"));
    let mut sink: Box<dyn Write> = match target {
        None => Box::new(std::io::stdout().lock()),
        Some(target) => Box::new(PendingFile::create(target, mode).map_err(failed)?),
    };
    let mut written: u64 = 0;
    loop {
        let chunk = resp.chunk().await.map_err(|e| {
            ClientError::Unavailable(format!(
                "the copy of {path:?} broke off after {written} bytes: {e}"
            ))
        })?;
        let Some(chunk) = chunk else { break };
        sink.write_all(&chunk).map_err(failed)?;
        written += chunk.len() as u64;
    }
    if expected.is_some_and(|n| n != written) {
        return Err(ClientError::Unavailable(format!(
            "the copy of {path:?} broke off after {written} bytes"
        )));
    }
    sink.flush().map_err(failed)?;
    Ok(written)
}

/// `job cp -r`: the directory `path` of the job into `dest` (into `dest/<name>` when `dest` is an
/// existing directory), listing each directory and copying its regular files one by one.
async fn copy_tree(
    api: &ApiClient,
    id: &str,
    path: &str,
    args: &JobCpArgs,
) -> Result<(), CommandError> {
    if args.dest == Path::new("-") {
        return Err(ClientError::Usage("-r copies into a directory, not to stdout".into()).into());
    }
    let root = if args.dest.is_dir() {
        match Path::new(path).file_name() {
            Some(name) => args.dest.join(name),
            None => args.dest.clone(),
        }
    } else {
        args.dest.clone()
    };
    let failed = |at: &Path, e: std::io::Error| {
        ClientError::Failed(format!("creating {}: {e}", at.display()))
    };
    let mut pending = vec![(path.trim_end_matches('/').to_owned(), root, 0usize)];
    let (mut files, mut bytes, mut skipped) = (0usize, 0u64, 0usize);
    while let Some((remote, local, depth)) = pending.pop() {
        if depth > MAX_TREE_DEPTH {
            return Err(ClientError::Failed(format!(
                "{remote:?} is more than {MAX_TREE_DEPTH} directories deep"
            ))
            .into());
        }
        std::fs::create_dir_all(&local).map_err(|e| failed(&local, e))?;
        let query = url_query(&[("path", &remote), ("replica", &args.replica.to_string())]);
        let listing: JobDirView =
            get_as(api, &format!("/v1/jobs/{}/dir?{query}", segment(id))).await?;
        for entry in listing.entries {
            // Names come from the job: never one that could climb out of `local`.
            if entry.name.is_empty() || entry.name.contains('/') || entry.name == ".." {
                skipped += 1;
                continue;
            }
            let child = if remote.is_empty() || remote == "." {
                entry.name.clone()
            } else {
                format!("{remote}/{}", entry.name)
            };
            match entry.kind {
                JobFileKind::File => {
                    if files >= MAX_TREE_FILES {
                        return Err(ClientError::Failed(format!(
                            "stopped after {MAX_TREE_FILES} files"
                        ))
                        .into());
                    }
                    let target = local.join(&entry.name);
                    bytes += copy_file(api, id, &child, args.replica, Some(&target)).await?;
                    files += 1;
                }
                JobFileKind::Dir => pending.push((child, local.join(&entry.name), depth + 1)),
                JobFileKind::Link | JobFileKind::Other => {
                    output::note(&format!(
                        "left out {child:?}: a {} is not copied",
                        entry.kind.as_str()
                    ));
                    skipped += 1;
                }
            }
        }
    }
    let left_out = if skipped > 0 {
        format!(", {skipped} left out")
    } else {
        String::new()
    };
    output::note(&format!("copied {files} files ({bytes} bytes){left_out}"));
    Ok(())
}

/// Where the file goes: into `dest` under the file's own name when `dest` is a directory.
fn destination(dest: &Path, path: &str) -> PathBuf {
    if dest.is_dir() {
        let name = Path::new(path)
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_default();
        dest.join(name)
    } else {
        dest.to_path_buf()
    }
}

fn url_query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", segment(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A file written under a temporary name beside its destination and renamed into place when complete
/// (`finish` on flush at the end); removed if the copy fails.
struct PendingFile {
    file: std::fs::File,
    temporary: PathBuf,
    target: PathBuf,
    done: bool,
}

impl PendingFile {
    fn create(target: &Path, mode: u32) -> std::io::Result<PendingFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temporary = target.with_file_name(format!(".{name}.meridian-cp"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o777)
            .open(&temporary)?;
        Ok(PendingFile {
            file,
            temporary,
            target: target.to_path_buf(),
            done: false,
        })
    }
}

impl Write for PendingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }

    /// Completes the file: synced and renamed into place.
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.sync_all()?;
        std::fs::rename(&self.temporary, &self.target)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_destination_takes_the_files_name() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            destination(tmp.path(), "out/result.txt"),
            tmp.path().join("result.txt")
        );
        let file = tmp.path().join("copy.txt");
        assert_eq!(destination(&file, "out/result.txt"), file);
        assert_eq!(
            url_query(&[("path", "a b/c"), ("replica", "0")]),
            "path=a%20b%2Fc&replica=0"
        );
    }

    #[test]
    fn a_copy_that_breaks_off_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join("x");
        {
            let mut f = PendingFile::create(&target, 0o600).expect("create");
            f.write_all(b"partial").expect("write");
        }
        assert_eq!(std::fs::read_dir(tmp.path()).expect("ls").count(), 0);
        let mut f = PendingFile::create(&target, 0o640).expect("create");
        f.write_all(b"whole").expect("write");
        f.flush().expect("flush");
        drop(f);
        assert_eq!(std::fs::read(&target).expect("read"), b"whole");
    }
}
