//! The tamper-evident audit log: append-only JSON lines, one per token event and a periodic
//! usage summary per route, each chained to the line before by SHA-256.
//!
//! A line is a JSON object with sorted keys: `seq` (1, 2, ...), `ts`, `event`, the event's
//! fields, `prev` (the previous line's `hash`; 64 zeros for the first) and `hash`, the SHA-256
//! of the line's own compact JSON without `hash`. Editing, deleting or reordering a line breaks
//! the chain at that line, which `sidekey audit verify` names. Cutting off the last lines leaves
//! a shorter chain that is still intact: only an anchor kept outside the file shows that, the
//! chain's head (seq, hash) that sidekey logs every `[audit] anchor_interval` and serves at
//! `GET /audit`, which `sidekey audit verify --head SEQ:HASH` checks the file still reaches.
//! On start the writer continues an existing file's chain.
//!
//! Writing never blocks a request: events go through a channel to a writer thread, in the order
//! they were recorded. A token event is never dropped and never waits; usage is summarised from
//! counters, so while [`QUEUE`] records wait for the writer a summary is put off and the next
//! one covers more time.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

/// Records waiting for the writer past which a usage summary is put off.
const QUEUE: usize = 1024;
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

enum Message {
    Record {
        event: &'static str,
        fields: Map<String, Value>,
        sync: bool,
    },
    /// Answered once every record sent before it is written.
    Flush(oneshot::Sender<()>),
}

/// A handle to the audit log: cheap to clone.
#[derive(Clone, Debug)]
pub struct Audit {
    tx: mpsc::UnboundedSender<Message>,
    /// Records sent and not yet written.
    waiting: Arc<AtomicUsize>,
    /// The last record written: its seq and hash (0 and the genesis hash for an empty log).
    head: Arc<Mutex<Head>>,
}

/// Where the chain stands: the anchor `sidekey audit verify --head` checks a file against.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

