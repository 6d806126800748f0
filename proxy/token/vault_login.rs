//! `login = { vault_jwt = { path, role, jwt } }` on an `http` token: a Vault/OpenBao JWT (or
//! Kubernetes) auth login instead of a store token written in a file.
//!
//! The JWT is read at each login (the kubelet rotates it). The client token the login returns
//! lives in a [`Secret`] and is sent as `X-Vault-Token` on the KV read; a task of its own renews
//! it (`auth/token/renew-self`) at two thirds of its TTL, and logs in again when a renewal is
//! refused, or when renewals stop extending it (the role's `token_max_ttl`), before it expires.
//! The KV value's own refresh schedule is the token's, as without a login.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use http::{header, HeaderValue, Request, Uri};
use http_body_util::Full;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::config::{SecretRef, VaultJwtLogin};
use crate::secret::{zeroizing_bytes, Secret};
use crate::upstream::SourceClient;

use super::fetch::{excerpt, exchange};
use super::identity::{read_identity_token, Logins};
use super::SourceError;

/// The client token of the last good login, and what is done next with it.
struct Session {
    /// Kept for the error scrubbing and so that the header's bytes have one owner of record.
    token: Secret,
    header: HeaderValue,
    expires_at: SystemTime,
    /// The TTL the login granted: a renewal that grants less has reached the max TTL.
    granted: Duration,
    /// When the renewer acts next.
    next: Instant,
    /// Whether that act is a fresh login (renewal refused, capped, or not renewable).
    relogin: bool,
}

struct Inner {
    login_url: Uri,
    renew_url: Uri,
    role: String,
    jwt: SecretRef,
    client: SourceClient,
    timeout: Duration,
    logins: Arc<Logins>,
    session: tokio::sync::Mutex<Option<Session>>,
}

/// A Vault JWT login and its client token's renewal.
pub struct VaultLogin {
    inner: Arc<Inner>,
    renewer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for VaultLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultLogin").field("login_url", &self.inner.login_url).finish_non_exhaustive()
    }
}

