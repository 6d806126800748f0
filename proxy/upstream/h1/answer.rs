//! An answer's body, read from its upstream connection as it is polled.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

use super::{invalid, Conn, BODY_CHUNK};
use crate::http1::answer::Framing;
use crate::http1::chunked::{Decoder, Step};
use crate::http1::{AnswerFields, Fields, Limits};

/// Where an answer's body is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum State {
    /// Framed by its length or chunked: read to where the decoder says it ends.
    Framed(Decoder),
    /// Read to the end of the stream.
    Close,
    Done,
}

/// The body of an answer, read from its connection as it is polled; the connection goes back
/// into its pool when the last of it has been read (or is closed, when it cannot be used
/// again or the body is dropped before its end).
pub struct Body {
    pub(super) conn: Option<Box<Conn>>,
    pub(super) framing: Framing,
    pub(super) state: State,
    pub(super) reusable: bool,
    pub(super) pool: Option<Arc<crate::upstream::Pool>>,
    /// The answer's header fields, while they wait here (see [`Fields`]).
    pub(super) fields: Option<Fields>,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body").field("framing", &self.framing).field("state", &self.state).finish()
    }
}

impl Body {
    /// The body is read: the connection goes back into the pool when it can be used again.
    fn finish(&mut self) {
        self.state = State::Done;
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.take()) {
            if self.reusable && conn.buf.is_empty() {
                pool.put_back(conn);
            }
        }
    }

    /// Up to `limit` bytes of data: what is buffered, else one read.
    fn poll_data(&mut self, cx: &mut Context<'_>, limit: u64) -> Poll<io::Result<Bytes>> {
        let conn = self.conn.as_mut().expect("a body being read has its connection");
        if !conn.buf.is_empty() {
            let n = (conn.buf.len() as u64).min(limit) as usize;
            let data = Bytes::copy_from_slice(&conn.buf[..n]);
            conn.buf.drain(..n);
            return Poll::Ready(Ok(data));
        }
        // A chunk of its own, at most what the body has left (so that no read takes bytes of
        // the next answer), handed on without a copy.
        let want = limit.min(BODY_CHUNK as u64) as usize;
        let mut chunk = Vec::with_capacity(want);
        ready!(crate::http1::socket::poll_read_spare(Pin::new(&mut conn.io), cx, &mut chunk, want, want))?;
        Poll::Ready(Ok(Bytes::from(chunk)))
    }

    /// The next data of a body framed by its length or chunked, as `decoder` reads it: data
    /// already buffered is copied out; else, within a chunk, a read of its own is handed on.
    fn poll_framed(&mut self, cx: &mut Context<'_>, mut decoder: Decoder) -> Poll<Option<io::Result<Bytes>>> {
        let result = loop {
            // Kept where a return below leaves it.
            self.state = State::Framed(decoder);
            let conn = self.conn.as_mut().expect("a body being read has its connection");
            if let Some(left) = decoder.data_left().filter(|&n| n > 0 && conn.buf.is_empty()) {
                break match ready!(self.poll_data(cx, left)) {
                    Ok(data) if data.is_empty() => Some(Err(closed_early())),
                    Ok(data) => {
                        decoder.took(data.len() as u64);
                        Some(Ok(data))
                    }
                    Err(e) => Some(Err(e)),
                };
            }
            match decoder.step(&conn.buf, &Limits::ANSWER) {
                Ok(Step::Data(n)) => {
                    let data = Bytes::copy_from_slice(&conn.buf[..n]);
                    conn.buf.drain(..n);
                    break Some(Ok(data));
                }
                Ok(Step::Skip(n)) => {
                    conn.buf.drain(..n);
                }
                Ok(Step::More) => match conn.poll_fill(cx) {
                    Poll::Ready(Ok(0)) => break Some(Err(closed_early())),
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => break Some(Err(e)),
                    Poll::Pending => return Poll::Pending,
                },
                Ok(Step::End(n)) => {
                    conn.buf.drain(..n);
                    self.finish();
                    return Poll::Ready(None);
                }
                Err(why) => break Some(Err(invalid(why))),
            }
        };
        self.state = State::Framed(decoder);
        // A body of a stated length read whole: the connection is free at once.
        if matches!(result, Some(Ok(_))) && decoder.data_left() == Some(0) {
            self.finish();
        }
        Poll::Ready(result)
    }
}

pub(super) fn closed_early() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the upstream closed the connection within a response body")
}

impl AnswerFields for Body {
    fn take_fields(&mut self) -> Option<Fields> {
        self.fields.take()
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.state == State::Done {
            return Poll::Ready(None);
        }
        let result = match this.state {
            State::Framed(decoder) => ready!(this.poll_framed(cx, decoder)),
            State::Close => match ready!(this.poll_data(cx, BODY_CHUNK as u64)) {
                Ok(data) if data.is_empty() => {
                    this.state = State::Done;
                    this.conn = None;
                    None
                }
                Ok(data) => Some(Ok(data)),
                Err(e) => Some(Err(e)),
            },
            State::Done => None,
        };
        if matches!(result, Some(Err(_))) {
            // The connection is out of step: closed with the body.
            this.state = State::Done;
            this.conn = None;
            this.pool = None;
        }
        Poll::Ready(result.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match (self.framing, self.state) {
            (_, State::Done) => SizeHint::with_exact(0),
            (Framing::Length(_), State::Framed(decoder)) => SizeHint::with_exact(decoder.data_left().unwrap_or(0)),
            _ => SizeHint::default(),
        }
    }
}
