//! `meridian audit …`: read the audit log and verify its hash chain on the client side.
//!
//! The live records (those still in the replicated state) are verified here, not on the server, so a
//! tampered coordinator cannot vouch for them. Records archived by the coordinators live only on their
//! disks: for those the command asks the coordinator's own verification (`/v1/audit/verify`), which checks
//! the segments from genesis up to the checkpoint the live records continue from, and reports it as the
//! coordinator's word, failing when it finds a break or holds no segment for part of the range.

use serde_json::{json, Value};

use crate::cli::{AuditCommand, OutputFormat};
use crate::client::{ApiClient, ClientError};
use crate::output;

pub async fn run(cmd: AuditCommand) -> Result<(), ClientError> {
    match cmd {
        AuditCommand::List {
            after,
            limit,
            client,
        } => {
            let api = ApiClient::from_args(&client)?;
            let page = api
                .get(&format!("/v1/audit?after_seq={after}&page_size={limit}"))
                .await?;
            let items = page
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            output::list(
                client.output,
                &items,
                &["seq", "at_ms", "actor/name", "action", "target", "outcome"],
            );
            if let Some(through) = page.get("archived_through_seq").and_then(Value::as_u64) {
                eprintln!("records through seq {through} are archived on the coordinators' disks");
            }
        }
        AuditCommand::Verify(c) => {
            let api = ApiClient::from_args(&c.client)?;
            let (records, archived_through) = fetch_all(&api).await?;
            let parsed: Vec<coordinator::state::AuditRecord> =
                serde_json::from_value(Value::Array(records))
                    .map_err(|e| ClientError::Failed(format!("audit records do not parse: {e}")))?;
            let count = parsed.len();
            let mut result = coordinator::state::verify_chain(&parsed)
                .map_err(|e| format!("audit chain broken: {e}"));
            if let (Ok(()), Some(through), Some(first)) =
                (&result, archived_through, parsed.first())
            {
                if first.seq != through + 1 {
                    result = Err(format!(
                        "the live records start at seq {}, not after the archived {through}",
                        first.seq
                    ));
                }
            }
            // The archived part, as the coordinator verified it from its segments.
            let archive = match (&result, archived_through) {
                (Ok(()), Some(_)) => {
                    let report = api.get("/v1/audit/verify").await?;
                    if report.get("ok").and_then(Value::as_bool) != Some(true) {
                        let why = report
                            .get("error")
                            .and_then(Value::as_str)
                            .unwrap_or("the coordinator did not verify its archive");
                        result = Err(format!("archived audit records: {why}"));
                    }
                    Some(report)
                }
                _ => None,
            };
            let archived = archive
                .as_ref()
                .and_then(|r| r.get("archived_records"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let ok = result.is_ok();
            match c.client.output {
                OutputFormat::Json => output::json(&json!({
                    "ok": ok,
                    "records": count,
                    "archived_through_seq": archived_through,
                    "archive": archive,
                    "error": result.as_ref().err(),
                })),
                OutputFormat::Table if ok => match archived_through {
                    Some(through) => println!(
                        "audit chain verified: {count} live records here, {archived} archived \
                         records through seq {through} by the coordinator"
                    ),
                    None => println!("audit chain verified: {count} records"),
                },
                OutputFormat::Table => {}
            }
            if let Err(e) = result {
                return Err(ClientError::Failed(e));
            }
        }
    }
    Ok(())
}

/// Pages through the live log by sequence number; also returns the seq through which records are
/// archived, as the first page says.
async fn fetch_all(api: &ApiClient) -> Result<(Vec<Value>, Option<u64>), ClientError> {
    let mut all = Vec::new();
    let mut after = 0u64;
    let mut archived_through = None;
    loop {
        let page = api
            .get(&format!("/v1/audit?after_seq={after}&page_size=1000"))
            .await?;
        if after == 0 {
            archived_through = page.get("archived_through_seq").and_then(Value::as_u64);
        }
        let items = page
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if items.is_empty() {
            return Ok((all, archived_through));
        }
        after = items
            .last()
            .and_then(|r| r.get("seq"))
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        all.extend(items);
        if after == u64::MAX {
            return Ok((all, archived_through));
        }
    }
}
