//! sidekey's HTTP/1.1 client side: one request at a time on a pooled upstream connection,
//! with no task and no channel of its own.
//!
//! hyper's client connection runs as a task of its own, fed through a channel: per request
//! the proxy's task hands the request over, the connection's task wakes, writes it, reads the
//! answer and wakes the proxy's task back, and each upstream connection holds an 8 KiB write
//! buffer, the channel's two 9 KiB blocks, and a second 8 KiB read buffer while a response
//! is in flight (it reads on while the body still points into the first). Here the request's
//! own future writes the request and reads the answer's head; the answer's [`Body`] reads the
//! rest and puts the connection back into its pool once the body is read. Heads are parsed by
//! `httparse` (hyper's parser); the rules for where a body ends are RFC 9112's, and a
//! connection is used again only when they leave no doubt.
//!
//! A pooled connection the upstream closed while it sat idle is seen closed when it is taken
//! (the socket turned readable: no system call otherwise) and let go; should one fail before
//! any byte of an answer all the same, an idempotent request whose body was in memory is sent
//! again on another connection (RFC 9110, section 9.2.2), on three connections at most.
//!
//! What it does not do: upgrades (a `101` answer ends the connection's use), trailers (those
//! of a chunked answer are read and dropped, a client's are not sent on), HTTP/1.0 keep-alive
//! (a 1.0 answer closes the connection).

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::body::Body as DataBody;
use crate::http1::answer::{framing, parse_head, Framing, Head};
use crate::http1::chunked::Decoder;
use crate::http1::{itoa, push_hex, Fields, Limits};
use crate::upstream::ProxyBody;

/// The byte stream to an upstream (TCP, or TLS over it).
pub(crate) type Stream = hyper_util::rt::TokioIo<hyper_rustls::MaybeHttpsStream<crate::upstream::Dialed>>;

/// What a read asks for at least.
const READ_CHUNK: usize = 4096;
/// Largest read straight into a body chunk of its own.
const BODY_CHUNK: usize = 16 * 1024;

/// An idle or busy HTTP/1.1 connection: the stream and what has been read from it.
pub(crate) struct Conn {
    io: Stream,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
    /// How far into `buf`'s allocation bytes were read since it was last wiped.
    dirty: usize,
    /// Wakes a request waiting for its answer at its deadline (see [`Conn::poll_deadline`]).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Why a request got no answer on its connection.
#[derive(Debug)]
pub(crate) enum Failed {
    /// The connection failed, or the answer was bad; `retry`: nothing of an answer arrived and
    /// the request was written whole from memory, so on a connection that sat idle the
    /// upstream most likely closed it before the request came and sending it again is safe.
    Io { error: io::Error, retry: Option<Retry> },
    /// The request's deadline passed before the answer's head came.
    PastDeadline,
}

/// A request handed back by a failed exchange, to be sent again on another connection.
pub(crate) struct Retry {
    req: Encoded,
    pool: Arc<crate::upstream::Pool>,
    deadline: tokio::time::Instant,
}

impl std::fmt::Debug for Retry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Retry")
    }
}

impl Retry {
    /// The request to send again, where the exchange handed it back, its connection was a
    /// pooled one (`reused`) and attempt `attempt` was not the last; else the exchange's error.
    pub(crate) fn again(
        retry: Option<Retry>,
        error: io::Error,
        reused: bool,
        attempt: usize,
    ) -> Result<Retry, crate::upstream::UpstreamError> {
        match retry {
            Some(retry) if reused && attempt < crate::upstream::ATTEMPTS => {
                tracing::debug!(error = %error, "a pooled upstream connection was closed; retrying on another");
                Ok(retry)
            }
            _ => Err(crate::upstream::UpstreamError::Exchange(error)),
        }
    }

    /// The request sent again on another idle connection or a new one, boxed (a rare path).
    pub(crate) fn send(self, attempt: usize) -> crate::upstream::Boxed {
        Box::pin(async move {
            let sent = self.pool.send_h1(None, self.req, self.deadline, attempt);
            sent.await.map(|r| r.map(DataBody::Answer))
        })
    }
}

