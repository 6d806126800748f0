//! The proxy listener's own HTTP/1.1 loop for the common request: in origin form, over
//! HTTP/1.1, with no body or a short one of a stated length (a JSON document an API client
//! posts, say: up to [`BODY_MAX`], read whole before the request goes on, as nginx buffers
//! request bodies). It reads the head with `httparse`, hands the request to the proxy, and
//! writes the answer's head and body to the socket itself.
//!
//! Anything else hands the connection, with every byte read of it and not yet served, to
//! hyper's server for the rest of its life: a chunked or longer body, an `Expect`, CONNECT, an
//! upgrade, HTTP/1.0, a target in another form, a `Connection` header that names more than
//! `close` or `keep-alive`, a head that does not parse or is over the listener's limits. hyper
//! then serves that request (or refuses it, as it would have from the start) and every one
//! after it. Nothing about such a request is decided here.
//!
//! hyper's server took about half of sidekey's own instructions per request (its dispatcher,
//! read and write buffers, a header map built for a head it then encodes again); see the
//! README's Performance section for what this loop saves.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use bytes::{Buf, Bytes};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::conn::Inbound;
use crate::h1::{itoa, push_hex, AnswerFields};

/// Reads take at least this much room.
const READ_ROOM: usize = 4096;
/// Headers parsed in place; more goes to hyper (whose default limit this is).
const MAX_HEADERS: usize = 100;
/// A body chunk up to this size goes out in one write with what precedes it (the head, a
/// chunk's size line), copied into the connection's write buffer; a larger one is written
/// from where it is.
const GATHER_MAX: usize = 16 * 1024;
/// Longest request body read here (by its `Content-Length`); a longer one goes to hyper.
pub(crate) const BODY_MAX: usize = 16 * 1024;

/// How the loop ended.
#[derive(Debug, PartialEq)]
pub(crate) enum End {
    /// The connection is done: the client closed it or asked to, an answer could not be sent
    /// whole, or the listener is closing.
    Closed,
    /// A request for hyper: the bytes read and not served, from its first.
    HandOver(Vec<u8>),
}

/// What the connection's limits allow of a head.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadLimits {
    pub max_bytes: usize,
    pub max_headers: usize,
}

/// A request head read whole and served here.
#[derive(Debug)]
pub(crate) struct Head {
    pub request: Request<Inbound>,
    /// Its length in the read buffer.
    pub len: usize,
    /// The length of the body that follows it (its `Content-Length`, at most [`BODY_MAX`]).
    pub body: usize,
    /// The client said `Connection: close`.
    pub close: bool,
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
pub(crate) fn parse(buf: &[u8], limits: HeadLimits) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= limits.max_bytes => len,
        Ok(httparse::Status::Partial) if buf.len() < limits.max_bytes => return Parsed::Partial,
        _ => return Parsed::HandOver,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else { return Parsed::HandOver };
    if !path.starts_with('/') || req.headers.len() > limits.max_headers {
        return Parsed::HandOver;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parsed::HandOver };
    if method == Method::CONNECT {
        return Parsed::HandOver;
    }
    let (mut close, mut length) = (false, None);
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let stays = if name.eq_ignore_ascii_case(b"content-length") {
            // One, in digits, and short; any other (a list, a sign, two fields) is hyper's to
            // judge.
            let n = (length.is_none() && (1..=5).contains(&h.value.len()) && h.value.iter().all(u8::is_ascii_digit))
                .then(|| h.value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
                .filter(|&n| n <= BODY_MAX as u64);
            length = n;
            n.is_some()
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= h.value.eq_ignore_ascii_case(b"close");
            close || h.value.eq_ignore_ascii_case(b"keep-alive")
        } else {
            !(name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"expect")
                || name.eq_ignore_ascii_case(b"upgrade"))
        };
        if !stays {
            return Parsed::HandOver;
        }
    }
    // The path in a block of its own, which the URI points into; the header fields in another
    // (the read buffer is reused for the next request).
    let Ok(uri) = Uri::from_maybe_shared(Bytes::copy_from_slice(path.as_bytes())) else { return Parsed::HandOver };
    let Some(fields) = crate::h1::Fields::request(buf, req.headers, length) else { return Parsed::HandOver };
    let mut request = Request::new(Inbound::Fields(fields));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    Parsed::Request(Head { request, len, body: length.unwrap_or(0) as usize, close })
}

