//! The one body type of the data path, for requests and answers alike: what a listener read of
//! a client's request, what goes upstream, what comes back, and the small answers of our own.
//!
//! It is generic over `A`, the upstream client's HTTP/1.1 answer body, so that this module
//! stands below the client that produces it ([`crate::upstream::ProxyBody`] names the one
//! instance the data path uses).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use hyper::body::{Frame, Incoming, SizeHint};

use crate::http1::{AnswerFields, Fields};

/// A body on the data path.
#[derive(Debug)]
pub enum Body<A> {
    /// Read by hyper: a client's request on its server, or an upstream's answer over HTTP/2.
    Incoming(Incoming),
    /// An upstream's answer over HTTP/1.1, read by sidekey's own client.
    Answer(A),
    /// No body.
    Empty,
    /// A body in memory: one read whole with its head, or one of ours. Sent with the head.
    Full(Bytes),
    /// A request read by the proxy listener's own loop: its header fields as they came (its
    /// header map is empty; see [`Body::fields_to_header_map`]) and its body, read whole, after
    /// them ([`Fields::body`]; its `Content-Length` is among the fields).
    Fields(Fields),
    /// A body streamed upstream as it arrives, the own loop's or hyper's (its header fields
    /// are in the header map).
    Streamed(crate::upload::Upload),
}

impl<A> Body<A> {
    /// A small body of ours.
    pub fn full(bytes: impl Into<Bytes>) -> Body<A> {
        Body::Full(bytes.into())
    }

    /// `req` with the header fields the own loop kept as they came moved into its header map,
    /// for a way that reads them there; with `host`, their `Host` too (the upstream client
    /// gives the authority itself).
    pub fn fields_to_header_map(req: Request<Body<A>>, host: bool) -> Request<Body<A>> {
        if !matches!(req.body(), Body::Fields(_)) {
            return req;
        }
        let (mut parts, body) = req.into_parts();
        let Body::Fields(mut fields) = body else { unreachable!("fields, looked at above") };
        if host {
            fields.append_to(&mut parts.headers);
        } else {
            fields.append_block_to(&mut parts.headers);
        }
        let body = fields.take_body();
        Request::from_parts(parts, if body.is_empty() { Body::Empty } else { Body::Full(body) })
    }
}

/// An answer's fields as they came, where the upstream client kept them.
impl<A: AnswerFields> AnswerFields for Body<A> {
    fn take_fields(&mut self) -> Option<Fields> {
        match self {
            Body::Answer(a) => a.take_fields(),
            _ => None,
        }
    }
}

impl<A> hyper::body::Body for Body<A>
where
    A: hyper::body::Body<Data = Bytes> + Unpin,
    A::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Body::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Body::Answer(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Body::Streamed(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Body::Full(b) if !b.is_empty() => Poll::Ready(Some(Ok(Frame::data(std::mem::take(b))))),
            Body::Fields(f) if !f.body().is_empty() => Poll::Ready(Some(Ok(Frame::data(f.take_body())))),
            Body::Empty | Body::Full(_) | Body::Fields(_) => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Incoming(b) => b.is_end_stream(),
            Body::Answer(b) => b.is_end_stream(),
            Body::Streamed(b) => b.is_end_stream(),
            Body::Full(b) => b.is_empty(),
            Body::Fields(f) => f.body().is_empty(),
            Body::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Incoming(b) => b.size_hint(),
            Body::Answer(b) => b.size_hint(),
            Body::Streamed(b) => b.size_hint(),
            Body::Full(b) => SizeHint::with_exact(b.len() as u64),
            Body::Fields(f) => SizeHint::with_exact(f.body().len() as u64),
            Body::Empty => SizeHint::with_exact(0),
        }
    }
}

pub use crate::upload::Streamed;
