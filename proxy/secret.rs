//! The redacted secret type: token values live here and nowhere else in clear.
//!
//! `Secret` prints nothing of its value through `Debug` or `Display`. Its bytes live in a
//! [`LockedBuf`] (pages of their own, locked in memory when `[hardening] mlock` is on, zeroized
//! when dropped). The rendered header value built from a secret is backed by a `LockedBuf` too,
//! so dropping the last clone scrubs it.

use std::fmt;

use bytes::Bytes;
use http::HeaderValue;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::memory::LockedBuf;

/// A token value or other credential: valid UTF-8 in a [`LockedBuf`]. Cheap to move, never
/// printed.
pub struct Secret(LockedBuf);

impl Secret {
    /// Takes a value: its bytes are copied into locked pages and the `String` is zeroized.
    pub fn new(value: String) -> Self {
        let value = Zeroizing::new(value);
        Secret(LockedBuf::copy_of(value.as_bytes()))
    }

    /// Builds a secret from raw bytes read from a file or a process, trimming one trailing
    /// newline (`\n` or `\r\n`). The input buffer is zeroized whatever the outcome.
    pub fn from_bytes_trimmed(mut raw: Zeroizing<Vec<u8>>) -> Result<Self, SecretError> {
        if raw.ends_with(b"\n") {
            raw.pop();
            if raw.ends_with(b"\r") {
                raw.pop();
            }
        }
        if raw.is_empty() {
            return Err(SecretError::Empty);
        }
        match std::str::from_utf8(&raw) {
            Ok(s) => Ok(Secret(LockedBuf::copy_of(s.as_bytes()))),
            Err(_) => Err(SecretError::NotUtf8),
        }
    }

    /// A second, independent copy (it zeroizes on its own drop). Used only to re-render a
    /// current value for a reloaded config; ordinary code moves secrets, never copies them.
    pub fn duplicate(&self) -> Secret {
        Secret(LockedBuf::copy_of(self.0.as_slice()))
    }

    /// The value itself. Call sites are few and reviewed: rendering, hashing.
    pub fn expose(&self) -> &str {
        // Every constructor stores valid UTF-8 (a `String`, or bytes checked by `from_utf8`)
        // and the buffer is never written afterwards: the fallback is unreachable.
        std::str::from_utf8(self.0.as_slice()).unwrap_or_default()
    }

    /// `sha256:` and the first 12 hex digits of the value's SHA-256: enough to tell two values
    /// apart in logs and on the admin API, far too little to recover the value.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_slice());
        let mut out = String::with_capacity(19);
        out.push_str("sha256:");
        for b in &digest[..6] {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// Renders `format` with every `{token}` replaced by the value, as a sensitive header
    /// value whose bytes are zeroized when the last clone is dropped.
    pub fn render_header(&self, format: &str) -> Result<HeaderValue, SecretError> {
        let value = self.0.as_slice();
        let pieces: Vec<&str> = format.split("{token}").collect();
        let len = pieces.iter().map(|p| p.len()).sum::<usize>() + (pieces.len() - 1) * value.len();
        let mut buf = LockedBuf::zeroed(len);
        let out = buf.as_mut_slice();
        let mut at = 0;
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                out[at..at + value.len()].copy_from_slice(value);
                at += value.len();
            }
            out[at..at + piece.len()].copy_from_slice(piece.as_bytes());
            at += piece.len();
        }
        // Validate before handing the bytes over, so no error path copies them.
        if !buf.as_slice().iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80) {
            return Err(SecretError::NotHeaderSafe);
        }
        let bytes = Bytes::from_owner(buf);
        let mut value = HeaderValue::from_maybe_shared(bytes).map_err(|_| SecretError::NotHeaderSafe)?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// `Bytes` over a buffer that is zeroized when the last clone drops: for request bodies that
/// carry a credential (an OAuth2 client secret, say).
pub fn zeroizing_bytes(buf: Zeroizing<Vec<u8>>) -> Bytes {
    Bytes::from_owner(ZeroizingBytes(buf))
}

/// Owner of a rendered header's bytes: `Bytes::from_owner` drops it, and so zeroizes it, when
/// the last `Bytes` (and so the last `HeaderValue`) referring to it goes.
struct ZeroizingBytes(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for ZeroizingBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        // Not constant time: equality is only used to skip republishing an unchanged value,
        // never to check a credential an attacker supplies.
        self.0.as_slice() == other.0.as_slice()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a value could not become a usable secret. Never carries the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the value is empty")]
    Empty,
    #[error("the value is not valid UTF-8")]
    NotUtf8,
    #[error("the value contains bytes not allowed in an HTTP header (control characters or newlines)")]
    NotHeaderSafe,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let s = Secret::new("hunter2-token".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
    }

    #[test]
    fn trims_one_newline_only() {
        let s = Secret::from_bytes_trimmed(Zeroizing::new(b"abc\n\n".to_vec())).unwrap();
        assert_eq!(s.expose(), "abc\n");
        let s = Secret::from_bytes_trimmed(Zeroizing::new(b"abc\r\n".to_vec())).unwrap();
        assert_eq!(s.expose(), "abc");
        assert_eq!(Secret::from_bytes_trimmed(Zeroizing::new(b"\n".to_vec())), Err(SecretError::Empty));
    }

    #[test]
    fn renders_every_placeholder() {
        let s = Secret::new("t0k".into());
        let v = s.render_header("Bearer {token}").unwrap();
        assert_eq!(v.as_bytes(), b"Bearer t0k");
        assert!(v.is_sensitive());
        let v = s.render_header("{token}:{token}").unwrap();
        assert_eq!(v.as_bytes(), b"t0k:t0k");
        let bad = Secret::new("a\nb".into());
        assert_eq!(bad.render_header("{token}").unwrap_err(), SecretError::NotHeaderSafe);
    }

    #[test]
    fn fingerprint_is_short_and_stable() {
        let f = Secret::new("abc".into()).fingerprint();
        assert_eq!(f, "sha256:ba7816bf8f01");
    }
}
