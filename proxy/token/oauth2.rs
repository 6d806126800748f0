//! `source = "oauth2"`: the client-credentials grant (RFC 6749 section 4.4).

use std::time::{Duration, SystemTime};

use base64::Engine;
use http::{header, HeaderValue, Request, StatusCode, Uri};
use http_body_util::Full;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::config::{self, ClientAuth, SecretRef};
use crate::secret::{zeroizing_bytes, Secret};
use crate::upstream::SourceClient;

use super::assertion::{ClientAssertion, JWT_BEARER};
use super::fetch::{excerpt, exchange};
use super::{Fetched, SourceError};

pub struct OAuth2Source {
    token_url: Uri,
    client_id: String,
    auth: Authentication,
    /// The logins of a client authenticated by assertion (each token request is one).
    logins: Option<std::sync::Arc<super::identity::Logins>>,
    /// Form parameters besides the credentials: grant_type, scope, audience, extras.
    params: Vec<(String, String)>,
    client: SourceClient,
    timeout: Duration,
}

impl std::fmt::Debug for OAuth2Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2Source")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// How the client authenticates (exactly one way, as the config check ensures).
#[derive(Debug)]
enum Authentication {
    Secret { secret: SecretRef, method: ClientAuth },
    Assertion(ClientAssertion),
}

/// The parts of a token response sidekey reads.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

/// An error response (RFC 6749 section 5.2).
#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

impl OAuth2Source {
    pub fn new(
        c: &config::OAuth2Source,
        client: SourceClient,
        logins: Option<std::sync::Arc<super::identity::Logins>>,
    ) -> Result<OAuth2Source, SourceError> {
        let mut params = vec![("grant_type".to_owned(), "client_credentials".to_owned())];
        if let Some(s) = &c.scope {
            params.push(("scope".into(), s.clone()));
        }
        if let Some(a) = &c.audience {
            params.push(("audience".into(), a.clone()));
        }
        params.extend(c.params.iter().map(|(k, v)| (k.clone(), v.clone())));
        let auth = match (&c.client_secret, &c.client_assertion, &c.private_key_jwt) {
            (Some(secret), _, _) => {
                Authentication::Secret { secret: secret.clone(), method: c.auth_method.unwrap_or_default() }
            }
            (None, Some(r), _) => Authentication::Assertion(ClientAssertion::Federated(r.clone())),
            (None, None, Some(k)) => Authentication::Assertion(ClientAssertion::Signed {
                key: k.key.clone(),
                alg: k.alg,
                client_id: c.client_id.clone(),
                audience: c.token_url.clone(),
            }),
            (None, None, None) => return Err(SourceError::Config("no client authentication".into())),
        };
        Ok(OAuth2Source {
            token_url: c.token_url.parse().map_err(|e| SourceError::Config(format!("token_url: {e}")))?,
            client_id: c.client_id.clone(),
            auth,
            logins,
            params,
            client,
            timeout: c.timeout,
        })
    }

    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        let result = match &self.auth {
            Authentication::Secret { secret, method } => self.fetch_with_secret(secret, *method).await,
            Authentication::Assertion(a) => self.fetch_with_assertion(a).await,
        };
        if let Some(logins) = &self.logins {
            match &result {
                Ok(_) => logins.succeeded(None, false),
                Err(e) => logins.failed(&e.to_string()),
            }
        }
        result
    }

    async fn fetch_with_assertion(&self, assertion: &ClientAssertion) -> Result<Fetched, SourceError> {
        // Made (or read) at every request: the platform rotates a federated token, and a
        // signed one is valid for a minute.
        let jwt = assertion.produce()?;
        let mut form = Form::with_capacity(
            self.params.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
                + self.client_id.len()
                + JWT_BEARER.len()
                + jwt.expose().len(),
        );
        for (k, v) in &self.params {
            form.append(k, v);
        }
        form.append("client_id", &self.client_id);
        form.append("client_assertion_type", JWT_BEARER);
        form.append("client_assertion", jwt.expose());
        let req = form.post(&self.token_url, Some("application/json"))?;
        let now = SystemTime::now();
        let (status, bytes) = exchange(&self.client, req, self.timeout).await.map_err(|e| e.scrub(&[&jwt]))?;
        token_answer(&self.token_url, status, &bytes, now).map_err(|e| e.scrub(&[&jwt]))
    }

    async fn fetch_with_secret(&self, client_secret: &SecretRef, method: ClientAuth) -> Result<Fetched, SourceError> {
        // Read on every fetch, so a rotated client secret is picked up.
        let secret =
            client_secret.read().map_err(|reason| SourceError::Unreadable { what: "client_secret".into(), reason })?;
        let mut form = Form::with_capacity(
            self.params.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
                + self.client_id.len()
                + secret.expose().len(),
        );
        for (k, v) in &self.params {
            form.append(k, v);
        }
        let mut req = Request::post(self.token_url.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json");
        match method {
            ClientAuth::ClientSecretBasic => {
                // RFC 6749 2.3.1: both parts form-encoded before base64.
                let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let pair = Zeroizing::new(format!("{}:{}", enc(&self.client_id), enc(secret.expose())));
                let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()));
                let mut value = HeaderValue::from_maybe_shared(zeroizing_bytes(Zeroizing::new(
                    format!("Basic {}", b64.as_str()).into_bytes(),
                )))
                .map_err(|_| SourceError::Config("client credentials are not valid in a header".to_owned()))?;
                value.set_sensitive(true);
                req = req.header(header::AUTHORIZATION, value);
            }
            ClientAuth::ClientSecretPost => {
                form.append("client_id", &self.client_id);
                form.append("client_secret", secret.expose());
            }
        }
        let body = zeroizing_bytes(form.into_bytes());
        let req = req.body(Full::new(body)).map_err(|e| SourceError::Config(e.to_string()))?;
        let now = SystemTime::now();
        let (status, bytes) = exchange(&self.client, req, self.timeout).await.map_err(|e| e.scrub(&[&secret]))?;
        token_answer(&self.token_url, status, &bytes, now).map_err(|e| e.scrub(&[&secret]))
    }
}

