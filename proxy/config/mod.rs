//! The configuration file: serde structs, then one validation pass over the whole.
//!
//! Loading is three steps. The text is parsed into a span-keeping document (`toml_edit`), so
//! every later error can name its line. Each section and each route and token is then
//! deserialized on its own (`serde_ignored` collects unknown keys, `serde_path_to_error` names
//! the failing key), so one bad entry does not hide the errors of the next. Finally the whole
//! is validated: references, duplicates, URLs, header names. Every error is reported, with
//! its key path and line, and none of them echoes a secret.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use toml_edit::{Item, TableLike};

mod hostport;
pub mod identity;
mod load;
pub mod paths;
pub mod rules;
pub mod template;

pub use hostport::HostPort;
pub use identity::{AwsWebIdentitySource, JwtAlg, LoginConfig, PrivateKeyJwt, TokenExchangeSource, VaultJwtLogin};
use load::*;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    pub upstream: UpstreamDefaults,
    pub shutdown: Shutdown,
    /// `[audit]`: the tamper-evident log, if wanted.
    pub audit: Option<AuditConfig>,
    /// `[admin]`: who may use the admin API.
    pub admin: AdminConfig,
    /// `[limits]`: what a client connection may cost.
    pub limits: Limits,
    /// `[hardening]`: process-level protection of the secrets in memory.
    pub hardening: Hardening,
    /// `[intercept]`: HTTPS interception for clients that use `HTTPS_PROXY`, if wanted.
    pub intercept: Option<InterceptConfig>,
    /// `[log]`: what is logged besides events.
    pub log: LogConfig,
    /// Things that are valid but probably not what was meant (a rule that never matches).
    pub warnings: Vec<ConfigError>,
    pub routes: Vec<RouteConfig>,
    /// Token definitions by name, in name order.
    pub tokens: BTreeMap<String, TokenConfig>,
}

/// The most `[listen] workers` a config may ask for.
pub const MAX_WORKERS: usize = 1024;

/// `[listen]`: where the data plane and the admin API listen.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Listen {
    #[serde(default = "default_proxy_addr")]
    pub proxy: ProxyAddr,
    #[serde(default = "default_admin_addr")]
    pub admin: SocketAddr,
    /// Let `proxy` listen on an address other hosts can reach (every client that reaches it
    /// can use the routes' credentials).
    #[serde(default)]
    pub allow_non_loopback: bool,
    /// Single-threaded runtimes serving the proxy listener's connections (`crate::workers`);
    /// without it, one runtime with a thread per CPU.
    #[serde(default)]
    pub workers: Option<usize>,
    /// The permission bits of a `unix:` proxy socket, written as an octal string (`"0660"`).
    #[serde(default = "default_socket_mode", deserialize_with = "de_socket_mode")]
    pub socket_mode: u32,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            proxy: default_proxy_addr(),
            admin: default_admin_addr(),
            workers: None,
            socket_mode: default_socket_mode(),
            allow_non_loopback: false,
        }
    }
}

/// `listen.proxy`: a TCP address, or `unix:PATH` for a Unix socket (only processes that may
/// open the socket file reach the credentials, not everything on the pod's loopback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ProxyAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyAddr::Tcp(a) => a.fmt(f),
            ProxyAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl<'de> Deserialize<'de> for ProxyAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.strip_prefix("unix:") {
            Some("") => Err(de::Error::custom("unix: needs a socket path, e.g. \"unix:/run/sidekey/proxy.sock\"")),
            Some(p) => Ok(ProxyAddr::Unix(PathBuf::from(p))),
            None => s.parse().map(ProxyAddr::Tcp).map_err(|_| {
                de::Error::custom(format!(
                    "{s:?} is neither an IP address with a port (\"127.0.0.1:8080\") nor unix:PATH"
                ))
            }),
        }
    }
}

fn default_proxy_addr() -> ProxyAddr {
    ProxyAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 8080)))
}

