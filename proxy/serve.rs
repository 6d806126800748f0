//! Assembly and serving: builds routes, tokens and clients from a config, binds the two
//! listeners, runs the accept loops, and drains them on shutdown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::ProxyAddr;
use crate::listen::Listener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::audit::Audit;
use crate::config::rules::AllowRule;
use crate::config::Config;
use crate::config::Injection;
use crate::inject::Inject;
use crate::listen::{admin_limits, serve};
use crate::live::{lock, Background, Live};
use crate::metrics::RouteMetrics;
use crate::proxy::{Proxy, Route, RouteSet, RouteUsage};
use crate::route::{RouteTable, Target};
use crate::shutdown::stopped;
use crate::token::{FormatRegistry, Token, TokenStore};
use crate::upstream::{build_client, UpstreamClient};
use crate::workers::Workers;

/// How long admin connections get to finish after the proxy has drained.
const ADMIN_GRACE: Duration = Duration::from_secs(1);

/// Why sidekey could not start with a valid config.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("cannot listen on a Unix socket (proxy): {0}")]
    BindUnix(String),
    #[error("{0}")]
    Token(String),
    #[error("{0}")]
    Audit(String),
    #[error("route {route}: {message}")]
    Route { route: String, message: String },
    #[error("[admin] token: {0}")]
    AdminToken(String),
    #[error("[intercept]: {0}")]
    Intercept(String),
    #[error("cannot start the [listen] workers: {0}")]
    Workers(std::io::Error),
}

/// A running sidekey: its addresses, its tokens, and the ways to reload and stop it.
pub struct Running {
    /// The proxy's TCP address (`0.0.0.0:0` when it listens on a Unix socket: see `proxy_socket`).
    pub proxy_addr: SocketAddr,
    /// The proxy's Unix socket, with `listen.proxy = "unix:PATH"`; removed at shutdown.
    pub proxy_socket: Option<PathBuf>,
    pub admin_addr: SocketAddr,
    live: Arc<Live>,
    stop_proxy: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    proxy_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    stop_summary: watch::Sender<bool>,
    summary_task: Option<JoinHandle<()>>,
    /// Watches the interception CA's files.
    ca_task: Option<JoinHandle<()>>,
    /// `[listen] workers`, when set.
    workers: Option<Arc<Workers>>,
    /// Logs the audit chain's head every `[audit] anchor_interval`.
    anchor_task: Option<JoinHandle<()>>,
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub routes: usize,
    /// Tokens kept with their values and schedules.
    pub tokens_kept: Vec<String>,
    /// Tokens new or redefined, loaded afresh.
    pub tokens_loaded: Vec<String>,
    pub tokens_removed: Vec<String>,
}

impl Running {
    /// The token set in force.
    pub fn tokens(&self) -> Arc<TokenStore> {
        self.live.tokens()
    }

    /// The proxy service its listener serves, to serve over another stream (benchmarks).
    #[doc(hidden)]
    pub fn proxy(&self) -> Proxy {
        self.live.proxy.clone()
    }

    /// Connections handed to each `[listen] workers` runtime so far (`None` without workers).
    #[doc(hidden)]
    pub fn worker_connections(&self) -> Option<Vec<u64>> {
        self.workers.as_ref().map(|w| w.handed())
    }

    /// The configured grace period.
    pub fn grace(&self) -> Duration {
        lock(&self.live.config).shutdown.grace
    }