/// A token endpoint's answer (RFC 6749 section 5): the access token and its expiry, or the
/// OAuth2 error it gave.
pub(super) fn token_answer(
    token_url: &Uri,
    status: StatusCode,
    bytes: &[u8],
    now: SystemTime,
) -> Result<Fetched, SourceError> {
    if !status.is_success() {
        let detail = match serde_json::from_slice::<ErrorResponse>(bytes) {
            Ok(e) => match e.error_description {
                Some(d) => format!("{}: {}", excerpt(&e.error), excerpt(&d)),
                None => excerpt(&e.error),
            },
            Err(_) => "no OAuth2 error in the answer".to_owned(),
        };
        return Err(SourceError::Refused { by: format!("token endpoint {token_url}"), status, detail: Some(detail) });
    }
    let parsed: TokenResponse = serde_json::from_slice(bytes).map_err(|e| {
        SourceError::Malformed(format!(
            "token endpoint {token_url} answered without a usable access_token: {}",
            redact_serde(&e)
        ))
    })?;
    let expires_at = match &parsed.expires_in {
        Some(v) => {
            Some(super::fetch::parse_expiry(v, now).map_err(|e| SourceError::Malformed(format!("expires_in: {e}")))?)
        }
        None => None,
    };
    Ok(Fetched { secret: Secret::new(parsed.access_token), expires_at })
}

/// An `application/x-www-form-urlencoded` body in a zeroizing buffer, sized up front so it
/// never reallocates (a reallocation would leave a copy of the client secret behind).
pub(super) struct Form(Zeroizing<Vec<u8>>);

impl Form {
    pub(super) fn with_capacity(raw_len: usize) -> Form {
        // Percent-encoding at most triples a byte; names, `=` and `&` fit in the slack.
        Form(Zeroizing::new(Vec::with_capacity(raw_len * 3 + 256)))
    }

    pub(super) fn append(&mut self, key: &str, value: &str) {
        if !self.0.is_empty() {
            self.0.push(b'&');
        }
        for part in url::form_urlencoded::byte_serialize(key.as_bytes()) {
            self.0.extend_from_slice(part.as_bytes());
        }
        self.0.push(b'=');
        for part in url::form_urlencoded::byte_serialize(value.as_bytes()) {
            self.0.extend_from_slice(part.as_bytes());
        }
    }

    pub(super) fn into_bytes(self) -> Zeroizing<Vec<u8>> {
        self.0
    }

    /// A POST of this form to `url`, asking for `accept` where given.
    pub(super) fn post(
        self,
        url: &Uri,
        accept: Option<&'static str>,
    ) -> Result<Request<Full<bytes::Bytes>>, SourceError> {
        let mut req = Request::post(url.clone()).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(accept) = accept {
            req = req.header(header::ACCEPT, accept);
        }
        req.body(Full::new(zeroizing_bytes(self.into_bytes()))).map_err(|e| SourceError::Config(e.to_string()))
    }
}

/// A serde_json error without the input it quotes (which could be a token).
pub fn redact_serde(e: &serde_json::Error) -> String {
    format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_quoting_the_assertion_does_not_show_it() {
        let jwt = Secret::new("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLWJ5dGVz".into());
        let body =
            format!(r#"{{"error":"invalid_client","error_description":"assertion {} is not trusted"}}"#, jwt.expose());
        let url: Uri = "http://127.0.0.1:1/token".parse().unwrap();
        let refused = token_answer(&url, StatusCode::UNAUTHORIZED, body.as_bytes(), SystemTime::now()).err().unwrap();
        // As the sources that send an assertion return it.
        let text = refused.scrub(&[&jwt]).to_string();
        assert!(!text.contains(jwt.expose()), "{text}");
        assert_eq!(
            text,
            "token endpoint http://127.0.0.1:1/token answered 401 Unauthorized: invalid_client: assertion <redacted> is not trusted"
        );
    }
}
