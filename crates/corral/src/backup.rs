//! `corral server backup` and `corral server restore` (the work is
//! `corral_server::bootstrap::backup`'s; this prints what was done).

use corral_server::bootstrap::backup::{self, Summary};

use crate::cli::ServerAction;
use crate::output::print;

pub async fn run(action: ServerAction) -> anyhow::Result<()> {
    match action {
        ServerAction::Ls { conn, out } => {
            let servers: Vec<corral_proto::api::ServerView> = crate::client::Client::new(&conn)?
                .get("/v1/servers")
                .await?;
            print(out.format, &servers, |list| {
                crate::output::table(
                    &["ID", "ROLE", "ADVERTISED URL", "PEER URL", "SEEN"],
                    list.iter()
                        .map(|s| {
                            vec![
                                s.id.clone(),
                                if s.active { "active" } else { "relaying" }.to_owned(),
                                s.advertise_url.clone(),
                                s.peer_url.clone(),
                                s.seen_at.clone(),
                            ]
                        })
                        .collect(),
                )
            })
        }
        ServerAction::Backup {
            data_dir,
            out,
            out_format,
        } => {
            let summary = backup::backup(&data_dir, &out).await?;
            print(out_format.format, &summary, |s| {
                format!(
                    "wrote {} ({} bytes): {}\nkeep the master key ({}) apart from it: a restore needs both, and the backup opens nothing without it",
                    s.file.display(),
                    s.bytes,
                    holds(s),
                    data_dir.join("master.key").display()
                )
            })
        }
        ServerAction::Restore {
            from,
            data_dir,
            master_key,
            out_format,
        } => {
            let summary = backup::restore(&from, &data_dir, &master_key).await?;
            print(out_format.format, &summary, |s| {
                format!(
                    "restored {} into {}: {}\nstart it with: corral server --data-dir {} (it writes a new admin.env; every other key of the backup still works)",
                    from.display(),
                    s.file.display(),
                    holds(s),
                    s.file.display()
                )
            })
        }
    }
}

fn holds(s: &Summary) -> String {
    format!(
        "{} hosts, {} stacks, {} users, {} API keys; CA {}; made {}",
        s.hosts,
        s.stacks,
        s.users,
        s.api_keys,
        s.ca_checksum
            .as_deref()
            .unwrap_or("(the operator's own certificates)"),
        s.created_at
    )
}