impl std::fmt::Display for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Record { event, .. } => write!(f, "Record({event})"),
            Message::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl Audit {
    /// Opens (or creates) the log, reads where its chain stands, and starts the writer.
    pub fn open(path: &Path) -> Result<Audit, String> {
        let shown = path.display().to_string();
        let mut options = OpenOptions::new();
        options.create(true).append(true).read(true);
        // It holds fingerprints and usage: readable by sidekey's user only (a file that
        // exists keeps the mode it has).
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|e| format!("cannot open audit log {shown}: {e}"))?;
        let (seq, prev) = match last_line(&mut file).map_err(|e| format!("cannot read audit log {shown}: {e}"))? {
            None => (0, GENESIS.to_owned()),
            Some(line) => {
                let v: Map<String, Value> = serde_json::from_str(&line).map_err(|_| {
                    format!("audit log {shown}: its last line is not an audit record; not appending to it")
                })?;
                match (v.get("seq").and_then(Value::as_u64), v.get("hash").and_then(Value::as_str)) {
                    (Some(seq), Some(hash)) => (seq, hash.to_owned()),
                    _ => return Err(format!("audit log {shown}: its last line has no seq/hash; not appending to it")),
                }
            }
        };
        let (audit, rx) = Audit::channel();
        *audit.head.lock().unwrap_or_else(|e| e.into_inner()) = Head { seq, hash: prev.clone() };
        let (path, waiting, head) = (path.to_owned(), audit.waiting.clone(), audit.head.clone());
        std::thread::Builder::new()
            .name("sidekey-audit".into())
            .spawn(move || writer(file, path, seq, prev, rx, &waiting, &head))
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok(audit)
    }

    fn channel() -> (Audit, mpsc::UnboundedReceiver<Message>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let head = Arc::new(Mutex::new(Head { seq: 0, hash: GENESIS.to_owned() }));
        (Audit { tx, waiting: Arc::new(AtomicUsize::new(0)), head }, rx)
    }

    fn send(&self, event: &'static str, fields: Map<String, Value>, sync: bool) -> bool {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let sent = self.tx.send(Message::Record { event, fields, sync }).is_ok();
        if !sent {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        sent
    }

    /// Records an event; never blocks and never drops it.
    pub fn event(&self, event: &'static str, fields: Map<String, Value>, sync: bool) {
        if !self.send(event, fields, sync) {
            tracing::error!(event, "audit writer is gone; event not recorded");
        }
    }

    /// Records a usage summary if fewer than [`QUEUE`] records wait for the writer; `false`
    /// means try again next interval (with the counts of both).
    pub fn try_usage(&self, fields: Map<String, Value>) -> bool {
        self.waiting.load(Ordering::Relaxed) < QUEUE && self.send("usage", fields, false)
    }

    /// The last record written (see [`Head`]).
    pub fn head(&self) -> Head {
        self.head.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until every event sent so far is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Message::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn writer(
    mut file: File,
    path: PathBuf,
    mut seq: u64,
    mut prev: String,
    mut rx: mpsc::UnboundedReceiver<Message>,
    waiting: &AtomicUsize,
    head: &Mutex<Head>,
) {
    while let Some(msg) = rx.blocking_recv() {
        let (event, mut fields, sync) = match msg {
            Message::Record { event, fields, sync } => (event, fields, sync),
            Message::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        waiting.fetch_sub(1, Ordering::Relaxed);
        seq += 1;
        fields.insert("seq".into(), seq.into());
        fields.insert("ts".into(), humantime::format_rfc3339_millis(SystemTime::now()).to_string().into());
        fields.insert("event".into(), event.into());
        fields.insert("prev".into(), prev.clone().into());
        let hash = line_hash(&fields);
        fields.insert("hash".into(), hash.clone().into());
        let mut line = Value::Object(fields).to_string();
        line.push('\n');
        // One write per line on an O_APPEND file: lines from this writer never interleave.
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::error!(file = %path.display(), error = %e, event, "cannot write the audit log");
            seq -= 1;
            continue;
        }
        if sync {
            if let Err(e) = file.sync_data() {
                tracing::error!(file = %path.display(), error = %e, "cannot sync the audit log");
            }
        }
        *head.lock().unwrap_or_else(|e| e.into_inner()) = Head { seq, hash: hash.clone() };
        prev = hash;
    }
}

/// SHA-256 of the record's compact JSON (sorted keys) without `hash`, in hex.
fn line_hash(fields: &Map<String, Value>) -> String {
    let body = Value::Object(
        fields.iter().filter(|(k, _)| k.as_str() != "hash").map(|(k, v)| (k.clone(), v.clone())).collect(),
    );
    Sha256::digest(body.to_string().as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The last complete line of a file, if any.
fn last_line(file: &mut File) -> std::io::Result<Option<String>> {
    let len = file.seek(SeekFrom::End(0))?;
    let start = len.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = String::new();
    file.read_to_string(&mut tail)?;
    Ok(tail.lines().rev().find(|l| !l.trim().is_empty()).map(str::to_owned))
}

/// Where a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// 1-based line number in the file.
    pub line: usize,
    pub reason: String,
}

/// Checks a whole audit log; returns the number of records when the chain is intact.
pub fn verify(path: &Path) -> Result<usize, Broken> {
    verify_to(path, None)
}

/// Parses a `--head` anchor, `SEQ:HASH` (as logged and served at `GET /audit`).
pub fn parse_head(s: &str) -> Result<Head, String> {
    let (seq, hash) = s.split_once(':').ok_or_else(|| format!("{s:?}: expected SEQ:HASH"))?;
    let seq = seq.parse().map_err(|_| format!("{s:?}: SEQ is not a number"))?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{s:?}: HASH is not 64 hex digits"));
    }
    Ok(Head { seq, hash: hash.to_ascii_lowercase() })
}

/// [`verify`], and with `head` also that the file still reaches that record: a chain cannot
/// tell by itself that its last lines were cut off, an anchor kept outside the file can.
pub fn verify_to(path: &Path, head: Option<&Head>) -> Result<usize, Broken> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Broken { line: 0, reason: format!("cannot read {}: {e}", path.display()) })?;
    let mut prev = GENESIS.to_owned();
    let mut expected_seq: Option<u64> = None;
    let mut count = 0;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let broken = |reason: String| Broken { line: n, reason };
        let fields: Map<String, Value> = serde_json::from_str(line).map_err(|_| broken("not a JSON record".into()))?;
        let hash = fields.get("hash").and_then(Value::as_str).ok_or_else(|| broken("no hash".into()))?;
        if line_hash(&fields) != hash {
            return Err(broken("its hash does not match its content (edited?)".into()));
        }
        let seq = fields.get("seq").and_then(Value::as_u64).ok_or_else(|| broken("no seq".into()))?;
        if let Some(want) = expected_seq {
            if seq != want {
                return Err(broken(format!("seq {seq} where {want} was expected (a line deleted or moved?)")));
            }
        }
        if fields.get("prev").and_then(Value::as_str) != Some(prev.as_str()) {
            return Err(broken(
                "prev does not match the hash of the line before (a line deleted, moved or inserted?)".into(),
            ));
        }
        if let Some(h) = head {
            if seq == h.seq && hash != h.hash {
                return Err(broken(format!("record {seq} is not the anchored head {h} (the log was rewritten?)")));
            }
        }
        prev = hash.to_owned();
        expected_seq = Some(seq + 1);
        count += 1;
    }
    if let Some(h) = head {
        let last = expected_seq.map_or(0, |n| n - 1);
        if h.seq > 0 && last < h.seq {
            return Err(Broken {
                line: text.lines().count(),
                reason: format!(
                    "the file ends at record {last}, before the anchored head {} (its tail was cut off)",
                    h.seq
                ),
            });
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_events_keep_their_order_past_the_queue_and_a_summary_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let file = OpenOptions::new().create(true).append(true).open(&path).unwrap();
        // The writer not started yet: as if it were stalled on a slow disk.
        let (audit, rx) = Audit::channel();
        let numbered = |n: usize| Map::from_iter([("n".to_owned(), Value::from(n))]);
        for n in 0..QUEUE + 10 {
            audit.event("rotated", numbered(n), false);
            if n == QUEUE - 2 {
                assert!(audit.try_usage(numbered(n)), "room for a summary below the queue's length");
            }
        }
        assert!(!audit.try_usage(numbered(0)), "a summary is put off while the queue is full");
        let waiting = audit.waiting.clone();
        drop(audit);
        let head = audit_head_for_test();
        writer(file, path.clone(), 0, GENESIS.to_owned(), rx, &waiting, &head);
        let last = head.lock().unwrap().clone();
        assert_eq!(last.seq, QUEUE as u64 + 11);
        assert_eq!(verify_to(&path, Some(&last)), Ok(QUEUE + 11));

        assert_eq!(waiting.load(Ordering::Relaxed), 0);
        assert_eq!(verify(&path), Ok(QUEUE + 11));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let rotations: Vec<u64> =
            lines.iter().filter(|l| l["event"] == "rotated").map(|l| l["n"].as_u64().unwrap()).collect();
        assert_eq!(rotations, (0..QUEUE as u64 + 10).collect::<Vec<_>>(), "in the order they were recorded");
        assert_eq!(lines[QUEUE - 1]["event"], "usage");
    }
}

