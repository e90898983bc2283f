//! `corral registry`, `corral admission` and `corral image`.

use std::io::Read;

use anyhow::{Context, bail};
use corral_proto::api::{
    AdmissionRequest, AdmissionTestRequest, AdmissionVerdict, AdmissionView, PullRequest,
    RegistryRequest, RegistryView,
};
use corral_proto::{ImageSummary, RemovedImage};

use crate::cli::{AdmissionCommand, ImageCommand, RegistryCommand};
use crate::client::{Client, seg};
use crate::output::{print, table};

/// Largest password read from standard input.
const MAX_PASSWORD_BYTES: u64 = 4096;
/// Largest CA or policy file read.
const MAX_FILE_BYTES: u64 = 64 * 1024;

pub fn read_small(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    read_at_most(path, what, MAX_FILE_BYTES)
}

/// Reads a text file of at most `limit` bytes.
pub fn read_at_most(path: &std::path::Path, what: &str, limit: u64) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("{what} {}", path.display()))?;
    if meta.len() > limit {
        bail!(
            "{what} {} is {} bytes; the limit is {limit}",
            path.display(),
            meta.len()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("{what} {}", path.display()))
}

pub async fn registry(cmd: RegistryCommand) -> anyhow::Result<()> {
    match cmd {
        RegistryCommand::Add {
            conn,
            registry,
            username,
            password_stdin,
            ca_file,
            builds,
            environment,
        } => {
            let password = if password_stdin {
                let mut text = String::new();
                std::io::stdin()
                    .take(MAX_PASSWORD_BYTES + 1)
                    .read_to_string(&mut text)
                    .context("reading the password from standard input")?;
                if text.len() as u64 > MAX_PASSWORD_BYTES {
                    bail!("the password is longer than {MAX_PASSWORD_BYTES} bytes");
                }
                let text = text.trim_end_matches(['\r', '\n']).to_owned();
                if text.is_empty() {
                    bail!("standard input held no password");
                }
                Some(text)
            } else {
                None
            };
            let ca_pem = ca_file
                .as_deref()
                .map(|p| read_small(p, "CA file"))
                .transpose()?;
            let view: RegistryView = Client::new(&conn)?
                .post(
                    "/v1/registries",
                    &RegistryRequest {
                        environment: Some(environment),
                        registry,
                        username,
                        password,
                        ca_pem,
                        builds,
                    },
                )
                .await?;
            eprintln!(
                "registry {} added to environment {}{}{}",
                view.registry,
                view.environment,
                view.username
                    .as_ref()
                    .map(|u| format!(", account {u} (password sealed)"))
                    .unwrap_or_default(),
                if view.has_ca { ", private CA" } else { "" },
            );
            if view.builds {
                eprintln!(
                    "built images of environment {} are pushed there",
                    view.environment
                );
            }
            Ok(())
        }
        RegistryCommand::Ls {
            conn,
            environment,
            out,
        } => {
            let path = match &environment {
                Some(e) => format!("/v1/registries?environment={}", seg(e)),
                None => "/v1/registries".into(),
            };
            let list: Vec<RegistryView> = Client::new(&conn)?.get(&path).await?;
            print(out.format, &list, |l| {
                table(
                    &[
                        "ENVIRONMENT",
                        "REGISTRY",
                        "ACCOUNT",
                        "PASSWORD",
                        "CA",
                        "UPDATED",
                    ],
                    l.iter()
                        .map(|r| {
                            vec![
                                r.environment.clone(),
                                r.registry.clone(),
                                r.username.clone().unwrap_or_else(|| "-".into()),
                                if r.has_password { "sealed" } else { "-" }.into(),
                                if r.has_ca { "private" } else { "system" }.into(),
                                if r.builds { "pushed here" } else { "-" }.into(),
                                r.updated_at.clone(),
                            ]
                        })
                        .collect(),
                )
            })
        }
        RegistryCommand::Rm {
            conn,
            registry,
            environment,
        } => {
            Client::new(&conn)?
                .delete(&format!(
                    "/v1/registries/{}?environment={}",
                    seg(&registry),
                    seg(&environment)
                ))
                .await?;
            eprintln!("registry {registry} removed from environment {environment}");
            Ok(())
        }
    }
}

