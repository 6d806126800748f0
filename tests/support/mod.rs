//! Test support: loopback upstreams (plain and TLS with a CA made at test time), the proxy
//! started in-process, clients, and bounded waits.

#![allow(dead_code)]

pub mod servers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// Every wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test with `what` if it takes longer than [`WAIT`].
pub async fn bounded<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body_len: usize,
    pub body_sha256: String,
    /// The body came to its end (not cut off by an error or a closed connection).
    pub body_complete: bool,
}

/// A loopback upstream that records what it receives.
///
/// Paths: `/status/NNN` answers NNN; `/redirect?to=URL` answers 302 to URL; `/bytes/N` answers N bytes; `/hold` answers only after
/// [`Upstream::release`] (and reports its arrival on `held`); `/never` never answers;
/// anything else answers a JSON echo.
pub struct Upstream {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT` or `https://localhost:PORT`.
    pub url: String,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    release_tx: watch::Sender<bool>,
    pub held: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
    /// `Authorization` values `/validate` accepts (others get 401).
    allowed: Arc<Mutex<std::collections::HashSet<String>>>,
    /// When set, every path demands an allowed `Authorization` (a protected upstream).
    enforce: Arc<std::sync::atomic::AtomicBool>,
    /// Requests whose head has come and which are not recorded yet.
    reading: Arc<watch::Sender<usize>>,
    /// Connections accepted and not yet closed.
    open: Arc<watch::Sender<usize>>,
}

#[derive(Clone)]
struct UpstreamState {
    seen: Arc<Mutex<Vec<Seen>>>,
    allowed: Arc<Mutex<std::collections::HashSet<String>>>,
    enforce: Arc<std::sync::atomic::AtomicBool>,
    reading: Arc<watch::Sender<usize>>,
    release: watch::Receiver<bool>,
    held: mpsc::UnboundedSender<()>,
}

impl Upstream {
    pub async fn plain() -> Upstream {
        Upstream::start(None).await
    }

    pub async fn tls(ca: &TestCa) -> Upstream {
        Upstream::start(Some(ca.server_config())).await
    }

    async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = match tls {
            Some(_) => format!("https://localhost:{}", addr.port()),
            None => format!("http://{addr}"),
        };
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (release_tx, release) = watch::channel(false);
        let (held_tx, held_rx) = mpsc::unbounded_channel();
        let allowed = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let enforce = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reading = Arc::new(watch::channel(0).0);
        let state = UpstreamState {
            seen: seen.clone(),
            allowed: allowed.clone(),
            enforce: enforce.clone(),
            reading: reading.clone(),
            release,
            held: held_tx,
        };
        let conns = connections.clone();
        let open = Arc::new(watch::channel(0).0);
        let open_count = open.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                conns.fetch_add(1, Ordering::SeqCst);
                open_count.send_modify(|n| *n += 1);
                let state = state.clone();
                let tls = tls.clone();
                let open = open_count.clone();
                tokio::spawn(async move {
                    let _open = Counted(open);
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(upstream_handle(state, req).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(cfg) => {
                            let Ok(stream) = tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await else { return };
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            url,
            connections,
            seen,
            release_tx,
            held: tokio::sync::Mutex::new(held_rx),
            allowed,
            enforce,
            reading,
            open,
        }
    }

    /// Makes `/validate` accept this `Authorization` value.
    pub fn allow(&self, authorization: &str) {
        self.allowed.lock().unwrap().insert(authorization.to_owned());
    }

    /// Stops accepting this `Authorization` value.
    pub fn disallow(&self, authorization: &str) {
        self.allowed.lock().unwrap().remove(authorization);
    }

    /// Makes every path answer 401 unless the `Authorization` value is allowed.
    pub fn protect(&self) {
        self.enforce.store(true, Ordering::SeqCst);
    }

    /// Lets every `/hold` request answer.
    pub fn release(&self) {
        self.release_tx.send_replace(true);
    }

    /// Waits until a `/hold` request has arrived.
    pub async fn wait_held(&self) {
        bounded("a /hold request to reach the upstream", self.held.lock().await.recv()).await.unwrap();
    }

    /// Waits until every request whose head has come is recorded in [`Upstream::seen`].
    pub async fn wait_quiet(&self) {
        bounded("the upstream to finish reading its requests", self.reading.subscribe().wait_for(|n| *n == 0))
            .await
            .unwrap();
    }

    /// Waits until every connection made to the upstream is closed: what came on them has been
    /// read, and each request that came whole is in [`Upstream::seen`].
    pub async fn wait_all_closed(&self) {
        bounded("every upstream connection to close", self.open.subscribe().wait_for(|n| *n == 0)).await.unwrap();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The request the upstream saw at `path` (path and query).
    pub fn find(&self, path: &str) -> Seen {
        self.seen()
            .into_iter()
            .find(|s| s.path == path)
            .unwrap_or_else(|| panic!("the upstream saw no request for {path}"))
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream saw no request")
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Takes one off a count when dropped.
struct Counted(Arc<watch::Sender<usize>>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

async fn upstream_handle(state: UpstreamState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    // Counted as being read until it is recorded, or its handling is dropped.
    state.reading.send_modify(|n| *n += 1);
    let reading = Counted(state.reading.clone());
    let (parts, mut body) = req.into_parts();
    let mut hasher = Sha256::new();
    let mut body_len = 0;
    let mut body_complete = true;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            body_complete = false;
            break;
        };
        if let Some(data) = frame.data_ref() {
            hasher.update(data);
            body_len += data.len();
        }
    }
    let path = parts.uri.path_and_query().map_or("/".to_owned(), |p| p.to_string());
    let seen = Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body_len,
        body_sha256: hex(&hasher.finalize()),
        body_complete,
    };
    state.seen.lock().unwrap().push(seen.clone());
    drop(reading);
    // Routes may put a base path in front; the special paths below ignore it.
    let path = path.strip_prefix("/base").unwrap_or(&path).to_owned();
    if path.starts_with("/hold") {
        let _ = state.held.send(());
        let mut release = state.release.clone();
        let _ = release.wait_for(|r| *r).await;
    }
    if path.starts_with("/validate") || state.enforce.load(Ordering::SeqCst) {
        let ok = seen
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| state.allowed.lock().unwrap().contains(v));
        let mut r = Response::new(Full::new(Bytes::from_static(b"validate\n")));
        *r.status_mut() = if ok { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
        return r;
    }
    if path.starts_with("/never") {
        std::future::pending::<()>().await;
    }
    if let Some(to) = path.strip_prefix("/redirect?to=") {
        let mut r = Response::new(Full::new(Bytes::from_static(b"moved\n")));
        *r.status_mut() = StatusCode::FOUND;
        r.headers_mut().insert("location", to.parse().unwrap());
        return r;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(Full::new(Bytes::from_static(b"status\n")));
        *r.status_mut() = StatusCode::from_u16(code.parse().unwrap()).unwrap();
        return r;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap();
        return Response::new(Full::new(Bytes::from(pattern(n))));
    }
    let headers: serde_json::Map<String, serde_json::Value> =
        seen.headers.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into())).collect();
    let body = serde_json::json!({
        "method": seen.method, "path": seen.path, "version": format!("{:?}", seen.version),
        "headers": headers, "body_len": seen.body_len, "body_sha256": seen.body_sha256,
    });
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
    // A hop-by-hop header the proxy must not pass back.
    r.headers_mut().insert("keep-alive", "timeout=5".parse().unwrap());
    r
}

/// `n` bytes of a repeating, position-dependent pattern.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 ^ (i / 251) as u8).collect()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn sha256(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

/// A CA made at test time, with a leaf for `localhost` and 127.0.0.1.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    /// The CA certificate as a PEM file, for `ca_file`.
    pub ca_file: PathBuf,
    leaf_der: rustls_pki_types::CertificateDer<'static>,
    leaf_key: Vec<u8>,
    leaf_pem: String,
    leaf_key_pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "sidekey test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        TestCa {
            dir,
            ca_file,
            leaf_der: leaf.der().clone(),
            leaf_key: leaf_key.serialize_der(),
            leaf_pem: leaf.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
        }
    }

    /// The leaf's certificate and key as PEM files, for a server of another program.
    pub fn leaf_files(&self) -> (PathBuf, PathBuf) {
        let (cert, key) = (self.dir.path().join("leaf.pem"), self.dir.path().join("leaf-key.pem"));
        std::fs::write(&cert, &self.leaf_pem).unwrap();
        std::fs::write(&key, &self.leaf_key_pem).unwrap();
        (cert, key)
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(self.leaf_key.clone().into());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.leaf_der.clone()], key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

