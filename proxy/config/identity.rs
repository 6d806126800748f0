//! Workload identity in the config: the keys with which a token proves who the pod is
//! instead of naming a static secret (a Vault JWT login on an `http` token, a JWT assertion
//! on an `oauth2` token, and the `aws_web_identity` and `token_exchange` sources), and their
//! checks. Kept apart from the rest of the config so each form's rules read in one place.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{check_url, child, de_duration, default_source_timeout, Loader, OAuth2Source, SecretRef, Seg};

/// `login = { vault_jwt = { ... } }` on an `http` token: log in to Vault/OpenBao first.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LoginConfig {
    pub vault_jwt: VaultJwtLogin,
}

/// A Vault/OpenBao JWT (or Kubernetes) auth login: `POST /v1/{path}/login` with the role
/// and the JWT read from its reference at each login.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VaultJwtLogin {
    /// The auth method's mount, e.g. `auth/jwt` or `auth/kubernetes`.
    pub path: String,
    pub role: String,
    pub jwt: SecretRef,
}

/// `private_key_jwt = { key, alg }`: sidekey signs a short-lived client assertion.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PrivateKeyJwt {
    /// A PEM private key (PKCS#8, or PKCS#1 for RSA).
    pub key: SecretRef,
    pub alg: JwtAlg,
}

/// The signature algorithms a `private_key_jwt` assertion may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlg {
    RS256,
    ES256,
}

/// `source = "aws_web_identity"`: STS `AssumeRoleWithWebIdentity` with a projected token.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AwsWebIdentitySource {
    /// Default: `AWS_ROLE_ARN` at run time.
    #[serde(default)]
    pub role_arn: Option<String>,
    /// Default: the file named by `AWS_WEB_IDENTITY_TOKEN_FILE` at run time.
    #[serde(default)]
    pub web_identity_token: Option<SecretRef>,
    /// Default: `AWS_ROLE_SESSION_NAME`, else `sidekey-<token name>`.
    #[serde(default)]
    pub role_session_name: Option<String>,
    /// The STS region (regional endpoint `sts.<region>.amazonaws.com`); default `AWS_REGION`,
    /// else the global endpoint.
    #[serde(default)]
    pub region: Option<String>,
    /// An STS endpoint URL other than AWS's own (a test endpoint, a VPC endpoint).
    #[serde(default)]
    pub sts_endpoint: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_source_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
}

/// `source = "token_exchange"`: OAuth 2.0 Token Exchange (RFC 8693).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TokenExchangeSource {
    pub token_url: String,
    pub subject_token: SecretRef,
    pub subject_token_type: String,
    #[serde(default)]
    pub actor_token: Option<SecretRef>,
    #[serde(default)]
    pub actor_token_type: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub requested_token_type: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_source_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
}

