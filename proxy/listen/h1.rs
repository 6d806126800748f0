//! The proxy listener's own HTTP/1.1 loop for the common request: in origin form, over
//! HTTP/1.1, with or without a body. A short body of a stated length (a JSON document an API
//! client posts, say: up to [`BODY_MAX`]) is read whole before the request goes on, as nginx
//! buffers request bodies; a longer one, or a chunked one, is streamed on as it arrives
//! ([`Streamed`]). `Expect: 100-continue` is answered here when the body is waited for. It
//! reads the head with `httparse`, hands the request to the proxy, and writes the answer's head
//! and body to the socket itself.
//!
//! Anything else hands the connection, with every byte read of it and not yet served, to
//! hyper's server for the rest of its life: CONNECT, an upgrade, HTTP/1.0, a target in another
//! form, a `Connection` header that names more than `close` or `keep-alive`, a framing hyper
//! refuses (two lengths, a length and a chunked body, another transfer coding), another
//! `Expect`, a head that does not parse or is over the listener's limits. hyper then serves that
//! request (or refuses it, as it would have from the start) and every one after it. Nothing
//! about such a request is decided here.
//!
//! hyper's server took about half of sidekey's own instructions per request (its dispatcher,
//! read and write buffers, a header map built for a head it then encodes again); see the
//! docs/performance.md for what this loop saves.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use bytes::{Buf, Bytes};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::body::{Body as DataBody, Streamed};
use crate::http1::chunked::{Decoder, Step};
use crate::http1::{itoa, push_hex, AnswerFields, Limits};
use crate::upstream::ProxyBody;

/// Reads take at least this much room: a connection's block for request heads starts at this
/// size (or its first head's) and grows while a head does not fit. An idle keep-alive
/// connection holds it (nginx's `client_header_buffer_size` is as large; 4 KiB took 12.1
/// against 9.0 KiB of memory per idle connection).
const READ_ROOM: usize = 1024;
/// A body chunk up to this size goes out in one write with what precedes it (the head, a
/// chunk's size line), copied into the connection's write buffer; a larger one is written
/// from where it is.
const GATHER_MAX: usize = 16 * 1024;
/// Longest request body read whole with its head (by its `Content-Length`); a longer one is
/// streamed.
pub(crate) const BODY_MAX: usize = 16 * 1024;
/// A streamed body is read in blocks of this size (each goes on as one chunk, or several);
/// a new one is made when less than `STREAM_ROOM` is left in the last.
const STREAM_READ: usize = 64 * 1024;
const STREAM_ROOM: usize = 4096;
/// Chunks of a streamed body read ahead of the upstream's taking them.
const STREAM_AHEAD: usize = 2;
/// How long, and how many bytes of a body not read, a closing connection reads and drops (see
/// [`linger`]).
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 4 * 1024 * 1024;
/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What a request holds of its connection while it is served (see [`serve`]'s `begin`).
pub(crate) trait InFlight {
    /// The request is done, and bytes of the next one are in already: the next head has begun
    /// (its `header_read_timeout` counts from now, not from a byte still to come).
    fn next_head_begun(self);
}

impl InFlight for () {
    fn next_head_begun(self) {}
}

/// How the loop ended.
#[derive(Debug, PartialEq)]
pub(crate) enum End {
    /// The connection is done: the client closed it or asked to, an answer could not be sent
    /// whole, or the listener is closing.
    Closed,
    /// A request for hyper: the bytes read and not served, from its first.
    HandOver(Vec<u8>),
}

/// A request head read whole and served here.
#[derive(Debug)]
pub(crate) struct Head {
    pub request: Request<ProxyBody>,
    /// Its length in the read buffer.
    pub len: usize,
    /// The length of the body that follows it, to be read whole (its `Content-Length`, at most
    /// [`BODY_MAX`]).
    pub body: usize,
    /// A body streamed instead: how it is framed, and where its chunks go (the request's body
    /// is the other end).
    pub stream: Option<(Framing, tokio::sync::mpsc::Sender<Bytes>)>,
    /// The client said `Expect: 100-continue`.
    pub expect: bool,
    /// The client said `Connection: close`.
    pub close: bool,
}

/// How a streamed request body is framed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked,
}

