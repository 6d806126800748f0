//! `sidekey inject --webhook`: the mutation as a Kubernetes mutating admission webhook.
//! `POST /mutate` takes an AdmissionReview v1 and answers it with a JSONPatch of
//! [`super::mutate`]'s change; `GET /healthz` answers 200. TLS only, with the certificate and
//! key read again when their files change (a renewed Secret), so the API server is never
//! refused a handshake by a restart.
//!
//! The webhook admits every object: a template it cannot inject is admitted unchanged with a
//! warning (the API server shows it to `kubectl`), unless `--fail-closed`. It holds no
//! credential; what it is sent is never logged beyond the workload's name.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::mutate::{self, Options, Outcome};
use super::node::Node;

/// An AdmissionReview holds the object and, on UPDATE, the old one; the API server's own limit
/// on an object is 3 MiB.
pub const MAX_BODY: usize = 8 * 1024 * 1024;
const MAX_CONNECTIONS: usize = 512;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A review's body must arrive within this (the API server's own timeout is at most 30 s).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Reviews read at once, whatever the number of connections and HTTP/2 streams: bounds the
/// memory bodies can take to this many times [`MAX_BODY`].
const MAX_REVIEWS: usize = 16;
/// How often the certificate files are looked at (their size, mtime and inode).
const CERT_POLL: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct WebhookOptions {
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Deny a pod whose template cannot be injected, rather than admit it without sidekey.
    pub fail_closed: bool,
    pub inject: Options,
}

/// The certificate in force, swapped whole when the files change.
#[derive(Debug)]
struct Certs {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the pair; the error names the file and never quotes the key.
fn load_pair(cert: &std::path::Path, key: &std::path::Path) -> Result<CertifiedKey, String> {
    let cert_pem = std::fs::read(cert).map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    let key_pem = zeroize::Zeroizing::new(std::fs::read(key).map_err(|e| format!("--tls-key {}: {e}", key.display()))?);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("--tls-cert {}: not a PEM certificate chain", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("--tls-cert {}: no certificate in it", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| format!("--tls-key {}: not a PEM private key", key.display()))?;
    CertifiedKey::from_der(chain, key_der, &provider())
        .map_err(|e| format!("--tls-cert {} and --tls-key {}: {e}", cert.display(), key.display()))
}

type Stamp = Option<(u64, u64, u64, Option<SystemTime>)>;

/// Device, inode, size and mtime of the file a path leads to (a Kubernetes Secret's `..data`
/// swap changes the inode).
fn stamp(path: &std::path::Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino(), m.len(), m.modified().ok()))
}

/// A bound webhook, not yet serving.
pub struct Webhook {
    listener: TcpListener,
    opts: WebhookOptions,
    certs: Arc<Certs>,
}

impl Webhook {
    /// Loads the certificate and binds: both fail here, before anything is served.
    pub async fn bind(opts: WebhookOptions) -> Result<Webhook, String> {
        let pair = load_pair(&opts.tls_cert, &opts.tls_key)?;
        let certs = Arc::new(Certs { current: ArcSwap::from_pointee(pair) });
        let listener = TcpListener::bind(opts.listen).await.map_err(|e| format!("--listen {}: {e}", opts.listen))?;
        Ok(Webhook { listener, opts, certs })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound socket has an address")
    }

    /// Serves until `shutdown` resolves; connections in flight then get a few seconds.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default versions")
            .with_no_client_auth()
            .with_cert_resolver(self.certs.clone());
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let reload =
            tokio::spawn(watch_certs(self.certs.clone(), self.opts.tls_cert.clone(), self.opts.tls_key.clone()));
        let handler = Arc::new(Handler {
            opts: self.opts.inject.clone(),
            fail_closed: self.opts.fail_closed,
            reviews: Semaphore::new(MAX_REVIEWS),
        });
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let _permit = permit;
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let service = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler.handle(req).await) }
                });
                let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let _ = watcher.watch(conn.into_owned()).await;
            });
        }
        reload.abort();
        let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    }
}

/// Looks at the files every [`CERT_POLL`]; a pair that changed and loads replaces the one in
/// force, one that does not load is logged and the one in force kept.
async fn watch_certs(certs: Arc<Certs>, cert: PathBuf, key: PathBuf) {
    let mut seen = (stamp(&cert), stamp(&key));
    let mut tick = tokio::time::interval(CERT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = (stamp(&cert), stamp(&key));
        if now == seen {
            continue;
        }
        seen = now;
        let (c, k) = (cert.clone(), key.clone());
        match tokio::task::spawn_blocking(move || load_pair(&c, &k)).await {
            Ok(Ok(pair)) => {
                certs.current.store(Arc::new(pair));
                tracing::info!(cert = %cert.display(), "webhook certificate reloaded");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot reload the webhook certificate; keeping the current one"),
            Err(e) => tracing::warn!(error = %e, "certificate reload task failed"),
        }
    }
}

struct Handler {
    opts: Options,
    fail_closed: bool,
    reviews: Semaphore,
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(body).expect("JSON values serialize"))));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

