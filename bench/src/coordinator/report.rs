//! The benchmark's result document: what ran, on which machine, what each system measured, and the
//! Meridian/etcd ratios, rendered as Markdown for people or serialized as JSON for scripts.
//!
//! Rendering is pure (no clock, no I/O); [`Machine::probe`] and [`utc_now`] are the only readers of the
//! environment here. A system that was skipped or failed is shown with its reason, never silently left out.

use std::fmt::Write as _;

use serde::Serialize;

use super::failover::FailoverResult;
use super::load::LevelResult;

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) date_utc: String,
    pub(crate) command: String,
    pub(crate) machine: Machine,
    pub(crate) settings: Settings,
    pub(crate) systems: Vec<SystemReport>,
}

/// The machine the numbers come from.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) memory_mib: Option<u64>,
    pub(crate) cpu_model: Option<String>,
}

impl Machine {
    pub(crate) fn probe() -> Self {
        let nproc = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_mib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib / 1024);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string());
        Machine {
            nproc,
            memory_mib,
            cpu_model,
        }
    }
}

/// How the run was configured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Settings {
    pub(crate) clients: Vec<usize>,
    pub(crate) warmup_seconds: f64,
    pub(crate) seconds: f64,
    pub(crate) failover_rounds: usize,
    pub(crate) probe_interval_ms: f64,
    pub(crate) routing: String,
    pub(crate) transport: String,
    pub(crate) meridian_version: Option<String>,
    pub(crate) etcd_version: Option<String>,
}

/// One system's results.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SystemReport {
    pub(crate) name: String,
    /// Why nothing was measured, when nothing was.
    pub(crate) skipped: Option<String>,
    /// Failures of individual phases (the rest of the report still stands).
    pub(crate) errors: Vec<String>,
    pub(crate) levels: Vec<LevelResult>,
    pub(crate) failover: Option<FailoverResult>,
}

impl SystemReport {
    pub(crate) fn new(name: &str) -> Self {
        SystemReport {
            name: name.to_string(),
            skipped: None,
            errors: Vec::new(),
            levels: Vec::new(),
            failover: None,
        }
    }

    fn level(&self, clients: usize) -> Option<&LevelResult> {
        self.levels.iter().find(|l| l.clients == clients)
    }
}

/// `a / b` as "1.23×", or "–" when either side is missing or `b` is zero.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".to_string(),
    }
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map(|v| format!("{v:.decimals$}"))
        .unwrap_or_else(|| "–".to_string())
}

impl Report {
    fn system(&self, name: &str) -> Option<&SystemReport> {
        self.systems.iter().find(|s| s.name == name)
    }

