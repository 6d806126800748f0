//! The one retry: a request kept (or read whole) right after a rotation is sent once more,
//! with the value the rotation replaced or a freshly forced one, when its first answer is a 401
//! (the new token may not have reached every server of the provider yet).

use std::time::Instant;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::{attach_header, DataBody, Route};
use crate::error::ProxyError;
use crate::upstream::ProxyBody;

/// A request kept whole (its body read) right after a rotation, so that a 401 to it can be
/// retried with the value the rotation replaced.
pub(super) struct Kept {
    pub(super) parts: http::request::Parts,
    pub(super) body: Bytes,
    /// The request's fields, where the own loop kept them as they came (the credential's name
    /// left out of them).
    pub(super) fields: Option<crate::http1::Fields>,
    /// The credential's header, its format number, and the generation the first attempt used.
    pub(super) name: HeaderName,
    pub(super) format: usize,
    pub(super) used: u64,
}

impl Kept {
    /// A copy to send, with `header` as its credential.
    pub(super) fn request(&self, header: HeaderValue) -> Request<ProxyBody> {
        let body = match &self.fields {
            Some(fields) => DataBody::Fields(fields.clone()),
            None => DataBody::Full(self.body.clone()),
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.parts.method.clone();
        *req.uri_mut() = self.parts.uri.clone();
        *req.version_mut() = self.parts.version;
        *req.headers_mut() = self.parts.headers.clone();
        attach_header(&mut req, &self.name, header);
        req
    }
}

impl Route {
    /// Sends a request that may be sent twice: its body buffered, and once more with the
    /// other token if the first answer is a 401 right after a rotation.
    pub(super) async fn send_replayable(
        &self,
        parts: http::request::Parts,
        body: ProxyBody,
        (name, format): (HeaderName, usize),
        credential: crate::token::Credential,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                tracing::debug!(route = %self.name, error = %e, "client body failed");
                return Err(ProxyError::ClientBody);
            }
        };
        let kept = Kept { parts, body, fields: None, name, format, used: credential.generation };
        let first = self.send(kept.request(credential.header)).await;
        match first {
            Ok(first) if first.status() == StatusCode::UNAUTHORIZED => self.retry_401(kept, first).await,
            first => first,
        }
    }

    /// After a 401 to a request kept for it: sends it again with the value the rotation
    /// replaced (while the overlap lasts) or a freshly forced one; with neither, the client
    /// gets the 401 (counted as every final one is).
    pub(super) async fn retry_401(
        &self,
        kept: Kept,
        first: Response<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Some((header, with)) = self.token.retry_credential(kept.format, kept.used).await else {
            return Ok(first);
        };
        // The first answer was a 401 all the same: count it beside the retry's own answer.
        self.metrics.count_unauthorized();
        self.unauthorized();
        drop(first);
        let result = self.answer(self.start_send(kept.request(header), Instant::now()).await);
        let outcome = match &result {
            Ok(r) if r.status() == StatusCode::UNAUTHORIZED => "unauthorized",
            Ok(_) => "success",
            Err(_) => "error",
        };
        tracing::debug!(route = %self.name, token = self.token.name(), with, outcome, "retried a 401 right after a rotation");
        metrics::counter!("sidekey_upstream_retries_total", "route" => self.name.to_string(), "token" => self.token.name().to_owned(), "with" => with, "outcome" => outcome).increment(1);
        result
    }
}
