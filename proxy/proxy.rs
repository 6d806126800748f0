//! The data plane: route the request, inject the token, forward, stream the answer back.
//!
//! Per request the work is: one route lookup, one lock-free load of the token snapshot and a
//! clone of its pre-rendered header, a header clean-up, and the upstream call. Everything
//! else (header rendering, metric handles, clients) was prepared at start or at rotation.

use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::{Duration, Instant};

use http::header::{self, HeaderName};
use http::{Method, Request, Response, Version};
use http_body_util::Either;
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
            if status == 401 {
                r.token.count_unauthorized();
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
                match route.target.uri(&m.rest, req.uri().query()) {
                    Ok(uri) => (route, uri),
                    Err(_) => return (Some(route), Err(ProxyError::NoRoute(crate::route::NoRoute::BadPath))),
                }
            }
            Err(no) => return (None, Err(ProxyError::NoRoute(no))),
        };
        let Some(credential) = route.token.header(route.format) else {
            return (Some(route), Err(ProxyError::TokenUnavailable { token: route.token.name().to_owned() }));
        };
        let (mut parts, body) = req.into_parts();
        parts.uri = uri;
        // The upstream connection picks HTTP/1.1 or HTTP/2 by ALPN; hyper needs 1.1 here for both.
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        // The client derives Host (or :authority) from the upstream URI.
        parts.headers.remove(header::HOST);
        parts.headers.insert(route.header.clone(), credential);
        route.token.count_request();
        let sent = route.client.request(Request::from_parts(parts, body));
        let result = match tokio::time::timeout(route.timeout, sent).await {
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, Either::Left(body)))
            }
            Ok(Err(e)) => {
                let err = ProxyError::from_client_error(&e);
                tracing::warn!(route = %route.name, error = %error_chain(&e), "upstream request failed");
                Err(err)
            }
            Err(_) => {
                tracing::warn!(route = %route.name, timeout_ms = route.timeout.as_millis() as u64, "upstream response timed out");
                Err(ProxyError::UpstreamTimeout)
            }
        };
        (Some(route), result)
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
