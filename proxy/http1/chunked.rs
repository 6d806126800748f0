//! Where a message body ends, without I/O: the length left of a stated one, or the parts of a
//! chunked one (RFC 9112, section 7.1). The listener's own loop reads a client's request body
//! with it, the upstream client an answer's body; both feed it the bytes they have read and
//! do as each [`Step`] says. Chunk extensions and trailer fields are read and dropped, within
//! [`Limits::chunk_line`] and [`Limits::trailer_bytes`].

use super::Limits;

/// What comes next of a body, from the bytes read of it.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// This many bytes of its data.
    Data(usize),
    /// This many bytes of framing.
    Skip(usize),
    /// Nothing until more is read.
    More,
    /// Its end, after this many bytes of framing.
    End(usize),
}

/// Where a body is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decoder {
    state: State,
    /// Bytes of chunk extensions so far.
    extensions: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Bytes left of a body of a stated length.
    Length(u64),
    /// A chunk-size line.
    Size,
    /// Bytes left of the current chunk.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer fields: how many bytes of them so far, and how many fields (a decoder is kept
    /// small: it is in every answer's body).
    Trailers(u32, u32),
    /// Past the end.
    Done,
}

impl Decoder {
    /// A body of `n` bytes.
    pub fn length(n: u64) -> Decoder {
        Decoder { state: State::Length(n), extensions: 0 }
    }

    /// A chunked body.
    pub fn chunked() -> Decoder {
        Decoder { state: State::Size, extensions: 0 }
    }

    /// The bytes of data that follow at once, where they do (of the stated length, or of the
    /// current chunk): a reader may read them on its own and say so with [`Decoder::took`].
    pub fn data_left(&self) -> Option<u64> {
        match self.state {
            State::Length(n) | State::Data(n) => Some(n),
            _ => None,
        }
    }

    /// `n` bytes of data (at most [`Decoder::data_left`]) were taken without [`Decoder::step`].
    pub fn took(&mut self, n: u64) {
        match &mut self.state {
            State::Length(left) => *left -= n,
            State::Data(left) => {
                *left -= n;
                if *left == 0 {
                    self.state = State::DataEnd;
                }
            }
            _ => debug_assert_eq!(n, 0, "data taken where none was due"),
        }
    }

    /// What the bytes at the start of `buf` are, read within `limits`; the error says why a
    /// chunked body does not parse (without any of its bytes).
    pub fn step(&mut self, buf: &[u8], limits: &Limits) -> Result<Step, &'static str> {
        let line = |buf: &[u8]| buf.windows(2).position(|w| w == b"\r\n");
        match self.state {
            State::Length(0) => {
                self.state = State::Done;
                Ok(Step::End(0))
            }
            State::Done => Ok(Step::End(0)),
            State::Length(_) | State::Data(_) if buf.is_empty() => Ok(Step::More),
            State::Length(left) | State::Data(left) => {
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                self.took(n as u64);
                Ok(Step::Data(n))
            }
            State::DataEnd => match buf {
                [b'\r', b'\n', ..] => {
                    self.state = State::Size;
                    Ok(Step::Skip(2))
                }
                [] | [b'\r'] => Ok(Step::More),
                _ => Err("a chunk's data is not followed by CRLF"),
            },
            State::Size => match httparse::parse_chunk_size(buf) {
                // No digit at all, or a bare LF inside an extension, `httparse` takes; not here.
                Ok(httparse::Status::Complete(_)) if !buf[0].is_ascii_hexdigit() => {
                    Err("a chunk size that does not parse")
                }
                Ok(httparse::Status::Complete((used, _))) if used > limits.chunk_line => {
                    Err("a chunk size line too long")
                }
                Ok(httparse::Status::Complete((used, _))) if buf[..used - 2].contains(&b'\n') => {
                    Err("a bare LF in a chunk size line")
                }
                Ok(httparse::Status::Complete((used, size))) => {
                    // From the `;` on, as hyper counts them (but for the `;`): a body of many
                    // short lines is bounded too.
                    let line = &buf[..used - 2];
                    let extensions = line.iter().position(|&b| b == b';').map_or(0, |at| line.len() - at);
                    self.extensions = self.extensions.saturating_add(extensions as u32);
                    if self.extensions > 0 && self.extensions as usize >= limits.chunk_extensions {
                        return Err("chunk extensions too long");
                    }
                    self.state = if size == 0 { State::Trailers(0, 0) } else { State::Data(size) };
                    Ok(Step::Skip(used))
                }
                Ok(httparse::Status::Partial) if buf.len() < limits.chunk_line => Ok(Step::More),
                Ok(httparse::Status::Partial) => Err("a chunk size line too long"),
                Err(_) => Err("a chunk size that does not parse"),
            },
            State::Trailers(seen, fields) => match line(buf) {
                Some(0) => {
                    self.state = State::Done;
                    Ok(Step::End(2))
                }
                // Bounded by the limit on their bytes: the counts fit.
                Some(n) if seen as usize + n + 2 > limits.trailer_bytes => Err("trailer fields too long"),
                Some(_) if fields as usize >= limits.headers => Err("too many trailer fields"),
                Some(n) if buf[..n].contains(&b'\n') || !is_field(&buf[..n + 2]) => {
                    Err("a trailer field that does not parse")
                }
                Some(n) => {
                    self.state = State::Trailers(seen + n as u32 + 2, fields + 1);
                    Ok(Step::Skip(n + 2))
                }
                None if seen as usize + buf.len() > limits.trailer_bytes => Err("trailer fields too long"),
                None => Ok(Step::More),
            },
        }
    }
}

