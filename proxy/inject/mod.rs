//! Injection: how a route's credential enters a request, in one place.
//!
//! [`attach`] is the only function that puts a credential into a request: every form (a header
//! rendered from a token, several headers, HTTP Basic, a query parameter, an AWS SigV4
//! signature) and every path (the own HTTP/1.1 loop's fields kept as they came, a header map
//! for hyper and HTTP/2, the 401 retry, requests inside an intercepted tunnel) goes through it.
//! The values it takes were rendered once per token generation ([`crate::token`]); here they
//! are only set.

mod basic;
mod sigv4;

use http::header::{self, HeaderName};
use http::{HeaderValue, Request};

use crate::body::Body;
use crate::token::Token;

pub use basic::{Basic, Unavailable};
pub use sigv4::{SigV4, SignError};

/// How a route attaches its credential.
pub enum Inject {
    /// One header, `name`, rendered from the route's token in its format number `format`.
    Header { name: HeaderName, format: usize },
    /// The route's token's value as this query parameter, replacing the client's.
    Query(Box<str>),
    /// Several headers, each a rendered format of its token.
    Headers(Box<[(HeaderName, std::sync::Arc<Token>, usize)]>),
    /// `Authorization: Basic` from a username and a password naming tokens.
    Basic(Box<Basic>),
    /// AWS SigV4 with the route's token's credentials.
    Sign(Box<SigV4>),
}

/// A credential, ready to enter a request.
pub enum Credential<'a> {
    /// A header field: set, replacing every field of its name the client sent.
    Header(&'a HeaderName, HeaderValue),
    /// A query parameter: set, replacing every one of its name the client sent.
    Query { name: &'a str, value: &'a str },
    /// An AWS SigV4 signature of the request as it stands (its URI absolute, its `Host` set),
    /// with `token`'s credentials; `payload` is the whole body, or `None` for an unsigned one.
    SigV4 { signer: &'a SigV4, token: &'a Token, payload: Option<&'a [u8]> },
}

/// Why a credential could not be attached.
#[derive(Debug)]
pub enum AttachError {
    /// The request's URI cannot carry the query parameter.
    BadUri,
    /// SigV4 could not sign it.
    Sign(SignError),
}

/// Puts `credential` into `req`. A header goes where the request's fields are: among the
/// fields the own loop kept as they came (written after them), or into the header map.
pub fn attach<A>(req: &mut Request<Body<A>>, credential: Credential<'_>) -> Result<(), AttachError> {
    match credential {
        Credential::Header(name, value) => {
            match req.body_mut() {
                Body::Fields(fields) => fields.set_credential(name, value),
                _ => {
                    req.headers_mut().insert(name.clone(), value);
                }
            }
            Ok(())
        }
        Credential::Query { name, value } => {
            let query = replace_query_param(req.uri().query(), name, value);
            let mut parts = req.uri().clone().into_parts();
            let path = parts.path_and_query.as_ref().map_or("/", |p| p.path());
            parts.path_and_query = Some(format!("{path}?{query}").parse().map_err(|_| AttachError::BadUri)?);
            *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| AttachError::BadUri)?;
            Ok(())
        }
        Credential::SigV4 { signer, token, payload } => {
            let instructions = signer.sign(token, req, payload).map_err(AttachError::Sign)?;
            instructions.apply_to_request_http1x(req);
            for name in [header::AUTHORIZATION, HeaderName::from_static("x-amz-security-token")] {
                if let Some(v) = req.headers_mut().get_mut(name) {
                    v.set_sensitive(true);
                }
            }
            Ok(())
        }
    }
}

/// The query string with every `name` parameter the client sent removed and `name=VALUE`
/// (form-encoded) appended. The other parameters keep their bytes and order.
pub fn replace_query_param(query: Option<&str>, name: &str, value: &str) -> String {
    let mut out = String::with_capacity(query.map_or(0, str::len) + name.len() + value.len() * 3 + 2);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        let decoded: String = url::form_urlencoded::parse(key.as_bytes()).map(|(k, _)| k.into_owned()).collect();
        if decoded == name {
            continue;
        }
        out.push_str(pair);
        out.push('&');
    }
    out.extend(url::form_urlencoded::byte_serialize(name.as_bytes()));
    out.push('=');
    out.extend(url::form_urlencoded::byte_serialize(value.as_bytes()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    /// A body with no upstream answer in it: attach does not look at one.
    type ProxyBody = Body<()>;

    #[test]
    fn the_query_parameter_replaces_the_clients_and_keeps_the_rest() {
        assert_eq!(replace_query_param(None, "api_key", "s3cr/t+=&"), "api_key=s3cr%2Ft%2B%3D%26");
        assert_eq!(
            replace_query_param(Some("a=1&api_key=mine&b=%20x&api%5Fkey=again&api_key"), "api_key", "v"),
            "a=1&b=%20x&api_key=v"
        );
        assert_eq!(replace_query_param(Some("x&&y="), "k", "v v"), "x&y=&k=v+v");
    }

    #[test]
    fn a_header_credential_replaces_the_clients_in_either_form_of_the_fields() {
        let name = header::AUTHORIZATION;
        // A header map.
        let mut req = Request::builder().header("authorization", "mine").body(ProxyBody::Empty).unwrap();
        attach(&mut req, Credential::Header(&name, HeaderValue::from_static("Bearer t"))).unwrap();
        assert_eq!(req.headers().get_all("authorization").iter().collect::<Vec<_>>(), ["Bearer t"]);
        // Fields kept as they came: the client's left out, the credential set beside them.
        let mut slots = [httparse::EMPTY_HEADER; 4];
        let mut head = httparse::Request::new(&mut slots);
        let text = b"GET /x HTTP/1.1\r\nHost: h\r\nAuthorization: mine\r\nX-A: 1\r\n\r\n";
        head.parse(text).unwrap();
        let fields = crate::http1::Fields::request(text, head.headers, None).unwrap();
        let mut req = Request::new(ProxyBody::Fields(fields));
        attach(&mut req, Credential::Header(&name, HeaderValue::from_static("Bearer t"))).unwrap();
        let ProxyBody::Fields(fields) = req.body() else { panic!("fields") };
        assert_eq!(fields.block(), b"X-A: 1\r\n");
        assert_eq!(fields.credential(), Some((&name, &HeaderValue::from_static("Bearer t"))));
        assert!(req.headers().is_empty(), "the header map is left alone");
    }

    #[test]
    fn a_query_credential_replaces_the_clients_parameter_and_keeps_the_path() {
        let mut req = Request::get("http://up.example/a/b?x=1&api_key=mine").body(ProxyBody::Empty).unwrap();
        attach(&mut req, Credential::Query { name: "api_key", value: "s3cr/t" }).unwrap();
        assert_eq!(req.uri().to_string(), "http://up.example/a/b?x=1&api_key=s3cr%2Ft");
        let mut req = Request::get("/p").body(ProxyBody::Empty).unwrap();
        attach(&mut req, Credential::Query { name: "k", value: "v" }).unwrap();
        assert_eq!(req.uri().to_string(), "/p?k=v");
    }
}
