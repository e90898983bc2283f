//! The API client every CLI verb uses. It trusts the server only through the pinned CA
//! (`CORRAL_CA_CHECKSUM`), exactly like an agent does.

use anyhow::{Context, anyhow, bail};
use corral_proto::api::{ENVIRONMENT_HEADER, ErrorBody};
use corral_tls::CaChecksum;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cli::Conn;

#[derive(Clone)]
pub struct Client {
    base: String,
    /// None: a request without a key (`corral login`).
    api_key: Option<String>,
    http: reqwest::Client,
    pub checksum: Option<CaChecksum>,
    /// The environment requests work in (sent as [`ENVIRONMENT_HEADER`]): names are looked up
    /// and listings cut to it. `None`: every environment the user has a role in.
    scope: Option<String>,
}

const HOW_TO: &str = "log in with `corral login --server URL --ca-checksum SHA --user NAME`, or on the server's machine run `set -a; . ./corral-data/admin.env; set +a` (or pass --server, --api-key and --ca-checksum)";

/// The connection flags, completed from what `corral login` saved: all of it when no server
/// is given, the key and checksum when the given server is the saved one (a saved key is never
/// sent to another server).
///
/// Also the environment to work in: `CORRAL_ENV`, else the one saved with the login (for its
/// own server only). A saved config that does not read stops every command, even one whose
/// flags are complete: the environment it names is not silently replaced by every one.
fn completed(conn: &Conn) -> anyhow::Result<(Conn, Option<String>)> {
    let mut conn = conn.clone();
    let from_env = std::env::var("CORRAL_ENV").ok().filter(|e| !e.is_empty());
    let Some(saved) = crate::config::load()? else {
        return Ok((conn, from_env));
    };
    let same = |s: &String| s.trim_end_matches('/') == saved.server.trim_end_matches('/');
    let mut scope = from_env;
    if conn.server.as_ref().is_none_or(same) {
        conn.server.get_or_insert_with(|| saved.server.clone());
        conn.api_key.get_or_insert_with(|| saved.api_key.clone());
        if conn.ca_checksum.is_none() {
            conn.ca_checksum = saved.ca_checksum.clone();
        }
        if scope.is_none() {
            scope = saved.env.clone();
        }
    }
    Ok((conn, scope))
}

impl Client {
    pub fn new(conn: &Conn) -> anyhow::Result<Client> {
        let (conn, scope) = completed(conn)?;
        let api_key = conn
            .api_key
            .clone()
            .ok_or_else(|| anyhow!("CORRAL_API_KEY is not set: {HOW_TO}"))?;
        let mut client = Client::with_key(&conn, Some(api_key))?;
        client.scope = scope;
        Ok(client)
    }

    /// The same client, working in `env` (a command's own `--env`).
    pub fn in_env(mut self, env: &str) -> Client {
        self.scope = Some(env.to_owned());
        self
    }

    /// The same client, working in every environment the user has a role in (for what belongs
    /// to none: the environments themselves, users, keys).
    pub fn unscoped(mut self) -> Client {
        self.scope = None;
        self
    }

    /// The request with the key and the working environment, when there are.
    fn identified(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let req = match &self.api_key {
            Some(key) => req.bearer_auth(key),
            None => req,
        };
        match &self.scope {
            Some(env) => req.header(ENVIRONMENT_HEADER, env),
            None => req,
        }
    }

    /// Whether the user has a role in the environment `name` (asked without a working
    /// environment, which might be the one being replaced).
    pub async fn has_role_in(&self, name: &str) -> anyhow::Result<bool> {
        let envs: Vec<corral_proto::api::EnvironmentView> =
            self.clone().unscoped().get("/v1/environments").await?;
        Ok(envs.iter().any(|e| e.name == name))
    }

    /// The environment requests work in, if one.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// A client that sends no key (for `corral login`), with the flags as given.
    pub fn anonymous(conn: &Conn) -> anyhow::Result<Client> {
        Client::with_key(conn, None)
    }

