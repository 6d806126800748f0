//! An upstream's answer head: parsed with `httparse`, its fields kept as they came where
//! nothing else is to be done to them, and where its body ends (RFC 9112).

use std::io;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::fields::Lines;
use super::{content_length, invalid, Fields, Limits};

/// Where the answer's body ends (RFC 9112, section 6.3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// Read to the end of the stream (the connection cannot be used again).
    Close,
}

/// A parsed answer head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    /// HTTP/1.1 (the answer may keep the connection open) or 1.0.
    pub http11: bool,
    /// Its fields, when `fields` does not keep them as they came.
    pub headers: HeaderMap,
    pub fields: Option<Fields>,
    pub frame: FrameFields,
}

/// What an answer's framing fields say, read as its head is parsed.
#[derive(Debug)]
pub struct FrameFields {
    /// `Connection: close`.
    close: bool,
    /// A `Transfer-Encoding`, and whether its last coding is chunked.
    te: bool,
    chunked: bool,
    /// A `Content-Length`, and the length all of them give.
    cl: bool,
    length: io::Result<Option<u64>>,
}

/// The head at the start of `buf` and its length, `None` while incomplete.
pub fn parse_head(buf: &[u8]) -> io::Result<Option<(Head, usize)>> {
    // Slots left uninitialised: setting up 128 empty ones cost more than parsing a small head.
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; Limits::ANSWER.headers];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(invalid("the upstream's response has too many headers")),
        Err(_) => return Err(invalid("the upstream's response head is malformed")),
    };
    let status = parsed.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or_else(|| invalid("bad status code"))?;
    // The three fields that decide the framing, in one pass over the few of an answer
    // (cheaper than hashed lookups); a `Content-Length` is checked only where it counts.
    let mut frame = FrameFields { close: false, te: false, chunked: false, cl: false, length: Ok(None) };
    let mut plain = !(status.is_informational() || status == StatusCode::NO_CONTENT);
    let (mut date, mut size) = (false, 0);
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        let items = || h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
        if name.eq_ignore_ascii_case(b"connection") {
            frame.close |= items().any(|t| t.eq_ignore_ascii_case(b"close"));
            // The fields it names are the hop's as well: that answer gets a header map.
            plain &= items()
                .all(|t| t.is_empty() || t.eq_ignore_ascii_case(b"close") || t.eq_ignore_ascii_case(b"keep-alive"));
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            frame.te = true;
            // The last coding of all the fields' lists.
            if let Some(last) = items().rfind(|c| !c.is_empty()) {
                frame.chunked = last.eq_ignore_ascii_case(b"chunked");
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            frame.cl = true;
            if let Ok(seen) = frame.length {
                frame.length = content_length(items(), seen);
            }
        } else {
            date |= name.eq_ignore_ascii_case(b"date");
        }
        size += name.len() + h.value.len() + 4;
    }
    plain &= !(frame.te && frame.cl);
    let mut headers = HeaderMap::new();
    let fields = if plain {
        let mut block = Lines::new(buf, size);
        for h in parsed.headers.iter() {
            if !crate::headers::is_hop_by_hop_name(h.name.as_bytes()) {
                block.push(h);
            }
        }
        let block = block.finish();
        let length = if frame.cl { frame.length.as_ref().ok().copied().flatten() } else { None };
        let (length, has_length) = (length.unwrap_or(0), length.is_some());
        let end = u32::try_from(block.len()).map_err(|_| invalid("the upstream's response head is too large"))?;
        Some(Fields { block, start: 0, end, lengths: u16::MAX, length, has_length, date, credential: None })
    } else {
        headers.reserve(parsed.headers.len());
        for h in parsed.headers.iter() {
            // With a `Transfer-Encoding`, a `Content-Length` is not the body's length: it is
            // dropped, not passed on beside a body framed otherwise (RFC 9112, section 6.3).
            if frame.te && h.name.eq_ignore_ascii_case("content-length") {
                continue;
            }
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| invalid("bad header name"))?;
            let value = HeaderValue::from_bytes(h.value).map_err(|_| invalid("bad header value"))?;
            headers.append(name, value);
        }
        None
    };
    Ok(Some((Head { status, http11: parsed.version == Some(1), headers, fields, frame }, len)))
}

/// Where the body of `head` ends, and whether the connection may carry another request after
/// it (RFC 9112, sections 6.3 and 9.3).
pub fn framing(head: &Head, head_request: bool) -> io::Result<(Framing, bool)> {
    let FrameFields { close, te, chunked, cl, ref length } = head.frame;
    let mut reusable = head.http11 && !close;
    let status = head.status;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok((Framing::Length(0), false));
    }
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Length(0), reusable));
    }
    if te {
        // Both: a sign of a message meant to be read two ways; this one is read as chunked
        // (the standard's rule) and the connection is not trusted with another.
        if cl {
            reusable = false;
        }
        return Ok(if chunked { (Framing::Chunked, reusable) } else { (Framing::Close, false) });
    }
    match length {
        Ok(Some(n)) => Ok((Framing::Length(*n), reusable)),
        Ok(None) => Ok((Framing::Close, false)),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}
