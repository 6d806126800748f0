//! The data path end to end: routing, injection, header hygiene, errors, streaming, h2c,
//! TLS upstreams with h2.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use support::*;

const TOKEN: &str = "tok_9f8e7d6c5b4a";
const OTHER: &str = "other_1234567890";

/// Env vars are process-wide: each test uses its own names.
fn set_env(var: &str, value: &str) {
    // SAFETY-free: std::env::set_var is safe in edition 2021; tests set distinct names.
    std::env::set_var(var, value);
}

fn two_routes(up: &Upstream, var_a: &str, var_b: &str) -> String {
    two_routes_with(
        up,
        &format!(
            "[tokens.a]\nsource = \"env\"\nvar = \"{var_a}\"\n\n[tokens.b]\nsource = \"env\"\nvar = \"{var_b}\"\n"
        ),
    )
}

/// Route `default` (`/api`, token `a` as `Authorization: Bearer`) and route `custom` (host
/// `api.example.com`, token `b` as `X-Api-Key: key=...`), with `tokens` defining `a` and `b`.
fn two_routes_with(up: &Upstream, tokens: &str) -> String {
    format!(
        r#"{LISTEN}
[[routes]]
name = "default"
prefix = "/api"
upstream = "{url}/base"
token = "a"

[[routes]]
name = "custom"
prefix = "/custom"
host = "api.example.com"
upstream = "{url}"
token = "b"
header = "X-Api-Key"
format = "key={{token}}"

{tokens}"#,
        url = up.url
    )
}