pub async fn admission(cmd: AdmissionCommand) -> anyhow::Result<()> {
    match cmd {
        AdmissionCommand::Apply {
            conn,
            file,
            environment,
        } => {
            let document = read_small(&file, "policy file")?;
            let view: AdmissionView = Client::new(&conn)?
                .put(
                    &format!("/v1/environments/{}/admission", seg(&environment)),
                    &AdmissionRequest { document },
                )
                .await?;
            eprintln!(
                "environment {}: admission policy generation {} in force",
                view.environment,
                view.generation.unwrap_or(0)
            );
            Ok(())
        }
        AdmissionCommand::Show {
            conn,
            environment,
            out,
        } => {
            let view: AdmissionView = Client::new(&conn)?
                .get(&format!("/v1/environments/{}/admission", seg(&environment)))
                .await?;
            print(out.format, &view, |v| {
                let head = match (v.generation, &v.applied_at) {
                    (Some(g), Some(at)) => format!(
                        "# environment {}: policy generation {g}, applied {at}\n",
                        v.environment
                    ),
                    _ => format!(
                        "# environment {}: no policy applied; the default is in force\n",
                        v.environment
                    ),
                };
                format!("{head}{}", v.effective)
            })
        }
        AdmissionCommand::Test {
            conn,
            files,
            project,
            env_files,
            policy,
            environment,
            out,
        } => {
            let project =
                crate::stacks::project_request(&files, project, &env_files, &environment)?;
            let policy = policy
                .as_deref()
                .map(|p| read_small(p, "policy file"))
                .transpose()?;
            let verdict: AdmissionVerdict = Client::new(&conn)?
                .post(
                    &format!("/v1/environments/{}/admission/test", seg(&environment)),
                    &AdmissionTestRequest { project, policy },
                )
                .await?;
            print(out.format, &verdict, |v| {
                let mut lines = Vec::new();
                for r in &v.refusals {
                    lines.push(format!(
                        "refused: service {}: {}: rule {}: {}",
                        r.service, r.key, r.rule, r.reason
                    ));
                }
                for n in &v.notes {
                    lines.push(format!("note: {n}"));
                }
                lines.push(if v.admitted {
                    "admitted".into()
                } else {
                    format!("not admitted ({} refusals)", v.refusals.len())
                });
                lines.join("\n")
            })?;
            if !verdict.admitted {
                bail!("the policy refuses this project");
            }
            Ok(())
        }
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

fn image_rows(images: &[ImageSummary]) -> String {
    table(
        &["IMAGE", "DIGEST", "ID", "SIZE", "CONTAINERS"],
        images
            .iter()
            .map(|i| {
                vec![
                    if i.tags.is_empty() {
                        "<none>".into()
                    } else {
                        i.tags.join(", ")
                    },
                    i.digests
                        .iter()
                        .filter_map(|d| d.rsplit_once('@').map(|(_, d)| d.to_owned()))
                        .collect::<Vec<_>>()
                        .join(", "),
                    i.id.trim_start_matches("sha256:")
                        .chars()
                        .take(12)
                        .collect(),
                    mb(i.size_bytes),
                    i.containers.to_string(),
                ]
            })
            .collect(),
    )
}

pub async fn image(cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Pull {
            conn,
            image,
            host,
            out,
        } => {
            eprintln!("pulling {image} on host {host}…");
            let summary: ImageSummary = Client::new(&conn)?
                .post_long(
                    &format!("/v1/hosts/{}/images", seg(&host)),
                    &PullRequest { image },
                )
                .await?;
            print(out.format, &summary, |s| {
                image_rows(std::slice::from_ref(s))
            })
        }
        ImageCommand::Ls { conn, host, out } => {
            let images: Vec<ImageSummary> = Client::new(&conn)?
                .get(&format!("/v1/hosts/{}/images", seg(&host)))
                .await?;
            print(out.format, &images, |l| image_rows(l))
        }
        ImageCommand::Rm { conn, image, host } => {
            let removed: RemovedImage = Client::new(&conn)?
                .delete_json(&format!(
                    "/v1/hosts/{}/images?image={}",
                    seg(&host),
                    seg(&image)
                ))
                .await?;
            for u in &removed.untagged {
                eprintln!("untagged {u}");
            }
            for d in &removed.deleted {
                eprintln!("deleted {d}");
            }
            Ok(())
        }
    }
}