/// A request encoded for the wire: the head (and a body held in memory) in one buffer, and
/// a streamed body to follow.
pub(crate) struct Encoded {
    bytes: Vec<u8>,
    body: Option<ProxyBody>,
    chunked: bool,
    /// The answer to a HEAD has no body whatever its head says.
    head_request: bool,
    /// Sending it again is safe (RFC 9110, section 9.2.2) once written whole from memory.
    idempotent: bool,
    /// A streamed body of a known length no longer than [`BODY_CHUNK`] (a client's `POST` of
    /// a JSON document, say): gathered into `bytes` before the first write, so the head and
    /// the body go out in one write and reach the upstream in one segment, as nginx's
    /// buffered request bodies do. Written apart, the upstream may read the head alone and
    /// answer before the body came: hyper's server then closes the connection (it cannot
    /// drain a body it has not got), and each such request cost a new upstream connection.
    gather: bool,
}

impl Encoded {
    /// Encodes `req` (origin form) for the wire, with `host` as its `Host` unless it has one.
    /// Fields the own loop kept as they came are written as they are, their credential (see
    /// [`crate::inject::attach`]) after them.
    pub(crate) fn new(req: Request<ProxyBody>, host: &HeaderValue) -> Encoded {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let exact = body.size_hint().exact();
        // Fields the proxy listener's own loop kept as they came (the request has no body):
        // written as they are.
        let fields = match &body {
            DataBody::Fields(fields) => Some(fields),
            _ => None,
        };
        // One pass over the fields for the head's length and the two looked for (cheaper than
        // hashed lookups for the few fields of a request).
        let (mut size, mut has_host, mut has_length) = (0, false, false);
        for (name, value) in parts.headers.iter() {
            size += name.as_str().len() + value.len() + 4;
            has_host |= name == HOST;
            has_length |= name == CONTENT_LENGTH;
        }
        size += fields.map_or(0, |f| f.block().len());
        let credential = fields.and_then(Fields::credential);
        size += credential.map_or(0, |(n, v)| n.as_str().len() + v.len() + 4);
        let host = (!has_host).then_some(host);
        let mut bytes = Vec::with_capacity(
            64 + path.len()
                + host.map_or(0, |h| h.len() + 8)
                + size
                + exact.filter(|&n| n <= BODY_CHUNK as u64).unwrap_or(0) as usize,
        );
        bytes.extend_from_slice(parts.method.as_str().as_bytes());
        bytes.push(b' ');
        bytes.extend_from_slice(path.as_bytes());
        bytes.extend_from_slice(b" HTTP/1.1\r\n");
        if let Some(host) = host {
            bytes.extend_from_slice(b"host: ");
            bytes.extend_from_slice(host.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        let field_line = |bytes: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue| {
            bytes.extend_from_slice(name.as_str().as_bytes());
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(value.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        };
        for (name, value) in parts.headers.iter() {
            if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
                continue;
            }
            field_line(&mut bytes, name, value);
        }
        // Their `Content-Length` (a `0`, as the loop takes no body) stays among them.
        let mut framed = false;
        if let Some(fields) = fields {
            bytes.extend_from_slice(fields.block());
            framed = fields.length().is_some();
        }
        if let Some((name, value)) = credential {
            field_line(&mut bytes, name, value);
        }
        // The body's framing from what it is (hyper's server checked the client's against it).
        let mut chunked = false;
        match exact {
            _ if framed => {}
            Some(0) if !body_expected(&parts.method) && !has_length => {}
            Some(n) => {
                bytes.extend_from_slice(b"content-length: ");
                bytes.extend_from_slice(itoa(n, &mut [0; 20]));
                bytes.extend_from_slice(b"\r\n");
            }
            None => {
                bytes.extend_from_slice(b"transfer-encoding: chunked\r\n");
                chunked = true;
            }
        }
        bytes.extend_from_slice(b"\r\n");
        let head_request = parts.method == Method::HEAD;
        let idempotent = matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
        );
        let mut body = (!body.is_end_stream()).then_some(body);
        // A body in memory goes out with the head, in one write.
        match &mut body {
            Some(DataBody::Full(data)) => {
                bytes.extend_from_slice(data);
                body = None;
            }
            Some(DataBody::Fields(fields)) => {
                bytes.extend_from_slice(fields.body());
                body = None;
            }
            _ => {}
        }
        let gather = body.is_some() && !chunked && exact.is_some_and(|n| n <= BODY_CHUNK as u64);
        Encoded { bytes, body, chunked, head_request, idempotent, gather }
    }

    /// Sending it again is safe, should nothing of an answer arrive.
    fn replayable(&self) -> bool {
        self.idempotent && self.body.is_none()
    }
}

/// Methods whose requests carry a body as a rule, so an empty one is sent as `content-length: 0`.
fn body_expected(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// A client's body that failed while it was read to be written upstream: the client's fault,
/// not the upstream's (see [`crate::error::ProxyError::from_client_error`]).
#[derive(Debug, thiserror::Error)]
#[error("the client's body failed: {0}")]
pub struct ClientBodyFailed(String);

fn body_failed(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(ClientBodyFailed(e.to_string()))
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Conn {
    pub(crate) fn new(io: Stream) -> Box<Conn> {
        Box::new(Conn { io, buf: Vec::new(), dirty: 0, timer: None })
    }

    /// Still open and quiet, as an idle connection should be: no answer nobody asked for, no
    /// end of stream. Costs no system call while the socket has not turned readable.
    pub(crate) fn is_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut byte = [std::mem::MaybeUninit::uninit(); 1];
        let mut read = ReadBuf::uninit(&mut byte);
        let waker = std::task::Waker::noop();
        matches!(Pin::new(&mut self.io).poll_read(&mut Context::from_waker(waker), &mut read), Poll::Pending)
    }

    /// Writes `req` and reads the answer's head, by `deadline`. The body is written while
    /// watching for an answer, which may come before all of it (a `413`, say); the connection
    /// is then not used again.
    pub(crate) fn exchange(
        self: Box<Self>,
        req: Encoded,
        pool: Arc<crate::upstream::Pool>,
        deadline: tokio::time::Instant,
    ) -> impl std::future::Future<Output = Result<Response<Body>, Failed>> + Send {
        // Its state is captured once: an `async fn` keeps its arguments apart from the locals
        // they move into (88 bytes of `Encoded` twice, and more), and this future is moved a
        // few times on its way to the client connection's task.
        let mut exchange = Exchange {
            // Holds the connection until the head is read: should this future be dropped
            // before (the client went away), it drains the answer in the background.
            held: Held { conn: Some(self), pool: Some(pool), head_request: req.head_request, sent: false },
            body_done: req.body.is_none(),
            req,
            deadline,
            written: 0,
            flushed: false,
            pending: None,
            got_any: false,
        };
        async move {
            let result = std::future::poll_fn(|cx| exchange.poll_head(cx)).await;
            exchange.finish(result)
        }
    }
    /// Ready once `deadline` has passed. One timer per connection, not one per request: armed
    /// at the deadline of the request that armed it, and set again only when it goes off
    /// before the current request's deadline (or that is earlier). Requests one after another
    /// with one timeout leave it alone; a timer per request (`tokio::time::timeout`) cost ~830
    /// instructions and 14 atomic operations per request (tokio's timer wheel, in and out).
    fn poll_deadline(&mut self, cx: &mut Context<'_>, deadline: tokio::time::Instant) -> Poll<()> {
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        loop {
            ready!(timer.as_mut().poll(cx));
            // Gone off: at this request's deadline, or at an earlier request's.
            if tokio::time::Instant::now() >= deadline {
                return Poll::Ready(());
            }
            timer.as_mut().reset(deadline);
        }
    }

    /// The head of the answer to a request sent, skipping interim answers (`100 Continue`,
    /// `103 Early Hints`); `got_any` turns true with the first byte.
    fn poll_head(&mut self, cx: &mut Context<'_>, got_any: &mut bool) -> Poll<io::Result<Head>> {
        loop {
            if !self.buf.is_empty() {
                *got_any = true;
                match parse_head(&self.buf) {
                    Ok(Some((head, len))) => {
                        self.buf.drain(..len);
                        if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                            continue;
                        }
                        return Poll::Ready(Ok(head));
                    }
                    Ok(None) if self.buf.len() >= Limits::ANSWER.head_bytes => {
                        return Poll::Ready(Err(invalid("the upstream's response head is too large")))
                    }
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection before answering",
                    )))
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The answer whose head was read, its body still on this connection.
    fn answer(
        self: Box<Self>,
        head: Head,
        framing: Framing,
        reusable: bool,
        pool: Arc<crate::upstream::Pool>,
    ) -> Response<Body> {
        let fields = head.fields;
        let state = match framing {
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Framed(Decoder::length(n)),
            Framing::Chunked => State::Framed(Decoder::chunked()),
            Framing::Close => State::Close,
        };
        let mut response = Response::new(Body { conn: None, framing, state, reusable, pool: None, fields });
        *response.status_mut() = head.status;
        *response.version_mut() = Version::HTTP_11;
        *response.headers_mut() = head.headers;
        let body = response.body_mut();
        if body.state == State::Done {
            if reusable && self.buf.is_empty() {
                pool.put_back(self);
            }
        } else {
            body.conn = Some(self);
            body.pool = Some(pool);
        }
        response
    }

    /// Reads more into `buf`: the number of bytes, 0 at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(READ_CHUNK);
        }
        let n = ready!(crate::http1::socket::poll_read_spare(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf,
            READ_CHUNK / 2,
            usize::MAX
        ))?;
        self.dirty = self.dirty.max(self.buf.len());
        Poll::Ready(Ok(n))
    }

