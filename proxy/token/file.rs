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

use super::{Fetched, Source, SourceError, Token};

/// How often the metadata of every token file is checked, watcher or not.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// After a change notification that may be a write in progress, further events for this long
/// are folded into one read, so a writer's truncate-then-write is not read half done. A
/// notification that the file is complete (see [`change`]) is acted on at once.
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
    pub fn fetch(&self) -> Result<Fetched, SourceError> {
        let unreadable = |source| SourceError::FileUnreadable { path: self.path.clone(), source };
        let file = std::fs::File::open(&self.path).map_err(unreadable)?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len > MAX_TOKEN_FILE {
            return Err(SourceError::FileTooLarge { path: self.path.clone(), len: Some(len), limit: MAX_TOKEN_FILE });
        }
        // Sized up front so the buffer never reallocates (which would leave a stray copy).
        let mut buf = Zeroizing::new(Vec::with_capacity(MAX_TOKEN_FILE as usize + 1));
        file.take(MAX_TOKEN_FILE + 1).read_to_end(&mut buf).map_err(unreadable)?;
        if buf.len() as u64 > MAX_TOKEN_FILE {
            return Err(SourceError::FileTooLarge { path: self.path.clone(), len: None, limit: MAX_TOKEN_FILE });
        }
        let secret = Secret::from_bytes_trimmed(buf)
            .map_err(|source| SourceError::Unusable { what: self.path.display().to_string(), source })?;
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

/// What a notification means for the token files: `None` when nothing changed (a file was
/// opened or read: sidekey's own reads of its token files are seen too, and must not trigger
/// another read); `Some(true)` when a token file now has its complete new content: something
/// was renamed onto it (an atomic replacement, the Kubernetes `..data` swap among them) or a
/// writer closed it; `Some(false)` for other changes to a token file (just created and perhaps
/// still empty, a write in progress, renamed away), folded into a read [`SETTLE`] later.
/// Other files in a watched directory are not token files: a log written beside a token, or
/// a writer's temporary file, is `None` (the temporary file's rename onto the token is the
/// change). An event that names no file (the watcher lost track) is `Some(false)`.
fn change(event: &notify::Event, tokens: &[PathBuf]) -> Option<bool> {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
    if matches!(event.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write)) {
        return None;
    }
    let ours = |p: &PathBuf| tokens.contains(p) || p.file_name().is_some_and(|n| n == "..data");
    if !event.paths.is_empty() && !event.paths.iter().any(ours) {
        return None;
    }
    let finished = matches!(
        event.kind,
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    );
    // For a rename seen as one event the new name is the last path.
    Some(finished && event.paths.last().is_some_and(ours))
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
    let (tx, mut rx) = mpsc::unbounded_channel::<bool>();
    let paths: Vec<PathBuf> = files.iter().map(|(_, p)| p.clone()).collect();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(ev) => {
            if let Some(done) = change(&ev, &paths) {
                let _ = tx.send(done);
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
                Some(done) = rx.recv() => {
                    if !done {
                        let settle = tokio::time::sleep(SETTLE);
                        tokio::pin!(settle);
                        loop {
                            tokio::select! {
                                _ = &mut settle => break,
                                Some(done) = rx.recv() => if done { break },
                            }
                        }
                    }
                    // Whatever else arrived meanwhile is covered by this read.
                    while rx.try_recv().is_ok() {}
                    tracing::trace!(done, "token directory changed");
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

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RenameMode};

    fn event(kind: EventKind, paths: &[&str]) -> notify::Event {
        let mut e = notify::Event::new(kind);
        e.paths = paths.iter().map(PathBuf::from).collect();
        e
    }

    #[test]
    fn reading_a_token_file_is_not_a_change() {
        let tokens = [PathBuf::from("/s/token")];
        for kind in
            [AccessKind::Open(AccessMode::Read), AccessKind::Read, AccessKind::Close(AccessMode::Read), AccessKind::Any]
        {
            assert_eq!(change(&event(EventKind::Access(kind), &["/s/token"]), &tokens), None, "{kind:?}");
        }
    }

    #[test]
    fn a_complete_replacement_is_read_at_once_and_a_write_in_progress_later() {
        let tokens = [PathBuf::from("/s/token")];
        let c = |kind, paths: &[&str]| change(&event(kind, paths), &tokens);
        // Renamed over, closed after writing: complete.
        assert_eq!(c(EventKind::Modify(ModifyKind::Name(RenameMode::To)), &["/s/token"]), Some(true));
        assert_eq!(c(EventKind::Modify(ModifyKind::Name(RenameMode::Both)), &["/s/token.tmp", "/s/token"]), Some(true));
        assert_eq!(c(EventKind::Access(AccessKind::Close(AccessMode::Write)), &["/s/token"]), Some(true));
        // The Kubernetes secret volume swap.
        assert_eq!(c(EventKind::Modify(ModifyKind::Name(RenameMode::To)), &["/s/..data"]), Some(true));
        // Just created (a writer's open with O_CREAT, still empty), a write still open, the
        // old name renamed away, an event that names no file: settle first.
        assert_eq!(c(EventKind::Create(CreateKind::File), &["/s/token"]), Some(false));
        assert_eq!(c(EventKind::Modify(ModifyKind::Data(DataChange::Any)), &["/s/token"]), Some(false));
        assert_eq!(c(EventKind::Modify(ModifyKind::Name(RenameMode::From)), &["/s/token"]), Some(false));
        assert_eq!(c(EventKind::Other, &[]), Some(false));
    }

    #[test]
    fn other_files_beside_a_token_are_not_a_change() {
        let tokens = [PathBuf::from("/s/token")];
        let c = |kind, paths: &[&str]| change(&event(kind, paths), &tokens);
        // A log written in the same directory, a writer's temporary file, a Kubernetes
        // volume's timestamped directory and staging link (the `..data` rename follows).
        assert_eq!(c(EventKind::Modify(ModifyKind::Data(DataChange::Any)), &["/s/app.log"]), None);
        assert_eq!(c(EventKind::Access(AccessKind::Close(AccessMode::Write)), &["/s/app.log"]), None);
        assert_eq!(c(EventKind::Create(CreateKind::File), &["/s/token.tmp"]), None);
        assert_eq!(c(EventKind::Create(CreateKind::Folder), &["/s/..2026_11_29_01_00_00.1"]), None);
        assert_eq!(c(EventKind::Modify(ModifyKind::Name(RenameMode::From)), &["/s/..data_tmp"]), None);
        // Renamed from elsewhere onto the token: the token's path counts.
        assert_eq!(c(EventKind::Modify(ModifyKind::Name(RenameMode::Both)), &["/s/x", "/s/token"]), Some(true));
        // The token renamed away to another name.
        assert_eq!(c(EventKind::Modify(ModifyKind::Name(RenameMode::Both)), &["/s/token", "/s/old"]), Some(false));
    }
}