impl Framing {
    /// Where a body so framed ends, read within `limits`.
    pub(crate) fn decoder(self, limits: &Limits) -> Decoder {
        match self {
            Framing::Length(n) => Decoder::length(n),
            Framing::Chunked => Decoder::chunked(limits),
        }
    }
}

/// What the bytes at the start of a read buffer are.
#[derive(Debug)]
// Returned once per request and taken apart at once: boxing the request would cost an
// allocation each time.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Parsed {
    Request(Head),
    /// The start of a head.
    Partial,
    /// Not a request this loop serves (see the module doc).
    HandOver,
}

/// Parses the request head at the start of `buf`.
pub(crate) fn parse(buf: &[u8], limits: Limits) -> Parsed {
    // Parsed in place up to the default count; a head with more is hyper's.
    let mut headers = [httparse::EMPTY_HEADER; Limits::REQUEST.headers];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= limits.head_bytes => len,
        Ok(httparse::Status::Partial) if buf.len() < limits.head_bytes => return Parsed::Partial,
        _ => return Parsed::HandOver,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else { return Parsed::HandOver };
    if !path.starts_with('/') || req.headers.len() > limits.headers {
        return Parsed::HandOver;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parsed::HandOver };
    if method == Method::CONNECT {
        return Parsed::HandOver;
    }
    let (mut close, mut length, mut chunked, mut expect) = (false, None, false, false);
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let stays = if name.eq_ignore_ascii_case(b"content-length") {
            // One, in digits; any other (a list, a sign, two fields) is hyper's to judge.
            let n = (length.is_none() && (1..=19).contains(&h.value.len()) && h.value.iter().all(u8::is_ascii_digit))
                .then(|| h.value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')));
            length = n;
            n.is_some()
        } else if name.eq_ignore_ascii_case(b"connection") {
            // Each field on its own: one naming another header (which must then not go on)
            // is hyper's, whatever a field before it said.
            let this_close = h.value.eq_ignore_ascii_case(b"close");
            close |= this_close;
            this_close || h.value.eq_ignore_ascii_case(b"keep-alive")
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // `chunked` alone, once; another coding or a list is hyper's.
            let one = !chunked && h.value.eq_ignore_ascii_case(b"chunked");
            chunked = true;
            one
        } else if name.eq_ignore_ascii_case(b"expect") {
            let one = !expect && h.value.eq_ignore_ascii_case(b"100-continue");
            expect = true;
            one
        } else {
            !name.eq_ignore_ascii_case(b"upgrade")
        };
        if !stays {
            return Parsed::HandOver;
        }
    }
    let framing = match (chunked, length) {
        // Both: hyper refuses it (RFC 9112, section 6.1).
        (true, Some(_)) => return Parsed::HandOver,
        (true, None) => Some(Framing::Chunked),
        // A client that waits for `100 Continue` is told to send its body only once the request
        // is known not to be refused before it: the request goes to the handler at once.
        (false, Some(n)) if n > BODY_MAX as u64 || (expect && n > 0) => Some(Framing::Length(n)),
        _ => None,
    };
    // The path in a block of its own, which the URI points into; the header fields in another
    // (the read buffer is reused for the next request).
    let Ok(uri) = Uri::from_maybe_shared(Bytes::copy_from_slice(path.as_bytes())) else { return Parsed::HandOver };
    let short = if framing.is_some() { None } else { length };
    let Some(mut fields) = crate::http1::Fields::request(buf, req.headers, short) else { return Parsed::HandOver };
    if expect {
        // Answered here, not sent on.
        fields.remove(&EXPECT);
    }
    let (mut request, stream) = match framing {
        None => (Request::new(DataBody::Fields(fields)), None),
        // A streamed body goes on as hyper's would, its fields in a header map (`Content-Length`
        // among them; a chunked one is framed again upstream).
        Some(framing) => {
            let (tx, rx) = tokio::sync::mpsc::channel(STREAM_AHEAD);
            let mut request = Request::new(DataBody::Streamed(crate::upload::Upload::own(Streamed::new(
                rx,
                match framing {
                    Framing::Length(n) => Some(n),
                    Framing::Chunked => None,
                },
            ))));
            fields.append_to(request.headers_mut());
            (request, Some((framing, tx)))
        }
    };
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    let body = short.unwrap_or(0) as usize;
    let expect = expect && (body > 0 || stream.is_some());
    Parsed::Request(Head { request, len, body, stream, expect, close })
}

