//! Printing results: aligned tables for people, JSON for scripts.
//!
//! This is the only place in Meridian that writes command results to stdout.

use serde_json::Value;

use crate::cli::OutputFormat;

/// Prints one object: JSON as is, or `key  value` lines.
pub fn object(format: OutputFormat, value: &Value) {
    match format {
        OutputFormat::Json => json(value),
        OutputFormat::Table => {
            if let Some(map) = value.as_object() {
                let width = map.keys().map(String::len).max().unwrap_or(0);
                for (k, v) in map {
                    println!("{k:width$}  {}", cell(v));
                }
            } else {
                println!("{}", cell(value));
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
        println!("{}", s.trim_end());
    };
    line(headers);
    for row in rows {
        line(row);
    }
}

/// Pretty JSON on stdout.
pub fn json(value: &Value) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(_) => println!("{value}"),
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
