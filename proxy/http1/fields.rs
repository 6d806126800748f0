//! Header fields kept as they came, in one block.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Header fields as they came, less those of the hop (RFC 9110, section 7.6.1), in one block:
/// written as they are instead of a header map built and encoded again field by field.
///
/// An answer's: what the proxy listener's own loop writes to the client ([`crate::listen::h1`]).
/// Kept so only where nothing else is to be done to them: an answer whose `Connection` names
/// other fields, or with both `Transfer-Encoding` and `Content-Length`, or a 1xx or 204, has a
/// header map.
///
/// A request's, read by that loop ([`Fields::request`]): its `Host` first (routing reads it,
/// the upstream pool writes its own), written upstream by a pooled HTTP/1.1 connection with the
/// credential after them (set by [`crate::inject::attach`], never copied in); a request that
/// goes any other way gets a header map from them first ([`Fields::append_to`]).
///
/// A request's short body, read whole by that loop, follows the lines in the same block
/// ([`Fields::set_body`]): one allocation, written upstream with them.
///
/// Zeroed when dropped (an upstream may echo a credential; a request's carries one).
pub struct Fields {
    /// `name: value\r\n` lines: a request's `Host` line, then the rest from `start`, to
    /// `end`; a request's body after them.
    pub(super) block: Vec<u8>,
    /// Where the lines after a request's `Host` begin (0: no `Host` line); a head is far
    /// shorter than 4 GiB.
    pub(super) start: u32,
    /// Where the lines end (and a request's body begins).
    pub(super) end: u32,
    /// Bit `n % 16` set for a name of `n` bytes among them: most are not looked for in vain.
    pub(super) lengths: u16,
    /// The `Content-Length` among them, if `has_length`.
    pub(super) length: u64,
    pub(super) has_length: bool,
    pub(super) date: bool,
    /// A request's credential, set by [`crate::inject::attach`]: written after the lines, its
    /// name's fields among them left out. Boxed: every body on the data path would carry its
    /// room otherwise.
    pub(super) credential: Option<Box<(HeaderName, HeaderValue)>>,
}

