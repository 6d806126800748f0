//! Tokens: the store behind arc-swap, the sources that fill it, and the refresh schedule.
//!
//! Each configured token is one [`Token`]: its current value is an `ArcSwapOption` holding a
//! [`TokenValue`] snapshot (the secret, its generation and fingerprint, and the header values
//! every route renders from it, computed once per generation). Requests load the snapshot
//! without locking and clone the rendered header; a rotation fetches, validates, builds a
//! whole new snapshot and swaps it in. The replaced snapshot, and with it the secret and the
//! rendered bytes, is zeroized when the last request holding it finishes.
//!
//! Sources live one per file: [`env`], [`file`] (with its watcher), [`oauth2`], [`http`],
//! [`exec`]; [`schedule`] decides when each is fetched again.

pub mod assertion;
pub mod aws_credentials;
pub mod env;
pub mod exchange;
pub mod exec;
pub mod fetch;
pub mod file;
pub mod http;
pub mod identity;
pub mod oauth2;
pub mod schedule;
pub mod vault_login;
pub mod web_identity;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ::http::{HeaderName, HeaderValue, Request, StatusCode, Uri};
use arc_swap::ArcSwapOption;
use http_body_util::Full;

use crate::config::{Config, RefreshConfig, SourceConfig, TokenConfig, ValidateConfig};
use crate::secret::Secret;
use crate::upstream::{build_source_client, SourceClient};

/// The least time between two refreshes forced by 401s to a fresh value with no previous one.
const FORCED_RETRY_INTERVAL: Duration = Duration::from_secs(5);

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
    samples: std::collections::VecDeque<Sample>,
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
    async fn check(&self, secret: &Secret) -> Result<(), String> {
        let value = secret.render_header(&self.format).map_err(|e| e.to_string())?;
        let req = Request::get(self.url.clone())
            .header(&self.header, value)
            .body(Full::default())
            .map_err(|e| e.to_string())?;
        let (status, _) = fetch::exchange(&self.client, req, self.timeout).await?;
        if status == self.expect {
            Ok(())
        } else {
            Err(format!("validation at {} answered {status}, expected {}", self.url, self.expect))
        }
    }
}

/// One configured token.
pub struct Token {
    name: Arc<str>,
    /// The definition it was built from: a reload keeps the token (value, schedule) when the
    /// new definition is equal.
    config: TokenConfig,
    kind: &'static str,
    source: Source,
    /// The logins of a workload-identity form (`None` for the other sources).
    logins: Option<Arc<identity::Logins>>,
    validator: Option<Validator>,
    refresh_config: RefreshConfig,
    current: ArcSwapOption<TokenValue>,
    /// The replaced value's headers, for retries during the overlap after a rotation; cleared
    /// when the overlap ends, so the retired value's bytes do not outlive it.
    previous: Arc<ArcSwapOption<Previous>>,
    /// Header formats the routes use, rendered for every new value (index = format id).
    /// Only ever appended to, so the indices routes hold stay valid across reloads.
    formats: Mutex<Vec<String>>,
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
    /// Requests sent with this token (all generations).
    requests: AtomicU64,
    /// Upstream 401s answered to requests carrying this token.
    unauthorized: AtomicU64,
    /// `unauthorized` when the current value was published.
    unauthorized_at_publish: AtomicU64,
    tracker: Mutex<Tracker>,
    propagation_failures: AtomicU64,
    /// The audit log, when configured.
    audit: Option<crate::audit::Audit>,
    /// Per-minute samples of `requests` and `unauthorized` for the last hour.
    history: Mutex<History>,
    /// When a 401 last forced a refresh (a retry with no previous value, or `on_401 =
    /// "refresh"`): such refreshes are rate-limited, so a token the upstream keeps refusing
    /// does not turn every request into a call to the identity provider.
    last_forced: Mutex<Option<Instant>>,
    /// The published generation, for whoever waits on a rotation (tests, the demo).
    generation_tx: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("name", &self.name).field("source", &self.source).finish_non_exhaustive()
    }
}

