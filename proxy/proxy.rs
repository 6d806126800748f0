//! The data plane: route the request, inject the token, forward, stream the answer back.
//! [`RouteSet::prepare`] reads the stages in order: route -> `policy::admit` -> the upstream URI
//! -> token -> `inject::attach` -> upstream. Beside it: `connect` (CONNECT, interception),
//! `forms` (the injection forms other than one header), `retry` (the 401 retry after a rotation).
//!
//! Per request the work is: one route lookup, one lock-free load of the token snapshot and a
//! clone of its pre-rendered header, a header clean-up, and the upstream call. Everything
//! else (header rendering, metric handles, clients) was prepared at start or at rotation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use bytes::Bytes;
use std::time::{Duration, Instant};

use http::header::{self, HeaderName};
use http::{HeaderValue, StatusCode};
use http::{Method, Request, Response, Version};
use hyper::body::Body;

use crate::body::Body as DataBody;
use crate::error::{error_chain, ProxyError};
use crate::inject::{attach, Credential, Inject};
use crate::intercept::Intercept;
use crate::metrics::RouteMetrics;
use crate::policy::{admit, Denial, Headers, Permit, Policy};
use crate::route::{own_values, strip_hop_by_hop, strip_request_hop_by_hop, RouteTable, Target};
use crate::token::Token;
use crate::upstream::ProxyBody;
use crate::upstream::{Pool, UpstreamError};

mod connect;
mod forms;
mod retry;

use retry::Kept;

/// One configured route, ready to serve.
pub struct Route {
    pub name: Arc<str>,
    pub target: Target,
    pub token: Arc<Token>,
    /// How the credential is attached.
    pub inject: Inject,
    /// Every token the route uses (`token` first), each counted once per request.
    pub tokens: Box<[Arc<Token>]>,
    /// Connections to [`Route::target`]'s origin.
    pub upstream: Arc<Pool>,
    /// Budget for the upstream's response head, from the request sent whole.
    pub timeout: Duration,
    /// While a request body is sent: the longest time without a byte moving.
    pub send_timeout: Duration,
    pub metrics: RouteMetrics,
    /// Requests and 401s, for the audit log's usage summary (kept across reloads by name).
    pub usage: Arc<RouteUsage>,
    /// Least privilege: what may pass, how fast, how many at once.
    pub policy: Policy,
    /// `sidekey_requests_denied_total{route,reason}`: not_allowed, rate_limited.
    pub denied: [metrics::Counter; 2],
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
    /// `[intercept]`, when configured: what a CONNECT may become.
    intercept: Option<Arc<Intercept>>,
    /// Budget for connecting to a passthrough host.
    connect_timeout: Duration,
}

/// Every route of one config, and the table that finds them.
pub struct RouteSet {
    routes: Vec<Route>,
    table: RouteTable,
    /// Metrics for requests that matched no route.
    unmatched: RouteMetrics,
    /// `[log] access`: a line per request (read once per request, as a plain bool).
    access_log: bool,
}

impl RouteSet {
    pub fn new(routes: Vec<Route>, table: RouteTable) -> RouteSet {
        RouteSet { routes, table, unmatched: RouteMetrics::new("unmatched", None), access_log: false }
    }

    /// With `[log] access = true`.
    pub fn with_access_log(mut self, on: bool) -> RouteSet {
        self.access_log = on;
        self
    }
}

