//! What is observed of a token in use: request and 401 counters, the per-minute usage
//! history, the 401 window that detects a propagation failure (or a 401 burst), and the
//! throttle on refreshes a 401 forces. Requests touch only relaxed atomic counters here; the
//! mutexes are taken on a 401, a rotation, a minute's sample or an admin read.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::config::{On401, PropagationConfig};

use super::cell::Cell;
use super::{audit_fields, lock, Events};

/// The 401s of one window, for propagation-failure detection.
struct Tracker {
    start: Instant,
    /// The window opened with a rotation (else: a plain span of the current token's life).
    after_rotation: bool,
    generation: u64,
    fingerprint: Option<String>,
    previous_fingerprint: Option<String>,
    base_requests: u64,
    base_unauthorized: u64,
    /// Reported already: one report (and one action) per window.
    reported: bool,
}

/// Samples of a token's cumulative counters, one a minute, the last hour's worth: usage
/// history at no cost to requests (the counters exist anyway) and in bounded memory.
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: SystemTime,
    requests: u64,
    unauthorized: u64,
}

/// Requests and 401s in one interval of the usage history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Start of the interval, Unix seconds.
    pub start: u64,
    pub requests: u64,
    pub unauthorized: u64,
}

impl History {
    /// Samples kept: an hour of minutes, plus the one the first interval starts from.
    pub const KEEP: usize = 61;

    pub fn record(&mut self, at: SystemTime, requests: u64, unauthorized: u64) {
        if self.samples.len() == Self::KEEP {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample { at, requests, unauthorized });
    }

    /// The intervals between samples, oldest first, and the current one up to `now`.
    pub fn intervals(&self, now: SystemTime, requests: u64, unauthorized: u64) -> Vec<Usage> {
        let current = Sample { at: now, requests, unauthorized };
        self.samples
            .iter()
            .zip(self.samples.iter().skip(1).chain(std::iter::once(&current)))
            .map(|(a, b)| Usage {
                start: a.at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                requests: b.requests.saturating_sub(a.requests),
                unauthorized: b.unauthorized.saturating_sub(a.unauthorized),
            })
            .collect()
    }
}

/// A detected propagation failure (or 401 burst), as reported.
#[derive(Debug, Clone)]
pub struct PropagationFailure {
    pub token: String,
    pub route: String,
    pub generation: u64,
    pub fingerprint: Option<String>,
    pub previous_fingerprint: Option<String>,
    pub after_rotation: bool,
    pub unauthorized: u64,
    pub requests: u64,
    /// `on_401 = "refresh"`: the caller starts one early refresh.
    pub refresh: bool,
}

/// One token's counters, usage history, 401 window and forced-refresh throttle.
pub(super) struct Observers {
    /// How 401s are judged (`propagation`) and answered (`on_401`).
    propagation: PropagationConfig,
    on_401: On401,
    /// Requests sent with this token (all generations).
    requests: AtomicU64,
    /// Upstream 401s answered to requests carrying this token.
    unauthorized: AtomicU64,
    /// `unauthorized` when the current value was published.
    unauthorized_at_publish: AtomicU64,
    tracker: Mutex<Tracker>,
    propagation_failures: AtomicU64,
    /// Per-minute samples of `requests` and `unauthorized` for the last hour.
    history: Mutex<History>,
    /// When a 401 last forced a refresh (a retry with no previous value, or `on_401 =
    /// "refresh"`): such refreshes are rate-limited, so a token the upstream keeps refusing
    /// does not turn every request into a call to the identity provider.
    last_forced: Mutex<Option<Instant>>,
}

impl Observers {
    pub(super) fn new(propagation: PropagationConfig, on_401: On401) -> Observers {
        Observers {
            propagation,
            on_401,
            requests: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
            unauthorized_at_publish: AtomicU64::new(0),
            tracker: Mutex::new(Tracker {
                start: Instant::now(),
                after_rotation: false,
                generation: 0,
                fingerprint: None,
                previous_fingerprint: None,
                base_requests: 0,
                base_unauthorized: 0,
                reported: false,
            }),
            propagation_failures: AtomicU64::new(0),
            history: Mutex::new(History::default()),
            last_forced: Mutex::new(None),
        }
    }

    #[inline]
    pub(super) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A new value was published: it opens a new 401 window.
    pub(super) fn published(
        &self,
        generation: u64,
        fingerprint: String,
        previous_fingerprint: Option<String>,
        after_rotation: bool,
    ) {
        let unauthorized = self.unauthorized.load(Ordering::Relaxed);
        self.unauthorized_at_publish.store(unauthorized, Ordering::Relaxed);
        *lock(&self.tracker) = Tracker {
            start: Instant::now(),
            after_rotation,
            generation,
            fingerprint: Some(fingerprint),
            previous_fingerprint,
            base_requests: self.requests.load(Ordering::Relaxed),
            base_unauthorized: unauthorized,
            reported: false,
        };
    }