    /// Zeroes what answers left in the read buffer (an answer may echo a credential), before
    /// the connection waits for its next request.
    pub(crate) fn wipe(&mut self) {
        crate::memory::wipe_allocation(&mut self.buf, self.dirty);
        self.dirty = 0;
    }
}

/// An answer abandoned (its request's future dropped while waiting for the head: the client
/// went away) is read to its end in the background within these bounds, so that its
/// connection can carry the next request; a larger or slower one costs its connection.
const DRAIN_BYTES: u64 = 64 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// The connection of an exchange waiting for its answer's head.
struct Held {
    conn: Option<Box<Conn>>,
    pool: Option<Arc<crate::upstream::Pool>>,
    head_request: bool,
    /// The request was written whole: the answer that follows is the connection's last.
    sent: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.take()) else { return };
        if !self.sent {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(conn, pool, self.head_request));
        }
    }
}

/// An exchange under way (see [`Conn::exchange`]).
struct Exchange {
    held: Held,
    req: Encoded,
    deadline: tokio::time::Instant,
    /// How much of `req.bytes` is written.
    written: usize,
    body_done: bool,
    flushed: bool,
    /// A frame of a streamed body and its framing, to be written (boxed: a request without a
    /// streamed body, the most, carries a pointer's room for it and no more).
    pending: Option<Box<Pending>>,
    /// A byte of the answer came.
    got_any: bool,
}

