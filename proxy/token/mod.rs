//! Tokens: the store behind arc-swap, and the sources that fill it.
//!
//! Each configured token is one [`Token`]: its current value is an `ArcSwapOption` holding a
//! [`TokenValue`] snapshot (the secret, its generation and fingerprint, and the header values
//! every route renders from it, computed once per generation). Requests load the snapshot
//! without locking and clone the rendered header; a rotation builds a whole new snapshot and
//! swaps it in. The replaced snapshot, and with it the secret and the rendered bytes, is
//! zeroized when the last request holding it finishes.
//!
//! Sources live one per file: [`env`] and [`file`] (with its watcher).

pub mod env;
pub mod file;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use http::HeaderValue;

use crate::config::{Config, TokenConfig};
use crate::secret::Secret;

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

/// Where a token's value comes from.
#[derive(Debug)]
pub enum Source {
    Env(env::EnvSource),
    File(file::FileSource),
}

impl Source {
    fn from_config(config: &TokenConfig) -> Source {
        match config {
            TokenConfig::Env(c) => Source::Env(env::EnvSource::new(c)),
            TokenConfig::File(c) => Source::File(file::FileSource::new(c)),
        }
    }

    /// Reads the value now. The error names what failed, never the value.
    pub fn fetch(&self) -> Result<Fetched, String> {
        match self {
            Source::Env(s) => s.fetch(),
            Source::File(s) => s.fetch(),
        }
    }
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
}

/// What the admin API and logs know of a token besides its value.
#[derive(Debug, Default, Clone)]
pub struct Status {
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    pub last_rotation: Option<SystemTime>,
}

/// One configured token.
pub struct Token {
    name: Arc<str>,
    kind: &'static str,
    source: Source,
    current: ArcSwapOption<TokenValue>,
    /// Header formats the routes use, rendered for every new value (index = format id).
    formats: Vec<String>,
    status: Mutex<Status>,
    /// Serializes refreshes so a timer, a file event and a forced refresh never race.
    refresh_lock: tokio::sync::Mutex<()>,
    /// Requests sent with this token (all generations).
    requests: AtomicU64,
    /// Upstream 401s answered to requests carrying this token.
    unauthorized: AtomicU64,
    /// The published generation, for whoever waits on a rotation (tests, the demo).
    generation_tx: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("name", &self.name).field("source", &self.source).finish_non_exhaustive()
    }
}

impl Token {
    fn new(name: &str, config: &TokenConfig, formats: Vec<String>) -> Token {
        Token {
            name: name.into(),
            kind: config.kind(),
            source: Source::from_config(config),
            current: ArcSwapOption::empty(),
            formats,
            status: Mutex::new(Status::default()),
            refresh_lock: tokio::sync::Mutex::new(()),
            requests: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
            generation_tx: tokio::sync::watch::channel(0).0,
        }
    }

    /// Watches the published generation (0 until a first value loads).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation_tx.subscribe()
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

    /// The header value for `format` if a usable value is loaded. Lock-free: one atomic load.
    #[inline]
    pub fn header(&self, format: usize) -> Option<HeaderValue> {
        let guard = self.current.load();
        let value = guard.as_ref()?;
        if value.expires_at.is_some() && !value.is_usable(SystemTime::now()) {
            return None;
        }
        Some(value.headers[format].clone())
    }