impl Proxy {
    pub fn new(routes: RouteSet) -> Proxy {
        Proxy {
            routes: Arc::new(ArcSwap::from_pointee(routes)),
            intercept: None,
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// Turns HTTPS interception on: CONNECT to a host a route names is intercepted, to a
    /// passthrough host tunnelled (connecting within `connect_timeout`).
    pub fn with_intercept(mut self, intercept: Arc<Intercept>, connect_timeout: Duration) -> Proxy {
        self.intercept = Some(intercept);
        self.connect_timeout = connect_timeout;
        self
    }

    /// Replaces every route at once (a config reload).
    pub fn swap_routes(&self, routes: RouteSet) {
        self.routes.store(Arc::new(routes));
    }

    /// Serves one request. Never fails: every error is an HTTP answer.
    pub fn handle(&self, req: Request<ProxyBody>) -> Handling<impl UpstreamAnswer> {
        if req.method() == Method::CONNECT {
            let this = self.clone();
            let step = Step::Connect(Box::pin(async move { this.connect(req).await }));
            return Handling {
                shared: self.routes.load_full(),
                route: None,
                start: Instant::now(),
                permit: Permit::default(),
                method: None,
                step,
            };
        }
        self.handle_via(req, None)
    }

    /// Serves one request; `via` is the CONNECT target of an intercepted tunnel it came through.
    /// The routing, the token and the hand-over to an upstream connection happen here, before
    /// the future is returned: it only waits for the upstream's answer.
    fn handle_via(&self, req: Request<ProxyBody>, via: Option<&str>) -> Handling<impl UpstreamAnswer> {
        let start = Instant::now();
        let shared = self.routes.load_full();
        let method = if shared.access_log { Some(req.method().clone()) } else { None };
        let Prepared { route, permit, step } = RouteSet::prepare(&shared, req, via, start);
        Handling { shared, route, start, permit, method, step }
    }
}

/// A request being served: what [`Proxy::handle`] returns.
#[pin_project::pin_project]
pub struct Handling<S> {
    shared: Arc<RouteSet>,
    /// Index of the matched route in `shared`.
    route: Option<usize>,
    start: Instant,
    /// The route's in-flight permit, held until the upstream's answer head is back (or the
    /// request fails, or the client goes away and this is dropped).
    permit: Permit,
    /// The request's method, kept for the access log only when it is on.
    method: Option<Method>,
    #[pin]
    step: Step<S>,
}

/// The answer to a request handed to a route's upstream, within its timeout.
pub trait UpstreamAnswer: Future<Output = Result<Response<ProxyBody>, crate::upstream::UpstreamError>> + Send {}

impl<F> UpstreamAnswer for F where F: Future<Output = Result<Response<ProxyBody>, crate::upstream::UpstreamError>> + Send
{}

type BoxedResult = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send>>;

/// Where a request stands once routed. `Done` is as large as an answer; the future holds the
/// larger of it and `Sent` in place either way, and boxing it would allocate for each refusal.
#[allow(clippy::large_enum_variant)]
#[pin_project::pin_project(project = StepProj)]
enum Step<S> {
    /// Answered already (refused, unroutable, no token); taken when polled.
    Done(Option<Result<Response<ProxyBody>, ProxyError>>),
    /// Handed to the route's upstream: the common request. `kept`: a copy to send again with
    /// the previous token if the answer is a 401 right after a rotation.
    Sent {
        route: usize,
        #[pin]
        answer: S,
        kept: Option<Box<Kept>>,
    },
    /// Another injection form, a request whose body is read whole first (to be sent again on a
    /// 401 after a rotation), or that retry itself: boxed, as it is larger.
    Boxed(BoxedResult),
    /// A CONNECT: answered as it is, with no route and no request metrics.
    Connect(Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>),
}

struct Prepared<S> {
    route: Option<usize>,
    permit: Permit,
    step: Step<S>,
}

impl<S> Prepared<S> {
    /// Answered at the stage that refuses it, holding no permit.
    fn done(route: Option<usize>, result: Result<Response<ProxyBody>, ProxyError>) -> Prepared<S> {
        Prepared { route, permit: Permit::default(), step: Step::Done(Some(result)) }
    }
}

/// [`attach`] for a header, which cannot fail.
fn attach_header(req: &mut Request<ProxyBody>, name: &HeaderName, value: HeaderValue) {
    let attached = attach(req, Credential::Header(name, value));
    debug_assert!(attached.is_ok(), "a header credential always attaches");
}

impl<S: UpstreamAnswer> Future for Handling<S> {
    type Output = Response<ProxyBody>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response<ProxyBody>> {
        let mut this = self.project();
        let result = loop {
            break match this.step.as_mut().project() {
                StepProj::Done(result) => result.take().expect("a request's future polled after it finished"),
                StepProj::Sent { route, answer, kept } => {
                    let index = *route;
                    match (this.shared.routes[index].answer(std::task::ready!(answer.poll(cx))), kept.take()) {
                        (Ok(first), Some(kept)) if first.status() == StatusCode::UNAUTHORIZED => {
                            let shared = this.shared.clone();
                            let retry = async move { shared.routes[index].retry_401(*kept, first).await };
                            this.step.set(Step::Boxed(Box::pin(retry)));
                            continue;
                        }
                        (result, _) => result,
                    }
                }
                StepProj::Boxed(f) => std::task::ready!(f.as_mut().poll(cx)),
                StepProj::Connect(f) => return f.as_mut().poll(cx),
            };
        };
        this.permit.release();
        let response = this.shared.finish(this.route.map(|i| &this.shared.routes[i]), result, *this.start);
        if let Some(method) = this.method.take() {
            access_log(&method, this.route.map(|i| &this.shared.routes[i]), &response, *this.start);
        }
        Poll::Ready(response)
    }
}

impl RouteSet {
    /// The answer sent for a request, and what is counted of it.
    fn finish(
        &self,
        route: Option<&Route>,
        result: Result<Response<ProxyBody>, ProxyError>,
        start: Instant,
    ) -> Response<ProxyBody> {
        let response = result.unwrap_or_else(ProxyError::into_response);
        let status = response.status().as_u16();
        let metrics = route.map_or(&self.unmatched, |r| &r.metrics);
        metrics.record(status, start.elapsed());
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

/// `[log] access`: one line per request, when its answer's head goes out. Only names, numbers
/// and the method: never the path's query, a header value or a token. `bytes` is the body's
/// length when it is known then (a `Content-Length` or a body held whole), absent for a stream.
#[cold]
fn access_log(method: &Method, route: Option<&Route>, response: &Response<ProxyBody>, start: Instant) {
    let status = response.status().as_u16();
    let upstream_ms = start.elapsed().as_secs_f64() * 1000.0;
    let bytes = response.body().size_hint().exact();
    let route_name = route.map_or("", |r| &*r.name);
    let token = route.map(|r| r.token.name());
    let generation = route.and_then(|r| r.token.current()).map(|v| v.generation);
    tracing::info!(
        method = method.as_str(),
        route = route_name,
        status,
        upstream_ms,
        bytes,
        token,
        generation,
        "access"
    );
}

/// Whether an answer's head is a gRPC call's refusal for its credentials (a trailers-only
/// answer with status UNAUTHENTICATED).
fn grpc_unauthenticated(headers: &http::HeaderMap) -> bool {
    headers.get(GRPC_STATUS).is_some_and(|v| v.as_bytes() == b"16")
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

impl RouteSet {
    /// A request's way through the handler, one stage after another: route -> policy::admit ->
    /// the upstream URI -> token -> inject::attach -> upstream (or an answer of our own at the
    /// stage that refuses it). No `await`: see [`Proxy::handle_via`].
    // Inlined: the stages return the upstream's future by value, and a call each would copy it.
    #[inline(always)]
    fn prepare(
        this: &Arc<RouteSet>,
        req: Request<ProxyBody>,
        via: Option<&str>,
        start: Instant,
    ) -> Prepared<impl UpstreamAnswer> {
        let m = match this.route(&req, via) {
            Ok(m) => m,
            Err(e) => return Prepared::done(None, Err(e)),
        };
        let (index, route) = (m.route, &this.routes[m.route]);
        let permit = match admit(&route.policy, req.method(), &m.rest, request_headers(&req)) {
            Ok(permit) => permit,
            Err(why) => return Prepared::done(Some(index), Err(route.refuse(why))),
        };
        let Ok(uri) = route.upstream_uri(&req, &m.rest) else {
            return Prepared::done(Some(index), Err(ProxyError::NoRoute(crate::route::NoRoute::BadPath)));
        };
        match &route.inject {
            Inject::Header { name, format } => Self::send_header(this, index, req, uri, (name, *format), start, permit),
            _ => match Self::send_other_form(this, index, req, uri) {
                Ok(step) => Prepared { route: Some(index), permit, step },
                Err(e) => Prepared::done(Some(index), Err(e)),
            },
        }
    }

    /// Route: the route a request is for (never on a CONNECT, which only the listener itself
    /// answers, never inside a tunnel). `via`: the CONNECT target of an intercepted tunnel.
    fn route<'r>(&self, req: &'r Request<ProxyBody>, via: Option<&str>) -> Result<crate::route::Match<'r>, ProxyError> {
        if req.method() == Method::CONNECT {
            return Err(ProxyError::ConnectRefused);
        }
        let found = match via {
            None => self.table.find(req.version(), req.uri(), || request_host(req)),
            Some(authority) => self.table.find_via(authority, req.uri()),
        };
        found.map_err(ProxyError::NoRoute)
    }

    /// Token, attach and send, for another injection form than one header of one token: its
    /// request goes through [`Route::send_other`], boxed.
    fn send_other_form<S>(
        this: &Arc<RouteSet>,
        index: usize,
        req: Request<ProxyBody>,
        uri: http::Uri,
    ) -> Result<Step<S>, ProxyError> {
        let route = &this.routes[index];
        let upload = upload_progress(&req);
        let mut req = DataBody::fields_to_header_map(req, true);
        *req.uri_mut() = uri;
        if let Inject::Query(name) = &route.inject {
            let Some(value) = route.token.current().filter(|v| v.is_usable(std::time::SystemTime::now())) else {
                return Err(ProxyError::TokenUnavailable { token: route.token.name().to_owned() });
            };
            let query = Credential::Query { name, value: value.secret.expose() };
            if attach(&mut req, query).is_err() {
                return Err(ProxyError::NoRoute(crate::route::NoRoute::BadPath));
            }
        }
        let shared = this.clone();
        Ok(match upload {
            None => Step::Boxed(Box::pin(async move { shared.routes[index].send_other(req).await })),
            Some(progress) => Step::Boxed(Box::pin(async move {
                let route = &shared.routes[index];
                route.bounded(route.send_other(req), progress, ProxyError::from_stall).await
            })),
        })
    }

    /// Token, attach and send, for the common route: one header of one token. The request is
    /// handed to the upstream here; one that may need a 401 retry right after a rotation is
    /// kept (or, with a body, read whole first). Each way out builds the whole [`Prepared`]
    /// (with `permit`, or none when refused), so the upstream's future is not moved again.
    // Inlined: see `RouteSet::prepare`.
    #[inline(always)]
    fn send_header(
        this: &Arc<RouteSet>,
        index: usize,
        req: Request<ProxyBody>,
        uri: http::Uri,
        (name, format): (&HeaderName, usize),
        start: Instant,
        permit: Permit,
    ) -> Prepared<impl UpstreamAnswer> {
        let route = &this.routes[index];
        let Some(credential) = route.token.credential(format) else {
            return Prepared::done(
                Some(index),
                Err(ProxyError::TokenUnavailable { token: route.token.name().to_owned() }),
            );
        };
        let upload = upload_progress(&req);
        let (mut parts, body) = req.into_parts();
        parts.uri = uri;
        let client_on_h2 = parts.version == Version::HTTP_2;
        // The upstream connection picks HTTP/1.1 or HTTP/2 by ALPN; hyper needs 1.1 here for both.
        parts.version = Version::HTTP_11;
        route.token.count_request();
        // Right after a rotation a 401 may only mean the new token has not reached every server
        // of the provider yet: a request that can be sent twice is kept for one retry.
        let retry = route.token.retry_config();
        let replayable = credential.fresh
            && retry.methods.contains(&parts.method)
            && body.size_hint().exact().is_some_and(|n| n <= retry.body_limit as u64);
        if let DataBody::Fields(mut fields) = body {
            // The own loop's common request: its fields go on as they came (less the hop's own
            // and `Host`, left out already), the credential after them; kept so for a retry
            // likewise.
            if !replayable {
                let mut req = Request::from_parts(parts, DataBody::Fields(fields));
                attach_header(&mut req, name, credential.header);
                let answer = route.start_send(req, start);
                return Prepared { route: Some(index), permit, step: Step::Sent { route: index, answer, kept: None } };
            }
            // Kept without the client's own field of that name.
            fields.remove(name);
            let kept = Kept {
                parts,
                body: Bytes::new(),
                fields: Some(fields),
                name: name.clone(),
                format,
                used: credential.generation,
            };
            let answer = route.start_send(kept.request(credential.header), start);
            let step = Step::Sent { route: index, answer, kept: Some(Box::new(kept)) };
            return Prepared { route: Some(index), permit, step };
        }
        strip_request_hop_by_hop(&mut parts.headers, client_on_h2);
        // The client derives Host (or :authority) from the upstream URI.
        parts.headers.remove(header::HOST);
        let empty = body.is_end_stream();
        if replayable && !empty {
            // The body is read whole first, so that it can be sent twice.
            let (shared, name) = (this.clone(), name.clone());
            let step = Step::Boxed(Box::pin(async move {
                let route = &shared.routes[index];
                let send = route.send_replayable(parts, body, (name, format), credential);
                match upload {
                    None => send.await,
                    Some(progress) => route.bounded(send, progress, ProxyError::from_stall).await,
                }
            }));
            return Prepared { route: Some(index), permit, step };
        }
        let (req, kept) = if replayable {
            // Kept until the answer is back (see `own_values`; the body is empty here).
            own_values(&mut parts.headers);
            let kept = Kept {
                parts,
                body: Bytes::new(),
                fields: None,
                name: name.clone(),
                format,
                used: credential.generation,
            };
            (kept.request(credential.header), Some(Box::new(kept)))
        } else {
            let mut req = Request::from_parts(parts, body);
            attach_header(&mut req, name, credential.header);
            (req, None)
        };
        let answer = route.start_send(req, start);
        if let Some(progress) = upload {
            let shared = this.clone();
            let step = Step::Boxed(Box::pin(async move {
                let route = &shared.routes[index];
                route.answer(route.bounded(answer, progress, UpstreamError::from_stall).await)
            }));
            return Prepared { route: Some(index), permit, step };
        }
        Prepared { route: Some(index), permit, step: Step::Sent { route: index, answer, kept } }
    }
}

/// An upload is bounded by its progress, not by `timeout` from now (see `upload`).
fn upload_progress(req: &Request<ProxyBody>) -> Option<Arc<crate::upload::Progress>> {
    match req.body() {
        DataBody::Streamed(u) => Some(u.progress()),
        _ => None,
    }
}

impl Route {
    /// The upstream URI for the path past the prefix, in origin form: the route's upstream
    /// pool adds the authority (HTTP/1.1's `Host` written with the head, HTTP/2's `:scheme` and
    /// `:authority`); SigV4 signs the absolute URL.
    fn upstream_uri(&self, req: &Request<ProxyBody>, rest: &str) -> Result<http::Uri, http::Error> {
        match &self.inject {
            // A presigned URL's signature would be a second one beside sidekey's.
            Inject::Sign(_) => {
                let query = crate::inject::SigV4::strip_query_signature(req.uri().query());
                self.target.uri(rest, query.as_deref())
            }
            _ => self.target.origin_uri(rest, req.uri().query()),
        }
    }
}

impl Route {
    /// The answer to a request policy refused, counted in the metric and the route's usage
    /// (a path refused as unreadable is a bad request, not a denial).
    fn refuse(&self, why: Denial) -> ProxyError {
        use std::sync::atomic::Ordering::Relaxed;
        let (counter, usage, error) = match why {
            Denial::BadPath => return ProxyError::NoRoute(crate::route::NoRoute::BadPath),
            Denial::NotAllowed => (0, &self.usage.denied_not_allowed, ProxyError::NotAllowed),
            Denial::InFlight => (1, &self.usage.denied_rate_limited, ProxyError::RateLimited { retry_after_secs: 1 }),
            Denial::RateLimited { wait } => {
                let retry_after_secs = wait.as_secs_f64().ceil() as u64;
                (1, &self.usage.denied_rate_limited, ProxyError::RateLimited { retry_after_secs })
            }
        };
        self.denied[counter].increment(1);
        usage.fetch_add(1, Relaxed);
        error
    }

    /// Accounts for an upstream 401; a propagation failure with `on_401 = "refresh"` starts
    /// one early refresh (at most one per window: the tracker reports once).
    fn unauthorized(&self) {
        self.usage.unauthorized.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(failure) = self.token.observe_unauthorized(&self.name) {
            if failure.refresh {
                // Counted as started here, before this 401 is answered.
                tokio::spawn(self.token.clone().refresh_owned());
            }
        }
    }

    /// Hands one request, its credential attached, to the upstream; the answer is due within
    /// the route's timeout (an upload's is its progress's: [`Route::bounded`]).
    // Inlined: see `RouteSet::prepare`.
    #[inline(always)]
    fn start_send(&self, req: Request<ProxyBody>, start: Instant) -> impl UpstreamAnswer {
        // The deadline from the request's start (read once for its metrics as well).
        let deadline = match req.body() {
            DataBody::Streamed(_) => crate::upload::far(),
            _ => tokio::time::Instant::from_std(start) + self.timeout,
        };
        self.upstream.request(req, deadline)
    }

    /// An upload's request, bounded by its progress: `send_timeout` while its body is sent,
    /// then `timeout` for the answer's head.
    async fn bounded<F: Future>(
        &self,
        fut: F,
        progress: Arc<crate::upload::Progress>,
        stalled: fn(crate::upload::Stalled) -> F::Output,
    ) -> F::Output {
        crate::upload::bounded(fut, progress, self.timeout, self.send_timeout, |why| {
            tracing::warn!(route = %self.name, stalled = ?why, "an upload stalled");
            stalled(why)
        })
        .await
    }

    /// Sends one request upstream within the route's timeout.
    async fn send(&self, req: Request<ProxyBody>) -> Result<Response<ProxyBody>, ProxyError> {
        self.answer(self.start_send(req, Instant::now()).await)
    }

    /// The upstream's answer (or failure) as the client gets it.
    fn answer(
        &self,
        outcome: Result<Response<ProxyBody>, crate::upstream::UpstreamError>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        match outcome {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                // gRPC's 401: a call refused for its credentials is answered `200` with
                // `grpc-status: 16` (UNAUTHENTICATED) in its only HEADERS frame. Counted as a 401
                // (HTTP/2 answers only: gRPC has no other; a status in trailers is not seen).
                if matches!(body, DataBody::Incoming(_)) && grpc_unauthenticated(&parts.headers) {
                    self.metrics.count_unauthorized();
                    self.unauthorized();
                }
                strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, body))
            }
            Err(UpstreamError::ClientStalled) => Err(ProxyError::RequestTimeout),
            Err(crate::upstream::UpstreamError::TimedOut) => {
                tracing::warn!(route = %self.name, timeout_ms = self.timeout.as_millis() as u64, "upstream response timed out");
                Err(ProxyError::UpstreamTimeout)
            }
            Err(e) => {
                let err = ProxyError::from_client_error(&e);
                if matches!(err, ProxyError::ClientBody) {
                    tracing::debug!(route = %self.name, error = %error_chain(&e), "client body failed");
                } else {
                    tracing::warn!(route = %self.name, error = %error_chain(&e), "upstream request failed");
                }
                Err(err)
            }
        }
    }
}

