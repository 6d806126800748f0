//! A request body sent upstream as it arrives (an upload), and the bound on its sending: an
//! upload is never cut off for its length, only for going quiet. While the body is sent, the
//! longest time without a byte moving is `send_timeout`: a client that stops sending gets
//! `408`, an upstream that stops reading `504`; once the body is sent whole, the answer's head
//! is due within `timeout` (the route's, as for a request without a body).
//!
//! The body notes, as it is polled, when data last moved and who is waited for ([`Progress`]);
//! [`bounded`] wraps the request's future and reads that when its timer goes off.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Instant;

/// Where an upload stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Waiting {
    /// For the client's next bytes.
    Client,
    /// For the upstream side to take the bytes it was given.
    Upstream,
    /// Sent whole, at that time.
    Done,
}

/// When data last moved, and who is waited for.
#[derive(Debug)]
pub struct Progress(Mutex<(Waiting, Instant)>);

impl Progress {
    fn note(&self, waiting: Waiting, moved: bool) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if moved || waiting == Waiting::Done {
            *p = (waiting, Instant::now());
        } else {
            p.0 = waiting;
        }
    }

    fn get(&self) -> (Waiting, Instant) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Source {
    /// The proxy listener's own loop's (see [`crate::listen::h1`]).
    Own(Streamed),
    /// hyper's server's (a connection handed over, HTTP/2).
    Hyper(Incoming),
}

/// A request body streamed upstream as it arrives, noting its [`Progress`].
pub struct Upload(Box<(Source, Arc<Progress>)>);

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upload")
    }
}

impl Upload {
    fn new(source: Source) -> Upload {
        Upload(Box::new((source, Arc::new(Progress(Mutex::new((Waiting::Client, Instant::now())))))))
    }

    pub(crate) fn own(body: Streamed) -> Upload {
        Upload::new(Source::Own(body))
    }

    pub fn hyper(body: Incoming) -> Upload {
        Upload::new(Source::Hyper(body))
    }

    /// What [`bounded`] watches.
    pub fn progress(&self) -> Arc<Progress> {
        self.0 .1.clone()
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let (source, progress) = &mut *self.get_mut().0;
        let polled = match source {
            Source::Own(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Source::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        };
        match &polled {
            Poll::Pending => progress.note(Waiting::Client, false),
            Poll::Ready(Some(Ok(_))) => progress.note(Waiting::Upstream, true),
            Poll::Ready(None) => progress.note(Waiting::Done, true),
            Poll::Ready(Some(Err(_))) => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 .0 {
            Source::Own(b) => b.is_end_stream(),
            Source::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 .0 {
            Source::Own(b) => b.size_hint(),
            Source::Hyper(b) => b.size_hint(),
        }
    }
}

/// Why [`bounded`] gave up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stalled {
    /// The client sent nothing for `send_timeout` (408).
    Client,
    /// The upstream took nothing for `send_timeout` (504).
    Upstream,
    /// The body was sent whole and no answer came within `timeout` (504).
    Answer,
}

/// A deadline far enough to leave the bound to [`bounded`]: for the upstream side's own
/// timer, while an upload is sent.
pub fn far() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// `fut` (an upload's request, until its answer's head), bounded as the module says; `stalled`
/// makes its output from why it gave up.
pub async fn bounded<F: Future>(
    fut: F,
    progress: Arc<Progress>,
    timeout: Duration,
    send_timeout: Duration,
    stalled: impl FnOnce(Stalled) -> F::Output,
) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let due = |(waiting, at): (Waiting, Instant)| match waiting {
        Waiting::Done => (at + timeout, Stalled::Answer),
        Waiting::Client => (at + send_timeout, Stalled::Client),
        Waiting::Upstream => (at + send_timeout, Stalled::Upstream),
    };
    let sleep = tokio::time::sleep_until(due(progress.get()).0);
    let mut sleep = std::pin::pin!(sleep);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        loop {
            std::task::ready!(sleep.as_mut().poll(cx));
            let (at, why) = due(progress.get());
            if Instant::now() >= at {
                return Poll::Ready(Err(why));
            }
            sleep.as_mut().reset(at);
        }
    })
    .await
    .unwrap_or_else(stalled)
}

/// A request body the own loop streams from the client's connection as it arrives (one longer
/// than it reads whole, or a chunked one), decoded: data chunks as they are read, then (a
/// chunked one) an empty chunk for its end. A body whose sender is gone before its end failed:
/// the client closed, its chunks did not parse, or the loop stopped.
#[derive(Debug)]
pub struct Streamed {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    /// What is left of a stated length; `None`: chunked.
    left: Option<u64>,
    ended: bool,
}

impl Streamed {
    /// A body fed through `rx`: `length` bytes, or (`None`) chunked until an empty chunk.
    pub fn new(rx: tokio::sync::mpsc::Receiver<Bytes>, length: Option<u64>) -> Streamed {
        Streamed { rx, left: length, ended: false }
    }
}

/// The client's body did not come whole.
#[derive(Debug, thiserror::Error)]
#[error("the client's body did not come whole")]
pub struct BodyCut;

impl hyper::body::Body for Streamed {
    type Data = Bytes;
    type Error = BodyCut;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyCut>>> {
        let this = self.get_mut();
        if this.is_end_stream() {
            return Poll::Ready(None);
        }
        match std::task::ready!(this.rx.poll_recv(cx)) {
            Some(data) if data.is_empty() && this.left.is_none() => {
                this.ended = true;
                Poll::Ready(None)
            }
            Some(data) => {
                if let Some(left) = &mut this.left {
                    *left = left.saturating_sub(data.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            None => Poll::Ready(Some(Err(BodyCut))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.left == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