#[tokio::test]
async fn injects_per_route_with_default_and_custom_header_and_format() {
    set_env("SK_T1_A", TOKEN);
    set_env("SK_T1_B", OTHER);
    let up = Upstream::plain().await;
    let sk = start_proxy(&two_routes(&up, "SK_T1_A", "SK_T1_B")).await;
    let c = client();

    let a = get(&c, &format!("http://{}/api/repos/x?page=2&q=a%20b", sk.proxy_addr)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = up.last();
    assert_eq!(seen.path, "/base/repos/x?page=2&q=a%20b");
    assert_eq!(seen.headers["authorization"], format!("Bearer {TOKEN}").as_str());
    assert_eq!(seen.headers["host"], up.addr.to_string().as_str());
    assert!(!seen.headers.contains_key("x-api-key"));

    let b = get(&c, &format!("http://{}/custom/v1", sk.proxy_addr)).await;
    assert_eq!(b.status, 200);
    let seen = up.last();
    assert_eq!(seen.path, "/v1");
    assert_eq!(seen.headers["x-api-key"], format!("key={OTHER}").as_str());
    assert!(!seen.headers.contains_key("authorization"));
    sk.shutdown().await;
}

#[tokio::test]
async fn the_client_header_is_replaced_and_hop_by_hop_headers_dropped() {
    set_env("SK_T2_A", TOKEN);
    set_env("SK_T2_B", OTHER);
    let up = Upstream::plain().await;
    let sk = start_proxy(&two_routes(&up, "SK_T2_A", "SK_T2_B")).await;
    let req = Request::get(format!("http://{}/api/x", sk.proxy_addr))
        .header("authorization", "Bearer client-supplied")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("x-keep", "kept")
        .body(Full::default())
        .unwrap();
    let a = send(&client(), req).await;
    assert_eq!(a.status, 200);
    let seen = up.last();
    let auth: Vec<_> = seen.headers.get_all("authorization").iter().collect();
    assert_eq!(auth, [format!("Bearer {TOKEN}").as_str()]);
    assert!(!seen.headers.contains_key("proxy-authorization"));
    assert!(!seen.headers.contains_key("x-hop"));
    assert_eq!(seen.headers["x-keep"], "kept");
    // The upstream's hop-by-hop response header does not reach the client.
    assert!(!a.headers.contains_key("keep-alive"));
    sk.shutdown().await;
}

/// The proxy listener's own loop keeps a plain request's fields as they came and sends them on
/// with the credential after them; within a rotation's retry window (a token just loaded, with
/// an overlap) a copy is kept for a 401 retry as well. Both must forward the same: the client's
/// own value of the injected header replaced, the hop's fields and `Host` not passed on, the
/// rest as the client sent it (routing by `Host` included).
#[tokio::test]
async fn a_plain_request_s_fields_go_on_less_the_hop_s_with_the_credential_replaced() {
    let up = Upstream::plain().await;
    for overlap in ["0s", "30s"] {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, TOKEN).unwrap();
        std::fs::write(&b, OTHER).unwrap();
        let tokens = format!(
            "[tokens.a]\nsource = \"file\"\npath = {a:?}\noverlap = \"{overlap}\"\n\n\
             [tokens.b]\nsource = \"file\"\npath = {b:?}\noverlap = \"{overlap}\"\n"
        );
        let config = two_routes_with(&up, &tokens);
        let sk = start_proxy(&config).await;
        let answer = raw(
            sk.proxy_addr,
            b"GET /api/x?q=1 HTTP/1.1\r\nHost: client.example\r\nAuthorization: Bearer client-supplied\r\n\
              Proxy-Authorization: Basic c2VjcmV0\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
              TE: trailers\r\nX-Keep: Kept Value\r\nx-keep: second\r\nAccept:*/*\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "overlap {overlap}: {answer}");
        let seen = up.last();
        assert_eq!(seen.path, "/base/x?q=1");
        let auth: Vec<_> = seen.headers.get_all("authorization").iter().collect();
        assert_eq!(auth, [format!("Bearer {TOKEN}").as_str()], "overlap {overlap}");
        assert_eq!(seen.headers.get_all("host").iter().collect::<Vec<_>>(), [up.addr.to_string().as_str()]);
        for hop in ["proxy-authorization", "connection", "keep-alive", "te"] {
            assert!(!seen.headers.contains_key(hop), "overlap {overlap}: {hop} passed on");
        }
        assert_eq!(seen.headers.get_all("x-keep").iter().collect::<Vec<_>>(), ["Kept Value", "second"]);
        assert_eq!(seen.headers["accept"], "*/*");

        // Chosen by its Host; the client's own value of the route's header replaced, its
        // Authorization (not the route's to set) passed on.
        let answer = raw(
            sk.proxy_addr,
            b"GET /custom/v1 HTTP/1.1\r\nHost: API.example.com\r\nX-API-Key: client\r\nAuthorization: Basic bWluZQ==\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "overlap {overlap}: {answer}");
        let seen = up.last();
        // Chosen by host, the path goes on whole (by its prefix it would be `/v1`).
        assert_eq!(seen.path, "/custom/v1");
        let keys: Vec<_> = seen.headers.get_all("x-api-key").iter().collect();
        assert_eq!(keys, [format!("key={OTHER}").as_str()], "overlap {overlap}");
        assert_eq!(seen.headers["authorization"], "Basic bWluZQ==");
        sk.shutdown().await;
    }
}

#[tokio::test]
async fn routes_by_prefix_host_and_absolute_form() {
    set_env("SK_T3_A", TOKEN);
    set_env("SK_T3_B", OTHER);
    let up = Upstream::plain().await;
    let sk = start_proxy(&two_routes(&up, "SK_T3_A", "SK_T3_B")).await;
    let c = client();

    // Segment boundaries: /apix is not /api.
    let a = get(&c, &format!("http://{}/apix", sk.proxy_addr)).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["error"], "no_route");
    let before = up.seen().len();

    // Host header routing keeps the path.
    let req = Request::get(format!("http://{}/repos/1", sk.proxy_addr))
        .header("host", "api.example.com")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&c, req).await.status, 200);
    let seen = up.last();
    assert_eq!(seen.path, "/repos/1");
    assert_eq!(seen.headers["x-api-key"], format!("key={OTHER}").as_str());
    assert_eq!(up.seen().len(), before + 1);

    // Absolute form (an HTTP_PROXY client).
    let resp = raw(
        sk.proxy_addr,
        b"GET http://api.example.com/abs?x=1 HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(up.last().path, "/abs?x=1");

    // Absolute form for a host no route names: refused, nothing forwarded.
    let n = up.seen().len();
    let resp = raw(
        sk.proxy_addr,
        b"GET http://evil.example/api/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    assert!(resp.contains("\"no_route\""), "{resp}");
    // CONNECT is refused too.
    let resp = raw(sk.proxy_addr, b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert_eq!(up.seen().len(), n);
    sk.shutdown().await;
}

