//! Injection forms beyond one header: several headers from several tokens (`headers`), HTTP
//! Basic from a username and a password (`basic`), and a query parameter (`query`).
//!
//! A `headers` value names one token (`"Token {token:a}"`): it becomes one more format of that
//! token, rendered once per generation like the route header, so a request only clones it. A
//! Basic value depends on two values at once; it is rendered when either changes, cached with
//! the generations it was made from, and checked against them on each request (two atomic
//! loads). The query value is encoded into the request's URI.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use base64::Engine;
use bytes::Bytes;
use http::HeaderValue;
use zeroize::Zeroizing;

use crate::config::template::Piece;
use crate::memory::LockedBuf;
use crate::token::Token;

/// `Authorization: Basic` from a username and a password template, rendered when one of its
/// tokens changes.
pub struct Basic {
    username: Vec<Piece>,
    password: Vec<Piece>,
    /// The tokens the templates name, in `Rendered::generations` order.
    tokens: Vec<Arc<Token>>,
    rendered: ArcSwapOption<Rendered>,
    /// One render at a time (the others use the result).
    rendering: Mutex<()>,
}

struct Rendered {
    generations: Vec<u64>,
    value: HeaderValue,
}

/// Why a Basic credential cannot be made now.
#[derive(Debug)]
pub enum Unavailable {
    /// This token has no usable value.
    Token(String),
    /// The values make no valid header (a control character in one).
    NotHeaderSafe,
}

impl Basic {
    /// `tokens` must hold every token the templates name.
    pub fn new(username: Vec<Piece>, password: Vec<Piece>, tokens: Vec<Arc<Token>>) -> Basic {
        Basic { username, password, tokens, rendered: ArcSwapOption::empty(), rendering: Mutex::new(()) }
    }

    /// The header value for the tokens' current values.
    pub fn credential(&self) -> Result<HeaderValue, Unavailable> {
        let now = std::time::SystemTime::now();
        let mut values = Vec::with_capacity(self.tokens.len());
        for t in &self.tokens {
            match t.current() {
                Some(v) if v.is_usable(now) => values.push(v),
                _ => return Err(Unavailable::Token(t.name().to_owned())),
            }
        }
        let current = |r: &Rendered| r.generations.iter().zip(&values).all(|(g, v)| *g == v.generation);
        if let Some(r) = self.rendered.load().as_ref() {
            if current(r) {
                return Ok(r.value.clone());
            }
        }
        let _one = self.rendering.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = self.rendered.load().as_ref() {
            if current(r) {
                return Ok(r.value.clone());
            }
        }
        let value_of = |name: &str| {
            let i = self.tokens.iter().position(|t| t.name() == name).expect("every named token is given");
            values[i].secret.expose()
        };
        let mut plain = Zeroizing::new(Vec::new());
        for (i, part) in [&self.username, &self.password].into_iter().enumerate() {
            if i == 1 {
                plain.push(b':');
            }
            for p in part {
                match p {
                    Piece::Text(t) => plain.extend_from_slice(t.as_bytes()),
                    Piece::Token(n) => plain.extend_from_slice(value_of(n).as_bytes()),
                }
            }
        }
        let engine = base64::engine::general_purpose::STANDARD;
        let encoded_len = base64::encoded_len(plain.len(), true).ok_or(Unavailable::NotHeaderSafe)?;
        let mut buf = LockedBuf::zeroed("Basic ".len() + encoded_len);
        let out = buf.as_mut_slice();
        out[..6].copy_from_slice(b"Basic ");
        engine.encode_slice(&plain[..], &mut out[6..]).map_err(|_| Unavailable::NotHeaderSafe)?;
        let mut value =
            HeaderValue::from_maybe_shared(Bytes::from_owner(buf)).map_err(|_| Unavailable::NotHeaderSafe)?;
        value.set_sensitive(true);
        let generations = values.iter().map(|v| v.generation).collect();
        self.rendered.store(Some(Arc::new(Rendered { generations, value: value.clone() })));
        Ok(value)
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

    #[test]
    fn the_query_parameter_replaces_the_clients_and_keeps_the_rest() {
        assert_eq!(replace_query_param(None, "api_key", "s3cr/t+=&"), "api_key=s3cr%2Ft%2B%3D%26");
        assert_eq!(
            replace_query_param(Some("a=1&api_key=mine&b=%20x&api%5Fkey=again&api_key"), "api_key", "v"),
            "a=1&b=%20x&api_key=v"
        );
        assert_eq!(replace_query_param(Some("x&&y="), "k", "v v"), "x&y=&k=v+v");
    }
}
