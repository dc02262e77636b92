//! Printing results: aligned tables and `key  value` lines for people, JSON for scripts.
//!
//! This is the only place in Meridian that writes command results to stdout. Tables never show raw JSON
//! or Unix milliseconds: times read as an age (`5s`, `3m`, `2h`, `4d`) or as RFC 3339. JSON output carries
//! every time as an RFC 3339 string too ([`readable_times`]); the field names stay the API's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use crate::cli::OutputFormat;

/// Set once a write to stdout failed (its reader went away): `--watch` stops drawing.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes one line to stdout. A reader that went away (`meridian job list | head`) ends the output quietly
/// instead of panicking.
fn emit(text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if out
        .write_fmt(text)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .is_err()
    {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Whether stdout's reader went away.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// Whether stdout is a terminal (a person watching) rather than a pipe or a file.
pub fn stdout_is_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdout())
}

/// Starts one frame of `--watch`: on a terminal, clears the screen and says what is shown and when; else a
/// blank line between two frames.
pub fn watch_frame(first: bool, title: &str) {
    if stdout_is_terminal() {
        // Cursor home, clear the screen.
        emit(format_args!(
            "\u{1b}[H\u{1b}[2J{title}    {}    (Ctrl-C to stop)",
            time_ms(now_ms())
        ));
        emit(format_args!(""));
    } else if !first {
        emit(format_args!(""));
    }
}

/// One resource as a row of a table: its columns from typed fields.
pub trait Row {
    /// The column headers, in the order of [`Row::row`].
    const HEADERS: &'static [&'static str];
    /// The cells; `now_ms` for ages.
    fn row(&self, now_ms: u64) -> Vec<String>;
}

/// One resource as `key  value` lines.
pub trait Fields {
    /// Labels and values, in order; `now_ms` for ages.
    fn fields(&self, now_ms: u64) -> Vec<(&'static str, String)>;
}

/// Prints a list: a JSON array (times as RFC 3339), or a table with one row per item.
pub fn rows<T: Row + Serialize>(format: OutputFormat, items: &[T]) {
    match format {
        OutputFormat::Json => json_of(&items),
        OutputFormat::Table => {
            let now = now_ms();
            let rows: Vec<Vec<String>> = items.iter().map(|item| item.row(now)).collect();
            table(T::HEADERS, &rows);
        }
    }
}

/// Prints one resource: JSON (times as RFC 3339), or `key  value` lines.
pub fn show<T: Fields + Serialize>(format: OutputFormat, item: &T) {
    match format {
        OutputFormat::Json => json_of(item),
        OutputFormat::Table => fields(&item.fields(now_ms())),
    }
}

/// Prints one object that is not an API resource (a certificate, this machine's inventory): JSON, or
/// `key  value` lines with nested objects flattened to `outer.inner` labels.
pub fn object(format: OutputFormat, value: &Value) {
    match format {
        OutputFormat::Json => json(value),
        OutputFormat::Table => {
            let mut lines = Vec::new();
            flatten("", value, &mut lines);
            let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            for (k, v) in lines {
                if k.is_empty() {
                    emit(format_args!("{v}"));
                } else {
                    emit(format_args!("{k:width$}  {v}"));
                }
            }
        }
    }
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let label = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&label, v, out);
            }
        }
        other => out.push((prefix.to_owned(), cell(other))),
    }
}

/// Prints rows under headers with aligned columns.
pub fn table<H: AsRef<str>>(headers: &[H], rows: &[Vec<String>]) {
    let headers: Vec<String> = headers.iter().map(|h| h.as_ref().to_owned()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                // Pad by characters, not bytes (`×`, names in other scripts).
                s.push_str(c);
                let pad = w.saturating_sub(c.chars().count()) + 2;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        emit(format_args!("{}", s.trim_end()));
    };
    line(&headers);
    for row in rows {
        line(row);
    }
}

/// Pretty JSON on stdout, times as RFC 3339 ([`readable_times`]).
pub fn json(value: &Value) {
    let value = readable_times(value.clone());
    match serde_json::to_string_pretty(&value) {
        Ok(s) => emit(format_args!("{s}")),
        Err(_) => emit(format_args!("{value}")),
    }
}

/// A typed value as pretty JSON on stdout, times as RFC 3339.
pub fn json_of<T: Serialize + ?Sized>(value: &T) {
    match serde_json::to_value(value) {
        Ok(v) => json(&v),
        // Only a map with non-string keys fails here; the API's types have none.
        Err(e) => note(&format!("error: encoding the answer as JSON: {e}")),
    }
}

/// Whether a field holds a time in Unix milliseconds: `*_at` (`created_at`, `expires_at`, ...), an audit
/// record's `at_ms`, a usage report's `since` and `until`.
fn is_time_field(name: &str) -> bool {
    name.ends_with("_at") || matches!(name, "at_ms" | "since" | "until")
}

/// `value` with every time field ([`is_time_field`]) that holds a whole number written as RFC 3339 (UTC,
/// milliseconds), at any depth. Names and everything else are kept.
pub fn readable_times(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = match v.as_u64() {
                        Some(ms) if is_time_field(&k) => Value::String(time_ms(ms)),
                        _ => readable_times(v),
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(readable_times).collect()),
        other => other,
    }
}

