//! The framing of an HTTP/1.x head, read from its header lines without
//! keeping any of them: where the head ends, the values of the three
//! headers that frame a message (Content-Length, Transfer-Encoding,
//! Connection), and a request's W3C `traceparent`.
//!
//! httparse reads the request or status line. Validating every byte of
//! every header value as well cost a fifth of the agent's CPU under load,
//! for headers whose values are never used. This scan checks each line's
//! name: visible ASCII up to a colon, so whitespace or a control byte
//! before the colon, a folded line, a body or a binary protocol is still
//! refused. (RFC 9110 also excludes delimiters such as `(` or `"` from
//! names; a line with one is skipped like any header that is not read.)
//! It reads only those three values. Lines are walked 16 bytes at a time
//! ([`find`]): a name and a value are a handful of blocks, where a byte
//! loop and a memchr call per line had cost ~1 800 instructions per
//! nginx-shaped head.

use super::{ParseError, trace_context::TraceParent};

/// What the header lines say about framing.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Head {
    /// Bytes from the start of the message through the blank line that
    /// ends the head; `None` when the head does not end inside the bytes.
    pub len: Option<usize>,
    /// A Transfer-Encoding header lists `chunked`.
    pub chunked: bool,
    /// The last valid Content-Length.
    pub length: Option<u64>,
    /// The last Connection header's verdict: `Some(true)` for `close`,
    /// `Some(false)` for `keep-alive`.
    pub close: Option<bool>,
    /// A valid `traceparent` header.
    pub trace: Option<TraceParent>,
    /// An `Upgrade` header lists `h2c`.
    pub h2c: bool,
}

/// The head after a first line that ends at `line` (`None`: the first
/// line itself is cut, so nothing is known yet).
pub(super) fn scan_after(buf: &[u8], line: Option<usize>) -> Result<Head, ParseError> {
    line.map_or(Ok(Head::default()), |start| scan(buf, start))
}

/// Reads the header lines of `buf` from `start` (just after the first
/// line) to the blank line.
pub(super) fn scan(buf: &[u8], start: usize) -> Result<Head, ParseError> {
    let mut head = Head::default();
    let mut pos = start;
    loop {
        match buf.get(pos..).unwrap_or_default() {
            // Cut by the capture (or by the end of the segment so far).
            [] | [b'\r'] => return Ok(head),
            [b'\n', ..] => {
                head.len = Some(pos + 1);
                return Ok(head);
            }
            [b'\r', b'\n', ..] => {
                head.len = Some(pos + 2);
                return Ok(head);
            }
            _ => {}
        }
        let Some(colon) = find(buf, pos, Stop::NameEnd) else {
            return Ok(head);
        };
        if colon == pos || buf.get(colon) != Some(&b':') {
            return Err(ParseError::NotHttp);
        }
        let Some(nl) = find(buf, colon + 1, Stop::Newline) else {
            return Ok(head);
        };
        let value = buf.get(colon + 1..nl).unwrap_or_default();
        let value = value.strip_suffix(b"\r").unwrap_or(value);
        read_header(&mut head, buf.get(pos..colon).unwrap_or_default(), value);
        pos = nl + 1;
    }
}

/// What [`find`] looks for.
#[derive(Clone, Copy)]
pub(super) enum Stop {
    Newline,
    /// The end of a header name: a colon, or a byte no name holds
    /// (space, a control byte, DEL or beyond ASCII).
    NameEnd,
    /// A byte that is not visible ASCII (as in a request target).
    Invisible,
}

impl Stop {
    #[cfg(any(test, not(target_arch = "x86_64")))]
    fn at(self, b: u8) -> bool {
        match self {
            Stop::Newline => b == b'\n',
            Stop::NameEnd => b == b':' || Stop::Invisible.at(b),
            Stop::Invisible => !(0x21..0x7f).contains(&b),
        }
    }
}

/// The first index at or after `from` where `stop` holds, 16 bytes at a
/// time: one SSE2 comparison per block on x86_64 (part of its baseline),
/// a byte loop elsewhere; the last partial block goes through a
/// zero-padded copy.
pub(super) fn find(buf: &[u8], from: usize, stop: Stop) -> Option<usize> {
    let mut at = from;
    while let Some(rest) = buf.get(at..).filter(|r| !r.is_empty()) {
        let (mask, len) = match <&[u8; 16]>::try_from(rest.get(..16).unwrap_or_default()) {
            Ok(block) => (block_mask(block, stop), 16),
            Err(_) => {
                let mut block = [0u8; 16];
                block[..rest.len()].copy_from_slice(rest);
                (
                    block_mask(&block, stop) & ((1u32 << rest.len()) - 1),
                    rest.len(),
                )
            }
        };
        if mask != 0 {
            return Some(at + mask.trailing_zeros() as usize);
        }
        at += len;
    }
    None
}

