//! `meridian audit …`: read the audit log and verify its hash chain on the client side.
//!
//! Verification happens here, not on the server, so a tampered coordinator cannot vouch for itself.

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
        }
        AuditCommand::Verify(c) => {
            let api = ApiClient::from_args(&c.client)?;
            let records = fetch_all(&api).await?;
            let parsed: Vec<coordinator::state::AuditRecord> =
                serde_json::from_value(Value::Array(records))
                    .map_err(|e| ClientError::Failed(format!("audit records do not parse: {e}")))?;
            let count = parsed.len();
            match coordinator::state::verify_chain(&parsed) {
                Ok(()) => match c.client.output {
                    OutputFormat::Json => output::json(&json!({ "ok": true, "records": count })),
                    OutputFormat::Table => println!("audit chain verified: {count} records"),
                },
                Err(e) => {
                    if c.client.output == OutputFormat::Json {
                        output::json(
                            &json!({ "ok": false, "records": count, "error": e.to_string() }),
                        );
                    }
                    return Err(ClientError::Failed(format!("audit chain broken: {e}")));
                }
            }
        }
    }
    Ok(())
}

/// Pages through the whole log by sequence number.
async fn fetch_all(api: &ApiClient) -> Result<Vec<Value>, ClientError> {
    let mut all = Vec::new();
    let mut after = 0u64;
    loop {
        let page = api
            .get(&format!("/v1/audit?after_seq={after}&page_size=1000"))
            .await?;
        let items = page
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if items.is_empty() {
            return Ok(all);
        }
        after = items
            .last()
            .and_then(|r| r.get("seq"))
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        all.extend(items);
        if after == u64::MAX {
            return Ok(all);
        }
    }
}
