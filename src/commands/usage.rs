//! `meridian usage`: the project's reserved CPU-, memory- and GPU-seconds over a time range, in total, the
//! share of purged jobs (kept per hour), and per live job.
//!
//! Owns turning `--since`/`--until` into what the API accepts (a duration such as `7d` counts back from
//! now; RFC 3339 and Unix milliseconds pass through). Must never compute usage itself: the registry does.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::cli::{OutputFormat, UsageArgs};
use crate::client::{segment, ApiClient, ClientError};
use crate::output;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The API's form of a `--since`/`--until` value: a duration back from `now`, else the text as given.
fn instant(flag: &str, text: &str, now: u64) -> Result<String, ClientError> {
    let t = text.trim();
    let looks_like_duration = t
        .chars()
        .last()
        .is_some_and(|c| matches!(c, 's' | 'm' | 'h' | 'd'))
        && t.chars().next().is_some_and(|c| c.is_ascii_digit())
        && !t.contains('-')
        && !t.contains(':');
    if looks_like_duration {
        let secs = coordinator::api::parse_duration_secs(t)
            .map_err(|e| ClientError::Invalid(format!("{flag}: {e}")))?;
        return Ok(now.saturating_sub(secs.saturating_mul(1000)).to_string());
    }
    coordinator::api::parse_instant_ms(t)
        .map_err(|e| ClientError::Invalid(format!("{flag}: {e} (or a duration such as 7d)")))?;
    Ok(t.to_owned())
}

fn figure(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_f64)
        .map_or_else(|| "-".to_owned(), |x| format!("{x:.3}"))
}

pub async fn run(args: UsageArgs) -> Result<(), ClientError> {
    let now = now_ms();
    let mut query = Vec::new();
    if let Some(since) = &args.since {
        query.push(format!(
            "since={}",
            segment(&instant("--since", since, now)?)
        ));
    }
    if let Some(until) = &args.until {
        query.push(format!(
            "until={}",
            segment(&instant("--until", until, now)?)
        ));
    }
    let path = if query.is_empty() {
        "/v1/usage".to_owned()
    } else {
        format!("/v1/usage?{}", query.join("&"))
    };
    let api = ApiClient::from_args(&args.client)?;
    let report = api.get(&path).await?;
    if args.client.output == OutputFormat::Json {
        output::json(&report);
        return Ok(());
    }
    output::fields(&[
        (
            "project",
            output::cell(report.get("project_id").unwrap_or(&Value::Null)),
        ),
        (
            "since",
            output::time(report.get("since").unwrap_or(&Value::Null)),
        ),
        (
            "until",
            output::time(report.get("until").unwrap_or(&Value::Null)),
        ),
        ("cpu core-seconds", figure(&report, "cpu_core_seconds")),
        ("memory GiB-seconds", figure(&report, "memory_gib_seconds")),
        ("gpu-seconds", figure(&report, "gpu_seconds")),
        ("cpu time (s)", figure(&report, "cpu_time_seconds")),
    ]);
    // Purged jobs are only in the totals, kept per hour; show their share when there is one.
    let archived = report.get("archived").cloned().unwrap_or(Value::Null);
    let any_archived = [
        "cpu_core_seconds",
        "memory_gib_seconds",
        "gpu_seconds",
        "cpu_time_seconds",
    ]
    .iter()
    .any(|k| {
        archived
            .get(k)
            .and_then(Value::as_f64)
            .is_some_and(|x| x > 0.0)
    });
    if any_archived {
        output::line("");
        output::fields(&[
            (
                "purged jobs (per hour)",
                "included in the totals above".to_owned(),
            ),
            ("  cpu core-seconds", figure(&archived, "cpu_core_seconds")),
            (
                "  memory GiB-seconds",
                figure(&archived, "memory_gib_seconds"),
            ),
            ("  gpu-seconds", figure(&archived, "gpu_seconds")),
            ("  cpu time (s)", figure(&archived, "cpu_time_seconds")),
        ]);
    }
    let jobs = report
        .get("jobs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !jobs.is_empty() {
        output::line("");
        let headers: Vec<String> = [
            "JOB",
            "NAME",
            "CPU-CORE-S",
            "MEM-GIB-S",
            "GPU-S",
            "CPU-TIME-S",
        ]
        .iter()
        .map(|h| (*h).to_owned())
        .collect();
        let rows: Vec<Vec<String>> = jobs
            .iter()
            .map(|j| {
                vec![
                    output::cell(j.get("job_id").unwrap_or(&Value::Null)),
                    match j.get("name").and_then(Value::as_str) {
                        Some(n) if !n.is_empty() => n.to_owned(),
                        _ => "-".to_owned(),
                    },
                    figure(j, "cpu_core_seconds"),
                    figure(j, "memory_gib_seconds"),
                    figure(j, "gpu_seconds"),
                    figure(j, "cpu_time_seconds"),
                ]
            })
            .collect();
        output::table(&headers, &rows);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_count_back_from_now_and_times_pass_through() {
        let now = 1_700_000_000_000;
        assert_eq!(
            instant("--since", "2h", now).ok(),
            Some((now - 7_200_000).to_string())
        );
        assert_eq!(
            instant("--since", "7d", now).ok(),
            Some((now - 7 * 86_400_000).to_string())
        );
        assert_eq!(
            instant("--since", "2026-11-01T00:00:00Z", now)
                .ok()
                .as_deref(),
            Some("2026-11-01T00:00:00Z")
        );
        assert_eq!(
            instant("--until", "1700000000000", now).ok().as_deref(),
            Some("1700000000000")
        );
        for bad in ["yesterday", "2h ago", "2026-11-01"] {
            let e = instant("--since", bad, now).expect_err(bad);
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains("--since"), "{e}");
        }
    }
}
