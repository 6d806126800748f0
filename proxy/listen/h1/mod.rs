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

use bytes::Bytes;
use http::header::EXPECT;
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::body::{Body as DataBody, Streamed};
use crate::http1::chunked::Decoder;
use crate::http1::{AnswerFields, Limits};
use crate::upstream::ProxyBody;

/// Reads take at least this much room: a connection's block for request heads starts at this
/// size (or its first head's) and grows while a head does not fit. Small, as nginx's
/// `client_header_buffer_size` is: a busy connection keeps it between requests, and a larger
/// one costs memory on every connection.
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
    /// Where a body so framed ends.
    pub(crate) fn decoder(self) -> Decoder {
        match self {
            Framing::Length(n) => Decoder::length(n),
            Framing::Chunked => Decoder::chunked(),
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
    // The most `buf` has held since it was last wiped (see `listen::idle`).
    let mut dirty = 0;
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
                if buf.is_empty() {
                    // Between requests: no buffer is held while none comes (see `listen::idle`).
                    return super::idle::poll_read_next(
                        Pin::new(&mut *io),
                        cx,
                        &mut buf,
                        &mut out,
                        &mut dirty,
                        READ_ROOM,
                        room,
                    )
                    .map(Some);
                }
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
        // Between one clearing and the next, `buf` only grows.
        dirty = dirty.max(buf.len());
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
        super::idle::refill(&mut out);
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

mod body;
mod fuzz;
mod write;

use body::{linger, pump, Pumped};
#[cfg(any(test, feature = "fuzzing"))]
pub use fuzz::{fuzz_own_loop_vs_hyper, fuzz_requests};
pub use fuzz::{serve_dribbled, serve_one};
use write::write_response;

#[cfg(test)]
mod tests;
