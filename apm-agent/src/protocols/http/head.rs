//! The framing of an HTTP/1.x head, read from its header lines without
//! keeping any of them: where the head ends, and the values of the three
//! headers that frame a message (Content-Length, Transfer-Encoding,
//! Connection).
//!
//! httparse reads the request or status line. Validating every byte of
//! every header value as well cost a fifth of the agent's CPU under load,
//! for headers whose values are never used. This scan checks each line's
//! name (a token followed by a colon, no folded lines), so a body or a
//! binary protocol is still refused, and reads only those three values.

use super::ParseError;

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
    while let Some(rest) = buf.get(pos..) {
        let Some(nl) = memchr::memchr(b'\n', rest) else {
            // Cut by the capture (or by the end of the segment so far).
            return Ok(head);
        };
        let line = &rest[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += nl + 1;
        if line.is_empty() {
            head.len = Some(pos);
            return Ok(head);
        }
        // The name: token bytes up to the colon, checked in one pass.
        match line.iter().position(|&b| !is_token(b)) {
            Some(colon @ 1..) if line[colon] == b':' => {
                read_header(&mut head, &line[..colon], &line[colon + 1..]);
            }
            _ => return Err(ParseError::NotHttp),
        }
    }
    Ok(head)
}

/// Applies one header line; the value is trimmed only for the three
/// names read.
fn read_header(head: &mut Head, name: &[u8], value: &[u8]) {
    match name.len() {
        14 if name.eq_ignore_ascii_case(b"content-length") => {
            if let Some(n) = parse_u64(value.trim_ascii()) {
                head.length = Some(n);
            }
        }
        17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
            head.chunked |= contains_token(value, b"chunked");
        }
        10 if name.eq_ignore_ascii_case(b"connection") => {
            let value = value.trim_ascii();
            if value.eq_ignore_ascii_case(b"keep-alive") {
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

/// RFC 9110 `tchar`: what a header name is made of.
fn is_token(b: u8) -> bool {
    TOKEN[usize::from(b)]
}

/// [`is_token`] as a table: it runs for every byte of every header name.
static TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
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
                close: Some(false)
            }
        );
        let h = scan_all("transfer-encoding: gzip, Chunked\nconnection: close\n\n").expect("head");
        assert_eq!((h.chunked, h.close, h.len), (true, Some(true), Some(52)));
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
}
