//! `meridian-bench exec`: getting into a running job, against the floor of doing the same on this machine
//! directly — in one process tree.
//!
//! - **A command's round trip**: `POST /v1/jobs/{id}:exec` running `true` in the job (authentication, the
//!   `job.exec` audit record committed through Raft, the mesh call to the agent, entering the job's
//!   namespaces, cgroups and user, the answer back), against spawning `true` here directly (and, as root,
//!   with `nsenter` into the job's namespaces): what the control path adds to the work itself.
//! - **A key's echo**: one byte typed into a `job exec -it` session (`GET /v1/jobs/{id}:attach`, the
//!   WebSocket frames written here from the documented wire format) until its echo comes back, against the
//!   same echo through a pseudo-terminal opened here (the kernel's line discipline alone).
//!
//! Starts its own `meridian dev` (port 0, a temporary directory; as root with the job sandbox) and stops it
//! when done, on error and on panic alike. Never binds anything but 127.0.0.1.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::coordinator::meridian::find_binary;
use crate::coordinator::stats::{percentiles, Percentiles};

/// The most keys one measurement types: they all stay on one line of the terminal (a canonical-mode line
/// holds 4095 characters).
pub(crate) const MAX_KEYS: usize = 4000;

/// Options of `meridian-bench exec`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ExecArgs {
    /// Commands run in the job (and here) per measurement.
    #[arg(long, default_value_t = 200)]
    pub(crate) commands: usize,
    /// Keys echoed per measurement (at most 4000).
    #[arg(long, default_value_t = 1000)]
    pub(crate) keys: usize,
    /// Print the report as JSON instead of Markdown.
    #[arg(long)]
    pub(crate) json: bool,
    /// The `meridian` binary (default: $MERIDIAN_BIN, next to this binary, target/release, target/debug,
    /// PATH).
    #[arg(long)]
    pub(crate) meridian_bin: Option<PathBuf>,
}

/// One measurement: Meridian's latencies and the floor's.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Pair {
    pub(crate) what: String,
    pub(crate) meridian: Percentiles,
    pub(crate) floor_name: String,
    pub(crate) floor: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ExecReport {
    pub(crate) command_line: String,
    pub(crate) sandboxed: bool,
    pub(crate) pairs: Vec<Pair>,
}

impl ExecReport {
    pub(crate) fn markdown(&self) -> String {
        let mut out = format!(
            "- command: `{}`\n- jobs {}\n\n| measurement | Meridian p50 / p90 / p99 (ms) | floor | floor p50 / p90 / p99 (ms) | p50 ratio |\n|---|---:|---|---:|---:|\n",
            self.command_line,
            if self.sandboxed {
                "sandboxed (root)"
            } else {
                "without the sandbox (not root)"
            }
        );
        for p in &self.pairs {
            let ratio = if p.floor.p50_ms > 0.0 {
                format!("{:.1}x", p.meridian.p50_ms / p.floor.p50_ms)
            } else {
                "-".to_owned()
            };
            out.push_str(&format!(
                "| {} | {:.3} / {:.3} / {:.3} | {} | {:.3} / {:.3} / {:.3} | {ratio} |\n",
                p.what,
                p.meridian.p50_ms,
                p.meridian.p90_ms,
                p.meridian.p99_ms,
                p.floor_name,
                p.floor.p50_ms,
                p.floor.p90_ms,
                p.floor.p99_ms,
            ));
        }
        out
    }
}

/// `meridian dev` in a temporary directory, killed when dropped.
struct Dev {
    child: tokio::process::Child,
    admin: String,
    token: String,
    _dir: tempfile::TempDir,
}