    /// Swaps in a new, validated config: routes and token definitions change at once, tokens
    /// whose definition is unchanged keep their values and schedules, listeners and open
    /// connections stay. New tokens are loaded before the swap, so their routes do not answer
    /// 503 for the want of a first fetch.
    pub async fn reload(&self, config: Config) -> Result<ReloadSummary, StartError> {
        let _one_at_a_time = self.live.reloading.lock().await;
        {
            let old = lock(&self.live.config);
            if old.listen != config.listen {
                tracing::warn!("[listen] changes only on restart; keeping the current one");
            }
            if old.limits != config.limits || old.hardening != config.hardening {
                tracing::warn!("[limits] and [hardening] change only on restart; keeping the current ones");
            }
            if old.audit != config.audit {
                tracing::warn!("the audit settings change only on restart; keeping the current ones");
            }
            if old.intercept != config.intercept {
                tracing::warn!(
                    "[intercept] changes only on restart (its CA files are watched); keeping the current one"
                );
            }
        }
        let previous = self.live.tokens.load_full();
        let (tokens, fresh) = build_tokens(&config, Some(&previous), self.live.audit.clone())?;
        TokenStore::load(&fresh).await;
        let routes = build_routes(&config, &tokens, &self.live.clients, &self.live.usage)?;
        let summary = ReloadSummary {
            routes: config.routes.len(),
            tokens_kept: tokens
                .iter()
                .filter(|t| !fresh.iter().any(|f| Arc::ptr_eq(f, t)))
                .map(|t| t.name().to_owned())
                .collect(),
            tokens_loaded: fresh.iter().map(|t| t.name().to_owned()).collect(),
            tokens_removed: previous
                .iter()
                .filter(|t| tokens.get(t.name()).is_none())
                .map(|t| t.name().to_owned())
                .collect(),
        };
        let tokens = Arc::new(tokens);
        self.live.proxy.swap_routes(routes);
        self.live.tokens.store(tokens.clone());
        {
            let mut bg = self.live.background.lock().await;
            let old = std::mem::replace(&mut *bg, Background::spawn(&tokens));
            old.stop().await;
        }
        *lock(&self.live.config) = config;
        tracing::info!(
            routes = summary.routes,
            kept = ?summary.tokens_kept,
            loaded = ?summary.tokens_loaded,
            removed = ?summary.tokens_removed,
            "config reloaded"
        );
        Ok(summary)
    }

    /// Turns readiness to 503 at once; `shutdown` does it too. Called before the shutdown is
    /// logged, so whoever reads that line finds the sidecar already not ready.
    pub fn begin_draining(&self) {
        self.live.draining.store(true, Ordering::SeqCst);
    }

    /// Graceful shutdown: readiness turns 503, the proxy stops accepting, in-flight requests
    /// get up to the grace period to finish, then the admin listener closes too.
    pub async fn shutdown(self) {
        self.begin_draining();
        let _ = self.stop_proxy.send(true);
        let _ = self.proxy_task.await;
        if let Some(w) = &self.workers {
            w.stop().await;
        }
        let _ = self.stop_admin.send(true);
        let _ = self.admin_task.await;
        let bg = std::mem::replace(
            &mut *self.live.background.lock().await,
            Background { stop: watch::channel(false).0, tasks: Vec::new() },
        );
        bg.stop().await;
        let _ = self.stop_summary.send(true);
        if let Some(t) = self.summary_task {
            let _ = t.await;
        }
        if let Some(t) = self.ca_task {
            let _ = t.await;
        }
        if let Some(t) = self.anchor_task {
            let _ = t.await;
        }
        if let Some(a) = &self.live.audit {
            a.flush().await;
            let head = a.head();
            tracing::info!(seq = head.seq, hash = %head.hash, "audit chain head at shutdown");
        }
        if let Some(p) = &self.proxy_socket {
            crate::listen::unix::remove_socket(p);
        }
        tracing::info!("stopped");
    }
}

fn build_tokens(
    config: &Config,
    previous: Option<&TokenStore>,
    audit: Option<Audit>,
) -> Result<(TokenStore, Vec<Arc<Token>>), StartError> {
    let mut formats = FormatRegistry::default();
    for r in &config.routes {
        match r.injection() {
            Injection::Header { token, format, .. } => formats.register(token, format),
            Injection::Headers(headers) => {
                for template in headers.values() {
                    if let Ok((token, format)) = crate::config::template::parse_template(template)
                        .and_then(|p| crate::config::template::as_format(&p))
                    {
                        formats.register(&token, &format);
                    }
                }
            }
            // Rendered per request (query, sign) or per change of either token (basic).
            Injection::Query { .. } | Injection::Basic(_) | Injection::Sign { .. } => {}
        }
    }
    match previous {
        Some(p) => TokenStore::rebuild(config, formats, p, audit),
        None => TokenStore::new(config, formats, audit).map(|s| {
            let all = s.iter().cloned().collect();
            (s, all)
        }),
    }
    .map_err(StartError::Token)
}

