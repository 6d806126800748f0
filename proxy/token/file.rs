//! `source = "file"`: a file's content (a Kubernetes secret volume, say), watched for changes.
//!
//! Each token file's directory is watched with `notify` (inotify on Linux), which sees both
//! ways a secret file changes: a plain write or rename-over, and the Kubernetes volume swap
//! where the `..data` symlink is renamed to point at a new timestamped directory. A periodic
//! check of every file's metadata backs the watcher up where watching is not possible (a
//! directory that does not exist yet, a filesystem without notifications, a watch limit).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::Watcher;
use tokio::sync::{mpsc, watch};
use zeroize::Zeroizing;

use crate::config;
use crate::secret::Secret;

use super::{Fetched, Source, Token};

/// How often the metadata of every token file is checked, watcher or not.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// After a change notification, further events for this long are folded into one read, so a
/// writer's truncate-then-write is not read half done.
const SETTLE: Duration = Duration::from_millis(15);
/// Token files larger than this are refused: a token is not a megabyte long.
const MAX_TOKEN_FILE: u64 = 64 * 1024;

#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
}

impl FileSource {
    pub fn new(config: &config::FileSource) -> FileSource {
        FileSource { path: config.path.clone() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file into a zeroizing buffer and trims one trailing newline.
    pub fn fetch(&self) -> Result<Fetched, String> {
        let shown = self.path.display();
        let file = std::fs::File::open(&self.path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len > MAX_TOKEN_FILE {
            return Err(format!("{shown} is {len} bytes, larger than a token file may be ({MAX_TOKEN_FILE})"));
        }
        // Sized up front so the buffer never reallocates (which would leave a stray copy).
        let mut buf = Zeroizing::new(Vec::with_capacity(MAX_TOKEN_FILE as usize + 1));
        file.take(MAX_TOKEN_FILE + 1).read_to_end(&mut buf).map_err(|e| format!("cannot read {shown}: {e}"))?;
        if buf.len() as u64 > MAX_TOKEN_FILE {
            return Err(format!("{shown} is larger than a token file may be ({MAX_TOKEN_FILE} bytes)"));
        }
        let secret = Secret::from_bytes_trimmed(buf).map_err(|e| format!("{shown}: {e}"))?;
        Ok(Fetched { secret, expires_at: None })
    }
}

/// What identifies a file's content without reading it: device, inode, size, mtime, of the
/// target after following symlinks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Signature {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

fn signature(path: &Path) -> Option<Signature> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Signature { dev: m.dev(), ino: m.ino(), len: m.len(), modified: m.modified().ok() })
}

/// Watches every file token and refreshes it when its file changes, until `shutdown` turns
/// true. Returns at once if there are no file tokens.
pub fn spawn_watcher(
    tokens: Vec<Arc<Token>>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let files: Vec<(Arc<Token>, PathBuf)> = tokens
        .into_iter()
        .filter_map(|t| match t.source() {
            Source::File(f) => Some((t.clone(), f.path().to_owned())),
            _ => None,
        })
        .collect();
    if files.is_empty() {
        return None;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(ev) => {
            for p in ev.paths {
                let _ = tx.send(p);
            }
        }
        Err(e) => tracing::debug!(error = %e, "file watch error"),
    });
    let mut watcher = match watcher {
        Ok(mut w) => {
            let mut dirs: Vec<PathBuf> = files.iter().filter_map(|(_, p)| p.parent().map(Path::to_owned)).collect();
            dirs.sort();
            dirs.dedup();
            for dir in dirs {
                if let Err(e) = w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch token directory; checking it every {}ms instead", POLL_INTERVAL.as_millis());
                }
            }
            Some(w)
        }
        Err(e) => {
            tracing::warn!(error = %e, "file watching unavailable; checking token files every {}ms", POLL_INTERVAL.as_millis());
            None
        }
    };
    Some(tokio::spawn(async move {
        // Unknown at first: the first check re-reads every file that exists, so a change made
        // between the initial load and this task's start is not missed (an unchanged value is
        // not republished).
        let mut seen: HashMap<PathBuf, Option<Signature>> = files.iter().map(|(_, p)| (p.clone(), None)).collect();
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Which files to re-read, and whether regardless of their metadata.
            let force = tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => false,
                Some(first) = rx.recv() => {
                    let mut changed = vec![first];
                    let settle = tokio::time::sleep(SETTLE);
                    tokio::pin!(settle);
                    loop {
                        tokio::select! {
                            _ = &mut settle => break,
                            Some(p) = rx.recv() => changed.push(p),
                        }
                    }
                    tracing::trace!(events = changed.len(), "token directory changed");
                    true
                }
            };
            tracing::trace!(force, "checking token files");
            for (token, path) in &files {
                let sig = signature(path);
                let last = seen.get_mut(path).expect("every watched path is in the map");
                if !force && *last == sig {
                    continue;
                }
                *last = sig;
                token.refresh().await;
            }
        }
        drop(watcher.take());
    }))
}
