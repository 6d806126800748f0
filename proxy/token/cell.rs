//! The hot-path cell: what a request reads, with one lock-free load.
//!
//! The current value is an `ArcSwapOption` holding a [`TokenValue`] snapshot (the secret, its
//! generation and fingerprint, and the header values every route renders from it, computed
//! once per generation). A request loads it and clones the rendered header; a publication
//! builds a whole new snapshot and swaps it in. The value a rotation replaced is kept,
//! rendered, for the retry overlap, and dropped when the overlap ends, so that its bytes do not
//! outlive it. A replaced snapshot, and with it the secret and the rendered bytes, is zeroized
//! when the last request holding it finishes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ::http::HeaderValue;
use arc_swap::ArcSwapOption;

use crate::secret::{Secret, SecretError};

use super::lock;
use super::refresher::Fetched;

/// One immutable generation of a token's value.
pub struct TokenValue {
    pub secret: Secret,
    /// 1 for the first value loaded, +1 for every rotation.
    pub generation: u64,
    pub fingerprint: String,
    pub loaded_at: SystemTime,
    /// When the value stops being usable; `None` when the source gives no expiry.
    pub expires_at: Option<SystemTime>,
    /// One rendered header value per format registered with the token, by format index.
    pub headers: Box<[HeaderValue]>,
}

impl TokenValue {
    /// Whether the value may still be sent.
    pub fn is_usable(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|e| now < e)
    }
}

/// A credential for one request: the rendered header and what a retry needs to know.
pub struct Credential {
    pub header: HeaderValue,
    pub generation: u64,
    /// Published within the retry overlap: a 401 to it may be retried.
    pub fresh: bool,
}

/// The value a rotation replaced, kept (rendered) for the retry overlap.
struct Previous {
    generation: u64,
    headers: Box<[HeaderValue]>,
    until: SystemTime,
}

/// A publication: the value now current and the one it replaced.
pub(super) struct Published {
    pub value: Arc<TokenValue>,
    pub previous: Option<Arc<TokenValue>>,
}

/// The current value, the previous one while the overlap lasts, and the formats rendered for
/// every new value.
pub(super) struct Cell {
    current: ArcSwapOption<TokenValue>,
    /// The replaced value's headers, for retries during the overlap after a rotation; cleared
    /// when the overlap ends, so the retired value's bytes do not outlive it.
    previous: Arc<ArcSwapOption<Previous>>,
    /// `retry.overlap`: how long a new value counts as fresh and the replaced one is kept.
    overlap: Duration,
    /// Header formats the routes use, rendered for every new value (index = format id).
    /// Only ever appended to, so the indices routes hold stay valid across reloads. Held while
    /// a value is rendered and stored, so a value never lacks a format a route was given.
    formats: Mutex<Vec<String>>,
}

impl Cell {
    pub(super) fn new(formats: Vec<String>, overlap: Duration) -> Cell {
        Cell {
            current: ArcSwapOption::empty(),
            previous: Arc::new(ArcSwapOption::empty()),
            overlap,
            formats: Mutex::new(formats),
        }
    }

    /// The header for `format` if a usable value is loaded, with its generation and whether a
    /// 401 to it may be retried. Lock-free: one atomic load and a header clone.
    #[inline]
    pub(super) fn credential(&self, format: usize) -> Option<Credential> {
        let guard = self.current.load();
        let value = guard.as_ref()?;
        let overlap = self.overlap;
        let needs_clock = value.expires_at.is_some() || !overlap.is_zero();
        let now = if needs_clock { SystemTime::now() } else { SystemTime::UNIX_EPOCH };
        if value.expires_at.is_some() && !value.is_usable(now) {
            return None;
        }
        Some(Credential {
            header: value.headers[format].clone(),
            generation: value.generation,
            fresh: !overlap.is_zero() && now < value.loaded_at + overlap,
        })
    }