fn build_routes(
    config: &Config,
    tokens: &TokenStore,
    clients: &Mutex<HashMap<(Vec<PathBuf>, Duration), UpstreamClient>>,
    usage: &Mutex<HashMap<String, Arc<RouteUsage>>>,
) -> Result<RouteSet, StartError> {
    let mut clients = lock(clients);
    let mut usage = lock(usage);
    let mut routes = Vec::with_capacity(config.routes.len());
    for rc in &config.routes {
        let err = |message: String| StartError::Route { route: rc.name.clone(), message };
        let ca_files: Vec<PathBuf> = config.upstream.ca_file.iter().chain(rc.ca_file.iter()).cloned().collect();
        let connect_timeout = rc.connect_timeout.unwrap_or(config.upstream.connect_timeout);
        let client = match clients.get(&(ca_files.clone(), connect_timeout)) {
            Some(c) => c.clone(),
            None => {
                let c = build_client(&ca_files, connect_timeout).map_err(err)?;
                clients.insert((ca_files, connect_timeout), c.clone());
                c
            }
        };
        let get = |name: &str| tokens.get(name).cloned().ok_or_else(|| err(format!("token {name} is not defined")));
        let all: Vec<Arc<Token>> = rc.token_names().iter().map(|n| get(n)).collect::<Result<_, _>>()?;
        let token = all.first().cloned().ok_or_else(|| err("names no token".into()))?;
        let format_of = |token: &Token, format: &str| {
            token.format_index(format).ok_or_else(|| err("format not registered with its token".into()))
        };
        let header_name = |name: &str| http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| err(e.to_string()));
        let inject = match rc.injection() {
            Injection::Header { header, format, .. } => {
                Inject::Header { name: header_name(header)?, format: format_of(&token, format)? }
            }
            Injection::Query { name, .. } => Inject::Query(name.into()),
            Injection::Sign { aws_sigv4, .. } => Inject::Sign(Box::new(crate::inject::SigV4::new(aws_sigv4.clone()))),
            Injection::Headers(headers) => {
                let mut list = Vec::with_capacity(headers.len());
                for (name, template) in headers {
                    let (t, format) = crate::config::template::parse_template(template)
                        .and_then(|p| crate::config::template::as_format(&p))
                        .map_err(err)?;
                    let t = get(&t)?;
                    let index = format_of(&t, &format)?;
                    list.push((header_name(name)?, t, index));
                }
                Inject::Headers(list.into())
            }
            Injection::Basic(b) => {
                let parse = |t: &str| crate::config::template::parse_template(t).map_err(err);
                let basic = crate::inject::Basic::new(parse(&b.username)?, parse(&b.password)?, all.clone());
                Inject::Basic(Box::new(basic))
            }
        };
        let target = Target::parse(&rc.upstream).map_err(err)?;
        // Every retry series at zero from the start, so the first retry is a rate() can see.
        for with in ["previous", "refreshed"] {
            for outcome in ["success", "unauthorized", "error"] {
                metrics::counter!("sidekey_upstream_retries_total", "route" => rc.name.clone(),
                    "token" => token.name().to_owned(), "with" => with, "outcome" => outcome)
                .increment(0);
            }
        }
        routes.push(Route {
            name: rc.name.as_str().into(),
            upstream: client.pool(&target.scheme, &target.authority),
            target,
            inject,
            tokens: all.into(),
            timeout: rc.timeout.unwrap_or(config.upstream.timeout),
            send_timeout: rc.send_timeout.unwrap_or(config.upstream.send_timeout),
            metrics: RouteMetrics::new(&rc.name, Some(token.name())),
            usage: usage.entry(rc.name.clone()).or_default().clone(),
            policy: crate::policy::Policy::new(
                crate::policy::AllowList::new(
                    rc.allow.iter().flatten().filter_map(|r| AllowRule::parse(r).ok()).map(crate::policy::Rule::from).collect(),
                )
                .with_encoded_slash(rc.allow_encoded_slash),
                match &rc.rate {
                    Some(rate) => {
                        let per_sec = crate::config::rules::parse_rate(rate).map_err(err)?;
                        let burst = rc.burst.map_or(per_sec.ceil().max(1.0), f64::from);
                        Some(crate::policy::Bucket::new(per_sec, burst))
                    }
                    None => None,
                },
                rc.max_in_flight,
            ),
            denied: ["not_allowed", "rate_limited"].map(|reason| {
                metrics::counter!("sidekey_requests_denied_total", "route" => rc.name.clone(), "reason" => reason)
            }),
            token,
        });
    }
    let table = RouteTable::new(config.routes.iter().map(|r| (r.host.as_deref(), r.prefix.as_deref())));
    Ok(RouteSet::new(routes, table).with_access_log(config.log.access))
}

