//! The data plane: route the request, inject the token, forward, stream the answer back.
//!
//! Per request the work is: one route lookup, one lock-free load of the token snapshot and a
//! clone of its pre-rendered header, a header clean-up, and the upstream call. Everything
//! else (header rendering, metric handles, clients) was prepared at start or at rotation.

use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::{Duration, Instant};

use http::header::{self, HeaderName};
use http::{HeaderValue, StatusCode};
use http::{Method, Request, Response, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Body;
use hyper::body::Incoming;

use crate::error::{ProxyBody, ProxyError};
use crate::metrics::RouteMetrics;
use crate::route::{strip_hop_by_hop, RouteTable, Target};
use crate::token::Token;
use crate::upstream::UpstreamClient;

/// One configured route, ready to serve.
pub struct Route {
    pub name: Arc<str>,
    pub target: Target,
    pub token: Arc<Token>,
    /// The header the token goes in.
    pub header: HeaderName,
    /// Index of this route's format among the token's rendered headers.
    pub format: usize,
    pub client: UpstreamClient,
    /// Budget for the upstream's response head.
    pub timeout: Duration,
    pub metrics: RouteMetrics,
    /// Requests and 401s, for the audit log's usage summary (kept across reloads by name).
    pub usage: Arc<RouteUsage>,
    /// Least privilege: what may pass, how fast, how many at once.
    pub allow: crate::policy::AllowList,
    pub bucket: Option<crate::policy::Bucket>,
    pub in_flight: Option<crate::policy::InFlight>,
    /// `sidekey_requests_denied_total{route,reason}`, in [`Denial`] order: not_allowed, rate_limited.
    pub denied: [metrics::Counter; 2],
}

/// Why policy refused a request; the index into [`Route::denied`].
#[derive(Clone, Copy)]
enum Denial {
    NotAllowed = 0,
    RateLimited = 1,
}

/// A route's request and 401 counts since start.
#[derive(Debug, Default)]
pub struct RouteUsage {
    pub requests: std::sync::atomic::AtomicU64,
    pub unauthorized: std::sync::atomic::AtomicU64,
    /// Answers of 500 and above, ours (502, 503, 504) or the upstream's.
    pub errors: std::sync::atomic::AtomicU64,
    /// Requests refused by the route's allow rules.
    pub denied_not_allowed: std::sync::atomic::AtomicU64,
    /// Requests refused by its rate or in-flight limit.
    pub denied_rate_limited: std::sync::atomic::AtomicU64,
}

/// The proxy service: cheap to clone, one per connection. Its routes are swapped whole on a
/// config reload; a request keeps the set it started with.
#[derive(Clone)]
pub struct Proxy {
    routes: Arc<ArcSwap<RouteSet>>,
}

/// Every route of one config, and the table that finds them.
pub struct RouteSet {
    routes: Vec<Route>,
    table: RouteTable,
    /// Metrics for requests that matched no route.
    unmatched: RouteMetrics,
}

impl RouteSet {
    pub fn new(routes: Vec<Route>, table: RouteTable) -> RouteSet {
        RouteSet { routes, table, unmatched: RouteMetrics::new("unmatched", None) }
    }
}

impl Proxy {
    pub fn new(routes: RouteSet) -> Proxy {
        Proxy { routes: Arc::new(ArcSwap::from_pointee(routes)) }
    }

    /// Replaces every route at once (a config reload).
    pub fn swap_routes(&self, routes: RouteSet) {
        self.routes.store(Arc::new(routes));
    }

    /// Serves one request. Never fails: every error is an HTTP answer.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let start = Instant::now();
        let shared = self.routes.load_full();
        let shared = &*shared;
        let (route, result) = shared.forward(req).await;
        let response = result.unwrap_or_else(ProxyError::into_response);
        let status = response.status().as_u16();
        let metrics = route.map_or(&shared.unmatched, |r| &r.metrics);
        metrics.record(status, start.elapsed().as_secs_f64());
        if let Some(r) = route {
            r.usage.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if status >= 500 {
                r.usage.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if status == 401 {
                r.unauthorized();
            }
            tracing::debug!(route = %r.name, status, micros = start.elapsed().as_micros() as u64, "request");
        } else {
            tracing::debug!(status, "request matched no route");
        }
        response
    }
}

impl RouteSet {
    async fn forward(&self, req: Request<Incoming>) -> (Option<&Route>, Result<Response<ProxyBody>, ProxyError>) {
        if req.method() == Method::CONNECT {
            return (None, Err(ProxyError::ConnectRefused));
        }
        let (route, uri) = match self.table.find(req.version(), req.uri(), req.headers()) {
            Ok(m) => {
                let route = &self.routes[m.route];
                if !route.allow.allows(req.method(), &m.rest) {
                    route.count_denial(Denial::NotAllowed);
                    return (Some(route), Err(ProxyError::NotAllowed));
                }
                match route.target.uri(&m.rest, req.uri().query()) {
                    Ok(uri) => (route, uri),
                    Err(_) => return (Some(route), Err(ProxyError::NoRoute(crate::route::NoRoute::BadPath))),
                }
            }
            Err(no) => return (None, Err(ProxyError::NoRoute(no))),
        };
        // Held until the upstream's answer is back (or the request fails).
        let _slot = match &route.in_flight {
            Some(cap) => match cap.try_enter() {
                Some(slot) => Some(slot),
                None => {
                    route.count_denial(Denial::RateLimited);
                    return (Some(route), Err(ProxyError::RateLimited { retry_after_secs: 1 }));
                }
            },
            None => None,
        };
        if let Some(bucket) = &route.bucket {
            if let Err(wait) = bucket.take() {
                route.count_denial(Denial::RateLimited);
                return (
                    Some(route),
                    Err(ProxyError::RateLimited { retry_after_secs: wait.as_secs_f64().ceil() as u64 }),
                );
            }
        }
        let Some(credential) = route.token.credential(route.format) else {
            return (Some(route), Err(ProxyError::TokenUnavailable { token: route.token.name().to_owned() }));
        };
        let (mut parts, body) = req.into_parts();
        parts.uri = uri;
        // The upstream connection picks HTTP/1.1 or HTTP/2 by ALPN; hyper needs 1.1 here for both.
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        // The client derives Host (or :authority) from the upstream URI.
        parts.headers.remove(header::HOST);
        route.token.count_request();

        // Right after a rotation a 401 may only mean the new token has not reached every server
        // of the provider yet: a request that can be sent twice is kept for one retry.
        let retry = route.token.retry_config();
        let replayable = credential.fresh
            && retry.methods.contains(&parts.method)
            && body.size_hint().exact().is_some_and(|n| n <= retry.body_limit as u64);
        if !replayable {
            parts.headers.insert(route.header.clone(), credential.header);
            let result = route.send(Request::from_parts(parts, Either::Left(body))).await;
            return (Some(route), result);
        }
        // Only within `overlap` of a new value: boxed, so the common request's future stays
        // small (it is moved into place on each request).
        let result = Box::pin(route.send_replayable(parts, body, credential)).await;
        (Some(route), result)
    }
}

impl Route {
    /// Sends a request that may be sent twice: its body buffered, and once more with the
    /// other token if the first answer is a 401 right after a rotation.
    async fn send_replayable(
        &self,
        parts: http::request::Parts,
        body: Incoming,
        credential: crate::token::Credential,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                tracing::debug!(route = %self.name, error = %e, "client body failed");
                return Err(ProxyError::ClientBody);
            }
        };
        let copy = |header: HeaderValue| {
            let mut req = Request::new(Either::Right(Full::new(body.clone())));
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = parts.uri.clone();
            *req.version_mut() = parts.version;
            *req.headers_mut() = parts.headers.clone();
            req.headers_mut().insert(self.header.clone(), header);
            req
        };
        let first = self.send(copy(credential.header)).await;
        let Ok(resp) = &first else { return first };
        if resp.status() != StatusCode::UNAUTHORIZED {
            return first;
        }
        let Some((header, with)) = self.token.retry_credential(self.format, credential.generation).await else {
            // Nothing else to try: the client gets the 401 (counted as every final one is).
            return first;
        };
        // The first answer was a 401 all the same: count it beside the retry's own answer.
        self.metrics.count_unauthorized();
        self.unauthorized();
        drop(first);
        let result = self.send(copy(header)).await;
        let outcome = match &result {
            Ok(r) if r.status() == StatusCode::UNAUTHORIZED => "unauthorized",
            Ok(_) => "success",
            Err(_) => "error",
        };
        tracing::debug!(route = %self.name, token = self.token.name(), with, outcome, "retried a 401 right after a rotation");
        metrics::counter!("sidekey_upstream_retries_total", "route" => self.name.to_string(), "token" => self.token.name().to_owned(), "with" => with, "outcome" => outcome).increment(1);
        result
    }

    /// Counts a refusal by policy in the metric and the route's usage.
    fn count_denial(&self, why: Denial) {
        use std::sync::atomic::Ordering::Relaxed;
        self.denied[why as usize].increment(1);
        match why {
            Denial::NotAllowed => self.usage.denied_not_allowed.fetch_add(1, Relaxed),
            Denial::RateLimited => self.usage.denied_rate_limited.fetch_add(1, Relaxed),
        };
    }

    /// Accounts for an upstream 401; a propagation failure with `on_401 = "refresh"` starts
    /// one early refresh (at most one per window: the tracker reports once).
    fn unauthorized(&self) {
        self.usage.unauthorized.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(failure) = self.token.observe_unauthorized(&self.name) {
            if failure.refresh {
                let token = self.token.clone();
                tokio::spawn(async move {
                    token.refresh().await;
                });
            }
        }
    }

    /// Sends one request upstream within the route's timeout.
    async fn send(&self, req: Request<ProxyBody>) -> Result<Response<ProxyBody>, ProxyError> {
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, Either::Left(body)))
            }
            Ok(Err(e)) => {
                let err = ProxyError::from_client_error(&e);
                tracing::warn!(route = %self.name, error = %error_chain(&e), "upstream request failed");
                Err(err)
            }
            Err(_) => {
                tracing::warn!(route = %self.name, timeout_ms = self.timeout.as_millis() as u64, "upstream response timed out");
                Err(ProxyError::UpstreamTimeout)
            }
        }
    }
}

/// `error: cause: cause`, for logs. Upstream client errors never carry header values.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
