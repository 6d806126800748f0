//! Typed proxy errors, and the one place they become HTTP responses.

use http::{header, HeaderValue, Response, StatusCode};

use crate::route::NoRoute;
use crate::upstream::{ConnectTimedOut, ProxyBody};

/// Why a request was not (fully) proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches the request")]
    NoRoute(NoRoute),
    #[error("token {token} has no usable value")]
    TokenUnavailable { token: String },
    #[error("the upstream could not be reached")]
    UpstreamUnreachable,
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    #[error("CONNECT is not allowed to this host")]
    ConnectRefused,
    #[error("a CONNECT target is host:port")]
    ConnectTarget,
    #[error("the intercepted host's certificate could not be made")]
    InterceptFailed,
    #[error(
        "the request body is larger than the route signs ({limit} bytes) and the service takes no unsigned payload"
    )]
    BodyTooLarge { limit: usize },
    #[error("the request cannot be signed as sent (a header value that is not text, say)")]
    Unsignable,
    #[error("the request body could not be read")]
    ClientBody,
    #[error("the route's allow rules do not permit this request")]
    NotAllowed,
    #[error("the route's rate or concurrency limit is reached")]
    RateLimited { retry_after_secs: u64 },
    #[error("the client sent no part of its request body for the route's send_timeout")]
    RequestTimeout,
}

/// Seconds a client should wait before retrying a request refused for a missing token.
const TOKEN_RETRY_AFTER: &str = "5";
const UPSTREAM_RETRY_AFTER: &str = "1";

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute(NoRoute::BadPath) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::TokenUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ConnectRefused => StatusCode::FORBIDDEN,
            ProxyError::ConnectTarget => StatusCode::BAD_REQUEST,
            ProxyError::InterceptFailed => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Unsignable => StatusCode::BAD_REQUEST,
            ProxyError::ClientBody => StatusCode::BAD_REQUEST,
            ProxyError::NotAllowed => StatusCode::FORBIDDEN,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The contract's JSON error body and headers.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let (code, retry_after) = match &self {
            ProxyError::NoRoute(NoRoute::BadPath) => ("bad_request", None),
            ProxyError::NoRoute(_) => ("no_route", None),
            ProxyError::TokenUnavailable { .. } => ("token_unavailable", Some(TOKEN_RETRY_AFTER)),
            ProxyError::UpstreamUnreachable => ("upstream_unreachable", Some(UPSTREAM_RETRY_AFTER)),
            ProxyError::UpstreamTimeout => ("upstream_timeout", None),
            ProxyError::ConnectRefused => ("not_allowed", None),
            ProxyError::ConnectTarget => ("bad_request", None),
            ProxyError::InterceptFailed => ("intercept_failed", None),
            ProxyError::BodyTooLarge { .. } => ("body_too_large", None),
            ProxyError::Unsignable => ("bad_request", None),
            ProxyError::ClientBody => ("bad_request", None),
            ProxyError::NotAllowed => ("not_allowed", None),
            ProxyError::RateLimited { .. } => ("rate_limited", None),
            ProxyError::RequestTimeout => ("request_timeout", None),
        };
        let message = match &self {
            ProxyError::NoRoute(NoRoute::BadPath) => "the request path is not one sidekey forwards".to_owned(),
            ProxyError::NoRoute(NoRoute::ForeignHost) => "no route names the requested host".to_owned(),
            other => other.to_string(),
        };
        let mut body = serde_json::json!({ "error": code, "message": message });
        if let ProxyError::TokenUnavailable { token } = &self {
            body["token"] = serde_json::Value::String(token.clone());
        }
        let mut resp = json_response(status, &body, retry_after);
        if let ProxyError::RateLimited { retry_after_secs } = self {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
        }
        resp
    }

    /// Classifies an upstream client error: timeouts become 504, everything else 502.
    pub fn from_client_error(err: &(dyn std::error::Error + 'static)) -> ProxyError {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cause {
            if e.is::<ConnectTimedOut>() {
                return ProxyError::UpstreamTimeout;
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::TimedOut {
                    return ProxyError::UpstreamTimeout;
                }
                // The client's body failed on its way (cut short, or chunks that do not parse).
                if io.get_ref().is_some_and(|inner| inner.is::<crate::upstream::h1::ClientBodyFailed>()) {
                    return ProxyError::ClientBody;
                }
            }
            cause = e.source();
        }
        ProxyError::UpstreamUnreachable
    }
}

/// A small JSON response of ours.
pub fn json_response(
    status: StatusCode,
    body: &serde_json::Value,
    retry_after: Option<&'static str>,
) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(s) = retry_after {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(s));
    }
    resp
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