impl Loader<'_> {
    /// The rules of a `login` table on an `http` token.
    pub(super) fn check_login(&mut self, path: &[Seg], login: &LoginConfig) {
        let vpath = child(&child(path, "login"), "vault_jwt");
        let p = &login.vault_jwt.path;
        // Part of a URL path on the store's server: no query, fragment, escapes or dot segments.
        let plain = p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
        if !plain
            || p.starts_with('/')
            || p.ends_with('/')
            || p.split('/').any(|s| s.is_empty() || s == ".." || s == ".")
        {
            self.error(&child(&vpath, "path"), "the auth mount: letters, digits, `-`, `_`, `.` between single slashes, none around it, e.g. \"auth/jwt\"");
        }
        if login.vault_jwt.role.is_empty() {
            self.error(&child(&vpath, "role"), "must not be empty");
        }
    }

    /// Exactly one client authentication on an `oauth2` token; `auth_method` only with a
    /// client secret.
    pub(super) fn check_client_auth(&mut self, path: &[Seg], s: &OAuth2Source) {
        let given: Vec<&str> = [
            (s.client_secret.is_some(), "client_secret"),
            (s.client_assertion.is_some(), "client_assertion"),
            (s.private_key_jwt.is_some(), "private_key_jwt"),
        ]
        .into_iter()
        .filter_map(|(set, k)| set.then_some(k))
        .collect();
        // A key already reported as malformed was removed before this check: not missing.
        let prefix = super::path_string(path);
        let reported = self.errors.iter().any(|e| {
            ["client_secret", "client_assertion", "private_key_jwt"]
                .iter()
                .any(|k| e.key.strip_prefix(&prefix).is_some_and(|rest| rest.starts_with(&format!(".{k}"))))
        });
        match given.as_slice() {
            [] if reported => {}
            [] => self.error(
                path,
                "missing client authentication: one of `client_secret`, `client_assertion`, `private_key_jwt`",
            ),
            [_] => {}
            [_, second, ..] => self.error(
                &child(path, second),
                format!(
                    "takes exactly one of `client_secret`, `client_assertion`, `private_key_jwt`; found {}",
                    given.join(", ")
                ),
            ),
        }
        if s.auth_method.is_some() && s.client_secret.is_none() {
            self.error(&child(path, "auth_method"), "applies to `client_secret` only; remove it");
        }
    }

    pub(super) fn aws_web_identity(&mut self, path: &[Seg], rest: toml::Value) -> Option<AwsWebIdentitySource> {
        let s: AwsWebIdentitySource = self.section(path, rest)?;
        if let Some(e) = &s.sts_endpoint {
            if let Err(m) = check_url(e) {
                self.error(&child(path, "sts_endpoint"), m);
            }
        }
        if let Some(arn) = &s.role_arn {
            if !arn.starts_with("arn:") {
                self.error(&child(path, "role_arn"), "must be a role ARN (arn:aws:iam::ACCOUNT:role/NAME)");
            }
        }
        if let Some(n) = &s.role_session_name {
            if !valid_session_name(n) {
                self.error(&child(path, "role_session_name"), "2 to 64 of letters, digits and =,.@-_");
            }
        }
        if let Some(r) = &s.region {
            if r.is_empty() || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                self.error(&child(path, "region"), "must be a region name, e.g. \"eu-west-1\"");
            }
        }
        if let Some(ca) = &s.ca_file {
            self.check_ca_file(&child(path, "ca_file"), ca);
        }
        Some(s)
    }

    pub(super) fn token_exchange(&mut self, path: &[Seg], rest: toml::Value) -> Option<TokenExchangeSource> {
        let s: TokenExchangeSource = self.section(path, rest)?;
        if let Err(m) = check_url(&s.token_url) {
            self.error(&child(path, "token_url"), m);
        }
        if s.subject_token_type.is_empty() {
            self.error(
                &child(path, "subject_token_type"),
                "must not be empty, e.g. \"urn:ietf:params:oauth:token-type:jwt\"",
            );
        }
        match (&s.actor_token, &s.actor_token_type) {
            (Some(_), None) => self.error(&child(path, "actor_token"), "comes with `actor_token_type`"),
            (None, Some(_)) => self.error(&child(path, "actor_token_type"), "only with `actor_token`"),
            _ => {}
        }
        if let Some(ca) = &s.ca_file {
            self.check_ca_file(&child(path, "ca_file"), ca);
        }
        Some(s)
    }
}