/// Bit i set when `stop` holds for `block[i]`.
#[cfg(target_arch = "x86_64")]
fn block_mask(block: &[u8; 16], stop: Stop) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of the x86_64 baseline (every x86_64 CPU has
    // it and the target enables it), so these intrinsics may run here; the
    // only memory access is an unaligned load of exactly `block`'s 16 bytes.
    unsafe {
        let v = _mm_loadu_si128(block.as_ptr().cast());
        // A signed compare: bytes from 0x80 are negative, so "< 0x21"
        // also catches everything beyond ASCII.
        let invisible = || {
            let low = _mm_cmplt_epi8(v, _mm_set1_epi8(0x21));
            _mm_or_si128(low, _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f)))
        };
        let hits = match stop {
            Stop::Newline => _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\n' as i8)),
            Stop::NameEnd => {
                _mm_or_si128(invisible(), _mm_cmpeq_epi8(v, _mm_set1_epi8(b':' as i8)))
            }
            Stop::Invisible => invisible(),
        };
        _mm_movemask_epi8(hits) as u32
    }
}

/// [`block_mask`] byte by byte: what other targets run, and what the
/// tests hold the SSE2 version to.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn scalar_mask(block: &[u8; 16], stop: Stop) -> u32 {
    block
        .iter()
        .enumerate()
        .fold(0, |m, (i, &b)| m | (u32::from(stop.at(b)) << i))
}

#[cfg(not(target_arch = "x86_64"))]
use self::scalar_mask as block_mask;

/// Applies one header line; the value is trimmed only for the three
/// names read.
fn read_header(head: &mut Head, name: &[u8], value: &[u8]) {
    match name.len() {
        14 if eq_lower(name, b"content-length") => {
            if let Some(n) = parse_u64(value.trim_ascii()) {
                head.length = Some(n);
            }
        }
        17 if eq_lower(name, b"transfer-encoding") => {
            head.chunked |= contains_token(value, b"chunked");
        }
        7 if eq_lower(name, b"upgrade") => {
            head.h2c |= contains_token(value, b"h2c");
        }
        11 if eq_lower(name, b"traceparent") => {
            head.trace = super::trace_context::parse(value);
        }
        10 if eq_lower(name, b"connection") => {
            let value = value.trim_ascii();
            if eq_lower(value, b"keep-alive") {
                head.close = Some(false);
            } else if contains_token(value, b"close") {
                head.close = Some(true);
            } else if contains_token(value, b"keep-alive") {
                head.close = Some(false);
            }
        }
        _ => {}
    }
}

/// `bytes` equals `lower` (lowercase) ignoring ASCII case, as
/// eq_ignore_ascii_case, without an early exit so it compiles to a few
/// vector instructions: it ran for two header lines of every response.
fn eq_lower(bytes: &[u8], lower: &[u8]) -> bool {
    bytes.len() == lower.len()
        && bytes
            .iter()
            .zip(lower)
            .fold(0, |diff, (b, l)| diff | (b.to_ascii_lowercase() ^ l))
            == 0
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| eq_lower(t.trim_ascii(), token))
}

