//! Client connections: the accept loop with its connection cap, and per-connection guards
//! against clients that hold resources without using them.
//!
//! On the proxy listener, sidekey's own HTTP/1.1 loop ([`crate::listen::h1`]) serves the common
//! request (no body, origin form) and hands a connection to hyper's server, with what it read
//! of it, from the first request it does not serve; the admin listener and intercepted
//! tunnels are hyper's throughout. hyper bounds the size of what a client sends (`[limits]
//! max_header_bytes`, `max_headers`, `max_streams`; the own loop hands over a head past them)
//! and rejects malformed framing itself. What it does not separate is a slow
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
use hyper::server::conn::{http1, http2};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::body::Body as DataBody;
use crate::config::Limits;
use crate::shutdown::stopped;
use crate::upstream::ProxyBody;
use crate::workers::Workers;

pub(crate) mod h1;
mod idle;
pub mod unix;
#[cfg(any(test, feature = "fuzzing"))]
pub use h1::fuzz_own_loop_vs_hyper;
#[cfg(any(test, feature = "fuzzing"))]
pub use h1::fuzz_requests;
#[doc(hidden)]
pub use h1::{serve_dribbled, serve_one};

/// An instant and the coarse clock's reading then: what [`now_ms`] counts from.
fn epoch() -> (Instant, coarsetime::Instant) {
    static START: OnceLock<(Instant, coarsetime::Instant)> = OnceLock::new();
    *START.get_or_init(|| (Instant::now(), coarsetime::Instant::now_without_cache_update()))
}

/// Milliseconds since the first call, never 0 (0 means "not set" in a [`ConnWatch`]). Read
/// off the coarse monotonic clock (`CLOCK_MONOTONIC_COARSE` on Linux: the kernel's tick, 1 to
/// 10 ms, and several times cheaper to read than the precise clock); a connection's socket and
/// service read it on every request, for timeouts counted in seconds.
fn now_ms() -> u64 {
    let epoch = epoch().1;
    coarsetime::Instant::now_without_cache_update().duration_since(epoch).as_millis() + 1
}

/// The instant a [`now_ms`] reading stands for (within a tick).
fn instant_of(ms: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(epoch().0 + Duration::from_millis(ms.saturating_sub(1)))
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
        // A request's end does not wake this check either: while one is read or served, look
        // again within an idle timeout, so that a connection gone quiet meanwhile is closed
        // within two of them (not a header timeout later, when that is the longer one).
        let idle = now + limits.idle_timeout.as_millis() as u64;
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            // A request is being served; the upstream timeout bounds it. Look again later.
            return Verdict::Wait(idle.min(now + limits.header_read_timeout.as_millis() as u64));
        }
        let head = self.head_started.load(Ordering::Relaxed);
        if head != 0 && !self.h2.load(Ordering::Relaxed) {
            let due = head + limits.header_read_timeout.as_millis() as u64;
            return if now >= due { Verdict::SlowHead } else { Verdict::Wait(due.min(idle)) };
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

impl h1::InFlight for InFlight {
    fn next_head_begun(self) {
        let watch = self.0.clone();
        drop(self);
        // As a byte arriving with nothing in flight would have.
        watch.on_read();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.head_started.store(0, Ordering::Relaxed);
            self.0.quiet_since.store(now_ms(), Ordering::Relaxed);
        }
    }
}

/// HTTP/2's connection preface: a client with prior knowledge starts with it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The client socket, noting when bytes arrive.
#[pin_project]
struct Watched<T> {
    #[pin]
    io: T,
    watch: Arc<ConnWatch>,
    /// What [`Watched::sniff`] read, handed over by the next read.
    pre: Vec<u8>,
}

/// What a connection speaks, from its first bytes.
#[derive(Debug, PartialEq)]
enum Speaks {
    Http1,
    Http2,
    /// Closed before sending anything.
    Nothing,
}