    /// For a 401 to generation `used`: `Some` while the overlap after the rotation that
    /// replaced it lasts, holding the replaced value's header for `format` (if it had one).
    pub(super) fn previous_header(&self, format: usize, used: u64) -> Option<Option<HeaderValue>> {
        let prev = self.previous.load();
        let prev = prev.as_ref()?;
        (prev.generation + 1 == used && SystemTime::now() < prev.until).then(|| prev.headers.get(format).cloned())
    }

    /// The current snapshot, owned.
    pub(super) fn current(&self) -> Option<Arc<TokenValue>> {
        self.current.load_full()
    }

    /// The current snapshot, borrowed for a moment (never across an await).
    pub(super) fn load(&self) -> arc_swap::Guard<Option<Arc<TokenValue>>> {
        self.current.load()
    }

    pub(super) fn is_ready(&self) -> bool {
        self.current.load().as_ref().is_some_and(|v| v.is_usable(SystemTime::now()))
    }

    /// The index of `format` among the rendered headers.
    pub(super) fn format_index(&self, format: &str) -> Option<usize> {
        lock(&self.formats).iter().position(|f| f == format)
    }

    /// Adds header formats a reloaded config needs and re-renders the current value for them
    /// (same generation: the value did not change).
    pub(super) fn add_formats(&self, wanted: &[String]) -> Result<(), SecretError> {
        let mut formats = lock(&self.formats);
        let missing: Vec<&String> = wanted.iter().filter(|f| !formats.contains(f)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        formats.extend(missing.into_iter().cloned());
        if let Some(cur) = self.current.load_full() {
            let mut headers = Vec::with_capacity(formats.len());
            for f in formats.iter() {
                headers.push(cur.secret.render_header(f)?);
            }
            self.current.store(Some(Arc::new(TokenValue {
                secret: cur.secret.duplicate(),
                generation: cur.generation,
                fingerprint: cur.fingerprint.clone(),
                loaded_at: cur.loaded_at,
                expires_at: cur.expires_at,
                headers: headers.into_boxed_slice(),
            })));
        }
        Ok(())
    }

    /// Renders a fetched value for every format and publishes it as the next generation.
    /// `before` sees the new value (and the one it replaces) before any request can: what it
    /// records comes before anything a request carrying the value causes.
    pub(super) fn publish(
        &self,
        fetched: Fetched,
        before: impl FnOnce(&TokenValue, Option<&TokenValue>),
    ) -> Result<Published, SecretError> {
        let formats = lock(&self.formats);
        let mut headers = Vec::with_capacity(formats.len());
        for format in formats.iter() {
            headers.push(fetched.secret.render_header(format)?);
        }
        let previous = self.current.load_full();
        let generation = previous.as_ref().map_or(1, |p| p.generation + 1);
        let now = SystemTime::now();
        let value = TokenValue {
            fingerprint: fetched.secret.fingerprint(),
            secret: fetched.secret,
            generation,
            loaded_at: now,
            expires_at: fetched.expires_at,
            headers: headers.into_boxed_slice(),
        };
        before(&value, previous.as_deref());
        let overlap = self.overlap;
        self.previous.store(match &previous {
            Some(p) if !overlap.is_zero() => {
                let kept =
                    Arc::new(Previous { generation: p.generation, headers: p.headers.clone(), until: now + overlap });
                let slot = self.previous.clone();
                let weak = Arc::downgrade(&kept);
                tokio::spawn(async move {
                    tokio::time::sleep(overlap).await;
                    // Clear it unless a later rotation already replaced it.
                    slot.rcu(|cur| match (cur, weak.upgrade()) {
                        (Some(c), Some(k)) if Arc::ptr_eq(c, &k) => None,
                        (c, _) => c.clone(),
                    });
                });
                Some(kept)
            }
            _ => None,
        });
        let value = Arc::new(value);
        self.current.store(Some(value.clone()));
        drop(formats);
        Ok(Published { value, previous })
    }
}
