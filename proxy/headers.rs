//! Which header fields describe one hop of a connection rather than the request: never
//! forwarded in either direction, never named as a route's credential.

use http::header::{self, HeaderName};

/// Headers that describe one hop, not the request: never forwarded in either direction.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name == header::PROXY_AUTHENTICATE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// [`is_hop_by_hop`] for a name as it came, in any case (an answer's head read without a
/// header map, `http1::Fields`). The same names; a test holds the two to it.
pub fn is_hop_by_hop_name(name: &[u8]) -> bool {
    let candidates: &[&[u8]] = match name.len() {
        2 => &[b"te"],
        7 => &[b"trailer", b"upgrade"],
        10 => &[b"connection", b"keep-alive"],
        16 => &[b"proxy-connection"],
        17 => &[b"transfer-encoding"],
        18 => &[b"proxy-authenticate"],
        19 => &[b"proxy-authorization"],
        _ => return false,
    };
    candidates.iter().any(|c| c.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_names_as_they_came_are_the_header_names_ones() {
        for name in [
            "connection",
            "Keep-Alive",
            "TE",
            "trailer",
            "Transfer-Encoding",
            "upgrade",
            "Proxy-Authorization",
            "proxy-authenticate",
            "Proxy-Connection",
            "host",
            "te2",
            "x-te",
            "content-length",
            "authorization",
            "connectiom",
            "upgrades",
            "trailers",
            "keep-alive2",
        ] {
            let header = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(is_hop_by_hop_name(name.as_bytes()), is_hop_by_hop(&header), "{name}");
        }
    }
}
