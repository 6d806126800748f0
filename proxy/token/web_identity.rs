//! `source = "aws_web_identity"`: STS `AssumeRoleWithWebIdentity` (EKS IRSA and the like).
//! The projected token is read at each call; the temporary credentials come back as the JSON
//! a route's `sign.aws_sigv4` reads (`AccessKeyId`, `SecretAccessKey`, `SessionToken`,
//! `Expiration`), with `Expiration` as the value's expiry, so they are refreshed ahead of it.
//!
//! As the AWS SDKs do, absent keys are taken from `AWS_ROLE_ARN`, `AWS_WEB_IDENTITY_TOKEN_FILE`,
//! `AWS_ROLE_SESSION_NAME` and `AWS_REGION` when the token is fetched, not when the config is
//! checked.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Uri;
use zeroize::Zeroizing;

use crate::config::{self, SecretRef};
use crate::secret::Secret;
use crate::upstream::SourceClient;

use super::fetch::{excerpt, exchange};
use super::identity::{read_identity_token, Logins};
use super::oauth2::Form;
use super::{Fetched, SourceError};

pub struct WebIdentitySource {
    config: config::AwsWebIdentitySource,
    /// `sidekey-<token name>`, the session name when neither the key nor the variable says.
    default_session: String,
    client: SourceClient,
    logins: Arc<Logins>,
}

impl std::fmt::Debug for WebIdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebIdentitySource").field("role_arn", &self.config.role_arn).finish_non_exhaustive()
    }
}

/// What one call needs, resolved from the config and the environment.
struct Call {
    endpoint: Uri,
    role_arn: String,
    session_name: String,
    token: SecretRef,
}

impl WebIdentitySource {
    pub fn new(
        c: &config::AwsWebIdentitySource,
        token_name: &str,
        client: SourceClient,
        logins: Arc<Logins>,
    ) -> WebIdentitySource {
        // STS's session names allow fewer characters than token names: keep the allowed ones.
        let mut default_session: String = format!("sidekey-{token_name}")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(*c))
            .take(64)
            .collect();
        if default_session.len() < 2 {
            default_session = "sidekey".into();
        }
        WebIdentitySource { config: c.clone(), default_session, client, logins }
    }

    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        let result = self.assume_role().await;
        match &result {
            Ok(_) => self.logins.succeeded(None, false),
            Err(e) => self.logins.failed(&e.to_string()),
        }
        result
    }

    fn resolve(&self) -> Result<Call, SourceError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let role_arn = self.config.role_arn.clone().or_else(|| env("AWS_ROLE_ARN")).ok_or_else(|| {
            SourceError::Config("no role: set role_arn, or AWS_ROLE_ARN in sidekey's environment".into())
        })?;
        let token = match &self.config.web_identity_token {
            Some(r) => r.clone(),
            None => SecretRef::File(PathBuf::from(env("AWS_WEB_IDENTITY_TOKEN_FILE").ok_or_else(|| {
                SourceError::Config(
                    "no identity token: set web_identity_token, or AWS_WEB_IDENTITY_TOKEN_FILE in sidekey's environment"
                        .into(),
                )
            })?)),
        };
        let session_name = match &self.config.role_session_name {
            Some(n) => n.clone(),
            None => match env("AWS_ROLE_SESSION_NAME") {
                Some(n) if config::identity::valid_session_name(&n) => n,
                Some(_) => {
                    return Err(SourceError::Config(
                        "AWS_ROLE_SESSION_NAME is not a valid session name ([\\w+=,.@-]{2,64})".into(),
                    ))
                }
                None => self.default_session.clone(),
            },
        };
        let endpoint = match (&self.config.sts_endpoint, self.config.region.clone().or_else(|| env("AWS_REGION"))) {
            (Some(e), _) => e.clone(),
            (None, Some(region)) => format!("https://sts.{region}.amazonaws.com/"),
            (None, None) => "https://sts.amazonaws.com/".to_owned(),
        };
        let endpoint = endpoint.parse().map_err(|e| SourceError::Config(format!("STS endpoint {endpoint:?}: {e}")))?;
        Ok(Call { endpoint, role_arn, session_name, token })
    }

    async fn assume_role(&self) -> Result<Fetched, SourceError> {
        let call = self.resolve()?;
        let jwt = read_identity_token("web_identity_token", &call.token)?;
        let mut form = Form::with_capacity(call.role_arn.len() + call.session_name.len() + jwt.expose().len() + 96);
        form.append("Action", "AssumeRoleWithWebIdentity");
        form.append("Version", "2011-06-15");
        form.append("RoleArn", &call.role_arn);
        form.append("RoleSessionName", &call.session_name);
        form.append("WebIdentityToken", jwt.expose());
        // Unsigned: the web identity token is the credential.
        let req = form.post(&call.endpoint, None)?;
        let (status, bytes) = exchange(&self.client, req, self.config.timeout).await.map_err(|e| e.scrub(&[&jwt]))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| SourceError::Malformed(format!("STS at {} answered with non-UTF-8", call.endpoint)))?;
        if !status.is_success() {
            let detail = match (xml_text(text, "Code"), xml_text(text, "Message")) {
                (Some(c), Some(m)) => format!("{}: {}", excerpt(&c), excerpt(&m)),
                (Some(c), None) => excerpt(&c),
                _ => "no STS error in the answer".into(),
            };
            return Err(SourceError::Refused { by: format!("STS at {}", call.endpoint), status, detail: Some(detail) }
                .scrub(&[&jwt]));
        }
        let malformed = |e: String| SourceError::Malformed(format!("STS at {}: {e}", call.endpoint));
        let credentials = credentials_json(text).map_err(malformed)?;
        let parsed = crate::token::aws_credentials::parse_credentials(&credentials).map_err(malformed)?;
        let expires_at = parsed.expiration.ok_or_else(|| malformed("no Expiration".into()))?;
        if expires_at <= SystemTime::now() + Duration::from_secs(1) {
            return Err(malformed("the credentials expire at once".into()));
        }
        Ok(Fetched { secret: Secret::new(credentials.to_string()), expires_at: Some(expires_at) })
    }
}

