//! The pooled upstream client: hyper-util's client over rustls, HTTP/1.1 or HTTP/2 by ALPN.
//!
//! Trust is the platform's roots (falling back to the Mozilla set compiled in, for images that
//! ship none) plus an optional extra CA bundle. Routes with the same CA file and connect
//! timeout share one client, and so one connection pool.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// The connector every upstream client uses.
pub type Connector = ConnectTimeout<HttpsConnector<HttpConnector>>;
/// The client that forwards proxied requests: bodies stream straight through, or (for a
/// request kept for a retry) are sent from a buffer.
pub type UpstreamClient = Client<Connector, crate::error::ProxyBody>;

/// Reads a PEM CA bundle; the error says what is wrong with which file.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter =
        CertificateDer::pem_file_iter(path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    let certs: Vec<_> =
        iter.collect::<Result<_, _>>().map_err(|e| format!("CA file {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("CA file {} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// The platform's trust roots, read once per process.
fn platform_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let result = rustls_native_certs::load_native_certs();
        for e in &result.errors {
            tracing::debug!(error = %e, "skipping a platform root certificate");
        }
        result.certs
    })
}

fn root_store(extra: &[PathBuf]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let platform = platform_roots();
    if platform.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        roots.add_parsable_certificates(platform.iter().cloned());
    }
    for file in extra {
        for cert in load_ca_file(file)? {
            roots.add(cert).map_err(|e| format!("CA file {}: {e}", file.display()))?;
        }
    }
    Ok(roots)
}

/// The client token sources and validation use: small buffered bodies.
pub type SourceClient = Client<Connector, http_body_util::Full<bytes::Bytes>>;

/// Builds a pooled client trusting the platform roots plus `extra` CA files.
pub fn build_client<B>(extra: &[PathBuf], connect_timeout: Duration) -> Result<Client<Connector, B>, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    client_builder(extra, connect_timeout, true)
}

/// A client for token sources (token endpoints, secret stores, validation URLs): no pool. Its
/// requests are minutes apart, and a connection closed after each exchange takes its buffers,
/// which held a token, with it (to be zeroed as they are freed) instead of keeping them.
pub fn build_source_client(extra: &[PathBuf], connect_timeout: Duration) -> Result<SourceClient, String> {
    client_builder(extra, connect_timeout, false)
}

fn client_builder<B>(extra: &[PathBuf], connect_timeout: Duration, pooled: bool) -> Result<Client<Connector, B>, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(root_store(extra)?)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    let connector = ConnectTimeout { inner: https, timeout: connect_timeout };
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(if pooled { usize::MAX } else { 0 })
        .build(connector))
}

/// The connect step (TCP and TLS handshake) took longer than `connect_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("connecting to the upstream timed out")]
pub struct ConnectTimedOut;

/// Bounds the whole connect step, TLS handshake included (hyper's own connect timeout covers
/// TCP only).
#[derive(Clone, Debug)]
pub struct ConnectTimeout<C> {
    inner: C,
    timeout: Duration,
}

impl<C> tower::Service<Uri> for ConnectTimeout<C>
where
    C: tower::Service<Uri> + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = C::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let fut = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectTimedOut) as Self::Error),
            }
        })
    }
}