/// Serves requests on `io`, the first starting at `read` (what was read of it already), until
/// the connection is done or a request is for hyper. `begin`
/// is called as each request starts; what it returns is dropped once its answer is sent.
/// `closing` (the listener's graceful shutdown): no new request is read once it is set (a
/// request whose head is in and whose body is on its way is read to its end), and the answer
/// under way says `Connection: close`. A streamed body is read while its request is under way
/// ([`pump`]); an answer before its end is the connection's last, and the loop lingers before
/// it closes ([`linger`]).
pub(crate) async fn serve<I, F, Fut, B, G>(
    io: &mut I,
    read: Vec<u8>,
    handler: &F,
    begin: impl Fn() -> G,
    closing: &AtomicBool,
    limits: Limits,
) -> io::Result<End>
where
    G: InFlight,
    I: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Request<ProxyBody>) -> Fut,
    Fut: Future<Output = Result<Response<B>, Infallible>>,
    B: Body + AnswerFields,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut buf = read;
    let mut out: Vec<u8> = Vec::new();
    loop {
        // How much the request read so far needs: its head and body (the head's limit until
        // the head is read).
        let (mut need, mut body_due) = (limits.head_bytes, false);
        // A head read whole whose short body is on its way: kept, not parsed again on every
        // read of a body that comes a few bytes at a time.
        let mut parsed: Option<Head> = None;
        let mut head = loop {
            if let Some(head) = parsed.take_if(|head| buf.len() >= head.len + head.body) {
                break head;
            }
            if parsed.is_none() && !buf.is_empty() {
                match parse(&buf, limits) {
                    Parsed::Request(head) if head.stream.is_some() || buf.len() >= head.len + head.body => break head,
                    // Its body is on its way: the request is under way, closing or not. (A
                    // client that expects `100 Continue` has its body streamed: see `parse`.)
                    Parsed::Request(head) => {
                        (need, body_due) = (need.max(head.len + head.body), true);
                        parsed = Some(head);
                    }
                    Parsed::HandOver => return Ok(End::HandOver(buf)),
                    Parsed::Partial => {}
                }
            }
            let read = std::future::poll_fn(|cx| {
                if closing.load(Ordering::Relaxed) && !body_due {
                    return Poll::Ready(None);
                }
                let room = need.saturating_sub(buf.len());
                crate::http1::socket::poll_read_spare(Pin::new(&mut *io), cx, &mut buf, READ_ROOM, room).map(Some)
            })
            .await;
            match read {
                // Closing, or the client closed (in the middle of a request or not).
                None | Some(Ok(0)) => return Ok(End::Closed),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
            }
        };
        let end = head.len + head.body;
        if head.body > 0 {
            if let DataBody::Fields(fields) = head.request.body_mut() {
                fields.set_body(&buf[head.len..end]);
            }
        }
        if end == buf.len() {
            buf.clear();
        } else {
            buf.drain(..end);
        }
        let head_request = head.request.method() == Method::HEAD;
        let in_flight = begin();
        let mut answer = pin!(handler(head.request));
        // A streamed body is read while the request is under way; an answer that comes before
        // its end is the last on this connection (what is left of the body is not read).
        let mut early = None;
        let mut cut = false;
        if let Some((framing, tx)) = head.stream {
            let pumped = {
                let mut pump = pin!(pump(&mut *io, &mut buf, framing, tx, head.expect, &limits));
                // The answer first: a request refused before its body is read (no route, not
                // allowed) is answered without `100 Continue` and without its body.
                let mut pumping = false;
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(Ok(response)) = answer.as_mut().poll(cx) {
                        early = Some(response);
                        // A body that ends with this wake-up is read whole all the same.
                        let pumped = if pumping { pump.as_mut().poll(cx) } else { Poll::Pending };
                        return Poll::Ready(match pumped {
                            Poll::Ready(p) => Some(p),
                            Poll::Pending => None,
                        });
                    }
                    pumping = true;
                    pump.as_mut().poll(cx).map(Some)
                })
                .await
            };
            match pumped {
                Some(Pumped::Whole) => {}
                // The client went away; its request is dropped.
                Some(Pumped::Closed) => return Ok(End::Closed),
                Some(Pumped::Unread | Pumped::Bad) | None => cut = true,
            }
        }
        let response = match early {
            Some(response) => Some(response),
            None => {
                let max = limits.head_bytes;
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(Ok(response)) = answer.as_mut().poll(cx) {
                        return Poll::Ready(Some(response));
                    }
                    // Meanwhile, notice a client that goes away (as hyper does): its request is
                    // dropped. What a client sends ahead (pipelined) is kept for after.
                    while buf.len() < max && !cut {
                        let room = max.saturating_sub(buf.len());
                        match crate::http1::socket::poll_read_spare(Pin::new(&mut *io), cx, &mut buf, READ_ROOM, room) {
                            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                            Poll::Ready(Ok(_)) => {}
                            Poll::Pending => break,
                        }
                    }
                    Poll::Pending
                })
                .await
            }
        };
        let Some(response) = response else { return Ok(End::Closed) };
        let close = head.close || cut || closing.load(Ordering::Relaxed);
        let whole = write_response(io, &mut out, response, head_request, close).await;
        if buf.is_empty() {
            drop(in_flight);
        } else {
            in_flight.next_head_begun();
        }
        match whole {
            Ok(true) if !close => {}
            Ok(_) => {
                let _ = io.shutdown().await;
                if cut {
                    linger(io).await;
                }
                return Ok(End::Closed);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes `response`: its head, then its body framed by its length (the `Content-Length` it
/// carries, or its body's exact size) or chunked. Whether it went out whole: an answer whose
/// body failed or ended short of its length costs the connection, as with hyper.
async fn write_response<I, B>(
    io: &mut I,
    out: &mut Vec<u8>,
    response: Response<B>,
    head_request: bool,
    close: bool,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
    B: Body + AnswerFields,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, mut body) = response.into_parts();
    // An upstream's fields as they came, when it left them so: written as they are.
    let fields = body.take_fields();
    let mut body = pin!(body);
    let status = parts.status;
    // No body follows these, whatever their headers say (RFC 9112, section 6.3).
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // The framing is this loop's to write: the answer's own length is read, not copied
    // (but for fields kept as they came, which carry theirs).
    let (mut length, mut conflicting, mut has_date) = (None, false, false);
    let mut length_written = false;
    if let Some(fields) = &fields {
        out.extend_from_slice(fields.block());
        length = fields.length();
        length_written = length.is_some();
        has_date = fields.has_date();
    }
    for (name, value) in parts.headers.iter() {
        if name == CONTENT_LENGTH {
            if length_written {
                continue;
            }
            let items = value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii);
            match crate::http1::content_length(items, None).ok().flatten() {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => conflicting = true,
            }
            continue;
        }
        if name == TRANSFER_ENCODING || name == CONNECTION {
            continue;
        }
        has_date |= name == DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if conflicting {
        length = None;
    }
    if length.is_none() && !bodiless {
        length = body.size_hint().exact();
    }
    let chunked = !bodiless && length.is_none();
    let no_length = length_written || status.is_informational() || status == StatusCode::NO_CONTENT;
    if let Some(n) = length.filter(|_| !no_length) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa(n, &mut [0; 20]));
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if bodiless {
        flush(io, out).await?;
        return Ok(true);
    }
    let mut sent: u64 = 0;
    loop {
        // What is ready goes out with what is pending (the head first); only then wait.
        let mut next = |cx: &mut std::task::Context<'_>| {
            body.as_mut()
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::<Box<dyn std::error::Error + Send + Sync>>::into)))
        };
        let frame = match std::future::poll_fn(|cx| Poll::Ready(next(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                flush(io, out).await?;
                std::future::poll_fn(next).await
            }
        };
        let mut data = match frame {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "an answer's body failed; closing the client's connection");
                flush(io, out).await?;
                return Ok(false);
            }
            // Trailers are not sent (hyper sends them only to a client that asked for them).
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        let n = data.remaining();
        if n == 0 {
            continue;
        }
        sent += n as u64;
        if length.is_some_and(|l| sent > l) {
            // More than the answer said: what it said is all that can go out.
            flush(io, out).await?;
            return Ok(false);
        }
        if chunked {
            push_hex(out, n);
            out.extend_from_slice(b"\r\n");
        }
        if out.len() + n <= GATHER_MAX {
            while data.has_remaining() {
                let chunk = data.chunk();
                out.extend_from_slice(chunk);
                let len = chunk.len();
                data.advance(len);
            }
        } else {
            flush(io, out).await?;
            while data.has_remaining() {
                let chunk = data.chunk();
                io.write_all(chunk).await?;
                let len = chunk.len();
                data.advance(len);
            }
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        if !body.is_end_stream() && out.len() > GATHER_MAX / 2 {
            flush(io, out).await?;
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    flush(io, out).await?;
    Ok(length.is_none_or(|l| sent == l))
}

/// Writes what `out` holds and zeroes it (an answer's head or body may carry a credential an
/// upstream echoed).
async fn flush<I: AsyncWrite + Unpin>(io: &mut I, out: &mut Vec<u8>) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let written = io.write_all(out).await;
    let len = out.len();
    crate::memory::wipe_allocation(out, len);
    out.clear();
    written
}