/// A frame of a streamed request body to write: its data, in the chunk framing of a chunked
/// body (or the last chunk), and how much of it all is written.
#[derive(Default)]
struct Pending {
    before: Vec<u8>,
    data: Bytes,
    after: &'static [u8],
    at: usize,
}

impl Pending {
    fn written(&self) -> bool {
        self.at >= self.before.len() + self.data.len() + self.after.len()
    }

    /// A data frame next.
    fn data(&mut self, data: Bytes, chunked: bool) {
        self.before.clear();
        self.after = b"";
        if chunked && !data.is_empty() {
            push_hex(&mut self.before, data.len());
            self.before.extend_from_slice(b"\r\n");
            self.after = b"\r\n";
        }
        self.data = data;
        self.at = 0;
    }

    /// The body's end next.
    fn end(&mut self, chunked: bool) {
        self.before.clear();
        self.data = Bytes::new();
        self.after = if chunked { b"0\r\n\r\n" } else { b"" };
        self.at = 0;
    }

    /// What is left to write, into `slices` from `i` on; how many of them are filled.
    fn slices<'a>(&'a self, slices: &mut [io::IoSlice<'a>; 4], mut i: usize) -> usize {
        let mut skip = self.at;
        for part in [&self.before[..], &self.data[..], self.after] {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            slices[i] = io::IoSlice::new(&part[skip..]);
            skip = 0;
            i += 1;
        }
        i
    }
}