impl Fields {
    /// A request's fields from its parsed head: `Host` first, the hop's own left out. `None`
    /// for a head with more than one `Host` (not served from fields).
    pub(crate) fn request(buf: &[u8], headers: &[httparse::Header<'_>], length: Option<u64>) -> Option<Fields> {
        let is_host = |name: &[u8]| name.len() == 4 && name.eq_ignore_ascii_case(b"host");
        // Room for the body too (the own loop reads only short ones).
        let (mut size, mut host) = (length.unwrap_or(0) as usize, None);
        for h in headers {
            size += h.name.len() + h.value.len() + 4;
            if is_host(h.name.as_bytes()) && host.replace(h.value).is_some() {
                return None;
            }
        }
        let mut block = Lines::new(buf, size);
        if let Some(host) = host {
            block.line(b"host", host);
        }
        let start = u32::try_from(block.block.len()).ok()?;
        let mut lengths = 0;
        for h in headers {
            let name = h.name.as_bytes();
            if !crate::headers::is_hop_by_hop_name(name) && !is_host(name) {
                lengths |= 1 << (name.len() % 16);
                block.push(h);
            }
        }
        let block = block.finish();
        let end = u32::try_from(block.len()).ok()?;
        let (length, has_length) = (length.unwrap_or(0), length.is_some());
        Some(Fields { block, start, end, lengths, length, has_length, date: false, credential: None })
    }

    /// The fields, `name: value\r\n` each (a request's without its `Host`).
    pub(crate) fn block(&self) -> &[u8] {
        &self.block[self.start as usize..self.end as usize]
    }

    /// A request's body, read whole (empty: none).
    pub(crate) fn body(&self) -> &[u8] {
        &self.block[self.end as usize..]
    }

    /// Sets a request's body (its `Content-Length` is among the fields).
    pub(crate) fn set_body(&mut self, body: &[u8]) {
        self.block.truncate(self.end as usize);
        self.block.extend_from_slice(body);
    }

    /// A request's body, taken out (for a request that goes on with a header map).
    pub(crate) fn take_body(&mut self) -> Bytes {
        let body = Bytes::copy_from_slice(self.body());
        self.block.truncate(self.end as usize);
        body
    }

    /// A request's `Host`.
    pub(crate) fn host(&self) -> Option<&[u8]> {
        (self.start > 0).then(|| &self.block[b"host: ".len()..self.start as usize - 2])
    }

    /// The `Content-Length` among them, if any.
    pub(crate) fn length(&self) -> Option<u64> {
        self.has_length.then_some(self.length)
    }

    /// A `Date` is among them.
    pub(crate) fn has_date(&self) -> bool {
        self.date
    }

    /// The values of every field named `name` (lower case), in order.
    pub(crate) fn values<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let lines = if self.lengths & 1 << (name.len() % 16) == 0 { &[][..] } else { self.block() };
        lines.split(|&b| b == b'\n').filter_map(move |line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let (n, v) = line.split_at(line.iter().position(|&b| b == b':')?);
            n.eq_ignore_ascii_case(name).then(|| v[1..].trim_ascii())
        })
    }

    /// Leaves out every field named `name` (a request's, whose credential is set by that name).
    pub(crate) fn remove(&mut self, name: &HeaderName) {
        let named = name.as_str().as_bytes();
        if self.lengths & 1 << (named.len() % 16) == 0 {
            return;
        }
        let mut at = self.start as usize;
        while at < self.end as usize {
            let lines = &self.block[..self.end as usize];
            let end = lines[at..].iter().position(|&b| b == b'\n').map_or(lines.len(), |i| at + i + 1);
            let line = &lines[at..end];
            if line.len() > named.len() && line[..named.len()].eq_ignore_ascii_case(named) && line[named.len()] == b':'
            {
                self.block.drain(at..end);
                self.end -= (end - at) as u32;
            } else {
                at = end;
            }
        }
    }

    /// Sets a request's credential field: every field of its name is left out, and it is
    /// written after the rest. Only through [`crate::inject::attach`].
    pub(crate) fn set_credential(&mut self, name: &HeaderName, value: HeaderValue) {
        self.remove(name);
        self.credential = Some(Box::new((name.clone(), value)));
    }

    /// The credential field set, if any.
    pub(crate) fn credential(&self) -> Option<(&HeaderName, &HeaderValue)> {
        self.credential.as_deref().map(|(n, v)| (n, v))
    }

    /// Adds the fields, a request's `Host` and credential among them, to `headers` (for a
    /// message a header map carries on).
    pub fn append_to(&self, headers: &mut HeaderMap) {
        append_lines(&self.block[..self.end as usize], headers);
        self.append_credential(headers);
    }

    /// Adds the fields but a request's `Host` to `headers`.
    pub(crate) fn append_block_to(&self, headers: &mut HeaderMap) {
        append_lines(self.block(), headers);
        self.append_credential(headers);
    }

    fn append_credential(&self, headers: &mut HeaderMap) {
        if let Some((name, value)) = self.credential() {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// A block of `name: value\r\n` lines built from fields `httparse` read out of `buf`: a line
/// that is in that form in `buf` already (one space after the colon, CRLF right after the
/// value) is copied as it is, with the lines right after it in one piece; any other is written
/// out so (httparse allows in names and values what `HeaderName` and `HeaderValue` do, and no
/// CR or LF). Names keep their case, as HTTP/1.1 leaves it (RFC 9110, section 5.1).
pub(super) struct Lines<'b> {
    buf: &'b [u8],
    block: Vec<u8>,
    /// Lines of `buf` to copy yet, in one piece.
    run: std::ops::Range<usize>,
}

impl<'b> Lines<'b> {
    pub(super) fn new(buf: &'b [u8], capacity: usize) -> Lines<'b> {
        Lines { buf, block: Vec::with_capacity(capacity), run: 0..0 }
    }

    pub(super) fn push(&mut self, h: &httparse::Header<'_>) {
        let (name, value) = (h.name.as_bytes(), h.value);
        let at = |s: &[u8]| (s.as_ptr() as usize).checked_sub(self.buf.as_ptr() as usize);
        let (Some(start), Some(value_at)) = (at(name), at(value)) else { return self.line(name, value) };
        let end = value_at + value.len() + 2;
        let whole = value_at == start + name.len() + 2
            && self.buf.get(start + name.len()..value_at) == Some(b": ")
            && self.buf.get(end - 2..end) == Some(b"\r\n");
        if !whole {
            return self.line(name, value);
        }
        if self.run.is_empty() || self.run.end != start {
            self.flush();
            self.run.start = start;
        }
        self.run.end = end;
    }

    /// Writes `name: value\r\n`.
    fn line(&mut self, name: &[u8], value: &[u8]) {
        self.flush();
        self.block.extend_from_slice(name);
        self.block.extend_from_slice(b": ");
        self.block.extend_from_slice(value);
        self.block.extend_from_slice(b"\r\n");
    }

    fn flush(&mut self) {
        if !self.run.is_empty() {
            self.block.extend_from_slice(&self.buf[self.run.clone()]);
            self.run = 0..0;
        }
    }

    pub(super) fn finish(mut self) -> Vec<u8> {
        self.flush();
        self.block
    }
}

fn append_lines(block: &[u8], headers: &mut HeaderMap) {
    for line in block.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = (&line[..colon], &line[colon + 2..]);
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    }
}

impl Clone for Fields {
    fn clone(&self) -> Fields {
        let (start, end, lengths, length, has_length, date) =
            (self.start, self.end, self.lengths, self.length, self.has_length, self.date);
        let credential = self.credential.clone();
        Fields { block: self.block.clone(), start, end, lengths, length, has_length, date, credential }
    }
}

impl Drop for Fields {
    fn drop(&mut self) {
        // All of it: a field `remove` left out may have left bytes beyond the length.
        let all = self.block.capacity();
        crate::memory::wipe_allocation(&mut self.block, all);
    }
}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fields").field("bytes", &self.block.len()).finish()
    }
}

/// A response body that may carry its answer's header fields as they came ([`Fields`]).
pub trait AnswerFields {
    fn take_fields(&mut self) -> Option<Fields> {
        None
    }
}

impl AnswerFields for http_body_util::Full<Bytes> {}
