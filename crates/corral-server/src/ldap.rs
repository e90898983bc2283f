//! Directory logins: a user who is not a local user with a password is looked up in an LDAP
//! directory — bound as themselves (`uid={user},ou=people,…`) over LDAPS or StartTLS, trusting
//! only the CA given — and their groups (`groupOfNames` whose `member` is their DN, under the
//! group base) are mapped to corral roles per environment, and to admin. Plain LDAP is refused:
//! passwords would cross the network in clear.

use std::sync::Arc;
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

use corral_control::roles::EnvRole;

/// How long connecting to the directory may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most groups read for one user.
const MAX_GROUPS: usize = 1_000;

/// The directory and how its groups map to roles (`corral server --ldap-…`).
#[derive(Clone)]
pub struct LdapConfig {
    /// `ldaps://host:636`, or `ldap://host:389` with `starttls`.
    pub url: String,
    pub starttls: bool,
    /// Trusts only these CAs for the directory's certificate.
    pub tls: Arc<rustls::ClientConfig>,
    /// The user's DN, `{user}` replaced by their (escaped) name.
    pub user_dn: String,
    /// Where groups are searched.
    pub group_base: String,
    /// Group name (`cn`) → (environment name, role).
    pub roles: Vec<(String, String, EnvRole)>,
    /// Members of this group are admins.
    pub admin_group: Option<String>,
}

impl std::fmt::Debug for LdapConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapConfig")
            .field("url", &self.url)
            .field("starttls", &self.starttls)
            .field("user_dn", &self.user_dn)
            .finish()
    }
}

impl LdapConfig {
    /// Checks the settings and reads the CA file; plain LDAP without StartTLS is refused.
    pub fn new(
        url: &str,
        starttls: bool,
        ca_pem: &[u8],
        user_dn: &str,
        group_base: &str,
        roles: &[String],
        admin_group: Option<&str>,
    ) -> Result<LdapConfig, String> {
        match (url.split_once("://").map(|(s, _)| s), starttls) {
            (Some("ldaps"), false) | (Some("ldap"), true) => {}
            (Some("ldaps"), true) => {
                return Err("--ldap-starttls goes with an ldap:// URL, not ldaps://".into());
            }
            (Some("ldap"), false) => {
                return Err(format!(
                    "{url}: plain LDAP would send passwords in clear; use ldaps:// or --ldap-starttls"
                ));
            }
            _ => return Err(format!("{url:?} is not an ldaps:// or ldap:// URL")),
        }
        if !user_dn.contains("{user}") {
            return Err(format!(
                "--ldap-user-dn {user_dn:?} must contain {{user}} (e.g. uid={{user}},ou=people,dc=example,dc=org)"
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("--ldap-ca: {e}"))?;
        if certs.is_empty() {
            return Err("--ldap-ca holds no certificate".into());
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("--ldap-ca: a certificate is not usable: {e}"))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(corral_tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut mapped = Vec::new();
        for r in roles {
            let bad = || {
                format!(
                    "--ldap-role {r:?}: expected GROUP=ENVIRONMENT:ROLE, e.g. ops=default:owner"
                )
            };
            let (group, rest) = r.split_once('=').ok_or_else(bad)?;
            let (env, role) = rest.split_once(':').ok_or_else(bad)?;
            let role = EnvRole::parse(role).ok_or_else(|| {
                format!(
                    "--ldap-role {r:?}: role {role:?} is not owner, member, restricted or read-only"
                )
            })?;
            if group.is_empty() || env.is_empty() {
                return Err(bad());
            }
            mapped.push((group.to_owned(), env.to_owned(), role));
        }
        Ok(LdapConfig {
            url: url.to_owned(),
            starttls,
            tls: Arc::new(tls),
            user_dn: user_dn.to_owned(),
            group_base: group_base.to_owned(),
            roles: mapped,
            admin_group: admin_group.map(str::to_owned),
        })
    }
}

/// What the directory says of a user whose password it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUser {
    pub admin: bool,
    /// (environment name, role), the most allowed role per environment.
    pub roles: Vec<(String, EnvRole)>,
    /// The groups read (for the audit trail).
    pub groups: Vec<String>,
}

/// Why a directory login did not succeed.
#[derive(Debug)]
pub enum DirectoryError {
    /// Wrong name or password (the directory refused the bind).
    Refused,
    /// The directory could not be reached or answered unexpectedly.
    Unavailable(String),
}

/// Binds as the user with their password; on success reads their groups.
pub async fn login(
    cfg: &LdapConfig,
    user: &str,
    password: &str,
) -> Result<DirectoryUser, DirectoryError> {
    // An empty password is an unauthenticated bind, which directories accept: never.
    if password.is_empty() {
        return Err(DirectoryError::Refused);
    }
    let unavailable = |e: ldap3::LdapError| {
        DirectoryError::Unavailable(format!("the directory at {}: {e}", cfg.url))
    };
    let settings = LdapConnSettings::new()
        .set_conn_timeout(CONNECT_TIMEOUT)
        .set_starttls(cfg.starttls)
        .set_config(cfg.tls.clone());
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &cfg.url)
        .await
        .map_err(unavailable)?;
    ldap3::drive!(conn);
    let dn = cfg.user_dn.replace("{user}", &ldap3::dn_escape(user));
    let bound = ldap.simple_bind(&dn, password).await.map_err(unavailable)?;
    // 49: invalidCredentials; 32: noSuchObject (some directories).
    if bound.rc == 49 || bound.rc == 32 {
        let _ = ldap.unbind().await;
        return Err(DirectoryError::Refused);
    }
    if bound.rc != 0 {
        let _ = ldap.unbind().await;
        return Err(DirectoryError::Unavailable(format!(
            "the directory at {} refused the bind: {} ({})",
            cfg.url, bound.text, bound.rc
        )));
    }
    let filter = format!(
        "(&(objectClass=groupOfNames)(member={}))",
        ldap3::ldap_escape(&dn)
    );
    let (entries, _) = ldap
        .search(&cfg.group_base, Scope::Subtree, &filter, vec!["cn"])
        .await
        .and_then(|r| r.success())
        .map_err(unavailable)?;
    let _ = ldap.unbind().await;
    let mut groups: Vec<String> = entries
        .into_iter()
        .take(MAX_GROUPS)
        .filter_map(|e| {
            SearchEntry::construct(e)
                .attrs
                .get("cn")
                .and_then(|v| v.first().cloned())
        })
        .collect();
    groups.sort();
    Ok(map_groups(cfg, groups))
}

/// The roles and admin flag a user's groups give (pure).
pub fn map_groups(cfg: &LdapConfig, groups: Vec<String>) -> DirectoryUser {
    let admin = cfg.admin_group.as_ref().is_some_and(|g| groups.contains(g));
    let mut roles: Vec<(String, EnvRole)> = Vec::new();
    for (group, env, role) in &cfg.roles {
        if !groups.contains(group) {
            continue;
        }
        match roles.iter_mut().find(|(e, _)| e == env) {
            // `Owner` sorts first: keep the most allowed.
            Some((_, r)) => *r = (*r).min(*role),
            None => roles.push((env.clone(), *role)),
        }
    }
    roles.sort();
    DirectoryUser {
        admin,
        roles,
        groups,
    }
}
