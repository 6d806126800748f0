//! Request -> route. A request reaches an upstream only through a route, and the upstream URL
//! is assembled from the route's own scheme and authority: nothing the client sends can
//! change where its token goes.

use http::header::{self, HeaderName};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Uri, Version};

use crate::headers::is_hop_by_hop;

/// Where a route forwards to: fixed at config time.
#[derive(Debug, Clone)]
pub struct Target {
    pub scheme: Scheme,
    pub authority: Authority,
    /// The upstream URL's own path without a trailing `/` (empty for the root).
    pub base_path: String,
}

impl Target {
    /// Parses a validated upstream URL.
    pub fn parse(upstream: &str) -> Result<Target, String> {
        let url = url::Url::parse(upstream).map_err(|e| e.to_string())?;
        let scheme = Scheme::try_from(url.scheme()).map_err(|e| e.to_string())?;
        let host = url.host_str().ok_or("no host")?;
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let authority = Authority::try_from(authority.as_str()).map_err(|e| e.to_string())?;
        let base_path = url.path().trim_end_matches('/').to_owned();
        Ok(Target { scheme, authority, base_path })
    }

    /// The upstream URI for `rest` (a path starting with `/`, or empty) and a query: the
    /// absolute URL (what a SigV4 signature covers).
    pub fn uri(&self, rest: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(self.path_and_query(rest, query)?)
            .build()
    }

    /// The same in origin form (path and query only): the route's upstream pool supplies the
    /// rest (HTTP/1.1's `Host`, HTTP/2's `:scheme` and `:authority`), as the pool is the
    /// route's own.
    pub fn origin_uri(&self, rest: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        Ok(Uri::from(self.path_and_query(rest, query)?))
    }

    fn path_and_query(&self, rest: &str, query: Option<&str>) -> Result<PathAndQuery, http::Error> {
        // Exactly the length: a `Bytes` made from a full `String` takes it over as it is (one
        // with spare capacity costs another allocation).
        let path = self.base_path.len() + rest.len();
        let mut pq = String::with_capacity(path.max(1) + query.map_or(0, |q| q.len() + 1));
        pq.push_str(&self.base_path);
        pq.push_str(rest);
        if pq.is_empty() {
            pq.push('/');
        }
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        Ok(PathAndQuery::try_from(pq)?)
    }
}

/// Why a request matched no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoute {
    /// No route's host or prefix matches.
    Unmatched,
    /// An absolute-form request for a host that no route names: sidekey is not an open proxy.
    ForeignHost,
    /// The path is not one sidekey will forward (encoded dot segments, not origin-form).
    BadPath,
}

/// A match: the route's index and the path to append to its upstream base path.
#[derive(Debug, PartialEq, Eq)]
pub struct Match<'p> {
    pub route: usize,
    pub rest: std::borrow::Cow<'p, str>,
}

/// The route lookup table, built once from the config.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// (lowercased host, whether it names a port, route) for host routing.
    hosts: Vec<(String, bool, usize)>,
    /// (prefix, route), longest prefix first.
    prefixes: Vec<(String, usize)>,
}

