//! The loop over in-memory streams: the entry points of the fuzz targets `client_requests` and
//! `own_loop_vs_hyper`, and of the benchmark of a dribbled body.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Body;
#[cfg(any(test, feature = "fuzzing"))]
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncRead, AsyncWrite};

use super::serve;
#[cfg(any(test, feature = "fuzzing"))]
use super::End;
#[cfg(any(test, feature = "fuzzing"))]
use crate::body::Body as DataBody;
use crate::http1::Limits;
use crate::upstream::ProxyBody;

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

/// Serves one stream as the proxy listener serves a client's connection (its own HTTP/1.1
/// loop for the common request, hyper's server for the rest), with the default `[limits]`,
/// until the client is done: the whole stack over an in-memory stream, for benchmarks.
#[doc(hidden)]
pub async fn serve_one<I, F, Fut, B>(io: I, handler: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<ProxyBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body + crate::http1::AnswerFields + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_one_as(io, handler, true).await;
}

/// [`serve_one`], or (without `own_loop`) the same with hyper's server for every request: the
/// listener's connection code as it serves a listener without tunnels, with the same builders.
async fn serve_one_as<I, F, Fut, B>(io: I, handler: F, own_loop: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<ProxyBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body + crate::http1::AnswerFields + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use crate::listen::{builders, connection, ConnCtx};
    let limits = crate::config::Limits::default();
    let (h1, h2) = builders(&limits);
    let ctx = std::sync::Arc::new(ConnCtx { h1, h2, limits, what: "proxy", tunnels: own_loop });
    // Never told to stop: the sender lives as long as the connection.
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    connection(io, peer, ctx, stop, handler, own_loop).await;
}

/// What a handler saw of one request, for [`fuzz_own_loop_vs_hyper`].
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Seen {
    method: String,
    target: String,
    /// The header fields by name (sorted), each name's values in order; those of the hop
    /// (RFC 9110, section 7.6.1) and an `Expect: 100-continue` left out (see below).
    fields: Vec<(String, Vec<Vec<u8>>)>,
    /// The whole body, or `None` where it failed before its end.
    body: Option<Vec<u8>>,
}

/// Serves `input` (all a client sends before it closes its side) on one connection as
/// [`serve_one_as`] does, with a handler that records each request whole and answers `200`:
/// what it saw, in order.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) async fn serve_recorded(input: &[u8], own_loop: bool) -> Vec<Seen> {
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncReadExt;
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    let handler = move |req: Request<ProxyBody>| {
        let record = record.clone();
        async move {
            let (parts, body) = DataBody::fields_to_header_map(req, true).into_parts();
            let mut fields = std::collections::BTreeMap::<String, Vec<Vec<u8>>>::new();
            for (name, value) in parts.headers.iter() {
                // The own loop keeps the hop's fields out of those it passes on (the handler
                // leaves them out of hyper's), and answers `100-continue` itself (hyper when
                // the body is read): neither reaches an upstream either way.
                let continues = name == http::header::EXPECT && value.as_bytes().eq_ignore_ascii_case(b"100-continue");
                if !continues && !crate::headers::is_hop_by_hop_name(name.as_str().as_bytes()) {
                    fields.entry(name.as_str().to_owned()).or_default().push(value.as_bytes().to_vec());
                }
            }
            let at = {
                let mut seen = record.lock().expect("the record");
                let (method, target) = (parts.method.to_string(), parts.uri.to_string());
                seen.push(Seen { method, target, fields: fields.into_iter().collect(), body: None });
                seen.len() - 1
            };
            let body = body.collect().await.ok().map(|b| b.to_bytes().to_vec());
            record.lock().expect("the record")[at].body = body;
            Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from_static(b"ok"))))
        }
    };
    // The clock stands still while anything can run, and goes on to the next timer when
    // nothing can: the client closes its side once the server has done all it can with what
    // was sent (a client that closes at once would see hyper drop the requests under way, as
    // it does at a half-close), and no wait depends on how busy the machine is.
    tokio::time::pause();
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let sent = input.to_vec();
    let writer = tokio::spawn(async move {
        let _ = to_server.write_all(&sent).await;
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        let _ = to_server.shutdown().await;
    });
    let reader = tokio::spawn(async move {
        let mut answers = Vec::new();
        let _ = from_server.read_to_end(&mut answers).await;
    });
    let served = tokio::time::timeout(std::time::Duration::from_secs(600), serve_one_as(server, handler, own_loop));
    served.await.expect("a connection whose client closed its side ends");
    let _ = writer.await;
    let _ = reader.await;
    tokio::time::resume();
    let seen = std::mem::take(&mut *seen.lock().expect("the record"));
    seen
}

