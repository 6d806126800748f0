//! Route matching and upstream URL construction on arbitrary request targets and Host
//! headers: whatever the client sends, a matched request's upstream URL has its route's scheme
//! and authority, read back the same by http's parser and by the WHATWG URL parser, and its
//! path has no dot segment left. Input: request target, NUL, Host header, NUL, a version byte.
#![no_main]

use http::{HeaderValue, Uri, Version};
use libfuzzer_sys::fuzz_target;
use sidekey::route::{RouteTable, Target};

const ROUTES: &[(Option<&str>, Option<&str>, &str)] = &[
    (None, Some("/api"), "https://api.example.com/base"),
    (Some("github.example.com"), Some("/gh"), "https://api.github.example:8443"),
    (Some("plain.example.com:8080"), None, "http://127.0.0.1:9000/v1/"),
    (None, Some("/a/b"), "https://deep.example.net/x/y"),
];

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let target = parts.next().unwrap_or_default();
    let host = parts.next().unwrap_or_default();
    let version = match parts.next().and_then(|v| v.first()) {
        Some(v) if v % 2 == 1 => Version::HTTP_2,
        _ => Version::HTTP_11,
    };
    let Ok(uri) = Uri::try_from(target) else { return };
    // The Host as the proxy reads it: a header value that is text.
    let host = HeaderValue::from_bytes(host).ok();
    let host = host.as_ref().and_then(|h| h.to_str().ok());
    let table = RouteTable::new(ROUTES.iter().map(|(h, p, _)| (*h, *p)));
    let Ok(m) = table.find(version, &uri, || host) else { return };
    let upstream = Target::parse(ROUTES[m.route].2).unwrap();
    assert!(m.rest.is_empty() || m.rest.starts_with('/'), "rest {:?}", m.rest);
    for seg in m.rest.split('/') {
        assert!(seg != ".." && seg != ".", "a dot segment survived: {:?}", m.rest);
    }
    let Ok(built) = upstream.uri(&m.rest, uri.query()) else { return };
    assert_eq!(built.scheme(), Some(&upstream.scheme));
    assert_eq!(built.authority(), Some(&upstream.authority));
    let text = built.to_string();
    let reparsed: Uri = text.parse().expect("a built URI reparses");
    assert_eq!(reparsed.authority(), Some(&upstream.authority), "{text}");
    let whatwg = url::Url::parse(&text).expect("a built URI is a URL");
    let expected = url::Url::parse(ROUTES[m.route].2).unwrap();
    assert_eq!(whatwg.host_str(), expected.host_str(), "{text}");
    assert_eq!(whatwg.port_or_known_default(), expected.port_or_known_default(), "{text}");
    assert!(whatwg.path().starts_with(upstream.base_path.as_str()), "{text} left {}", upstream.base_path);
});