/// After the last answer on a connection whose client may still be sending a body (it was
/// not read to its end): what comes is read and dropped for a while, up to a bound, until the
/// client closes (as nginx's lingering close). Closed with bytes unread, the connection would
/// be reset, and the client could lose the answer it has not read yet.
async fn linger<I: AsyncRead + Unpin>(io: &mut I) {
    // On the heap: a buffer in this future's state would be in every connection's.
    let mut sink = vec![0u8; 8192];
    let _ = tokio::time::timeout(LINGER_TIME, async {
        let mut left = LINGER_BYTES;
        while left > 0 {
            match tokio::io::AsyncReadExt::read(io, &mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// How reading a streamed body ended.
#[derive(Debug, PartialEq)]
enum Pumped {
    /// Read to its end and sent on.
    Whole,
    /// The upstream side stopped taking it before its end (its answer came, or it failed).
    Unread,
    /// A chunked body that does not parse: the upstream side was told it failed.
    Bad,
    /// The client closed (or its connection failed) before the body's end.
    Closed,
}

/// Reads a streamed body from the client's connection (what `buf` holds of it first) and sends
/// its data on through `tx`, chunk by chunk, as the upstream side takes it (a chunked body's
/// end is an empty chunk). Its end is left at the start of `buf`. The request's body ends in an
/// error wherever this stops short.
async fn pump<I>(
    io: &mut I,
    buf: &mut Vec<u8>,
    framing: Framing,
    tx: tokio::sync::mpsc::Sender<Bytes>,
    expect: bool,
    limits: &Limits,
) -> Pumped
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    if expect && buf.is_empty() && io.write_all(CONTINUE).await.is_err() {
        return Pumped::Closed;
    }
    // The body is read into blocks of its own and its data sent on from there, not copied.
    // A read that fills the room it had may have left more behind: that is read too, without
    // waiting, before what is in goes on (the bytes that came with the head and the rest of a
    // body sent whole go upstream in one write).
    let mut read = bytes::BytesMut::from(&buf[..]);
    let short = match framing {
        Framing::Length(n) => (buf.len() as u64) < n,
        Framing::Chunked => true,
    };
    let (mut more, mut eof) = (!buf.is_empty() && short, false);
    buf.clear();
    let mut decoder = framing.decoder(limits);
    let pumped = loop {
        if more && !eof {
            let room = reserve_stream_read(&mut read);
            match std::future::poll_fn(|cx| {
                Poll::Ready(crate::http1::socket::poll_read_bytes(Pin::new(&mut *io), cx, &mut read))
            })
            .await
            {
                Poll::Ready(Ok(0)) => eof = true,
                Poll::Ready(Ok(n)) => more = n == room,
                Poll::Ready(Err(_)) => break Pumped::Closed,
                Poll::Pending => more = false,
            }
        }
        match decoder.step(&read) {
            Ok(Step::Data(n)) => {
                if tx.send(read.split_to(n).freeze()).await.is_err() {
                    break Pumped::Unread;
                }
            }
            Ok(Step::Skip(n)) => read.advance(n),
            Ok(Step::More) if eof => break Pumped::Closed,
            Ok(Step::More) => {
                let room = reserve_stream_read(&mut read);
                match std::future::poll_fn(|cx| {
                    crate::http1::socket::poll_read_bytes(Pin::new(&mut *io), cx, &mut read)
                })
                .await
                {
                    Ok(0) | Err(_) => break Pumped::Closed,
                    Ok(n) => more = n == room,
                }
            }
            Ok(Step::End(n)) => {
                read.advance(n);
                if framing == Framing::Chunked {
                    let _ = tx.send(Bytes::new()).await;
                }
                break Pumped::Whole;
            }
            Err(why) => {
                tracing::debug!(error = why, "a client's chunked body does not parse");
                break Pumped::Bad;
            }
        }
    };
    // What follows the body (a request sent ahead) is the next request's.
    buf.extend_from_slice(&read);
    pumped
}

/// Makes room in `read` for a read of a streamed body: the room there is. A block with too
/// little room left is followed by a new one (what is in it and not taken yet, a part of a
/// chunk's size line say, is moved there), never grown: chunks sent on still point into it.
fn reserve_stream_read(read: &mut bytes::BytesMut) -> usize {
    if read.capacity() - read.len() < STREAM_ROOM {
        let mut block = bytes::BytesMut::with_capacity(STREAM_READ.max(read.len() + STREAM_ROOM));
        block.extend_from_slice(read);
        *read = block;
    }
    read.capacity() - read.len()
}

/// For the fuzz target `client_requests`: the input's first byte picks the listener's limits
/// (odd: 64 bytes and 4 headers; even: 8 KiB and 100), the rest is everything a client sends
/// before closing its side. The loop serves it with a handler that answers every request, and
/// whatever the bytes, it ends without a panic; a hand-over to hyper carries exactly the bytes
/// after the ones served. The number of requests served.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_requests(data: &[u8]) -> Option<usize> {
    use tokio::io::AsyncReadExt;
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime for the fuzz target");
    }
    let (&first, input) = data.split_first()?;
    let limits = if first & 1 == 1 {
        Limits { head_bytes: 64, headers: 4, ..Limits::REQUEST }
    } else {
        Limits { head_bytes: 8192, ..Limits::REQUEST }
    };
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let (client, mut server) = tokio::io::duplex(64 * 1024);
            let (mut from_server, mut to_server) = tokio::io::split(client);
            let sent = input.to_vec();
            let writer = tokio::spawn(async move {
                let _ = to_server.write_all(&sent).await;
                let _ = to_server.shutdown().await;
            });
            let reader = tokio::spawn(async move {
                let mut answers = Vec::new();
                let _ = from_server.read_to_end(&mut answers).await;
            });
            let served = std::sync::atomic::AtomicUsize::new(0);
            // Where the requests served end in the input, read apart from the loop (see
            // [`framed_length`]); `None` once a request served does not come whole in it.
            let consumed = std::cell::Cell::new(Some(0usize));
            let handler = |req: Request<ProxyBody>| {
                served.fetch_add(1, Ordering::Relaxed);
                if let Some(at) = consumed.get() {
                    let framed = framed_length(&input[at..]);
                    if let Some((_, method, path)) = &framed {
                        assert_eq!(req.method().as_str(), method, "the request served is not the next in the input");
                        assert!(path.starts_with(req.uri().path()), "the request served is not the next in the input");
                    }
                    consumed.set(framed.map(|(len, _, _)| at + len));
                }
                async move {
                    let length = req.body().size_hint().exact();
                    match req.into_body() {
                        // A body read here is all its `Content-Length` says, no more, no less.
                        DataBody::Fields(fields) => {
                            assert_eq!(
                                fields.length().unwrap_or(0),
                                fields.body().len() as u64,
                                "a body read short or long"
                            );
                        }
                        // So is a streamed one that comes whole.
                        DataBody::Streamed(body) => {
                            if let Ok(got) = http_body_util::BodyExt::collect(body).await {
                                let got = got.to_bytes().len() as u64;
                                assert!(
                                    length.is_none_or(|n| n == got),
                                    "a streamed body of {got} bytes for {length:?}"
                                );
                            }
                        }
                        other => panic!("a request served here with {other:?}"),
                    }
                    Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from_static(b"ok"))))
                }
            };
            let closing = AtomicBool::new(false);
            let end = serve(&mut server, Vec::new(), &handler, || (), &closing, limits).await;
            if let Ok(End::HandOver(mut rest)) = end {
                // What hyper would read: the bytes handed over, then those not read yet.
                assert!(!rest.is_empty(), "a hand-over with nothing to hand over");
                let _ = server.read_to_end(&mut rest).await;
                let consumed = consumed.get().expect("a hand-over after a request that did not come whole");
                assert!(
                    rest == input[consumed..],
                    "a hand-over of {} bytes that are not the input after the requests served ({consumed} of {})",
                    rest.len(),
                    input.len()
                );
            }
            drop(server);
            let _ = writer.await;
            let _ = reader.await;
            Some(served.load(Ordering::Relaxed))
        })
    })
}

