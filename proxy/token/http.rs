//! `source = "http"`: a JSON endpoint (Vault KV v2, and any store that answers JSON); the
//! token is found by JSON pointer, its expiry optionally too. An object with AWS credentials
//! there (the container credentials endpoint's answer, `pointer = ""`) is kept whole. With
//! `aws_imds = true` the EC2 instance metadata service is asked IMDSv2's way.

use std::time::{Duration, SystemTime};

use http::{header, HeaderName, HeaderValue, Request, Uri};
use http_body_util::Full;

use crate::config::{self, SecretRef};
use crate::secret::Secret;
use crate::upstream::SourceClient;

use super::fetch::{exchange, parse_expiry};
use super::oauth2::redact_serde;
use super::{Fetched, SourceError};

pub struct HttpSource {
    url: Uri,
    headers: Vec<(HeaderName, SecretRef)>,
    pointer: String,
    expires_pointer: Option<String>,
    client: SourceClient,
    timeout: Duration,
    aws_imds: bool,
    /// A Vault JWT login whose client token is sent as `X-Vault-Token`.
    login: Option<super::vault_login::VaultLogin>,
}

/// How long an IMDSv2 session token is asked to live: one fetch needs it for a moment.
const IMDS_TOKEN_TTL_SECS: &str = "60";

impl std::fmt::Debug for HttpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSource").field("url", &self.url).field("pointer", &self.pointer).finish_non_exhaustive()
    }
}