/// The `Credentials` of an `AssumeRoleWithWebIdentityResponse`, as the JSON `sign` reads.
fn credentials_json(xml: &str) -> Result<Zeroizing<String>, String> {
    let creds = xml_text(xml, "Credentials").ok_or("the answer has no Credentials")?;
    let field = |name: &str| xml_text(&creds, name).ok_or(format!("the answer's Credentials have no {name}"));
    let (key, secret, session, expiration) =
        (field("AccessKeyId")?, field("SecretAccessKey")?, field("SessionToken")?, field("Expiration")?);
    let json = serde_json::json!({
        "Version": 1,
        "AccessKeyId": key.as_str(),
        "SecretAccessKey": secret.as_str(),
        "SessionToken": session.as_str(),
        "Expiration": expiration.as_str(),
    });
    // serde_json's string copies of the values are dropped unzeroized: the small window
    // is the same as the answer's own buffer, which sidekey cannot scrub either.
    Ok(Zeroizing::new(json.to_string()))
}

/// The text inside the first `<name>...</name>` of `xml`, with XML's five entities decoded.
fn xml_text(xml: &str, name: &str) -> Option<Zeroizing<String>> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    let raw = xml[start..end].trim();
    Some(Zeroizing::new(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_out_of_the_sts_answer() {
        let xml = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <SessionToken>FQo&amp;DYX</SessionToken>
      <SecretAccessKey>wJalr</SecretAccessKey>
      <Expiration>2030-01-01T00:00:00Z</Expiration>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"#;
        let json = credentials_json(xml).unwrap();
        let c = crate::token::aws_credentials::parse_credentials(&json).unwrap();
        assert_eq!(c.expiration, Some(humantime::parse_rfc3339("2030-01-01T00:00:00Z").unwrap()));
        assert!(json.contains("\"SessionToken\":\"FQo&DYX\""), "{}", json.as_str());
        assert!(credentials_json("<Error><Code>X</Code></Error>").is_err());
    }
}
