//! `meridian audit …`: read the audit log and verify its hash chain on the client side.
//!
//! The live records (those still in the replicated state) are verified here, not on the server, so a
//! tampered coordinator cannot vouch for them. Records archived by the coordinators live only on their
//! disks: for those the command asks the coordinator's own verification (`/v1/audit/verify`), which checks
//! the segments from genesis up to the checkpoint the live records continue from, and reports it as the
//! coordinator's word, failing when it finds a break or holds no segment for part of the range.

use coordinator::api::dto::{AuditList, AuditRecord, AuditVerification};
use serde_json::json;

use super::get_as;
use crate::cli::{AuditCommand, OutputFormat};
use crate::client::{ApiClient, ClientError};
use crate::output;

/// Records asked for per page.
const PAGE: u64 = 1000;

pub async fn run(cmd: AuditCommand) -> Result<(), ClientError> {
    match cmd {
        AuditCommand::List {
            after,
            limit,
            client,
        } => {
            let api = ApiClient::from_args(&client)?;
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            let (records, archived_through) = match after {
                // A cursor: the records after it, in order.
                Some(after) => read_forward(&api, after, limit).await?,
                // For people: the newest, newest first.
                None => {
                    let (mut all, archived_through) = fetch_all(&api).await?;
                    all.reverse();
                    all.truncate(limit);
                    // Older records than those shown exist only in the archive when the live log
                    // ran out before the limit.
                    let archived_through = archived_through.filter(|_| all.len() < limit);
                    (all, archived_through)
                }
            };
            output::rows(client.output, &records);
            if let Some(through) = archived_through {
                output::note(&format!(
                    "records through seq {through} are archived on the coordinators' disks"
                ));
            }
        }
        AuditCommand::Verify(c) => {
            let api = ApiClient::from_args(&c.client)?;
            let (parsed, archived_through) = fetch_all(&api).await?;
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
                    let report: AuditVerification = get_as(&api, "/v1/audit/verify").await?;
                    if !report.ok {
                        let why = report
                            .error
                            .as_deref()
                            .unwrap_or("the coordinator did not verify its archive");
                        result = Err(format!("archived audit records: {why}"));
                    }
                    Some(report)
                }
                _ => None,
            };
            let archived = archive.as_ref().map_or(0, |r| r.archived_records);
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
                    Some(through) => output::line(&format!(
                        "audit chain verified: {count} live records here, {archived} archived \
                         records through seq {through} by the coordinator"
                    )),
                    None => output::line(&format!("audit chain verified: {count} records")),
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

/// One page of the live log after `after`.
async fn page(api: &ApiClient, after: u64, size: u64) -> Result<AuditList, ClientError> {
    get_as(
        api,
        &format!("/v1/audit?after_seq={after}&page_size={size}"),
    )
    .await
}

/// Up to `limit` records after `after`, in order; also the seq through which records are archived, when
/// the first page says the caller asked below it.
async fn read_forward(
    api: &ApiClient,
    mut after: u64,
    limit: usize,
) -> Result<(Vec<AuditRecord>, Option<u64>), ClientError> {
    let mut records = Vec::new();
    let mut archived_through = None;
    let mut first = true;
    while records.len() < limit {
        let want = u64::try_from(limit - records.len()).map_or(PAGE, |n| n.min(PAGE));
        let p = page(api, after, want).await?;
        if first {
            archived_through = p.archived_through_seq;
            first = false;
        }
        let Some(last) = p.items.last().map(|r| r.seq) else {
            break;
        };
        after = last;
        records.extend(p.items);
    }
    records.truncate(limit);
    Ok((records, archived_through))
}

/// Pages through the live log by sequence number; also returns the seq through which records are
/// archived, as the first page says.
async fn fetch_all(api: &ApiClient) -> Result<(Vec<AuditRecord>, Option<u64>), ClientError> {
    read_forward(api, 0, usize::MAX).await
}