impl Exchange {
    /// Writes as far as it goes without waiting and reads the answer's head; `None` once the
    /// deadline has passed.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Head>>> {
        let Exchange { held, req, written, body_done, flushed, pending, .. } = self;
        let conn = held.conn.as_mut().expect("the connection is held until the head is read");
        // A short body joins the head before anything is written (see `Encoded::gather`).
        while req.gather {
            let body = req.body.as_mut().expect("a body to gather is there");
            match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        req.bytes.extend_from_slice(&data);
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(body_failed(e)))),
                Poll::Ready(None) => {
                    // All of it is in memory now: sent again as a whole, should that be needed.
                    req.gather = false;
                    req.body = None;
                    *body_done = true;
                }
                // The body's first bytes may be on their way still; the deadline holds.
                Poll::Pending => break,
            }
        }
        while !*flushed && !req.gather {
            // The next frame of a streamed body, once the last is written: what is ready goes
            // out in one write with what is left of the head.
            if !*body_done && pending.as_ref().is_none_or(|p| p.written()) {
                let body = req.body.as_mut().expect("a body not done is there");
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            pending.get_or_insert_default().data(data, req.chunked);
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(body_failed(e)))),
                    Poll::Ready(None) => {
                        *body_done = true;
                        pending.get_or_insert_default().end(req.chunked);
                    }
                    Poll::Pending if *written == req.bytes.len() => break,
                    Poll::Pending => {}
                }
            }
            let mut slices = [io::IoSlice::new(&[]); 4];
            let mut n = 0;
            if *written < req.bytes.len() {
                slices[0] = io::IoSlice::new(&req.bytes[*written..]);
                n = 1;
            }
            if let Some(pending) = pending {
                n = pending.slices(&mut slices, n);
            }
            if n == 0 {
                if !*body_done {
                    continue;
                }
                match Pin::new(&mut conn.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => *flushed = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Poll::Pending => break,
                }
                continue;
            }
            let wrote = if n == 1 {
                Pin::new(&mut conn.io).poll_write(cx, &slices[0])
            } else {
                Pin::new(&mut conn.io).poll_write_vectored(cx, &slices[..n])
            };
            match wrote {
                Poll::Ready(Ok(0)) => return Poll::Ready(Some(Err(io::ErrorKind::WriteZero.into()))),
                Poll::Ready(Ok(k)) => {
                    let head = k.min(req.bytes.len() - *written);
                    *written += head;
                    if let Some(pending) = pending {
                        pending.at += k - head;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => break,
            }
        }
        held.sent = *flushed && *body_done;
        // The read side: an answer's head, possibly before the request is all written.
        if let Poll::Ready(head) = conn.poll_head(cx, &mut self.got_any) {
            return Poll::Ready(Some(head));
        }
        // Past the deadline: `held` drains the answer, should it come, as when the client
        // goes away.
        conn.poll_deadline(cx, self.deadline).map(|()| None)
    }

    /// The answer, once its head is read (or the request's failure). The failure carries the
    /// request to send again, as large as the answer: boxing it would cost every retry an
    /// allocation for nothing.
    #[allow(clippy::result_large_err)]
    fn finish(mut self, result: Option<io::Result<Head>>) -> Result<Response<Body>, Failed> {
        let Some(result) = result else { return Err(Failed::PastDeadline) };
        let conn = self.held.conn.take().expect("the connection is held until the head is read");
        let head = match result {
            Ok(head) => head,
            Err(error) => {
                // The connection is let go (nothing to drain on it), the request kept to be
                // sent again where that is safe.
                let pool = self.held.pool.take().expect("the pool is held with the connection");
                let (req, deadline) = (self.req, self.deadline);
                let retry = (!self.got_any && req.replayable()).then_some(Retry { req, pool, deadline });
                return Err(Failed::Io { error, retry });
            }
        };
        let (framing, mut reusable) = match framing(&head, self.req.head_request) {
            Ok(f) => f,
            Err(error) => return Err(Failed::Io { error, retry: None }),
        };
        // An answer before the whole request was sent: the connection is out of step.
        reusable &= self.held.sent;
        let pool = self.held.pool.take().expect("the pool is held with the connection");
        Ok(conn.answer(head, framing, reusable, pool))
    }
}

