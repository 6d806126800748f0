//! What a keep-alive connection of the own HTTP/1.1 loop ([`crate::listen::h1`]) holds while
//! it waits for its next request: no buffer. When a read for a new request finds nothing to
//! read, the connection gives its read buffer (wiped) and its write buffer (wiped by its last
//! flush) to its thread's spares; when its socket has bytes again, it takes one back. Thousands
//! of idle connections then hold no buffer, and a busy connection still does not allocate for
//! each request.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncRead;

/// Spare buffers kept per thread (one per connection that is between requests, up to this);
/// more are freed.
const SPARES: usize = 16;
/// A buffer larger than this (a long head, a large answer gathered) is freed, not kept.
const SPARE_MAX: usize = 32 * 1024;

thread_local! {
    /// Empty buffers, every byte of their allocation that carried anything wiped.
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A spare buffer of this thread, or a new one without an allocation.
pub(crate) fn take() -> Vec<u8> {
    SPARE.try_with(|s| s.borrow_mut().pop()).ok().flatten().unwrap_or_default()
}

/// Gives `bufs` (empty, nothing left in their allocations) to this thread's spares, or frees
/// them.
fn give(bufs: [Vec<u8>; 2]) {
    let _ = SPARE.try_with(move |s| {
        let mut s = s.borrow_mut();
        for buf in bufs {
            if buf.capacity() != 0 && buf.capacity() <= SPARE_MAX && s.len() < SPARES {
                s.push(buf);
            }
        }
    });
}

/// Reads the first bytes of a connection's next request into `buf` (empty), at least
/// `min_spare` of room made first, at most `max` bytes, as
/// [`crate::http1::socket::poll_read_spare`]. When none have come, `buf` and `out` (the write
/// buffer, empty and wiped by its last flush) go to the thread's spares, and the connection
/// holds no buffer while it waits; a buffer is taken back when it is polled again, as its
/// socket has bytes (or a guard woke it). `dirty`: how many bytes at the start of `buf`'s
/// allocation its requests were read into (the most it held); they are wiped before it goes.
/// The rest of its allocation holds nothing: a spare's is wiped whole, and what grew it came
/// from the allocator (`memory::ZeroOnFree` wipes what is freed).
pub(crate) fn poll_read_next<R: AsyncRead + ?Sized>(
    io: Pin<&mut R>,
    cx: &mut Context<'_>,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    dirty: &mut usize,
    min_spare: usize,
    max: usize,
) -> Poll<std::io::Result<usize>> {
    debug_assert!(buf.is_empty() && out.is_empty());
    if buf.capacity() == 0 {
        *buf = take();
    }
    let read = crate::http1::socket::poll_read_spare(io, cx, buf, min_spare, max);
    if read.is_pending() {
        let mut spare = std::mem::take(buf);
        crate::memory::wipe_allocation(&mut spare, std::mem::take(dirty));
        give([spare, std::mem::take(out)]);
    }
    read
}

/// Gives `out` a buffer again (a spare of the thread's) if it gave its own away.
pub(crate) fn refill(out: &mut Vec<u8>) {
    if out.capacity() == 0 {
        *out = take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// This thread's spares: each one's capacity, and whether the first `len` bytes of its
    /// allocation are zero, asked of those `wiped` names as `(index, len)` (bytes written,
    /// see the callers).
    #[allow(unsafe_code)]
    fn spares(wiped: &[(usize, usize)]) -> Vec<(usize, bool)> {
        SPARE.with(|s| {
            s.borrow()
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let zero = wiped.iter().find(|w| w.0 == i).is_some_and(|&(_, len)| {
                        // SAFETY: these bytes of the allocation were written (see the callers).
                        let written = unsafe { std::slice::from_raw_parts(b.as_ptr(), len.min(b.capacity())) };
                        written.iter().all(|&x| x == 0)
                    });
                    (b.capacity(), zero)
                })
                .collect()
        })
    }

    /// Nothing to read at first, then `GET`.
    struct Later(bool);
    impl AsyncRead for Later {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if !std::mem::replace(&mut self.0, true) {
                return Poll::Pending;
            }
            buf.put_slice(b"GET");
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn buffers_given_up_while_waiting_are_wiped_and_taken_back_for_the_next_read() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut io = Later(false);
        // A buffer that held a request (every byte written), and a write buffer.
        let mut buf = vec![b'x'; 2048];
        buf.clear();
        let mut out = Vec::with_capacity(512);
        let mut dirty = 2048;
        let read = poll_read_next(Pin::new(&mut io), &mut cx, &mut buf, &mut out, &mut dirty, 1024, 8192);
        assert!(read.is_pending());
        assert_eq!((buf.capacity(), out.capacity()), (0, 0), "a connection waiting holds a buffer");
        assert_eq!(spares(&[(0, 2048)]), [(2048, true), (512, false)], "the read buffer kept what it carried");
        // Bytes in: a spare takes them.
        assert_eq!(dirty, 0);
        let read = poll_read_next(Pin::new(&mut io), &mut cx, &mut buf, &mut out, &mut dirty, 1024, 8192);
        assert!(matches!(read, Poll::Ready(Ok(3))));
        assert_eq!(buf, b"GET");
        assert_eq!(spares(&[]).len(), 1);
        refill(&mut out);
        assert!(out.capacity() > 0 && spares(&[]).is_empty());
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_holds_no_buffer() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let serving = tokio::spawn(async move {
            let mut server = server;
            let handler = |_: http::Request<crate::upstream::ProxyBody>| {
                let answer = http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")));
                std::future::ready(Ok::<_, std::convert::Infallible>(answer))
            };
            let limits = crate::http1::Limits { head_bytes: 8192, headers: 100, ..crate::http1::Limits::REQUEST };
            crate::listen::h1::serve(&mut server, Vec::new(), &handler, || (), &AtomicBool::new(false), limits).await
        });
        let request = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Marker: in-the-read-buffer\r\n\r\n";
        for _ in 0..3 {
            client.write_all(request).await.unwrap();
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n\r\nok") {
                let mut chunk = [0; 1024];
                let n = client.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the connection closed");
                got.extend_from_slice(&chunk[..n]);
            }
            // The answer was written in the task's poll that then found nothing more to read (this
            // runtime has one thread): its buffers are this thread's spares, the bytes the
            // request was read into wiped.
            let wiped: Vec<bool> = spares(&[(0, request.len())]).iter().map(|s| s.1).collect();
            assert_eq!(wiped, [true, false], "the idle connection's buffers are not the thread's spares, or not wiped");
        }
        drop(client);
        assert!(matches!(serving.await.unwrap(), Ok(crate::listen::h1::End::Closed)));
    }
}