fn default_socket_mode() -> u32 {
    0o660
}

fn de_socket_mode<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let s = String::deserialize(d)?;
    let digits = s.strip_prefix("0o").unwrap_or(&s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if !digits.is_empty() && m <= 0o777 => Ok(m),
        _ => Err(de::Error::custom(format!("{s:?} is not an octal file mode such as \"0660\""))),
    }
}

/// `[log]`: optional log lines.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct LogConfig {
    /// One info line per proxied request (method, route, status, timings, token generation;
    /// never a query string or a header value).
    #[serde(default)]
    pub access: bool,
}

fn default_admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

/// `[upstream]`: defaults for every route's upstream connection.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UpstreamDefaults {
    /// TCP + TLS handshake budget.
    #[serde(default = "default_connect_timeout", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Budget for the response head, from the request sent whole.
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// While a request body is sent: the longest time without a byte moving.
    #[serde(default = "default_send_timeout", deserialize_with = "de_duration")]
    pub send_timeout: Duration,
    /// An extra CA bundle (PEM) trusted beside the platform's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl Default for UpstreamDefaults {
    fn default() -> Self {
        UpstreamDefaults {
            connect_timeout: default_connect_timeout(),
            timeout: default_timeout(),
            send_timeout: default_send_timeout(),
            ca_file: None,
        }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_send_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `[shutdown]`: how long in-flight requests may take to finish after SIGTERM.
#[derive(Debug, Clone, Deserialize)]
pub struct Shutdown {
    #[serde(default = "default_grace", deserialize_with = "de_duration")]
    pub grace: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown { grace: default_grace() }
    }
}

fn default_grace() -> Duration {
    Duration::from_secs(20)
}

/// `[audit]`: where the audit log goes and how often usage is summarised in it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AuditConfig {
    pub path: PathBuf,
    #[serde(default = "default_summary_interval", deserialize_with = "de_duration")]
    pub summary_interval: Duration,
    /// How often the chain's head (seq and hash) is logged, an anchor outside the file.
    #[serde(default = "default_summary_interval", deserialize_with = "de_duration")]
    pub anchor_interval: Duration,
}

fn default_summary_interval() -> Duration {
    Duration::from_secs(60)
}

/// `[intercept]`: TLS interception of `CONNECT host:443` for hosts a route names.
///
/// The CA is either a certificate and key held elsewhere (`ca_cert`, `ca_key`, as references
/// like secrets, watched for rotation when they are files) or made at start (`generate =
/// true`, its key in memory only). Its certificate is written to `ca_cert_out` for the app to
/// trust.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct InterceptConfig {
    #[serde(default)]
    pub ca_cert: Option<SecretRef>,
    #[serde(default)]
    pub ca_key: Option<SecretRef>,
    #[serde(default)]
    pub generate: bool,
    #[serde(default)]
    pub ca_cert_out: Option<PathBuf>,
    /// CONNECT targets tunnelled untouched: `host` (port 443) or `host:port`.
    #[serde(default)]
    pub passthrough: Vec<String>,
    /// Leaf certificates kept minted at once (one per intercepted host).
    #[serde(default = "default_max_leaf_certs")]
    pub max_leaf_certs: usize,
}

fn default_max_leaf_certs() -> usize {
    1024
}

/// `[admin]`: access to the admin API.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct AdminConfig {
    /// A bearer token every admin request but `/healthz` and `/readyz` must carry. Required
    /// when `listen.admin` is not a loopback address.
    #[serde(default)]
    pub token: Option<SecretRef>,
    /// Host names (besides IP literals and `localhost`) a loopback admin listener answers to:
    /// any other `Host` is refused, so a web page cannot reach it by DNS rebinding.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// `[limits]`: bounds on what one client, or all of them together, may hold of the proxy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Limits {
    /// Request line and headers together, in bytes (HTTP/1.1 buffer; HTTP/2 header list).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Header fields in one request.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Open client connections on the proxy listener; more wait in the accept queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams on one client connection.
    #[serde(default = "default_max_streams")]
    pub max_streams: u32,
    /// Time from a request's first byte to the end of its headers (slowloris).
    #[serde(default = "default_header_read_timeout", deserialize_with = "de_duration")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and nothing received for this long is closed.
    #[serde(default = "default_idle_timeout", deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_connections: default_max_connections(),
            max_streams: default_max_streams(),
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