    fn with_key(conn: &Conn, api_key: Option<String>) -> anyhow::Result<Client> {
        corral_tls::install_default_provider();
        let base = conn
            .server
            .clone()
            .ok_or_else(|| anyhow!("CORRAL_SERVER is not set: {HOW_TO}"))?
            .trim_end_matches('/')
            .to_owned();
        let builder = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(60))
            .no_proxy();
        let (http, checksum) = if base.starts_with("https://") {
            let text = conn.ca_checksum.as_deref().ok_or_else(|| {
                anyhow!("CORRAL_CA_CHECKSUM is not set: the CLI trusts only the server CA it pins; {HOW_TO}")
            })?;
            let pin = CaChecksum::parse(text)?;
            let tls = corral_tls::client_config(pin)?;
            (builder.tls_backend_preconfigured(tls).build()?, Some(pin))
        } else if base.starts_with("http://") {
            (builder.build()?, None)
        } else {
            bail!(
                "CORRAL_SERVER {base:?} must start with https:// (or http:// behind a TLS proxy)"
            );
        };
        Ok(Client {
            base,
            api_key,
            http,
            checksum,
            scope: None,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let req = self.identified(req);
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow!(explain(&e)))
            .with_context(|| {
                format!(
                    "cannot reach the corral server at {} (is `corral server` running there, and is CORRAL_CA_CHECKSUM right?)",
                    self.base
                )
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or(text);
        bail!("{message} (HTTP {})", status.as_u16())
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        resp.json()
            .await
            .context("the server sent an unreadable answer")
    }

    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let resp = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        Ok(resp.text().await?)
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let resp = self
            .send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await?;
        resp.json()
            .await
            .context("the server sent an unreadable answer")
    }

    /// POST for operations that ask hosts before answering (`up` checks images on them).
    pub async fn post_long<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let resp = self
            .send(
                self.http
                    .post(format!("{}{path}", self.base))
                    .timeout(std::time::Duration::from_secs(300))
                    .json(body),
            )
            .await?;
        resp.json()
            .await
            .context("the server sent an unreadable answer")
    }

    /// POST with a body whose answer is ignored beyond its status.
    pub async fn post_no_content<B: Serialize>(&self, path: &str, body: &B) -> anyhow::Result<()> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await?;
        Ok(())
    }

    pub async fn put_no_content<B: Serialize>(&self, path: &str, body: &B) -> anyhow::Result<()> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await?;
        Ok(())
    }

    /// POST without a body; the answer is ignored beyond its status.
    pub async fn post_empty(&self, path: &str) -> anyhow::Result<()> {
        self.send(self.http.post(format!("{}{path}", self.base)))
            .await?;
        Ok(())
    }

    /// GET whose body is read as it arrives (no overall timeout: log streams may last).
    pub async fn get_stream(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        self.send(
            self.http
                .get(format!("{}{path}", self.base))
                .timeout(std::time::Duration::from_secs(365 * 86400)),
        )
        .await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let resp = self
            .send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await?;
        resp.json()
            .await
            .context("the server sent an unreadable answer")
    }

    /// Whether GET `path` answers 2xx (404: no).
    pub async fn exists(&self, path: &str) -> anyhow::Result<bool> {
        let resp = self
            .identified(self.http.get(format!("{}{path}", self.base)))
            .send()
            .await
            .map_err(|e| anyhow!(explain(&e)))
            .with_context(|| format!("cannot reach the corral server at {}", self.base))?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            s => {
                let text = resp.text().await.unwrap_or_default();
                let message = serde_json::from_str::<ErrorBody>(&text)
                    .map(|b| b.error)
                    .unwrap_or(text);
                bail!("{message} (HTTP {})", s.as_u16())
            }
        }
    }

    /// PUT raw bytes (a build context), with time for a large body.
    pub async fn put_bytes(&self, path: &str, body: Vec<u8>) -> anyhow::Result<()> {
        self.send(
            self.http
                .put(format!("{}{path}", self.base))
                .timeout(std::time::Duration::from_secs(600))
                .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
                .body(body),
        )
        .await?;
        Ok(())
    }

    /// DELETE whose answer has a body.
    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self
            .send(self.http.delete(format!("{}{path}", self.base)))
            .await?;
        resp.json()
            .await
            .context("the server sent an unreadable answer")
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await?;
        Ok(())
    }
}

/// Escapes one path segment (host names and ids are plain, but input is input).
pub fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The most useful line of a transport error: the pin mismatch or TLS failure when there is
/// one (hyper would otherwise show its debug form), else the innermost cause.
fn explain(err: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut innermost = err.to_string();
    while let Some(mut e) = source {
        // io::Error hides its payload from source(): look inside.
        while let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            e = inner;
        }
        if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
            e.downcast_ref::<rustls::Error>()
            && let Some(pin) = other.0.downcast_ref::<corral_tls::PinMismatch>()
        {
            return pin.to_string();
        }
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return format!("TLS: {r}");
        }
        innermost = e.to_string();
        source = e.source();
    }
    innermost
}
