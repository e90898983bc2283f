//! `corral policy`: the environment's network policy.

use anyhow::bail;
use corral_proto::api::{
    NetworkPolicyRequest, NetworkPolicyView, PolicyDiffRequest, PolicyDiffView,
    PolicyRollbackRequest, PolicyTestAnswer, PolicyTestRequest,
};

use crate::cli::PolicyCommand;
use crate::client::{Client, seg};
use crate::images::read_at_most;
use crate::output::{print, table};

/// Reads a policy file and checks it here first, so a mistake is named with the file, line,
/// column and key before anything is sent (the server checks it again).
fn read_document(path: &std::path::Path) -> anyhow::Result<String> {
    let text = read_at_most(
        path,
        "policy file",
        corral_policy::document::MAX_DOCUMENT_BYTES as u64,
    )?;
    if let Err(e) = corral_policy::parse(&text) {
        bail!("{}: {e}", path.display());
    }
    Ok(text)
}

fn base(environment: &str) -> String {
    format!("/v1/environments/{}/network-policy", seg(environment))
}

fn summary(v: &NetworkPolicyView) -> String {
    match (v.generation, &v.applied_at) {
        (Some(g), Some(at)) => format!(
            "environment {}: network policy generation {g} in force (applied {at})",
            v.environment
        ),
        _ => format!(
            "environment {}: no network policy applied; all traffic is allowed",
            v.environment
        ),
    }
}

fn render_view(v: &NetworkPolicyView) -> String {
    let mut out = vec![format!("# {}", summary(v))];
    for w in &v.warnings {
        out.push(format!("# warning: {w}"));
    }
    if !v.document.is_empty() {
        out.push(v.document.trim_end().to_owned());
    }
    if !v.flows.is_empty() {
        out.push(String::new());
        out.push("# between the deployed services (new connections; replies always pass):".into());
        let rows = v
            .flows
            .iter()
            .map(|f| {
                vec![
                    f.from.clone(),
                    f.to.clone(),
                    f.access.clone(),
                    f.reason.clone(),
                ]
            })
            .collect();
        out.push(table(&["FROM", "TO", "MAY CARRY", "WHY"], rows));
        if v.flows_left_out > 0 {
            out.push(format!("… and {} more pairs (-o json)", v.flows_left_out));
        }
    }
    if v.history.len() > 1 {
        let kept: Vec<String> = v.history.iter().map(|h| h.generation.to_string()).collect();
        out.push(format!("# generations kept: {}", kept.join(", ")));
    }
    out.join("\n")
}

pub async fn policy(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Apply {
            conn,
            file,
            environment,
        } => {
            let document = read_document(&file)?;
            let view: NetworkPolicyView = Client::new(&conn)?
                .put(&base(&environment), &NetworkPolicyRequest { document })
                .await?;
            eprintln!("{}", summary(&view));
            for w in &view.warnings {
                eprintln!("warning: {w}");
            }
            Ok(())
        }
        PolicyCommand::Show {
            conn,
            environment,
            out,
        } => {
            let view: NetworkPolicyView = Client::new(&conn)?.get(&base(&environment)).await?;
            print(out.format, &view, render_view)
        }
        PolicyCommand::Diff {
            conn,
            file,
            from,
            environment,
            out,
        } => {
            let document = file.as_deref().map(read_document).transpose()?;
            let diff: PolicyDiffView = Client::new(&conn)?
                .post(
                    &format!("{}/diff", base(&environment)),
                    &PolicyDiffRequest { from, document },
                )
                .await?;
            print(out.format, &diff, |d| {
                let mut lines = vec![format!("# {} → {}", d.from, d.to)];
                if d.changes.is_empty() {
                    lines.push(if d.documents_differ {
                        "no change for the deployed services (the documents differ in rules that match none of them, or in traffic from or to outside the overlay)".into()
                    } else {
                        "no change".into()
                    });
                } else {
                    let rows = d
                        .changes
                        .iter()
                        .map(|c| {
                            vec![
                                c.from.clone(),
                                c.to.clone(),
                                c.before.clone(),
                                c.after.clone(),
                            ]
                        })
                        .collect();
                    lines.push(table(&["FROM", "TO", "BEFORE", "AFTER"], rows));
                }
                lines.join("\n")
            })
        }
        PolicyCommand::Rollback {
            conn,
            generation,
            environment,
        } => {
            let view: NetworkPolicyView = Client::new(&conn)?
                .post(
                    &format!("{}/rollback", base(&environment)),
                    &PolicyRollbackRequest { generation },
                )
                .await?;
            eprintln!("{}", summary(&view));
            Ok(())
        }
        PolicyCommand::Test {
            conn,
            from,
            to,
            port,
            file,
            environment,
            out,
        } => {
            let document = file.as_deref().map(read_document).transpose()?;
            let answer: PolicyTestAnswer = Client::new(&conn)?
                .post(
                    &format!("{}/test", base(&environment)),
                    &PolicyTestRequest {
                        from: from.clone(),
                        to: to.clone(),
                        traffic: port.clone(),
                        document,
                    },
                )
                .await?;
            print(out.format, &answer, |a| {
                let source = match a.generation {
                    Some(g) => format!(" (generation {g})"),
                    None => String::new(),
                };
                format!(
                    "{}: {from} → {to} {port}{source}\n  decided by {}",
                    a.action, a.decided_by
                )
            })?;
            if answer.action == corral_policy::Action::Deny {
                bail!("denied");
            }
            Ok(())
        }
    }
}

/// An environment's services and what its policy lets flow between them, as the server
/// draws them: `svg`, `dot`, `mermaid`, or `markdown` (the firewall export's section).
pub async fn services_text(
    conn: &crate::cli::Conn,
    environment: &str,
    format: &str,
) -> anyhow::Result<String> {
    Client::new(conn)?
        .get_text(&format!("{}/diagram?format={format}", base(environment)))
        .await
}

/// `corral diagram --view services`.
pub async fn services_diagram(
    conn: crate::cli::Conn,
    format: &str,
    environment: &str,
    out_file: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let format = match crate::commands::diagram_format(format) {
        corral_firewall::DiagramFormat::Svg => "svg",
        corral_firewall::DiagramFormat::Dot => "dot",
        corral_firewall::DiagramFormat::Mermaid => "mermaid",
    };
    let text = services_text(&conn, environment, format).await?;
    crate::commands::write_diagram(&text, out_file)
}