/// hyper's smallest HTTP/1.1 read buffer; `max_header_bytes` cannot go below it.
pub const MIN_HEADER_BYTES: usize = 8192;
const MAX_HEADER_BYTES: usize = 1024 * 1024;

fn default_max_header_bytes() -> usize {
    64 * 1024
}

fn default_max_headers() -> usize {
    100
}

fn default_max_connections() -> usize {
    1024
}

fn default_max_streams() -> u32 {
    100
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(90)
}

/// `[hardening]`: Linux process protections, both on by default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Hardening {
    /// Lock the pages holding token values in RAM (`mlock`), so they are never swapped out.
    #[serde(default = "yes")]
    pub mlock: bool,
    /// `PR_SET_DUMPABLE=0`: no core dumps, and no ptrace or `/proc/PID/mem` by other users.
    #[serde(default = "yes")]
    pub no_dump: bool,
}

impl Default for Hardening {
    fn default() -> Self {
        Hardening { mlock: true, no_dump: true }
    }
}

fn yes() -> bool {
    true
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct RouteConfig {
    pub name: String,
    /// Origin-form path prefix, matched on segment boundaries and stripped.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Host for absolute-form and Host-header routing; the path is kept as is.
    #[serde(default)]
    pub host: Option<String>,
    pub upstream: String,
    /// The token to inject, with `header`/`format` or `query` (`headers` and `basic` name theirs).
    #[serde(default)]
    pub token: Option<String>,
    /// See [`RouteConfig::header`].
    #[serde(default, rename = "header")]
    pub header_name: Option<String>,
    /// See [`RouteConfig::format`].
    #[serde(default, rename = "format")]
    pub header_format: Option<String>,
    /// `query = "api_key"`: the token as this query parameter, replacing the client's.
    #[serde(default)]
    pub query: Option<String>,
    /// `headers = { "X-Key" = "{token:a}" }`: several headers, each naming its token.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// `basic = { username = "{token:user}", password = "{token:pass}" }`.
    #[serde(default)]
    pub basic: Option<BasicConfig>,
    /// `sign = { aws_sigv4 = { service = "s3", region = "eu-west-1" } }`: sign with the token's
    /// AWS credentials.
    #[serde(default)]
    pub sign: Option<SignConfig>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub send_timeout: Option<Duration>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `METHOD /path/glob` rules; when present, only matching requests are forwarded.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// On a route with `allow`: let a path segment hold an encoded slash (`%2F`), as in
    /// GitLab's `projects/group%2Fproject`; refused otherwise.
    #[serde(default)]
    pub allow_encoded_slash: bool,
    /// Token-bucket limit of requests sent upstream, e.g. `"50/s"`.
    #[serde(default)]
    pub rate: Option<String>,
    /// The bucket's size (default: one second's worth of `rate`, at least 1).
    #[serde(default)]
    pub burst: Option<u32>,
    /// The most concurrent upstream requests.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// Allow a plain `http://` upstream that is not loopback (the token then travels in clear).
    #[serde(default)]
    pub allow_plaintext: bool,
}

fn default_header() -> String {
    "Authorization".to_owned()
}

fn default_format() -> String {
    "Bearer {token}".to_owned()
}

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

/// `basic`: HTTP Basic credentials from templates naming tokens (`{token:NAME}`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BasicConfig {
    pub username: String,
    pub password: String,
}

/// `sign`: how requests are signed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SignConfig {
    pub aws_sigv4: AwsSigV4Config,
}

