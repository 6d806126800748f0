//! When tokens are fetched again: ahead of expiry by `refresh_before` (a duration or a share
//! of the lifetime), on the `refresh` interval for values without an expiry, and with capped
//! exponential backoff after a failure. Every delay carries jitter, so a fleet of sidecars
//! started together does not reach its identity provider in the same second.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{RefreshBefore, RefreshConfig};

use super::Token;

/// The shortest wait between two scheduled fetches.
const MIN_DELAY: Duration = Duration::from_millis(100);
/// The first retry after a failure, doubled per consecutive failure up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The most jitter taken off a delay: 10 % of it, and never more than this.
const MAX_JITTER: Duration = Duration::from_secs(30);

/// The delay until the next fetch after a good one; `None` when there is nothing to schedule.
pub fn after_success(config: &RefreshConfig, value: Option<(SystemTime, Option<SystemTime>)>) -> Option<Duration> {
    let delay = match value {
        Some((loaded_at, Some(expires_at))) => {
            let lifetime = expires_at.duration_since(loaded_at).unwrap_or_default();
            let mut before = match config.before {
                RefreshBefore::Duration(d) => d,
                RefreshBefore::Ratio(r) => lifetime.mul_f64(r),
            };
            // A lead longer than the lifetime would mean fetching in a loop: halve instead.
            if before >= lifetime {
                before = lifetime / 2;
            }
            let refresh_at = expires_at - before;
            refresh_at.duration_since(SystemTime::now()).unwrap_or_default()
        }
        _ => config.interval?,
    };
    Some(jittered(delay).max(MIN_DELAY))
}

/// The wait before retry number `failures` (1 for the first failure).
pub fn backoff(failures: u32) -> Duration {
    let exp = FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    jittered(exp.min(MAX_BACKOFF)).max(MIN_DELAY)
}

/// `delay` less a random share of up to 10 % (at most [`MAX_JITTER`]).
fn jittered(delay: Duration) -> Duration {
    let spread = (delay / 10).min(MAX_JITTER);
    delay - spread.mul_f64(fastrand::f64())
}

/// Runs each scheduled token's refresh loop until `shutdown` turns true.
pub fn spawn(tokens: Vec<Arc<Token>>, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    tokens
        .into_iter()
        .filter(|t| t.is_scheduled())
        .map(|t| {
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = run(&t) => {}
                    _ = shutdown.wait_for(|s| *s) => {}
                }
            })
        })
        .collect()
}

async fn run(token: &Token) {
    // The generation whose expiry was already reported, so it is reported once.
    let mut expired_reported = 0;
    loop {
        // Register for a schedule change before reading the schedule, so none is missed.
        let changed = token.refresher.schedule_changed().notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let next_refresh = token.refresher.next_refresh();
        let current = token.current();
        let expiry = current
            .as_ref()
            .filter(|v| v.generation != expired_reported)
            .and_then(|v| v.expires_at.map(|e| (v.generation, e)));
        let expiry_at = expiry.map(|(_, e)| Instant::now() + e.duration_since(SystemTime::now()).unwrap_or_default());
        let wake = match (next_refresh, expiry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match wake {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = &mut changed => continue,
                }
            }
            None => {
                changed.await;
                continue;
            }
        }
        if let Some((generation, _)) = expiry {
            if expiry_at.is_some_and(|e| e <= Instant::now()) {
                expired_reported = generation;
                tracing::error!(token = %token.name(), generation, "token expired without a successful refresh; its routes answer 503");
                metrics::gauge!("sidekey_token_ready", "token" => token.name().to_owned()).set(0.0);
                token.audit(
                    "expired",
                    super::audit_fields([
                        ("generation", generation.into()),
                        ("fingerprint", current.as_ref().map(|v| v.fingerprint.clone()).into()),
                    ]),
                    true,
                );
            }
        }
        if next_refresh.is_some_and(|n| n <= Instant::now()) {
            token.refresh().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(before: RefreshBefore, interval: Option<Duration>) -> RefreshConfig {
        RefreshConfig { interval, before }
    }

    #[test]
    fn refreshes_at_a_share_of_the_lifetime_with_jitter() {
        let now = SystemTime::now();
        for _ in 0..100 {
            let d =
                after_success(&cfg(RefreshBefore::Ratio(0.2), None), Some((now, Some(now + Duration::from_secs(100)))))
                    .unwrap();
            // 80 s, less at most 10 % jitter.
            assert!(d <= Duration::from_secs(80) && d >= Duration::from_secs(71), "{d:?}");
        }
    }

    #[test]
    fn a_lead_longer_than_the_lifetime_halves_it() {
        let now = SystemTime::now();
        let d = after_success(
            &cfg(RefreshBefore::Duration(Duration::from_secs(30)), None),
            Some((now, Some(now + Duration::from_secs(8)))),
        )
        .unwrap();
        assert!(d <= Duration::from_secs(4) && d >= Duration::from_millis(3500), "{d:?}");
    }

    #[test]
    fn values_without_expiry_use_the_interval() {
        let now = SystemTime::now();
        let d =
            after_success(&cfg(RefreshBefore::default(), Some(Duration::from_secs(300))), Some((now, None))).unwrap();
        assert!(d <= Duration::from_secs(300) && d >= Duration::from_secs(270));
        assert_eq!(after_success(&cfg(RefreshBefore::default(), None), Some((now, None))), None);
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        assert!(backoff(1) <= Duration::from_secs(1));
        assert!(backoff(3) <= Duration::from_secs(4) && backoff(3) >= Duration::from_millis(3600));
        assert!(backoff(30) <= MAX_BACKOFF && backoff(30) >= Duration::from_secs(54));
    }
}
