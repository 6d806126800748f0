//! OAuth2 client authentication by JWT assertion (RFC 7523 section 2.2): a federated identity
//! token read from a file (`client_assertion`, the Azure workload-identity pattern), or an
//! assertion sidekey signs itself with the client's key (`private_key_jwt`).

use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::config::{JwtAlg, SecretRef};
use crate::secret::Secret;

use super::identity::{describe, read_identity_token};
use super::SourceError;

/// The `client_assertion_type` of a JWT assertion.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long a signed assertion is valid: it is used once, right away.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// Where a token request's client assertion comes from.
pub enum ClientAssertion {
    /// A JWT the platform issued, read at each request.
    Federated(SecretRef),
    /// An assertion signed here, with `iss` = `sub` = the client id and `aud` = the token
    /// endpoint.
    Signed { key: SecretRef, alg: JwtAlg, client_id: String, audience: String },
}

impl std::fmt::Debug for ClientAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAssertion::Federated(r) => write!(f, "Federated({r:?})"),
            ClientAssertion::Signed { key, alg, .. } => write!(f, "Signed({key:?}, {alg:?})"),
        }
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: u64,
    exp: u64,
}

impl ClientAssertion {
    /// The assertion for one token request.
    pub fn produce(&self) -> Result<Secret, SourceError> {
        match self {
            ClientAssertion::Federated(r) => read_identity_token("client_assertion", r),
            ClientAssertion::Signed { key, alg, client_id, audience } => {
                let pem = key
                    .read()
                    .map_err(|reason| SourceError::Unreadable { what: "private_key_jwt.key".into(), reason })?;
                let (algorithm, key) = match alg {
                    JwtAlg::RS256 => (Algorithm::RS256, EncodingKey::from_rsa_pem(pem.expose().as_bytes())),
                    JwtAlg::ES256 => (Algorithm::ES256, EncodingKey::from_ec_pem(pem.expose().as_bytes())),
                };
                let key = key.map_err(|e| SourceError::Unreadable {
                    what: format!("private_key_jwt.key {}", describe_key(self)),
                    reason: format!("not a {alg:?} private key in PEM ({:?})", e.kind()),
                })?;
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_err(|e| SourceError::Config(e.to_string()))?
                    .as_secs();
                let claims = Claims {
                    iss: client_id,
                    sub: client_id,
                    aud: audience,
                    jti: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
                    iat: now,
                    exp: now + ASSERTION_LIFETIME.as_secs(),
                };
                let jwt = jsonwebtoken::encode(&Header::new(algorithm), &claims, &key).map_err(|e| {
                    SourceError::Unreadable {
                        what: "private_key_jwt".into(),
                        reason: format!("signing failed ({:?})", e.kind()),
                    }
                })?;
                Ok(Secret::new(jwt))
            }
        }
    }
}

fn describe_key(a: &ClientAssertion) -> String {
    match a {
        ClientAssertion::Signed { key, .. } => describe(key),
        ClientAssertion::Federated(r) => describe(r),
    }
}
