//! Sending for the other injection forms than one header of one token: several headers, Basic,
//! a query parameter (attached already), and SigV4 signing, which reads a bounded body first.

use http::header;
use http::{HeaderValue, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Body;

use super::{attach_header, DataBody, Route};
use crate::error::ProxyError;
use crate::inject::{attach, AttachError, Credential, Inject};
use crate::route::strip_request_hop_by_hop;
use crate::upstream::ProxyBody;

impl Route {
    /// Sends a request of a route that injects otherwise than one header of one token (no
    /// 401 retry: that is for a single rotating token).
    pub(super) async fn send_other(&self, req: Request<ProxyBody>) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let client_on_h2 = parts.version == Version::HTTP_2;
        parts.version = Version::HTTP_11;
        strip_request_hop_by_hop(&mut parts.headers, client_on_h2);
        parts.headers.remove(header::HOST);
        let mut req = Request::from_parts(parts, body);
        match &self.inject {
            Inject::Sign(signer) => return self.send_signed(signer, req).await,
            // The query parameter is in the URI already.
            Inject::Header { .. } | Inject::Query(_) => {}
            Inject::Headers(list) => {
                for (name, token, format) in list.iter() {
                    let Some(credential) = token.credential(*format) else {
                        return Err(ProxyError::TokenUnavailable { token: token.name().to_owned() });
                    };
                    attach_header(&mut req, name, credential.header);
                }
            }
            Inject::Basic(basic) => match basic.credential() {
                Ok(value) => attach_header(&mut req, &header::AUTHORIZATION, value),
                Err(crate::inject::Unavailable::Token(token)) => return Err(ProxyError::TokenUnavailable { token }),
                Err(crate::inject::Unavailable::NotHeaderSafe) => {
                    tracing::warn!(route = %self.name, "the Basic credential's values make no valid header");
                    return Err(ProxyError::TokenUnavailable { token: self.token.name().to_owned() });
                }
            },
        }
        for t in self.tokens.iter() {
            t.count_request();
        }
        self.send(req).await
    }

    /// Signs and sends: a body within the signer's limit is buffered and signed with its hash;
    /// a larger one, or one of unknown length, goes out unsigned where the service allows it
    /// and is refused with 413 where it does not.
    async fn send_signed(
        &self,
        signer: &crate::inject::SigV4,
        req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        crate::inject::SigV4::strip_client_signature(&mut parts.headers);
        if let Some(authority) = parts.uri.authority() {
            let host = HeaderValue::from_str(authority.as_str()).map_err(|_| ProxyError::ClientBody)?;
            parts.headers.insert(header::HOST, host);
        }
        let limit = signer.config.body_limit;
        let exact = body.size_hint().exact();
        let buffer = exact.map_or(!signer.unsigned_payload(), |n| n <= limit as u64);
        let req = if buffer {
            let bytes = match http_body_util::Limited::new(body, limit).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return Err(ProxyError::BodyTooLarge { limit });
                }
                Err(e) => {
                    tracing::debug!(route = %self.name, error = %e, "client body failed");
                    return Err(ProxyError::ClientBody);
                }
            };
            let mut req = Request::from_parts(parts, DataBody::Full(bytes.clone()));
            self.sign(signer, &mut req, Some(&bytes))?;
            req
        } else if signer.unsigned_payload() {
            let mut req = Request::from_parts(parts, body);
            self.sign(signer, &mut req, None)?;
            req
        } else {
            return Err(ProxyError::BodyTooLarge { limit });
        };
        // Host stays as signed (the route's authority, which hyper would derive alike).
        self.token.count_request();
        self.send(req).await
    }

    fn sign(
        &self,
        signer: &crate::inject::SigV4,
        req: &mut Request<ProxyBody>,
        body: Option<&[u8]>,
    ) -> Result<(), ProxyError> {
        use crate::inject::SignError;
        let signature = Credential::SigV4 { signer, token: &self.token, payload: body };
        attach(req, signature).map_err(|e| match e {
            AttachError::Sign(SignError::Unavailable) => ProxyError::TokenUnavailable { token: self.token.name().to_owned() },
            AttachError::Sign(SignError::BadCredentials(why)) => {
                tracing::warn!(route = %self.name, token = self.token.name(), error = %why, "cannot sign: the token holds no AWS credentials");
                ProxyError::TokenUnavailable { token: self.token.name().to_owned() }
            }
            AttachError::Sign(SignError::Request(why)) => {
                tracing::debug!(route = %self.name, error = %why, "cannot sign the request");
                ProxyError::Unsignable
            }
            AttachError::BadUri => ProxyError::Unsignable,
        })
    }
}