/// Builds everything from a validated config, loads every token once, and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    crate::metrics::install();
    let hardened = crate::memory::harden(config.hardening.mlock, config.hardening.no_dump);
    if let Some(reference) = &config.admin.token {
        reference.read().map_err(StartError::AdminToken)?;
    }
    let audit = match &config.audit {
        Some(a) => Some(Audit::open(&a.path).map_err(StartError::Audit)?),
        None => None,
    };
    let intercept = match &config.intercept {
        Some(i) => Some(Arc::new(crate::intercept::Intercept::new(i, audit.clone()).map_err(StartError::Intercept)?)),
        None => None,
    };
    let (tokens, _) = build_tokens(&config, None, audit.clone())?;
    let clients = Mutex::new(HashMap::new());
    let usage = Mutex::new(HashMap::new());
    let routes = build_routes(&config, &tokens, &clients, &usage)?;

    let (proxy_listener, proxy_addr, proxy_socket) = match &config.listen.proxy {
        ProxyAddr::Tcp(addr) => {
            let l = bind("proxy", *addr).await?;
            let addr = l.local_addr().expect("bound socket has an address");
            (Listener::Tcp(l), addr, None)
        }
        ProxyAddr::Unix(path) => {
            let l = crate::listen::unix::bind_unix(path, config.listen.socket_mode).map_err(StartError::BindUnix)?;
            (Listener::Unix(l), SocketAddr::from(([0, 0, 0, 0], 0)), Some(path.clone()))
        }
    };
    let admin_listener = Listener::Tcp(bind("admin", config.listen.admin).await?);
    let admin_addr = match &admin_listener {
        Listener::Tcp(l) => l.local_addr().expect("bound socket has an address"),
        Listener::Unix(_) => unreachable!("the admin API listens on TCP"),
    };
    let shown_proxy = match &proxy_socket {
        Some(p) => format!("unix:{}", p.display()),
        None => proxy_addr.to_string(),
    };

    tokens.load_all().await;
    for name in tokens.missing() {
        tracing::warn!(token = name, "token has no value yet; its routes answer 503 until one arrives");
    }
    let background = Background::spawn(&tokens);
    let (route_count, token_count, grace) = (config.routes.len(), config.tokens.len(), config.shutdown.grace);
    let workers = match config.listen.workers {
        Some(n) => Some(Arc::new(Workers::start(n).map_err(StartError::Workers)?)),
        None => None,
    };
    let limits = config.limits.clone();
    let mut proxy = Proxy::new(routes);
    if let Some(i) = &intercept {
        proxy = proxy.with_intercept(i.clone(), config.upstream.connect_timeout);
    }
    let live = Arc::new(Live {
        proxy,
        tokens: ArcSwap::from_pointee(tokens),
        clients,
        config: Mutex::new(config),
        background: tokio::sync::Mutex::new(background),
        reloading: tokio::sync::Mutex::new(()),
        draining: AtomicBool::new(false),
        audit,
        usage,
        intercept,
    });
    let (stop_summary, summary_stop_rx) = watch::channel(false);
    let summary_task = lock(&live.config).audit.as_ref().map(|a| a.summary_interval).and_then(|every| {
        live.audit.clone().map(|audit| tokio::spawn(summarize_usage(live.clone(), audit, every, summary_stop_rx)))
    });

    let ca_task = live.intercept.as_ref().and_then(|i| i.spawn_watcher(stop_summary.subscribe()));
    let anchor_task =
        lock(&live.config).audit.as_ref().map(|a| a.anchor_interval).and_then(|every| {
            live.audit.clone().map(|audit| tokio::spawn(anchor(audit, every, stop_summary.subscribe())))
        });

    let (stop_proxy, proxy_stop_rx) = watch::channel(false);
    let (stop_admin, admin_stop_rx) = watch::channel(false);
    let admin = Admin::new(live.clone());
    let proxy = live.proxy.clone();
    let proxy_task =
        tokio::spawn(serve(proxy_listener, "proxy", proxy_stop_rx, grace, limits, true, workers.clone(), move |req| {
            futures_util::FutureExt::map(proxy.handle(req), Ok::<_, Infallible>)
        }));
    let admin_task = tokio::spawn(serve(
        admin_listener,
        "admin",
        admin_stop_rx,
        ADMIN_GRACE,
        admin_limits(),
        false,
        None,
        move |req| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(admin.handle(req).await) }
        },
    ));
    tracing::info!(
        proxy = %shown_proxy,
        admin = %admin_addr,
        routes = route_count,
        tokens = token_count,
        workers = workers.as_ref().map(|w| w.handed().len()),
        no_dump = hardened.no_dump,
        mlock = hardened.mlock,
        locked_bytes = crate::memory::locked_bytes(),
        "sidekey listening"
    );
    Ok(Running {
        proxy_addr,
        proxy_socket,
        admin_addr,
        live,
        stop_proxy,
        stop_admin,
        proxy_task,
        admin_task,
        stop_summary,
        summary_task,
        ca_task,
        workers,
        anchor_task,
    })
}