/// `line` (ending in CRLF) is one header field as a head's are parsed: a token, a colon, a
/// value of visible characters (hyper's server parses trailer fields so, and refuses a body
/// whose do not parse).
fn is_field(line: &[u8]) -> bool {
    // One field parsed, and the blank line that would end them still to come.
    matches!(httparse::parse_headers(line, &mut [httparse::EMPTY_HEADER; 1]), Ok(httparse::Status::Partial))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits::ANSWER;

    /// Data read on its own within a chunk (`took`), as the upstream client does, comes out
    /// as the same body as data stepped over.
    #[test]
    fn data_taken_directly_keeps_the_decoder_in_step() {
        let mut d = Decoder::chunked();
        assert_eq!(d.step(b"5;x=1\r\n", &LIMITS), Ok(Step::Skip(7)));
        assert_eq!(d.data_left(), Some(5));
        d.took(3);
        assert_eq!(d.step(b"lo\r\n0\r\n\r\n", &LIMITS), Ok(Step::Data(2)));
        assert_eq!(d.data_left(), None);
        assert_eq!(d.step(b"\r\n0\r\n\r\n", &LIMITS), Ok(Step::Skip(2)));
        assert_eq!(d.step(b"0\r\n\r\n", &LIMITS), Ok(Step::Skip(3)));
        assert_eq!(d.step(b"\r\n", &LIMITS), Ok(Step::End(2)));
        let mut d = Decoder::length(4);
        d.took(4);
        assert_eq!(d.data_left(), Some(0));
        assert_eq!(d.step(b"next", &LIMITS), Ok(Step::End(0)));
    }

    /// Steps `d` over all of `input` at once: how much the body took, or why it failed.
    fn decode_all(mut d: Decoder, input: &[u8]) -> Result<usize, &'static str> {
        let mut at = 0;
        loop {
            match d.step(&input[at..], &Limits::REQUEST)? {
                Step::Data(n) | Step::Skip(n) => at += n,
                Step::End(n) => return Ok(at + n),
                Step::More => return Err("more wanted than sent"),
            }
        }
    }

    /// Trailer fields are header fields (RFC 9112, section 7.1.2), within a head's count: what
    /// hyper's server refuses of them is refused here too (found by the differential fuzz
    /// target `own_loop_vs_hyper`'s reading of hyper's decoder).
    #[test]
    fn trailer_fields_are_read_as_header_fields() {
        let d = Decoder::chunked();
        for bad in [&b"0\r\nX A: 1\r\n\r\n"[..], b"0\r\n: 1\r\n\r\n", b"0\r\n x: 1\r\n\r\n", b"0\r\nx: \x01\r\n\r\n"] {
            assert_eq!(decode_all(d, bad), Err("a trailer field that does not parse"), "{bad:?}");
        }
        let fields = |n: usize| format!("0\r\n{}\r\n", "a: 1\r\n".repeat(n));
        let most = fields(Limits::REQUEST.headers);
        assert_eq!(decode_all(d, most.as_bytes()), Ok(most.len()));
        assert_eq!(decode_all(d, fields(Limits::REQUEST.headers + 1).as_bytes()), Err("too many trailer fields"));
    }

    /// Chunk extensions are bounded over the whole body as well as per line, as hyper bounds
    /// them: many short lines add up.
    #[test]
    fn chunk_extensions_are_bounded_over_the_body() {
        let d = Decoder::chunked();
        let line = format!("1;{}\r\nx\r\n", "e".repeat(1000));
        let within = Limits::REQUEST.chunk_extensions / 1002;
        let body = format!("{}0\r\n\r\n", line.repeat(within));
        assert_eq!(decode_all(d, body.as_bytes()), Ok(body.len()));
        let over = format!("{}0\r\n\r\n", line.repeat(within + 1));
        assert_eq!(decode_all(d, over.as_bytes()), Err("chunk extensions too long"));
    }

    /// Both sides read chunked bodies within the same limits, and with the same grammar.
    #[test]
    fn both_sides_refuse_the_same_chunked_bodies() {
        for limits in [Limits::REQUEST, Limits::ANSWER] {
            let line = format!("1;{}\r\n", "e".repeat(limits.chunk_line));
            assert_eq!(Decoder::chunked().step(line.as_bytes(), &limits), Err("a chunk size line too long"));
            let fits = format!("1;{}\r\n", "e".repeat(limits.chunk_line - 4));
            assert_eq!(Decoder::chunked().step(fits.as_bytes(), &limits), Ok(Step::Skip(limits.chunk_line)));
            for bad in [&b" 5\r\n"[..], b"5;a\nb\r\n", b"x\r\n"] {
                assert!(Decoder::chunked().step(bad, &limits).is_err(), "{bad:?}");
            }
            let mut d = Decoder::chunked();
            assert_eq!(d.step(b"0\r\n", &limits), Ok(Step::Skip(3)));
            assert_eq!(d.step(b"no colon\r\n\r\n", &limits), Err("a trailer field that does not parse"));
        }
    }
}
