//! Printing results: aligned tables for people, JSON for scripts.
//!
//! This is the only place in Meridian that writes command results to stdout.

use serde_json::Value;

use crate::cli::OutputFormat;

/// Writes one line to stdout. A reader that went away (`meridian job list | head`) ends the output quietly
/// instead of panicking.
fn emit(text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(text).and_then(|()| out.write_all(b"\n"));
}

/// Prints one object: JSON as is, or `key  value` lines.
pub fn object(format: OutputFormat, value: &Value) {
    match format {
        OutputFormat::Json => json(value),
        OutputFormat::Table => {
            if let Some(map) = value.as_object() {
                let width = map.keys().map(String::len).max().unwrap_or(0);
                for (k, v) in map {
                    emit(format_args!("{k:width$}  {}", cell(v)));
                }
            } else {
                emit(format_args!("{}", cell(value)));
            }
        }
    }
}

/// Prints a list: a JSON array, or a table with the given columns (JSON pointer paths without the slash).
pub fn list(format: OutputFormat, items: &[Value], columns: &[&str]) {
    match format {
        OutputFormat::Json => json(&Value::Array(items.to_vec())),
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|item| columns.iter().map(|c| cell(lookup(item, c))).collect())
                .collect();
            let headers: Vec<String> = columns
                .iter()
                .map(|c| c.replace('/', ".").to_uppercase())
                .collect();
            table(&headers, &rows);
        }
    }
}

/// Prints rows under headers with aligned columns.
pub fn table(headers: &[String], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(String::len).collect();
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
                s.push_str(&format!("{c:w$}  "));
            }
        }
        emit(format_args!("{}", s.trim_end()));
    };
    line(headers);
    for row in rows {
        line(row);
    }
}

/// Pretty JSON on stdout.
pub fn json(value: &Value) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => emit(format_args!("{s}")),
        Err(_) => emit(format_args!("{value}")),
    }
}

fn lookup<'a>(item: &'a Value, column: &str) -> &'a Value {
    item.pointer(&format!("/{column}")).unwrap_or(&Value::Null)
}

/// A JSON value as a table cell.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Prints `label  value` lines with the labels aligned (a single object for people).
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

/// Unix milliseconds as RFC 3339 (UTC), `-` for null.
pub fn time(v: &Value) -> String {
    v.as_u64()
        .map_or_else(|| "-".to_owned(), coordinator::api::format_rfc3339_ms)
}

/// A byte count for people (`512 MiB`), `-` for null or 0.
pub fn bytes(v: &Value) -> String {
    match v.as_u64() {
        None | Some(0) => "-".to_owned(),
        Some(b) => coordinator::api::format_bytes(b),
    }
}