    /// Whether a 401 may force a refresh now (none was forced within `interval`); if so,
    /// records this one.
    pub(super) fn may_force(&self, interval: Duration) -> bool {
        let mut last = lock(&self.last_forced);
        let now = Instant::now();
        if last.is_some_and(|l| now < l + interval) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Counts an upstream 401 to a request `route` sent with this token, and reports a
    /// propagation failure when the window's 401s pass the configured threshold. `cell` gives
    /// the value a window outside a rotation's is about.
    pub(super) fn unauthorized(&self, events: &Events, cell: &Cell, route: &str) -> Option<PropagationFailure> {
        let unauthorized = self.unauthorized.fetch_add(1, Ordering::Relaxed) + 1;
        let requests = self.requests.load(Ordering::Relaxed);
        let cfg = &self.propagation;
        let now = Instant::now();
        let mut t = lock(&self.tracker);
        if now >= t.start + cfg.window {
            // Outside a rotation's window: a fresh span, this 401 and its request included.
            let current = cell.load();
            *t = Tracker {
                start: now,
                after_rotation: false,
                generation: current.as_ref().map_or(0, |v| v.generation),
                fingerprint: current.as_ref().map(|v| v.fingerprint.clone()),
                previous_fingerprint: None,
                base_requests: requests.saturating_sub(1),
                base_unauthorized: unauthorized - 1,
                reported: false,
            };
        }
        let w_unauthorized = unauthorized - t.base_unauthorized;
        let w_requests = requests.saturating_sub(t.base_requests).max(w_unauthorized);
        if t.reported || w_unauthorized < cfg.min || (w_unauthorized as f64) < cfg.ratio * w_requests as f64 {
            return None;
        }
        t.reported = true;
        let failure = PropagationFailure {
            token: events.name().to_owned(),
            route: route.to_owned(),
            generation: t.generation,
            fingerprint: t.fingerprint.clone(),
            previous_fingerprint: t.previous_fingerprint.clone(),
            after_rotation: t.after_rotation,
            unauthorized: w_unauthorized,
            requests: w_requests,
            // One early refresh per window at most, whatever the generation.
            refresh: self.on_401 == On401::Refresh && self.may_force(cfg.window),
        };
        drop(t);
        events.audit(
            "propagation_failure",
            audit_fields([
                ("route", failure.route.as_str().into()),
                ("generation", failure.generation.into()),
                ("fingerprint", failure.fingerprint.clone().into()),
                ("previous", failure.previous_fingerprint.clone().into()),
                ("after_rotation", failure.after_rotation.into()),
                ("unauthorized", failure.unauthorized.into()),
                ("requests", failure.requests.into()),
            ]),
            true,
        );
        self.propagation_failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sidekey_propagation_failures_total", "token" => events.name().to_owned()).increment(1);
        let what = if failure.after_rotation {
            "upstream refuses the rotated token: propagation failure"
        } else {
            "upstream refuses the current token: 401 burst"
        };
        tracing::error!(
            route = %failure.route,
            token = %failure.token,
            generation = failure.generation,
            fingerprint = failure.fingerprint.as_deref().unwrap_or("-"),
            previous = failure.previous_fingerprint.as_deref().unwrap_or("-"),
            unauthorized = failure.unauthorized,
            requests = failure.requests,
            window_secs = cfg.window.as_secs_f64(),
            action = if self.on_401 == On401::Refresh { "refresh" } else { "report" },
            "{what}"
        );
        Some(failure)
    }

    /// Takes this minute's usage sample.
    pub(super) fn sample_usage(&self, at: SystemTime) {
        lock(&self.history).record(at, self.requests(), self.unauthorized_count());
    }

    /// Requests and 401s per minute for the last hour, the current minute last.
    pub(super) fn usage_history(&self) -> Vec<Usage> {
        lock(&self.history).intervals(SystemTime::now(), self.requests(), self.unauthorized_count())
    }

    pub(super) fn propagation_failures(&self) -> u64 {
        self.propagation_failures.load(Ordering::Relaxed)
    }

    pub(super) fn unauthorized_since_rotation(&self) -> u64 {
        self.unauthorized_count().saturating_sub(self.unauthorized_at_publish.load(Ordering::Relaxed))
    }

    pub(super) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub(super) fn unauthorized_count(&self) -> u64 {
        self.unauthorized.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_an_hour_of_minutes_and_reports_deltas() {
        let mut h = History::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for i in 0..100u64 {
            h.record(t0 + Duration::from_secs(60 * i), i * 10, i);
        }
        assert_eq!(h.samples.len(), History::KEEP);
        let now = t0 + Duration::from_secs(60 * 99 + 30);
        let iv = h.intervals(now, 99 * 10 + 4, 99);
        assert_eq!(iv.len(), History::KEEP);
        assert!(iv[..60].iter().all(|u| u.requests == 10 && u.unauthorized == 1), "{iv:?}");
        assert_eq!(iv[60], Usage { start: 1_800_000_000 + 60 * 99, requests: 4, unauthorized: 0 });
        assert_eq!(iv[0].start, 1_800_000_000 + 60 * 39);
    }
}