    /// The Markdown tables.
    pub(crate) fn markdown(&self) -> String {
        let mut out = String::new();
        let s = &self.settings;
        let m = &self.machine;
        let _ = writeln!(
            out,
            "## Coordinator writes and leader failover: Meridian vs etcd 3.4\n"
        );
        let _ = writeln!(out, "- date (UTC): {}", self.date_utc);
        let _ = writeln!(out, "- command: `{}`", self.command);
        let _ = writeln!(
            out,
            "- machine: nproc {}, memory {} MiB, CPU {}",
            m.nproc,
            m.memory_mib
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into()),
            m.cpu_model.as_deref().unwrap_or("?")
        );
        let _ = writeln!(
            out,
            "- versions: {}; {}",
            s.meridian_version.as_deref().unwrap_or("meridian: unknown"),
            s.etcd_version.as_deref().unwrap_or("etcd: unknown")
        );
        let _ = writeln!(out, "- routing: {}; transport: {}", s.routing, s.transport);
        for sys in &self.systems {
            if let Some(reason) = &sys.skipped {
                let _ = writeln!(out, "- **{} skipped**: {reason}", sys.name);
            }
            for e in &sys.errors {
                let _ = writeln!(out, "- **{} error**: {e}", sys.name);
            }
        }
        let _ = writeln!(
            out,
            "\n### Write throughput and latency ({} s warm-up, {} s measured per level)\n",
            s.warmup_seconds, s.seconds
        );
        let _ = writeln!(
            out,
            "| clients | system | writes/s | p50 ms | p90 ms | p99 ms | max ms | errors |"
        );
        let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|");
        let meridian = self.system("Meridian");
        let etcd = self.system("etcd");
        for &clients in &s.clients {
            for sys in &self.systems {
                let Some(l) = sys.level(clients) else {
                    continue;
                };
                let p = l.latency;
                let _ = writeln!(
                    out,
                    "| {clients} | {} | {:.1} | {} | {} | {} | {} | {} |",
                    sys.name,
                    l.writes_per_sec,
                    num(p.map(|p| p.p50_ms), 2),
                    num(p.map(|p| p.p90_ms), 2),
                    num(p.map(|p| p.p99_ms), 2),
                    num(p.map(|p| p.max_ms), 2),
                    l.errors
                );
            }
            let (Some(a), Some(b)) = (
                meridian.and_then(|x| x.level(clients)),
                etcd.and_then(|x| x.level(clients)),
            ) else {
                continue;
            };
            let (pa, pb) = (a.latency, b.latency);
            let _ = writeln!(
                out,
                "| {clients} | **Meridian/etcd** | {} | {} | {} | {} | {} | |",
                ratio(Some(a.writes_per_sec), Some(b.writes_per_sec)),
                ratio(pa.map(|p| p.p50_ms), pb.map(|p| p.p50_ms)),
                ratio(pa.map(|p| p.p90_ms), pb.map(|p| p.p90_ms)),
                ratio(pa.map(|p| p.p99_ms), pb.map(|p| p.p99_ms)),
                ratio(pa.map(|p| p.max_ms), pb.map(|p| p.max_ms)),
            );
        }
        let _ = writeln!(
            out,
            "\nwrites/s ratio above 1 and latency ratios below 1 favour Meridian."
        );
        let _ = writeln!(
            out,
            "\n### Leader failover (SIGKILL the leader under write load, {} rounds, probe every {} ms)\n",
            s.failover_rounds, s.probe_interval_ms
        );
        let _ = writeln!(
            out,
            "| system | rounds | min ms | median ms | max ms | acknowledged writes | acknowledged writes lost \
             | restarted member caught up, median s |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for sys in &self.systems {
            let Some(f) = &sys.failover else { continue };
            let r = f.recovery;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                sys.name,
                f.rounds.len(),
                num(r.map(|r| r.min_ms), 1),
                num(r.map(|r| r.median_ms), 1),
                num(r.map(|r| r.max_ms), 1),
                f.acknowledged_writes,
                f.lost_writes,
                num(f.catch_up.map(|c| c.median_ms / 1000.0), 1),
            );
        }
        let fa = meridian
            .and_then(|x| x.failover.as_ref())
            .and_then(|f| f.recovery);
        let fb = etcd
            .and_then(|x| x.failover.as_ref())
            .and_then(|f| f.recovery);
        if let (Some(a), Some(b)) = (fa, fb) {
            let _ = writeln!(
                out,
                "| **Meridian/etcd** | | {} | {} | {} | | | |",
                ratio(Some(a.min_ms), Some(b.min_ms)),
                ratio(Some(a.median_ms), Some(b.median_ms)),
                ratio(Some(a.max_ms), Some(b.max_ms)),
            );
        }
        let _ = writeln!(out);
        for sys in &self.systems {
            if let Some(f) = &sys.failover {
                let _ = write!(
                    out,
                    "{}: acknowledged writes lost: {}",
                    sys.name, f.lost_writes
                );
                if !f.lost_examples.is_empty() {
                    let _ = write!(out, " (e.g. {})", f.lost_examples.join(", "));
                }
                let _ = writeln!(out, "  ");
            }
        }
        let _ = writeln!(
            out,
            "\nFailover time: from the SIGKILL to the first acknowledgement of a write sent after it, by a surviving \
             member. Lower ratios favour Meridian."
        );
        out
    }
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

