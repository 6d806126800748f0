//! What the workload-identity forms share: reading the identity token (a JWT the platform
//! projects into the pod and rotates) at each login, and the bookkeeping of logins (the
//! `sidekey_token_logins_total` counter, the `login` and `login_failed` audit events, the
//! expiry of a separate login's own token for `/tokens`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;

use crate::audit::Audit;
use crate::config::{SecretRef, SourceConfig};
use crate::secret::Secret;

use super::SourceError;

/// The login record of one token.
pub struct Logins {
    token: Arc<str>,
    /// `/tokens`' `identity`: `vault_jwt`, `aws_web_identity`, `client_assertion`,
    /// `private_key_jwt` or `token_exchange`.
    kind: &'static str,
    audit: Option<Audit>,
    /// When the login's own token (a Vault client token) expires.
    expires_at: Mutex<Option<SystemTime>>,
}

impl std::fmt::Debug for Logins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logins").field("token", &self.token).field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl Logins {
    /// The login record a token of this config needs: `None` for the forms without a login.
    pub fn for_source(token: &str, source: &SourceConfig, audit: Option<Audit>) -> Option<Arc<Logins>> {
        let kind = match source {
            SourceConfig::Http(h) if h.login.is_some() => "vault_jwt",
            SourceConfig::AwsWebIdentity(_) => "aws_web_identity",
            SourceConfig::OAuth2(o) if o.client_assertion.is_some() => "client_assertion",
            SourceConfig::OAuth2(o) if o.private_key_jwt.is_some() => "private_key_jwt",
            SourceConfig::TokenExchange(_) => "token_exchange",
            _ => return None,
        };
        Some(Logins::new(token, kind, audit))
    }

    pub fn new(token: &str, kind: &'static str, audit: Option<Audit>) -> Arc<Logins> {
        for result in ["success", "failure"] {
            metrics::counter!("sidekey_token_logins_total", "token" => token.to_owned(), "result" => result)
                .increment(0);
        }
        Arc::new(Logins { token: token.into(), kind, audit, expires_at: Mutex::new(None) })
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The expiry of the login's own token, where there is one.
    pub fn expires_at(&self) -> Option<SystemTime> {
        *self.expires_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the login's expiry (its token was refused or has expired).
    pub fn clear_expiry(&self) {
        *self.expires_at.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Records a good login; `expires_at` is its own token's expiry (Vault), if any.
    pub fn succeeded(&self, expires_at: Option<SystemTime>, track_expiry: bool) {
        if track_expiry {
            *self.expires_at.lock().unwrap_or_else(|e| e.into_inner()) = expires_at;
        }
        metrics::counter!("sidekey_token_logins_total", "token" => self.token.to_string(), "result" => "success")
            .increment(1);
        tracing::info!(token = %self.token, identity = self.kind, "logged in");
        self.audit(
            "login",
            [
                ("identity", self.kind.into()),
                ("expires_at", expires_at.map(|e| humantime::format_rfc3339_seconds(e).to_string()).into()),
            ],
        );
    }

    /// Records a renewal of the login's own token: a new expiry, not a login.
    pub fn renewed(&self, expires_at: SystemTime) {
        *self.expires_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(expires_at);
    }

    /// Records a failed login. `error` must already be free of secrets (see [`scrub`]).
    pub fn failed(&self, error: &str) {
        metrics::counter!("sidekey_token_logins_total", "token" => self.token.to_string(), "result" => "failure")
            .increment(1);
        tracing::warn!(token = %self.token, identity = self.kind, error, "login failed");
        self.audit("login_failed", [("identity", self.kind.into()), ("error", error.into())]);
    }

    fn audit<const N: usize>(&self, event: &'static str, pairs: [(&str, serde_json::Value); N]) {
        if let Some(a) = &self.audit {
            let mut fields = super::audit_fields(pairs);
            fields.insert("token".into(), self.token.to_string().into());
            a.event(event, fields, false);
        }
    }
}

/// Reads an identity token now (the platform rotates the file: it is read at each login).
/// A JWT whose `exp` has passed is refused here, with a message that says so, rather than
/// sent to be refused by the server with a vaguer one. Errors name the file, never the value.
pub fn read_identity_token(what: &str, r: &SecretRef) -> Result<Secret, SourceError> {
    let token = r.read().map_err(|reason| SourceError::Unreadable { what: what.to_owned(), reason })?;
    if let Some(exp) = jwt_expiry(token.expose()) {
        if exp <= SystemTime::now() {
            return Err(SourceError::IdentityExpired { what: format!("{what} {}", describe(r)), at: exp });
        }
    }
    Ok(token)
}

/// Where a reference points, for messages.
pub fn describe(r: &SecretRef) -> String {
    match r {
        SecretRef::Env(v) => format!("(environment variable {v})"),
        SecretRef::File(p) => format!("({})", p.display()),
    }
}

/// The `exp` claim of a JWT, read without checking its signature (the server checks that);
/// `None` for a value that is not a JWT or has no numeric `exp`.
fn jwt_expiry(jwt: &str) -> Option<SystemTime> {
    let mut parts = jwt.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let raw = zeroize::Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?);
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<f64>,
    }
    let exp = serde_json::from_slice::<Claims>(&raw).ok()?.exp?;
    (exp.is_finite() && exp >= 0.0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b(r#"{"alg":"RS256"}"#), b(claims))
    }

    #[test]
    fn an_expired_identity_token_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let r = SecretRef::File(path.clone());
        let e = read_identity_token("jwt", &r).unwrap_err().to_string();
        assert!(e.contains("cannot read") && e.contains(path.to_str().unwrap()), "{e}");
        let old = jwt(r#"{"exp":1000,"sub":"x"}"#);
        std::fs::write(&path, &old).unwrap();
        let e = read_identity_token("jwt", &r).unwrap_err().to_string();
        assert!(e.contains("expired at 1970-01-01T00:16:40Z"), "{e}");
        assert!(!e.contains(&old));
        let fresh = jwt(&format!(r#"{{"exp":{}}}"#, unix_now() + 600));
        std::fs::write(&path, &fresh).unwrap();
        assert_eq!(read_identity_token("jwt", &r).unwrap().expose(), fresh);
        // Not a JWT: passed on for the server to judge.
        std::fs::write(&path, "opaque-token").unwrap();
        assert!(read_identity_token("jwt", &r).is_ok());
    }

    fn unix_now() -> u64 {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
    }
}