/// Serves one request whose head (`head`, ending in `Content-Length: N` and the blank line)
/// arrives whole and whose short body of N bytes then arrives one byte per read, over an
/// in-memory stream, answered `204` at once: for the benchmark of a dribbled body
/// (`benches/hot_path.rs`). Returns how many requests were served (1).
#[doc(hidden)]
pub fn serve_dribbled(head: &[u8], body_len: usize) -> usize {
    /// The head in one read, then one byte of the body per read; writes are dropped.
    struct Dribble<'a> {
        head: &'a [u8],
        body: usize,
    }
    impl AsyncRead for Dribble<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if !self.head.is_empty() {
                let n = self.head.len().min(buf.remaining());
                buf.put_slice(&self.head[..n]);
                self.head = &self.head[n..];
            } else if self.body > 0 {
                buf.put_slice(b"x");
                self.body -= 1;
            }
            Poll::Ready(Ok(()))
        }
    }
    impl AsyncWrite for Dribble<'_> {
        fn poll_write(self: Pin<&mut Self>, _: &mut std::task::Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
    let served = std::sync::atomic::AtomicUsize::new(0);
    let handler = |_: Request<ProxyBody>| {
        served.fetch_add(1, Ordering::Relaxed);
        let mut answer = Response::new(http_body_util::Full::new(Bytes::new()));
        *answer.status_mut() = StatusCode::NO_CONTENT;
        std::future::ready(Ok::<_, Infallible>(answer))
    };
    let closing = AtomicBool::new(false);
    let limits = Limits { head_bytes: 1024 * 1024, ..Limits::REQUEST };
    let mut io = Dribble { head, body: body_len };
    let serving = serve(&mut io, Vec::new(), &handler, || (), &closing, limits);
    let _ = futures_util::FutureExt::now_or_never(serving);
    served.load(Ordering::Relaxed)
}

