//! The refresher: fetches a token's value from its source, validates it, publishes it into the
//! cell, and sets when the scheduler ([`super::schedule`]) fetches next. Triggers that arrive
//! while a fetch runs (timer, forced refresh, file event, 401) fold into that one fetch.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ::http::{HeaderName, Request, StatusCode, Uri};
use http_body_util::Full;

use crate::config::{RefreshConfig, SourceConfig, TokenConfig, ValidateConfig};
use crate::secret::Secret;
use crate::upstream::{build_source_client, SourceClient};

use super::cell::{Cell, Published};
use super::observers::Observers;
use super::{
    audit_fields, env, exchange, exec, fetch, file, http, identity, lock, oauth2, schedule, unix_seconds, web_identity,
    Events, SourceError,
};

/// Where a token's value comes from.
#[derive(Debug)]
pub enum Source {
    Env(env::EnvSource),
    File(file::FileSource),
    OAuth2(oauth2::OAuth2Source),
    Http(http::HttpSource),
    Exec(exec::ExecSource),
    AwsWebIdentity(web_identity::WebIdentitySource),
    TokenExchange(exchange::TokenExchangeSource),
}

/// A freshly fetched value, not yet published.
pub struct Fetched {
    pub secret: Secret,
    pub expires_at: Option<SystemTime>,
}

/// What a refresh did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    /// The source holds the value already published.
    Unchanged { generation: u64 },
    /// A new value was published with this generation.
    Rotated { generation: u64 },
    /// The source failed; the last good value (if any) stays.
    Failed { error: String },
    /// The fresh value failed validation; the current one stays.
    Rejected { reason: String },
}

/// What the admin API and logs know of a token besides its value.
#[derive(Debug, Default, Clone)]
pub struct Status {
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    pub last_rotation: Option<SystemTime>,
    /// Failed or rejected refreshes since the last good one.
    pub consecutive_failures: u32,
    /// When the scheduler will fetch next, if it will.
    pub next_refresh: Option<SystemTime>,
}

/// The check a fresh value passes before it is published.
struct Validator {
    url: Uri,
    expect: StatusCode,
    header: HeaderName,
    format: String,
    client: SourceClient,
    timeout: Duration,
}

impl Validator {
    fn new(v: &ValidateConfig, clients: &mut ClientCache) -> Result<Validator, String> {
        Ok(Validator {
            url: v.url.parse().map_err(|e| format!("validate.url: {e}"))?,
            expect: StatusCode::from_u16(v.expect).map_err(|e| e.to_string())?,
            header: HeaderName::from_bytes(v.header.as_bytes()).map_err(|e| e.to_string())?,
            format: v.format.clone(),
            client: clients.get(v.ca_file.as_ref())?,
            timeout: v.timeout,
        })
    }

    async fn check(&self, secret: &Secret) -> Result<(), SourceError> {
        // A value the check's format cannot carry: the rendering error's own text, as before.
        let value = secret.render_header(&self.format).map_err(|e| SourceError::Config(e.to_string()))?;
        let req = Request::get(self.url.clone())
            .header(&self.header, value)
            .body(Full::default())
            .map_err(|e| SourceError::Config(e.to_string()))?;
        let (status, _) = fetch::exchange(&self.client, req, self.timeout).await?;
        if status == self.expect {
            Ok(())
        } else {
            Err(SourceError::ValidationFailed { url: self.url.clone(), status, expect: self.expect })
        }
    }
}

/// Clients for the network sources, one per extra CA file.
pub(super) struct ClientCache {
    pub(super) audit: Option<crate::audit::Audit>,
    pub(super) global_ca: Option<PathBuf>,
    pub(super) connect_timeout: Duration,
    clients: HashMap<Option<PathBuf>, SourceClient>,
}

impl ClientCache {
    pub(super) fn new(
        audit: Option<crate::audit::Audit>,
        global_ca: Option<PathBuf>,
        connect_timeout: Duration,
    ) -> ClientCache {
        ClientCache { audit, global_ca, connect_timeout, clients: HashMap::new() }
    }

    fn get(&mut self, ca_file: Option<&PathBuf>) -> Result<SourceClient, String> {
        let key = ca_file.cloned();
        if let Some(c) = self.clients.get(&key) {
            return Ok(c.clone());
        }
        let files: Vec<PathBuf> = self.global_ca.iter().chain(ca_file).cloned().collect();
        let c = build_source_client(&files, self.connect_timeout)?;
        self.clients.insert(key, c.clone());
        Ok(c)
    }
}