impl<T: AsyncRead + Unpin> Watched<T> {
    /// Reads the connection's first bytes (as far as they match HTTP/2's preface, whole
    /// packets at a time) and keeps them for the next read. Cancel-safe: what a poll read is
    /// kept at once.
    ///
    /// hyper-util's version detection read at most the preface's 24 bytes and hyper got those
    /// alone on its first read; reading the rest of the head then made it double its 8 KiB read
    /// buffer, on every connection. Here hyper's first read gets the whole head as it arrived.
    async fn sniff(&mut self) -> std::io::Result<Speaks> {
        std::future::poll_fn(|cx| loop {
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
            let mut buf = ReadBuf::uninit(&mut chunk);
            std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            if buf.filled().is_empty() {
                let closed = if self.pre.is_empty() { Speaks::Nothing } else { Speaks::Http1 };
                return Poll::Ready(Ok(closed));
            }
            self.watch.on_read();
            self.pre.extend_from_slice(buf.filled());
            let n = self.pre.len().min(H2_PREFACE.len());
            if self.pre[..n] != H2_PREFACE[..n] {
                return Poll::Ready(Ok(Speaks::Http1));
            }
            if n == H2_PREFACE.len() {
                return Poll::Ready(Ok(Speaks::Http2));
            }
        })
        .await
    }
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre[..n]);
            if n == this.pre.len() {
                *this.pre = Vec::new();
            } else {
                this.pre.drain(..n);
            }
            return Poll::Ready(Ok(()));
        }
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
        crate::http1::socket::poll_write_gathered(self.project().io, cx, bufs)
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

/// The hyper connection builders for a listener's limits.
fn builders(limits: &Limits) -> (http1::Builder, http2::Builder<TokioExecutor>) {
    let mut h1 = http1::Builder::new();
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
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        // Streams a client opens and resets before they are served (rapid reset): past
        // this many at once, the connection gets GOAWAY.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(256);
    (h1, h2)
}

/// What every connection of one listener shares.
struct ConnCtx {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
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
        F: Fn(Request<ProxyBody>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<http::Response<B>, Infallible>> + Send + 'static,
        B: Body + crate::http1::AnswerFields + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // No tunnels inside a tunnel.
        connection(io, self.peer, self.ctx.clone(), self.stop.clone(), handler, false).await;
    }
}

/// What watches one served connection (see [`ConnWatch`]).
struct Guards<'a> {
    watch: &'a ConnWatch,
    limits: &'a Limits,
    what: &'static str,
    peer: std::net::SocketAddr,
}

impl Guards<'_> {
    /// Runs `conn` until it ends and returns its output, or `None` when it was cut off: at
    /// once on a slow request head; when idle or at `stop`, `shutdown` asks it to finish
    /// gracefully (an HTTP/1 or HTTP/2 connection), or, without one, it is dropped there.
    async fn drive<C: Future>(
        &self,
        mut conn: Pin<&mut C>,
        shutdown: Option<fn(Pin<&mut C>)>,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<C::Output> {
        let (what, peer) = (self.what, self.peer);
        let guards_woke = Arc::new(GuardsWoke::default());
        let guards_waker = std::task::Waker::from(guards_woke.clone());
        let mut closing = false;
        let mut registered: Option<std::task::Waker> = None;
        loop {
            let next = match self.watch.check(self.limits) {
                Verdict::Wait(at) => instant_of(at),
                Verdict::SlowHead => {
                    tracing::debug!(listener = what, %peer, "request head too slow; closing the connection");
                    return None;
                }
                Verdict::Idle if !closing => {
                    (shutdown?)(conn.as_mut());
                    closing = true;
                    continue;
                }
                // Closing already: a last response is being sent; look again later.
                Verdict::Idle => tokio::time::Instant::now() + self.limits.idle_timeout,
            };
            let mut stopping = std::pin::pin!(stopped(stop));
            let mut timer = std::pin::pin!(tokio::time::sleep_until(next));
            // New guard futures: poll them once, so they register their waker.
            guards_woke.fired.store(true, Ordering::Relaxed);
            let event = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                    return Poll::Ready(Event::Ended(r));
                }
                // The task's waker is handed to the guards' waker when it has none (a wake-up
                // takes it) or the task is polled with another, and their flag is read before it
                // is swapped: a poll for the connection's own sake (bytes in, a response ready)
                // takes no atomic read-modify-write here. A guard that fires after the flag is
                // read wakes the registered waker, so this task is polled again and sees it.
                loop {
                    if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        guards_woke.task.register(cx.waker());
                        registered = Some(cx.waker().clone());
                    }
                    if !(guards_woke.fired.load(Ordering::Acquire) && guards_woke.fired.swap(false, Ordering::AcqRel)) {
                        break;
                    }
                    // The wake-up that set the flag took the waker: hand it over again. (Set for
                    // new guards above, the flag took none; handing it over again costs atomics
                    // once per guard set.)
                    registered = None;
                    let mut guards_cx = Context::from_waker(&guards_waker);
                    if !closing && stopping.as_mut().poll(&mut guards_cx).is_ready() {
                        return Poll::Ready(Event::Stop);
                    }
                    if timer.as_mut().poll(&mut guards_cx).is_ready() {
                        return Poll::Ready(Event::Timer);
                    }
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Ended(output) => return Some(output),
                Event::Stop => {
                    (shutdown?)(conn.as_mut());
                    closing = true;
                }
                Event::Timer => {}
            }
        }
    }
}

