//! HTTP/1.1 without I/O: header fields kept as they came ([`Fields`]), the numbers a head
//! carries, and socket helpers that read into and write from plain buffers. The proxy
//! listener's own loop ([`crate::listen`]) and the upstream client ([`crate::upstream`]) both
//! build on it.

use std::io;

pub mod answer;
mod fields;
pub mod socket;

pub use fields::{AnswerFields, Fields};

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
