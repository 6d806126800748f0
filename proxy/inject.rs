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

use crate::memory::LockedBuf;
use crate::token::Token;

/// A piece of a template: literal text or a token's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Token(String),
}

/// Parses a template with `{token:NAME}` placeholders. A bare `{token}` is refused: these
/// templates name their tokens.
pub fn parse_template(template: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{token") {
        let after = &rest[start + "{token".len()..];
        if after.starts_with('}') {
            return Err("name the token: {token:NAME} ({token} alone is for `format`)".into());
        }
        let Some(named) = after.strip_prefix(':') else {
            // `{tokens` and the like: literal text.
            pieces.push(Piece::Text(rest[..start + 1].to_owned()));
            rest = &rest[start + 1..];
            continue;
        };
        let end = named.find('}').ok_or("an unclosed {token:NAME} placeholder")?;
        let name = &named[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
            return Err(format!("{{token:{name}}} does not name a token"));
        }
        if start > 0 {
            pieces.push(Piece::Text(rest[..start].to_owned()));
        }
        pieces.push(Piece::Token(name.to_owned()));
        rest = &named[end + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    // Adjacent text pieces (from skipped `{token...`) are joined.
    let mut joined: Vec<Piece> = Vec::with_capacity(pieces.len());
    for p in pieces {
        match (joined.last_mut(), p) {
            (Some(Piece::Text(a)), Piece::Text(b)) => a.push_str(&b),
            (_, p) => joined.push(p),
        }
    }
    Ok(joined)
}

/// The tokens a template names, in order, without repeats.
pub fn template_tokens(pieces: &[Piece]) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for p in pieces {
        if let Piece::Token(n) = p {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
    }
    names
}

/// A `headers` value that names exactly one token, as a `format` of that token (`{token}` for
/// its value): `(token, format)`.
pub fn as_format(pieces: &[Piece]) -> Result<(String, String), String> {
    let names = template_tokens(pieces);
    let [name] = names[..] else {
        return Err(match names.len() {
            0 => "names no token: add a {token:NAME} placeholder".into(),
            _ => "names more than one token; one header value carries one token (use `basic` for username:password)"
                .into(),
        });
    };
    let mut format = String::new();
    for p in pieces {
        match p {
            Piece::Text(t) => format.push_str(t),
            Piece::Token(_) => format.push_str("{token}"),
        }
    }
    Ok((name.to_owned(), format))
}

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
    fn templates_name_their_tokens() {
        use Piece::*;
        assert_eq!(parse_template("{token:a}").unwrap(), [Token("a".into())]);
        assert_eq!(
            parse_template("Key {token:a}; id={token:b-2}").unwrap(),
            [Text("Key ".into()), Token("a".into()), Text("; id=".into()), Token("b-2".into())]
        );
        assert_eq!(parse_template("plain").unwrap(), [Text("plain".into())]);
        assert_eq!(parse_template("{tokens} {token:x}").unwrap(), [Text("{tokens} ".into()), Token("x".into())]);
        assert!(parse_template("Bearer {token}").unwrap_err().contains("name the token"));
        assert!(parse_template("{token:a").is_err());
        assert!(parse_template("{token:}").is_err());
        assert!(parse_template("{token:a b}").is_err());

        assert_eq!(as_format(&parse_template("Key {token:a}").unwrap()).unwrap(), ("a".into(), "Key {token}".into()));
        assert_eq!(
            as_format(&parse_template("{token:a}/{token:a}").unwrap()).unwrap(),
            ("a".into(), "{token}/{token}".into())
        );
        assert!(as_format(&parse_template("{token:a}:{token:b}").unwrap()).is_err());
        assert!(as_format(&parse_template("none").unwrap()).is_err());
    }

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
