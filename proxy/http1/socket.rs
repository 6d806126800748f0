//! Socket reads into and writes from plain buffers, with nothing of a request left behind in
//! a buffer of ours.

/// Writes of several buffers up to this size in all are gathered into one (see
/// [`poll_write_gathered`]).
pub const SCRATCH_MAX: usize = 4096;

thread_local! {
    /// [`poll_write_gathered`]'s scratch: allocated once at its full size, so it never moves (which
    /// would leave a copy behind), and zeroed after every use.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(SCRATCH_MAX));
}

/// Writes `bufs` to `io` with one plain write where it can: a single buffer as it is, several
/// of at most [`SCRATCH_MAX`] bytes in all copied into a scratch buffer first, which is zeroed
/// as soon as the write returns (it may hold a header with a token); more goes vectored.
///
/// hyper hands an HTTP/1 message to the socket as a head and a body chunk; one `send` of them
/// costs the kernel less than a `writev`, and unlike hyper's own flattening (`writev(false)`,
/// which copies bodies into a write buffer it reuses without zeroing) nothing is left behind.
pub fn poll_write_gathered<W: tokio::io::AsyncWrite + ?Sized>(
    mut io: std::pin::Pin<&mut W>,
    cx: &mut std::task::Context<'_>,
    bufs: &[std::io::IoSlice<'_>],
) -> std::task::Poll<std::io::Result<usize>> {
    if let [one] = bufs {
        return io.poll_write(cx, one);
    }
    if bufs.iter().map(|b| b.len()).sum::<usize>() > SCRATCH_MAX {
        return io.poll_write_vectored(cx, bufs);
    }
    SCRATCH.with(|scratch| {
        let Ok(mut scratch) = scratch.try_borrow_mut() else { return io.as_mut().poll_write_vectored(cx, bufs) };
        for b in bufs {
            scratch.extend_from_slice(b);
        }
        let written = io.as_mut().poll_write(cx, &scratch);
        crate::memory::wipe_slice(&mut scratch);
        scratch.clear();
        written
    })
}

/// Reads from `io` into the spare capacity of `buf` (at least `min_spare` bytes of it, made
/// room for first), at most `max` bytes: the number of bytes read, 0 at the end of the
/// stream. No byte is zeroed first, as a read into an initialised buffer would need.
#[allow(unsafe_code)]
pub fn poll_read_spare<R: tokio::io::AsyncRead + ?Sized>(
    io: std::pin::Pin<&mut R>,
    cx: &mut std::task::Context<'_>,
    buf: &mut Vec<u8>,
    min_spare: usize,
    max: usize,
) -> std::task::Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < min_spare {
        buf.reserve(min_spare);
    }
    // By hand, not `tokio_util::io::poll_read_buf` through `BufMut::limit`: this runs for every
    // read of a request, and that way costs more instructions than the read's own bookkeeping.
    let len = buf.len();
    let spare = buf.spare_capacity_mut();
    let room = spare.len().min(max);
    let mut read = tokio::io::ReadBuf::uninit(&mut spare[..room]);
    let at = read.filled().as_ptr();
    std::task::ready!(io.poll_read(cx, &mut read))?;
    // A reader may put another `ReadBuf` in its place (safe code can): then what it filled is
    // not this buffer's (tokio-util's `poll_read_buf` checks the same).
    assert_eq!(at, read.filled().as_ptr(), "the reader swapped the ReadBuf");
    let n = read.filled().len();
    // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity: `ReadBuf`
    // tracks what it filled, a reader may not shrink it, and it is still this buffer's (above).
    unsafe { buf.set_len(len + n) };
    std::task::Poll::Ready(Ok(n))
}

/// Reads from `io` into the spare capacity of `buf` (a block whose data goes on as `Bytes`):
/// the number of bytes read, 0 at the end of the stream. As [`poll_read_spare`], nothing is
/// zeroed first.
pub fn poll_read_bytes<R: tokio::io::AsyncRead + ?Sized>(
    io: std::pin::Pin<&mut R>,
    cx: &mut std::task::Context<'_>,
    buf: &mut bytes::BytesMut,
) -> std::task::Poll<std::io::Result<usize>> {
    tokio_util::io::poll_read_buf(io, cx, buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fills a `ReadBuf` of its own in place of the one it is given (which safe code can do).
    struct Swapper;

    impl tokio::io::AsyncRead for Swapper {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let own: &'static mut [std::mem::MaybeUninit<u8>] =
                Box::leak(Box::new([std::mem::MaybeUninit::uninit(); 8]));
            let mut other = tokio::io::ReadBuf::uninit(own);
            other.put_slice(b"12345678");
            *buf = other;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    #[should_panic(expected = "the reader swapped the ReadBuf")]
    fn a_reader_that_swaps_the_read_buffer_is_refused_not_trusted() {
        let mut io = Swapper;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut buf = Vec::new();
        let _ = poll_read_spare(std::pin::Pin::new(&mut io), &mut cx, &mut buf, 16, 16);
    }

    /// Records each write: its bytes, and whether it came vectored. Accepts at most `limit`
    /// bytes per write.
    struct Recorder {
        writes: Vec<(Vec<u8>, bool)>,
        limit: usize,
    }

    impl tokio::io::AsyncWrite for Recorder {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.limit);
            self.writes.push((buf[..n].to_vec(), false));
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = all.len().min(self.limit);
            self.writes.push((all[..n].to_vec(), true));
            std::task::Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    #[allow(unsafe_code)]
    fn gathered_writes_are_one_write_and_leave_nothing_behind() {
        use std::io::IoSlice;
        use std::task::{Context, Poll};
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut write = |bufs: &[IoSlice<'_>], limit: usize| {
            let mut io = Recorder { writes: Vec::new(), limit };
            let r = poll_write_gathered(std::pin::Pin::new(&mut io), &mut cx, bufs);
            (r, io.writes)
        };
        let (head, body) = (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n".as_slice(), b"ok".as_slice());
        let both = [head, body].concat();
        let (r, writes) = write(&[IoSlice::new(head), IoSlice::new(body)], usize::MAX);
        assert!(matches!(r, Poll::Ready(Ok(n)) if n == both.len()));
        assert_eq!(writes, [(both.clone(), false)], "two small buffers go as one plain write");
        SCRATCH.with(|s| {
            let s = s.borrow();
            assert!(s.is_empty());
            // SAFETY: these bytes were written by the gather above, then zeroed; clearing the
            // vector does not deallocate them.
            let used = unsafe { std::slice::from_raw_parts(s.as_ptr(), both.len()) };
            assert!(used.iter().all(|&b| b == 0), "the scratch buffer kept what it carried");
        });

        // One buffer goes as it is; too much in all goes vectored.
        let (_, writes) = write(&[IoSlice::new(body)], usize::MAX);
        assert_eq!(writes, [(body.to_vec(), false)]);
        let big = vec![7u8; SCRATCH_MAX];
        let (_, writes) = write(&[IoSlice::new(head), IoSlice::new(&big)], usize::MAX);
        assert_eq!(writes, [([head, &big].concat(), true)]);
        // A partial write is reported as it is (the caller writes the rest).
        let (r, _) = write(&[IoSlice::new(head), IoSlice::new(body)], 3);
        assert!(matches!(r, Poll::Ready(Ok(3))));
    }
}