/// Serves requests on `io`, the first starting at `read` (what was read of it already), until
/// the connection is done or a request is for hyper. `begin`
/// is called as each request starts; what it returns is dropped once its answer is sent.
/// `closing` (the listener's graceful shutdown): no new request is read once it is set (a
/// request whose head is in and whose body is on its way is read to its end), and the answer
/// under way says `Connection: close`.
pub(crate) async fn serve<I, F, Fut, B, G>(
    io: &mut I,
    read: Vec<u8>,
    handler: &F,
    begin: impl Fn() -> G,
    closing: &AtomicBool,
    limits: HeadLimits,
) -> io::Result<End>
where
    I: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Request<Inbound>) -> Fut,
    Fut: Future<Output = Result<Response<B>, Infallible>>,
    B: Body + AnswerFields,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut buf = read;
    let mut out: Vec<u8> = Vec::new();
    loop {
        // How much the request read so far needs: its head and body (the head's limit until
        // the head is read).
        let (mut need, mut body_due) = (limits.max_bytes, false);
        let mut head = loop {
            if !buf.is_empty() {
                match parse(&buf, limits) {
                    Parsed::Request(head) if buf.len() >= head.len + head.body => break head,
                    // Its body is on its way: the request is under way, closing or not.
                    Parsed::Request(head) => (need, body_due) = (need.max(head.len + head.body), true),
                    Parsed::HandOver => return Ok(End::HandOver(buf)),
                    Parsed::Partial => {}
                }
            }
            let read = std::future::poll_fn(|cx| {
                if closing.load(Ordering::Relaxed) && !body_due {
                    return Poll::Ready(None);
                }
                let room = need.saturating_sub(buf.len());
                crate::memory::poll_read_spare(Pin::new(&mut *io), cx, &mut buf, READ_ROOM, room).map(Some)
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
            if let Inbound::Fields(fields) = head.request.body_mut() {
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
        let response = {
            let mut answer = pin!(handler(head.request));
            let max = limits.max_bytes;
            std::future::poll_fn(|cx| {
                if let Poll::Ready(Ok(response)) = answer.as_mut().poll(cx) {
                    return Poll::Ready(Some(response));
                }
                // Meanwhile, notice a client that goes away (as hyper does): its request is
                // dropped. What a client sends ahead (pipelined) is kept for after.
                while buf.len() < max {
                    let room = max.saturating_sub(buf.len());
                    match crate::memory::poll_read_spare(Pin::new(&mut *io), cx, &mut buf, READ_ROOM, room) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                        Poll::Ready(Ok(_)) => {}
                        Poll::Pending => break,
                    }
                }
                Poll::Pending
            })
            .await
        };
        let Some(response) = response else { return Ok(End::Closed) };
        let close = head.close || closing.load(Ordering::Relaxed);
        let whole = write_response(io, &mut out, response, head_request, close).await;
        drop(in_flight);
        match whole {
            Ok(true) if !close => {}
            Ok(_) => {
                let _ = io.shutdown().await;
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
            match crate::h1::content_length(items, None).ok().flatten() {
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
        HeadLimits { max_bytes: 64, max_headers: 4 }
    } else {
        HeadLimits { max_bytes: 8192, max_headers: MAX_HEADERS }
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
            let handler = |req: Request<Inbound>| {
                served.fetch_add(1, Ordering::Relaxed);
                // A body read here is all its `Content-Length` says, no more, no less.
                let Inbound::Fields(fields) = req.body() else { panic!("a request served here without its fields") };
                assert_eq!(fields.length().unwrap_or(0), fields.body().len() as u64, "a body read short or long");
                std::future::ready(Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from_static(
                    b"ok",
                )))))
            };
            let closing = AtomicBool::new(false);
            let end = serve(&mut server, Vec::new(), &handler, || (), &closing, limits).await;
            if let Ok(End::HandOver(mut rest)) = end {
                // What hyper would read: the bytes handed over, then those not read yet.
                assert!(!rest.is_empty(), "a hand-over with nothing to hand over");
                let _ = server.read_to_end(&mut rest).await;
                assert!(input.ends_with(&rest), "a hand-over that is not the input after the requests served");
            }
            drop(server);
            let _ = writer.await;
            let _ = reader.await;
            Some(served.load(Ordering::Relaxed))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::Frame;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    const LIMITS: HeadLimits = HeadLimits { max_bytes: 8192, max_headers: 100 };

    type TestBody = http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

    impl AnswerFields for TestBody {}
    type Answer = Pin<Box<dyn Future<Output = Result<Response<TestBody>, Infallible>> + Send>>;

    fn served(buf: &[u8]) -> Head {
        match parse(buf, LIMITS) {
            Parsed::Request(head) => head,
            other => panic!("not served here: {other:?} for {:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn the_common_request_is_read_here_and_every_other_goes_to_hyper() {
        let head =
            served(b"GET /a/b?c=d HTTP/1.1\r\nHost: example\r\nAccept: */*\r\nX-Two: 1\r\nx-two: 2\r\n\r\nGET /next");
        assert_eq!(
            head.len,
            b"GET /a/b?c=d HTTP/1.1\r\nHost: example\r\nAccept: */*\r\nX-Two: 1\r\nx-two: 2\r\n\r\n".len()
        );
        assert!(!head.close);
        let req = head.request;
        assert_eq!((req.method(), req.version()), (&Method::GET, Version::HTTP_11));
        assert_eq!(req.uri().path_and_query().unwrap().as_str(), "/a/b?c=d");
        // The fields as they came, `Host` apart; no header map.
        assert!(req.headers().is_empty());
        let Inbound::Fields(fields) = req.body() else { panic!("no fields: {:?}", req.body()) };
        assert_eq!(fields.host(), Some(&b"example"[..]));
        assert_eq!(fields.block(), b"Accept: */*\r\nX-Two: 1\r\nx-two: 2\r\n");
        assert!(req.body().is_end_stream());

        assert!(served(b"DELETE /x HTTP/1.1\r\nConnection: close\r\n\r\n").close);
        // The hop's own fields are left out; a `Content-Length: 0` stays (and frames the request).
        let head = served(b"GET /x HTTP/1.1\r\nConnection: Keep-Alive\r\nKeep-Alive: 5\r\nContent-Length: 0\r\n\r\n");
        let Inbound::Fields(fields) = head.request.body() else { panic!("no fields") };
        assert_eq!((fields.block(), fields.host(), fields.length()), (&b"Content-Length: 0\r\n"[..], None, Some(0)));

        // A short body of a stated length: read here (the loop waits for all of it).
        let head = served(b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel");
        assert_eq!((head.body, head.len), (5, b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n".len()));
        let most = format!("PUT /x HTTP/1.1\r\nContent-Length: {BODY_MAX}\r\n\r\n");
        assert_eq!(served(most.as_bytes()).body, BODY_MAX);

        let over = format!("POST /x HTTP/1.1\r\nContent-Length: {}\r\n\r\n", BODY_MAX + 1);
        for other in [
            over.as_bytes(),
            b"POST /x HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello",
            b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            b"POST /x HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello",
            b"POST /x HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
            b"POST /x HTTP/1.1\r\nContent-Length: 000005\r\n\r\nhello",
            b"POST /x HTTP/1.1\r\nContent-Length: \r\n\r\n",
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET /x HTTP/1.1\r\nConnection: keep-alive, x-secret\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"CONNECT example:443 HTTP/1.1\r\nHost: example:443\r\n\r\n",
            b"GET http://example/x HTTP/1.1\r\nHost: example\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: example\r\n\r\n",
            b"GET /x HTTP/1.0\r\n\r\n",
            b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",
            b"G\x01T /x HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(
                matches!(parse(other, LIMITS), Parsed::HandOver),
                "served here: {:?}",
                String::from_utf8_lossy(other)
            );
        }
        // The listener's limits: hyper refuses what is over them.
        let tight = HeadLimits { max_bytes: 64, max_headers: 2 };
        assert!(matches!(parse(b"GET /x HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", tight), Parsed::HandOver));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "x".repeat(64));
        assert!(matches!(parse(long.as_bytes(), tight), Parsed::HandOver));
        assert!(matches!(parse(b"GET /x HTTP/1.1\r\nHost: exa", LIMITS), Parsed::Partial));
        assert!(
            matches!(parse(&long.as_bytes()[..64], tight), Parsed::HandOver),
            "a head over the limit waits forever"
        );
    }

    fn body(chunks: &[&'static str]) -> TestBody {
        let frames: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> =
            chunks.iter().map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes())))).collect();
        StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    /// Answers by path; counts the answers it started.
    fn handler(started: Arc<AtomicUsize>) -> impl Fn(Request<Inbound>) -> Answer {
        move |req: Request<Inbound>| {
            started.fetch_add(1, Ordering::SeqCst);
            let mut response = Response::new(match req.uri().path() {
                "/full" => Full::new(Bytes::from_static(b"hello")).map_err(|e| match e {}).boxed(),
                "/stream" | "/head" => body(&["hello", " world"]),
                "/length" | "/long" | "/nocontent" => body(&["abc"]),
                "/short" => body(&["a"]),
                "/fail" => StreamBody::new(futures_util::stream::iter([
                    Ok(Frame::data(Bytes::from_static(b"part"))),
                    Err::<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>("upstream went away".into()),
                ]))
                .boxed(),
                "/pending" => return Box::pin(std::future::pending()) as Answer,
                // The body it got, whole, beside its fields as they came.
                "/echo" => {
                    let Inbound::Fields(fields) = req.body() else { panic!("no fields: {:?}", req.body()) };
                    let got = fields.body();
                    assert_eq!(fields.length(), Some(got.len() as u64), "its Content-Length is among its fields");
                    assert!(fields.block().ends_with(b"\r\n"), "the body is kept apart from the lines");
                    Full::new(Bytes::copy_from_slice(got)).map_err(|e| match e {}).boxed()
                }
                _ => Full::new(Bytes::new()).map_err(|e| match e {}).boxed(),
            });
            let headers = response.headers_mut();
            headers.insert(DATE, HeaderValue::from_static("Sun, 29 Nov 2026 00:00:00 GMT"));
            match req.uri().path() {
                "/length" => {
                    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("3"));
                    // Framing is the loop's own: a handler's is not copied.
                    headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
                    headers.insert(CONNECTION, HeaderValue::from_static("x-hop"));
                }
                "/long" | "/short" => {
                    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("2"));
                }
                "/nocontent" => *response.status_mut() = StatusCode::NO_CONTENT,
                "/head" => {
                    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("11"));
                }
                _ => {}
            }
            Box::pin(std::future::ready(Ok(response)))
        }
    }

    /// Sends `requests` (then closes its side when `close`), runs the loop, and returns what
    /// it ended with and everything the client received.
    async fn exchange(requests: &[u8], close: bool) -> (io::Result<End>, String, usize) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(requests).await.unwrap();
        if close {
            client.shutdown().await.unwrap();
        }
        let started = Arc::new(AtomicUsize::new(0));
        let closing = AtomicBool::new(false);
        let end = tokio::time::timeout(
            Duration::from_secs(10),
            serve(&mut server, Vec::new(), &handler(started.clone()), || (), &closing, LIMITS),
        )
        .await
        .expect("the loop ends");
        drop(server);
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        (end, String::from_utf8(received).unwrap(), started.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn answers_are_framed_by_their_length_or_chunked_and_pipelined_requests_answered_in_order() {
        let (end, got, n) = exchange(
            b"GET /full HTTP/1.1\r\n\r\nGET /stream HTTP/1.1\r\n\r\nGET /length HTTP/1.1\r\n\r\n\
              HEAD /head HTTP/1.1\r\n\r\nGET /nocontent HTTP/1.1\r\n\r\nGET /empty HTTP/1.1\r\nConnection: close\r\n\r\n",
            false,
        )
        .await;
        assert_eq!(end.unwrap(), End::Closed);
        assert_eq!(n, 6);
        let date = "date: Sun, 29 Nov 2026 00:00:00 GMT\r\n";
        let expected = [
            format!("HTTP/1.1 200 OK\r\n{date}content-length: 5\r\n\r\nhello"),
            format!(
                "HTTP/1.1 200 OK\r\n{date}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            ),
            format!("HTTP/1.1 200 OK\r\n{date}content-length: 3\r\n\r\nabc"),
            format!("HTTP/1.1 200 OK\r\n{date}content-length: 11\r\n\r\n"),
            format!("HTTP/1.1 204 No Content\r\n{date}\r\n"),
            format!("HTTP/1.1 200 OK\r\n{date}content-length: 0\r\nconnection: close\r\n\r\n"),
        ]
        .concat();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_request_for_hyper_is_handed_over_with_every_byte_after_what_was_served() {
        let post = b"POST /upload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        let mut sent = b"GET /full HTTP/1.1\r\n\r\n".to_vec();
        sent.extend_from_slice(post);
        let (end, got, n) = exchange(&sent, false).await;
        assert_eq!(end.unwrap(), End::HandOver(post.to_vec()));
        assert_eq!(n, 1);
        assert!(got.ends_with("\r\n\r\nhello"), "{got}");
    }

    #[tokio::test]
    async fn a_short_body_is_read_whole_with_its_request_and_the_next_request_after_it() {
        // The body in the same read as its head, split from it, and the next request right
        // after the body's last byte (pipelined): each is served here, in order.
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let started = Arc::new(AtomicUsize::new(0));
        let closing = AtomicBool::new(false);
        let h = handler(started.clone());
        let serving = serve(&mut server, Vec::new(), &h, || (), &closing, LIMITS);
        let client_side = async {
            client.write_all(b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").await.unwrap();
            client.write_all(b"PUT /echo HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello").await.unwrap();
            // The loop has the head and half the body; it waits for the rest.
            let mut first = vec![0; b"HTTP/1.1 200 OK\r\n".len()];
            client.read_exact(&mut first).await.unwrap();
            client.write_all(b" worldGET /full HTTP/1.1\r\nConnection: close\r\n\r\n").await.unwrap();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            String::from_utf8([first, rest].concat()).unwrap()
        };
        let (end, got) =
            tokio::time::timeout(Duration::from_secs(10), futures_util::future::join(serving, client_side))
                .await
                .expect("the loop ends");
        assert_eq!(end.unwrap(), End::Closed);
        assert_eq!(started.load(Ordering::SeqCst), 3, "{got}");
        let date = "date: Sun, 29 Nov 2026 00:00:00 GMT\r\n";
        let expected = [
            format!("HTTP/1.1 200 OK\r\n{date}content-length: 5\r\n\r\nhello"),
            format!("HTTP/1.1 200 OK\r\n{date}content-length: 11\r\n\r\nhello world"),
            format!("HTTP/1.1 200 OK\r\n{date}content-length: 5\r\nconnection: close\r\n\r\nhello"),
        ]
        .concat();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn an_answer_that_fails_or_breaks_its_length_costs_the_connection() {
        // Failed after a chunk; longer than its length (nothing of it goes out); shorter.
        for (path, sent) in [("/fail", "4\r\npart\r\n"), ("/long", ""), ("/short", "a")] {
            let req = format!("GET {path} HTTP/1.1\r\n\r\nGET /full HTTP/1.1\r\n\r\n");
            let (end, got, n) = exchange(req.as_bytes(), false).await;
            assert_eq!(end.unwrap(), End::Closed, "{path}");
            assert_eq!(n, 1, "{path}: the connection carried another request");
            assert!(got.ends_with(&format!("\r\n\r\n{sent}")), "{path}: {got}");
            assert!(!got.contains("hello"), "{path}: {got}");
        }
    }

    #[test]
    fn the_fuzz_entry_serves_what_a_client_sends() {
        assert_eq!(fuzz_requests(b"\0GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"), Some(2));
        assert_eq!(fuzz_requests(b"\0GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"), Some(2));
        assert_eq!(
            fuzz_requests(b"\0GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            Some(1)
        );
        // A body cut short by the client's close: not served.
        assert_eq!(fuzz_requests(b"\0POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nxy"), Some(0));
        assert_eq!(
            fuzz_requests(b"\x01GET /a-path-longer-than-sixty-four-bytes-for-the-tight-limits/xxxx HTTP/1.1\r\n\r\n"),
            Some(0)
        );
        assert_eq!(fuzz_requests(b"\0GET /a HTTP/1.1\r\nHost: x"), Some(0));
        assert_eq!(fuzz_requests(b""), None);
    }

    #[tokio::test]
    async fn a_client_that_goes_away_drops_its_request() {
        let (end, got, n) = exchange(b"GET /pending HTTP/1.1\r\n\r\n", true).await;
        assert_eq!(end.unwrap(), End::Closed);
        assert_eq!((n, got.as_str()), (1, ""));
    }

    #[tokio::test]
    async fn closing_ends_an_idle_connection_and_says_so_on_the_answer_under_way() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let closing = Arc::new(AtomicBool::new(false));
        let flag = closing.clone();
        let started = Arc::new(AtomicUsize::new(0));
        let h = handler(started.clone());
        let served = tokio::spawn(async move {
            // The request starts the shutdown: its answer is the connection's last.
            let begin = || flag.store(true, Ordering::SeqCst);
            serve(&mut server, Vec::new(), &h, begin, &flag, LIMITS).await
        });
        client.write_all(b"GET /full HTTP/1.1\r\n\r\n").await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(10), served).await.expect("the loop ends").unwrap();
        assert_eq!(end.unwrap(), End::Closed);
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        assert!(got.contains("connection: close\r\n") && got.ends_with("hello"), "{got}");
        assert!(closing.load(Ordering::SeqCst));

        // Idle and closing: no request is waited for.
        let (_client, mut server) = tokio::io::duplex(1024);
        let closing = AtomicBool::new(true);
        let h = handler(Arc::default());
        let end =
            tokio::time::timeout(Duration::from_secs(10), serve(&mut server, Vec::new(), &h, || (), &closing, LIMITS))
                .await
                .expect("an idle connection closes at once");
        assert_eq!(end.unwrap(), End::Closed);

        // Closing while a request's body is on its way: the request is served, and is the last.
        let (mut client, mut server) = tokio::io::duplex(1024);
        let closing = AtomicBool::new(true);
        let h = handler(Arc::default());
        let head = b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhe".to_vec();
        let serving = serve(&mut server, head, &h, || (), &closing, LIMITS);
        let client_side = async {
            client.write_all(b"llo").await.unwrap();
            let mut got = String::new();
            client.read_to_string(&mut got).await.unwrap();
            got
        };
        let (end, got) =
            tokio::time::timeout(Duration::from_secs(10), futures_util::future::join(serving, client_side))
                .await
                .expect("the loop ends");
        assert_eq!(end.unwrap(), End::Closed);
        assert!(got.contains("connection: close\r\n") && got.ends_with("hello"), "{got}");
    }
}
