//! The model of a `[tokens.NAME]` entry: its source and that source's keys, and the keys every
//! token takes (refresh, validation, propagation, the 401 retry).

use super::*;

/// A `[tokens.NAME]` entry: where the value comes from, and how it is refreshed and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenConfig {
    pub source: SourceConfig,
    pub refresh: RefreshConfig,
    /// A check a fresh value must pass before it replaces the current one.
    pub validate: Option<ValidateConfig>,
    pub retry: RetryConfig,
    pub propagation: PropagationConfig,
    pub on_401: On401,
    /// `/readyz` waits for this token's first value (`required = false`: it does not).
    pub required: bool,
}

/// The `source` of a token and its own keys.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    Env(EnvSource),
    File(FileSource),
    OAuth2(OAuth2Source),
    Http(HttpSource),
    Exec(ExecSource),
    AwsWebIdentity(AwsWebIdentitySource),
    TokenExchange(TokenExchangeSource),
}

impl TokenConfig {
    /// The `source` keyword, as written in the config.
    pub fn kind(&self) -> &'static str {
        match self.source {
            SourceConfig::Env(_) => "env",
            SourceConfig::File(_) => "file",
            SourceConfig::OAuth2(_) => "oauth2",
            SourceConfig::Http(_) => "http",
            SourceConfig::Exec(_) => "exec",
            SourceConfig::AwsWebIdentity(_) => "aws_web_identity",
            SourceConfig::TokenExchange(_) => "token_exchange",
        }
    }
}

/// `source = "env"`: the value of an environment variable of sidekey's process, or with
/// `aws = true` the AWS credentials of `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
/// `AWS_SESSION_TOKEN` (for a route's `sign.aws_sigv4`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EnvSource {
    #[serde(default)]
    pub var: String,
    #[serde(default)]
    pub aws: bool,
}

/// `source = "file"`: a file's content, one trailing newline trimmed; watched for changes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FileSource {
    pub path: PathBuf,
}

/// How the client authenticates to an OAuth2 token endpoint (RFC 6749 section 2.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with the form-encoded client id and secret.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// `source = "oauth2"`: the client-credentials grant.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OAuth2Source {
    pub token_url: String,
    pub client_id: String,
    /// Exactly one of `client_secret`, `client_assertion`, `private_key_jwt`.
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    /// Only with `client_secret` (default `client_secret_basic`).
    #[serde(default)]
    pub auth_method: Option<ClientAuth>,
    /// A JWT (a federated identity token) sent as the RFC 7523 client assertion.
    #[serde(default)]
    pub client_assertion: Option<SecretRef>,
    /// A key with which sidekey signs its own client assertion.
    #[serde(default)]
    pub private_key_jwt: Option<PrivateKeyJwt>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    /// Extra form parameters (e.g. `resource`).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Budget for one call to the token endpoint.
    #[serde(default = "default_source_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
}

/// `source = "http"`: a JSON endpoint (Vault KV v2 and the like).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HttpSource {
    pub url: String,
    /// Request headers; their values are secret references.
    #[serde(default)]
    pub headers: BTreeMap<String, SecretRef>,
    /// JSON pointer (RFC 6901) to the token string.
    pub pointer: String,
    /// JSON pointer to the expiry: a number of seconds from now, or an RFC 3339 time.
    #[serde(default)]
    pub expires_pointer: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_source_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// The EC2 instance metadata service (IMDSv2): a session token is fetched with a PUT to
    /// `/latest/api/token` first and sent along; a `url` ending in `/` is the role listing, and
    /// its first role's credentials are read.
    #[serde(default)]
    pub aws_imds: bool,
    /// A login whose client token is sent as `X-Vault-Token` (Vault/OpenBao JWT auth).
    #[serde(default)]
    pub login: Option<LoginConfig>,
}

/// `source = "exec"`: a command's stdout (argv, no shell).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ExecSource {
    pub command: Vec<String>,
    #[serde(default = "default_source_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
}

pub(super) fn default_source_timeout() -> Duration {
    Duration::from_secs(10)
}

/// When a token is fetched again.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshConfig {
    /// Interval for values without an expiry (`refresh`); `None` means only on demand (env)
    /// or on change (file).
    pub interval: Option<Duration>,
    /// How long before expiry a value with one is refreshed (`refresh_before`).
    pub before: RefreshBefore,
}

