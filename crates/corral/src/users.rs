//! `corral login`, `corral whoami`, `corral user …` and `corral key …`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, bail};
use corral_proto::api::{KeyView, NewKeyView, UserView};

use crate::cli::{Conn, KeyCommand, UserCommand};
use crate::client::{Client, seg};
use crate::output::{print, table};

/// Reads a password: one line of stdin with `--password-stdin` (or when stdin is not a
/// terminal), else a prompt on the terminal with its echo turned off.
fn read_password(prompt: &str, from_stdin: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    if from_stdin || !stdin.is_terminal() {
        stdin
            .lock()
            .take(crate::MAX_PASSWORD_LINE)
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
    } else {
        eprint!("{prompt}");
        std::io::stderr().flush()?;
        let fd = std::io::stdin();
        let before = rustix::termios::tcgetattr(&fd).context("cannot read the terminal's mode")?;
        let mut quiet = before.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        rustix::termios::tcsetattr(&fd, rustix::termios::OptionalActions::Now, &quiet)
            .context("cannot turn the terminal's echo off")?;
        let read = stdin
            .lock()
            .take(crate::MAX_PASSWORD_LINE)
            .read_line(&mut line);
        let _ = rustix::termios::tcsetattr(&fd, rustix::termios::OptionalActions::Now, &before);
        eprintln!();
        read.context("cannot read the password")?;
    }
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        bail!("no password given");
    }
    Ok(password)
}

use std::io::Read as _;

pub async fn login(
    conn: Conn,
    user: String,
    password_stdin: bool,
    ttl: Option<std::time::Duration>,
    environment: Option<String>,
) -> anyhow::Result<()> {
    let client = Client::anonymous(&conn)?;
    let password = read_password(&format!("password for {user}: "), password_stdin)?;
    let key: NewKeyView = client
        .post(
            "/v1/login",
            &serde_json::json!({
                "user": user,
                "password": password,
                "key_name": format!("login {}", hostname()),
                "ttl_secs": ttl.map(|d| d.as_secs()),
            }),
        )
        .await?;
    let mut saved = crate::config::Saved {
        server: client.base().to_owned(),
        ca_checksum: conn.ca_checksum.clone(),
        api_key: key.key.clone(),
        user: key.user.clone(),
        env: None,
    };
    if let Some(env) = environment {
        // Checked with the new key, so that a name the user has no role in is not saved.
        let with_key = Client::new(&crate::cli::Conn {
            server: Some(saved.server.clone()),
            api_key: Some(saved.api_key.clone()),
            ca_checksum: saved.ca_checksum.clone(),
        })?;
        if !with_key.has_role_in(&env).await? {
            let path = crate::config::save(&saved)?;
            bail!(
                "logged in as {} (saved in {}), but they have no role in an environment {env:?}: working in every environment they have a role in",
                key.user,
                path.display()
            );
        }
        saved.env = Some(env);
    }
    let path = crate::config::save(&saved)?;
    eprintln!(
        "logged in as {} at {}; the key ({}{}) is saved in {} (0600)",
        key.user,
        client.base(),
        key.key_id,
        key.expires_at
            .as_deref()
            .map(|t| format!(", expires {t}"))
            .unwrap_or_default(),
        path.display()
    );
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "cli".into())
}

fn user_table(users: &[UserView]) -> String {
    table(
        &[
            "NAME",
            "ADMIN",
            "ROLES",
            "PASSWORD",
            "LOCKED UNTIL",
            "CREATED",
        ],
        users
            .iter()
            .map(|u| {
                vec![
                    u.name.clone(),
                    if u.admin { "yes" } else { "no" }.into(),
                    u.roles
                        .iter()
                        .map(|r| format!("{}:{}", r.environment, r.role))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if u.password { "yes" } else { "no" }.into(),
                    u.locked_until.clone().unwrap_or_else(|| "-".into()),
                    u.created_at.clone(),
                ]
            })
            .collect(),
    )
}

