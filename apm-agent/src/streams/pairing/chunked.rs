//! A chunked body's framing (RFC 9112 7.1), followed across the pieces of
//! a stream: chunk-size lines and trailer lines are read where they were
//! captured, chunk data is skipped by count whether captured or not. A
//! size or trailer line that falls in bytes the capture left out loses the
//! framing, which the caller resyncs from; nothing is guessed from how a
//! piece happens to end.

/// The longest chunk-size line (digits and extensions) followed.
const MAX_SIZE_LINE: u16 = 4096;

/// Where the decoder is in a chunked body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunked {
    /// Reading a chunk-size line: the size so far, its digits, whether an
    /// extension (after `;`) is being skipped, and the line's length.
    Size {
        value: u64,
        digits: u8,
        ext: bool,
        len: u16,
    },
    /// Skipping chunk data and the CRLF after it.
    Data(u64),
    /// Reading trailer lines: bytes of the current line so far.
    Trailer { line: u16 },
}

/// What [`Chunked::advance`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The piece ended inside the body.
    More,
    /// The body ended just before this offset of the piece.
    Done(u64),
    /// The framing was lost: a line in bytes not captured, or not a chunk
    /// size where one should be.
    Lost,
}

impl Default for Chunked {
    fn default() -> Self {
        Self::Size {
            value: 0,
            digits: 0,
            ext: false,
            len: 0,
        }
    }
}

impl Chunked {
    /// Advances over bytes `off..total` of a piece whose first
    /// `data.len()` bytes and last `tail.len()` bytes were captured.
    pub fn advance(&mut self, data: &[u8], tail: &[u8], mut off: u64, total: u64) -> Step {
        while off < total {
            if let Self::Data(rem) = *self {
                let n = rem.min(total - off);
                off += n;
                *self = if n == rem {
                    Self::default()
                } else {
                    Self::Data(rem - n)
                };
                continue;
            }
            // Lines must be read where they were captured.
            let Some(byte) = byte_at(data, tail, off, total) else {
                return Step::Lost;
            };
            off += 1;
            match self.line_byte(byte) {
                Ok(true) => return Step::Done(off),
                Ok(false) => {}
                Err(()) => return Step::Lost,
            }
        }
        Step::More
    }

    /// One byte of a size or trailer line; `Ok(true)` when it ends the body.
    fn line_byte(&mut self, byte: u8) -> Result<bool, ()> {
        match self {
            Self::Data(_) => Ok(false),
            Self::Size {
                value,
                digits,
                ext,
                len,
            } => {
                *len += 1;
                if *len > MAX_SIZE_LINE {
                    return Err(());
                }
                match byte {
                    b'\n' if *digits == 0 => Err(()),
                    b'\n' => {
                        *self = if *value == 0 {
                            Self::Trailer { line: 0 }
                        } else {
                            // The data, then its CRLF.
                            Self::Data(value.saturating_add(2))
                        };
                        Ok(false)
                    }
                    b'\r' => Ok(false),
                    _ if *ext => Ok(false),
                    b';' | b' ' | b'\t' if *digits > 0 => {
                        *ext = true;
                        Ok(false)
                    }
                    _ => {
                        let digit = char::from(byte).to_digit(16).ok_or(())?;
                        if *digits >= 15 {
                            return Err(());
                        }
                        *digits += 1;
                        *value = *value * 16 + u64::from(digit);
                        Ok(false)
                    }
                }
            }
            Self::Trailer { line } => match byte {
                b'\n' if *line == 0 => Ok(true),
                b'\n' => {
                    *line = 0;
                    Ok(false)
                }
                b'\r' => Ok(false),
                _ => {
                    *line = line.saturating_add(1);
                    Ok(false)
                }
            },
        }
    }
}