/// `sign.aws_sigv4`: AWS Signature Version 4.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AwsSigV4Config {
    /// The signing name of the service (`s3`, `secretsmanager`, `sts`, ...).
    pub service: String,
    pub region: String,
    /// The largest body (bytes) buffered to sign with its hash.
    #[serde(default = "default_sign_body_limit")]
    pub body_limit: usize,
    /// Send larger bodies, and bodies of unknown length, as `UNSIGNED-PAYLOAD` (default: for
    /// `s3` only, which accepts it); otherwise they are refused with 413.
    #[serde(default)]
    pub unsigned_payload: Option<bool>,
}

fn default_sign_body_limit() -> usize {
    1024 * 1024
}

/// How a route attaches its credential.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Injection<'a> {
    /// One header from the route's token (`header`, `format`; the default).
    Header { token: &'a str, header: &'a str, format: &'a str },
    /// The route's token as a query parameter.
    Query { token: &'a str, name: &'a str },
    /// Several headers, each from the token its template names.
    Headers(&'a BTreeMap<String, String>),
    /// HTTP Basic from two templates.
    Basic(&'a BasicConfig),
    /// AWS SigV4 with the route's token's credentials.
    Sign { token: &'a str, aws_sigv4: &'a AwsSigV4Config },
}

impl RouteConfig {
    /// The header the token goes in (`header`, default `Authorization`).
    pub fn header(&self) -> &str {
        self.header_name.as_deref().unwrap_or("Authorization")
    }

    /// The header's value (`format`, default `Bearer {token}`).
    pub fn format(&self) -> &str {
        self.header_format.as_deref().unwrap_or("Bearer {token}")
    }

    /// The injection form of a validated route.
    pub fn injection(&self) -> Injection<'_> {
        let token = self.token.as_deref().unwrap_or("");
        if let Some(h) = &self.headers {
            Injection::Headers(h)
        } else if let Some(b) = &self.basic {
            Injection::Basic(b)
        } else if let Some(sign) = &self.sign {
            Injection::Sign { token, aws_sigv4: &sign.aws_sigv4 }
        } else if let Some(name) = &self.query {
            Injection::Query { token, name }
        } else {
            Injection::Header { token, header: self.header(), format: self.format() }
        }
    }

    /// Every token the route uses, without repeats, the main one first.
    pub fn token_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.token.iter().cloned().collect();
        let templates: Vec<&String> = match (&self.headers, &self.basic) {
            (Some(h), _) => h.values().collect(),
            (None, Some(b)) => vec![&b.username, &b.password],
            (None, None) => Vec::new(),
        };
        for t in templates {
            for n in template::parse_template(t)
                .map(|p| template::template_tokens(&p).into_iter().map(str::to_owned).collect::<Vec<_>>())
                .unwrap_or_default()
            {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        names
    }
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

fn default_source_timeout() -> Duration {
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
struct TokenCommon {
    #[serde(default, deserialize_with = "de_opt_duration")]
    refresh: Option<Duration>,
    #[serde(default)]
    refresh_before: Option<RefreshBefore>,
    #[serde(default)]
    validate: Option<ValidateConfig>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    overlap: Option<Duration>,
    #[serde(default)]
    retry_body_limit: Option<usize>,
    #[serde(default)]
    retry_methods: Option<Vec<String>>,
    #[serde(default)]
    propagation: Option<PropagationConfig>,
    #[serde(default)]
    on_401: Option<On401>,
    #[serde(default)]
    allow_plaintext: bool,
    required: Option<bool>,
}

const TOKEN_COMMON_KEYS: &[&str] = &[
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

/// A reference to a secret held elsewhere: `{ env = "NAME" }` or `{ file = "/path" }`.
/// A literal string is refused without echoing it.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(v) => write!(f, "{{ env = {v:?} }}"),
            SecretRef::File(p) => write!(f, "{{ file = {p:?} }}"),
        }
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RefVisitor;
        const REF_ONLY: &str =
            "a secret must be a reference, { env = \"VAR\" } or { file = \"/path\" }; literal values are not allowed";
        impl<'de> Visitor<'de> for RefVisitor {
            type Value = SecretRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("{ env = \"VAR\" } or { file = \"/path\" }")
            }
            // Every non-table form is refused with a message that does not repeat the value.
            fn visit_str<E: de::Error>(self, _: &str) -> Result<SecretRef, E> {
                Err(E::custom(REF_ONLY))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<SecretRef, E> {
                Err(E::custom(REF_ONLY))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<SecretRef, E> {
                Err(E::custom(REF_ONLY))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<SecretRef, E> {
                Err(E::custom(REF_ONLY))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<SecretRef, E> {
                Err(E::custom(REF_ONLY))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<SecretRef, A::Error> {
                Err(de::Error::custom(REF_ONLY))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretRef, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<String>()? {
                    let r = match key.as_str() {
                        "env" => SecretRef::Env(map.next_value()?),
                        "file" => SecretRef::File(map.next_value()?),
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                            return Err(de::Error::custom(format!(
                                "unknown key `{key}` in a secret reference; expected `env` or `file`"
                            )));
                        }
                    };
                    if found.replace(r).is_some() {
                        return Err(de::Error::custom("a secret reference takes exactly one of `env` or `file`"));
                    }
                }
                found.ok_or_else(|| de::Error::custom(REF_ONLY))
            }
        }
        d.deserialize_any(RefVisitor)
    }
}

impl SecretRef {
    /// Reads the referenced secret now. Errors name the reference, never the value.
    pub fn read(&self) -> Result<crate::secret::Secret, String> {
        match self {
            SecretRef::Env(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(crate::secret::Secret::new(v)),
                Ok(_) => Err(format!("environment variable {var} is empty")),
                Err(_) => Err(format!("environment variable {var} is not set")),
            },
            SecretRef::File(path) => {
                let raw = zeroize::Zeroizing::new(
                    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
                );
                crate::secret::Secret::from_bytes_trimmed(raw).map_err(|e| format!("{}: {e}", path.display()))
            }
        }
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(de::Error::custom)
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// Parses a humane duration (`"30s"`, `"5m"`, `"250ms"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: \"250ms\", \"30s\", \"5m\")"))
}

/// One problem in a config file: where (key path and line) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `routes[1].format` or `tokens.gh.path`; empty for the whole file.
    pub key: String,
    /// 1-based line, when the key (or its nearest parent) is written in the file.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (Some(line), false) => write!(f, "{line}: {}: {}", self.key, self.message),
            (Some(line), true) => write!(f, "{line}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.key, self.message),
            (None, true) => f.write_str(&self.message),
        }
    }
}

/// Every problem found in a config file, in file order.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    /// The file, for messages; `None` for configs built from a string.
    pub file: Option<PathBuf>,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        match &self.file {
            Some(p) => writeln!(f, "{}: {n} error{} in config", p.display(), if n == 1 { "" } else { "s" })?,
            None => writeln!(f, "{n} error{} in config", if n == 1 { "" } else { "s" })?,
        }
        // `file:line: key: message`, the shape editors and CI annotators pick up.
        for e in &self.errors {
            match &self.file {
                Some(p) => writeln!(f, "{}:{e}", p.display())?,
                None => writeln!(f, "line {e}")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and validates a config file. Relative paths in it are taken from the file's
    /// directory, as the path was given (a ConfigMap's file is a symlink into `..data`; its
    /// neighbours are found beside the link, not beside its target).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Config::load_with(path, false)
    }

    /// [`Config::load`], and what `run` would refuse or warn about on this machine: an audit
    /// log that cannot be opened for appending, a token, CA or admin-token file that exists but
    /// cannot be read (a token file not there yet is a warning: it is loaded when it appears).
    pub fn load_checked(path: &Path) -> Result<Config, ConfigErrors> {
        Config::load_with(path, true)
    }

    fn load_with(path: &Path, files: bool) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: Some(path.to_owned()),
            errors: vec![ConfigError { key: String::new(), line: None, message: format!("cannot read config: {e}") }],
        })?;
        let base = path.parent().filter(|d| !d.as_os_str().is_empty());
        Config::parse_in(&text, base, files).map_err(|mut e| {
            e.file = Some(path.to_owned());
            e
        })
    }

    /// Parses and validates config text (relative paths stay relative to the working directory).
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse_in(text, None, false)
    }

    fn parse_in(text: &str, base: Option<&Path>, files: bool) -> Result<Config, ConfigErrors> {
        let mut cx = Loader::new(text)?;
        cx.base = base.map(Path::to_owned);
        cx.files = files;
        let config = cx.load();
        let mut errors = cx.errors;
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        match config {
            Some(c) if errors.is_empty() => Ok(c),
            _ => Err(ConfigErrors { file: None, errors }),
        }
    }
}

