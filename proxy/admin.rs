//! The admin API: health, readiness, metrics, token status, forced refresh, dashboard.
//!
//! Nothing here ever renders a token value: only names, states, generations and
//! fingerprints. With `[admin] token` set, every endpoint but `/healthz` and `/readyz` (the
//! kubelet's probes) requires it, as `Authorization: Bearer TOKEN` (Prometheus, curl) or as
//! the password of HTTP Basic (so a browser can open the dashboard: it asks once, then sends
//! it with the dashboard's own requests).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use crate::upstream::ProxyBody;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::live::Live;
use crate::token::{Refreshed, Token};

/// The dashboard: one self-contained page (inline CSS and script, no outside assets) that
/// polls `/tokens`, `/routes` and `/readyz`.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The admin service: cheap to clone, one per connection.
#[derive(Clone)]
pub struct Admin {
    live: Arc<Live>,
}

type AdminResponse = Response<Full<Bytes>>;

impl Admin {
    pub fn new(live: Arc<Live>) -> Admin {
        Admin { live }
    }

    pub async fn handle(&self, req: Request<ProxyBody>) -> AdminResponse {
        let hosts = self.live.admin_hosts();
        let authority = req.uri().authority().map(|a| a.as_str());
        if let Some(why) = crate::admin_guard::refusal(req.method(), authority, req.headers(), &hosts) {
            return json_body(StatusCode::FORBIDDEN, &json!({"error": "forbidden", "message": why}));
        }
        let path = req.uri().path();
        match (req.method(), path) {
            (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
            (&Method::GET | &Method::HEAD, "/readyz") => self.readyz(),
            _ => match self.refusal(req.headers()) {
                None => self.handle_authorized(req).await,
                Some(refusal) => refusal,
            },
        }
    }

    /// Checks the request's credential against `[admin] token`, read now (a mounted Secret
    /// that was rotated applies from the next request): the answer refusing it, if it fails.
    fn refusal(&self, headers: &http::HeaderMap) -> Option<AdminResponse> {
        let reference = self.live.admin_token()?;
        let expected = match reference.read() {
            Ok(t) => t,
            Err(e) => {
                // The reference and why it failed; never a value.
                tracing::error!(error = %e, "cannot read the admin token; refusing admin requests");
                return Some(json_body(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"error": "admin_token_unavailable", "message": "the admin token cannot be read; see the log"}),
                ));
            }
        };
        let presented = headers.get(header::AUTHORIZATION).and_then(|v| presented_secret(v.as_bytes()));
        match presented {
            Some(p) if same_secret(&p, expected.expose().as_bytes()) => None,
            _ => {
                let mut resp = json_body(
                    StatusCode::UNAUTHORIZED,
                    &json!({"error": "unauthorized", "message": "the admin API needs the [admin] token"}),
                );
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"sidekey admin\", charset=\"UTF-8\""),
                );
                Some(resp)
            }
        }
    }

    async fn handle_authorized(&self, req: Request<ProxyBody>) -> AdminResponse {
        let path = req.uri().path();
        match (req.method(), path) {
            (&Method::GET | &Method::HEAD, "/metrics") => {
                text(StatusCode::OK, "text/plain; version=0.0.4", crate::metrics::render())
            }
            (&Method::GET | &Method::HEAD, "/tokens") => {
                let list: Vec<Value> = self.live.tokens().iter().map(|t| token_json(t)).collect();
                json_body(StatusCode::OK, &Value::Array(list))
            }
            (&Method::GET | &Method::HEAD, "/") => text(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD.into()),
            (&Method::GET | &Method::HEAD, "/routes") => json_body(StatusCode::OK, &self.live.routes_json()),
            (&Method::GET | &Method::HEAD, "/audit") => match self.live.audit_head() {
                Some(head) => json_body(StatusCode::OK, &json!(head)),
                None => json_body(
                    StatusCode::NOT_FOUND,
                    &json!({"error": "no_audit", "message": "[audit] is not configured"}),
                ),
            },
            (&Method::GET | &Method::HEAD, "/intercept") => match &self.live.intercept {
                Some(i) => json_body(StatusCode::OK, &i.status_json()),
                None => json_body(StatusCode::OK, &json!({ "enabled": false })),
            },
            (&Method::GET | &Method::HEAD, "/intercept/ca.crt") => match &self.live.intercept {
                Some(i) => text(StatusCode::OK, "application/x-pem-file", i.ca_cert_pem()),
                None => json_body(
                    StatusCode::NOT_FOUND,
                    &json!({"error": "no_intercept", "message": "[intercept] is not configured"}),
                ),
            },
            (&Method::POST, p) if p.starts_with("/tokens/") && p.ends_with("/refresh") => {
                let name = &p["/tokens/".len()..p.len() - "/refresh".len()];
                match self.live.tokens().get(name) {
                    Some(t) => {
                        let t = t.clone();
                        let outcome = t.refresh().await;
                        let (result, code) = match &outcome {
                            Refreshed::Rotated { .. } => ("rotated", StatusCode::OK),
                            Refreshed::Unchanged { .. } => ("unchanged", StatusCode::OK),
                            Refreshed::Failed { .. } => ("failed", StatusCode::BAD_GATEWAY),
                            Refreshed::Rejected { .. } => ("rejected", StatusCode::BAD_GATEWAY),
                        };
                        let mut body = token_json(&t);
                        body["result"] = json!(result);
                        json_body(code, &body)
                    }
                    None => json_body(
                        StatusCode::NOT_FOUND,
                        &json!({"error": "no_token", "message": "no token of that name"}),
                    ),
                }
            }
            (
                _,
                "/healthz" | "/readyz" | "/metrics" | "/tokens" | "/routes" | "/audit" | "/intercept"
                | "/intercept/ca.crt" | "/",
            ) => json_body(StatusCode::METHOD_NOT_ALLOWED, &json!({"error": "method_not_allowed"})),
            _ => json_body(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
        }
    }

    fn readyz(&self) -> AdminResponse {
        let draining = self.live.draining.load(Ordering::SeqCst);
        let tokens = self.live.tokens();
        let not_ready = tokens.not_ready();
        if draining || !not_ready.is_empty() {
            json_body(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"ready": false, "draining": draining, "not_ready": not_ready}),
            )
        } else {
            json_body(StatusCode::OK, &json!({"ready": true}))
        }
    }
}