/// A JSON value as a table cell; an object reads `k=v,...`, never as JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// Prints `label  value` lines with the labels aligned (a single object for people). An empty label
/// continues the line above (a second binding, a second role).
pub fn fields(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        emit(format_args!("{k:width$}  {v}"));
    }
}

/// Prints one line of result text.
pub fn line(text: &str) {
    emit(format_args!("{text}"));
}

/// Prints a note for people on stderr (progress, what happened), keeping stdout for results.
pub fn note(text: &str) {
    eprintln!("{text}");
}

/// Writes bytes to stdout as they are (a job's output) and flushes them.
pub fn raw(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

/// Now, in Unix milliseconds (0 for a clock before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Unix milliseconds as RFC 3339 (UTC).
pub fn time_ms(ms: u64) -> String {
    coordinator::api::format_rfc3339_ms(ms)
}

/// An optional time as RFC 3339, `-` for none.
pub fn opt_time(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".to_owned(), time_ms)
}

/// A span of milliseconds for people, in its largest whole unit: `5s`, `3m`, `2h`, `4d` (`0s` under a
/// second).
pub fn span(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3_599 => format!("{}m", secs / 60),
        3_600..=86_399 => format!("{}h", secs / 3_600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// How long ago `at` was, as [`span`]; `0s` for a time ahead of this machine's clock.
pub fn age(at: u64, now: u64) -> String {
    span(now.saturating_sub(at))
}

/// A time relative to now for people: `3h ago`, `in 89d`.
pub fn relative(at: u64, now: u64) -> String {
    if at <= now {
        format!("{} ago", span(now - at))
    } else {
        format!("in {}", span(at - now))
    }
}

/// A time as RFC 3339 followed by how long ago it was: `2026-11-02T10:00:00.000Z (3h ago)`.
pub fn time_and_age(at: u64, now: u64) -> String {
    format!("{} ({})", time_ms(at), relative(at, now))
}

/// A byte count for people (`512 MiB`), `-` for 0.
pub fn bytes(b: u64) -> String {
    if b == 0 {
        "-".to_owned()
    } else {
        coordinator::api::format_bytes(b)
    }
}

/// Text, `-` when empty.
pub fn text(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

/// Optional text, `-` when absent or empty.
pub fn opt_text(s: Option<&str>) -> String {
    s.map_or_else(|| "-".to_owned(), text)
}

/// Optional number, `-` when absent.
pub fn opt_num<N: std::fmt::Display>(n: Option<N>) -> String {
    n.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

/// A list, comma-separated; `-` when empty.
pub fn joined<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items
            .iter()
            .map(|s| s.as_ref())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The name an enum of the API is written as (`project-admin`, `service_account`, `ready`).
pub fn name_of<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        Ok(other) => cell(&other),
        Err(_) => "?".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn spans_read_in_their_largest_unit() {
        assert_eq!(span(0), "0s");
        assert_eq!(span(5_999), "5s");
        assert_eq!(span(59_999), "59s");
        assert_eq!(span(60_000), "1m");
        assert_eq!(span(3 * 60_000 + 59_000), "3m");
        assert_eq!(span(2 * 3_600_000 + 1), "2h");
        assert_eq!(span(4 * 86_400_000 + 3_600_000), "4d");
        let now = 1_700_000_000_000;
        assert_eq!(age(now - 5_000, now), "5s");
        assert_eq!(age(now + 5_000, now), "0s", "a clock ahead is not negative");
        assert_eq!(relative(now - 7_200_000, now), "2h ago");
        assert_eq!(relative(now + 89 * 86_400_000, now), "in 89d");
    }

    #[test]
    fn json_times_are_rfc3339_at_any_depth_and_names_stay() {
        let v = json!({
            "id": "job_1",
            "created_at": 1_700_000_000_000u64,
            "finished_at": null,
            "attempt_count": 1_700_000_000_000u64,
            "attempts": [{"started_at": 1_700_000_001_000u64, "exit_code": 0}],
            "key": {"expires_at": 1_700_000_002_000u64, "name": "ci"},
            "at_ms": 1_700_000_003_000u64,
            "since": 0,
            "format_at": "already text",
        });
        let out = readable_times(v);
        assert_eq!(out["created_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(out["finished_at"], Value::Null);
        assert_eq!(
            out["attempt_count"], 1_700_000_000_000u64,
            "only time fields"
        );
        assert_eq!(out["attempts"][0]["started_at"], "2023-11-14T22:13:21.000Z");
        assert_eq!(out["attempts"][0]["exit_code"], 0);
        assert_eq!(out["key"]["expires_at"], "2023-11-14T22:13:22.000Z");
        assert_eq!(out["at_ms"], "2023-11-14T22:13:23.000Z");
        assert_eq!(out["since"], "1970-01-01T00:00:00.000Z");
        assert_eq!(out["format_at"], "already text");
    }

    #[test]
    fn cells_never_show_json() {
        assert_eq!(cell(&json!({"a": 1, "b": [2, 3]})), "a=1,b=2,3");
        assert_eq!(cell(&Value::Null), "-");
        let mut lines = Vec::new();
        flatten(
            "",
            &json!({"serial": "ab", "validity": {"from": "x"}}),
            &mut lines,
        );
        assert_eq!(
            lines,
            [
                ("serial".to_owned(), "ab".to_owned()),
                ("validity.from".to_owned(), "x".to_owned())
            ]
        );
    }
}