impl RouteTable {
    /// Builds the table from each route's optional host and prefix, in route order.
    pub fn new<'a>(routes: impl IntoIterator<Item = (Option<&'a str>, Option<&'a str>)>) -> RouteTable {
        let mut t = RouteTable::default();
        for (i, (host, prefix)) in routes.into_iter().enumerate() {
            if let Some(h) = host {
                let has_port = Authority::try_from(h).ok().and_then(|a| a.port_u16()).is_some();
                t.hosts.push((h.to_ascii_lowercase(), has_port, i));
            }
            if let Some(p) = prefix {
                t.prefixes.push((p.to_owned(), i));
            }
        }
        t.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        t
    }

    /// Finds the route for a request.
    ///
    /// An HTTP/1 request in absolute form (`GET http://host/x`) is a proxy request: it goes to
    /// the route naming that host, or nowhere. Otherwise the Host header (the `:authority` for
    /// HTTP/2) may select a route by host; failing that the longest prefix wins.
    /// `host`: the request's `Host` (asked for only where a route is chosen by host).
    pub fn find<'r, 'h>(
        &self,
        version: Version,
        uri: &'r Uri,
        host: impl FnOnce() -> Option<&'h str>,
    ) -> Result<Match<'r>, NoRoute> {
        let path = uri.path();
        if !path.starts_with('/') {
            return Err(NoRoute::BadPath);
        }
        let path = normalize_path(path).ok_or(NoRoute::BadPath)?;
        let absolute_form = version < Version::HTTP_2 && uri.authority().is_some();
        let host = if self.hosts.is_empty() {
            // No route is chosen by host: nothing to look up (an absolute-form request still
            // names a host no route has, below).
            None
        } else if version < Version::HTTP_2 && !absolute_form {
            host()
        } else {
            uri.authority().map(Authority::as_str)
        };
        if let Some(host) = host {
            if let Some(route) = self.by_host(host) {
                return Ok(Match { route, rest: path });
            }
        }
        if absolute_form {
            return Err(NoRoute::ForeignHost);
        }
        self.by_prefix(path).ok_or(NoRoute::Unmatched)
    }

    /// The route whose `host` names `authority` (a CONNECT target), if any.
    pub fn host_route(&self, authority: &str) -> Option<usize> {
        self.by_host(authority)
    }

    /// Finds the route for a request inside an intercepted tunnel to `authority`: the route the
    /// CONNECT target named, whatever Host the request itself carries, with its path unchanged.
    pub fn find_via<'r>(&self, authority: &str, uri: &'r Uri) -> Result<Match<'r>, NoRoute> {
        let path = uri.path();
        if !path.starts_with('/') {
            return Err(NoRoute::BadPath);
        }
        let rest = normalize_path(path).ok_or(NoRoute::BadPath)?;
        let route = self.by_host(authority).ok_or(NoRoute::ForeignHost)?;
        Ok(Match { route, rest })
    }

    fn by_host(&self, authority: &str) -> Option<usize> {
        let hostname = strip_port(authority);
        self.hosts.iter().find_map(|(h, has_port, i)| {
            let candidate = if *has_port { authority } else { hostname };
            candidate.eq_ignore_ascii_case(h).then_some(*i)
        })
    }

    fn by_prefix<'p>(&self, path: std::borrow::Cow<'p, str>) -> Option<Match<'p>> {
        for (prefix, i) in &self.prefixes {
            if prefix == "/" {
                return Some(Match { route: *i, rest: path });
            }
            if path.starts_with(prefix.as_str()) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')) {
                let rest = match path {
                    std::borrow::Cow::Borrowed(p) => std::borrow::Cow::Borrowed(&p[prefix.len()..]),
                    std::borrow::Cow::Owned(p) => std::borrow::Cow::Owned(p[prefix.len()..].to_owned()),
                };
                return Some(Match { route: *i, rest });
            }
        }
        None
    }
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        // [v6]:port keeps its brackets; an unclosed bracket (only a hostile Host header has
        // one) is compared whole and matches no route.
        return authority.find(']').map_or(authority, |end| &authority[..=end]);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { authority })
}