/// The secret a client presented: a Bearer token, or the password of Basic credentials (any
/// user name). Held in a zeroizing buffer.
fn presented_secret(value: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    use base64::Engine;
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    let rest = rest.trim_ascii();
    if scheme.eq_ignore_ascii_case(b"bearer") {
        Some(Zeroizing::new(rest.to_vec()))
    } else if scheme.eq_ignore_ascii_case(b"basic") {
        let decoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(rest).ok()?);
        let colon = decoded.iter().position(|&b| b == b':')?;
        Some(Zeroizing::new(decoded[colon + 1..].to_vec()))
    } else {
        None
    }
}

/// Compares two secrets in time that depends on neither (their SHA-256 digests are compared
/// byte for byte without an early exit).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let (da, db) = (Sha256::digest(a), Sha256::digest(b));
    da.iter().zip(db.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The contract's `/tokens` object for one token. Never includes the value.
pub fn token_json(t: &Token) -> Value {
    let current = t.current();
    let status = t.status();
    let now = SystemTime::now();
    let state = match &current {
        Some(v) if v.is_usable(now) => "ready",
        Some(_) => "expired",
        None => "unavailable",
    };
    json!({
        "name": t.name(),
        "source": t.kind(),
        "identity": t.identity(),
        "login_expires_at": t.login_expires_at().map(rfc3339),
        "state": state,
        "generation": current.as_ref().map_or(0, |v| v.generation),
        "fingerprint": current.as_ref().map(|v| v.fingerprint.clone()),
        "loaded_at": current.as_ref().map(|v| rfc3339(v.loaded_at)),
        "expires_at": current.as_ref().and_then(|v| v.expires_at).map(rfc3339),
        "last_rotation": status.last_rotation.map(rfc3339),
        "last_error": status.last_error,
        "last_error_at": status.last_error_at.map(rfc3339),
        "consecutive_failures": status.consecutive_failures,
        "next_refresh": status.next_refresh.map(rfc3339),
        "requests": t.requests(),
        "unauthorized": t.unauthorized(),
        "unauthorized_since_rotation": t.unauthorized_since_rotation(),
        "propagation_failures": t.propagation_failures(),
        "refreshes_started": t.refreshes_started(),
        "history": t.usage_history(),
    })
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> AdminResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn json_body(status: StatusCode, body: &Value) -> AdminResponse {
    let mut s = body.to_string();
    s.push('\n');
    text(status, "application/json", s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_and_basic_credentials() {
        assert_eq!(presented_secret(b"Bearer s3cret").as_deref().map(Vec::as_slice), Some(&b"s3cret"[..]));
        assert_eq!(presented_secret(b"bearer  s3cret ").as_deref().map(Vec::as_slice), Some(&b"s3cret"[..]));
        // "admin:s3cret" and ":pa:ss" (the password may hold colons; the user name may be empty).
        assert_eq!(presented_secret(b"Basic YWRtaW46czNjcmV0").as_deref().map(Vec::as_slice), Some(&b"s3cret"[..]));
        assert_eq!(presented_secret(b"Basic OnBhOnNz").as_deref().map(Vec::as_slice), Some(&b"pa:ss"[..]));
        assert!(presented_secret(b"Basic !!!").is_none());
        assert!(presented_secret(b"Digest abc").is_none());
        assert!(presented_secret(b"s3cret").is_none());
    }

    #[test]
    fn compares_whole_values() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"abc"));
    }
}