/// Digits only (no sign, no spaces inside), as Content-Length is.
fn parse_u64(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(head: &str) -> Result<Head, ParseError> {
        scan(head.as_bytes(), 0)
    }

    #[test]
    fn reads_only_the_framing_headers() {
        let h = scan_all("Server: x\r\nContent-Length: 13\r\nConnection: Keep-Alive\r\n\r\nbody")
            .expect("head");
        assert_eq!(
            h,
            Head {
                len: Some(57),
                chunked: false,
                length: Some(13),
                close: Some(false),
                trace: None,
                h2c: false,
            }
        );
        let h = scan_all("transfer-encoding: gzip, Chunked\nconnection: close\n\n").expect("head");
        assert_eq!((h.chunked, h.close, h.len), (true, Some(true), Some(52)));
        let h = scan_all("Connection: Upgrade\r\nUpgrade: websocket, H2C\r\n\r\n").expect("head");
        assert!(h.h2c);
        let h = scan_all("Upgrade: websocket\r\n\r\n").expect("head");
        assert!(!h.h2c);
    }

    #[test]
    fn a_cut_head_has_no_length() {
        let h = scan_all("Content-Length: 5\r\nServ").expect("head");
        assert_eq!((h.len, h.length), (None, Some(5)));
        for cut in ["", "Host: x\r", "Host: x\r\n\r", "Hos", "Host:"] {
            assert_eq!(scan_all(cut).expect("head").len, None, "{cut:?}");
        }
    }

    #[test]
    fn lines_that_are_not_headers_are_not_http() {
        for bad in [
            "no colon here\r\n\r\n",
            ": empty name\r\n\r\n",
            "bad name: x\r\n\r\n",
            "Host: x\r\n folded: continuation\r\n\r\n",
            "\x16\x03\x01: tls\r\n\r\n",
        ] {
            assert_eq!(scan_all(bad), Err(ParseError::NotHttp), "{bad:?}");
        }
    }

    #[test]
    fn content_length_is_digits_only() {
        for (value, want) in [
            ("0", Some(0)),
            (" 42 ", Some(42)),
            ("+5", None),
            ("-1", None),
            ("1 2", None),
            ("", None),
            ("99999999999999999999999", None),
        ] {
            let h = scan_all(&format!("Content-Length:{value}\r\n\r\n")).expect("head");
            assert_eq!(h.length, want, "{value:?}");
        }
    }

    #[test]
    fn block_masks_follow_the_byte_rule_for_every_byte() {
        for stop in [Stop::Newline, Stop::NameEnd, Stop::Invisible] {
            for first in (0..=255u8).step_by(16) {
                let block: [u8; 16] = std::array::from_fn(|i| first + i as u8);
                assert_eq!(
                    block_mask(&block, stop),
                    scalar_mask(&block, stop),
                    "from {first:#x}"
                );
            }
        }
    }

    #[test]
    fn find_crosses_blocks_and_stops_at_the_end() {
        let stops = [
            (b'\n', Stop::Newline),
            (b':', Stop::NameEnd),
            (b' ', Stop::Invisible),
            (0x7f, Stop::Invisible),
            (0x80, Stop::Invisible),
            (0, Stop::Invisible),
        ];
        for len in 0..40 {
            let mut buf = vec![b'a'; len];
            for (_, stop) in stops {
                assert_eq!(find(&buf, 0, stop), None, "{len}");
            }
            for at in 0..len {
                for (byte, stop) in stops {
                    buf[at] = byte;
                    for from in 0..=at {
                        assert_eq!(find(&buf, from, stop), Some(at), "{len} {at} {from} {byte}");
                    }
                    assert_eq!(find(&buf, at + 1, stop), None);
                    buf[at] = b'a';
                }
            }
        }
    }

    /// The scan as it was, a byte loop over RFC 9110 token names, except
    /// that a name already refused in a line the capture cut is refused
    /// now (it waited for the newline): on names without delimiters both
    /// must say the same.
    fn reference(buf: &[u8], start: usize) -> Result<Head, ParseError> {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        let mut head = Head::default();
        let mut pos = start;
        while let Some(rest) = buf.get(pos..) {
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                return match rest.iter().position(|&b| !token(b)) {
                    _ if rest == b"\r" => Ok(head),
                    None => Ok(head),
                    Some(colon @ 1..) if rest[colon] == b':' => Ok(head),
                    Some(_) => Err(ParseError::NotHttp),
                };
            };
            let line = &rest[..nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            pos += nl + 1;
            if line.is_empty() {
                head.len = Some(pos);
                return Ok(head);
            }
            match line.iter().position(|&b| !token(b)) {
                Some(colon @ 1..) if line[colon] == b':' => {
                    read_header(&mut head, &line[..colon], &line[colon + 1..]);
                }
                _ => return Err(ParseError::NotHttp),
            }
        }
        Ok(head)
    }

    #[test]
    fn agrees_with_the_token_byte_loop_on_generated_heads() {
        const PIECES: &[&[u8]] = &[
            b"Content-Length",
            b"content-length",
            b"Transfer-Encoding",
            b"Connection",
            b"X-Long-Header-Name-Past-One-Block",
            b"Host",
            b":",
            b": ",
            b" ",
            b"\t",
            b"\r",
            b"\n",
            b"\r\n",
            b"\r\n\r\n",
            b"12",
            b"chunked",
            b"close",
            b"keep-alive",
            b"\x01",
            b"\x7f",
            b"\xc3\xa9",
            b"-",
            b"value with spaces",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _ in 0..20_000 {
            let mut buf = Vec::new();
            for _ in 0..next(24) {
                buf.extend_from_slice(PIECES[next(PIECES.len())]);
            }
            let start = next(buf.len() + 1);
            assert_eq!(
                scan(&buf, start),
                reference(&buf, start),
                "{:?} from {start}",
                String::from_utf8_lossy(&buf)
            );
        }
    }
}