pub async fn whoami(conn: Conn, out: crate::cli::Out) -> anyhow::Result<()> {
    let client = Client::new(&conn)?;
    let me: UserView = client.get("/v1/whoami").await?;
    if let Some(env) = client.scope()
        && out.format == crate::cli::Format::Table
    {
        eprintln!("working in environment {env}");
    }
    print(out.format, &me, |u| user_table(std::slice::from_ref(u)))
}

pub async fn user(cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Ls { conn, out } => {
            let users: Vec<UserView> = Client::new(&conn)?.get("/v1/users").await?;
            print(out.format, &users, |u| user_table(u))
        }
        UserCommand::Create {
            conn,
            name,
            admin,
            password_stdin,
            no_password,
        } => {
            let password = if no_password {
                None
            } else {
                Some(read_password(
                    &format!("password for {name}: "),
                    password_stdin,
                )?)
            };
            let u: UserView = Client::new(&conn)?
                .post(
                    "/v1/users",
                    &serde_json::json!({ "name": name, "password": password, "admin": admin }),
                )
                .await?;
            eprintln!(
                "user {} created{}; give them a role with `corral user grant {} --env ENV --role ROLE`",
                u.name,
                if u.admin { " (admin)" } else { "" },
                u.name
            );
            Ok(())
        }
        UserCommand::Rm { conn, name } => {
            Client::new(&conn)?
                .delete(&format!("/v1/users/{}", seg(&name)))
                .await?;
            eprintln!("user {name} removed; their keys no longer work");
            Ok(())
        }
        UserCommand::Passwd {
            conn,
            name,
            password_stdin,
        } => {
            let client = Client::new(&conn)?;
            let name = match name {
                Some(n) => n,
                None => client.get::<UserView>("/v1/whoami").await?.name,
            };
            let password = read_password(&format!("new password for {name}: "), password_stdin)?;
            client
                .put_no_content(
                    &format!("/v1/users/{}/password", seg(&name)),
                    &serde_json::json!({ "password": password }),
                )
                .await?;
            eprintln!("password of {name} changed");
            Ok(())
        }
        UserCommand::Grant {
            conn,
            name,
            env,
            role,
        } => {
            Client::new(&conn)?
                .put_no_content(
                    &format!("/v1/users/{}/roles/{}", seg(&name), seg(&env)),
                    &serde_json::json!({ "role": role }),
                )
                .await?;
            eprintln!("{name} is {role} in environment {env}");
            Ok(())
        }
        UserCommand::Revoke { conn, name, env } => {
            Client::new(&conn)?
                .delete(&format!("/v1/users/{}/roles/{}", seg(&name), seg(&env)))
                .await?;
            eprintln!("{name} has no role in environment {env} any more");
            Ok(())
        }
    }
}

pub async fn key(cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Ls { conn, out } => {
            let keys: Vec<KeyView> = Client::new(&conn)?.get("/v1/keys").await?;
            print(out.format, &keys, |ks| {
                table(
                    &["ID", "NAME", "STATE", "CREATED", "EXPIRES"],
                    ks.iter()
                        .map(|k| {
                            vec![
                                k.id.clone(),
                                k.name.clone(),
                                k.state.clone(),
                                k.created_at.clone(),
                                k.expires_at.clone().unwrap_or_else(|| "never".into()),
                            ]
                        })
                        .collect(),
                )
            })
        }
        KeyCommand::Create {
            conn,
            name,
            ttl,
            out,
        } => {
            let key: NewKeyView = Client::new(&conn)?
                .post(
                    "/v1/keys",
                    &serde_json::json!({ "name": name, "ttl_secs": ttl.map(|d| d.as_secs()) }),
                )
                .await?;
            print(out.format, &key, |k| {
                format!(
                    "{}\n(key {} of {}{}; shown only this once)",
                    k.key,
                    k.key_id,
                    k.user,
                    k.expires_at
                        .as_deref()
                        .map(|t| format!(", expires {t}"))
                        .unwrap_or_default()
                )
            })
        }
        KeyCommand::Rm { conn, id } => {
            Client::new(&conn)?
                .delete(&format!("/v1/keys/{}", seg(&id)))
                .await?;
            eprintln!("key {id} revoked");
            Ok(())
        }
    }
}