impl Token {
    fn new(name: &str, config: &TokenConfig, formats: Vec<String>, clients: &mut ClientCache) -> Result<Token, String> {
        let logins = identity::Logins::for_source(name, &config.source, clients.audit.clone());
        let source = match &config.source {
            SourceConfig::Env(c) => Source::Env(env::EnvSource::new(c)),
            SourceConfig::File(c) => Source::File(file::FileSource::new(c)),
            SourceConfig::OAuth2(c) => {
                Source::OAuth2(oauth2::OAuth2Source::new(c, clients.get(c.ca_file.as_ref())?, logins.clone())?)
            }
            SourceConfig::Http(c) => {
                Source::Http(http::HttpSource::new(c, clients.get(c.ca_file.as_ref())?, logins.clone())?)
            }
            SourceConfig::Exec(c) => Source::Exec(exec::ExecSource::new(c)),
            SourceConfig::AwsWebIdentity(c) => Source::AwsWebIdentity(web_identity::WebIdentitySource::new(
                c,
                name,
                clients.get(c.ca_file.as_ref())?,
                logins.clone().ok_or("no login record")?,
            )),
            SourceConfig::TokenExchange(c) => Source::TokenExchange(exchange::TokenExchangeSource::new(
                c,
                clients.get(c.ca_file.as_ref())?,
                logins.clone().ok_or("no login record")?,
            )?),
        };
        let validator = match &config.validate {
            Some(v) => Some(Validator::new(v, clients)?),
            None => None,
        };
        Ok(Token {
            name: name.into(),
            config: config.clone(),
            kind: config.kind(),
            source,
            logins,
            validator,
            refresh_config: config.refresh.clone(),
            current: ArcSwapOption::empty(),
            previous: Arc::new(ArcSwapOption::empty()),
            formats: Mutex::new(formats),
            status: Mutex::new(Status::default()),
            refresh_lock: tokio::sync::Mutex::new(()),
            refreshes_started: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            last_outcome: Mutex::new(None),
            next_refresh: Mutex::new(None),
            schedule_changed: tokio::sync::Notify::new(),
            consecutive_failures: AtomicU32::new(0),
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
            last_forced: Mutex::new(None),
            audit: clients.audit.clone(),
            history: Mutex::new(History::default()),
            generation_tx: tokio::sync::watch::channel(0).0,
        })
    }