/// One token's source, validation, refresh coalescing and schedule state.
pub(super) struct Refresher {
    source: Source,
    /// The logins of a workload-identity form (`None` for the other sources).
    logins: Option<Arc<identity::Logins>>,
    validator: Option<Validator>,
    refresh_config: RefreshConfig,
    status: Mutex<Status>,
    /// Serializes refreshes; with `attempts` and `last_outcome` it folds triggers that arrive
    /// while a fetch runs (timer, forced refresh, file event) into that one fetch.
    refresh_lock: tokio::sync::Mutex<()>,
    /// Refreshes asked for (schedule, forced, file change, 401), each counted when asked for:
    /// one a 401 starts is counted before that 401 is answered.
    refreshes_started: AtomicU64,
    attempts: AtomicU64,
    last_outcome: Mutex<Option<Refreshed>>,
    /// When the scheduler should fetch next; set after every refresh.
    next_refresh: Mutex<Option<Instant>>,
    /// Wakes the scheduler when `next_refresh` changes.
    schedule_changed: tokio::sync::Notify,
    consecutive_failures: AtomicU32,
    /// The published generation, for whoever waits on a rotation (tests, the demo).
    generation_tx: tokio::sync::watch::Sender<u64>,
}

impl Refresher {
    pub(super) fn new(name: &str, config: &TokenConfig, clients: &mut ClientCache) -> Result<Refresher, String> {
        let logins = identity::Logins::for_source(name, &config.source, clients.audit.clone());
        let source = match &config.source {
            SourceConfig::Env(c) => Source::Env(env::EnvSource::new(c)),
            SourceConfig::File(c) => Source::File(file::FileSource::new(c)),
            SourceConfig::OAuth2(c) => {
                let client = clients.get(c.ca_file.as_ref())?;
                Source::OAuth2(oauth2::OAuth2Source::new(c, client, logins.clone()).map_err(built)?)
            }
            SourceConfig::Http(c) => {
                let client = clients.get(c.ca_file.as_ref())?;
                Source::Http(http::HttpSource::new(c, client, logins.clone()).map_err(built)?)
            }
            SourceConfig::Exec(c) => Source::Exec(exec::ExecSource::new(c)),
            SourceConfig::AwsWebIdentity(c) => Source::AwsWebIdentity(web_identity::WebIdentitySource::new(
                c,
                name,
                clients.get(c.ca_file.as_ref())?,
                logins.clone().ok_or("no login record")?,
            )),
            SourceConfig::TokenExchange(c) => Source::TokenExchange(
                exchange::TokenExchangeSource::new(
                    c,
                    clients.get(c.ca_file.as_ref())?,
                    logins.clone().ok_or("no login record")?,
                )
                .map_err(built)?,
            ),
        };
        let validator = match &config.validate {
            Some(v) => Some(Validator::new(v, clients)?),
            None => None,
        };
        Ok(Refresher {
            source,
            logins,
            validator,
            refresh_config: config.refresh.clone(),
            status: Mutex::new(Status::default()),
            refresh_lock: tokio::sync::Mutex::new(()),
            refreshes_started: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            last_outcome: Mutex::new(None),
            next_refresh: Mutex::new(None),
            schedule_changed: tokio::sync::Notify::new(),
            consecutive_failures: AtomicU32::new(0),
            generation_tx: tokio::sync::watch::channel(0).0,
        })
    }

    pub(super) fn source(&self) -> &Source {
        &self.source
    }

    pub(super) fn logins(&self) -> Option<&identity::Logins> {
        self.logins.as_deref()
    }

    /// Whether the scheduler drives this token (file tokens follow their file instead).
    pub(super) fn is_scheduled(&self) -> bool {
        !matches!(self.source, Source::File(_))
    }

    /// When the scheduler should fetch next.
    pub(super) fn next_refresh(&self) -> Option<Instant> {
        *lock(&self.next_refresh)
    }

    /// Notified whenever [`Refresher::next_refresh`] changes.
    pub(super) fn schedule_changed(&self) -> &tokio::sync::Notify {
        &self.schedule_changed
    }

    pub(super) fn status(&self) -> Status {
        let mut st = lock(&self.status).clone();
        st.consecutive_failures = self.consecutive_failures.load(Ordering::Relaxed);
        st.next_refresh =
            lock(&self.next_refresh).map(|at| SystemTime::now() + at.saturating_duration_since(Instant::now()));
        st
    }

