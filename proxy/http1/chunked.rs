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
    chunk_line: usize,
    trailer_bytes: usize,
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
    /// Trailer fields, and how many bytes of them so far.
    Trailers(usize),
    /// Past the end.
    Done,
}

impl Decoder {
    /// A body of `n` bytes.
    pub fn length(n: u64) -> Decoder {
        Decoder { state: State::Length(n), chunk_line: 0, trailer_bytes: 0 }
    }

    /// A chunked body, within `limits`.
    pub fn chunked(limits: &Limits) -> Decoder {
        Decoder { state: State::Size, chunk_line: limits.chunk_line, trailer_bytes: limits.trailer_bytes }
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

    /// What the bytes at the start of `buf` are; the error says why a chunked body does not
    /// parse (without any of its bytes).
    pub fn step(&mut self, buf: &[u8]) -> Result<Step, &'static str> {
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
                Ok(httparse::Status::Complete((used, _))) if used > self.chunk_line => {
                    Err("a chunk size line too long")
                }
                Ok(httparse::Status::Complete((used, _))) if buf[..used - 2].contains(&b'\n') => {
                    Err("a bare LF in a chunk size line")
                }
                Ok(httparse::Status::Complete((used, size))) => {
                    self.state = if size == 0 { State::Trailers(0) } else { State::Data(size) };
                    Ok(Step::Skip(used))
                }
                Ok(httparse::Status::Partial) if buf.len() < self.chunk_line => Ok(Step::More),
                Ok(httparse::Status::Partial) => Err("a chunk size line too long"),
                Err(_) => Err("a chunk size that does not parse"),
            },
            State::Trailers(seen) => match line(buf) {
                Some(0) => {
                    self.state = State::Done;
                    Ok(Step::End(2))
                }
                Some(n) if seen + n + 2 > self.trailer_bytes => Err("trailer fields too long"),
                Some(n) if buf[..n].contains(&b'\n') || !buf[..n].contains(&b':') => {
                    Err("a trailer field that does not parse")
                }
                Some(n) => {
                    self.state = State::Trailers(seen + n + 2);
                    Ok(Step::Skip(n + 2))
                }
                None if seen + buf.len() > self.trailer_bytes => Err("trailer fields too long"),
                None => Ok(Step::More),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data read on its own within a chunk (`took`), as the upstream client does, comes out
    /// as the same body as data stepped over.
    #[test]
    fn data_taken_directly_keeps_the_decoder_in_step() {
        let mut d = Decoder::chunked(&Limits::ANSWER);
        assert_eq!(d.step(b"5;x=1\r\n"), Ok(Step::Skip(7)));
        assert_eq!(d.data_left(), Some(5));
        d.took(3);
        assert_eq!(d.step(b"lo\r\n0\r\n\r\n"), Ok(Step::Data(2)));
        assert_eq!(d.data_left(), None);
        assert_eq!(d.step(b"\r\n0\r\n\r\n"), Ok(Step::Skip(2)));
        assert_eq!(d.step(b"0\r\n\r\n"), Ok(Step::Skip(3)));
        assert_eq!(d.step(b"\r\n"), Ok(Step::End(2)));
        let mut d = Decoder::length(4);
        d.took(4);
        assert_eq!(d.data_left(), Some(0));
        assert_eq!(d.step(b"next"), Ok(Step::End(0)));
    }

    /// Both sides read chunked bodies within the same limits, and with the same grammar.
    #[test]
    fn both_sides_refuse_the_same_chunked_bodies() {
        for limits in [Limits::REQUEST, Limits::ANSWER] {
            let line = format!("1;{}\r\n", "e".repeat(limits.chunk_line));
            assert_eq!(Decoder::chunked(&limits).step(line.as_bytes()), Err("a chunk size line too long"));
            let fits = format!("1;{}\r\n", "e".repeat(limits.chunk_line - 4));
            assert_eq!(Decoder::chunked(&limits).step(fits.as_bytes()), Ok(Step::Skip(limits.chunk_line)));
            for bad in [&b" 5\r\n"[..], b"5;a\nb\r\n", b"x\r\n"] {
                assert!(Decoder::chunked(&limits).step(bad).is_err(), "{bad:?}");
            }
            let mut d = Decoder::chunked(&limits);
            assert_eq!(d.step(b"0\r\n"), Ok(Step::Skip(3)));
            assert_eq!(d.step(b"no colon\r\n\r\n"), Err("a trailer field that does not parse"));
        }
    }
}
