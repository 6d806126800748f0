//! AWS Signature Version 4: a route with `sign = { aws_sigv4 = { service, region } }` signs each
//! request with credentials from its token, through the `aws-sigv4` crate.
//!
//! The token's value holds the credentials in one of the forms AWS tools write
//! ([`crate::token::aws_credentials`]); they are parsed once per token generation. A rotation is a new value like
//! any other: the next request signs with the new key.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, UriPathNormalizationMode,
};
use aws_smithy_runtime_api::client::identity::Identity;
use http::header::{self, HeaderName};

use crate::config::AwsSigV4Config;
use crate::token::aws_credentials::parse_credentials;
use crate::token::{Token, TokenValue};

/// Why a request could not be signed.
#[derive(Debug)]
pub enum SignError {
    /// The token has no usable value.
    Unavailable,
    /// The token's value holds no credentials (the message says what is missing).
    BadCredentials(String),
    /// The request cannot be signed as it is (a header value that is not text, say).
    Request(String),
}

/// A route's SigV4 signer.
pub struct SigV4 {
    pub config: AwsSigV4Config,
    /// The identity of the token's last generation seen.
    identity: ArcSwapOption<(u64, Identity)>,
}

/// Headers a client may have sent for a signature of its own: removed before signing.
const CLIENT_SIGNATURE_HEADERS: [&str; 3] = ["x-amz-date", "x-amz-security-token", "x-amz-content-sha256"];

/// The query parameters of a SigV4 presigned URL.
const QUERY_SIGNATURE_PARAMS: [&str; 7] = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

impl SigV4 {
    pub fn new(config: AwsSigV4Config) -> SigV4 {
        SigV4 { config, identity: ArcSwapOption::empty() }
    }

    /// Whether a body past `body_limit`, or of unknown length, goes out unsigned (S3 allows it).
    pub fn unsigned_payload(&self) -> bool {
        self.config.unsigned_payload.unwrap_or(self.config.service == "s3")
    }

    fn identity(&self, token: &Token) -> Result<Identity, SignError> {
        let value: Arc<TokenValue> =
            token.current().filter(|v| v.is_usable(SystemTime::now())).ok_or(SignError::Unavailable)?;
        if let Some(cached) = self.identity.load().as_ref() {
            if cached.0 == value.generation {
                return Ok(cached.1.clone());
            }
        }
        let c = parse_credentials(value.secret.expose()).map_err(SignError::BadCredentials)?;
        let credentials = aws_credential_types::Credentials::new(
            c.access_key_id.as_str(),
            c.secret_access_key.as_str(),
            c.session_token.as_ref().map(|t| t.to_string()),
            c.expiration,
            "sidekey",
        );
        let identity: Identity = credentials.into();
        self.identity.store(Some(Arc::new((value.generation, identity.clone()))));
        Ok(identity)
    }

    /// Removes a client's own signature headers (and `Authorization`).
    pub fn strip_client_signature(headers: &mut http::HeaderMap) {
        headers.remove(header::AUTHORIZATION);
        for h in CLIENT_SIGNATURE_HEADERS {
            headers.remove(HeaderName::from_static(h));
        }
    }

    /// The query without a presigned URL's signature parameters (`X-Amz-Signature`,
    /// `X-Amz-Credential` and the rest, by name in any case): sidekey's own signature is the
    /// request's only one. `None` when nothing is left; borrowed when nothing was removed.
    pub fn strip_query_signature(query: Option<&str>) -> Option<std::borrow::Cow<'_, str>> {
        let query = query?;
        let is_signature = |pair: &str| {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            let key: String = url::form_urlencoded::parse(key.as_bytes()).map(|(k, _)| k.into_owned()).collect();
            QUERY_SIGNATURE_PARAMS.iter().any(|p| key.eq_ignore_ascii_case(p))
        };
        if !query.split('&').any(is_signature) {
            return Some(std::borrow::Cow::Borrowed(query));
        }
        let kept: Vec<&str> = query.split('&').filter(|p| !p.is_empty() && !is_signature(p)).collect();
        (!kept.is_empty()).then(|| std::borrow::Cow::Owned(kept.join("&")))
    }

    /// The signature of `req` (its URI absolute, its Host set) with the token's credentials:
    /// `body` is the whole payload, or `None` for an unsigned one. The headers it gives are
    /// set by [`crate::inject::attach`].
    pub fn sign<B>(
        &self,
        token: &Token,
        req: &http::Request<B>,
        body: Option<&[u8]>,
    ) -> Result<aws_sigv4::http_request::SigningInstructions, SignError> {
        let identity = self.identity(token)?;
        let mut settings = SigningSettings::default();
        if self.config.service == "s3" {
            // S3 wants the payload hash as a header, and its paths neither normalized nor
            // encoded twice.
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
            settings.percent_encoding_mode = PercentEncodingMode::Single;
            settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        }
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.config.region)
            .name(&self.config.service)
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| SignError::Request(e.to_string()))?
            .into();
        let mut headers = Vec::with_capacity(req.headers().len());
        for (name, value) in req.headers() {
            let value = value.to_str().map_err(|_| SignError::Request(format!("header {name} is not text")))?;
            headers.push((name.as_str(), value));
        }
        let signable_body = match body {
            Some(b) => SignableBody::Bytes(b),
            None => SignableBody::UnsignedPayload,
        };
        let uri = req.uri().to_string();
        let signable = SignableRequest::new(req.method().as_str(), uri.as_str(), headers.into_iter(), signable_body)
            .map_err(|e| SignError::Request(e.to_string()))?;
        let (instructions, _signature) = aws_sigv4::http_request::sign(signable, &params)
            .map_err(|e| SignError::Request(e.to_string()))?
            .into_parts();
        Ok(instructions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_presigned_urls_signature_parameters_leave_the_query_and_the_rest_stays() {
        let strip = |q: Option<&str>| SigV4::strip_query_signature(q).map(|c| c.into_owned());
        assert_eq!(strip(None), None);
        assert_eq!(strip(Some("list-type=2&prefix=a%2Fb")), Some("list-type=2&prefix=a%2Fb".into()));
        let presigned =
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDCLIENT%2F20200101%2Fus-east-1%2Fs3%2Faws4_request\
                         &X-Amz-Date=20200101T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature=00";
        assert_eq!(strip(Some(presigned)), None);
        assert_eq!(
            strip(Some(&format!("versionId=3&{presigned}&x-amz-security-token=t&X%2DAmz%2DSignature=1&partNumber=1"))),
            Some("versionId=3&partNumber=1".into())
        );
        // Only these names: other x-amz- parameters are the client's to send.
        assert_eq!(strip(Some("x-amz-meta=1")), Some("x-amz-meta=1".into()));
    }
}