impl Dev {
    async fn start(binary: &Path, sandboxed: bool) -> anyhow::Result<Dev> {
        let dir = tempfile::tempdir().context("a temporary directory")?;
        let data = dir.path().join("dev");
        let mut command = tokio::process::Command::new(binary);
        command
            .arg("dev")
            .arg("--data-dir")
            .arg(&data)
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--raft-listen", "127.0.0.1:0"])
            .args(["--gateway-listen", "127.0.0.1:0"])
            .env("MERIDIAN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if !sandboxed {
            command.arg("--insecure-no-sandbox");
        }
        let child = command.spawn().context("starting meridian dev")?;
        let endpoints = data.join("endpoints.json");
        let until = Instant::now() + Duration::from_secs(60);
        let admin = loop {
            let found = std::fs::read_to_string(&endpoints)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["admin"].as_str().map(str::to_owned));
            if let Some(url) = found {
                break url;
            }
            if Instant::now() > until {
                bail!("meridian dev never named its endpoints");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let token = std::fs::read_to_string(data.join("admin.token"))
            .context("reading the admin token")?
            .trim()
            .to_owned();
        Ok(Dev {
            child,
            admin,
            token,
            _dir: dir,
        })
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Runs the measurements.
pub(crate) async fn run(args: ExecArgs, command_line: String) -> anyhow::Result<ExecReport> {
    let workspace = std::env::current_dir().context("the current directory")?;
    let binary = find_binary(args.meridian_bin.as_deref(), &workspace)
        .context("no meridian binary found; pass --meridian-bin")?;
    let sandboxed = is_root();
    // reqwest is built without a default TLS provider; this benchmark speaks plain HTTP on loopback, but
    // the client wants one chosen all the same. (Already installed is fine.)
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dev = Dev::start(&binary, sandboxed).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("an HTTP client")?;
    let job = running_job(&http, &dev).await?;
    let init = job_process(Duration::from_secs(30)).await?;

    let mut pairs = Vec::new();
    // A command's round trip.
    let exec_path = format!("{}/v1/jobs/{job}:exec", dev.admin);
    let mut meridian = Vec::with_capacity(args.commands);
    for _ in 0..args.commands {
        let started = Instant::now();
        let answer: Value = http
            .post(&exec_path)
            .bearer_auth(&dev.token)
            .json(&json!({ "command": ["true"] }))
            .send()
            .await
            .context("job exec")?
            .json()
            .await
            .context("job exec's answer")?;
        meridian.push(started.elapsed());
        if answer["exit_code"] != 0 {
            bail!("job exec did not run `true`: {answer}");
        }
    }
    let mut spawned = Vec::with_capacity(args.commands);
    for _ in 0..args.commands {
        let started = Instant::now();
        let status = floor_command(sandboxed, init).await?;
        spawned.push(started.elapsed());
        if !status.success() {
            bail!("the floor's command failed: {status}");
        }
    }
    pairs.push(Pair {
        what: "a command's round trip (`job exec -- true`)".to_owned(),
        meridian: percentiles(&mut meridian).context("no samples")?,
        floor_name: if sandboxed {
            "`nsenter` into the job's namespaces, `true`".to_owned()
        } else {
            "spawning `true` here".to_owned()
        },
        floor: percentiles(&mut spawned).context("no samples")?,
    });

    // A key's echo.
    let mut echoes = session_echoes(&dev, &job, args.keys).await?;
    let mut local = local_echoes(args.keys)?;
    pairs.push(Pair {
        what: "a key's echo (`job exec -it`)".to_owned(),
        meridian: percentiles(&mut echoes).context("no samples")?,
        floor_name: "a pseudo-terminal here".to_owned(),
        floor: percentiles(&mut local).context("no samples")?,
    });
    Ok(ExecReport {
        command_line,
        sandboxed,
        pairs,
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Submits a job that sleeps and waits until it runs; its id.
async fn running_job(http: &reqwest::Client, dev: &Dev) -> anyhow::Result<String> {
    let until = Instant::now() + Duration::from_secs(60);
    let job: Value = loop {
        let answer = http
            .post(format!("{}/v1/jobs", dev.admin))
            .bearer_auth(&dev.token)
            .json(&json!({ "command": "sleep", "args": ["3617"] }))
            .send()
            .await;
        match answer {
            Ok(resp) if resp.status().is_success() => break resp.json().await?,
            _ if Instant::now() < until => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(resp) => bail!("submitting the job: {}", resp.text().await?),
            Err(e) => bail!("submitting the job: {e}"),
        }
    };
    let id = job["id"].as_str().context("a job id")?.to_owned();
    loop {
        let job: Value = http
            .get(format!("{}/v1/jobs/{id}", dev.admin))
            .bearer_auth(&dev.token)
            .send()
            .await?
            .json()
            .await?;
        if job["state"] == "running" {
            return Ok(id);
        }
        if Instant::now() > until {
            bail!("the job never ran: {job}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The job's `sleep 3617` process, found by its command line.
async fn job_process(limit: Duration) -> anyhow::Result<u32> {
    let until = Instant::now() + limit;
    loop {
        let found = std::fs::read_dir("/proc")?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c == b"sleep\x003617\x00")
            });
        if let Some(pid) = found {
            return Ok(pid);
        }
        if Instant::now() > until {
            bail!("the job's process never appeared");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The floor of a command run in the job: `true` in its namespaces through `nsenter` (root), or spawned
/// here.
async fn floor_command(sandboxed: bool, init: u32) -> anyhow::Result<std::process::ExitStatus> {
    let mut command = if sandboxed {
        let mut c = tokio::process::Command::new("nsenter");
        c.args([
            "--target",
            &init.to_string(),
            "--mount",
            "--pid",
            "--ipc",
            "--uts",
            "--net",
            "true",
        ]);
        c
    } else {
        tokio::process::Command::new("true")
    };
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .context("the floor's command")
}

/// Opens a session on `cat` in the job and times `keys` single bytes until each one's echo.
async fn session_echoes(dev: &Dev, job: &str, keys: usize) -> anyhow::Result<Vec<Duration>> {
    let host = dev.admin.trim_start_matches("http://");
    let url = format!("ws://{host}/v1/jobs/{job}:attach?command=cat");
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {}", dev.token).parse()?);
    let tcp = tokio::net::TcpStream::connect(host).await?;
    tcp.set_nodelay(true)?;
    let (mut socket, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .context("opening the session")?;
    let mut samples = Vec::with_capacity(keys);
    for n in 0..keys {
        let key = b'a' + (n % 26) as u8;
        let started = Instant::now();
        socket.send(Message::Binary(vec![0x00, key].into())).await?;
        // Output frames are 0x10 followed by what the terminal showed.
        'echo: loop {
            let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .context("no echo within 10 s")?
                .context("the session ended")??;
            if let Message::Binary(frame) = message {
                match frame.split_first() {
                    Some((0x10, shown)) if shown.contains(&key) => break 'echo,
                    Some((0x10, _)) => {}
                    _ => bail!("the session ended: {frame:?}"),
                }
            }
        }
        samples.push(started.elapsed());
    }
    let _ = socket.close(None).await;
    Ok(samples)
}

/// Times `keys` single bytes written to a pseudo-terminal's master until the line discipline echoes each.
fn local_echoes(keys: usize) -> anyhow::Result<Vec<Duration>> {
    // SAFETY: posix_openpt takes flags only; the descriptor is owned by the OwnedFd from here on.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if master < 0 {
        bail!("posix_openpt: {}", std::io::Error::last_os_error());
    }
    // SAFETY: just created and owned by nothing else.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: grantpt/unlockpt take our descriptor; ptsname_r writes at most `name.len()` bytes into it.
    unsafe {
        if libc::grantpt(master.as_raw_fd()) != 0
            || libc::unlockpt(master.as_raw_fd()) != 0
            || libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) != 0
        {
            bail!(
                "preparing the pseudo-terminal: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    // SAFETY: `name` is NUL-terminated by ptsname_r's success.
    let slave = unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        bail!(
            "opening the pseudo-terminal: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: just opened and owned by nothing else; kept open so the terminal stays up (and echoes).
    let _slave = unsafe { OwnedFd::from_raw_fd(slave) };
    let mut samples = Vec::with_capacity(keys);
    let mut buf = [0u8; 64];
    for n in 0..keys {
        let key = b'a' + (n % 26) as u8;
        let started = Instant::now();
        // SAFETY: write one byte from a live buffer to our descriptor.
        if unsafe { libc::write(master.as_raw_fd(), [key].as_ptr().cast(), 1) } != 1 {
            bail!("typing: {}", std::io::Error::last_os_error());
        }
        loop {
            // SAFETY: read into a buffer of the length given.
            let got = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if got <= 0 {
                bail!("reading the echo: {}", std::io::Error::last_os_error());
            }
            if buf[..got as usize].contains(&key) {
                break;
            }
        }
        samples.push(started.elapsed());
    }
    Ok(samples)
}
