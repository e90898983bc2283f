//! `corral audit`: the server's tamper-evident audit log — list, export, verify.

use std::io::Write;

use anyhow::bail;
use corral_proto::api::{AuditEntryView, AuditVerifyView, MAX_AUDIT_PER_REQUEST};

use crate::cli::AuditCommand;
use crate::client::{Client, seg};
use crate::output::{print, table};

/// `--since 2h` (that long ago) or an RFC 3339 time, as the API takes it.
fn since_param(since: &str) -> String {
    match crate::duration::parse_duration(since) {
        Ok(ago) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            now.saturating_sub(ago).as_secs().to_string()
        }
        Err(_) => since.to_owned(),
    }
}

pub async fn audit(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Ls {
            conn,
            actor,
            since,
            limit,
            out,
        } => {
            let mut path = format!("/v1/audit?limit={limit}");
            if let Some(actor) = actor {
                path.push_str(&format!("&actor={}", seg(&actor)));
            }
            if let Some(since) = since {
                path.push_str(&format!("&since={}", seg(&since_param(&since))));
            }
            let entries: Vec<AuditEntryView> = Client::new(&conn)?.get(&path).await?;
            print(out.format, &entries, |es| {
                table(
                    &[
                        "SEQ", "AT", "ACTOR", "ACTION", "TARGET", "OUTCOME", "SOURCE",
                    ],
                    es.iter()
                        .map(|e| {
                            vec![
                                e.seq.to_string(),
                                e.at.clone(),
                                e.actor.clone(),
                                e.action.clone(),
                                e.target.clone(),
                                e.outcome.clone(),
                                e.source.clone(),
                            ]
                        })
                        .collect(),
                )
            })
        }
        AuditCommand::Export { conn, after } => {
            let client = Client::new(&conn)?;
            let mut after = after;
            let mut written: u64 = 0;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            loop {
                let page: Vec<AuditEntryView> = client
                    .get(&format!(
                        "/v1/audit/export?after={after}&limit={MAX_AUDIT_PER_REQUEST}"
                    ))
                    .await?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for e in &page {
                    serde_json::to_writer(&mut out, e)?;
                    out.write_all(b"\n")?;
                }
                written += page.len() as u64;
                eprint!("\rexported {written} entries (through {after})");
            }
            out.flush()?;
            eprintln!("\rexported {written} entries; the last is {after}");
            Ok(())
        }
        AuditCommand::Verify { conn, out } => {
            let v: AuditVerifyView = Client::new(&conn)?.get("/v1/audit/verify").await?;
            print(out.format, &v, |v| {
                if v.intact {
                    format!(
                        "the audit log is intact: {} entries, chained from the first to the last\nhead: entry {} {}\n(compare the head with an exported copy: entries cut off the end leave a shorter intact chain)",
                        v.entries, v.head_seq, v.head_hash
                    )
                } else {
                    format!(
                        "the audit log was tampered with at entry {}: {}\nintact up to entry {} {}",
                        v.broken_at.unwrap_or_default(),
                        v.problem.clone().unwrap_or_default(),
                        v.head_seq,
                        v.head_hash
                    )
                }
            })?;
            if !v.intact {
                bail!("audit log verification failed");
            }
            Ok(())
        }
    }
}