/// STS's rule for `RoleSessionName`: `[\w+=,.@-]{2,64}`.
pub fn valid_session_name(n: &str) -> bool {
    (2..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@-_".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError, SourceConfig};

    const ROUTE: &str = r#"
[[routes]]
name = "r"
prefix = "/r"
upstream = "https://api.example"
token = "kv"
"#;

    fn errors(text: &str) -> Vec<ConfigError> {
        Config::parse(&format!("{ROUTE}{text}")).expect_err("should fail").errors
    }

    #[test]
    fn every_identity_form_of_the_contract_parses() {
        let text = r#"
[tokens.kv]
source = "http"
url = "https://vault:8200/v1/secret/data/api"
pointer = "/data/data/token"
login = { vault_jwt = { path = "auth/jwt", role = "svc-a", jwt = { file = "/var/run/secrets/tokens/vault" } } }

[tokens.aws]
source = "aws_web_identity"
role_arn = "arn:aws:iam::123456789012:role/svc-a"
web_identity_token = { file = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token" }
region = "eu-west-1"

[tokens.irsa]
source = "aws_web_identity"

[tokens.fed]
source = "oauth2"
token_url = "https://idp.example/oauth2/token"
client_id = "svc-a"
client_assertion = { file = "/var/run/secrets/tokens/idp" }

[tokens.signed]
source = "oauth2"
token_url = "https://idp.example/oauth2/token"
client_id = "svc-a"
private_key_jwt = { key = { file = "/etc/sidekey/client.pem" }, alg = "ES256" }

[tokens.sts]
source = "token_exchange"
token_url = "https://sts.example/token"
subject_token = { file = "/var/run/secrets/tokens/sts" }
subject_token_type = "urn:ietf:params:oauth:token-type:jwt"
audience = "api.example"
"#;
        let c = Config::parse(&format!("{ROUTE}{text}")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.tokens["aws"].kind(), "aws_web_identity");
        assert_eq!(c.tokens["sts"].kind(), "token_exchange");
        let SourceConfig::Http(h) = &c.tokens["kv"].source else { panic!() };
        assert_eq!(h.login.as_ref().unwrap().vault_jwt.path, "auth/jwt");
        let SourceConfig::AwsWebIdentity(a) = &c.tokens["irsa"].source else { panic!() };
        assert!(a.role_arn.is_none() && a.web_identity_token.is_none(), "the variables are read at run time");
        assert_eq!(c.tokens["sts"].refresh.interval, Some(std::time::Duration::from_secs(300)));
    }

    #[test]
    fn an_oauth2_token_has_exactly_one_client_authentication() {
        let base = "[tokens.kv]\nsource = \"oauth2\"\ntoken_url = \"https://idp.example/token\"\nclient_id = \"a\"\n";
        let two = format!(
            "{base}client_secret = {{ env = \"S\" }}\nprivate_key_jwt = {{ key = {{ file = \"/k.pem\" }}, alg = \"RS256\" }}\n"
        );
        let e = errors(&two);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].key.as_str(), e[0].line), ("tokens.kv.private_key_jwt", Some(12)), "{e:?}");
        assert!(e[0].message.contains("exactly one of"), "{e:?}");

        let none = errors(base);
        assert_eq!((none[0].key.as_str(), none[0].line), ("tokens.kv", Some(7)), "{none:?}");
        assert!(none[0].message.contains("missing client authentication"), "{none:?}");

        let method =
            errors(&format!("{base}client_assertion = {{ file = \"/t\" }}\nauth_method = \"client_secret_post\"\n"));
        assert_eq!((method[0].key.as_str(), method[0].line), ("tokens.kv.auth_method", Some(12)), "{method:?}");

        let alg = errors(&format!("{base}private_key_jwt = {{ key = {{ file = \"/k.pem\" }}, alg = \"HS256\" }}\n"));
        assert_eq!(alg[0].key, "tokens.kv.private_key_jwt.alg", "{alg:?}");
    }

    #[test]
    fn identity_forms_report_their_keys() {
        let e = errors(
            r#"
[tokens.kv]
source = "http"
url = "https://vault:8200/v1/secret/data/api"
pointer = "/data/data/token"
login = { vault_jwt = { path = "/auth/jwt/", role = "", jwt = { file = "/t" } } }

[tokens.sts]
source = "token_exchange"
token_url = "https://sts.example/token"
subject_token = { file = "/t" }
subject_token_type = "urn:ietf:params:oauth:token-type:jwt"
actor_token = { file = "/a" }

[tokens.aws]
source = "aws_web_identity"
role_arn = "svc-a"
role_session_name = "a b"
sts_endpoint = "ftp://x"
"#,
        );
        let keys: Vec<(&str, Option<usize>)> = e.iter().map(|e| (e.key.as_str(), e.line)).collect();
        let query = errors(
            "[tokens.kv]\nsource = \"http\"\nurl = \"https://v.example/v1/kv\"\npointer = \"/t\"\n\
             login = { vault_jwt = { path = \"auth/jwt?x=1\", role = \"r\", jwt = { file = \"/t\" } } }\n",
        );
        assert_eq!(query[0].key, "tokens.kv.login.vault_jwt.path", "{query:?}");
        for want in [
            ("tokens.kv.login.vault_jwt.path", Some(12)),
            ("tokens.kv.login.vault_jwt.role", Some(12)),
            ("tokens.sts.actor_token", Some(19)),
            ("tokens.aws.role_arn", Some(23)),
            ("tokens.aws.role_session_name", Some(24)),
            ("tokens.aws.sts_endpoint", Some(25)),
        ] {
            assert!(keys.contains(&want), "no error {want:?}: {e:?}");
        }
    }
}