/// Reads an abandoned answer to its end (the connection then goes back into the pool, as
/// after any answer read whole), or drops the connection past [`DRAIN_BYTES`] or
/// [`DRAIN_TIME`], or where the answer leaves it unusable.
async fn drain(mut conn: Box<Conn>, pool: Arc<crate::upstream::Pool>, head_request: bool) {
    let read = async move {
        let head = std::future::poll_fn(|cx| conn.poll_head(cx, &mut false)).await.ok()?;
        let (framing, reusable) = framing(&head, head_request).ok()?;
        if !reusable || matches!(framing, Framing::Length(n) if n > DRAIN_BYTES) {
            return None;
        }
        let mut body = conn.answer(head, framing, true, pool).into_body();
        let mut read = 0;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            read += frame.ok()?.data_ref().map_or(0, |d| d.len() as u64);
            if read > DRAIN_BYTES {
                return None;
            }
        }
        Some(())
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

impl crate::upstream::Pool {
    /// Sends `req` on `conn` (`true`: a pooled one), or on an idle connection or a new one,
    /// then reads the answer's head, by `deadline`; should a pooled connection turn out closed
    /// before any answer came, on another, as attempt `attempt + 1`. The path of a new
    /// connection and of a retry: the common request's future is [`Conn::exchange`] alone.
    pub(crate) async fn send_h1(
        self: Arc<Self>,
        mut conn: Option<(Box<Conn>, bool)>,
        mut req: Encoded,
        deadline: tokio::time::Instant,
        mut attempt: usize,
    ) -> Result<Response<Body>, crate::upstream::UpstreamError> {
        use crate::upstream::UpstreamError;
        loop {
            let (conn, reused) = match conn.take() {
                Some(c) => c,
                None => match self.checkout_h1() {
                    Some(c) => (c, true),
                    None => match tokio::time::timeout_at(deadline, Box::pin(self.connect_h1())).await {
                        Ok(conn) => (conn?, false),
                        Err(_) => return Err(UpstreamError::TimedOut),
                    },
                },
            };
            match conn.exchange(req, self.clone(), deadline).await {
                Ok(response) => return Ok(response),
                Err(Failed::PastDeadline) => return Err(UpstreamError::TimedOut),
                Err(Failed::Io { error, retry }) => req = Retry::again(retry, error, reused, attempt)?.req,
            }
            attempt += 1;
        }
    }
}

mod answer;
#[cfg(any(test, feature = "fuzzing"))]
mod fuzz;

pub use answer::Body;
use answer::State;
#[cfg(any(test, feature = "fuzzing"))]
pub use fuzz::fuzz_answer;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod wire_tests;