/// The byte at `off` of a piece of `total` bytes, if it was captured: in
/// its prefix `data` or its last bytes `tail`.
fn byte_at(data: &[u8], tail: &[u8], off: u64, total: u64) -> Option<u8> {
    let i = usize::try_from(off).ok()?;
    if let Some(&b) = data.get(i) {
        return Some(b);
    }
    // The tail is the last bytes of the segment: of a piece trimmed
    // shorter than it, only its last `total` bytes are the piece's.
    let back = usize::try_from(total.checked_sub(off)?).ok()?;
    tail.len()
        .checked_sub(back)
        .and_then(|j| tail.get(j).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of the given lengths (all captured).
    fn feed(body: &[u8], cuts: &[usize]) -> Vec<Step> {
        let mut c = Chunked::default();
        let mut steps = Vec::new();
        let mut at = 0;
        for &len in cuts.iter().chain(std::iter::once(&(body.len()))) {
            let end = (at + len).min(body.len());
            let piece = &body[at..end];
            steps.push(c.advance(piece, &[], 0, piece.len() as u64));
            at = end;
            if at == body.len() {
                break;
            }
        }
        steps
    }

    #[test]
    fn chunks_that_end_in_zero_crlf_do_not_end_the_body() {
        // A CSV row "a,10\r\n" as one chunk: its data ends in "0\r\n".
        let body = b"6\r\na,10\r\n\r\n6\r\nb,20\r\n\r\n0\r\n\r\n";
        assert_eq!(
            feed(body, &[11, 11]),
            vec![Step::More, Step::More, Step::Done(5)]
        );
    }

    #[test]
    fn a_terminator_split_across_pieces_ends_the_body_in_the_last() {
        let body = b"3\r\nabc\r\n0\r\n\r\n";
        for cut in 1..body.len() {
            let steps = feed(body, &[cut]);
            assert_eq!(
                *steps.last().expect("steps"),
                Step::Done((body.len() - cut) as u64),
                "cut at {cut}"
            );
            assert!(steps[..steps.len() - 1].iter().all(|s| *s == Step::More));
        }
    }

    #[test]
    fn trailers_and_extensions_are_followed() {
        let body = b"3;name=v\r\nabc\r\n0\r\nX-Checksum: 12\r\nX-Other: 0\r\n\r\nHTTP/1.1";
        let mut c = Chunked::default();
        assert_eq!(c.advance(body, &[], 0, body.len() as u64), Step::Done(48));
        assert_eq!(&body[48..], b"HTTP/1.1");
    }

    #[test]
    fn data_is_skipped_by_count_even_where_not_captured() {
        // A 4000-byte chunk of which only the size line and 10 bytes were
        // captured, then the next piece with the last chunk.
        let mut c = Chunked::default();
        let head = b"fa0\r\n0123456789";
        assert_eq!(c.advance(head, &[], 0, 5 + 4000 + 2), Step::More);
        assert_eq!(c.advance(b"0\r\n\r\n", &[], 0, 5), Step::Done(5));
    }

    #[test]
    fn the_last_chunk_is_read_in_the_tail_of_a_long_piece() {
        // A 4096-byte chunk and the last chunk in one 4109-byte piece of
        // which the first 10 and the last 8 bytes were captured.
        let mut c = Chunked::default();
        assert_eq!(
            c.advance(b"1000\r\nxxxx", b"\r\n0\r\n\r\n", 0, 4109),
            Step::Done(4109)
        );
        // One byte more in the middle: the terminator is still in the
        // tail, and the chunk's CRLF is skipped by count.
        let mut c = Chunked::default();
        assert_eq!(
            c.advance(b"1000\r\nxxxx", b"xx0\r\n\r\n", 0, 4109),
            Step::Done(4109)
        );
    }

    #[test]
    fn a_tail_longer_than_a_trimmed_piece_is_read_from_its_end() {
        // A retransmission overlapping what was seen, trimmed to its last
        // 5 bytes, with its 8-byte tail and nothing else captured.
        let mut c = Chunked::default();
        assert_eq!(c.advance(b"", b"xyz\r\n\r\n", 0, 2), Step::Lost);
        let mut c = Chunked::Trailer { line: 0 };
        assert_eq!(c.advance(b"", b"abc0\r\n\r\n", 0, 2), Step::Done(2));
    }

    #[test]
    fn a_size_line_past_the_capture_or_garbage_loses_the_framing() {
        let mut c = Chunked::default();
        // 3 data bytes + CRLF captured, the next size line is not.
        assert_eq!(c.advance(b"3\r\nabc\r\n", &[], 0, 100), Step::Lost);
        let mut c = Chunked::default();
        assert_eq!(c.advance(b"zz\r\n", &[], 0, 4), Step::Lost);
        let mut c = Chunked::default();
        assert_eq!(c.advance(b"\r\n", &[], 0, 2), Step::Lost);
        let mut c = Chunked::default();
        assert_eq!(c.advance(b"ffffffffffffffff\r\n", &[], 0, 18), Step::Lost);
    }
}
