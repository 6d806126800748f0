//! HTTPS interception: clients that only speak `https://` reach a token-protected TLS upstream
//! through `CONNECT`, with sidekey's CA trusted, over HTTP/1.1 and h2; curl does the same with
//! `--proxy`/`HTTPS_PROXY`; unrouted targets get 403, passthrough hosts are tunnelled with the
//! upstream's own certificate, an untrusted upstream is refused, and token and CA rotations do
//! not fail a request.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// The metrics recorder is one per process: tests that count run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A counter's value on the admin API (0 when absent).
async fn counter(admin: SocketAddr, series: &str) -> f64 {
    let text = get(&client(), &format!("http://{admin}/metrics")).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).map(|v| v.parse().unwrap()))
        .unwrap_or(0.0)
}

/// Opens a CONNECT tunnel through the proxy: the status line and head of the proxy's answer,
/// and the socket when it is 200.
async fn connect(proxy: SocketAddr, target: &str) -> (String, Option<TcpStream>) {
    let mut s = bounded("connecting to the proxy", TcpStream::connect(proxy)).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    bounded("the CONNECT answer", async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
    })
    .await;
    let head = String::from_utf8_lossy(&head).into_owned();
    let ok = head.starts_with("HTTP/1.1 200");
    (head, ok.then_some(s))
}

fn roots(pem_file: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pem_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

/// TLS over an open tunnel, trusting only `ca` (a PEM file), offering `alpn`.
async fn tls(tcp: TcpStream, host: &str, ca: &Path, alpn: &[&[u8]]) -> Result<TlsStream, std::io::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(host.to_owned()).unwrap();
    bounded("a TLS handshake", tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp)).await
}

/// An HTTP client over one TLS stream: HTTP/1.1 or h2 as ALPN chose.
enum Session {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Session {
    async fn open(stream: TlsStream) -> Session {
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            Session::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Session::H1(send)
        }
    }

    fn is_h2(&self) -> bool {
        matches!(self, Session::H2(_))
    }

    async fn get(&mut self, authority: &str, path: &str) -> Answer {
        let req = |uri: String| {
            Request::get(uri)
                .header("host", authority)
                // The client's own credential is replaced, never forwarded.
                .header("authorization", "Bearer from-the-client")
                .body(Full::default())
                .unwrap()
        };
        let resp = match self {
            Session::H1(s) => {
                bounded("the connection to be ready", s.ready()).await.unwrap();
                bounded("a response", s.send_request(req(path.to_owned()))).await
            }
            Session::H2(s) => {
                bounded("the connection to be ready", s.ready()).await.unwrap();
                bounded("a response", s.send_request(req(format!("https://{authority}{path}")))).await
            }
        }
        .expect("request fails at the client");
        let (parts, body) = resp.into_parts();
        let body = bounded("a response body", body.collect()).await.expect("body").to_bytes();
        Answer { status: parts.status, headers: parts.headers, body }
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    running: sidekey::Running,
    up: Upstream,
    _upstream_ca: TestCa,
    token_file: PathBuf,
    /// Where sidekey wrote its CA certificate (`ca_cert_out`).
    sidekey_ca: PathBuf,
}

/// A protected TLS upstream (it wants `Bearer tok-1`) behind a route for `api.test`, sidekey
/// intercepting with a generated CA; `extra` is appended to `[intercept]`.
async fn setup(extra: &str) -> Setup {
    let upstream_ca = TestCa::new();
    let up = Upstream::tls(&upstream_ca).await;
    up.protect();
    up.allow("Bearer tok-1");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "tok-1\n").unwrap();
    let sidekey_ca = dir.path().join("out/sidekey-ca.crt");
    std::fs::create_dir_all(sidekey_ca.parent().unwrap()).unwrap();
    let config = format!(
        "{LISTEN}\n[intercept]\ngenerate = true\nca_cert_out = {out:?}\n{extra}\n\
         [[routes]]\nname = \"api\"\nhost = \"api.test\"\nupstream = {url:?}\nca_file = {ca:?}\ntoken = \"t\"\n\
         [tokens.t]\nsource = \"file\"\npath = {tf:?}\n",
        out = sidekey_ca.display().to_string(),
        url = up.url,
        ca = upstream_ca.ca_file.display().to_string(),
        tf = token_file.display().to_string(),
    );
    let running = start_proxy(&config).await;
    Setup { _dir: dir, running, up, _upstream_ca: upstream_ca, token_file, sidekey_ca }
}