/// What ends one wait of [`Guards::drive`].
enum Event<T> {
    Ended(T),
    Stop,
    Timer,
}

/// The waker [`Guards::drive`] gives its guards (the shutdown signal and the timer): it notes
/// that it was them before waking the connection's task, so that the many wake-ups for the
/// connection itself (bytes in, a response ready) poll only the connection. With `select!`
/// every wake-up polled all three, a measurable share of each request's instructions.
#[derive(Default)]
struct GuardsWoke {
    fired: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for GuardsWoke {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// A connection served by [`crate::listen::h1`] (and hyper after it), and the flag that asks
/// it to finish: what [`Guards::drive`] is given for it.
#[pin_project]
struct Closable<F> {
    closing: Arc<AtomicBool>,
    #[pin]
    serving: F,
}

impl<F> Closable<F> {
    fn close(self: Pin<&mut Self>) {
        self.closing.store(true, Ordering::Relaxed);
    }
}

impl<F: Future> Future for Closable<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().serving.poll(cx)
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
    F: Fn(Request<ProxyBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<http::Response<B>, Infallible>> + Send + 'static,
    B: Body + crate::http1::AnswerFields + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let what = ctx.what;
    let limits = &ctx.limits;
    let watch = ConnWatch::new();
    let mut io = Watched { io, watch: watch.clone(), pre: Vec::new() };
    let guards = Guards { watch: &watch, limits, what, peer };
    // Which protocol the first bytes say, read under the same guards as a request head.
    let speaks = match guards.drive(std::pin::pin!(io.sniff()), None, &mut stop).await {
        // Cut off by the guards, or closed before a byte.
        None | Some(Ok(Speaks::Nothing)) => return,
        Some(Ok(speaks)) => speaks,
        Some(Err(e)) => {
            tracing::debug!(listener = what, %peer, error = %e, "connection ended with an error");
            return;
        }
    };
    let slot: Arc<std::sync::Mutex<Option<TunnelFuture>>> = Arc::default();
    let tunnel = tunnels.then(|| Tunnel { slot: slot.clone(), ctx: ctx.clone(), stop: stop.clone(), peer });
    let service_watch = watch.clone();
    let service_handler = handler.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        // A body to come is an upload, bounded by its progress (see `upload`).
        let mut req = req.map(|b| {
            if b.is_end_stream() {
                DataBody::Incoming(b)
            } else {
                DataBody::Streamed(crate::upload::Upload::hyper(b))
            }
        });
        let in_flight = service_watch.begin(req.version() == http::Version::HTTP_2);
        if let Some(t) = &tunnel {
            if req.method() == http::Method::CONNECT && req.version() < http::Version::HTTP_2 {
                req.extensions_mut().insert(t.clone());
            }
        }
        // A combinator, not an `async` block: awaiting the handler's future from one would
        // keep a second copy of it (moved into place on every request).
        futures_util::FutureExt::map(service_handler(req), move |response| {
            response.map(|response| {
                let (mut parts, mut body) = response.into_parts();
                // hyper's server writes a header map: fields kept as they came go into it.
                if let Some(fields) = body.take_fields() {
                    fields.append_to(&mut parts.headers);
                }
                http::Response::from_parts(parts, Tracked { body, _in_flight: in_flight })
            })
        })
    });
    let ended: Option<Result<(), Box<dyn std::error::Error + Send + Sync>>> = if speaks == Speaks::Http2 {
        // hyper's connections are boxed (here and below): held inline, the largest of them
        // would set the size of every connection's task, idle ones of the own loop among them.
        let mut conn = Box::pin(ctx.h2.serve_connection(TokioIo::new(io), service));
        guards.drive(conn.as_mut(), Some(|c| c.graceful_shutdown()), &mut stop).await.map(|r| r.map_err(Into::into))
    } else if tunnels {
        // The proxy listener: sidekey's own loop serves the common request (see `listen::h1`),
        // hyper the rest of a connection from the first request it does not.
        let closing = Arc::new(AtomicBool::new(false));
        let limits = crate::http1::Limits {
            head_bytes: ctx.limits.max_header_bytes.max(crate::config::MIN_HEADER_BYTES),
            headers: ctx.limits.max_headers,
            ..crate::http1::Limits::REQUEST
        };
        let flag = closing.clone();
        let (h1, own_watch) = (&ctx.h1, watch.clone());
        let serving = async move {
            let mut io = io;
            // The first bytes, read to tell the protocol, are where the loop starts.
            let first = std::mem::take(&mut io.pre);
            let end =
                crate::listen::h1::serve(&mut io, first, &handler, || own_watch.begin(false), &flag, limits).await?;
            let crate::listen::h1::End::HandOver(read) = end else { return Ok(()) };
            // The loop started from the sniffed bytes (`pre` is empty since): what it read and
            // did not serve is all that hyper's first reads are owed.
            io.pre = read;
            let mut conn = Box::pin(h1.serve_connection(TokioIo::new(io), service).with_upgrades());
            let mut shut = false;
            std::future::poll_fn(|cx| {
                if !shut && flag.load(Ordering::Relaxed) {
                    conn.as_mut().graceful_shutdown();
                    shut = true;
                }
                conn.as_mut().poll(cx)
            })
            .await
            .map_err(Into::into)
        };
        let conn = std::pin::pin!(Closable { closing, serving });
        guards.drive(conn, Some(|c| c.close()), &mut stop).await
    } else {
        let mut conn = Box::pin(ctx.h1.serve_connection(TokioIo::new(io), service).with_upgrades());
        guards.drive(conn.as_mut(), Some(|c| c.graceful_shutdown()), &mut stop).await.map(|r| r.map_err(Into::into))
    };
    if let Some(Err(e)) = ended {
        tracing::debug!(listener = what, %peer, error = %e, "connection ended with an error");
    }
    let tunnel = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(tunnel) = tunnel {
        tunnel.await;
    }
}