#[tokio::test]
async fn smuggled_authorities_stay_on_the_route_upstream() {
    set_env("SK_T4_A", TOKEN);
    set_env("SK_T4_B", OTHER);
    let up = Upstream::plain().await;
    let sk = start_proxy(&two_routes(&up, "SK_T4_A", "SK_T4_B")).await;
    for path in [
        "/api//evil.example/x",
        "/api/@evil.example/x",
        "/api/http://evil.example/x",
        "/api/x/../../api/y",
        "/api/..;/x",
        "/api/%2F%2Fevil.example",
    ] {
        let before = up.seen().len();
        let resp = raw(
            sk.proxy_addr,
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{path}: {resp}");
        assert_eq!(up.seen().len(), before + 1, "{path} reached the upstream once");
        let seen = up.last();
        assert!(seen.path.starts_with("/base/"), "{path} -> {}", seen.path);
        assert_eq!(seen.headers["host"], up.addr.to_string().as_str(), "{path}");
    }
    // Dot segments that climb out of the prefix leave the route; encoded ones are refused.
    let before = up.seen().len();
    let resp = raw(sk.proxy_addr, b"GET /api/../etc HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    let resp =
        raw(sk.proxy_addr, b"GET /api/%2e%2e/%2e%2e/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_eq!(up.seen().len(), before);
    sk.shutdown().await;
}

#[tokio::test]
async fn error_answers_are_json_with_the_contract_codes() {
    set_env("SK_T5_A", TOKEN);
    let up = Upstream::plain().await;
    // A port nobody listens on: bind one, note it, close it.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let config = format!(
        r#"{LISTEN}
[[routes]]
name = "dead"
prefix = "/dead"
upstream = "http://{dead}"
token = "a"

[[routes]]
name = "slow"
prefix = "/slow"
upstream = "{url}"
token = "a"
timeout = "300ms"

[[routes]]
name = "missing"
prefix = "/missing"
upstream = "{url}"
token = "unset"

[tokens.a]
source = "env"
var = "SK_T5_A"

[tokens.unset]
source = "env"
var = "SK_T5_NEVER_SET"
"#,
        url = up.url
    );
    let sk = start_proxy(&config).await;
    let c = client();
    let base = format!("http://{}", sk.proxy_addr);

    let a = get(&c, &format!("{base}/nothing")).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["error"], "no_route");
    assert_eq!(a.headers["content-type"], "application/json");

    let a = get(&c, &format!("{base}/dead/x")).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["error"], "upstream_unreachable");

    // The timeout on a new connection, then on a pooled one (the first request below leaves
    // one idle; each timed-out request costs its connection); the route serves on after.
    let a = get(&c, &format!("{base}/slow/never")).await;
    assert_eq!(a.status, 504);
    assert_eq!(a.json()["error"], "upstream_timeout");
    assert_eq!(get(&c, &format!("{base}/slow/fast")).await.status, 200);
    let a = get(&c, &format!("{base}/slow/never")).await;
    assert_eq!(a.status, 504);
    assert_eq!(a.json()["error"], "upstream_timeout");
    assert_eq!(get(&c, &format!("{base}/slow/fast")).await.status, 200);

    let n = up.seen().len();
    let a = get(&c, &format!("{base}/missing/x")).await;
    assert_eq!(a.status, 503);
    let j = a.json();
    assert_eq!(j["error"], "token_unavailable");
    assert_eq!(j["token"], "unset");
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(up.seen().len(), n, "a request without its token is never forwarded");

    // Readiness names the token without a value.
    let r = get(&c, &format!("http://{}/readyz", sk.admin_addr)).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["not_ready"], serde_json::json!(["unset"]));

    // The counters carry the numeric status.
    let m = get(&c, &format!("http://{}/metrics", sk.admin_addr)).await.text();
    assert!(m.contains(r#"sidekey_requests_total{route="dead",status="502"} "#), "{m}");
    assert!(m.contains(r#"sidekey_requests_total{route="slow",status="504"} "#), "{m}");
    assert!(m.contains(r#"sidekey_requests_total{route="missing",status="503"} "#), "{m}");
    sk.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_get_4xx_and_the_proxy_keeps_serving() {
    set_env("SK_T6_A", TOKEN);
    set_env("SK_T6_B", OTHER);
    let up = Upstream::plain().await;
    let sk = start_proxy(&two_routes(&up, "SK_T6_A", "SK_T6_B")).await;
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"GET /api/x HTTP/1.1\r\nHo st: a\r\n\r\n",
        b"GET /api/\x01x HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let resp = raw(sk.proxy_addr, bad).await;
        // Not even as far as the upstream's own parser: no connection to it was opened.
        let what = String::from_utf8_lossy(bad);
        assert_eq!(up.connection_count(), 0, "{what:?} reached the upstream's listener");
        assert!(up.seen().is_empty(), "{what:?} reached the upstream: {:?}", up.seen());
        assert!(resp.is_empty() || resp.starts_with("HTTP/1.1 4"), "{what:?} -> {resp}");
    }
    // A chunked body that does not parse: the client's fault. Its head may have gone upstream
    // already (a chunked body is streamed), but never the request whole: what the upstream got
    // of the body ended in an error, not in a last chunk.
    let bad = b"POST /api/upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n";
    let resp = raw(sk.proxy_addr, bad).await;
    up.wait_quiet().await;
    for seen in up.seen() {
        assert_eq!(seen.path, "/base/upload", "only the chunked request may have been started upstream");
        assert!(!seen.body_complete, "a body with a bad chunk reached the upstream whole: {seen:?}");
    }
    assert!(resp.is_empty() || resp.starts_with("HTTP/1.1 4"), "a bad chunk -> {resp}");
    let a = get(&client(), &format!("http://{}/api/ok", sk.proxy_addr)).await;
    assert_eq!(a.status, 200);
    sk.shutdown().await;
}

#[tokio::test]
async fn bodies_stream_through_unchanged_both_ways() {
    set_env("SK_T7_A", TOKEN);
    set_env("SK_T7_B", OTHER);
    let up = Upstream::plain().await;
    let sk = start_proxy(&two_routes(&up, "SK_T7_A", "SK_T7_B")).await;
    let c = client();
    let upload = Bytes::from(pattern(5 * 1024 * 1024 + 7));
    let req = Request::post(format!("http://{}/api/upload", sk.proxy_addr)).body(Full::new(upload.clone())).unwrap();
    let a = send(&c, req).await;
    assert_eq!(a.status, 200);
    let j = a.json();
    assert_eq!(j["body_len"], upload.len());
    assert_eq!(j["body_sha256"], sha256(&upload));

    // A chunked body, in chunks of every size, then another request on the same connection.
    {
        use tokio::io::AsyncWriteExt;
        let upload = pattern(300_007);
        let mut raw = tokio::net::TcpStream::connect(sk.proxy_addr).await.unwrap();
        let mut sent = b"POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for chunk in upload.chunks(70_001).chain(upload.chunks(1).take(3)) {
            sent.extend_from_slice(format!("{:x};ext=1\r\n", chunk.len()).as_bytes());
            sent.extend_from_slice(chunk);
            sent.extend_from_slice(b"\r\n");
        }
        sent.extend_from_slice(b"0\r\nX-Trailer: 1\r\n\r\nGET /api/bytes/3 HTTP/1.1\r\nHost: x\r\n\r\n");
        for piece in sent.chunks(65_536) {
            raw.write_all(piece).await.unwrap();
        }
        let answer = one_answer(&mut raw).await;
        let json = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        let j: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {answer}"));
        let mut whole = upload.clone();
        whole.extend_from_slice(&upload[..3]);
        assert_eq!((j["body_len"].as_u64(), &j["body_sha256"]), (Some(whole.len() as u64), &sha256(&whole).into()));
        let next = one_answer(&mut raw).await;
        assert!(next.starts_with("HTTP/1.1 200 ") && next.ends_with(&String::from_utf8(pattern(3)).unwrap()), "{next}");
    }

    let n = 5 * 1024 * 1024 + 3;
    let a = get(&c, &format!("http://{}/api/bytes/{n}", sk.proxy_addr)).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body.len(), n);
    assert_eq!(sha256(&a.body), sha256(&pattern(n)));
    sk.shutdown().await;
}

#[tokio::test]
async fn h2c_inbound_and_h2_tls_upstream() {
    set_env("SK_T8_A", TOKEN);
    let ca = TestCa::new();
    let up = Upstream::tls(&ca).await;
    let config = format!(
        r#"{LISTEN}
[upstream]
ca_file = {ca:?}

[[routes]]
name = "tls"
prefix = "/tls"
upstream = "{url}"
token = "a"

[tokens.a]
source = "env"
var = "SK_T8_A"
"#,
        ca = ca.ca_file.display().to_string(),
        url = up.url
    );
    let sk = start_proxy(&config).await;

    // HTTP/1.1 in, HTTP/2 out (the upstream offers h2 by ALPN).
    let a = get(&client(), &format!("http://{}/tls/one", sk.proxy_addr)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = up.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.headers["authorization"], format!("Bearer {TOKEN}").as_str());
    assert_eq!(seen.path, "/one");
    // A body the listener streams (longer than it reads whole), to HTTP/2.
    let upload = Bytes::from(pattern(200_003));
    let req = Request::post(format!("http://{}/tls/upload", sk.proxy_addr)).body(Full::new(upload.clone())).unwrap();
    let a = send(&client(), req).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!((a.json()["body_len"].as_u64(), &a.json()["body_sha256"]), (Some(200_003), &sha256(&upload).into()));
    assert_eq!(up.last().version, http::Version::HTTP_2);

    // h2c prior knowledge in.
    let h2 = h2c_client();
    for i in 0..3 {
        let a = get(&h2, &format!("http://{}/tls/h2c/{i}", sk.proxy_addr)).await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(up.last().headers["authorization"], format!("Bearer {TOKEN}").as_str());
    }
    // Pooled: one upstream connection served all of it.
    assert_eq!(up.connection_count(), 1);
    sk.shutdown().await;
}

#[tokio::test]
async fn a_tls_upstream_not_signed_by_a_trusted_ca_is_refused() {
    set_env("SK_T9_A", TOKEN);
    let ca = TestCa::new();
    let up = Upstream::tls(&ca).await;
    let config = format!(
        r#"{LISTEN}
[[routes]]
name = "untrusted"
prefix = "/u"
upstream = "{url}"
token = "a"

[tokens.a]
source = "env"
var = "SK_T9_A"
"#,
        url = up.url
    );
    let sk = start_proxy(&config).await;
    let a = get(&client(), &format!("http://{}/u/x", sk.proxy_addr)).await;
    assert_eq!(a.status, 502, "{}", a.text());
    assert!(up.seen().is_empty(), "no request (and so no token) reached an unverified upstream");
    sk.shutdown().await;
}

#[tokio::test]
async fn http1_tls_upstream_with_a_route_ca_file() {
    set_env("SK_T10_A", TOKEN);
    let ca = TestCa::new();
    let up = Upstream::tls(&ca).await;
    let config = format!(
        r#"{LISTEN}
[[routes]]
name = "tls1"
prefix = "/t"
upstream = "{url}"
token = "a"
ca_file = {ca:?}

[tokens.a]
source = "env"
var = "SK_T10_A"
"#,
        ca = ca.ca_file.display().to_string(),
        url = up.url
    );
    let sk = start_proxy(&config).await;
    let req = Request::post(format!("http://{}/t/x", sk.proxy_addr)).body(Full::new(Bytes::from("abc"))).unwrap();
    let a = send(&client(), req).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["body_len"], 3);
    sk.shutdown().await;
}

/// An origin as many are: hyper's server, answering without reading the request's body. hyper
/// keeps such a connection only when the body is already in its buffer to skip (it cannot
/// wait for one nobody reads). Each request's method and path go to `seen` as the head is read.
async fn origin_ignoring_bodies(
) -> (std::net::SocketAddr, Arc<AtomicUsize>, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let (tx, seen) = tokio::sync::mpsc::unbounded_channel();
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let _ = tx.send(format!("{} {}", req.method(), req.uri().path()));
                    async { Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from("ok")))) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    });
    (addr, connections, seen)
}