#[tokio::test]
async fn a_client_trusting_sidekeys_ca_reaches_a_protected_upstream_over_http1_and_h2() {
    let _serial = SERIAL.lock().await;
    let s = setup("").await;
    let admin = s.running.admin_addr;
    let requests = counter(admin, "sidekey_requests_total{route=\"api\",status=\"200\"}").await;
    let intercepted = counter(admin, "sidekey_connect_total{result=\"intercepted\"}").await;
    for (alpn, want_h2) in
        [(&[b"http/1.1".as_slice()][..], false), (&[b"h2".as_slice(), b"http/1.1".as_slice()][..], true)]
    {
        let (head, tcp) = connect(s.running.proxy_addr, "api.test:443").await;
        let tcp = tcp.unwrap_or_else(|| panic!("CONNECT refused: {head}"));
        let stream = tls(tcp, "api.test", &s.sidekey_ca, alpn).await.expect("the client trusts sidekey's leaf");
        let mut session = Session::open(stream).await;
        assert_eq!(session.is_h2(), want_h2);
        for i in 0..3 {
            let a = session.get("api.test", &format!("/v1/items/{i}?q=1")).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text());
            let seen = s.up.find(&format!("/v1/items/{i}?q=1"));
            assert_eq!(seen.headers["authorization"], "Bearer tok-1", "the route's token replaced the client's");
            // sidekey's own connection speaks what ALPN chose with the upstream (h2 here),
            // whatever the client spoke.
            assert_eq!(seen.version, http::Version::HTTP_2);
        }
    }
    // One upstream connection for all of it: the route's pool, as for any routed request.
    assert_eq!(s.up.connection_count(), 1);
    // Counted as the route's requests.
    assert_eq!(counter(admin, "sidekey_requests_total{route=\"api\",status=\"200\"}").await - requests, 6.0);
    assert_eq!(counter(admin, "sidekey_connect_total{result=\"intercepted\"}").await - intercepted, 2.0);
    s.running.shutdown().await;
}

