//! Client connections: the accept loop with its connection cap, and per-connection guards
//! against clients that hold resources without using them.
//!
//! hyper bounds the size of what a client sends (`[limits] max_header_bytes`, `max_headers`,
//! `max_streams`) and rejects malformed framing itself. What it does not separate is a slow
//! request head from an idle keep-alive connection: its own header timer also runs while a
//! connection waits for its next request. So each connection here carries a [`ConnWatch`]:
//! the socket wrapper notes when bytes arrive, the service notes when a request starts and
//! when its response has been sent, and the connection's task closes it when a request head
//! takes longer than `header_read_timeout` from its first byte (slowloris) or when nothing has
//! been in flight for `idle_timeout`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use pin_project::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::Limits;

fn epoch() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Milliseconds since the first call, never 0 (0 means "not set" in a [`ConnWatch`]).
fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// The instant a [`now_ms`] reading stands for.
fn instant_of(ms: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(epoch() + Duration::from_millis(ms.saturating_sub(1)))
}

/// Counts a connection in `sidekey_open_connections` while it lives, however its task ends.
struct Open(metrics::Gauge);

impl Open {
    fn new(gauge: metrics::Gauge) -> Open {
        gauge.increment(1.0);
        Open(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// What one connection is doing, as its socket and its service see it.
#[derive(Debug)]
struct ConnWatch {
    /// Requests whose response has not been sent in full.
    in_flight: AtomicUsize,
    /// When the first byte arrived while nothing was in flight (a request head begun); 0: none.
    head_started: AtomicU64,
    /// When the connection last had nothing in flight (opened, or a response finished).
    quiet_since: AtomicU64,
    /// Speaks HTTP/2: bytes between requests are pings and settings, not a slow head.
    h2: AtomicBool,
}

impl ConnWatch {
    fn new() -> Arc<ConnWatch> {
        Arc::new(ConnWatch {
            in_flight: AtomicUsize::new(0),
            head_started: AtomicU64::new(0),
            quiet_since: AtomicU64::new(now_ms()),
            h2: AtomicBool::new(false),
        })
    }

    fn on_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 && self.head_started.load(Ordering::Relaxed) == 0 {
            self.head_started.store(now_ms(), Ordering::Relaxed);
        }
    }

    fn begin(self: &Arc<Self>, h2: bool) -> InFlight {
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// When to look again, or what to do now.
    fn check(&self, limits: &Limits) -> Verdict {
        let now = now_ms();
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            // A request is being served; the upstream timeout bounds it. Look again later.
            return Verdict::Wait(now + limits.header_read_timeout.as_millis() as u64);
        }
        let head = self.head_started.load(Ordering::Relaxed);
        if head != 0 && !self.h2.load(Ordering::Relaxed) {
            let due = head + limits.header_read_timeout.as_millis() as u64;
            return if now >= due { Verdict::SlowHead } else { Verdict::Wait(due) };
        }
        let due = self.quiet_since.load(Ordering::Relaxed) + limits.idle_timeout.as_millis() as u64;
        if now >= due {
            Verdict::Idle
        } else {
            // Bytes arriving do not wake this check: look again often enough to catch a slow
            // head within 1.5 header timeouts of its first byte.
            Verdict::Wait(due.min(now + limits.header_read_timeout.as_millis() as u64 / 2))
        }
    }
}

enum Verdict {
    Wait(u64),
    SlowHead,
    Idle,
}

/// Held from a request's start until its response body is done (or dropped).
struct InFlight(Arc<ConnWatch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.head_started.store(0, Ordering::Relaxed);
            self.0.quiet_since.store(now_ms(), Ordering::Relaxed);
        }
    }
}

/// The client socket, noting when bytes arrive.
#[pin_project]
struct Watched<T> {
    #[pin]
    io: T,
    watch: Arc<ConnWatch>,
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.io.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.watch.on_read();
        }
        r
    }
}