fn bad_request(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({"error": message}))
}

impl Handler {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/healthz") => {
                let mut r = Response::new(Full::new(Bytes::from_static(b"ok\n")));
                r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
                r
            }
            (&Method::POST, "/mutate") => {
                let _permit = self.reviews.acquire().await.expect("the semaphore is never closed");
                let body = match tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect())
                    .await
                {
                    Ok(Ok(b)) => b.to_bytes(),
                    Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                        return bad_request(StatusCode::PAYLOAD_TOO_LARGE, "the AdmissionReview is larger than 8 MiB")
                    }
                    Ok(Err(_)) => return bad_request(StatusCode::BAD_REQUEST, "the request body could not be read"),
                    Err(_) => {
                        return bad_request(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time")
                    }
                };
                match self.review(&body) {
                    Ok(answer) => json_response(StatusCode::OK, &answer),
                    Err(message) => {
                        tracing::warn!(error = %message, "malformed AdmissionReview");
                        bad_request(StatusCode::BAD_REQUEST, &message)
                    }
                }
            }
            (_, "/healthz" | "/mutate") => bad_request(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            _ => bad_request(StatusCode::NOT_FOUND, "not found"),
        }
    }

    /// The AdmissionReview answer, or why the review is malformed.
    fn review(&self, body: &[u8]) -> Result<Value, String> {
        let review: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let api_version = review.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        if api_version != "admission.k8s.io/v1" || review.get("kind").and_then(Value::as_str) != Some("AdmissionReview")
        {
            return Err("not an AdmissionReview of admission.k8s.io/v1".into());
        }
        let request = review.get("request").and_then(Value::as_object).ok_or("no request in the AdmissionReview")?;
        let uid =
            request.get("uid").and_then(Value::as_str).filter(|u| !u.is_empty()).ok_or("the request has no uid")?;
        let operation = request.get("operation").and_then(Value::as_str).unwrap_or_default();
        let object = request.get("object").filter(|o| o.is_object());
        let mut response = json!({"uid": uid, "allowed": true});
        let answer = |response: Value| json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response});
        let kind = object.and_then(|o| o.get("kind")).and_then(Value::as_str).unwrap_or_default();
        // A pod's containers cannot change after it is made; only a new pod is injected.
        let wanted = operation == "CREATE" || (operation == "UPDATE" && kind != "Pod");
        let Some(object) = object.filter(|_| wanted) else {
            return Ok(answer(response));
        };
        let mut node = Node::from(object);
        let namespace = request.get("namespace").and_then(Value::as_str);
        if let (Some(ns), Some(meta)) = (namespace, node.as_map_mut().and_then(|m| m.map_mut("metadata"))) {
            if meta.get("namespace").is_none() {
                meta.insert("namespace", Node::str(ns));
            }
        }
        match mutate::mutate(&mut node, &self.opts) {
            Ok(outcomes) => {
                for o in &outcomes {
                    if let Outcome::Injected(workload) = o {
                        tracing::info!(workload = %workload, uid, "sidekey injected");
                    }
                }
                if outcomes.iter().any(|o| matches!(o, Outcome::Injected(_))) {
                    let mut after = Value::from(&node);
                    // The namespace was added for the workload's name only.
                    if object.get("metadata").and_then(|m| m.get("namespace")).is_none() {
                        if let Some(meta) = after.get_mut("metadata").and_then(Value::as_object_mut) {
                            meta.remove("namespace");
                        }
                    }
                    let patch = json_patch::diff(object, &after);
                    let patch = serde_json::to_vec(&patch).expect("a JSON patch serializes");
                    response["patchType"] = json!("JSONPatch");
                    response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
                }
            }
            Err(e) => {
                tracing::warn!(workload = %e.workload, uid, error = %e.message, "cannot inject sidekey");
                let message = format!("sidekey not injected: {e}");
                if self.fail_closed {
                    response["allowed"] = json!(false);
                    response["status"] = json!({"code": 400, "message": message});
                } else {
                    response["warnings"] = json!([message]);
                }
            }
        }
        Ok(answer(response))
    }
}
