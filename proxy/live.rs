//! What a running sidekey shares between the proxy, the admin API and a reload: the routes in
//! force, the token set, the upstream clients, the config, and the background tasks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::audit::Audit;
use crate::config::Config;
use crate::proxy::{Proxy, RouteUsage};
use crate::shutdown::stopped;
use crate::token::{Token, TokenStore};
use crate::upstream::UpstreamClient;

/// What a reload replaces, shared by the proxy, the admin API and `Running`.
pub struct Live {
    pub(crate) proxy: Proxy,
    pub(crate) tokens: ArcSwap<TokenStore>,
    /// Upstream clients by (CA files, connect timeout), kept across reloads so unchanged
    /// routes keep their pooled connections.
    pub(crate) clients: Mutex<HashMap<(Vec<PathBuf>, Duration), UpstreamClient>>,
    /// The config in force.
    pub(crate) config: Mutex<Config>,
    /// The file watcher and refresh schedulers of the current token set.
    pub(crate) background: tokio::sync::Mutex<Background>,
    /// Serializes reloads.
    pub(crate) reloading: tokio::sync::Mutex<()>,
    /// Set at shutdown so `/readyz` turns 503 while connections drain.
    pub draining: AtomicBool,
    /// The audit log, when `[audit]` is configured (opened once; a reload keeps it).
    pub(crate) audit: Option<Audit>,
    /// Requests and 401s per route name, kept across reloads, for the audit usage summary.
    pub(crate) usage: Mutex<HashMap<String, Arc<RouteUsage>>>,
    /// `[intercept]`, when configured.
    pub intercept: Option<Arc<crate::intercept::Intercept>>,
}

impl Live {
    /// The audit chain's head, when `[audit]` is on.
    pub fn audit_head(&self) -> Option<crate::audit::Head> {
        self.audit.as_ref().map(Audit::head)
    }

    /// `[admin] token` of the config in force.
    pub fn admin_token(&self) -> Option<crate::config::SecretRef> {
        lock(&self.config).admin.token.clone()
    }

    /// Which `Host` values the admin listener answers to.
    pub fn admin_hosts(&self) -> crate::admin_guard::AdminHosts {
        let config = lock(&self.config);
        crate::admin_guard::AdminHosts {
            loopback: crate::safety::is_local_listener(&config.listen.admin.to_string()),
            names: config.admin.hosts.clone(),
        }
    }

    /// The token set in force.
    pub fn tokens(&self) -> Arc<TokenStore> {
        self.tokens.load_full()
    }

    /// Every configured route with its counters, for the admin API.
    pub fn routes_json(&self) -> serde_json::Value {
        let config = lock(&self.config);
        let usage = lock(&self.usage);
        let routes = config.routes.iter().map(|r| {
            let u = usage.get(&r.name);
            let n = |f: fn(&RouteUsage) -> &std::sync::atomic::AtomicU64| u.map_or(0, |u| f(u).load(Ordering::Relaxed));
            serde_json::json!({
                "name": r.name,
                "prefix": r.prefix,
                "host": r.host,
                "upstream": r.upstream,
                "token": r.token_names().first(),
                "tokens": r.token_names(),
                "requests": n(|u| &u.requests),
                "unauthorized": n(|u| &u.unauthorized),
                "errors": n(|u| &u.errors),
                "denied_not_allowed": n(|u| &u.denied_not_allowed),
                "denied_rate_limited": n(|u| &u.denied_rate_limited),
            })
        });
        serde_json::Value::Array(routes.collect())
    }
}

/// Background tasks of one token set, stopped together.
pub(crate) struct Background {
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) tasks: Vec<JoinHandle<()>>,
}

impl Background {
    pub(crate) fn spawn(tokens: &TokenStore) -> Background {
        let (stop, rx) = watch::channel(false);
        let mut tasks = crate::token::schedule::spawn(tokens.iter().cloned().collect(), rx.clone());
        tasks.push(tokio::spawn(sample_usage(tokens.iter().cloned().collect(), rx.clone())));
        tasks.extend(crate::token::file::spawn_watcher(tokens.iter().cloned().collect(), rx));
        Background { stop, tasks }
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Samples every token's usage counters once a minute, for the history on `/tokens`.
async fn sample_usage(tokens: Vec<Arc<Token>>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => break,
        }
        let now = std::time::SystemTime::now();
        for t in &tokens {
            t.sample_usage(now);
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
