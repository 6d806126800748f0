//! Safe defaults the config is held to (the contract's "Safe by default"): which listener
//! addresses and which URLs count as local, and which header names may never carry a
//! credential. Pure functions of what is written in the config; `config` reports what they
//! refuse with key and line.

use std::net::{IpAddr, Ipv4Addr};

/// Whether a listener on `addr` is reachable only from this host (or this pod's network
/// namespace): a loopback address. A `unix:` socket path counts as local.
pub fn is_local_listener(addr: &str) -> bool {
    if addr.starts_with("unix:") {
        return true;
    }
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => false,
    }
}

/// Loopback (127.0.0.0/8, ::1) or link-local (169.254.0.0/16, fe80::/10): the instance
/// metadata and container credentials endpoints live at the latter and are reached without
/// leaving the host.
pub fn is_local_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_local_v4(v4),
        IpAddr::V6(v6) => {
            v6.is_loopback() || (v6.segments()[0] & 0xffc0) == 0xfe80 || v6.to_ipv4_mapped().is_some_and(is_local_v4)
        }
    }
}

fn is_local_v4(ip: Ipv4Addr) -> bool {
    ip.is_loopback() || ip.is_link_local()
}

/// An `http://` URL whose host is not local (see [`is_local_ip`]; `localhost` counts as
/// loopback): what is sent there crosses a network in clear.
pub fn is_plaintext_off_host(u: &str) -> bool {
    let Ok(url) = url::Url::parse(u) else { return false };
    if url.scheme() != "http" {
        return false;
    }
    match url.host() {
        Some(url::Host::Ipv4(ip)) => !is_local_ip(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => !is_local_ip(IpAddr::V6(ip)),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.');
            !(d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost"))
        }
        None => false,
    }
}

/// Why `name` may not carry a credential, if it may not: a header that frames the message or
/// belongs to one hop. A credential of `0` in `Content-Length` would make the client's body a
/// second request upstream; `Host` would move the request to another virtual host; the hop's
/// own headers are removed or rewritten on the way.
pub fn framing_or_hop_header(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("proxy-") {
        return Some("a Proxy-* header belongs to the hop to a proxy, not to the upstream");
    }
    match lower.as_str() {
        "content-length" | "transfer-encoding" | "te" | "trailer" => {
            Some("it frames the message: a credential there could split one request into two upstream")
        }
        "expect" | "upgrade" | "connection" | "keep-alive" => {
            Some("it belongs to one hop and is managed by sidekey on each")
        }
        "host" => Some("it names the upstream, which the route fixes"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_means_loopback_link_local_or_a_unix_socket() {
        assert!(is_local_listener("127.0.0.1:8080"));
        assert!(is_local_listener("[::1]:8080"));
        assert!(is_local_listener("unix:/run/sidekey/proxy.sock"));
        assert!(!is_local_listener("0.0.0.0:8080"));
        assert!(!is_local_listener("10.0.0.5:8080"));
        assert!(!is_local_listener("[::]:8080"));

        assert!(!is_plaintext_off_host("http://127.0.0.1:8200/v1"));
        assert!(!is_plaintext_off_host("http://localhost/x"));
        assert!(!is_plaintext_off_host("http://169.254.169.254/latest/api/token"));
        assert!(!is_plaintext_off_host("http://169.254.170.2/v2/credentials"));
        assert!(!is_plaintext_off_host("http://[fe80::1]/x"));
        assert!(!is_plaintext_off_host("http://[::1]:9/x"));
        assert!(!is_plaintext_off_host("https://idp.example.com/token"));
        assert!(is_plaintext_off_host("http://idp.example.com/token"));
        assert!(is_plaintext_off_host("http://10.0.0.8/token"));
        assert!(is_plaintext_off_host("http://[fec0::1]/token"));
        assert!(is_plaintext_off_host("http://169.255.0.1/token"));
    }

    #[test]
    fn framing_and_hop_headers_cannot_carry_credentials() {
        for h in [
            "Content-Length",
            "transfer-encoding",
            "TE",
            "Trailer",
            "Expect",
            "Upgrade",
            "Connection",
            "Keep-Alive",
            "Host",
            "Proxy-Authorization",
            "proxy-anything",
        ] {
            assert!(framing_or_hop_header(h).is_some(), "{h}");
        }
        for h in ["Authorization", "X-Api-Key", "Cookie", "Content-Type"] {
            assert!(framing_or_hop_header(h).is_none(), "{h}");
        }
    }
}
