//! Tokens: what requests read, what refreshes them, and what watches them in use.
//!
//! Each configured token is one [`Token`], a thin owner of three parts with state of their own:
//! - `cell`: the value requests read with one lock-free load (current, previous during the
//!   retry overlap, one rendered header per format);
//! - `refresher`: the source, validation, the folding of concurrent refreshes into one, and
//!   when to fetch next ([`schedule`] runs it);
//! - `observers`: request and 401 counters, the usage history, propagation-failure
//!   detection and the throttle on refreshes a 401 forces.
//!
//! `store` holds every token by name. Sources live one per file: [`env`](mod@env),
//! [`file`](mod@file) (with its watcher), [`oauth2`], [`http`](mod@http), [`exec`],
//! [`web_identity`], [`exchange`]; each returns a [`SourceError`] when it cannot give a value.

pub mod assertion;
pub mod aws_credentials;
mod cell;
pub mod env;
mod error;
pub mod exchange;
pub mod exec;
pub mod fetch;
pub mod file;
pub mod http;
pub mod identity;
pub mod oauth2;
mod observers;
mod refresher;
pub mod schedule;
mod store;
pub mod vault_login;
pub mod web_identity;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ::http::HeaderValue;

use crate::config::TokenConfig;

pub use cell::{Credential, TokenValue};
pub use error::SourceError;
pub use observers::{History, PropagationFailure, Usage};
pub use refresher::{Fetched, Refreshed, Source, Status};
pub use store::{FormatRegistry, TokenStore};

use cell::Cell;
use observers::Observers;
use refresher::{ClientCache, Refresher};

/// The least time between two refreshes forced by 401s to a fresh value with no previous one.
const FORCED_RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// A token's name and audit log: what every part needs to report what it did.
pub(crate) struct Events {
    name: Arc<str>,
    /// The audit log, when configured.
    audit: Option<crate::audit::Audit>,
}

impl Events {
    pub(crate) fn name(&self) -> &str {
        &self.name
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
}

/// One configured token: its cell, its refresher and its observers.
pub struct Token {
    events: Events,
    /// The definition it was built from: a reload keeps the token (value, schedule) when the
    /// new definition is equal.
    config: TokenConfig,
    kind: &'static str,
    cell: Cell,
    refresher: Refresher,
    observers: Observers,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.events.name)
            .field("source", self.refresher.source())
            .finish_non_exhaustive()
    }
}

impl Token {
    fn new(name: &str, config: &TokenConfig, formats: Vec<String>, clients: &mut ClientCache) -> Result<Token, String> {
        Ok(Token {
            refresher: Refresher::new(name, config, clients)?,
            events: Events { name: name.into(), audit: clients.audit.clone() },
            config: config.clone(),
            kind: config.kind(),
            cell: Cell::new(formats, config.retry.overlap),
            observers: Observers::new(config.propagation.clone(), config.on_401),
        })
    }

    /// Adds header formats a reloaded config needs and re-renders the current value for them.
    fn add_formats(&self, wanted: &[String]) -> Result<(), String> {
        self.cell.add_formats(wanted).map_err(|e| e.to_string())
    }

    /// The index of `format` among this token's rendered headers.
    pub fn format_index(&self, format: &str) -> Option<usize> {
        self.cell.format_index(format)
    }

    pub fn name(&self) -> &str {
        self.events.name()
    }

