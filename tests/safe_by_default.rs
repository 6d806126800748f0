//! Safe by default (issue 30, the contract's section of that name): each finding of the hostile
//! review, reproduced as an attacker would, and refused.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sidekey");
const TOKEN: &str = "safe_default_token_4c2e9b";

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("sidekey.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// `sidekey check` and `sidekey run` on `text`: both exit 2, naming `expected` (`file:line: key`).
fn refused_by_check_and_run(text: &str, expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(dir.path(), text);
    for cmd in ["check", "run"] {
        let out = Command::new(BIN).args([cmd, "-c"]).arg(&p).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        for e in expected {
            assert!(err.contains(e), "{cmd}: {e:?} not in:\n{err}");
        }
    }
}

fn accepted_by_check(text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(dir.path(), text);
    let out = Command::new(BIN).args(["check", "-c"]).arg(&p).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

const ROUTE: &str = "[[routes]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"https://api.example\"\ntoken = \"t\"\n\n\
                     [tokens.t]\nsource = \"env\"\nvar = \"T\"\n";

#[test]
fn a_proxy_listener_off_loopback_needs_allow_non_loopback() {
    for addr in ["0.0.0.0:8080", "[::]:8080", "10.1.2.3:8080"] {
        let text = format!("[listen]\nproxy = \"{addr}\"\nadmin = \"127.0.0.1:9901\"\n\n{ROUTE}");
        refused_by_check_and_run(&text, &["sidekey.toml:2: listen.proxy", "allow_non_loopback"]);
    }
    accepted_by_check(&format!(
        "[listen]\nproxy = \"0.0.0.0:8080\"\nadmin = \"127.0.0.1:9901\"\nallow_non_loopback = true\n\n{ROUTE}"
    ));
    accepted_by_check(&format!("[listen]\nproxy = \"[::1]:8080\"\n\n{ROUTE}"));
}

#[test]
fn secrets_are_not_sent_in_clear_to_a_token_source_off_the_host() {
    let oauth = "[[routes]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"https://api.example\"\ntoken = \"t\"\n\n\
                 [tokens.t]\nsource = \"oauth2\"\ntoken_url = \"URL\"\nclient_id = \"c\"\nclient_secret = { env = \"S\" }\nEXTRA\n";
    let http = "[[routes]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"https://api.example\"\ntoken = \"t\"\n\n\
                [tokens.t]\nsource = \"http\"\nurl = \"URL\"\npointer = \"/t\"\nEXTRA\n";
    let validate = "[[routes]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"https://api.example\"\ntoken = \"t\"\n\n\
                    [tokens.t]\nsource = \"env\"\nvar = \"T\"\nvalidate = { url = \"URL\" }\nEXTRA\n";
    for (template, key) in [(oauth, "tokens.t.token_url"), (http, "tokens.t.url"), (validate, "tokens.t.validate.url")]
    {
        let line = template.lines().position(|l| l.contains("URL")).unwrap() + 1;
        for off in ["http://idp.example.com/token", "http://10.0.0.8/token", "http://[fec0::1]/x"] {
            let text = template.replace("URL", off).replace("EXTRA", "");
            refused_by_check_and_run(&text, &[&format!("sidekey.toml:{line}: {key}"), "allow_plaintext"]);
        }
        for local in [
            "http://127.0.0.1:8200/v1/x",
            "http://localhost/x",
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "http://169.254.170.2/v2/credentials/x",
            "http://[fe80::1]/x",
            "https://idp.example.com/token",
        ] {
            accepted_by_check(&template.replace("URL", local).replace("EXTRA", ""));
        }
        accepted_by_check(
            &template.replace("URL", "http://idp.example.com/token").replace("EXTRA", "allow_plaintext = true"),
        );
    }
}

#[test]
fn framing_and_hop_headers_cannot_carry_a_credential() {
    for name in [
        "Content-Length",
        "Transfer-Encoding",
        "TE",
        "Trailer",
        "Expect",
        "Upgrade",
        "Connection",
        "Keep-Alive",
        "Host",
        "Proxy-Authorization",
        "Proxy-Foo",
    ] {
        let header = format!(
            "[[routes]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"https://api.example\"\ntoken = \"t\"\n\
             header = \"{name}\"\nformat = \"{{token}}\"\n\n[tokens.t]\nsource = \"env\"\nvar = \"T\"\n"
        );
        refused_by_check_and_run(&header, &["sidekey.toml:6: routes[0].header", "cannot carry a credential"]);
        let headers = format!(
            "[[routes]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"https://api.example\"\n\
             headers = {{ \"{name}\" = \"{{token:t}}\" }}\n\n[tokens.t]\nsource = \"env\"\nvar = \"T\"\n"
        );
        refused_by_check_and_run(&headers, &[&format!("sidekey.toml:5: routes[0].headers.{name}")]);
        let validate = format!("{ROUTE}validate = {{ url = \"https://idp.example/me\", header = \"{name}\" }}\n");
        refused_by_check_and_run(&validate, &["sidekey.toml:10: tokens.t.validate"]);
        let source = format!(
            "[[routes]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"https://api.example\"\ntoken = \"t\"\n\n\
             [tokens.t]\nsource = \"http\"\nurl = \"https://vault.example/v1/x\"\npointer = \"/t\"\n\
             headers = {{ \"{name}\" = {{ env = \"V\" }} }}\n"
        );
        refused_by_check_and_run(&source, &[&format!("sidekey.toml:11: tokens.t.headers.{name}")]);
    }
}

/// The smuggling the header check prevents, shown at run time too: `check` is the gate, so
/// the config that did it cannot start.
#[test]
fn content_length_as_a_credential_header_is_refused_at_start() {
    let text = concat!(
        "[listen]\nproxy = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[[routes]]\nname = \"r\"\nprefix = \"/r\"\n",
        "upstream = \"http://127.0.0.1:9\"\ntoken = \"t\"\nheader = \"Content-Length\"\nformat = \"{token}\"\n\n",
        "[tokens.t]\nsource = \"env\"\nvar = \"T\"\n"
    );
    let err = sidekey::Config::parse(text).unwrap_err().to_string();
    assert!(err.contains("routes[0].header") && err.contains("Content-Length"), "{err}");
}

#[tokio::test]
async fn the_audit_log_is_created_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let audit = sidekey::audit::Audit::open(&log).unwrap();
    audit.event("loaded", serde_json::Map::new(), false);
    audit.flush().await;
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "audit log created {mode:o}");
}

/// One route `/r` -> `upstream`, its token from a file; `route_extra` goes into the route,
/// `extra` before it.
fn proxy_config(dir: &std::path::Path, upstream: &str, route_extra: &str, extra: &str) -> String {
    let path = dir.join("token");
    std::fs::write(&path, TOKEN).unwrap();
    format!(
        "{LISTEN}\n{extra}\n[[routes]]\nname = \"r\"\nprefix = \"/r\"\nupstream = \"{upstream}\"\ntoken = \"t\"\n\
         {route_extra}\n\n[tokens.t]\nsource = \"file\"\npath = {:?}\n",
        path.display().to_string()
    )
}

fn status_of(answer: &str) -> u16 {
    answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status line: {answer:?}"))
}

#[tokio::test]
async fn the_admin_api_refuses_cross_site_posts_and_foreign_hosts() {
    let (up, dir) = (Upstream::plain().await, tempfile::tempdir().unwrap());
    let sk = start_proxy(&proxy_config(dir.path(), &up.url, "", "[admin]\nhosts = [\"sidekey.internal\"]\n")).await;
    let admin = sk.admin_addr;
    let port = admin.port();
    let ask = |method: &str, path: &str, headers: String| {
        let req = format!("{method} {path} HTTP/1.1\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n");
        async move { raw(admin, req.as_bytes()).await }
    };
    // DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1.
    for path in ["/tokens", "/metrics", "/healthz", "/"] {
        let a = ask("GET", path, format!("Host: evil.example:{port}\r\n")).await;
        assert_eq!(status_of(&a), 403, "{path}: {a}");
        assert!(!a.contains("fingerprint"), "{a}");
    }
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("sidekey.internal:{port}")] {
        let a = ask("GET", "/tokens", format!("Host: {host}\r\n")).await;
        assert_eq!(status_of(&a), 200, "{host}: {a}");
    }
    // A cross-site form post (text/plain needs no preflight) and its variants.
    let host = format!("Host: 127.0.0.1:{port}\r\n");
    for refused in [
        format!("{host}Origin: http://evil.example\r\nContent-Type: text/plain\r\n"),
        format!("{host}Origin: null\r\n"),
        format!("{host}Origin: http://127.0.0.1:{}\r\n", port + 1),
        format!("{host}Sec-Fetch-Site: cross-site\r\n"),
    ] {
        let a = ask("POST", "/tokens/t/refresh", refused.clone()).await;
        assert_eq!(status_of(&a), 403, "{refused}: {a}");
        assert!(!a.contains("\"result\""), "the refresh ran: {a}");
    }
    for allowed in [host.clone(), format!("{host}Origin: http://127.0.0.1:{port}\r\n")] {
        let a = ask("POST", "/tokens/t/refresh", allowed.clone()).await;
        assert_eq!(status_of(&a), 200, "{allowed}: {a}");
        assert!(a.contains("\"result\""), "{a}");
    }
    sk.shutdown().await;
}

/// Python's `http.server` serving `root`: it decodes `%2F` and resolves `..` before it maps a
/// path to a file, as many upstreams do. Killed when dropped.
struct PyServer {
    child: std::process::Child,
    url: String,
}

impl PyServer {
    fn start(root: &std::path::Path) -> PyServer {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0", "--directory"])
            .arg(root)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}): install Python 3"));
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let port = line.split(" port ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or_else(|| panic!("{line:?}"));
        PyServer { child, url: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn encoded_slashes_dot_parameters_and_method_overrides_do_not_get_past_allow() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(root.join("public")).unwrap();
    std::fs::create_dir_all(root.join("admin")).unwrap();
    std::fs::write(root.join("public/ok.txt"), "public file").unwrap();
    std::fs::write(root.join("admin/secret.txt"), "ADMIN SECRET").unwrap();
    let py = PyServer::start(&root);
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let route = |name: &str, prefix: &str, extra: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\nprefix = \"{prefix}\"\nupstream = \"{}\"\ntoken = \"t\"\n{extra}\n\n",
            py.url
        )
    };
    let config = format!(
        "{LISTEN}\n{}{}{}[tokens.t]\nsource = \"file\"\npath = {:?}\n",
        route("d", "/d", "allow = [\"GET /public/**\"]"),
        route("i", "/i", "allow = [\"GET /items/*\", \"GET /public/*\"]"),
        route("g", "/g", "allow = [\"GET /public/*\"]\nallow_encoded_slash = true"),
        token.display().to_string()
    );
    let sk = start_proxy(&config).await;
    let base = format!("http://{}", sk.proxy_addr);
    for c in [client(), h2c_client()] {
        let a = get(&c, &format!("{base}/d/public/ok.txt")).await;
        assert_eq!((a.status.as_u16(), a.text().as_str()), (200, "public file"));
        assert_eq!(get(&c, &format!("{base}/d/admin/secret.txt")).await.status, 403);
        for path in [
            "/d/public/..%2fadmin/secret.txt",
            "/d/public/..%2Fadmin%2Fsecret.txt",
            "/d/public/x/..%2F..%2Fadmin/secret.txt",
            "/i/items/1%2fdelete",
            "/d/public/..;/admin/secret.txt",
            "/d/public/.;x/ok.txt",
            // With allow_encoded_slash, still no dot segment beside an encoded slash.
            "/g/public/..%2Fadmin%2Fsecret.txt",
            "/g/public/%2e%2e%2Fadmin%2Fsecret.txt",
        ] {
            let a = get(&c, &format!("{base}{path}")).await;
            assert_eq!(a.status, 400, "{path}: {}", a.text());
            assert_eq!(a.json()["error"], "bad_request", "{path}");
            assert!(!a.text().contains("ADMIN SECRET"), "{path}");
        }
        // allow_encoded_slash: `*` matches a segment holding %2F (GitLab's group%2Fproject).
        std::fs::write(root.join("public/a%2Fb"), "one segment").unwrap();
        let a = get(&c, &format!("{base}/g/public/a%252Fb")).await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(
            get(&c, &format!("{base}/g/public/x%2Fok.txt")).await.status,
            404,
            "forwarded: the upstream has none"
        );
        // Method overrides.
        for header in ["X-HTTP-Method-Override", "X-Method-Override", "X-HTTP-Method"] {
            for method in ["DELETE", "POST", "NOT A METHOD"] {
                let req = http::Request::get(format!("{base}/d/public/ok.txt"))
                    .header(header, method)
                    .body(http_body_util::Full::default())
                    .unwrap();
                let a = send(&c, req).await;
                assert_eq!(a.status, 403, "{header}: {method}");
                assert_eq!(a.json()["error"], "not_allowed");
            }
            let req = http::Request::get(format!("{base}/d/public/ok.txt"))
                .header(header, "GET")
                .body(http_body_util::Full::default())
                .unwrap();
            assert_eq!(send(&c, req).await.status, 200, "{header}: GET");
        }
    }
    // The raw requests an attacker sends, on the own HTTP/1.1 loop.
    let a = raw(sk.proxy_addr, b"GET /d/public/..%2fadmin/secret.txt HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_of(&a), 400, "{a}");
    let a = raw(
        sk.proxy_addr,
        b"GET /d/public/ok.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-http-method-override: DELETE\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&a), 403, "{a}");
    sk.shutdown().await;
}

#[tokio::test]
async fn every_connection_field_names_hop_by_hop_headers() {
    let (up, dir) = (Upstream::plain().await, tempfile::tempdir().unwrap());
    let sk = start_proxy(&proxy_config(dir.path(), &up.url, "", "")).await;
    for (i, fields) in [
        "Connection: close\r\nConnection: X-Internal\r\n",
        "Connection: X-Internal\r\nConnection: close\r\n",
        "Connection: close, X-Internal\r\n",
        "Connection: keep-alive\r\nConnection: X-Internal\r\nConnection: close\r\n",
    ]
    .iter()
    .enumerate()
    {
        let req = format!("GET /r/conn{i} HTTP/1.1\r\nHost: x\r\n{fields}X-Internal: internal-only\r\n\r\n");
        let a = raw(sk.proxy_addr, req.as_bytes()).await;
        assert_eq!(status_of(&a), 200, "{a}");
        let seen = up.find(&format!("/conn{i}"));
        assert!(seen.headers.get("x-internal").is_none(), "{fields:?}: X-Internal went upstream");
        assert!(seen.headers.get("connection").is_none_or(|v| !v.to_str().unwrap().contains("X-Internal")));
    }
    sk.shutdown().await;
}

/// An upstream that answers every request on a connection with `answer`, raw.
async fn raw_upstream(answer: &'static [u8]) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn an_answer_with_a_length_and_a_chunked_body_goes_on_chunked_without_the_length() {
    let up = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sk = start_proxy(&proxy_config(dir.path(), &up, "", "")).await;
    for c in [client(), h2c_client()] {
        let a = get(&c, &format!("http://{}/r/x", sk.proxy_addr)).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.text(), "ok");
        assert!(a.headers.get("content-length").is_none_or(|v| v == "2"), "{:?}", a.headers);
    }
    // As the own loop writes it: chunked, no length.
    let mut s = tokio::net::TcpStream::connect(sk.proxy_addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /r/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    bounded("the answer", s.read_to_end(&mut out)).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(!text.contains("content-length"), "{text}");
    assert!(text.contains("transfer-encoding: chunked") && text.ends_with("2\r\nok\r\n0\r\n\r\n"), "{text}");
    sk.shutdown().await;
}

#[tokio::test]
async fn a_partial_head_sent_while_a_request_is_in_flight_is_held_to_header_read_timeout() {
    let (up, dir) = (Upstream::plain().await, tempfile::tempdir().unwrap());
    let limits = "[limits]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"60s\"\n";
    let sk = start_proxy(&proxy_config(dir.path(), &up.url, "", limits)).await;
    let mut s = tokio::net::TcpStream::connect(sk.proxy_addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /r/hold HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    bounded("the request to reach the upstream", up.wait_held()).await;
    // The start of the next head, while the first is in flight; then nothing more.
    s.write_all(b"GET /r/next HTTP/1.1\r\nHo").await.unwrap();
    // Time for those bytes to arrive while the request is still in flight (were they to come
    // after, the test would not tell the fix from its absence; it would still pass).
    tokio::time::sleep(Duration::from_millis(50)).await;
    up.release();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    // Idle timeout is 60 s: closed within the bound only by the head's timeout.
    bounded("the slow head's connection to be closed", async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5), "closed after {:?}", started.elapsed());
    assert!(up.seen().iter().all(|s| s.path != "/next"));
    sk.shutdown().await;
}

#[tokio::test]
async fn a_request_refused_before_its_body_gets_no_100_continue() {
    let (up, dir) = (Upstream::plain().await, tempfile::tempdir().unwrap());
    let sk = start_proxy(&proxy_config(dir.path(), &up.url, "allow = [\"GET /**\", \"POST /ok\"]", "")).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for (path, length, status) in [("/nowhere", 5, 404), ("/r/x", 5, 403), ("/r/x", 100_000, 403)] {
        let mut s = tokio::net::TcpStream::connect(sk.proxy_addr).await.unwrap();
        let head =
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {length}\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        bounded("the refusal", async {
            let mut buf = [0u8; 4096];
            while !response_complete(&out) {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{path}: {text}");
        assert!(!text.contains("100 Continue"), "{path}: {text}");
    }
    // A request that goes on is told to send its body, and is served.
    let mut s = tokio::net::TcpStream::connect(sk.proxy_addr).await.unwrap();
    s.write_all(b"POST /r/ok HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 4096];
    let n = bounded("100 Continue", s.read(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let mut out = Vec::new();
    bounded("the answer", async {
        while !response_complete(&out) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    assert_eq!(up.find("/ok").body_len, 5);
    sk.shutdown().await;
}

const UPLOAD_LIMITS: &str = "[upstream]\ntimeout = \"1s\"\nsend_timeout = \"400ms\"\n";

/// Sends a request head, then `chunks` pieces of `piece` bytes each `every` apart (framed as
/// `chunked` says), then reads the answer whole; `stop_after`: stop sending after that many
/// pieces and wait (the connection kept open).
async fn upload(
    addr: std::net::SocketAddr,
    head_extra: &str,
    chunks: usize,
    piece: usize,
    every: Duration,
    chunked: bool,
    stop_after: Option<usize>,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let framing =
        if chunked { "Transfer-Encoding: chunked".to_owned() } else { format!("Content-Length: {}", chunks * piece) };
    let head = format!("POST /r/up HTTP/1.1\r\nHost: x\r\n{head_extra}{framing}\r\n\r\n");
    wr.write_all(head.as_bytes()).await.unwrap();
    let writer = tokio::spawn(async move {
        for i in 0..chunks {
            if stop_after == Some(i) {
                std::future::pending::<()>().await;
            }
            let data = vec![b'u'; piece];
            let sent = if chunked {
                let mut framed = format!("{piece:x}\r\n").into_bytes();
                framed.extend_from_slice(&data);
                framed.extend_from_slice(b"\r\n");
                wr.write_all(&framed).await
            } else {
                wr.write_all(&data).await
            };
            if sent.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
        if chunked {
            let _ = wr.write_all(b"0\r\n\r\n").await;
        }
        std::future::pending::<()>().await;
    });
    let mut out = Vec::new();
    bounded("the upload's answer", async {
        let mut buf = [0u8; 8192];
        while !response_complete(&out) {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn an_upload_longer_than_timeout_goes_through_and_a_stalled_one_gets_408() {
    let (up, dir) = (Upstream::plain().await, tempfile::tempdir().unwrap());
    let sk = start_proxy(&proxy_config(dir.path(), &up.url, "", UPLOAD_LIMITS)).await;
    let every = Duration::from_millis(50);
    // 40 pieces 50 ms apart: 2 s, twice `timeout`. The own loop (a length, chunked), and
    // hyper's server (a connection handed over: a Connection header naming another field).
    for (extra, chunked) in [("", false), ("", true), ("Connection: x-hand-over\r\n", false)] {
        let started = std::time::Instant::now();
        let a = upload(sk.proxy_addr, extra, 40, 2048, every, chunked, None).await;
        assert!(started.elapsed() > Duration::from_secs(1), "{:?}", started.elapsed());
        assert_eq!(status_of(&a), 200, "{extra} chunked={chunked}: {a}");
        assert_eq!(up.last().body_len, 40 * 2048, "{extra} chunked={chunked}");
        // Stalled after 5 pieces: 408, well before any idle timeout.
        let a = upload(sk.proxy_addr, extra, 40, 2048, every, chunked, Some(5)).await;
        assert_eq!(status_of(&a), 408, "{extra} chunked={chunked}: {a}");
        assert!(a.contains("\"request_timeout\""), "{a}");
    }
    sk.shutdown().await;
}

#[tokio::test]
async fn an_upload_over_http2_is_bounded_by_its_progress() {
    use http_body_util::BodyExt;
    let (up, dir) = (Upstream::plain().await, tempfile::tempdir().unwrap());
    let sk = start_proxy(&proxy_config(dir.path(), &up.url, "", UPLOAD_LIMITS)).await;
    for stop_after in [None, Some(5)] {
        let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(sk.proxy_addr).await.unwrap());
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(conn);
        let pieces = Box::pin(futures_util::stream::unfold(0usize, move |i| async move {
            if i == 40 {
                return None;
            }
            if stop_after == Some(i) {
                std::future::pending::<()>().await;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Some((
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(vec![b'h'; 2048]))),
                i + 1,
            ))
        }));
        let req = http::Request::post(format!("http://{}/r/up2", sk.proxy_addr))
            .body(http_body_util::StreamBody::new(pieces))
            .unwrap();
        let resp = bounded("the HTTP/2 upload's answer", send.send_request(req)).await.unwrap();
        let status = resp.status();
        let body = bounded("its body", resp.into_body().collect()).await.unwrap().to_bytes();
        match stop_after {
            None => {
                assert_eq!(status, 200, "{body:?}");
                assert_eq!(up.last().body_len, 40 * 2048);
            }
            Some(_) => {
                assert_eq!(status, 408, "{body:?}");
                assert!(String::from_utf8_lossy(&body).contains("request_timeout"));
            }
        }
    }
    sk.shutdown().await;
}

#[tokio::test]
async fn an_upstream_that_stops_reading_an_upload_gets_504() {
    // An upstream that reads the head and then nothing, with a small receive buffer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    // The route's `timeout` well past `send_timeout`: the 504 comes from the stall.
    let sk = start_proxy(&proxy_config(dir.path(), &format!("http://{addr}"), "timeout = \"6s\"", UPLOAD_LIMITS)).await;
    // 16 MiB as fast as it goes: the upstream side's buffers fill, then nothing moves.
    let started = std::time::Instant::now();
    let a = upload(sk.proxy_addr, "", 256, 65536, Duration::ZERO, false, None).await;
    assert_eq!(status_of(&a), 504, "{a}");
    assert!(started.elapsed() < Duration::from_secs(4), "504 after {:?}: not from send_timeout", started.elapsed());
    assert!(a.contains("\"upstream_timeout\""), "{a}");
    sk.shutdown().await;
}
