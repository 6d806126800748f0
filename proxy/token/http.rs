//! `source = "http"`: a JSON endpoint (Vault KV v2, and any store that answers JSON); the
//! token is found by JSON pointer, its expiry optionally too. An object with AWS credentials
//! there (the container credentials endpoint's answer, `pointer = ""`) is kept whole.

use std::time::{Duration, SystemTime};

use http::{header, HeaderName, HeaderValue, Request, Uri};
use http_body_util::Full;

use crate::config::{self, SecretRef};
use crate::secret::Secret;
use crate::upstream::SourceClient;

use super::fetch::{exchange, parse_expiry};
use super::oauth2::redact_serde;
use super::Fetched;

pub struct HttpSource {
    url: Uri,
    headers: Vec<(HeaderName, SecretRef)>,
    pointer: String,
    expires_pointer: Option<String>,
    client: SourceClient,
    timeout: Duration,
}

impl std::fmt::Debug for HttpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSource").field("url", &self.url).field("pointer", &self.pointer).finish_non_exhaustive()
    }
}

impl HttpSource {
    pub fn new(c: &config::HttpSource, client: SourceClient) -> Result<HttpSource, String> {
        let headers = c
            .headers
            .iter()
            .map(|(k, v)| HeaderName::from_bytes(k.as_bytes()).map(|n| (n, v.clone())).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        Ok(HttpSource {
            url: c.url.parse().map_err(|e| format!("url: {e}"))?,
            headers,
            pointer: c.pointer.clone(),
            expires_pointer: c.expires_pointer.clone(),
            client,
            timeout: c.timeout,
        })
    }

    pub async fn fetch(&self) -> Result<Fetched, String> {
        let mut req = Request::get(self.url.clone()).header(header::ACCEPT, "application/json");
        for (name, reference) in &self.headers {
            let secret = reference.read().map_err(|e| format!("header {name}: {e}"))?;
            let mut value = HeaderValue::from_str(secret.expose())
                .map_err(|_| format!("header {name}: not a valid header value"))?;
            value.set_sensitive(true);
            req = req.header(name, value);
        }
        let req = req.body(Full::default()).map_err(|e| e.to_string())?;
        let now = SystemTime::now();
        let (status, bytes) = exchange(&self.client, req, self.timeout).await?;
        if !status.is_success() {
            return Err(format!("{} answered {status}", self.url));
        }
        let mut doc: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} answered with invalid JSON: {}", self.url, redact_serde(&e)))?;
        let expires_at = match &self.expires_pointer {
            Some(p) => match doc.pointer(p) {
                Some(serde_json::Value::Null) | None => None,
                Some(v) => Some(parse_expiry(v, now).map_err(|e| format!("{}: at {p}: {e}", self.url))?),
            },
            None => None,
        };
        let token = match doc.pointer_mut(&self.pointer).map(serde_json::Value::take) {
            Some(serde_json::Value::String(s)) => s,
            // AWS credentials (the container credentials endpoint's JSON): kept whole for a
            // route's SigV4 signer; `Expiration` is the expiry unless `expires_pointer` says.
            Some(creds) if crate::aws::is_credentials_json(&creds) => {
                let text = zeroize::Zeroizing::new(creds.to_string());
                let parsed = crate::aws::parse_credentials(&text).map_err(|e| format!("{}: {e}", self.url))?;
                return Ok(Fetched {
                    secret: Secret::new(text.to_string()),
                    expires_at: expires_at.or(parsed.expiration),
                });
            }
            Some(_) => return Err(format!("{}: the value at {} is not a string", self.url, self.pointer)),
            None => return Err(format!("{}: nothing at {}", self.url, self.pointer)),
        };
        if token.is_empty() {
            return Err(format!("{}: the value at {} is empty", self.url, self.pointer));
        }
        Ok(Fetched { secret: Secret::new(token), expires_at })
    }
}