/// Formats seconds since the Unix epoch (civil-from-days, proleptic Gregorian calendar).
fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::super::stats::{Percentiles, Spread};
    use super::*;

    #[test]
    fn utc_dates_are_calendar_correct() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(format_utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    fn level(clients: usize, wps: f64, p50: f64) -> LevelResult {
        LevelResult {
            clients,
            seconds: 10.0,
            writes: (wps * 10.0) as u64,
            errors: 0,
            writes_per_sec: wps,
            latency: Some(Percentiles {
                p50_ms: p50,
                p90_ms: p50 * 2.0,
                p99_ms: p50 * 4.0,
                max_ms: p50 * 8.0,
            }),
            first_error: None,
        }
    }

    fn failover(median: f64, lost: usize) -> FailoverResult {
        FailoverResult {
            rounds: Vec::new(),
            recovery: Some(Spread {
                min_ms: median / 2.0,
                median_ms: median,
                max_ms: median * 2.0,
            }),
            catch_up: Some(Spread {
                min_ms: 1000.0,
                median_ms: 1500.0,
                max_ms: 2000.0,
            }),
            acknowledged_writes: 500,
            lost_writes: lost,
            lost_examples: (0..lost).map(|i| format!("k{i}")).collect(),
        }
    }

    fn report(systems: Vec<SystemReport>) -> Report {
        Report {
            date_utc: "2026-01-01T00:00:00Z".into(),
            command: "meridian-bench coordinator".into(),
            machine: Machine {
                nproc: 2,
                memory_mib: Some(2048),
                cpu_model: None,
            },
            settings: Settings {
                clients: vec![1, 16],
                warmup_seconds: 2.0,
                seconds: 10.0,
                failover_rounds: 5,
                probe_interval_ms: 10.0,
                routing: "round-robin".into(),
                transport: "https".into(),
                meridian_version: None,
                etcd_version: None,
            },
            systems,
        }
    }

    #[test]
    fn markdown_shows_both_sides_and_their_ratios() {
        let mut m = SystemReport::new("Meridian");
        m.levels = vec![level(1, 300.0, 3.0), level(16, 2000.0, 8.0)];
        m.failover = Some(failover(400.0, 0));
        let mut e = SystemReport::new("etcd");
        e.levels = vec![level(1, 200.0, 4.0), level(16, 1000.0, 16.0)];
        e.failover = Some(failover(1600.0, 2));
        let md = report(vec![m, e]).markdown();
        assert!(
            md.contains("| 1 | Meridian | 300.0 | 3.00 | 6.00 | 12.00 | 24.00 | 0 |"),
            "{md}"
        );
        assert!(
            md.contains("| 1 | **Meridian/etcd** | 1.50× | 0.75× | 0.75× | 0.75× | 0.75× | |"),
            "{md}"
        );
        assert!(
            md.contains("| 16 | **Meridian/etcd** | 2.00× | 0.50× |"),
            "{md}"
        );
        assert!(
            md.contains("| etcd | 0 | 800.0 | 1600.0 | 3200.0 | 500 | 2 | 1.5 |"),
            "{md}"
        );
        assert!(
            md.contains("| **Meridian/etcd** | | 0.25× | 0.25× | 0.25× | | | |"),
            "{md}"
        );
        assert!(md.contains("Meridian: acknowledged writes lost: 0"), "{md}");
        assert!(
            md.contains("etcd: acknowledged writes lost: 2 (e.g. k0, k1)"),
            "{md}"
        );
    }

    #[test]
    fn a_skipped_side_is_explained_and_gets_no_ratio() {
        let mut m = SystemReport::new("Meridian");
        m.levels = vec![level(1, 300.0, 3.0)];
        let mut e = SystemReport::new("etcd");
        e.skipped = Some("etcd is not installed".into());
        let md = report(vec![m, e]).markdown();
        assert!(
            md.contains("- **etcd skipped**: etcd is not installed"),
            "{md}"
        );
        assert!(!md.contains("**Meridian/etcd**"), "{md}");
    }

    #[test]
    fn ratios_of_missing_or_zero_values_are_dashes() {
        assert_eq!(ratio(Some(1.0), Some(0.0)), "–");
        assert_eq!(ratio(None, Some(1.0)), "–");
        assert_eq!(ratio(Some(3.0), Some(2.0)), "1.50×");
    }
}
