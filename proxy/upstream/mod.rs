//! Upstream connections: sidekey's own pool, HTTP/1.1 (sidekey's own client, [`h1`]) or
//! HTTP/2 (hyper's) by ALPN, TLS by rustls.
//!
//! Trust is the platform's roots (falling back to the Mozilla set compiled in, for images that
//! ship none) plus an optional extra CA bundle. Routes with the same CA files and connect
//! timeout share one [`UpstreamClient`]; it holds one [`Pool`] per upstream origin (scheme and
//! authority), which a route resolves when it is built, so a request neither hashes a pool key
//! nor allocates one. A request takes the idle HTTP/1 connection used last (or shares the one
//! HTTP/2 connection); an HTTP/1 connection is the request's until its answer's body has been
//! read, and goes back into the pool then, with no task of its own. Token sources use
//! hyper-util's client, without a pool ([`build_source_client`]).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http2;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower::ServiceExt;

pub(crate) mod h1;
#[cfg(any(test, feature = "fuzzing"))]
pub use h1::fuzz_answer;

use crate::body::Body;
use crate::upstream::h1::{Encoded, Failed, Retry};

/// The body of every request and answer on the data path (see [`crate::body`]): this
/// client's HTTP/1.1 answers are its `Answer` variant.
pub type ProxyBody = Body<h1::Body>;

/// The connector every upstream client uses.
pub type Connector = ConnectTimeout<HttpsConnector<Dialer>>;

/// The client token sources and validation use: small buffered bodies.
pub type SourceClient = Client<Connector, http_body_util::Full<bytes::Bytes>>;

/// A client for token sources (token endpoints, secret stores, validation URLs): no pool. Its
/// requests are minutes apart, and a connection closed after each exchange takes its buffers,
/// which held a token, with it (to be zeroed as they are freed) instead of keeping them.
pub fn build_source_client(extra: &[PathBuf], connect_timeout: Duration) -> Result<SourceClient, String> {
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(0)
        .build(connector(extra, connect_timeout)?))
}

fn connector(extra: &[PathBuf], connect_timeout: Duration) -> Result<Connector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(crate::pki::root_store(extra)?)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(Dialer { tcp: http });
    Ok(ConnectTimeout { inner: https, timeout: connect_timeout })
}

/// Opens the byte stream to an upstream: TCP, or a pipe to an in-process origin registered
/// with [`listen_in_memory`] (benchmarks of the whole stack without the kernel's part).
#[derive(Clone)]
pub struct Dialer {
    tcp: HttpConnector,
}

/// What a [`Dialer`] opened.
pub enum Dialed {
    Tcp(TokioIo<tokio::net::TcpStream>),
    Memory(TokioIo<tokio::io::DuplexStream>),
}

type InMemory = HashMap<String, tokio::sync::mpsc::UnboundedSender<tokio::io::DuplexStream>>;

fn in_memory() -> &'static Mutex<InMemory> {
    static ORIGINS: OnceLock<Mutex<InMemory>> = OnceLock::new();
    ORIGINS.get_or_init(Mutex::default)
}

/// Makes `http://AUTHORITY` an in-process origin for this process: each connection sidekey
/// opens to it arrives on the returned receiver as the origin's end of a pipe. For benchmarks.
#[doc(hidden)]
pub fn listen_in_memory(authority: &str) -> tokio::sync::mpsc::UnboundedReceiver<tokio::io::DuplexStream> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    in_memory().lock().unwrap_or_else(|e| e.into_inner()).insert(authority.to_owned(), tx);
    rx
}

impl tower::Service<Uri> for Dialer {
    type Response = Dialed;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Dialed, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::<Uri>::poll_ready(&mut self.tcp, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let origins = in_memory().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = uri.authority().and_then(|a| origins.get(a.as_str())) {
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            let sent = tx.send(theirs).map(|()| Dialed::Memory(TokioIo::new(ours)));
            return Box::pin(std::future::ready(sent.map_err(|_| "the in-memory origin is gone".into())));
        }
        let connecting = self.tcp.call(uri);
        Box::pin(async move { Ok(Dialed::Tcp(connecting.await?)) })
    }
}

