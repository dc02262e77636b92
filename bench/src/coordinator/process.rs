//! Crashing processes the harness did not necessarily spawn itself, the same way for both systems.
//!
//! Sends SIGKILL through `kill(1)` to a pid the caller vouches for; it never signals process groups or names,
//! and never a pid whose command line does not carry the marker the caller expects.

use std::time::Instant;

use anyhow::{bail, Context};

/// The command line of `pid` with NULs turned into spaces, or `None` when there is no such live process.
pub(crate) fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        // A zombie: it is dead already.
        return None;
    }
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// SIGKILLs `pid` after checking that its command line contains `marker` (so a reused pid is left alone).
/// Returns the instant right after the signal was sent.
pub(crate) async fn sigkill(pid: u32, marker: &str) -> anyhow::Result<Instant> {
    match cmdline(pid) {
        Some(line) if line.contains(marker) => {}
        Some(line) => bail!("pid {pid} is not the expected process (its command line is {line:?})"),
        None => bail!("pid {pid} is not running"),
    }
    let status = tokio::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .await
        .context("running kill")?;
    let sent = Instant::now();
    if !status.success() {
        bail!("kill -KILL {pid} failed with {status}");
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sigkill_refuses_a_pid_without_the_marker_and_kills_one_with_it() {
        let mut child = tokio::process::Command::new("sleep")
            .arg("30")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        // Until the child has exec'd, /proc shows the parent's command line (or none at all).
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while !cmdline(pid).is_some_and(|line| line.contains("sleep 30")) {
            assert!(
                Instant::now() < deadline,
                "the child never showed its command line"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(sigkill(pid, "--not-there").await.is_err());
        assert!(
            cmdline(pid).is_some(),
            "a refused kill must leave the process alone"
        );
        sigkill(pid, "sleep 30").await.unwrap();
        let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
            .await
            .unwrap()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
    }
}