    pub(super) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation_tx.subscribe()
    }

    /// Counts a refresh asked for.
    pub(super) fn count_started(&self) {
        self.refreshes_started.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn refreshes_started(&self) -> u64 {
        self.refreshes_started.load(Ordering::Relaxed)
    }

    /// Fetches, validates and publishes into `cell`, or, when another refresh ran meanwhile,
    /// returns that one's outcome; then reschedules.
    pub(super) async fn run(&self, events: &Events, cell: &Cell, observers: &Observers) -> Refreshed {
        let seen = self.attempts.load(Ordering::SeqCst);
        let _one_at_a_time = self.refresh_lock.lock().await;
        if self.attempts.load(Ordering::SeqCst) != seen {
            if let Some(outcome) = lock(&self.last_outcome).clone() {
                return outcome;
            }
        }
        let outcome = self.fetch_and_publish(events, cell, observers).await;
        *lock(&self.last_outcome) = Some(outcome.clone());
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.reschedule(events, cell, &outcome);
        outcome
    }

    async fn fetch_and_publish(&self, events: &Events, cell: &Cell, observers: &Observers) -> Refreshed {
        let fetched = match &self.source {
            Source::Env(s) => s.fetch(),
            // Read in place: a token file is small and local (a secret volume, a file on the
            // node's disk), a few microseconds' read, as the watcher's `stat` of it before.
            // Handed to tokio's blocking pool, the read waited for that thread to run: on a
            // CPU busy serving requests, up to 8 ms between the file's change and the swap.
            Source::File(f) => f.fetch(),
            Source::OAuth2(s) => s.fetch().await,
            Source::Http(s) => s.fetch().await,
            Source::Exec(s) => s.fetch(events.name()).await,
            Source::AwsWebIdentity(s) => s.fetch().await,
            Source::TokenExchange(s) => s.fetch().await,
        };
        let fetched = match fetched {
            Ok(f) => f,
            Err(error) => return self.fail(events, cell, error.to_string()),
        };
        if let Some(prev) = cell.load().as_ref() {
            if prev.secret == fetched.secret && prev.expires_at == fetched.expires_at {
                lock(&self.status).last_error = None;
                return Refreshed::Unchanged { generation: prev.generation };
            }
        }
        if let Some(v) = &self.validator {
            if let Err(reason) = v.check(&fetched.secret).await {
                return self.reject(events, cell, reason.to_string());
            }
        }
        self.publish(events, cell, observers, fetched)
    }

    fn fail(&self, events: &Events, cell: &Cell, error: String) -> Refreshed {
        // The same failure again (a broken file seen by every watch event, a retry of an
        // endpoint still down) is counted, but logged and audited only when it first happens.
        let repeated = lock(&self.status).last_error.as_deref() == Some(error.as_str());
        if repeated {
            tracing::debug!(token = %events.name(), error = %error, "token refresh failed again");
        } else {
            let current = cell.load();
            if current.is_some() {
                tracing::warn!(token = %events.name(), error = %error, "token refresh failed; keeping the last good value");
            } else {
                tracing::warn!(token = %events.name(), error = %error, "token load failed; no value yet");
            }
            events.audit(
                "refresh_failed",
                audit_fields([
                    ("error", error.as_str().into()),
                    ("fingerprint", current.as_ref().map(|v| v.fingerprint.clone()).into()),
                    ("generation", current.as_ref().map(|v| v.generation).into()),
                ]),
                false,
            );
        }
        count_rotation(events, "failure");
        self.record_error(&error);
        Refreshed::Failed { error }
    }

    fn reject(&self, events: &Events, cell: &Cell, reason: String) -> Refreshed {
        tracing::warn!(token = %events.name(), reason = %reason, "fresh token rejected by validation; keeping the current one");
        let current = cell.load();
        events.audit(
            "rejected",
            audit_fields([
                ("reason", reason.as_str().into()),
                ("fingerprint", current.as_ref().map(|v| v.fingerprint.clone()).into()),
                ("generation", current.as_ref().map(|v| v.generation).into()),
            ]),
            true,
        );
        count_rotation(events, "rejected");
        self.record_error(&format!("rejected: {reason}"));
        Refreshed::Rejected { reason }
    }

    fn record_error(&self, error: &str) {
        let mut st = lock(&self.status);
        st.last_error = Some(error.to_owned());
        st.last_error_at = Some(SystemTime::now());
    }

    /// Publishes a fetched value as the next generation, opens its 401 window and announces it.
    fn publish(&self, events: &Events, cell: &Cell, observers: &Observers, fetched: Fetched) -> Refreshed {
        // Recorded before the value is published: once it is, a request may carry it and its
        // 401s may be audited (a propagation failure naming this generation), and those must
        // not come before the rotation in the chain (they did, on a busy machine).
        let published = cell.publish(fetched, |value, previous| {
            events.audit(
                if previous.is_some() { "rotated" } else { "loaded" },
                audit_fields([
                    ("fingerprint", value.fingerprint.as_str().into()),
                    ("generation", value.generation.into()),
                    ("previous", previous.map(|p| p.fingerprint.clone()).into()),
                    ("expires_at", value.expires_at.map(|e| humantime::format_rfc3339_seconds(e).to_string()).into()),
                ]),
                true,
            );
        });
        let Published { value, previous } = match published {
            Ok(p) => p,
            Err(e) => return self.fail(events, cell, e.to_string()),
        };
        let (generation, now, expires_at) = (value.generation, value.loaded_at, value.expires_at);
        let fingerprint = value.fingerprint.clone();
        drop(value);
        observers.published(
            generation,
            fingerprint.clone(),
            previous.as_ref().map(|p| p.fingerprint.clone()),
            previous.is_some(),
        );
        self.generation_tx.send_replace(generation);
        {
            let mut st = lock(&self.status);
            st.last_error = None;
            if previous.is_some() {
                st.last_rotation = Some(now);
            }
        }
        let name = events.name().to_owned();
        metrics::gauge!("sidekey_token_generation", "token" => name.clone()).set(generation as f64);
        metrics::gauge!("sidekey_token_ready", "token" => name.clone()).set(1.0);
        // 0 for a value without expiry: a series cannot be removed, and a stale timestamp would
        // read as an expiry coming.
        metrics::gauge!("sidekey_token_expiry_timestamp_seconds", "token" => name.clone())
            .set(expires_at.map_or(0.0, unix_seconds));
        match previous {
            Some(prev) => {
                count_rotation(events, "success");
                metrics::gauge!("sidekey_token_last_rotation_timestamp_seconds", "token" => name)
                    .set(unix_seconds(now));
                tracing::info!(token = %events.name(), generation, fingerprint = %fingerprint, previous = %prev.fingerprint, "token rotated");
            }
            None => tracing::info!(token = %events.name(), generation, fingerprint = %fingerprint, "token loaded"),
        }
        Refreshed::Rotated { generation }
    }

    /// Sets when the scheduler fetches next, after a refresh with this outcome.
    fn reschedule(&self, events: &Events, cell: &Cell, outcome: &Refreshed) {
        let name = events.name().to_owned();
        let delay = match outcome {
            Refreshed::Rotated { .. } | Refreshed::Unchanged { .. } => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                metrics::gauge!("sidekey_token_refresh_backoff_seconds", "token" => name.clone()).set(0.0);
                let current = cell.load();
                schedule::after_success(&self.refresh_config, current.as_ref().map(|v| (v.loaded_at, v.expires_at)))
            }
            Refreshed::Failed { .. } | Refreshed::Rejected { .. } => {
                let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                let backoff = schedule::backoff(failures);
                metrics::gauge!("sidekey_token_refresh_backoff_seconds", "token" => name.clone())
                    .set(backoff.as_secs_f64());
                Some(backoff)
            }
        };
        metrics::gauge!("sidekey_token_refresh_failures", "token" => name.clone())
            .set(self.consecutive_failures.load(Ordering::Relaxed) as f64);
        let next = delay.map(|d| Instant::now() + d);
        if let Some(d) = delay {
            metrics::gauge!("sidekey_token_next_refresh_timestamp_seconds", "token" => name)
                .set(unix_seconds(SystemTime::now() + d));
        }
        *lock(&self.next_refresh) = next;
        self.schedule_changed.notify_one();
    }
}

/// A source's construction error, as the store reports it (after `token NAME: `).
fn built(e: SourceError) -> String {
    e.to_string()
}

fn count_rotation(events: &Events, result: &'static str) {
    metrics::counter!("sidekey_token_rotations_total", "token" => events.name().to_owned(), "result" => result)
        .increment(1);
}