/// Accepts connections (HTTP/1.1, and HTTP/2 with prior knowledge) until `stop` turns true,
/// then waits up to `grace` for open connections to finish their requests and closes the rest.
/// With `tunnels`, an HTTP/1 CONNECT request carries a [`Tunnel`] its handler may use. With
/// `workers`, each connection is served on the next of them; else on the runtime this runs on.
#[allow(clippy::too_many_arguments)]
pub async fn serve<F, Fut, B>(
    listener: Listener,
    what: &'static str,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    limits: Limits,
    tunnels: bool,
    workers: Option<Arc<Workers>>,
    handler: F,
) where
    F: Fn(Request<ProxyBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<http::Response<B>, Infallible>> + Send + 'static,
    B: Body + crate::http1::AnswerFields + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (h1, h2) = builders(&limits);
    let ctx = Arc::new(ConnCtx { h1, h2, limits, what, tunnels });
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
        let open = Open::new(open.clone());
        match accepted {
            Ok(Accepted::Tcp(stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let Some(workers) = &workers else {
                    let task = connection(stream, peer, ctx.clone(), stop.clone(), handler.clone(), ctx.tunnels);
                    connections.spawn(holding(task, (permit, open)));
                    continue;
                };
                // Registered again with the worker's own I/O driver, on the worker.
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(listener = what, error = %e, "cannot hand a connection to a worker");
                        continue;
                    }
                };
                let (ctx, stop, handler) = (ctx.clone(), stop.clone(), handler.clone());
                let task = async move {
                    match tokio::net::TcpStream::from_std(stream) {
                        Ok(stream) => connection(stream, peer, ctx.clone(), stop, handler, ctx.tunnels).await,
                        Err(e) => tracing::warn!(listener = ctx.what, error = %e, "a worker cannot take a connection"),
                    }
                };
                connections.spawn_on(holding(task, (permit, open)), workers.next());
            }
            Ok(Accepted::Unix(stream)) => {
                // A Unix socket's peer has no address; loopback stands for "this host". Served
                // on this runtime, workers or not.
                let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
                let task = connection(stream, peer, ctx.clone(), stop.clone(), handler.clone(), ctx.tunnels);
                connections.spawn(holding(task, (permit, open)));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
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

/// `task`, holding `held` (a connection's slot, its count in the gauge) until it ends or is
/// dropped. Not `async move { let _held = held; task.await }`: a future an async block captures
/// and awaits takes its room twice in the block's state (as the captured value and as the one
/// being awaited), and this is every connection's task: it would double the memory of every
/// idle connection.
fn holding<T: Future<Output = ()>, H>(task: T, held: H) -> impl Future<Output = ()> {
    futures_util::FutureExt::map(task, move |()| drop(held))
}

/// A listening socket: TCP, or (the proxy's `unix:` address) a Unix socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(tokio::net::UnixListener),
}

enum Accepted {
    Tcp(tokio::net::TcpStream, std::net::SocketAddr),
    Unix(tokio::net::UnixStream),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, peer)| Accepted::Tcp(s, peer)),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
        }
    }
}

#[cfg(test)]
mod tests;