/// `refresh_before`: a duration (`"30s"`) or a share of the lifetime (`"20%"` or `0.2`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RefreshBefore {
    Duration(Duration),
    Ratio(f64),
}

impl Default for RefreshBefore {
    /// Refresh once 80 % of the lifetime has passed.
    fn default() -> Self {
        RefreshBefore::Ratio(0.2)
    }
}

impl<'de> Deserialize<'de> for RefreshBefore {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Ratio(f64),
            Text(String),
        }
        let ratio = |r: f64| {
            if r > 0.0 && r < 1.0 {
                Ok(RefreshBefore::Ratio(r))
            } else {
                Err(de::Error::custom("a share of the lifetime must be between 0 and 1 (or 0% and 100%)"))
            }
        };
        match Repr::deserialize(d)? {
            Repr::Ratio(r) => ratio(r),
            Repr::Text(s) => match s.strip_suffix('%') {
                Some(p) => ratio(
                    p.trim().parse::<f64>().map_err(|_| de::Error::custom(format!("invalid percentage {s:?}")))?
                        / 100.0,
                ),
                None => parse_duration(&s).map(RefreshBefore::Duration).map_err(de::Error::custom),
            },
        }
    }
}

/// `validate = { url, expect, header, format }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ValidateConfig {
    pub url: String,
    #[serde(default = "default_expect")]
    pub expect: u16,
    #[serde(default = "default_header")]
    pub header: String,
    #[serde(default = "default_format")]
    pub format: String,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_source_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
}

fn default_expect() -> u16 {
    200
}

/// The keys every token takes whatever its source.
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct TokenCommon {
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub(super) refresh: Option<Duration>,
    #[serde(default)]
    pub(super) refresh_before: Option<RefreshBefore>,
    #[serde(default)]
    pub(super) validate: Option<ValidateConfig>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub(super) overlap: Option<Duration>,
    #[serde(default)]
    pub(super) retry_body_limit: Option<usize>,
    #[serde(default)]
    pub(super) retry_methods: Option<Vec<String>>,
    #[serde(default)]
    pub(super) propagation: Option<PropagationConfig>,
    #[serde(default)]
    pub(super) on_401: Option<On401>,
    #[serde(default)]
    pub(super) allow_plaintext: bool,
    pub(super) required: Option<bool>,
}

pub(super) const TOKEN_COMMON_KEYS: &[&str] = &[
    "refresh",
    "refresh_before",
    "validate",
    "overlap",
    "retry_body_limit",
    "retry_methods",
    "propagation",
    "on_401",
    "allow_plaintext",
    "required",
];

/// `propagation = { window, min, ratio }`: when upstream 401s mean a rotation did not take.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PropagationConfig {
    /// How long after a rotation (and, outside one, over what span) 401s are counted.
    #[serde(default = "default_window", deserialize_with = "de_duration")]
    pub window: Duration,
    /// The fewest 401s in a window that count as a failure.
    #[serde(default = "default_min")]
    pub min: u64,
    /// The share of the window's requests that must have got a 401.
    #[serde(default = "default_ratio")]
    pub ratio: f64,
}

impl Default for PropagationConfig {
    fn default() -> Self {
        PropagationConfig { window: default_window(), min: default_min(), ratio: default_ratio() }
    }
}

fn default_window() -> Duration {
    Duration::from_secs(60)
}

fn default_min() -> u64 {
    5
}

fn default_ratio() -> f64 {
    0.5
}

/// What a propagation failure does besides being reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum On401 {
    /// Count, log and audit it.
    #[default]
    Report,
    /// The same, and one early refresh (at most one per window), for tokens an IdP may revoke.
    Refresh,
}

/// Retrying a request that got a 401 right after a rotation (the new token may not have
/// reached every server of the provider yet).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// How long after a rotation a 401 is retried once, with the previous token (or, when
    /// there is none, a freshly forced one). Zero turns retries off.
    pub overlap: Duration,
    /// The largest request body buffered so it can be sent twice.
    pub body_limit: usize,
    /// Methods that may be sent twice (the idempotent ones by default).
    pub methods: Vec<http::Method>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            overlap: Duration::from_secs(30),
            body_limit: 64 * 1024,
            methods: ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"].iter().map(|m| m.parse().expect("a method")).collect(),
        }
    }
}