#[cfg(test)]
fn audit_head_for_test() -> Mutex<Head> {
    Mutex::new(Head { seq: 0, hash: GENESIS.to_owned() })
}

#[cfg(test)]
mod anchor_tests {
    use super::*;

    #[test]
    fn an_anchor_catches_a_cut_tail_the_chain_alone_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let file = OpenOptions::new().create(true).append(true).open(&path).unwrap();
        let (audit, rx) = Audit::channel();
        for n in 0..5u64 {
            audit.event("rotated", Map::from_iter([("n".to_owned(), Value::from(n))]), false);
        }
        let waiting = audit.waiting.clone();
        drop(audit);
        let head = audit_head_for_test();
        writer(file, path.clone(), 0, GENESIS.to_owned(), rx, &waiting, &head);
        let anchor = head.lock().unwrap().clone();
        assert_eq!(anchor.seq, 5);
        assert_eq!(parse_head(&anchor.to_string()), Ok(anchor.clone()));
        assert_eq!(verify_to(&path, Some(&anchor)), Ok(5));

        let text = std::fs::read_to_string(&path).unwrap();
        let cut: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, cut).unwrap();
        assert_eq!(verify(&path), Ok(3), "the chain alone sees nothing wrong");
        let e = verify_to(&path, Some(&anchor)).unwrap_err();
        assert!(e.reason.contains("tail was cut off"), "{e:?}");
        // An older anchor the file still reaches passes.
        let third: Map<String, Value> = serde_json::from_str(text.lines().nth(2).unwrap()).unwrap();
        let old = Head { seq: 3, hash: third["hash"].as_str().unwrap().to_owned() };
        assert_eq!(verify_to(&path, Some(&old)), Ok(3));
        let forged = Head { seq: 3, hash: "ab".repeat(32) };
        assert!(verify_to(&path, Some(&forged)).unwrap_err().reason.contains("not the anchored head"));
        assert!(parse_head("3:xyz").is_err() && parse_head("x:").is_err());
    }
}
