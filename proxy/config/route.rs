//! The model of a `[[routes]]` entry: where it matches, where it forwards, how it injects its
//! credential, and what it allows.

use super::*;

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

pub(super) fn default_header() -> String {
    "Authorization".to_owned()
}

pub(super) fn default_format() -> String {
    "Bearer {token}".to_owned()
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