    /// The `source` keyword of the config.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn source(&self) -> &Source {
        self.refresher.source()
    }

    /// The workload-identity form (`/tokens`' `identity`), if the token uses one.
    pub fn identity(&self) -> Option<&'static str> {
        self.refresher.logins().map(|l| l.kind())
    }

    /// When the login's own token expires (a Vault client token), where there is one.
    pub fn login_expires_at(&self) -> Option<SystemTime> {
        self.refresher.logins().and_then(|l| l.expires_at())
    }

    /// The header for `format` if a usable value is loaded, with its generation and whether a
    /// 401 to it may be retried. Lock-free: one atomic load and a header clone.
    #[inline]
    pub fn credential(&self, format: usize) -> Option<Credential> {
        self.cell.credential(format)
    }

    /// How 401s right after a rotation are retried.
    pub fn retry_config(&self) -> &crate::config::RetryConfig {
        &self.config.retry
    }

    /// What to retry with after a 401 to generation `used`: the value it replaced, while
    /// the overlap lasts, or else a freshly forced refresh (if it brings a new value).
    pub async fn retry_credential(&self, format: usize, used: u64) -> Option<(HeaderValue, &'static str)> {
        if let Some(previous) = self.cell.previous_header(format, used) {
            return previous.map(|h| (h, "previous"));
        }
        if !self.observers.may_force(FORCED_RETRY_INTERVAL) {
            return None;
        }
        self.refresh().await;
        let cur = self.cell.current()?;
        (cur.generation > used && cur.is_usable(SystemTime::now())).then(|| (cur.headers[format].clone(), "refreshed"))
    }

    /// Whether a 401 may force a refresh now (none was forced within `interval`); if so,
    /// records this one.
    pub fn may_force(&self, interval: Duration) -> bool {
        self.observers.may_force(interval)
    }

    /// The current snapshot, for status output.
    pub fn current(&self) -> Option<Arc<TokenValue>> {
        self.cell.current()
    }

    pub fn status(&self) -> Status {
        self.refresher.status()
    }

    pub fn is_ready(&self) -> bool {
        self.cell.is_ready()
    }

    /// Watches the published generation (0 until a first value loads).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.refresher.subscribe()
    }

    #[inline]
    pub fn count_request(&self) {
        self.observers.count_request();
    }

    /// Counts an upstream 401 to a request `route` sent with this token, and reports a
    /// propagation failure when the window's 401s pass the configured threshold.
    pub fn observe_unauthorized(&self, route: &str) -> Option<PropagationFailure> {
        self.observers.unauthorized(&self.events, &self.cell, route)
    }

    /// Takes this minute's usage sample.
    pub fn sample_usage(&self, at: SystemTime) {
        self.observers.sample_usage(at);
    }

    /// Requests and 401s per minute for the last hour, the current minute last.
    pub fn usage_history(&self) -> Vec<Usage> {
        self.observers.usage_history()
    }

    /// Propagation failures (and 401 bursts) reported so far.
    pub fn propagation_failures(&self) -> u64 {
        self.observers.propagation_failures()
    }

    /// Upstream 401s since the current value was published.
    pub fn unauthorized_since_rotation(&self) -> u64 {
        self.observers.unauthorized_since_rotation()
    }

    pub fn requests(&self) -> u64 {
        self.observers.requests()
    }

    pub fn unauthorized(&self) -> u64 {
        self.observers.unauthorized_count()
    }

    /// Refreshes asked for so far (see [`Token::refresh`]), those folded into one running
    /// included.
    pub fn refreshes_started(&self) -> u64 {
        self.refresher.refreshes_started()
    }

    /// Fetches from the source, validates and publishes the value if it changed. A call made
    /// while another refresh runs waits for it and returns its outcome instead of fetching
    /// again. A failure keeps the last good value and records the error. Counted in
    /// [`Token::refreshes_started`] when called, before the returned future first runs.
    pub fn refresh(&self) -> impl std::future::Future<Output = Refreshed> + Send + '_ {
        self.refresher.count_started();
        self.refresher.run(&self.events, &self.cell, &self.observers)
    }

    /// [`Token::refresh`] as a task of its own would run it: counted now, run when spawned.
    pub fn refresh_owned(self: Arc<Self>) -> impl std::future::Future<Output = Refreshed> + Send + 'static {
        self.refresher.count_started();
        async move { self.refresher.run(&self.events, &self.cell, &self.observers).await }
    }

    /// Writes a token event to the audit log, if there is one.
    pub(crate) fn audit(&self, event: &'static str, fields: serde_json::Map<String, serde_json::Value>, sync: bool) {
        self.events.audit(event, fields, sync);
    }

    /// Whether the scheduler drives this token (file tokens follow their file instead).
    fn is_scheduled(&self) -> bool {
        self.refresher.is_scheduled()
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