impl<T: AsyncWrite> AsyncWrite for Watched<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        crate::memory::poll_write_gathered(self.project().io, cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// A response body that keeps its request counted as in flight until it is sent.
#[pin_project]
pub struct Tracked<B> {
    #[pin]
    body: B,
    _in_flight: InFlight,
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The admin listener's limits: a handful of scrapers and probes.
pub fn admin_limits() -> Limits {
    Limits { max_connections: 64, max_streams: 16, ..Limits::default() }
}

/// The hyper connection builder for a listener's limits.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut h1 = builder.http1();
    // Not `writev(false)`: flattening copies response bodies into the connection's write
    // buffer, reused without zeroing, where tests/memory_scan.rs found a retired token an
    // upstream had echoed (it was x0.94 CPU per request in the load harness). `Watched`
    // gathers a head and a small body into one `send` instead, through a scratch buffer it
    // zeroes after each write (`memory::poll_write_gathered`).
    //
    // The header timeout is ours (see the module doc): hyper's would close idle
    // keep-alive connections after it too.
    h1.timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(crate::config::MIN_HEADER_BYTES));
    if limits.max_headers != 100 {
        // Any other value moves hyper's header array from the stack to the heap.
        h1.max_headers(limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        // Streams a client opens and resets before they are served (rapid reset): past
        // this many at once, the connection gets GOAWAY.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(256);
    builder
}

/// What every connection of one listener shares.
struct ConnCtx {
    builder: auto::Builder<TokioExecutor>,
    limits: Limits,
    what: &'static str,
    /// Whether a CONNECT may take the connection over (the proxy listener).
    tunnels: bool,
}

type TunnelFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Lets the answer to an HTTP/1 `CONNECT` keep the connection: found in the request's
/// extensions on a listener that allows tunnels. What is given to [`Tunnel::run`] runs on the
/// connection's own task once the answer has been sent, so a tunnel keeps its place under the
/// connection cap and is drained (or closed) at shutdown like any connection.
#[derive(Clone)]
pub struct Tunnel {
    slot: Arc<std::sync::Mutex<Option<TunnelFuture>>>,
    ctx: Arc<ConnCtx>,
    stop: watch::Receiver<bool>,
    /// The client's address.
    pub peer: std::net::SocketAddr,
}

impl Tunnel {
    /// Runs `fut` on the connection's task after the (2xx) answer to the CONNECT is sent.
    pub fn run(&self, fut: impl Future<Output = ()> + Send + 'static) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::pin(fut));
    }

    /// The budget for a TLS handshake inside the tunnel: the listener's header timeout.
    pub fn handshake_timeout(&self) -> Duration {
        self.ctx.limits.header_read_timeout
    }

    /// Serves HTTP/1.1 or HTTP/2 over a stream inside the tunnel (the client's TLS, terminated)
    /// with the listener's limits, timeouts and shutdown, until the client is done.
    pub async fn serve<I, F, Fut, B>(&self, io: I, handler: F)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<http::Response<B>, Infallible>> + Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // No tunnels inside a tunnel.
        connection(io, self.peer, self.ctx.clone(), self.stop.clone(), handler, false).await;
    }
}

/// Serves one client connection until it closes, times out, or is drained at shutdown; then
/// runs the tunnel a CONNECT handed it, if any.
async fn connection<I, F, Fut, B>(
    io: I,
    peer: std::net::SocketAddr,
    ctx: Arc<ConnCtx>,
    mut stop: watch::Receiver<bool>,
    handler: F,
    tunnels: bool,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<http::Response<B>, Infallible>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let what = ctx.what;
    let watch = ConnWatch::new();
    let io = TokioIo::new(Watched { io, watch: watch.clone() });
    let slot: Arc<std::sync::Mutex<Option<TunnelFuture>>> = Arc::default();
    let tunnel = tunnels.then(|| Tunnel { slot: slot.clone(), ctx: ctx.clone(), stop: stop.clone(), peer });
    let service_watch = watch.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let in_flight = service_watch.begin(req.version() == http::Version::HTTP_2);
        if let Some(t) = &tunnel {
            if req.method() == http::Method::CONNECT && req.version() < http::Version::HTTP_2 {
                req.extensions_mut().insert(t.clone());
            }
        }
        // A combinator, not an `async` block: awaiting the handler's future from one would
        // keep a second copy of it (moved into place on every request).
        futures_util::FutureExt::map(handler(req), move |response| {
            response.map(|response| response.map(|body| Tracked { body, _in_flight: in_flight }))
        })
    });
    let limits = &ctx.limits;
    let conn = ctx.builder.serve_connection_with_upgrades(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    loop {
        let next = match watch.check(limits) {
            Verdict::Wait(at) => instant_of(at),
            Verdict::SlowHead => {
                tracing::debug!(listener = what, %peer, "request head too slow; closing the connection");
                break;
            }
            Verdict::Idle if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
                continue;
            }
            // Closing already: a last response is being sent; look again later.
            Verdict::Idle => tokio::time::Instant::now() + limits.idle_timeout,
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(listener = what, %peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = stopped(&mut stop), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep_until(next) => {}
        }
    }
    let tunnel = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(tunnel) = tunnel {
        tunnel.await;
    }
}

/// Accepts connections (HTTP/1.1, and HTTP/2 with prior knowledge) until `stop` turns true,
/// then waits up to `grace` for open connections to finish their requests and closes the rest.
/// With `tunnels`, an HTTP/1 CONNECT request carries a [`Tunnel`] its handler may use.
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    what: &'static str,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    limits: Limits,
    tunnels: bool,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<http::Response<B>, Infallible>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let ctx = Arc::new(ConnCtx { builder: builder(&limits), limits, what, tunnels });
    let limits = &ctx.limits;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let open = metrics::gauge!("sidekey_open_connections", "listener" => what);
    let mut warned_full: Option<Instant> = None;
    // Every connection's task, so the ones still open when the grace period ends can be closed.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if warned_full.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    warned_full = Some(Instant::now());
                    tracing::warn!(
                        listener = what,
                        max_connections = limits.max_connections,
                        "connection limit reached; new connections wait in the accept queue"
                    );
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                    _ = stopped(&mut stop) => break,
                }
            }
        };
        let accepted = loop {
            tokio::select! {
                a = listener.accept() => break Some(a),
                // Reap finished connection tasks as they end.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                _ = stopped(&mut stop) => break None,
            }
        };
        let Some(accepted) = accepted else { break };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let open = Open::new(open.clone());
        let task = connection(stream, peer, ctx.clone(), stop.clone(), handler.clone(), ctx.tunnels);
        connections.spawn(async move {
            let _held = (permit, open);
            task.await;
        });
    }
    drop(listener);
    if !connections.is_empty() {
        tracing::info!(
            listener = what,
            connections = connections.len(),
            grace_ms = grace.as_millis() as u64,
            "draining connections"
        );
    }
    let drained = tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(listener = what, "grace period over; closing remaining connections");
    }
    connections.shutdown().await;
}

/// Resolves once the watch value turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
