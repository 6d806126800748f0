//! The model of the top-level sections: `[listen]`, `[log]`, `[upstream]`, `[shutdown]`,
//! `[audit]`, `[intercept]`, `[admin]`, `[limits]`, `[hardening]`.

use super::*;

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
pub(super) const MAX_HEADER_BYTES: usize = 1024 * 1024;

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
