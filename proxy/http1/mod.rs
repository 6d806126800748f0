//! HTTP/1.1 without I/O: header fields kept as they came ([`Fields`]), the numbers a head
//! carries, where a body ends ([`chunked`]), the limits a message is read within ([`Limits`]),
//! and socket helpers that read into and write from plain buffers. The proxy listener's own
//! loop ([`crate::listen`]) and the upstream client ([`crate::upstream`]) both build on it.

use std::io;

pub mod answer;
pub mod chunked;
mod fields;
pub mod socket;

pub use fields::{AnswerFields, Fields};

/// What a message is read within, on either side: a head past these is not read as one (the
/// listener's loop hands it to hyper's server, which refuses it; the upstream client fails
/// the exchange), a chunked body past them does not parse.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Longest head: the request or status line and the header fields, blank line included.
    pub head_bytes: usize,
    /// Most header fields in a head.
    pub headers: usize,
    /// Longest chunk-size line, its extensions and CRLF included.
    pub chunk_line: usize,
    /// Most bytes of chunk extensions in a chunked body, all its size lines together.
    pub chunk_extensions: usize,
    /// Most bytes of trailer fields after a chunked body's last chunk (their count is bounded
    /// by `headers`).
    pub trailer_bytes: usize,
}

impl Limits {
    /// A client's request, as the listener reads it unless configured otherwise
    /// (`[limits] max_header_bytes`, `max_headers` set the head's two); the loop parses this
    /// many header fields in place (hyper's default) and hands a head with more to hyper.
    pub const REQUEST: Limits = Limits {
        head_bytes: 64 * 1024,
        headers: 100,
        chunk_line: 1024,
        chunk_extensions: 16 * 1024,
        trailer_bytes: 8 * 1024,
    };
    /// An upstream's answer (nginx reads 4 or 8 KiB of an upstream's head by default).
    pub const ANSWER: Limits = Limits { head_bytes: 64 * 1024, headers: 128, ..Limits::REQUEST };
}

/// The length a `Content-Length` field's `items` give, with `seen` from the fields before.
pub fn content_length<'a>(items: impl Iterator<Item = &'a [u8]>, mut seen: Option<u64>) -> io::Result<Option<u64>> {
    for item in items {
        if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
            return Err(invalid("the upstream's content-length is not a number"));
        }
        let n: u64 = std::str::from_utf8(item).expect("digits").parse().expect("19 digits fit");
        if seen.is_some_and(|l| l != n) {
            return Err(invalid("the upstream's content-length values differ"));
        }
        seen = Some(n);
    }
    Ok(seen)
}

/// `n` in lowercase hex digits, as a chunk's size line gives it.
pub fn push_hex(out: &mut Vec<u8>, n: usize) {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(n >> (i * 4)) & 0xf]);
    }
}

/// `n` in decimal digits, written into the end of `buf`.
pub fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

pub(crate) fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}
