//! Config reload triggers: SIGHUP, and with `--watch-config` a change of the config file
//! (a plain write, a rename-over, or a Kubernetes ConfigMap's `..data` swap).
//!
//! A reload reads and validates the whole file first; an invalid file is reported, every
//! error with its line, and the running config stays.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::Watcher;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::serve::Running;

/// Folds a burst of file events into one reload.
const SETTLE: Duration = Duration::from_millis(100);

/// Takes over SIGHUP (whose default action ends the process). Call it before starting, so
/// a SIGHUP that arrives early is held for [`reload_loop`] instead of killing sidekey.
#[cfg(unix)]
pub fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by signal is off"))
        .ok()
}

/// Reloads `running` from `path` on every SIGHUP (from [`hangup_signal`]) and, with
/// `watch_file`, every change of the file's content (`loaded` is the [`digest`] of the
/// content running now); never returns.
#[cfg(unix)]
pub async fn reload_loop(
    running: &Running,
    path: PathBuf,
    loaded: Option<Vec<u8>>,
    watch_file: bool,
    hangup: Option<tokio::signal::unix::Signal>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<&'static str>();
    if let Some(mut hup) = hangup {
        let tx = tx.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if tx.send("SIGHUP").is_err() {
                    break;
                }
            }
        });
    }
    // Kept alive for as long as the loop runs.
    let _watcher = if watch_file { watch(&path, tx.clone()) } else { None };
    // A change between the first load and the watch's start has no event of its own.
    let mut last = loaded;
    if watch_file && digest(&path) != last {
        let _ = tx.send("file");
    }
    while let Some(trigger) = rx.recv().await {
        if trigger == "file" {
            // Let a burst of events (write, rename, symlink swap) settle, then see whether
            // the content really changed.
            tokio::time::sleep(SETTLE).await;
            while rx.try_recv().is_ok() {}
            let now = digest(&path);
            if now == last {
                continue;
            }
            last = now;
        } else {
            last = digest(&path);
        }
        let result = |r: &'static str| metrics::counter!("sidekey_config_reloads_total", "result" => r).increment(1);
        match Config::load(&path) {
            Ok(config) => match running.reload(config).await {
                Ok(_) => result("success"),
                Err(e) => {
                    result("failure");
                    tracing::error!(trigger, error = %e, "config reload failed; keeping the running config");
                }
            },
            Err(errors) => {
                result("failure");
                for e in &errors.errors {
                    tracing::error!(trigger, file = %path.display(), line = e.line, key = %e.key, error = %e.message, "invalid config");
                }
                tracing::error!(
                    trigger,
                    errors = errors.errors.len(),
                    "config reload refused; keeping the running config"
                );
            }
        }
    }
}

/// The SHA-256 of a file's content, to tell a real change from a touch.
pub fn digest(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).to_vec())
}

fn watch(path: &Path, tx: mpsc::UnboundedSender<&'static str>) -> Option<notify::RecommendedWatcher> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut w = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send("file");
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the config file"))
    .ok()?;
    if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory");
        return None;
    }
    Some(w)
}
