//! `meridian usage`: the project's reserved CPU-, memory- and GPU-seconds over a time range, in total, the
//! share of purged jobs (kept per hour), and per live job.
//!
//! Owns turning `--since`/`--until` into what the API accepts (a duration such as `7d` counts back from
//! now; RFC 3339 and Unix milliseconds pass through). Must never compute usage itself: the registry does.

use coordinator::api::dto::UsageReport;
use coordinator::state::UsageFigures;

use super::get_as;
use crate::cli::{OutputFormat, UsageArgs};
use crate::client::{segment, ApiClient, ClientError};
use crate::output;

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

fn figure(x: f64) -> String {
    format!("{x:.3}")
}

/// The four figures of a report (or of its purged share), labelled, indented by `indent`.
fn figure_lines(f: &UsageFigures, indent: bool) -> Vec<(&'static str, String)> {
    let label = |plain: &'static str, indented: &'static str| if indent { indented } else { plain };
    vec![
        (
            label("cpu core-seconds", "  cpu core-seconds"),
            figure(f.cpu_core_seconds),
        ),
        (
            label("memory GiB-seconds", "  memory GiB-seconds"),
            figure(f.memory_gib_seconds),
        ),
        (label("gpu-seconds", "  gpu-seconds"), figure(f.gpu_seconds)),
        (
            label("cpu time (s)", "  cpu time (s)"),
            figure(f.cpu_time_seconds),
        ),
    ]
}

pub async fn run(args: UsageArgs) -> Result<(), ClientError> {
    let now = output::now_ms();
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
    let report: UsageReport = get_as(&api, &path).await?;
    if args.client.output == OutputFormat::Json {
        output::json_of(&report);
        return Ok(());
    }
    let totals = UsageFigures {
        cpu_core_seconds: report.cpu_core_seconds,
        memory_gib_seconds: report.memory_gib_seconds,
        gpu_seconds: report.gpu_seconds,
        cpu_time_seconds: report.cpu_time_seconds,
    };
    let mut lines = vec![
        ("project", report.project_id.clone()),
        ("since", output::time_ms(report.since)),
        ("until", output::time_ms(report.until)),
    ];
    lines.extend(figure_lines(&totals, false));
    output::fields(&lines);
    // Purged jobs are only in the totals, kept per hour; show their share when there is one.
    let a = &report.archived;
    let any_archived = [
        a.cpu_core_seconds,
        a.memory_gib_seconds,
        a.gpu_seconds,
        a.cpu_time_seconds,
    ]
    .iter()
    .any(|x| *x > 0.0);
    if any_archived {
        output::line("");
        let mut lines = vec![(
            "purged jobs (per hour)",
            "included in the totals above".to_owned(),
        )];
        lines.extend(figure_lines(a, true));
        output::fields(&lines);
    }
    if !report.jobs.is_empty() {
        output::line("");
        let rows: Vec<Vec<String>> = report
            .jobs
            .iter()
            .map(|j| {
                vec![
                    j.job_id.clone(),
                    output::text(&j.name),
                    figure(j.cpu_core_seconds),
                    figure(j.memory_gib_seconds),
                    figure(j.gpu_seconds),
                    figure(j.cpu_time_seconds),
                ]
            })
            .collect();
        output::table(
            &[
                "JOB",
                "NAME",
                "CPU-CORE-S",
                "MEM-GIB-S",
                "GPU-S",
                "CPU-TIME-S",
            ],
            &rows,
        );
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
