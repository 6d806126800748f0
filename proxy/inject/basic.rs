//! `Authorization: Basic` from a username and a password template: it depends on two values
//! at once, so it is rendered when either changes, cached with the generations it was made
//! from, and checked against them on each request (two atomic loads).

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