    /// The current snapshot, for status output.
    pub fn current(&self) -> Option<Arc<TokenValue>> {
        self.current.load_full()
    }

    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_ready(&self) -> bool {
        self.current.load().as_ref().is_some_and(|v| v.is_usable(SystemTime::now()))
    }

    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_unauthorized(&self) {
        self.unauthorized.fetch_add(1, Ordering::Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn unauthorized(&self) -> u64 {
        self.unauthorized.load(Ordering::Relaxed)
    }

    /// Fetches from the source and publishes the value if it changed. Concurrent calls are
    /// serialized; a failure keeps the last good value and records the error.
    pub async fn refresh(&self) -> Refreshed {
        let _one_at_a_time = self.refresh_lock.lock().await;
        let fetched = match &self.source {
            // File reads are short, but they are blocking syscalls: keep them off the workers.
            Source::File(f) => {
                let f = f.clone();
                match tokio::task::spawn_blocking(move || f.fetch()).await {
                    Ok(r) => r,
                    Err(e) => Err(format!("reader task failed: {e}")),
                }
            }
            other => other.fetch(),
        };
        match fetched {
            Ok(f) => self.publish(f),
            Err(error) => self.fail(error),
        }
    }

    fn fail(&self, error: String) -> Refreshed {
        tracing::warn!(token = %self.name, error = %error, "token refresh failed; keeping the last good value");
        metrics::counter!("sidekey_token_rotations_total", "token" => self.name.to_string(), "result" => "failure")
            .increment(1);
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        st.last_error = Some(error.clone());
        st.last_error_at = Some(SystemTime::now());
        Refreshed::Failed { error }
    }

    /// Publishes a fetched value as the next generation, unless it equals the current one.
    pub fn publish(&self, fetched: Fetched) -> Refreshed {
        let previous = self.current.load_full();
        if let Some(prev) = &previous {
            if prev.secret == fetched.secret && prev.expires_at == fetched.expires_at {
                self.status.lock().unwrap_or_else(|e| e.into_inner()).last_error = None;
                return Refreshed::Unchanged { generation: prev.generation };
            }
        }
        let mut headers = Vec::with_capacity(self.formats.len());
        for format in &self.formats {
            match fetched.secret.render_header(format) {
                Ok(h) => headers.push(h),
                Err(e) => return self.fail(e.to_string()),
            }
        }
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
        self.current.store(Some(Arc::new(value)));
        self.generation_tx.send_replace(generation);
        {
            let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
            st.last_error = None;
            if previous.is_some() {
                st.last_rotation = Some(now);
            }
        }
        let name = self.name.to_string();
        metrics::gauge!("sidekey_token_generation", "token" => name.clone()).set(generation as f64);
        metrics::gauge!("sidekey_token_ready", "token" => name.clone()).set(1.0);
        if let Some(e) = expires_at {
            metrics::gauge!("sidekey_token_expiry_timestamp_seconds", "token" => name.clone()).set(unix_seconds(e));
        }
        match previous {
            Some(prev) => {
                metrics::counter!("sidekey_token_rotations_total", "token" => name.clone(), "result" => "success")
                    .increment(1);
                metrics::gauge!("sidekey_token_last_rotation_timestamp_seconds", "token" => name)
                    .set(unix_seconds(now));
                tracing::info!(token = %self.name, generation, fingerprint = %fingerprint, previous = %prev.fingerprint, "token rotated");
            }
            None => tracing::info!(token = %self.name, generation, fingerprint = %fingerprint, "token loaded"),
        }
        Refreshed::Rotated { generation }
    }
}

/// Seconds since the Unix epoch, for timestamp gauges.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Every configured token, by name and by index.
#[derive(Debug)]
pub struct TokenStore {
    tokens: Vec<Arc<Token>>,
    by_name: HashMap<String, usize>,
}

/// The header formats each route registers with its token: (token name, format) -> index.
#[derive(Debug, Default)]
pub struct FormatRegistry {
    formats: HashMap<String, Vec<String>>,
}

impl FormatRegistry {
    /// Registers a format for a token and returns its index (equal formats share one).
    pub fn register(&mut self, token: &str, format: &str) -> usize {
        let list = self.formats.entry(token.to_owned()).or_default();
        match list.iter().position(|f| f == format) {
            Some(i) => i,
            None => {
                list.push(format.to_owned());
                list.len() - 1
            }
        }
    }
}

impl TokenStore {
    /// Builds the tokens of a validated config. No value is loaded yet: see [`TokenStore::load_all`].
    pub fn new(config: &Config, mut formats: FormatRegistry) -> TokenStore {
        let mut tokens = Vec::new();
        let mut by_name = HashMap::new();
        for (name, tc) in &config.tokens {
            let f = formats.formats.remove(name).unwrap_or_default();
            by_name.insert(name.clone(), tokens.len());
            tokens.push(Arc::new(Token::new(name, tc, f)));
            metrics::gauge!("sidekey_token_ready", "token" => name.clone()).set(0.0);
            metrics::gauge!("sidekey_token_generation", "token" => name.clone()).set(0.0);
        }
        TokenStore { tokens, by_name }
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
        let mut set = tokio::task::JoinSet::new();
        for t in &self.tokens {
            let t = t.clone();
            set.spawn(async move { t.refresh().await });
        }
        while set.join_next().await.is_some() {}
    }

    /// Names of tokens without a usable value.
    pub fn not_ready(&self) -> Vec<&str> {
        self.tokens.iter().filter(|t| !t.is_ready()).map(|t| t.name()).collect()
    }
}
