//! Host facts: hostname, OS, kernel, architecture, logical CPUs, memory and disk space.
//!
//! Owns reading them from `/proc`, `/sys`, `/etc/os-release` and `statvfs`, with pure parsers for each text
//! format. It must never guess a figure it could not read (an unreadable `MemTotal` is an error, not zero)
//! and never look at GPUs.

use std::path::Path;

use super::sys;
use super::InventoryError;

/// What [`HostFacts::read`] found.
#[derive(Debug)]
pub(crate) struct HostFacts {
    pub(crate) hostname: String,
    pub(crate) os: String,
    pub(crate) kernel: String,
    pub(crate) arch: String,
    pub(crate) cpu_cores: u32,
    pub(crate) cpu_model: Option<String>,
    pub(crate) memory_bytes: u64,
    pub(crate) disk_total_bytes: u64,
    pub(crate) disk_free_bytes: u64,
}

impl HostFacts {
    /// Reads the facts of this machine; disk figures are those of the file system holding `data_dir`.
    pub(crate) fn read(data_dir: &Path) -> Result<HostFacts, InventoryError> {
        let read = |what: &'static str| {
            std::fs::read_to_string(what).map_err(|source| InventoryError::Host { what, source })
        };

        let hostname = read("/proc/sys/kernel/hostname")?.trim().to_string();
        let kernel = read("/proc/sys/kernel/osrelease")?.trim().to_string();
        let os = ["/etc/os-release", "/usr/lib/os-release"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| os_pretty_name(&text))
            .unwrap_or_else(|| std::env::consts::OS.to_string());
        let memory_bytes = mem_total_bytes(&read("/proc/meminfo")?).ok_or_else(|| {
            InventoryError::HostFormat("/proc/meminfo has no readable MemTotal".into())
        })?;
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_cores = std::fs::read_to_string("/sys/devices/system/cpu/online")
            .ok()
            .and_then(|text| count_cpu_list(&text))
            .or_else(|| Some(cpuinfo_processors(&cpuinfo)).filter(|n| *n > 0))
            .or_else(|| {
                std::thread::available_parallelism()
                    .ok()
                    .and_then(|n| u32::try_from(n.get()).ok())
            })
            .ok_or_else(|| InventoryError::HostFormat("cannot count the node's CPUs".into()))?;
        let disk = sys::disk_space(data_dir).map_err(|source| InventoryError::Disk {
            path: data_dir.into(),
            source,
        })?;
        Ok(HostFacts {
            hostname,
            os,
            kernel,
            arch: std::env::consts::ARCH.to_string(),
            cpu_cores,
            cpu_model: cpu_model(&cpuinfo),
            memory_bytes,
            disk_total_bytes: disk.total_bytes,
            disk_free_bytes: disk.available_bytes,
        })
    }
}

/// `PRETTY_NAME` of an os-release file (falling back to `NAME`), unquoted.
pub(crate) fn os_pretty_name(text: &str) -> Option<String> {
    let value = |key: &str| {
        text.lines().find_map(|line| {
            let (k, v) = line.trim().split_once('=')?;
            (k.trim() == key)
                .then(|| unquote(v.trim()))
                .filter(|v| !v.is_empty())
        })
    };
    value("PRETTY_NAME").or_else(|| value("NAME"))
}

/// Removes one level of shell quoting as os-release uses it (`"…"` or `'…'`, with `\` escapes in `"…"`).
fn unquote(v: &str) -> String {
    if let Some(inner) = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            } else {
                out.push(c);
            }
        }
        out
    } else if let Some(inner) = v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        inner.to_string()
    } else {
        v.to_string()
    }
}

/// `MemTotal` of `/proc/meminfo` in bytes.
pub(crate) fn mem_total_bytes(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line["MemTotal:".len()..].split_whitespace();
    let amount: u64 = parts.next()?.parse().ok()?;
    let factor = match parts.next() {
        Some("kB") | Some("KB") | Some("kb") => 1024,
        None => 1,
        Some(_) => return None,
    };
    amount.checked_mul(factor)
}

/// Number of CPUs in a kernel CPU list such as `0-3,8-11,16` (`/sys/devices/system/cpu/online`).
pub(crate) fn count_cpu_list(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut count: u32 = 0;
    for part in text.split(',') {
        let n = match part.trim().split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi): (u32, u32) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
                hi.checked_sub(lo)?.checked_add(1)?
            }
            None => {
                part.trim().parse::<u32>().ok()?;
                1
            }
        };
        count = count.checked_add(n)?;
    }
    Some(count)
}

/// Number of `processor` entries in `/proc/cpuinfo`.
fn cpuinfo_processors(text: &str) -> u32 {
    let n = text
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// First `model name` in `/proc/cpuinfo`.
fn cpu_model(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name")
            .then(|| v.trim().to_string())
            .filter(|v| !v.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_pretty_name() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n";
        assert_eq!(
            os_pretty_name(debian).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(os_pretty_name("NAME=Alpine\n").as_deref(), Some("Alpine"));
        assert_eq!(
            os_pretty_name("NAME='Arch Linux'\nPRETTY_NAME=\"\"\n").as_deref(),
            Some("Arch Linux")
        );
        assert_eq!(
            os_pretty_name("PRETTY_NAME=\"say \\\"hi\\\"\"").as_deref(),
            Some("say \"hi\"")
        );
        assert_eq!(os_pretty_name("# comment\nID=x\n"), None);
        assert_eq!(
            os_pretty_name("PRETTY_NAME=\"unterminated"),
            Some("\"unterminated".to_string())
        );
    }

    #[test]
    fn meminfo_total() {
        assert_eq!(
            mem_total_bytes("MemTotal:       16303432 kB\nMemFree: 1 kB\n"),
            Some(16303432 * 1024)
        );
        assert_eq!(mem_total_bytes("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total_bytes("MemTotal: lots kB\n"), None);
        assert_eq!(mem_total_bytes("MemTotal: 5 GB\n"), None);
        assert_eq!(mem_total_bytes("MemTotal: 18446744073709551615 kB\n"), None);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-3,8-11,16"), Some(9));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("a-b"), None);
        assert_eq!(count_cpu_list("0-4294967295"), None);
    }

    #[test]
    fn cpuinfo_fields() {
        let text = "processor\t: 0\nmodel name\t: AMD EPYC 9654\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 9654\n";
        assert_eq!(cpuinfo_processors(text), 2);
        assert_eq!(cpu_model(text).as_deref(), Some("AMD EPYC 9654"));
        assert_eq!(cpu_model("processor: 0\n"), None);
    }

    #[test]
    fn reads_this_machine() -> Result<(), InventoryError> {
        let dir = std::env::temp_dir();
        let facts = HostFacts::read(&dir)?;
        assert!(facts.cpu_cores >= 1);
        assert!(facts.memory_bytes > 0);
        assert!(facts.disk_total_bytes >= facts.disk_free_bytes && facts.disk_total_bytes > 0);
        assert!(!facts.hostname.is_empty() && !facts.kernel.is_empty() && !facts.os.is_empty());
        Ok(())
    }
}
