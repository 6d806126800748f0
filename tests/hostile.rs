//! Hostile clients: request smuggling and parser abuse over HTTP/1.1, HTTP/2 rapid reset and
//! CONTINUATION floods, slowloris heads, idle and surplus connections, attempts to use sidekey
//! as an open proxy, and the admin API's token. Each is refused with a 4xx or a closed
//! connection, the token goes nowhere it should not, and the proxy keeps serving.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::Request;
use http_body_util::Full;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "hostile_token_5e1f0a";

/// One route `/api` -> the upstream's `/base`, its token from a file; `extra` is appended.
fn config(name: &str, up: &Upstream, dir: &std::path::Path, extra: &str) -> String {
    let path = dir.join("token");
    std::fs::write(&path, TOKEN).unwrap();
    format!(
        "{LISTEN}\n{extra}\n[[routes]]\nname = \"{name}\"\nprefix = \"/api\"\nupstream = \"{}/base\"\ntoken = \"{name}\"\n\n\
         [tokens.{name}]\nsource = \"file\"\npath = {:?}\n",
        up.url,
        path.display().to_string()
    )
}

async fn still_serves(sk: &sidekey::Running) {
    let a = get(&client(), &format!("http://{}/api/still", sk.proxy_addr)).await;
    assert_eq!(a.status, 200, "the proxy keeps serving: {}", a.text());
}

/// Reads until the server closes the connection (bounded), returning what came.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    bounded("the server to close the connection", async {
        let mut buf = [0u8; 16384];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    out
}