#[tokio::test]
async fn curl_with_https_proxy_and_the_ca_file_gets_the_token_injected_over_http1_and_h2() {
    let _serial = SERIAL.lock().await;
    let s = setup("").await;
    for version in ["--http1.1", "--http2"] {
        // tokio's Command: the proxy runs on this test's (single-threaded) runtime.
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--fail-with-body", "--max-time", "10", version, "-w", "\n%{http_version}"])
            .arg("--cacert")
            .arg(&s.sidekey_ca)
            .arg(format!("https://api.test/curl/path{version}"))
            .env("HTTPS_PROXY", format!("http://{}", s.running.proxy_addr))
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .kill_on_drop(true)
            .output();
        let out = bounded("curl", out)
            .await
            .unwrap_or_else(|e| panic!("cannot run curl ({e}): install it (tests/servers/install.sh does)"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "curl {version}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let (_, http_version) = stdout.rsplit_once('\n').unwrap();
        assert_eq!(http_version, if version == "--http2" { "2" } else { "1.1" });
        // 200 from the protected upstream (`--fail-with-body` fails on a 401), which saw the token.
        let seen = s.up.find(&format!("/curl/path{version}"));
        assert_eq!(seen.headers["authorization"], "Bearer tok-1");
    }
    s.running.shutdown().await;
}

#[tokio::test]
async fn python_requests_with_https_proxy_and_requests_ca_bundle_gets_the_token_injected() {
    let _serial = SERIAL.lock().await;
    let s = setup("").await;
    let script = "import requests\n\
                  r = requests.get('https://api.test/python/path', timeout=10)\n\
                  print(r.status_code)\n";
    let out = tokio::process::Command::new("python3")
        .args(["-c", script])
        .env("HTTPS_PROXY", format!("http://{}", s.running.proxy_addr))
        .env("REQUESTS_CA_BUNDLE", &s.sidekey_ca)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .kill_on_drop(true)
        .output();
    let out = bounded("python3", out).await.unwrap_or_else(|e| {
        panic!("cannot run python3 ({e}): install python3 and python3-requests (tests/servers/install.sh does)")
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("No module named"), "python3-requests is missing: run tests/servers/install.sh\n{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200", "{stderr}");
    assert_eq!(s.up.find("/python/path").headers["authorization"], "Bearer tok-1");
    s.running.shutdown().await;
}

#[tokio::test]
async fn connect_to_an_unrouted_host_is_refused_and_a_passthrough_host_is_tunnelled_untouched() {
    // A second TLS server, with a certificate of its own CA: the passthrough target.
    let other_ca = TestCa::new();
    let other = Upstream::tls(&other_ca).await;
    let passthrough = format!("localhost:{}", other.addr.port());
    let _serial = SERIAL.lock().await;
    let s = setup(&format!("passthrough = [{passthrough:?}]")).await;
    let admin = s.running.admin_addr;
    let refused = counter(admin, "sidekey_connect_total{result=\"refused\"}").await;
    let tunnelled = counter(admin, "sidekey_connect_total{result=\"passthrough\"}").await;

    for target in ["example.com:443", "127.0.0.1:22", &format!("localhost:{}", s.up.addr.port())] {
        let (head, tcp) = connect(s.running.proxy_addr, target).await;
        assert!(tcp.is_none() && head.starts_with("HTTP/1.1 403"), "{target}: {head}");
    }
    let bad = raw(s.running.proxy_addr, b"CONNECT api.test:99999 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");

    let (head, tcp) = connect(s.running.proxy_addr, &passthrough).await;
    let tcp = tcp.unwrap_or_else(|| panic!("passthrough CONNECT refused: {head}"));
    // The client sees the server's own certificate: sidekey's CA would not verify it ...
    let (_, tcp2) = connect(s.running.proxy_addr, &passthrough).await;
    assert!(tls(tcp2.unwrap(), "localhost", &s.sidekey_ca, &[b"http/1.1"]).await.is_err());
    // ... its own CA does.
    let stream = tls(tcp, "localhost", &other_ca.ca_file, &[b"http/1.1"]).await.expect("the upstream's own cert");
    let mut session = Session::open(stream).await;
    let a = session.get(&passthrough, "/through").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(other.find("/through").headers["authorization"], "Bearer from-the-client", "no credential added");

    assert_eq!(counter(admin, "sidekey_connect_total{result=\"refused\"}").await - refused, 4.0);
    assert_eq!(counter(admin, "sidekey_connect_total{result=\"passthrough\"}").await - tunnelled, 2.0);
    // A raw tunnel has no requests to drain between: shutdown waits for it (up to the grace
    // period), so the client closes first, which ends the tunnel.
    drop(session);
    s.running.shutdown().await;
}

#[tokio::test]
async fn without_intercept_every_connect_is_refused() {
    let _serial = SERIAL.lock().await;
    let up = Upstream::plain().await;
    let config = format!(
        "{LISTEN}[[routes]]\nname = \"api\"\nhost = \"api.test\"\nupstream = {:?}\ntoken = \"t\"\n\
         [tokens.t]\nsource = \"env\"\nvar = \"PATH\"\n",
        up.url
    );
    let running = start_proxy(&config).await;
    let (head, tcp) = connect(running.proxy_addr, "api.test:443").await;
    assert!(tcp.is_none() && head.starts_with("HTTP/1.1 403"), "{head}");
    running.shutdown().await;
}

#[tokio::test]
async fn an_upstream_sidekey_does_not_trust_is_refused_even_inside_an_intercepted_tunnel() {
    let _serial = SERIAL.lock().await;
    let s = setup("").await;
    // The same route, but without the upstream's CA in its trust: a second sidekey.
    let config = format!(
        "{LISTEN}\n[intercept]\ngenerate = true\nca_cert_out = {out:?}\n\
         [[routes]]\nname = \"api\"\nhost = \"api.test\"\nupstream = {url:?}\ntoken = \"t\"\n\
         [tokens.t]\nsource = \"file\"\npath = {tf:?}\n",
        out = s.sidekey_ca.with_file_name("second.crt").display().to_string(),
        url = s.up.url,
        tf = s.token_file.display().to_string(),
    );
    let second = start_proxy(&config).await;
    let (head, tcp) = connect(second.proxy_addr, "api.test:443").await;
    let tcp = tcp.unwrap_or_else(|| panic!("CONNECT refused: {head}"));
    let stream = tls(tcp, "api.test", &s.sidekey_ca.with_file_name("second.crt"), &[b"http/1.1"]).await.unwrap();
    let mut session = Session::open(stream).await;
    let a = session.get("api.test", "/untrusted").await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.text());
    assert_eq!(a.json()["error"], "upstream_unreachable");
    assert!(s.up.seen().iter().all(|r| r.path != "/untrusted"), "nothing reached the upstream");
    second.shutdown().await;
    s.running.shutdown().await;
}

#[tokio::test]
async fn a_token_rotation_during_an_intercepted_keep_alive_session_fails_no_request() {
    let _serial = SERIAL.lock().await;
    let s = setup("").await;
    let (_, tcp) = connect(s.running.proxy_addr, "api.test:443").await;
    let stream = tls(tcp.unwrap(), "api.test", &s.sidekey_ca, &[b"h2", b"http/1.1"]).await.unwrap();
    let mut session = Session::open(stream).await;
    for i in 0..20 {
        let a = session.get("api.test", &format!("/before/{i}")).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    // The upstream takes both values during the switch, as a provider does while a new token
    // propagates; then the old one is revoked.
    s.up.allow("Bearer tok-2");
    let generation = *s.running.tokens().get("t").unwrap().subscribe().borrow();
    std::fs::write(&s.token_file, "tok-2\n").unwrap();
    let mut after = 0;
    let mut rotated = false;
    for i in 0..2000 {
        let a = session.get("api.test", &format!("/during/{i}")).await;
        assert_eq!(a.status, StatusCode::OK, "request {i} during the rotation failed");
        if !rotated && *s.running.tokens().get("t").unwrap().subscribe().borrow() > generation {
            rotated = true;
            s.up.disallow("Bearer tok-1");
        }
        if rotated {
            after += 1;
            if after == 20 {
                break;
            }
        }
    }
    assert!(rotated, "the token file change was not picked up");
    assert_eq!(s.up.last().headers["authorization"], "Bearer tok-2");
    assert_eq!(s.up.connection_count(), 1, "the rotation opened no new upstream connection");
    s.running.shutdown().await;
}

#[tokio::test]
async fn a_rotated_ca_signs_new_sessions_and_established_ones_carry_on() {
    let _serial = SERIAL.lock().await;
    let upstream_ca = TestCa::new();
    let up = Upstream::tls(&upstream_ca).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    sidekey::pki::init_files(&ca_dir).unwrap();
    let (cert, key) = (ca_dir.join("ca.crt"), ca_dir.join("ca.key"));
    let out = dir.path().join("trust.crt");
    let audit = dir.path().join("audit.log");
    let config = format!(
        "{LISTEN}\n[audit]\npath = {audit:?}\n\
         [intercept]\nca_cert = {{ file = {cert:?} }}\nca_key = {{ file = {key:?} }}\nca_cert_out = {out:?}\n\
         [[routes]]\nname = \"api\"\nhost = \"api.test\"\nupstream = {url:?}\nca_file = {ca:?}\ntoken = \"t\"\n\
         [tokens.t]\nsource = \"env\"\nvar = \"PATH\"\n",
        cert = cert.display().to_string(),
        key = key.display().to_string(),
        out = out.display().to_string(),
        audit = audit.display().to_string(),
        url = up.url,
        ca = upstream_ca.ca_file.display().to_string(),
    );
    let running = start_proxy(&config).await;
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&cert).unwrap(), "ca_cert_out holds the CA certificate");
    let old_ca = dir.path().join("old.crt");
    std::fs::copy(&cert, &old_ca).unwrap();
    let status = get(&client(), &format!("http://{}/intercept", running.admin_addr)).await.json();
    assert_eq!(status["ca_generation"], 0, "{status}");
    assert_eq!(status["generated"], false);
    let (_, tcp) = connect(running.proxy_addr, "api.test:443").await;
    let mut established = Session::open(tls(tcp.unwrap(), "api.test", &old_ca, &[b"http/1.1"]).await.unwrap()).await;
    assert_eq!(established.get("api.test", "/one").await.status, StatusCode::OK);

    // A new pair, swapped in the way a Kubernetes secret volume or an operator's `mv` does.
    let staging = dir.path().join("staging");
    sidekey::pki::init_files(&staging).unwrap();
    std::fs::rename(staging.join("ca.key"), &key).unwrap();
    std::fs::rename(staging.join("ca.crt"), &cert).unwrap();
    let new_pem = std::fs::read(&cert).unwrap();
    // No signal leaves the process when the CA is swapped but the file it writes: poll that.
    bounded("ca_cert_out to hold the new CA", async {
        while std::fs::read(&out).unwrap_or_default() != new_pem {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;

    let admin = |path: &'static str| {
        let url = format!("http://{}{path}", running.admin_addr);
        async move { get(&client(), &url).await }
    };
    let status = admin("/intercept").await.json();
    assert_eq!(status["ca_generation"], 1, "{status}");
    assert_eq!(status["leaf_certs_cached"], 0, "the old CA's leaves are gone: {status}");
    assert_eq!(admin("/intercept/ca.crt").await.body, new_pem, "the admin API serves the CA certificate");
    let (_, tcp) = connect(running.proxy_addr, "api.test:443").await;
    assert!(tls(tcp.unwrap(), "api.test", &old_ca, &[b"http/1.1"]).await.is_err(), "a new session uses the new CA");
    let (_, tcp) = connect(running.proxy_addr, "api.test:443").await;
    let mut fresh = Session::open(tls(tcp.unwrap(), "api.test", &out, &[b"http/1.1"]).await.unwrap()).await;
    assert_eq!(fresh.get("api.test", "/two").await.status, StatusCode::OK);
    assert_eq!(established.get("api.test", "/three").await.status, StatusCode::OK, "the established session lives on");
    running.shutdown().await;
    // The audit log records the CA in use and its change, by fingerprint.
    let records: Vec<serde_json::Value> =
        std::fs::read_to_string(&audit).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let event = |name: &str| records.iter().find(|r| r["event"] == name).cloned();
    let loaded = event("intercept_ca_loaded").expect("an intercept_ca_loaded record");
    let rotated = event("intercept_ca_rotated").expect("an intercept_ca_rotated record");
    assert_eq!(rotated["old"], loaded["ca"]);
    assert_ne!(rotated["new"], rotated["old"]);
    assert!(sidekey::audit::verify(&audit).is_ok());
}