/// Logs the audit chain's head every `every`: an anchor kept outside the file (in the log
/// pipeline), so a file whose last lines were cut off no longer reaches a logged head.
async fn anchor(audit: Audit, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => break,
        }
        let head = audit.head();
        tracing::info!(seq = head.seq, hash = %head.hash, "audit chain head");
    }
}

/// Writes a usage summary per route (requests and 401s since the last one) to the audit log
/// every `every`, and a last one at shutdown. A summary the log has no room for now is folded
/// into the next one.
async fn summarize_usage(live: Arc<Live>, audit: Audit, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut reported: HashMap<String, [u64; 4]> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stopped(&mut stop) => true,
        };
        let routes: Vec<(String, String)> =
            lock(&live.config).routes.iter().map(|r| (r.name.clone(), r.token_names().join(","))).collect();
        for (route, token) in routes {
            let Some(u) = lock(&live.usage).get(&route).cloned() else { continue };
            let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            let now =
                [load(&u.requests), load(&u.unauthorized), load(&u.denied_not_allowed), load(&u.denied_rate_limited)];
            let before = reported.get(&route).copied().unwrap_or_default();
            if now == before {
                continue;
            }
            let fields = crate::token::audit_fields([
                ("route", route.as_str().into()),
                ("token", token.as_str().into()),
                ("requests", (now[0] - before[0]).into()),
                ("unauthorized", (now[1] - before[1]).into()),
                ("denied_not_allowed", (now[2] - before[2]).into()),
                ("denied_rate_limited", (now[3] - before[3]).into()),
                ("interval_secs", every.as_secs().into()),
            ]);
            if audit.try_usage(fields) {
                reported.insert(route, now);
            }
        }
        if last {
            break;
        }
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { what, addr, source })
}