/// Removes `.` and `..` segments (RFC 3986 section 5.2.4), so routing and the upstream see
/// the same path a server would. Encoded dot segments (`%2e`) and backslashes (`\\`, `%5c`)
/// are refused: servers disagree on whether to decode the first and whether the second
/// separates segments (`/a/..\\b` is `/b` to a WHATWG parser), and a proxy must not guess
/// differently from its upstream.
pub fn normalize_path(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    // Without a dot, a percent sign or a backslash there is nothing to remove or refuse.
    if !path.bytes().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return Some(std::borrow::Cow::Borrowed(path));
    }
    let mut needs_work = false;
    for seg in path.split('/') {
        if seg == "." || seg == ".." {
            needs_work = true;
        }
        if seg.contains('\\') {
            return None;
        }
        if seg.contains('%') {
            let lower = seg.to_ascii_lowercase();
            if lower.contains("%5c") {
                return None;
            }
            if lower.replace("%2e", ".").chars().all(|c| c == '.') && lower.contains("%2e") {
                return None;
            }
        }
    }
    if !needs_work {
        return Some(std::borrow::Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let last = segs.len().saturating_sub(1);
    for (i, seg) in segs.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() {
        s.push('/');
    }
    Some(std::borrow::Cow::Owned(s))
}

/// Gives the header values one block of their own, copied out of the buffer hyper read the
/// request into, where they point until then.
///
/// hyper reads the client's connection again while a request is in flight (to notice a
/// client that goes away); while any part of the request still points into its read buffer,
/// that read must set up a new 8 KiB buffer, and the old one is freed (and zeroed) once the
/// request is done with. A request with no body holds nothing else of the buffer, so after
/// this the read reuses it. Needed only for a request held past the routing step: one sent on
/// an idle pooled HTTP/1 connection is encoded there and its parts dropped, before hyper reads
/// again; the pool calls this for one that waits (HTTP/2, a new connection), the proxy for one
/// it keeps for a retry after a rotation.
pub fn own_values(headers: &mut HeaderMap) {
    let total: usize = headers.values().map(|v| v.len()).sum();
    if total == 0 {
        return;
    }
    let mut block = bytes::BytesMut::with_capacity(total);
    for v in headers.values() {
        block.extend_from_slice(v.as_bytes());
    }
    let block = block.freeze();
    let mut at = 0;
    for v in headers.values_mut() {
        let end = at + v.len();
        // hyper's parser and `HeaderValue` agree on what a value may hold; were one ever to
        // differ, that value stays where it is (and the buffer is set up anew, as before).
        if let Ok(mut copy) = HeaderValue::from_maybe_shared(block.slice(at..end)) {
            copy.set_sensitive(v.is_sensitive());
            *v = copy;
        }
        at = end;
    }
}

/// Removes hop-by-hop headers and every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the few names present instead of nine
    // hashed removals (a `Connection` header is one of them, so it is seen here too).
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// [`strip_hop_by_hop`] for a request, but for one hop-by-hop field it keeps: `te: trailers`
/// from a client on HTTP/2, where it is the one value TE may have (RFC 9113, section 8.2.2)
/// and says the client takes trailer fields. gRPC servers refuse a request without it, and an
/// answer's trailers reach such a client (an HTTP/2 upstream's pass through). TE from a client
/// on HTTP/1.1 is dropped, as before: the proxy's own HTTP/1.1 loop does not send trailers on.
pub fn strip_request_hop_by_hop(headers: &mut HeaderMap, client_on_h2: bool) {
    let trailers = client_on_h2 && headers.get_all(header::TE).iter().any(names_trailers);
    strip_hop_by_hop(headers);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether a TE value lists `trailers` (among transfer codings, each with its parameters).
fn names_trailers(value: &HeaderValue) -> bool {
    value.to_str().is_ok_and(|v| {
        v.split(',').any(|item| item.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn te_trailers_is_kept_only_for_a_client_on_http2_and_only_that_value() {
        let with = |te: &[&str]| {
            let mut h = HeaderMap::new();
            for v in te {
                h.append(header::TE, HeaderValue::from_str(v).unwrap());
            }
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            h
        };
        for te in [&["trailers"][..], &["TRAILERS"], &["gzip, trailers;q=1"], &["gzip", " trailers "]] {
            let mut h = with(te);
            strip_request_hop_by_hop(&mut h, true);
            let kept: Vec<_> = h.get_all(header::TE).iter().collect();
            assert_eq!(kept, [HeaderValue::from_static("trailers")], "{te:?}");
            assert!(h.get(header::CONNECTION).is_none() && h.get("x-kept").is_some());
        }
        for te in [&["gzip"][..], &["trailersx"], &["x-trailers"], &[]] {
            let mut h = with(te);
            strip_request_hop_by_hop(&mut h, true);
            assert!(h.get(header::TE).is_none(), "{te:?}");
        }
        let mut h = with(&["trailers"]);
        strip_request_hop_by_hop(&mut h, false);
        assert!(h.get(header::TE).is_none(), "TE from a client on HTTP/1.1 is not forwarded");
    }

    #[test]
    fn owned_values_are_equal_and_point_into_their_own_block() {
        // As hyper parses them: values that are slices of the connection's read buffer.
        let buffer = bytes::Bytes::from_static(b"text/html, */*curl/8.0secret-ish");
        let within = |v: &HeaderValue| buffer.as_ptr_range().contains(&v.as_bytes().as_ptr());
        let slice = |a: usize, b: usize| HeaderValue::from_maybe_shared(buffer.slice(a..b)).unwrap();
        let mut headers = HeaderMap::new();
        headers.append(header::ACCEPT, slice(0, 9));
        headers.append(header::ACCEPT, slice(11, 14));
        headers.append(header::USER_AGENT, slice(14, 22));
        let mut hidden = slice(22, 32);
        hidden.set_sensitive(true);
        headers.insert("x-api-key", hidden);
        headers.insert("x-empty", HeaderValue::from_static(""));
        let before = headers.clone();
        assert!(headers.values().filter(|v| !v.is_empty()).all(within));

        own_values(&mut headers);
        assert_eq!(headers, before);
        assert!(!headers.values().any(within), "a value still points into the read buffer");
        let accept: Vec<_> = headers.get_all(header::ACCEPT).iter().collect();
        assert_eq!(accept, ["text/html", "*/*"]);
        assert!(headers["x-api-key"].is_sensitive());
        assert!(!headers[header::USER_AGENT].is_sensitive());

        let mut empty = HeaderMap::new();
        own_values(&mut empty);
        assert!(empty.is_empty());
    }

    fn table() -> RouteTable {
        RouteTable::new([
            (None, Some("/github")),
            (Some("api.example.com"), Some("/github/enterprise")),
            (Some("localhost:9000"), None),
        ])
    }

    fn find(version: Version, uri: &str, host: Option<&str>) -> Result<(usize, String), NoRoute> {
        let uri: Uri = uri.parse().unwrap();
        table().find(version, &uri, || host).map(|m| (m.route, m.rest.into_owned()))
    }

    #[test]
    fn prefix_matches_on_segment_boundaries_longest_first() {
        let v = Version::HTTP_11;
        assert_eq!(find(v, "/github", None), Ok((0, "".into())));
        assert_eq!(find(v, "/github/x?q=1", None), Ok((0, "/x".into())));
        assert_eq!(find(v, "/githubx", None), Err(NoRoute::Unmatched));
        assert_eq!(find(v, "/github/enterprise/y", None), Ok((1, "/y".into())));
        assert_eq!(find(v, "/github/enterprisey", None), Ok((0, "/enterprisey".into())));
    }

    #[test]
    fn host_and_absolute_form() {
        let v = Version::HTTP_11;
        assert_eq!(find(v, "/repos", Some("API.example.com")), Ok((1, "/repos".into())));
        assert_eq!(find(v, "/repos", Some("api.example.com:443")), Ok((1, "/repos".into())));
        assert_eq!(find(v, "http://api.example.com/repos", None), Ok((1, "/repos".into())));
        assert_eq!(find(v, "http://evil.example/github/x", None), Err(NoRoute::ForeignHost));
        assert_eq!(find(v, "/github/x", Some("evil.example")), Ok((0, "/x".into())));
        assert_eq!(find(v, "/", Some("localhost:9000")), Ok((2, "/".into())));
        assert_eq!(find(v, "/", Some("localhost:9001")), Err(NoRoute::Unmatched));
        // Unclosed IPv6 brackets in a Host header (found by the `route` fuzz target: this
        // sliced past the end of the string and panicked) match nothing.
        assert_eq!(find(v, "/x/y", Some("[yp!")), Err(NoRoute::Unmatched));
        assert_eq!(find(v, "/github/x", Some("[")), Ok((0, "/x".into())));
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        // HTTP/2 carries the Host in the URI: that is not a proxy request.
        assert_eq!(find(Version::HTTP_2, "http://127.0.0.1:8080/github/x", None), Ok((0, "/x".into())));
    }

    #[test]
    fn without_host_routes_the_prefix_decides_and_absolute_form_is_foreign() {
        let t = RouteTable::new([(None, Some("/a")), (None, Some("/"))]);
        let find = |uri: &str, host: Option<&str>| {
            let uri: Uri = uri.parse().unwrap();
            t.find(Version::HTTP_11, &uri, || host).map(|m| (m.route, m.rest.into_owned()))
        };
        assert_eq!(find("/a/x", Some("anything.example")), Ok((0, "/x".into())));
        assert_eq!(find("/b", None), Ok((1, "/b".into())));
        assert_eq!(find("http://evil.example/a/x", None), Err(NoRoute::ForeignHost));
    }

    #[test]
    fn dot_segments_are_resolved_and_encoded_ones_refused() {
        let v = Version::HTTP_11;
        // Backslashes, literal or encoded: a WHATWG parser reads `\\` as `/` (found by the
        // `route` fuzz target: `/github/.\\../x` reached the upstream, whose parser could
        // climb out of the route's base path with it).
        assert_eq!(find(v, "/github/.\\../x", None), Err(NoRoute::BadPath));
        assert_eq!(find(v, "/github/a%5C..%5cb", None), Err(NoRoute::BadPath));
        assert_eq!(find(v, "/github/../admin", None), Err(NoRoute::Unmatched));
        assert_eq!(find(v, "/x/../github/a", None), Ok((0, "/a".into())));
        assert_eq!(find(v, "/github/a/./b/../c", None), Ok((0, "/a/c".into())));
        assert_eq!(find(v, "/github/%2e%2e/x", None), Err(NoRoute::BadPath));
        assert_eq!(find(v, "/github/.%2E/x", None), Err(NoRoute::BadPath));
        assert_eq!(find(v, "/github/a%2eb", None), Ok((0, "/a%2eb".into())));
    }

    #[test]
    fn the_upstream_authority_is_fixed() {
        let t = Target::parse("https://api.example.com:8443/v1/").unwrap();
        for rest in ["//evil.example/x", "/@evil.example", "/http://evil.example/"] {
            let uri = t.uri(rest, Some("a=b")).unwrap();
            assert_eq!(uri.authority().unwrap().as_str(), "api.example.com:8443");
            assert_eq!(uri.scheme_str(), Some("https"));
            assert!(uri.path().starts_with("/v1/"));
        }
        assert_eq!(Target::parse("http://h").unwrap().uri("", None).unwrap().path(), "/");
    }

    #[test]
    fn connection_named_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "x-secret-hop, keep-alive".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert(header::PROXY_AUTHORIZATION, "Basic abc".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }
}
