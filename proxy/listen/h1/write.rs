//! The loop's answer to a request: its head and body written to the client's socket.

use std::io;
use std::pin::pin;
use std::task::Poll;

use bytes::Buf;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{Response, StatusCode};
use hyper::body::Body;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::GATHER_MAX;
use crate::http1::{itoa, push_hex, AnswerFields};

/// Writes `response`: its head, then its body framed by its length (the `Content-Length` it
/// carries, or its body's exact size) or chunked. Whether it went out whole: an answer whose
/// body failed or ended short of its length costs the connection, as with hyper.
pub(super) async fn write_response<I, B>(
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