/// The token names no route uses (a warning, not an error).
pub fn unused_tokens(config: &Config) -> Vec<&str> {
    let used: HashSet<String> = config.routes.iter().flat_map(RouteConfig::token_names).collect();
    config.tokens.keys().map(String::as_str).filter(|t| !used.contains(*t)).collect()
}

/// Every key the config file accepts, as dotted paths (`routes[].name`, `tokens.*.refresh`,
/// `tokens.<oauth2>.token_url` for keys of one source kind), read from the serde structs
/// themselves: the README's reference is checked against this list.
pub fn accepted_keys() -> Vec<String> {
    fn fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
        struct Names(Option<&'static [&'static str]>);
        struct Probe<'a>(&'a mut Names);
        impl<'de> Deserializer<'de> for Probe<'_> {
            type Error = de::value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(de::Error::custom("probe"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                self.0 .0 = Some(fields);
                Err(de::Error::custom("probe"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
                unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
            }
        }
        let mut names = Names(None);
        let _ = T::deserialize(Probe(&mut names));
        names.0.expect("a struct")
    }
    let mut keys: Vec<String> = TOP_LEVEL_KEYS.iter().map(|k| (*k).to_owned()).collect();
    let mut add = |prefix: &str, names: &[&str]| keys.extend(names.iter().map(|n| format!("{prefix}.{n}")));
    add("listen", fields::<Listen>());
    add("upstream", fields::<UpstreamDefaults>());
    add("shutdown", fields::<Shutdown>());
    add("audit", fields::<AuditConfig>());
    add("admin", fields::<AdminConfig>());
    add("limits", fields::<Limits>());
    add("hardening", fields::<Hardening>());
    add("intercept", fields::<InterceptConfig>());
    add("log", fields::<LogConfig>());
    add("routes[]", fields::<RouteConfig>());
    add("tokens.*", &["source"]);
    add("tokens.*", fields::<TokenCommon>());
    add("tokens.*.validate", fields::<ValidateConfig>());
    add("tokens.*.propagation", fields::<PropagationConfig>());
    add("tokens.<env>", fields::<EnvSource>());
    add("tokens.<file>", fields::<FileSource>());
    add("tokens.<oauth2>", fields::<OAuth2Source>());
    add("tokens.<http>", fields::<HttpSource>());
    add("tokens.<exec>", fields::<ExecSource>());
    add("tokens.<http>.login", fields::<LoginConfig>());
    add("tokens.<http>.login.vault_jwt", fields::<VaultJwtLogin>());
    add("tokens.<oauth2>.private_key_jwt", fields::<PrivateKeyJwt>());
    add("tokens.<aws_web_identity>", fields::<AwsWebIdentitySource>());
    add("tokens.<token_exchange>", fields::<TokenExchangeSource>());
    keys
}

#[cfg(test)]
mod tests;