/// One whole answer read from `client`'s connection.
async fn one_answer(client: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    bounded("an answer", async {
        let mut buf = [0u8; 4096];
        while !response_complete(&out) {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "the proxy closed the connection: {}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn a_short_body_goes_upstream_with_its_head_and_the_connection_is_used_again() {
    use tokio::io::AsyncWriteExt;
    set_env("SK_T_BODY", TOKEN);
    let (origin, connections, mut seen) = origin_ignoring_bodies().await;
    let config = format!(
        "{LISTEN}\n[[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"http://{origin}\"\ntoken = \"t\"\n\n\
         [tokens.t]\nsource = \"env\"\nvar = \"SK_T_BODY\"\n"
    );
    let sk = start_proxy(&config).await;
    // On a connection the listener's own loop serves, on one after a chunked body it streamed,
    // and on one it handed to hyper's server (a `Connection` header naming a field does that).
    // The origin may close the connection that carried the chunked body.
    for handed_over in [None, Some(""), Some("Connection: keep-alive, x-hop\r\n")] {
        let mut client = tokio::net::TcpStream::connect(sk.proxy_addr).await.unwrap();
        if let Some(connection) = handed_over {
            let chunked =
                format!("POST /chunked HTTP/1.1\r\nHost: x\r\n{connection}Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n");
            client.write_all(chunked.as_bytes()).await.unwrap();
            let answer = one_answer(&mut client).await;
            assert!(answer.ends_with("ok"), "after {handed_over:?}: {answer}");
            assert_eq!(bounded("the chunked request upstream", seen.recv()).await.as_deref(), Some("POST /chunked"));
        }
        let before = connections.load(Ordering::SeqCst);
        // The head alone: nothing goes upstream until the body is there (within bounds: the
        // head written alone came at once before).
        client.write_all(b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n").await.unwrap();
        let early = tokio::time::timeout(std::time::Duration::from_millis(300), seen.recv()).await;
        assert!(early.is_err(), "after {handed_over:?}: the head went upstream before its body: {early:?}");
        client.write_all(b"0123456789").await.unwrap();
        let first = one_answer(&mut client).await;
        assert!(first.starts_with("HTTP/1.1 200 ") && first.ends_with("ok"), "{first}");
        assert_eq!(bounded("the first request upstream", seen.recv()).await.as_deref(), Some("POST /first"));
        // Head and body in one write from the client, as client libraries send a short body.
        for n in 0..3 {
            let req = format!("POST /again/{n} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
            client.write_all(req.as_bytes()).await.unwrap();
            let again = one_answer(&mut client).await;
            assert!(again.starts_with("HTTP/1.1 200 ") && again.ends_with("ok"), "{again}");
            assert_eq!(bounded("a request upstream", seen.recv()).await, Some(format!("POST /again/{n}")));
        }
        // The origin had each body in its buffer when it answered: the connection it had (or
        // one new one, where the chunked request's was closed) carried all four.
        let new = connections.load(Ordering::SeqCst) - before;
        assert!(new <= 1, "after {handed_over:?}: {new} new upstream connections for 4 requests");
    }
    sk.shutdown().await;
}