/// For the fuzz target `own_loop_vs_hyper`: `data` is everything a client sends on one
/// connection before closing its side. It is served twice, as the proxy listener serves it
/// (the own loop, then hyper's server from its hand-over on) and by hyper's server alone,
/// each with a handler that records every request whole (see [`Seen`]); panics where the two
/// disagree on which requests are served, on any of their heads, or on where and how each body
/// ends, but for the known differences [`compare`] names. The number of requests served.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_own_loop_vs_hyper(data: &[u8]) -> usize {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime for the fuzz target");
    }
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let own = serve_recorded(data, true).await;
            let hyper = serve_recorded(data, false).await;
            compare(data, &own, &hyper);
            own.len()
        })
    })
}

/// Panics where the own loop's record and hyper's disagree, but for these known differences,
/// each by design:
/// 1. A short body (up to [`super::BODY_MAX`]) is read whole before the own loop hands its
///    request on, as nginx buffers one; hyper hands the request on at once and its body fails
///    when the client closes first. Where the input ends within such a body, the last request
///    hyper saw (its body failed) is not seen by the own loop at all.
/// 2. Chunked bodies are read within stricter bounds than hyper's ([`Limits::REQUEST`]: a
///    chunk-size line of at most 1 KiB, trailer fields of at most 8 KiB; and `httparse`'s chunk
///    size of at most 16 hex digits, where hyper takes any number of leading zeros). Where the
///    input holds such a line, a body hyper read whole may fail in the own loop, which then
///    closes the connection (hyper goes on).
/// 3. A line of a chunked body (a size line or a trailer field) ended by a bare LF: hyper takes
///    it, the own loop refuses the body. RFC 9112 lets a recipient take a bare LF as a line end
///    but does not require it, and parsers that differ on it are how requests are smuggled past
///    one another; the stricter reading is kept.
#[cfg(any(test, feature = "fuzzing"))]
fn compare(input: &[u8], own: &[Seen], hyper: &[Seen]) {
    let bare_lf = || input.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r');
    let past_bounds = || {
        let limits = Limits::REQUEST;
        input.len() > limits.trailer_bytes
            || input.split(|&b| b == b'\n').any(|line| {
                line.len() >= limits.chunk_line || line.iter().take_while(|b| b.is_ascii_hexdigit()).count() > 16
            })
    };
    for (i, theirs) in hyper.iter().enumerate() {
        let Some(ours) = own.get(i) else {
            // Known difference 1.
            if i == own.len() && i + 1 == hyper.len() && theirs.body.is_none() {
                return;
            }
            panic!("hyper served request {i} and the own loop did not: {theirs:?}\nown loop: {own:?}");
        };
        if ours == theirs {
            continue;
        }
        let same_head = (&ours.method, &ours.target, &ours.fields) == (&theirs.method, &theirs.target, &theirs.fields);
        // Known difference 2.
        if same_head && ours.body.is_none() && theirs.body.is_some() && i + 1 == own.len() && past_bounds() {
            return;
        }
        // Known difference 3.
        if same_head && ours.body.is_none() && theirs.body.is_some() && i + 1 == own.len() && bare_lf() {
            return;
        }
        panic!("request {i} differs:\nown loop: {ours:?}\nhyper:    {theirs:?}");
    }
    assert!(own.len() <= hyper.len(), "the own loop served requests hyper did not: {own:?}\nhyper: {hyper:?}");
}