impl Connection for Dialed {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        match self {
            Dialed::Tcp(s) => s.connected(),
            Dialed::Memory(_) => hyper_util::client::legacy::connect::Connected::new(),
        }
    }
}

impl hyper::rt::Read for Dialed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Dialed::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Dialed::Memory(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Dialed {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Dialed::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Dialed::Memory(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Dialed::Tcp(s) => crate::http1::socket::poll_write_gathered(Pin::new(s.inner_mut()), cx, bufs),
            Dialed::Memory(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Dialed::Tcp(s) => s.is_write_vectored(),
            Dialed::Memory(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Dialed::Tcp(s) => Pin::new(s).poll_flush(cx),
            Dialed::Memory(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Dialed::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Dialed::Memory(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Upstream connections of one trust setting and connect timeout: a [`Pool`] per origin.
#[derive(Clone)]
pub struct UpstreamClient {
    connector: Connector,
    pools: Arc<Mutex<Pools>>,
}

type Pools = HashMap<(Scheme, Authority), Arc<Pool>>;

/// Builds a client trusting the platform roots plus `extra` CA files.
pub fn build_client(extra: &[PathBuf], connect_timeout: Duration) -> Result<UpstreamClient, String> {
    Ok(UpstreamClient { connector: connector(extra, connect_timeout)?, pools: Arc::default() })
}

impl UpstreamClient {
    /// The pool of connections to `scheme://authority`, made on first use and kept for the
    /// client's life (so across reloads that keep the route's upstream).
    pub fn pool(&self, scheme: &Scheme, authority: &Authority) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let key = (scheme.clone(), authority.clone());
        if let Some(p) = pools.get(&key) {
            return p.clone();
        }
        let pool = Arc::new(Pool::new(self.connector.clone(), scheme, authority));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&pool)));
        }
        pools.insert(key, pool.clone());
        pool
    }
}

/// How often the pool looks for idle connections to close.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Sweeps a connection survives unused before it is closed: idle for 60 to 90 s.
const IDLE_SWEEPS: u32 = 2;

/// Closes connections idle for [`IDLE_SWEEPS`] sweeps, and forgets closed ones; ends with
/// the pool.
async fn sweep(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.sweep_once();
    }
}

/// A request that could not be sent, or whose response head did not come.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the upstream")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("HTTP handshake with the upstream failed")]
    Handshake(#[source] hyper::Error),
    #[error("upstream request failed")]
    Request(#[source] hyper::Error),
    #[error("upstream request failed")]
    Exchange(#[source] std::io::Error),
    #[error("the upstream did not answer within the route's timeout")]
    TimedOut,
    #[error("the client's request body stalled")]
    ClientStalled,
}

/// Attempts per request when a pooled connection turns out closed before the request was
/// written to it, or (HTTP/1.1, for a request that may be sent again) before any byte of an
/// answer came: the upstream closed it while it sat idle.
pub(crate) const ATTEMPTS: usize = 3;

/// The connections to one upstream origin.
pub struct Pool {
    connector: Connector,
    /// `scheme://authority/`, what the connector connects to.
    origin: Uri,
    /// `Host` for HTTP/1 requests that carry none: the authority without a default port.
    pub(crate) host: HeaderValue,
    /// Idle HTTP/1 connections, the one used last at the end.
    h1: Mutex<Vec<H1>>,
    /// The HTTP/2 connection, when the upstream chose h2 by ALPN.
    h2: Mutex<Option<http2::SendRequest<ProxyBody>>>,
    /// [`Pool::epoch`] when the HTTP/2 connection was last handed a request.
    h2_epoch: AtomicU32,
    /// Sweeps so far (see [`sweep`]).
    epoch: AtomicU32,
    /// What ALPN chose for the last connection made: [`ALPN_UNKNOWN`] until the first.
    alpn: AtomicU8,
    /// Held while a connection that may turn out HTTP/2 is made: requests that find no
    /// connection wait for it and share it, rather than each opening one of their own.
    connecting: tokio::sync::Mutex<()>,
}

const ALPN_UNKNOWN: u8 = 0;
const ALPN_H1: u8 = 1;
const ALPN_H2: u8 = 2;

struct H1 {
    conn: Box<crate::upstream::h1::Conn>,
    /// [`Pool::epoch`] when it was last put back.
    epoch: u32,
}

enum Conn {
    H1(Box<crate::upstream::h1::Conn>),
    H2(http2::SendRequest<ProxyBody>),
}

/// What the HTTP/2 connection's `try_send_request` gives: the answer, or the request back unsent.
pub trait SendFuture:
    Future<Output = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<ProxyBody>>>> + Send
{
}

impl<F> SendFuture for F where
    F: Future<Output = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<ProxyBody>>>> + Send
{
}

/// The answer to [`Pool::request`].
#[pin_project::pin_project]
pub struct Answer<A, B> {
    #[pin]
    state: Sent<A, B>,
}

pub(crate) type Boxed = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, UpstreamError>> + Send>>;

#[pin_project::pin_project(project = SentProj)]
enum Sent<A, B> {
    /// On a pooled HTTP/1 connection.
    H1(#[pin] A),
    /// Handed to the HTTP/2 connection: boxed, as it is larger than the rest (its timer, and
    /// the request hyper hands back should the connection be gone).
    H2(Pin<Box<H2Sent<B>>>),
    /// On a new connection, or retried.
    Other(Boxed),
}

/// A request handed to the HTTP/2 connection, and the pool and the deadline for a retry on
/// another.
#[pin_project::pin_project]
struct H2Sent<B> {
    #[pin]
    sent: tokio::time::Timeout<B>,
    pool: Arc<Pool>,
    deadline: tokio::time::Instant,
}

impl<A, B> Future for Answer<A, B>
where
    A: Future<Output = Result<Response<crate::upstream::h1::Body>, Failed>> + Send,
    B: SendFuture,
{
    type Output = Result<Response<ProxyBody>, UpstreamError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let (result, pool, deadline) = match state.as_mut().project() {
                SentProj::H1(f) => match std::task::ready!(f.poll(cx)) {
                    Ok(r) => return Poll::Ready(Ok(r.map(Body::Answer))),
                    Err(Failed::PastDeadline) => return Poll::Ready(Err(UpstreamError::TimedOut)),
                    // The pooled connection was closed: attempt 2, boxed.
                    Err(Failed::Io { error, retry }) => match Retry::again(retry, error, true, 1) {
                        Ok(retry) => {
                            state.set(Sent::Other(retry.send(2)));
                            continue;
                        }
                        Err(e) => return Poll::Ready(Err(e)),
                    },
                },
                SentProj::H2(h2) => {
                    let h2 = h2.as_mut().project();
                    match std::task::ready!(h2.sent.poll(cx)) {
                        Ok(result) => (result, h2.pool, *h2.deadline),
                        Err(_) => return Poll::Ready(Err(UpstreamError::TimedOut)),
                    }
                }
                SentProj::Other(f) => return f.as_mut().poll(cx),
            };
            match result {
                Ok(r) => return Poll::Ready(Ok(r.map(Body::Incoming))),
                Err(mut e) => match e.take_message() {
                    // Never written: the HTTP/2 connection went away. Another one.
                    Some(req) => {
                        tracing::debug!(error = %e.error(), "a pooled upstream connection was closed; retrying on another");
                        let retry = pool.clone().send_from(req, 2, deadline);
                        state.set(Sent::Other(retry));
                    }
                    None => return Poll::Ready(Err(UpstreamError::Request(e.into_error()))),
                },
            }
        }
    }
}

impl Pool {
    fn new(connector: Connector, scheme: &Scheme, authority: &Authority) -> Pool {
        let origin = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .expect("a route's scheme and authority make a URI");
        let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(p) if p == default_port => HeaderValue::from_str(authority.host()),
            _ => HeaderValue::from_str(authority.as_str()),
        }
        .expect("an authority is a valid header value");
        Pool {
            connector,
            origin,
            host,
            h1: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            h2_epoch: AtomicU32::new(0),
            epoch: AtomicU32::new(0),
            alpn: AtomicU8::new(ALPN_UNKNOWN),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// One sweep: forgets closed connections, closes those idle for [`IDLE_SWEEPS`] sweeps.
    /// The HTTP/2 connection is let go when unused for as long: it closes once the requests
    /// still on it are done.
    fn sweep_once(&self) {
        let now = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock_h1().retain_mut(|c| c.conn.is_open() && now.wrapping_sub(c.epoch) < IDLE_SWEEPS);
        let mut h2 = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        let unused = now.wrapping_sub(self.h2_epoch.load(Ordering::Relaxed)) >= IDLE_SWEEPS;
        if h2.as_ref().is_some_and(|s| s.is_closed() || unused) {
            *h2 = None;
        }
    }

    fn lock_h1(&self) -> std::sync::MutexGuard<'_, Vec<H1>> {
        self.h1.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open connections to this origin that are free: idle HTTP/1 ones still open, plus the
    /// HTTP/2 one.
    #[cfg(test)]
    pub(crate) fn connections(&self) -> usize {
        let h1 = self.lock_h1().iter_mut().map(|c| c.conn.is_open()).filter(|&open| open).count();
        let h2 = self.h2.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|s| !s.is_closed());
        h1 + usize::from(h2)
    }

    /// Sends `req` (origin form, or the absolute URL SigV4 signed, for this origin). The common
    /// request is encoded here and written to a pooled connection by the future this returns
    /// (the exchange itself), without a box or a task of its own; a new connection, a retry,
    /// and a request handed to the HTTP/2 connection wait boxed.
    pub(crate) fn request(
        self: &Arc<Self>,
        mut req: Request<ProxyBody>,
        deadline: tokio::time::Instant,
    ) -> Answer<impl Future<Output = Result<Response<crate::upstream::h1::Body>, Failed>> + Send, impl SendFuture> {
        let state = match self.checkout() {
            // Encoded here, its parts dropped before the client's connection is read again.
            Some(Conn::H1(conn)) => Sent::H1(conn.exchange(Encoded::new(req, &self.host), self.clone(), deadline)),
            waits => {
                // Held past this call: see `own_values` (fields the own loop kept as they came
                // are a block of their own already, their credential with them).
                if req.body().is_end_stream() {
                    crate::route::own_values(req.headers_mut());
                }
                match waits {
                    Some(Conn::H2(send)) => {
                        let sent = tokio::time::timeout_at(deadline, self.hand_over_h2(send, req));
                        Sent::H2(Box::pin(H2Sent { sent, pool: self.clone(), deadline }))
                    }
                    _ => Sent::Other(self.clone().send_from(req, 1, deadline)),
                }
            }
        };
        Answer { state }
    }

    /// Sends on a pooled connection or a new one, attempts `first` to [`ATTEMPTS`], by
    /// `deadline`; boxed, as the uncommon way.
    fn send_from(self: Arc<Self>, req: Request<ProxyBody>, first: usize, deadline: tokio::time::Instant) -> Boxed {
        Box::pin(async move {
            let attempts = self.send_attempts(req, first, deadline);
            tokio::time::timeout_at(deadline, attempts).await.unwrap_or(Err(UpstreamError::TimedOut))
        })
    }

    async fn send_attempts(
        self: Arc<Self>,
        mut req: Request<ProxyBody>,
        first: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        for attempt in first..=ATTEMPTS {
            let (conn, reused) = match self.checkout() {
                Some(c) => (c, true),
                None => Box::pin(self.connect_or_join()).await?,
            };
            match conn {
                Conn::H1(conn) => {
                    let encoded = Encoded::new(req, &self.host);
                    let sent = self.clone().send_h1(Some((conn, reused)), encoded, deadline, attempt);
                    return Box::pin(sent).await.map(|r| r.map(Body::Answer));
                }
                Conn::H2(send) => match self.hand_over_h2(send, req).await {
                    Ok(r) => return Ok(r.map(Body::Incoming)),
                    Err(mut e) => match e.take_message() {
                        Some(r) if reused && attempt < ATTEMPTS => {
                            tracing::debug!(error = %e.error(), "a pooled upstream connection was closed; retrying on another");
                            req = r;
                        }
                        _ => return Err(UpstreamError::Request(e.into_error())),
                    },
                },
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Gives `req` to the HTTP/2 connection.
    fn hand_over_h2(&self, mut send: http2::SendRequest<ProxyBody>, req: Request<ProxyBody>) -> impl SendFuture {
        let mut req = Body::fields_to_header_map(req, false);
        self.absolute_form(req.uri_mut());
        send.try_send_request(req)
    }

    /// An idle HTTP/1 connection still open (taken out of the pool), or a clone of the HTTP/2
    /// one.
    fn checkout(&self) -> Option<Conn> {
        if let Some(conn) = self.checkout_h1() {
            return Some(Conn::H1(conn));
        }
        let h2 = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        let send = h2.as_ref().filter(|s| !s.is_closed())?;
        self.h2_epoch.store(self.epoch.load(Ordering::Relaxed), Ordering::Relaxed);
        Some(Conn::H2(send.clone()))
    }

    /// The idle HTTP/1 connection used last that is still open; closed ones are let go.
    pub(crate) fn checkout_h1(&self) -> Option<Box<crate::upstream::h1::Conn>> {
        let mut h1 = self.lock_h1();
        while let Some(mut idle) = h1.pop() {
            if idle.conn.is_open() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Takes back an HTTP/1 connection whose answer has been read, its read buffer wiped.
    pub(crate) fn put_back(&self, mut conn: Box<crate::upstream::h1::Conn>) {
        conn.wipe();
        let epoch = self.epoch.load(Ordering::Relaxed);
        self.lock_h1().push(H1 { conn, epoch });
    }

    /// A new HTTP/1 connection, for a request that was being sent on one.
    pub(crate) async fn connect_h1(&self) -> Result<Box<crate::upstream::h1::Conn>, UpstreamError> {
        match self.connect().await? {
            Conn::H1(conn) => Ok(conn),
            Conn::H2(_) => Err(UpstreamError::Connect("the upstream switched to HTTP/2 by ALPN".into())),
        }
    }

    /// A new connection, or the HTTP/2 one another request was making meanwhile (`true`: a
    /// connection made before this request, as a pooled one is). Only a TLS upstream may choose
    /// HTTP/2, and until its first connection says which it chose, requests take turns.
    async fn connect_or_join(&self) -> Result<(Conn, bool), UpstreamError> {
        let may_be_h2 = || self.alpn.load(Ordering::Relaxed) != ALPN_H1;
        if self.origin.scheme() != Some(&Scheme::HTTPS) || !may_be_h2() {
            return Ok((self.connect().await?, false));
        }
        let turn = self.connecting.lock().await;
        if let Some(conn) = self.checkout() {
            return Ok((conn, true));
        }
        if !may_be_h2() {
            // HTTP/1.1 after all: one connection each, made side by side.
            drop(turn);
        }
        Ok((self.connect().await?, false))
    }

    /// A new connection: TCP, TLS where the scheme says, HTTP/2 when ALPN chose it.
    async fn connect(&self) -> Result<Conn, UpstreamError> {
        let io = self.connector.clone().oneshot(self.origin.clone()).await.map_err(UpstreamError::Connect)?;
        let h2 = io.connected().is_negotiated_h2();
        self.alpn.store(if h2 { ALPN_H2 } else { ALPN_H1 }, Ordering::Relaxed);
        if h2 {
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(UpstreamError::Handshake)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
                }
            });
            let mut h2 = self.h2.lock().unwrap_or_else(|e| e.into_inner());
            if h2.as_ref().is_none_or(|s| s.is_closed()) {
                *h2 = Some(send.clone());
                self.h2_epoch.store(self.epoch.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            return Ok(Conn::H2(send));
        }
        Ok(Conn::H1(crate::upstream::h1::Conn::new(TokioIo::new(io))))
    }

    /// Absolute form, for HTTP/2 (`:scheme` and `:authority` come from it). HTTP/1 writes
    /// only the path and query ([`Encoded::new`], with the pool's `Host`).
    fn absolute_form(&self, uri: &mut Uri) {
        if uri.scheme().is_none() {
            let mut parts = std::mem::take(uri).into_parts();
            parts.scheme = self.origin.scheme().cloned();
            parts.authority = self.origin.authority().cloned();
            *uri = Uri::from_parts(parts).unwrap_or_else(|_| self.origin.clone());
        }
    }
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

#[cfg(test)]
pub(crate) mod tests;