    /// Adds header formats a reloaded config needs and re-renders the current value for them
    /// (same generation: the value did not change).
    fn add_formats(&self, wanted: &[String]) -> Result<(), String> {
        let mut formats = lock(&self.formats);
        let missing: Vec<&String> = wanted.iter().filter(|f| !formats.contains(f)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        formats.extend(missing.into_iter().cloned());
        if let Some(cur) = self.current.load_full() {
            let mut headers = Vec::with_capacity(formats.len());
            for f in formats.iter() {
                headers.push(cur.secret.render_header(f).map_err(|e| e.to_string())?);
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

    /// The index of `format` among this token's rendered headers.
    pub fn format_index(&self, format: &str) -> Option<usize> {
        lock(&self.formats).iter().position(|f| f == format)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `source` keyword of the config.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The workload-identity form (`/tokens`' `identity`), if the token uses one.
    pub fn identity(&self) -> Option<&'static str> {
        self.logins.as_ref().map(|l| l.kind())
    }

    /// When the login's own token expires (a Vault client token), where there is one.
    pub fn login_expires_at(&self) -> Option<SystemTime> {
        self.logins.as_ref().and_then(|l| l.expires_at())
    }

    /// The header for `format` if a usable value is loaded, with its generation and whether a
    /// 401 to it may be retried. Lock-free: one atomic load and a header clone.
    #[inline]
    pub fn credential(&self, format: usize) -> Option<Credential> {
        let guard = self.current.load();
        let value = guard.as_ref()?;
        let overlap = self.config.retry.overlap;
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

    /// How 401s right after a rotation are retried.
    pub fn retry_config(&self) -> &crate::config::RetryConfig {
        &self.config.retry
    }

    /// What to retry with after a 401 to generation `used`: the value it replaced, while
    /// the overlap lasts, or else a freshly forced refresh (if it brings a new value).
    pub async fn retry_credential(&self, format: usize, used: u64) -> Option<(HeaderValue, &'static str)> {
        if let Some(prev) = self.previous.load().as_ref() {
            if prev.generation + 1 == used && SystemTime::now() < prev.until {
                return prev.headers.get(format).cloned().map(|h| (h, "previous"));
            }
        }
        if !self.may_force(FORCED_RETRY_INTERVAL) {
            return None;
        }
        self.refresh().await;
        let cur = self.current.load_full()?;
        (cur.generation > used && cur.is_usable(SystemTime::now())).then(|| (cur.headers[format].clone(), "refreshed"))
    }

    /// Whether a 401 may force a refresh now (none was forced within `interval`); if so,
    /// records this one.
    pub fn may_force(&self, interval: Duration) -> bool {
        let mut last = lock(&self.last_forced);
        let now = Instant::now();
        if last.is_some_and(|l| now < l + interval) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// The current snapshot, for status output.
    pub fn current(&self) -> Option<Arc<TokenValue>> {
        self.current.load_full()
    }

    pub fn status(&self) -> Status {
        let mut st = lock(&self.status).clone();
        st.consecutive_failures = self.consecutive_failures.load(Ordering::Relaxed);
        st.next_refresh =
            lock(&self.next_refresh).map(|at| SystemTime::now() + at.saturating_duration_since(Instant::now()));
        st
    }

    pub fn is_ready(&self) -> bool {
        self.current.load().as_ref().is_some_and(|v| v.is_usable(SystemTime::now()))
    }

    /// Watches the published generation (0 until a first value loads).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation_tx.subscribe()
    }

    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an upstream 401 to a request `route` sent with this token, and reports a
    /// propagation failure when the window's 401s pass the configured threshold.
    pub fn observe_unauthorized(&self, route: &str) -> Option<PropagationFailure> {
        let unauthorized = self.unauthorized.fetch_add(1, Ordering::Relaxed) + 1;
        let requests = self.requests.load(Ordering::Relaxed);
        let cfg = &self.config.propagation;
        let now = Instant::now();
        let mut t = lock(&self.tracker);
        if now >= t.start + cfg.window {
            // Outside a rotation's window: a fresh span, this 401 and its request included.
            let current = self.current.load();
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
            token: self.name.to_string(),
            route: route.to_owned(),
            generation: t.generation,
            fingerprint: t.fingerprint.clone(),
            previous_fingerprint: t.previous_fingerprint.clone(),
            after_rotation: t.after_rotation,
            unauthorized: w_unauthorized,
            requests: w_requests,
            // One early refresh per window at most, whatever the generation.
            refresh: self.config.on_401 == crate::config::On401::Refresh && self.may_force(cfg.window),
        };
        drop(t);
        self.audit(
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
        metrics::counter!("sidekey_propagation_failures_total", "token" => self.name.to_string()).increment(1);
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
            action = if self.config.on_401 == crate::config::On401::Refresh { "refresh" } else { "report" },
            "{what}"
        );
        Some(failure)
    }

    /// Takes this minute's usage sample.
    pub fn sample_usage(&self, at: SystemTime) {
        lock(&self.history).record(at, self.requests(), self.unauthorized());
    }

    /// Requests and 401s per minute for the last hour, the current minute last.
    pub fn usage_history(&self) -> Vec<Usage> {
        lock(&self.history).intervals(SystemTime::now(), self.requests(), self.unauthorized())
    }

    /// Propagation failures (and 401 bursts) reported so far.
    pub fn propagation_failures(&self) -> u64 {
        self.propagation_failures.load(Ordering::Relaxed)
    }

    /// Upstream 401s since the current value was published.
    pub fn unauthorized_since_rotation(&self) -> u64 {
        self.unauthorized().saturating_sub(self.unauthorized_at_publish.load(Ordering::Relaxed))
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn unauthorized(&self) -> u64 {
        self.unauthorized.load(Ordering::Relaxed)
    }

    /// Refreshes asked for so far (see [`Token::refresh`]), those folded into one running
    /// included.
    pub fn refreshes_started(&self) -> u64 {
        self.refreshes_started.load(Ordering::Relaxed)
    }

    /// Fetches from the source, validates and publishes the value if it changed. A call made
    /// while another refresh runs waits for it and returns its outcome instead of fetching
    /// again. A failure keeps the last good value and records the error. Counted in
    /// [`Token::refreshes_started`] when called, before the returned future first runs.
    pub fn refresh(&self) -> impl std::future::Future<Output = Refreshed> + Send + '_ {
        self.refreshes_started.fetch_add(1, Ordering::Relaxed);
        self.run_refresh()
    }

    /// [`Token::refresh`] as a task of its own would run it: counted now, run when spawned.
    pub fn refresh_owned(self: Arc<Self>) -> impl std::future::Future<Output = Refreshed> + Send + 'static {
        self.refreshes_started.fetch_add(1, Ordering::Relaxed);
        async move { self.run_refresh().await }
    }

    async fn run_refresh(&self) -> Refreshed {
        let seen = self.attempts.load(Ordering::SeqCst);
        let _one_at_a_time = self.refresh_lock.lock().await;
        if self.attempts.load(Ordering::SeqCst) != seen {
            if let Some(outcome) = lock(&self.last_outcome).clone() {
                return outcome;
            }
        }
        let outcome = self.fetch_and_publish().await;
        *lock(&self.last_outcome) = Some(outcome.clone());
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.reschedule(&outcome);
        outcome
    }

    async fn fetch_and_publish(&self) -> Refreshed {
        let fetched = match &self.source {
            Source::Env(s) => s.fetch(),
            // Read in place: a token file is small and local (a secret volume, a file on the
            // node's disk), a few microseconds' read, as the watcher's `stat` of it before.
            // Handed to tokio's blocking pool, the read waited for that thread to run: on a
            // CPU busy serving requests, up to 8 ms between the file's change and the swap.
            Source::File(f) => f.fetch(),
            Source::OAuth2(s) => s.fetch().await,
            Source::Http(s) => s.fetch().await,
            Source::Exec(s) => s.fetch(&self.name).await,
            Source::AwsWebIdentity(s) => s.fetch().await,
            Source::TokenExchange(s) => s.fetch().await,
        };
        let fetched = match fetched {
            Ok(f) => f,
            Err(error) => return self.fail(error),
        };
        if let Some(prev) = self.current.load().as_ref() {
            if prev.secret == fetched.secret && prev.expires_at == fetched.expires_at {
                lock(&self.status).last_error = None;
                return Refreshed::Unchanged { generation: prev.generation };
            }
        }
        if let Some(v) = &self.validator {
            if let Err(reason) = v.check(&fetched.secret).await {
                return self.reject(reason);
            }
        }
        self.publish(fetched)
    }

    /// Writes a token event to the audit log, if there is one.
    pub(crate) fn audit(
        &self,
        event: &'static str,
        mut fields: serde_json::Map<String, serde_json::Value>,
        sync: bool,
    ) {
        if let Some(a) = &self.audit {
            fields.insert("token".into(), self.name.to_string().into());
            a.event(event, fields, sync);
        }
    }

    fn fail(&self, error: String) -> Refreshed {
        // The same failure again (a broken file seen by every watch event, a retry of an
        // endpoint still down) is counted, but logged and audited only when it first happens.
        let repeated = lock(&self.status).last_error.as_deref() == Some(error.as_str());
        if repeated {
            tracing::debug!(token = %self.name, error = %error, "token refresh failed again");
        } else {
            let current = self.current.load();
            if current.is_some() {
                tracing::warn!(token = %self.name, error = %error, "token refresh failed; keeping the last good value");
            } else {
                tracing::warn!(token = %self.name, error = %error, "token load failed; no value yet");
            }
            self.audit(
                "refresh_failed",
                audit_fields([
                    ("error", error.as_str().into()),
                    ("fingerprint", current.as_ref().map(|v| v.fingerprint.clone()).into()),
                    ("generation", current.as_ref().map(|v| v.generation).into()),
                ]),
                false,
            );
        }
        self.count_rotation("failure");
        self.record_error(&error);
        Refreshed::Failed { error }
    }

    fn reject(&self, reason: String) -> Refreshed {
        tracing::warn!(token = %self.name, reason = %reason, "fresh token rejected by validation; keeping the current one");
        let current = self.current.load();
        self.audit(
            "rejected",
            audit_fields([
                ("reason", reason.as_str().into()),
                ("fingerprint", current.as_ref().map(|v| v.fingerprint.clone()).into()),
                ("generation", current.as_ref().map(|v| v.generation).into()),
            ]),
            true,
        );
        self.count_rotation("rejected");
        self.record_error(&format!("rejected: {reason}"));
        Refreshed::Rejected { reason }
    }

    fn record_error(&self, error: &str) {
        let mut st = lock(&self.status);
        st.last_error = Some(error.to_owned());
        st.last_error_at = Some(SystemTime::now());
    }

    fn count_rotation(&self, result: &'static str) {
        metrics::counter!("sidekey_token_rotations_total", "token" => self.name.to_string(), "result" => result)
            .increment(1);
    }

    /// Publishes a fetched value as the next generation.
    fn publish(&self, fetched: Fetched) -> Refreshed {
        let formats = lock(&self.formats);
        let mut headers = Vec::with_capacity(formats.len());
        for format in formats.iter() {
            match fetched.secret.render_header(format) {
                Ok(h) => headers.push(h),
                Err(e) => return self.fail(e.to_string()),
            }
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
        let fingerprint = value.fingerprint.clone();
        let expires_at = value.expires_at;
        let overlap = self.config.retry.overlap;
        // Recorded before the value is published: once it is, a request may carry it and its
        // 401s may be audited (a propagation failure naming this generation), and those must
        // not come before the rotation in the chain (they did, on a busy machine).
        self.audit(
            if previous.is_some() { "rotated" } else { "loaded" },
            audit_fields([
                ("fingerprint", fingerprint.as_str().into()),
                ("generation", generation.into()),
                ("previous", previous.as_ref().map(|p| p.fingerprint.clone()).into()),
                ("expires_at", expires_at.map(|e| humantime::format_rfc3339_seconds(e).to_string()).into()),
            ]),
            true,
        );
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
        self.current.store(Some(Arc::new(value)));
        drop(formats);
        // A new value opens a new 401 window.
        let unauthorized = self.unauthorized.load(Ordering::Relaxed);
        self.unauthorized_at_publish.store(unauthorized, Ordering::Relaxed);
        *lock(&self.tracker) = Tracker {
            start: Instant::now(),
            after_rotation: previous.is_some(),
            generation,
            fingerprint: Some(fingerprint.clone()),
            previous_fingerprint: previous.as_ref().map(|p| p.fingerprint.clone()),
            base_requests: self.requests.load(Ordering::Relaxed),
            base_unauthorized: unauthorized,
            reported: false,
        };
        self.generation_tx.send_replace(generation);
        {
            let mut st = lock(&self.status);
            st.last_error = None;
            if previous.is_some() {
                st.last_rotation = Some(now);
            }
        }
        let name = self.name.to_string();
        metrics::gauge!("sidekey_token_generation", "token" => name.clone()).set(generation as f64);
        metrics::gauge!("sidekey_token_ready", "token" => name.clone()).set(1.0);
        // 0 for a value without expiry: a series cannot be removed, and a stale timestamp would
        // read as an expiry coming.
        metrics::gauge!("sidekey_token_expiry_timestamp_seconds", "token" => name.clone())
            .set(expires_at.map_or(0.0, unix_seconds));
        match previous {
            Some(prev) => {
                self.count_rotation("success");
                metrics::gauge!("sidekey_token_last_rotation_timestamp_seconds", "token" => name)
                    .set(unix_seconds(now));
                tracing::info!(token = %self.name, generation, fingerprint = %fingerprint, previous = %prev.fingerprint, "token rotated");
            }
            None => tracing::info!(token = %self.name, generation, fingerprint = %fingerprint, "token loaded"),
        }
        Refreshed::Rotated { generation }
    }

    /// Sets when the scheduler fetches next, after a refresh with this outcome.
    fn reschedule(&self, outcome: &Refreshed) {
        let name = self.name.to_string();
        let delay = match outcome {
            Refreshed::Rotated { .. } | Refreshed::Unchanged { .. } => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                metrics::gauge!("sidekey_token_refresh_backoff_seconds", "token" => name.clone()).set(0.0);
                let current = self.current.load();
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

    /// Whether the scheduler drives this token (file tokens follow their file instead).
    fn is_scheduled(&self) -> bool {
        !matches!(self.source, Source::File(_))
    }
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
}

/// Creates a token's series at zero, so that the first failure is an increase Prometheus can
/// see (`increase()` cannot tell a series born at 1 from one that was always 1).
fn register_metrics(name: &str) {
    let token = name.to_owned();
    metrics::gauge!("sidekey_token_ready", "token" => token.clone()).set(0.0);
    metrics::gauge!("sidekey_token_generation", "token" => token.clone()).set(0.0);
    metrics::counter!("sidekey_propagation_failures_total", "token" => token.clone()).increment(0);
    for result in ["success", "failure", "rejected"] {
        metrics::counter!("sidekey_token_rotations_total", "token" => token.clone(), "result" => result).increment(0);
    }
}

/// An audit record's fields from (name, value) pairs.
pub(crate) fn audit_fields<const N: usize>(
    pairs: [(&str, serde_json::Value); N],
) -> serde_json::Map<String, serde_json::Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Locks a status mutex; a poisoned one (a panic elsewhere) still holds usable data.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Seconds since the Unix epoch, for timestamp gauges.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Clients for the network sources, one per extra CA file.
struct ClientCache {
    audit: Option<crate::audit::Audit>,
    global_ca: Option<PathBuf>,
    connect_timeout: Duration,
    clients: HashMap<Option<PathBuf>, SourceClient>,
}

impl ClientCache {
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

/// Every configured token, by name and by index.
#[derive(Debug)]
pub struct TokenStore {
    tokens: Vec<Arc<Token>>,
    by_name: HashMap<String, usize>,
    /// The global CA file and connect timeout the network sources' clients were built with.
    upstream_key: (Option<PathBuf>, Duration),
}

/// The header formats each route registers with its token: (token name, format) -> index.
#[derive(Debug, Default)]
pub struct FormatRegistry {
    formats: HashMap<String, Vec<String>>,
}

impl FormatRegistry {
    /// Registers a format for a token (equal formats share one). A route finds its format's
    /// index on the token itself ([`Token::format_index`]), which stays valid across reloads.
    pub fn register(&mut self, token: &str, format: &str) {
        let list = self.formats.entry(token.to_owned()).or_default();
        if !list.iter().any(|f| f == format) {
            list.push(format.to_owned());
        }
    }
}

impl TokenStore {
    /// Builds the tokens of a validated config. No value is loaded yet: see [`TokenStore::load_all`].
    pub fn new(
        config: &Config,
        formats: FormatRegistry,
        audit: Option<crate::audit::Audit>,
    ) -> Result<TokenStore, String> {
        TokenStore::build(config, formats, None, audit).map(|(store, _)| store)
    }

    /// Builds the tokens of a reloaded config, keeping every token of `previous` whose
    /// definition is unchanged (its value, generation and schedule go on). Returns the store
    /// and the tokens that are new (to be loaded). The caller restarts the schedulers, so those
    /// of tokens not kept stop with the old set.
    pub fn rebuild(
        config: &Config,
        formats: FormatRegistry,
        previous: &TokenStore,
        audit: Option<crate::audit::Audit>,
    ) -> Result<(TokenStore, Vec<Arc<Token>>), String> {
        TokenStore::build(config, formats, Some(previous), audit)
    }

    fn build(
        config: &Config,
        mut formats: FormatRegistry,
        previous: Option<&TokenStore>,
        audit: Option<crate::audit::Audit>,
    ) -> Result<(TokenStore, Vec<Arc<Token>>), String> {
        let mut clients = ClientCache {
            audit,
            global_ca: config.upstream.ca_file.clone(),
            connect_timeout: config.upstream.connect_timeout,
            clients: HashMap::new(),
        };
        let same_network =
            previous.is_some_and(|p| p.upstream_key == (clients.global_ca.clone(), clients.connect_timeout));
        let mut tokens = Vec::new();
        let mut fresh = Vec::new();
        let mut by_name = HashMap::new();
        for (name, tc) in &config.tokens {
            let wanted = formats.formats.remove(name).unwrap_or_default();
            let kept = previous.and_then(|p| p.get(name)).filter(|t| {
                t.config == *tc
                    && (same_network
                        || matches!(tc.source, SourceConfig::Env(_) | SourceConfig::File(_)) && tc.validate.is_none())
            });
            let token = match kept {
                Some(t) => {
                    t.add_formats(&wanted).map_err(|e| format!("token {name}: {e}"))?;
                    t.clone()
                }
                None => {
                    let t =
                        Arc::new(Token::new(name, tc, wanted, &mut clients).map_err(|e| format!("token {name}: {e}"))?);
                    register_metrics(name);
                    fresh.push(t.clone());
                    t
                }
            };
            by_name.insert(name.clone(), tokens.len());
            tokens.push(token);
        }
        let upstream_key = (clients.global_ca.clone(), clients.connect_timeout);
        Ok((TokenStore { tokens, by_name, upstream_key }, fresh))
    }

    /// Loads the given tokens once, concurrently (see [`TokenStore::load_all`]).
    pub async fn load(tokens: &[Arc<Token>]) {
        let mut set = tokio::task::JoinSet::new();
        for t in tokens {
            let t = t.clone();
            set.spawn(async move { t.refresh().await });
        }
        while set.join_next().await.is_some() {}
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Token>> {
        self.by_name.get(name).map(|&i| &self.tokens[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Token>> {
        self.tokens.iter()
    }

    /// Loads every token once, concurrently. Failures are recorded, not fatal: those tokens
    /// answer 503 until a value arrives.
    pub async fn load_all(&self) {
        TokenStore::load(&self.tokens).await;
    }

    /// Names of tokens without a usable value.
    pub fn missing(&self) -> Vec<&str> {
        self.tokens.iter().filter(|t| !t.is_ready()).map(|t| t.name()).collect()
    }

    /// Names of the tokens `/readyz` waits for (`required`, the default) without a usable value.
    pub fn not_ready(&self) -> Vec<&str> {
        self.tokens.iter().filter(|t| t.config.required && !t.is_ready()).map(|t| t.name()).collect()
    }
}

#[cfg(test)]
mod history_tests;