impl Drop for VaultLogin {
    fn drop(&mut self) {
        if let Some(task) = self.renewer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

/// The `auth` object of a login or renewal answer.
#[derive(Deserialize)]
struct AuthAnswer {
    auth: Option<Auth>,
}

#[derive(Deserialize)]
struct Auth {
    client_token: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct VaultErrors {
    #[serde(default)]
    errors: Vec<String>,
}

impl VaultLogin {
    /// `store_url` is the `http` token's URL: the login goes to the same server.
    pub fn new(
        c: &VaultJwtLogin,
        store_url: &Uri,
        client: SourceClient,
        timeout: Duration,
        logins: Arc<Logins>,
    ) -> Result<VaultLogin, SourceError> {
        let base = format!(
            "{}://{}",
            store_url.scheme_str().unwrap_or("https"),
            store_url.authority().map(|a| a.as_str()).ok_or_else(|| SourceError::Config("url: no host".into()))?
        );
        let login_url = format!("{base}/v1/{}/login", c.path)
            .parse()
            .map_err(|e| SourceError::Config(format!("login.vault_jwt.path: {e}")))?;
        let renew_url =
            format!("{base}/v1/auth/token/renew-self").parse().map_err(|e| SourceError::Config(format!("url: {e}")))?;
        Ok(VaultLogin {
            inner: Arc::new(Inner {
                login_url,
                renew_url,
                role: c.role.clone(),
                jwt: c.jwt.clone(),
                client,
                timeout,
                logins,
                session: tokio::sync::Mutex::new(None),
            }),
            renewer: Mutex::new(None),
        })
    }

    /// The `X-Vault-Token` value: the current client token, or a fresh login's.
    pub async fn header(&self) -> Result<HeaderValue, SourceError> {
        let mut session = self.inner.session.lock().await;
        if let Some(s) = session.as_ref().filter(|s| SystemTime::now() < s.expires_at) {
            return Ok(s.header.clone());
        }
        let fresh = self.inner.login().await?;
        let header = fresh.header.clone();
        *session = Some(fresh);
        drop(session);
        self.ensure_renewer();
        Ok(header)
    }

    /// The store refused the client token (revoked, say): the next read logs in again.
    pub async fn refused(&self) {
        *self.inner.session.lock().await = None;
        self.inner.logins.clear_expiry();
    }

    fn ensure_renewer(&self) {
        let mut task = self.renewer.lock().unwrap_or_else(|e| e.into_inner());
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        *task = Some(tokio::spawn(renew_loop(weak)));
    }
}

/// Renews the client token, or logs in again, until there is no session or the login is
/// dropped (a reload replaced the token).
async fn renew_loop(weak: Weak<Inner>) {
    let mut failures = 0u32;
    loop {
        let next = {
            let Some(inner) = weak.upgrade() else { return };
            let session = inner.session.lock().await;
            match session.as_ref() {
                Some(s) => s.next,
                None => return,
            }
        };
        tokio::time::sleep_until(next.into()).await;
        let Some(inner) = weak.upgrade() else { return };
        let mut session = inner.session.lock().await;
        let Some(s) = session.as_mut() else { return };
        if Instant::now() < s.next {
            continue;
        }
        if !s.relogin {
            match inner.renew(s).await {
                Ok(()) => {
                    failures = 0;
                    continue;
                }
                Err(e) => {
                    tracing::info!(token = %inner.logins.token(), error = %e, "client token renewal refused; logging in again")
                }
            }
        }
        match inner.login().await {
            Ok(fresh) => {
                failures = 0;
                *session = Some(fresh);
            }
            Err(_) if SystemTime::now() >= s.expires_at => {
                // Nothing left to renew: the next read of the store logs in (and restarts this).
                *session = None;
                inner.logins.clear_expiry();
                return;
            }
            Err(_) => {
                failures += 1;
                s.relogin = true;
                s.next = Instant::now() + super::schedule::backoff(failures);
            }
        }
    }
}

impl Inner {
    async fn login(&self) -> Result<Session, SourceError> {
        let result = self.try_login().await;
        match &result {
            Ok(s) => self.logins.succeeded(Some(s.expires_at), true),
            Err(e) => self.logins.failed(&e.to_string()),
        }
        result
    }

    async fn try_login(&self) -> Result<Session, SourceError> {
        let jwt = read_identity_token("login.vault_jwt.jwt", &self.jwt)?;
        let json = |e: serde_json::Error| SourceError::Config(e.to_string());
        // Sized for the worst escaping up front, so the buffer holding the JWT never moves.
        let mut body = Zeroizing::new(Vec::with_capacity(jwt.expose().len() * 6 + self.role.len() * 6 + 32));
        body.extend_from_slice(b"{\"role\":");
        serde_json::to_writer(&mut *body, &self.role).map_err(json)?;
        body.extend_from_slice(b",\"jwt\":");
        serde_json::to_writer(&mut *body, jwt.expose()).map_err(json)?;
        body.push(b'}');
        let req = Request::post(self.login_url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(zeroizing_bytes(body)))
            .map_err(|e| SourceError::Config(e.to_string()))?;
        let (status, bytes) = exchange(&self.client, req, self.timeout).await.map_err(|e| e.scrub(&[&jwt]))?;
        if !status.is_success() {
            return Err(SourceError::Refused {
                by: format!("login at {}", self.login_url),
                status,
                detail: Some(vault_errors(&bytes)),
            }
            .scrub(&[&jwt]));
        }
        let now = Instant::now();
        let auth =
            parse_auth(&bytes).map_err(|e| SourceError::Malformed(format!("login at {}: {e}", self.login_url)))?;
        let (token, lease, renewable) = auth;
        let header = token.render_header("{token}").map_err(|source| SourceError::Unusable {
            what: format!("login at {}: client token", self.login_url),
            source,
        })?;
        Ok(Session {
            header,
            token,
            expires_at: SystemTime::now() + lease,
            granted: lease,
            next: now + lease * 2 / 3,
            relogin: !renewable,
        })
    }

    async fn renew(&self, s: &mut Session) -> Result<(), SourceError> {
        let req = Request::post(self.renew_url.clone())
            .header("x-vault-token", s.header.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes::Bytes::from_static(b"{}")))
            .map_err(|e| SourceError::Config(e.to_string()))?;
        let (status, bytes) = exchange(&self.client, req, self.timeout).await?;
        if !status.is_success() {
            return Err(SourceError::Refused { by: "renewal".into(), status, detail: Some(vault_errors(&bytes)) }
                .scrub(&[&s.token]));
        }
        let (token, lease, renewable) = parse_auth(&bytes).map_err(SourceError::Malformed)?;
        if token != s.token {
            return Err(SourceError::Malformed("renewal answered with another client token".into()));
        }
        let now = Instant::now();
        s.expires_at = SystemTime::now() + lease;
        s.next = now + lease * 2 / 3;
        // A renewal that grants less than the login did has met the max TTL: log in again
        // before the token runs out.
        s.relogin = !renewable || lease < s.granted;
        self.logins.renewed(s.expires_at);
        tracing::debug!(token = %self.logins.token(), ttl_secs = lease.as_secs(), "client token renewed");
        Ok(())
    }
}

/// The client token, its TTL and whether it is renewable, from a login or renewal answer.
fn parse_auth(bytes: &[u8]) -> Result<(Secret, Duration, bool), String> {
    let answer: AuthAnswer = serde_json::from_slice(bytes)
        .map_err(|e| format!("the answer is not Vault's JSON: {}", super::oauth2::redact_serde(&e)))?;
    let auth = answer.auth.ok_or("the answer has no `auth`")?;
    let lease = Duration::from_secs(auth.lease_duration);
    let (renewable, token) = (auth.renewable, auth.client_token);
    if token.is_empty() {
        return Err("the answer has an empty client token".into());
    }
    // A token without a TTL (a root-like token) is never renewed; it is still re-read on the
    // token's own refresh schedule only when refused.
    let lease = if lease.is_zero() { Duration::from_secs(3600 * 24 * 365) } else { lease };
    Ok((Secret::new(token), lease, renewable && !lease.is_zero()))
}

/// Vault's `errors` array, or a note that there is none.
fn vault_errors(bytes: &[u8]) -> String {
    match serde_json::from_slice::<VaultErrors>(bytes) {
        Ok(e) if !e.errors.is_empty() => excerpt(&e.errors.join("; ")),
        _ => "no Vault error in the answer".to_owned(),
    }
}