impl HttpSource {
    pub fn new(
        c: &config::HttpSource,
        client: SourceClient,
        logins: Option<std::sync::Arc<super::identity::Logins>>,
    ) -> Result<HttpSource, SourceError> {
        let headers = c
            .headers
            .iter()
            .map(|(k, v)| {
                HeaderName::from_bytes(k.as_bytes())
                    .map(|n| (n, v.clone()))
                    .map_err(|e| SourceError::Config(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let url: Uri = c.url.parse().map_err(|e| SourceError::Config(format!("url: {e}")))?;
        let login = match (&c.login, logins) {
            (Some(l), Some(logins)) => {
                Some(super::vault_login::VaultLogin::new(&l.vault_jwt, &url, client.clone(), c.timeout, logins)?)
            }
            _ => None,
        };
        Ok(HttpSource {
            url,
            login,
            headers,
            pointer: c.pointer.clone(),
            expires_pointer: c.expires_pointer.clone(),
            client,
            timeout: c.timeout,
            aws_imds: c.aws_imds,
        })
    }

    /// IMDSv2: a session token (PUT `/latest/api/token`), and the URL to read, the first role
    /// of the listing when `url` ends in `/`.
    async fn imds(&self) -> Result<(Uri, HeaderValue), SourceError> {
        let mut token_url = http::uri::Parts::from(self.url.clone());
        token_url.path_and_query = Some(http::uri::PathAndQuery::from_static("/latest/api/token"));
        let token_url = Uri::from_parts(token_url).map_err(|e| SourceError::Config(e.to_string()))?;
        let req = Request::put(token_url)
            .header("x-aws-ec2-metadata-token-ttl-seconds", IMDS_TOKEN_TTL_SECS)
            .body(Full::default())
            .map_err(|e| SourceError::Config(e.to_string()))?;
        let (status, body) = exchange(&self.client, req, self.timeout).await?;
        if !status.is_success() {
            return Err(SourceError::Refused {
                by: format!("{}: the metadata token request", self.url),
                status,
                detail: None,
            });
        }
        let mut token = HeaderValue::from_bytes(body.trim_ascii())
            .map_err(|_| SourceError::Malformed(format!("{}: the metadata token is not a header value", self.url)))?;
        token.set_sensitive(true);
        if !self.url.path().ends_with('/') {
            return Ok((self.url.clone(), token));
        }
        let req = Request::get(self.url.clone())
            .header("x-aws-ec2-metadata-token", token.clone())
            .body(Full::default())
            .map_err(|e| SourceError::Config(e.to_string()))?;
        let (status, body) = exchange(&self.client, req, self.timeout).await?;
        if !status.is_success() {
            return Err(SourceError::Refused { by: self.url.to_string(), status, detail: None });
        }
        let listing = String::from_utf8_lossy(&body);
        let role = listing
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .ok_or_else(|| SourceError::Malformed(format!("{}: no role", self.url)))?;
        let url = format!("{}{role}", self.url)
            .parse()
            .map_err(|_| SourceError::Malformed(format!("{}: the role name is not a path", self.url)))?;
        Ok((url, token))
    }

    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        let (url, imds_token) = match self.aws_imds {
            true => {
                let (url, token) = self.imds().await?;
                (url, Some(token))
            }
            false => (self.url.clone(), None),
        };
        let mut req = Request::get(url).header(header::ACCEPT, "application/json");
        if let Some(token) = imds_token {
            req = req.header("x-aws-ec2-metadata-token", token);
        }
        for (name, reference) in &self.headers {
            let secret = reference
                .read()
                .map_err(|reason| SourceError::Unreadable { what: format!("header {name}"), reason })?;
            let mut value = HeaderValue::from_str(secret.expose()).map_err(|_| SourceError::Unreadable {
                what: format!("header {name}"),
                reason: "not a valid header value".into(),
            })?;
            value.set_sensitive(true);
            req = req.header(name, value);
        }
        if let Some(login) = &self.login {
            req = req.header("x-vault-token", login.header().await?);
        }
        let req = req.body(Full::default()).map_err(|e| SourceError::Config(e.to_string()))?;
        let now = SystemTime::now();
        let (status, bytes) = exchange(&self.client, req, self.timeout).await?;
        if let (Some(login), 401 | 403) = (&self.login, status.as_u16()) {
            // The client token was revoked or has lapsed: the next read logs in again.
            login.refused().await;
        }
        if !status.is_success() {
            return Err(SourceError::Refused { by: self.url.to_string(), status, detail: None });
        }
        let mut doc: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            SourceError::Malformed(format!("{} answered with invalid JSON: {}", self.url, redact_serde(&e)))
        })?;
        let expires_at = match &self.expires_pointer {
            Some(p) => match doc.pointer(p) {
                Some(serde_json::Value::Null) | None => None,
                Some(v) => Some(
                    parse_expiry(v, now).map_err(|e| SourceError::Malformed(format!("{}: at {p}: {e}", self.url)))?,
                ),
            },
            None => None,
        };
        let token = match doc.pointer_mut(&self.pointer).map(serde_json::Value::take) {
            Some(serde_json::Value::String(s)) => s,
            // AWS credentials (the container credentials endpoint's JSON): kept whole for a
            // route's SigV4 signer; `Expiration` is the expiry unless `expires_pointer` says.
            Some(creds) if crate::token::aws_credentials::is_credentials_json(&creds) => {
                let text = zeroize::Zeroizing::new(creds.to_string());
                let parsed = crate::token::aws_credentials::parse_credentials(&text)
                    .map_err(|e| SourceError::Malformed(format!("{}: {e}", self.url)))?;
                return Ok(Fetched {
                    secret: Secret::new(text.to_string()),
                    expires_at: expires_at.or(parsed.expiration),
                });
            }
            Some(_) => {
                return Err(SourceError::Malformed(format!(
                    "{}: the value at {} is not a string",
                    self.url, self.pointer
                )))
            }
            None => return Err(SourceError::Malformed(format!("{}: nothing at {}", self.url, self.pointer))),
        };
        if token.is_empty() {
            return Err(SourceError::Malformed(format!("{}: the value at {} is empty", self.url, self.pointer)));
        }
        Ok(Fetched { secret: Secret::new(token), expires_at })
    }
}
