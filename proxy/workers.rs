//! `[listen] workers = N`: N single-threaded runtimes, each on a thread of its own, serving
//! the proxy listener's connections; the token store, the route table and the upstream pools
//! stay one, shared by all.
//!
//! One acceptor (the listener's loop, on the main runtime) hands each accepted connection to
//! the next worker in turn, and the connection lives on that worker until it closes. Not one
//! `SO_REUSEPORT` listener per worker: any process of the same user could join such a port
//! group and be handed a share of the clients' connections, where sidekey otherwise holds its
//! port alone; and one acceptor keeps one `[limits] max_connections` count and one drain at
//! shutdown.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};

/// The running workers.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Connections handed to each worker so far.
    handed: Vec<AtomicU64>,
    stop: watch::Sender<bool>,
    /// One per worker, sent once its runtime is gone.
    done: Mutex<Vec<oneshot::Receiver<()>>>,
}

impl Workers {
    /// Starts `n` workers (threads `sidekey-w0` ...: a thread name is cut at 15 bytes), each running a current-thread
    /// runtime until [`Workers::stop`] or drop.
    pub fn start(n: usize) -> std::io::Result<Workers> {
        if n == 0 {
            return Err(std::io::Error::other("no workers asked for"));
        }
        let (stop, stopped) = watch::channel(false);
        let (mut handles, mut done) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (done_tx, done_rx) = oneshot::channel();
            let mut stopped = stopped.clone();
            std::thread::Builder::new().name(format!("sidekey-w{i}")).spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stopped.wait_for(|s| *s).await;
                });
                // Its connections' tasks are dropped with it, on this thread.
                drop(rt);
                let _ = done_tx.send(());
            })?;
            let handle = handle_rx.recv().map_err(|_| std::io::Error::other("a worker thread ended at start"))??;
            handles.push(handle);
            done.push(done_rx);
        }
        let handed = (0..n).map(|_| AtomicU64::new(0)).collect();
        Ok(Workers { handles, next: AtomicUsize::new(0), handed, stop, done: Mutex::new(done) })
    }

    /// The runtime the next connection goes to (round-robin).
    pub fn next(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handed[i].fetch_add(1, Ordering::Relaxed);
        &self.handles[i]
    }

    /// Connections handed to each worker so far.
    pub fn handed(&self) -> Vec<u64> {
        self.handed.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }

    /// Stops every worker (the tasks still on them are dropped) and waits until their
    /// runtimes are gone.
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        let done = std::mem::take(&mut *self.done.lock().unwrap_or_else(|e| e.into_inner()));
        for d in done {
            let _ = d.await;
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Not waited for: a runtime may not be dropped from within another's task.
        self.stop.send_replace(true);
    }
}
