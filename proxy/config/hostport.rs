//! `host[:port]` as a `passthrough` entry or a CONNECT target names it.

/// `host` or `host:port` from a `passthrough` entry or a CONNECT target, host lowercased, IPv6
/// brackets removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// Parses `host[:port]`; `default_port` when none is given.
    pub fn parse(s: &str, default_port: u16) -> Result<HostPort, String> {
        let authority = http::uri::Authority::try_from(s).map_err(|_| format!("{s:?} is not a host or host:port"))?;
        let after_host = &authority.as_str()[authority.host().len()..];
        if authority.as_str().contains('@') || (!after_host.is_empty() && authority.port_u16().is_none()) {
            return Err(format!("{s:?} is not a host or host:port"));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        Ok(HostPort { host, port: authority.port_u16().unwrap_or(default_port) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_parsing() {
        assert_eq!(HostPort::parse("PyPI.org", 443).unwrap(), HostPort { host: "pypi.org".into(), port: 443 });
        assert_eq!(HostPort::parse("h:8443", 443).unwrap(), HostPort { host: "h".into(), port: 8443 });
        assert_eq!(HostPort::parse("[::1]:9", 443).unwrap(), HostPort { host: "::1".into(), port: 9 });
        for bad in ["", "user@h", "h:x", "a b", "http://h"] {
            assert!(HostPort::parse(bad, 443).is_err(), "{bad:?}");
        }
    }
}