/// A request's header fields, where the listener kept them, as policy reads them.
fn request_headers(req: &Request<ProxyBody>) -> Headers<'_> {
    match req.body() {
        DataBody::Fields(fields) => Headers::Fields(fields),
        _ => Headers::Map(req.headers()),
    }
}

/// A request's `Host`, from the fields the own loop kept or from its header map, where it is
/// text (`HeaderValue::to_str`'s visible ASCII).
fn request_host(req: &Request<ProxyBody>) -> Option<&str> {
    match req.body() {
        DataBody::Fields(fields) => {
            let host = fields.host()?;
            host.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)).then(|| std::str::from_utf8(host).ok())?
        }
        _ => req.headers().get(header::HOST).and_then(|h| h.to_str().ok()),
    }
}

impl ProxyError {
    /// The answer to an upload that stalled: `408` for the client's silence, else `504`.
    fn from_stall(why: crate::upload::Stalled) -> Result<Response<ProxyBody>, ProxyError> {
        Err(match why {
            crate::upload::Stalled::Client => ProxyError::RequestTimeout,
            _ => ProxyError::UpstreamTimeout,
        })
    }
}

impl UpstreamError {
    fn from_stall(why: crate::upload::Stalled) -> Result<Response<ProxyBody>, UpstreamError> {
        Err(match why {
            crate::upload::Stalled::Client => UpstreamError::ClientStalled,
            _ => UpstreamError::TimedOut,
        })
    }
}
