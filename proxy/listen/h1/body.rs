//! A streamed request body, read from the client's socket while its request is under way,
//! and the lingering close after an answer that came before its end.

use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{Framing, CONTINUE, LINGER_BYTES, LINGER_TIME, STREAM_READ, STREAM_ROOM};
use crate::http1::chunked::Step;
use crate::http1::Limits;

/// After the last answer on a connection whose client may still be sending a body (it was
/// not read to its end): what comes is read and dropped for a while, up to a bound, until the
/// client closes (as nginx's lingering close). Closed with bytes unread, the connection would
/// be reset, and the client could lose the answer it has not read yet.
pub(super) async fn linger<I: AsyncRead + Unpin>(io: &mut I) {
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
pub(super) enum Pumped {
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
pub(super) async fn pump<I>(
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
    let mut decoder = framing.decoder();
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
        match decoder.step(&read, limits) {
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
