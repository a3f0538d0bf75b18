//! The request and status lines nearly every peer sends
//! (`GET /x HTTP/1.1\r\n`, `HTTP/1.1 200 OK\r\n`), read in one pass: a
//! known method, one space, a target of visible ASCII, one space, the
//! version, CRLF; a three-digit code and a printable reason. Anything else
//! (another method, a byte beyond ASCII, a bare LF, odd spacing) returns
//! `None` and goes to httparse. Every line accepted here is one httparse
//! reads the same way (the tests hold them to it), at a fifth of its
//! instructions.

use super::head::{Stop, find};

/// A request line: method, target and minor version.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RequestLine<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub minor: u8,
}

/// Methods of the fast path.
const METHODS: [&str; 7] = ["GET", "POST", "PUT", "HEAD", "DELETE", "PATCH", "OPTIONS"];

/// `line` is the first line of a message, through its `\n`.
pub(super) fn request_line(line: &[u8]) -> Option<RequestLine<'_>> {
    let method = METHODS
        .into_iter()
        .find(|m| line.starts_with(m.as_bytes()) && line.get(m.len()) == Some(&b' '))?;
    let rest = line.get(method.len() + 1..)?;
    let (target, version) = rest.split_at_checked(rest.len().checked_sub(11)?)?;
    let minor = match version {
        b" HTTP/1.1\r\n" => 1,
        b" HTTP/1.0\r\n" => 0,
        _ => return None,
    };
    if target.is_empty() || find(target, 0, Stop::Invisible).is_some() {
        return None;
    }
    // SAFETY: every byte of `target` is ASCII (checked just above), and
    // ASCII is valid UTF-8.
    let target = unsafe { std::str::from_utf8_unchecked(target) };
    Some(RequestLine {
        method,
        target,
        minor,
    })
}

/// A status line's minor version and code.
pub(super) fn status_line(line: &[u8]) -> Option<(u8, u16)> {
    let minor = match line.get(..9)? {
        b"HTTP/1.1 " => 1,
        b"HTTP/1.0 " => 0,
        _ => return None,
    };
    let digits = line.get(9..12)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let reason = match line.get(12..)? {
        b"\r\n" => &[][..],
        [b' ', reason @ .., b'\r', b'\n'] => reason,
        _ => return None,
    };
    if !reason
        .iter()
        .all(|&b| b == b'\t' || (0x20..=0x7e).contains(&b))
    {
        return None;
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    Some((minor, code))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// httparse's reading of a request line, as (method, target, minor).
    fn httparse_request(line: &[u8]) -> Option<(String, String, u8)> {
        let mut req = httparse::Request::new(&mut []);
        req.parse(line).ok()?;
        Some((req.method?.into(), req.path?.into(), req.version?))
    }

    fn httparse_status(line: &[u8]) -> Option<(u8, u16)> {
        let mut resp = httparse::Response::new(&mut []);
        resp.parse(line).ok()?;
        Some((resp.version?, resp.code?))
    }

    /// Lines around the fast path's edges: each one, and each one with
    /// every byte position replaced by a set of tricky bytes.
    fn variants(seeds: &[&[u8]]) -> Vec<Vec<u8>> {
        let tricky = [
            b' ', b'\t', b'\r', b'\n', 0, 0x1f, 0x20, 0x21, b'/', b'0', b'9', b'a', b'G', 0x7e,
            0x7f, 0x80, 0xc3, 0xff, b'?', b'#', b'%', b'"', b'{', b'H', b'.', b'1',
        ];
        let mut out = Vec::new();
        for seed in seeds {
            out.push(seed.to_vec());
            for i in 0..seed.len() {
                for &b in &tricky {
                    let mut v = seed.to_vec();
                    v[i] = b;
                    out.push(v);
                }
                // Cut short, and a byte removed.
                out.push(seed[..i].to_vec());
                let mut v = seed.to_vec();
                v.remove(i);
                out.push(v);
            }
        }
        out
    }

    /// Asserts that httparse reads every variant of `seeds` that `fast`
    /// reads, the same way; returns how many `fast` read.
    fn read_alike<T: PartialEq + std::fmt::Debug>(
        seeds: &[&[u8]],
        httparse: impl Fn(&[u8]) -> Option<T>,
        fast: impl Fn(&[u8]) -> Option<T>,
    ) -> usize {
        let mut read = 0;
        for line in variants(seeds) {
            if let Some(ours) = fast(&line) {
                read += 1;
                assert_eq!(
                    httparse(&line),
                    Some(ours),
                    "{:?}",
                    String::from_utf8_lossy(&line)
                );
            }
        }
        read
    }

    #[test]
    fn every_request_line_read_here_is_read_alike_by_httparse() {
        let seeds: [&[u8]; 6] = [
            b"GET /api/users/12345?limit=10 HTTP/1.1\r\n",
            b"POST /x HTTP/1.0\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
            b"DELETE http://h:80/a#f HTTP/1.1\r\n",
            b"PATCH /%7e~!$&'()*+,;=:@ HTTP/1.1\r\n",
            b"HEAD / HTTP/1.1\r\n",
        ];
        let fast = read_alike(&seeds, httparse_request, |line| {
            request_line(line).map(|r| (r.method.into(), r.target.into(), r.minor))
        });
        // The seeds and their harmless variants take the fast path.
        assert!(fast > 6 * 20, "{fast}");
        assert!(request_line(b"GET /x HTTP/1.1\n").is_none());
        assert!(request_line(b"GET  /x HTTP/1.1\r\n").is_none());
        assert!(request_line(b"BREW /pot HTTP/1.1\r\n").is_none());
    }

    #[test]
    fn every_status_line_read_here_is_read_alike_by_httparse() {
        let seeds: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.0 404 Not Found\r\n",
            b"HTTP/1.1 204\r\n",
            b"HTTP/1.1 500 \tInternal (Server) Error!\r\n",
        ];
        let fast = read_alike(&seeds, httparse_status, status_line);
        assert!(fast > 4 * 20, "{fast}");
        assert_eq!(status_line(b"HTTP/1.1 200 OK\r\n"), Some((1, 200)));
        assert!(status_line(b"HTTP/1.1 200 OK\n").is_none());
    }
}
