//! What a web page in the operator's browser could make the browser send to the admin API,
//! refused before the API looks at the request: a cross-site `POST` (a form or `fetch` from
//! another origin runs a refresh without reading the answer) and, on a loopback listener, a
//! `Host` other than the listener's own names (DNS rebinding: a page whose name resolves to
//! 127.0.0.1 reads `/tokens` and `/metrics` as same-origin).

use http::{header, HeaderMap, Method};

/// Which `Host` values a loopback admin listener answers to, besides IP literals and
/// `localhost`.
#[derive(Debug, Clone, Default)]
pub struct AdminHosts {
    /// Whether `listen.admin` is a loopback address (the `Host` check applies only there: off
    /// loopback the admin token stands guard, and a pod's probes name its IP).
    pub loopback: bool,
    /// `[admin] hosts`, lower case.
    pub names: Vec<String>,
}

/// Why a request is refused (the message of its `403`), if it is.
pub fn refusal(
    method: &Method,
    authority: Option<&str>,
    headers: &HeaderMap,
    hosts: &AdminHosts,
) -> Option<&'static str> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).or(authority);
    if hosts.loopback {
        if let Some(host) = host {
            if !known_host(host, &hosts.names) {
                return Some(
                    "this admin listener answers only to an IP address, localhost, or a name in [admin] hosts",
                );
            }
        }
    }
    if method == Method::POST {
        if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site")) {
            return Some("a cross-site POST is refused");
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let same = match (origin.to_str().ok(), host) {
                (Some(o), Some(h)) => same_authority(o, h),
                _ => false,
            };
            if !same {
                return Some("a POST from another origin is refused");
            }
        }
    }
    None
}

/// `host[:port]` an IP literal (`[v6]` included), `localhost`, or one of `names`.
fn known_host(authority: &str, names: &[String]) -> bool {
    let host = strip_port(authority);
    if host.starts_with('[') && host.ends_with(']') {
        return host[1..host.len() - 1].parse::<std::net::Ipv6Addr>().is_ok();
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    host.parse::<std::net::Ipv4Addr>().is_ok()
        || host.eq_ignore_ascii_case("localhost")
        || names.iter().any(|n| n.eq_ignore_ascii_case(host))
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |end| &authority[..=end]);
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// Whether an `Origin` (`scheme://host[:port]`, or `null`) names the same host and port as
/// `Host`; a default port written on one side and left out on the other is the same.
fn same_authority(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else { return false };
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let with_port = |a: &str| {
        if strip_port(a).len() == a.len() {
            format!("{a}:{default}").to_ascii_lowercase()
        } else {
            a.to_ascii_lowercase()
        }
    };
    with_port(authority) == with_port(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(method: Method, pairs: &[(&str, &str)], hosts: &AdminHosts) -> Option<&'static str> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        refusal(&method, None, &h, hosts)
    }

    #[test]
    fn hosts_and_origins() {
        let lo = AdminHosts { loopback: true, names: vec!["sidekey.internal".into()] };
        for ok in ["127.0.0.1:9901", "localhost:9901", "[::1]:9901", "10.0.0.3", "sidekey.internal:9901", "LOCALHOST"] {
            assert_eq!(check(Method::GET, &[("host", ok)], &lo), None, "{ok}");
        }
        for bad in ["evil.example", "evil.example:9901", "localhost.evil.example", "127.0.0.1.nip.io"] {
            assert!(check(Method::GET, &[("host", bad)], &lo).is_some(), "{bad}");
        }
        let off = AdminHosts { loopback: false, names: vec![] };
        assert_eq!(check(Method::GET, &[("host", "sidekey.prod.svc")], &off), None);

        let h = ("host", "127.0.0.1:9901");
        assert_eq!(check(Method::POST, &[h], &lo), None, "no Origin: curl, scripts");
        assert_eq!(check(Method::POST, &[h, ("origin", "http://127.0.0.1:9901")], &lo), None);
        assert!(check(Method::POST, &[h, ("origin", "null")], &lo).is_some());
        assert!(check(Method::POST, &[h, ("origin", "http://evil.example")], &lo).is_some());
        assert!(check(Method::POST, &[h, ("origin", "http://127.0.0.1:9902")], &lo).is_some());
        assert!(check(Method::POST, &[h, ("sec-fetch-site", "cross-site")], &lo).is_some());
        assert_eq!(check(Method::POST, &[h, ("sec-fetch-site", "same-origin")], &lo), None);
        assert_eq!(check(Method::POST, &[("host", "localhost"), ("origin", "http://localhost:80")], &lo), None);
    }
}