/// Starts sidekey in-process from config text.
pub async fn start_proxy(config: &str) -> sidekey::Running {
    let config = sidekey::Config::parse(config).unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
    sidekey::start(config).await.expect("sidekey starts")
}

/// `[listen]` on free loopback ports.
pub const LISTEN: &str = "[listen]\nproxy = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n";

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 keep-alive client.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 client with prior knowledge (h2c).
pub fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// A whole response.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Answer {
    let resp = bounded("a response", client.request(req)).await.expect("request fails at the client");
    let (parts, body) = resp.into_parts();
    let body = bounded("a response body", body.collect()).await.expect("body").to_bytes();
    Answer { status: parts.status, headers: parts.headers, body }
}

pub async fn get(client: &TestClient, url: &str) -> Answer {
    send(client, Request::get(url).body(Full::default()).unwrap()).await
}

pub async fn post(client: &TestClient, url: &str) -> Answer {
    send(client, Request::post(url).body(Full::default()).unwrap()).await
}

/// Sends raw bytes on a new connection and returns what comes back: one whole response
/// (head and Content-Length body), or everything until the server closes.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    bounded("a raw response", async {
        let mut buf = [0u8; 8192];
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if response_complete(&out) {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `b` holds one whole response: its head and a body of its Content-Length.
pub fn response_complete(b: &[u8]) -> bool {
    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&b[..end]).to_ascii_lowercase();
    let len =
        head.lines().find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)));
    match len {
        Some(len) => b.len() >= end + 4 + len,
        None => false,
    }
}

/// Waits until token `name` has published generation `generation` or later.
pub async fn wait_generation(running: &sidekey::Running, name: &str, generation: u64) {
    let mut rx = running.tokens().get(name).expect("token exists").subscribe();
    bounded(&format!("token {name} to reach generation {generation}"), rx.wait_for(|g| *g >= generation))
        .await
        .unwrap();
}

/// Requests in a loop on keep-alive connections until told to stop; counts failures.
pub fn background_load(
    proxy: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let c = client();
        while !stop.load(Ordering::SeqCst) {
            let req = http::Request::get(format!("http://{proxy}/r/bg")).body(Default::default()).unwrap();
            match tokio::time::timeout(WAIT, c.request(req)).await {
                Ok(Ok(resp)) if resp.status() == 200 => {
                    // A body that fails to arrive whole is a failed request, whatever its status.
                    match tokio::time::timeout(WAIT, resp.into_body().collect()).await {
                        Ok(Ok(_)) => ok.fetch_add(1, Ordering::SeqCst),
                        _ => failed.fetch_add(1, Ordering::SeqCst),
                    };
                }
                _ => {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    })
}