/// The fuzz target's own reading of the request at the start of `input`, apart from the loop's:
/// its length as HTTP/1.1 frames it (the head as `httparse` reads it, then a `Content-Length`
/// body, or a chunked one: size lines to their CRLF, data and CRLF, then trailer lines to an
/// empty one), its method and path. `None` when `input` does not hold it whole.
#[cfg(any(test, feature = "fuzzing"))]
fn framed_length(input: &[u8]) -> Option<(usize, String, String)> {
    let mut headers = [httparse::EMPTY_HEADER; Limits::REQUEST.headers];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = req.parse(input).ok()? else { return None };
    let (method, path) = (req.method?.to_owned(), req.path?.to_owned());
    let field = |name: &str| req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let line_end = |at: usize| input.get(at..)?.windows(2).position(|w| w == b"\r\n").map(|n| at + n);
    let end = if field("transfer-encoding").is_none() {
        let length = match field("content-length") {
            Some(v) => std::str::from_utf8(v).ok()?.parse::<usize>().ok()?,
            None => 0,
        };
        head.checked_add(length)?
    } else {
        let mut at = head;
        loop {
            let end = line_end(at)?;
            let digits = input[at..end].iter().take_while(|b| b.is_ascii_hexdigit()).count();
            let size = usize::from_str_radix(std::str::from_utf8(&input[at..at + digits]).ok()?, 16).ok()?;
            at = end + 2;
            if size == 0 {
                loop {
                    let end = line_end(at)?;
                    let empty = end == at;
                    at = end + 2;
                    if empty {
                        break;
                    }
                }
                break at;
            }
            at = at.checked_add(size)?.checked_add(2)?;
        }
    };
    (end <= input.len()).then_some((end, method, path))
}

#[cfg(test)]
mod tests;