#[tokio::test]
async fn conflicting_framing_cannot_smuggle_a_second_request() {
    let (up, dir) = (Upstream::plain().await, tempfile::tempdir().unwrap());
    let sk = start_proxy(&config("smuggle", &up, dir.path(), "")).await;
    // CL.TE: a front end reading Content-Length would see one request; one reading chunked
    // would see a second (`GET /api/smuggled`). hyper takes chunked, drops Content-Length,
    // and closes the connection after the answer; what reaches the upstream is re-framed.
    let attack = b"POST /api/first HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 40\r\n\
                   Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut s = TcpStream::connect(sk.proxy_addr).await.unwrap();
    s.write_all(attack).await.unwrap();
    let answer = String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned();
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "one answer, then the connection closes: {answer}");
    let paths: Vec<String> = up.seen().into_iter().map(|s| s.path).collect();
    assert!(!paths.iter().any(|p| p.contains("smuggled")), "a smuggled request reached the upstream: {paths:?}");
    let first = up.find("/base/first");
    assert_eq!(first.body_len, 0, "the chunked body (empty) was forwarded, not 40 bytes");
    assert!(first.headers.get("content-length").is_none_or(|v| v == "0"));

    // Framing hyper refuses outright.
    for (what, bad) in [
        ("TE not ending in chunked", &b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"[..]),
        ("TE in HTTP/1.0", b"POST /api/x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("two Content-Lengths", b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
        ("signed Content-Length", b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\nab"),
        ("obsolete line folding", b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n"),
        ("NUL in a header value", b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Bad: a\x00b\r\n\r\n"),
        ("bare CR in a header value", b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Bad: a\rb\r\n\r\n"),
        ("space before the colon", b"GET /api/x HTTP/1.1\r\nHost : a\r\n\r\n"),
        ("a backslash dot segment", b"GET /api/.\\../x HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("an encoded backslash", b"GET /api/a%5c..%5cx HTTP/1.1\r\nHost: a\r\n\r\n"),
    ] {
        let before = up.seen().len();
        let resp = raw(sk.proxy_addr, bad).await;
        assert!(resp.starts_with("HTTP/1.1 400") || resp.is_empty(), "{what}: {resp}");
        assert_eq!(up.seen().len(), before, "{what} reached the upstream");
    }
    still_serves(&sk).await;
    sk.shutdown().await;
}

#[tokio::test]
async fn oversized_heads_are_refused_under_the_configured_limits() {
    let (up, dir) = (Upstream::plain().await, tempfile::tempdir().unwrap());
    let extra = "[limits]\nmax_header_bytes = 16384\nmax_headers = 20\n";
    let sk = start_proxy(&config("oversized", &up, dir.path(), extra)).await;
    let big_header = format!("GET /api/x HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let long_uri = format!("GET /api/{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(20_000));
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_headers = format!("GET /api/x HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    for (what, bad) in [("a 20 kB header", &big_header), ("a 20 kB URI", &long_uri), ("30 headers", &many_headers)] {
        let resp = raw(sk.proxy_addr, bad.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 431") || resp.starts_with("HTTP/1.1 414"), "{what}: {resp}");
    }
    assert!(up.seen().is_empty(), "nothing oversized was forwarded");
    // Just under the limits passes.
    let ok: String = (0..15).map(|i| format!("X-H{i}: {}\r\n", "v".repeat(500))).collect();
    let resp =
        raw(sk.proxy_addr, format!("GET /api/fits HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{ok}\r\n").as_bytes())
            .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    sk.shutdown().await;
}

#[tokio::test]
async fn a_slow_head_is_cut_off_but_an_idle_keep_alive_connection_is_not() {
    let (up, dir) = (Upstream::plain().await, tempfile::tempdir().unwrap());
    let extra = "[limits]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"1h\"\n";
    let sk = start_proxy(&config("slowloris", &up, dir.path(), extra)).await;
    // Slowloris: a head begun and never finished is closed after header_read_timeout.
    let mut slow = TcpStream::connect(sk.proxy_addr).await.unwrap();
    slow.write_all(b"GET /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    let answer = read_to_close(&mut slow).await;
    assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&answer));

    // A keep-alive connection between requests is not a slow head: after a request, it stays
    // usable well past header_read_timeout.
    let mut ka = TcpStream::connect(sk.proxy_addr).await.unwrap();
    let req = b"GET /api/one HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    ka.write_all(req).await.unwrap();
    read_response(&mut ka).await;
    // The absence of a close can only be shown by waiting: three header timeouts.
    tokio::time::sleep(Duration::from_millis(900)).await;
    ka.write_all(b"GET /api/two HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    assert!(read_response(&mut ka).await.starts_with("HTTP/1.1 200"));
    assert_eq!(up.seen().len(), 2);
    sk.shutdown().await;
}

/// Reads one response with a Content-Length body from a connection that stays open.
async fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    bounded("a response", async {
        let mut buf = [0u8; 8192];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before a whole response: {}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
            if response_complete(&out) {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn idle_connections_are_closed_after_idle_timeout() {
    let (up, dir) = (Upstream::plain().await, tempfile::tempdir().unwrap());
    let extra = "[limits]\nidle_timeout = \"200ms\"\n";
    let sk = start_proxy(&config("idle", &up, dir.path(), extra)).await;
    let mut s = TcpStream::connect(sk.proxy_addr).await.unwrap();
    s.write_all(b"GET /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    // Nothing more is sent: the server closes it.
    assert!(read_to_close(&mut s).await.is_empty());
    // A connection that never sends anything is closed the same way.
    let mut silent = TcpStream::connect(sk.proxy_addr).await.unwrap();
    assert!(read_to_close(&mut silent).await.is_empty());
    sk.shutdown().await;
}

#[tokio::test]
async fn connections_past_max_connections_wait_for_a_free_slot() {
    let (up, dir) = (Upstream::plain().await, tempfile::tempdir().unwrap());
    let extra = "[limits]\nmax_connections = 2\n";
    let sk = start_proxy(&config("maxconn", &up, dir.path(), extra)).await;
    let mut held = Vec::new();
    for i in 0..2 {
        let mut s = TcpStream::connect(sk.proxy_addr).await.unwrap();
        s.write_all(format!("GET /api/held{i} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await.unwrap();
        assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // The third is accepted by the kernel but not served while both slots are taken.
    let mut third = TcpStream::connect(sk.proxy_addr).await.unwrap();
    third.write_all(b"GET /api/third HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(early.is_err(), "the third connection was served while two were open");
    // One slot frees: the third is served.
    drop(held.remove(0));
    let resp = read_response(&mut third).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    sk.shutdown().await;
}

// ---- HTTP/2 by hand: the frames a hostile client sends, byte by byte. ----

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET http://127.0.0.1/api/<path>`: static-table method and scheme, literals
/// without indexing for path and authority.
fn get_headers(path: &str) -> Vec<u8> {
    let path = format!("/api/{path}");
    let mut b = vec![0x82, 0x86, 0x04, path.len() as u8];
    b.extend_from_slice(path.as_bytes());
    b.extend_from_slice(&[0x01, 9]);
    b.extend_from_slice(b"127.0.0.1");
    b
}

/// Reads server frames until GOAWAY or the connection ends; returns the frame types seen and
/// the GOAWAY error code, if any.
async fn frames_until_goaway(s: &mut (impl AsyncReadExt + Unpin)) -> (Vec<u8>, Option<u32>) {
    let mut kinds = Vec::new();
    let mut goaway = None;
    bounded("GOAWAY or a closed connection", async {
        let mut head = [0u8; 9];
        loop {
            if s.read_exact(&mut head).await.is_err() {
                break;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                break;
            }
            kinds.push(head[3]);
            if head[3] == 7 {
                goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
                break;
            }
        }
    })
    .await;
    (kinds, goaway)
}

/// Sends `attack` while reading the server's frames (as [`frames_until_goaway`]): read only
/// after the write, a GOAWAY can be lost, since a server that closes with bytes of ours unread
/// makes its kernel reset the connection, and the reset discards what we had not read yet.
async fn attack(s: TcpStream, attack: Vec<u8>) -> (Vec<u8>, Option<u32>) {
    let (mut from, mut to) = s.into_split();
    // The server may close before it has read everything; a failed write is part of that.
    let writer = tokio::spawn(async move {
        let _ = to.write_all(&attack).await;
        to
    });
    let seen = frames_until_goaway(&mut from).await;
    writer.abort();
    seen
}

/// The server's first SETTINGS frame, as (id, value) pairs.
async fn server_settings(s: &mut TcpStream) -> Vec<(u16, u32)> {
    let mut head = [0u8; 9];
    bounded("the server's SETTINGS", s.read_exact(&mut head)).await.unwrap();
    assert_eq!(head[3], 4, "the server speaks first with SETTINGS");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    bounded("the server's SETTINGS", s.read_exact(&mut payload)).await.unwrap();
    payload
        .chunks(6)
        .map(|c| (u16::from_be_bytes([c[0], c[1]]), u32::from_be_bytes([c[2], c[3], c[4], c[5]])))
        .collect()
}

async fn h2_connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(4, 0, 0, &[])).await.unwrap();
    s
}

#[tokio::test]
async fn http2_rapid_reset_gets_goaway_and_the_proxy_keeps_serving() {
    let (up, dir) = (Upstream::plain().await, tempfile::tempdir().unwrap());
    let extra = "[limits]\nmax_streams = 50\n";
    let sk = start_proxy(&config("rapidreset", &up, dir.path(), extra)).await;
    let mut s = h2_connect(sk.proxy_addr).await;
    let settings = server_settings(&mut s).await;
    assert!(settings.contains(&(3, 50)), "SETTINGS_MAX_CONCURRENT_STREAMS = max_streams: {settings:?}");
    // 5000 streams, each opened and cancelled at once, in one write.
    let mut attack_bytes = Vec::new();
    for i in 0..5000u32 {
        let id = 1 + 2 * i;
        attack_bytes.extend(frame(1, 0x5, id, &get_headers("reset")));
        attack_bytes.extend(frame(3, 0, id, &8u32.to_be_bytes()));
    }
    let (_, goaway) = attack(s, attack_bytes).await;
    // ENHANCE_YOUR_CALM (0xb) from h2's limit on streams reset before they were served.
    assert_eq!(goaway, Some(0xb), "GOAWAY(ENHANCE_YOUR_CALM) for a rapid reset");
    still_serves(&sk).await;
    // Counted once the proxy has closed every upstream connection: by then the upstream has
    // read all that reached it.
    sk.shutdown().await;
    up.wait_all_closed().await;
    let forwarded = up.seen().iter().filter(|s| s.path == "/base/reset").count();
    eprintln!("rapid reset: GOAWAY {goaway:?}, {forwarded} of 5000 reset streams reached the upstream");
    assert!(forwarded <= 50, "{forwarded} reset streams were forwarded, more than max_streams (50)");
}

#[tokio::test]
async fn http2_continuation_flood_is_cut_off() {
    let (up, dir) = (Upstream::plain().await, tempfile::tempdir().unwrap());
    let sk = start_proxy(&config("continuation", &up, dir.path(), "")).await;
    let mut s = h2_connect(sk.proxy_addr).await;
    server_settings(&mut s).await;
    // HEADERS without END_HEADERS, then CONTINUATION frames that never end: 1 MB of
    // `x-flood: aaaa...` literals, far past max_header_bytes (64 KiB).
    let mut flood = frame(1, 0x1, 1, &get_headers("flood"));
    let mut literal = vec![0x00, 7];
    literal.extend_from_slice(b"x-flood");
    literal.push(100);
    literal.extend_from_slice(&[b'a'; 100]);
    for _ in 0..10_000 {
        flood.extend(frame(9, 0, 1, &literal));
    }
    let (kinds, goaway) = attack(s, flood).await;
    assert!(!kinds.contains(&1), "the flooded request was answered: {kinds:?}");
    // ENHANCE_YOUR_CALM (0xb) from h2's limit on CONTINUATION frames per header block.
    assert_eq!(goaway, Some(0xb), "GOAWAY(ENHANCE_YOUR_CALM) for a CONTINUATION flood");
    assert!(up.seen().is_empty(), "the flooded request reached the upstream");
    still_serves(&sk).await;
    sk.shutdown().await;
}

// ---- Never an open proxy. ----

#[tokio::test]
async fn the_token_goes_only_to_the_route_upstream() {
    let (up, dir) = (Upstream::plain().await, tempfile::tempdir().unwrap());
    let elsewhere = Upstream::plain().await;
    let sk = start_proxy(&config("openproxy", &up, dir.path(), "")).await;
    let c = client();
    // A spoofed Host does not pick the upstream: the route does, and Host is re-derived.
    let req = Request::get(format!("http://{}/api/spoof", sk.proxy_addr))
        .header("host", elsewhere.addr.to_string())
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&c, req).await.status, 200);
    assert_eq!(up.find("/base/spoof").headers["host"], up.addr.to_string().as_str());
    // A spoofed Host with no route's prefix matches nothing.
    let req = Request::get(format!("http://{}/other", sk.proxy_addr))
        .header("host", elsewhere.addr.to_string())
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&c, req).await.status, 404);
    // A Host with an unclosed IPv6 bracket (it once panicked the route lookup): no route.
    let resp = raw(sk.proxy_addr, b"GET /other HTTP/1.1\r\nHost: [evil\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    // Absolute-form for another authority, even with a route's path.
    let resp = raw(
        sk.proxy_addr,
        format!(
            "GET http://{}/api/x HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            elsewhere.addr, elsewhere.addr
        )
        .as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    // CONNECT to anything: refused.
    for target in [elsewhere.addr.to_string(), up.addr.to_string()] {
        let resp = raw(sk.proxy_addr, format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 403"), "CONNECT {target}: {resp}");
    }
    // A redirect to another host is handed to the client, never followed with the token.
    let location = format!("http://{}/stolen", elsewhere.addr);
    let a = get(&c, &format!("http://{}/api/redirect?to={location}", sk.proxy_addr)).await;
    assert_eq!(a.status, 302);
    assert_eq!(a.headers["location"], location.as_str());
    assert!(elsewhere.seen().is_empty(), "the other host saw a request: {:?}", elsewhere.seen());
    sk.shutdown().await;
}

// ---- The admin API's token. ----

#[tokio::test]
async fn the_admin_api_requires_its_token_except_for_probes() {
    let (up, dir) = (Upstream::plain().await, tempfile::tempdir().unwrap());
    let admin_file = dir.path().join("admin");
    std::fs::write(&admin_file, "admin-secret-1\n").unwrap();
    let extra = format!("[admin]\ntoken = {{ file = {:?} }}\n", admin_file.display().to_string());
    let sk = start_proxy(&config("admintoken", &up, dir.path(), &extra)).await;
    let c = client();
    let url = |p: &str| format!("http://{}{p}", sk.admin_addr);
    let with = |p: &str, auth: &str| Request::get(url(p)).header("authorization", auth).body(Full::default()).unwrap();
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(get(&c, &url(probe)).await.status, 200, "{probe} needs no token");
    }
    for path in ["/metrics", "/tokens", "/routes", "/"] {
        let a = get(&c, &url(path)).await;
        assert_eq!(a.status, 401, "{path} without the token");
        assert!(a.headers["www-authenticate"].to_str().unwrap().starts_with("Basic"), "{path}");
        assert_eq!(send(&c, with(path, "Bearer admin-secret-2")).await.status, 401, "{path} with a wrong token");
        assert_eq!(send(&c, with(path, "Bearer admin-secret-1")).await.status, 200, "{path} with the token");
    }
    // As a browser sends it: Basic, any user name ("ops:admin-secret-1").
    assert_eq!(send(&c, with("/tokens", "Basic b3BzOmFkbWluLXNlY3JldC0x")).await.status, 200);
    let refresh = "/tokens/admintoken/refresh";
    assert_eq!(post(&c, &url(refresh)).await.status, 401, "a forced refresh needs the token");
    let req = Request::post(url(refresh)).header("authorization", "Bearer admin-secret-1").body(Full::default());
    assert_eq!(send(&c, req.unwrap()).await.status, 200);
    // A rotated admin token applies from the next request.
    std::fs::write(&admin_file, "admin-secret-2").unwrap();
    assert_eq!(send(&c, with("/tokens", "Bearer admin-secret-1")).await.status, 401);
    let a = send(&c, with("/tokens", "Bearer admin-secret-2")).await;
    assert_eq!(a.status, 200);
    assert!(!a.text().contains(TOKEN) && !a.text().contains("admin-secret"), "{}", a.text());
    sk.shutdown().await;
}

#[tokio::test]
async fn header_values_with_non_ascii_bytes_pass_intact_and_del_is_refused() {
    let (up, dir) = (Upstream::plain().await, tempfile::tempdir().unwrap());
    let sk = start_proxy(&config("bytes", &up, dir.path(), "")).await;
    // obs-text (bytes 0x80-0xFF) and tabs are allowed in a field value; DEL is not.
    for (what, value, passes) in
        [("obs-text", &b"caf\xc3\xa9 \xff"[..], true), ("tab", b"a\tb", true), ("DEL", b"a\x7fb", false)]
    {
        let before = up.seen().len();
        let mut req = b"GET /api/bytes HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Value: ".to_vec();
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\nUser-Agent: t\r\n\r\n");
        let resp = raw(sk.proxy_addr, &req).await;
        if passes {
            assert!(resp.starts_with("HTTP/1.1 200"), "{what}: {resp}");
            let seen = up.last();
            assert_eq!(seen.headers["x-value"].as_bytes(), value, "{what}: the value changed on the way");
            assert_eq!(seen.headers["user-agent"], "t");
        } else {
            assert!(resp.starts_with("HTTP/1.1 400"), "{what}: {resp}");
            assert_eq!(up.seen().len(), before, "{what}: refused, yet it reached the upstream");
        }
    }
    still_serves(&sk).await;
    sk.shutdown().await;
}
