//! HTTP/1.x request and status line parsing from captured prefixes.
//!
//! Captured bytes live only here: the parser returns the method, the path
//! without its query string (for templating, then dropped), the status code
//! and the framing of the message (header length, Content-Length, chunked,
//! Connection: close). Headers and bodies are never returned or stored.

use std::mem::MaybeUninit;

/// Request methods; anything else is `_OTHER` (OpenTelemetry convention).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    Other,
}

impl Method {
    pub fn parse(token: &str) -> Self {
        match token {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "DELETE" => Self::Delete,
            "CONNECT" => Self::Connect,
            "OPTIONS" => Self::Options,
            "TRACE" => Self::Trace,
            "PATCH" => Self::Patch,
            _ => Self::Other,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Options => "OPTIONS",
            Self::Trace => "TRACE",
            Self::Patch => "PATCH",
            Self::Other => "_OTHER",
        }
    }
}

/// How the body of a message is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body, or a body of this many bytes.
    Length(u64),
    Chunked,
    /// Until the connection closes (a response without length).
    Close,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Method,
    /// The path without query string or fragment. Borrowed from the capture.
    pub path: &'a str,
    /// HTTP/1.0 (1.0 without keep-alive closes after one response).
    pub http10: bool,
    /// False when the bytes end inside the request line (the path may be
    /// cut short).
    pub line_complete: bool,
    /// Bytes of the request head, through the blank line; `None` when the
    /// head does not end inside the captured bytes.
    pub head_len: Option<usize>,
    /// Body framing, when the head was complete.
    pub body: Framing,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// As for [`Request::head_len`].
    pub head_len: Option<usize>,
    /// Body framing from the headers alone; the caller applies the rules
    /// that need the request (HEAD, 1xx, 204, 304).
    pub body: Framing,
    pub connection_close: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The bytes end before the request or status line does.
    Incomplete,
    /// Not an HTTP/1.x message.
    NotHttp,
}

/// Headers looked at per message; a head with more is still framed
/// correctly when its framing headers come first, and otherwise treated as
/// having no usable length.
const MAX_HEADERS: usize = 64;

/// Parses a request head at the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Result<Request<'_>, ParseError> {
    if !starts_like_request(buf) {
        return Err(ParseError::NotHttp);
    }
    // Uninitialised: zeroing 64 headers cost more than parsing a small head.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let status = req.parse_with_uninit_headers(buf, &mut headers);
    let (head_len, complete) = match status {
        Ok(httparse::Status::Complete(n)) => (Some(n), true),
        Ok(httparse::Status::Partial) => (None, false),
        Err(httparse::Error::TooManyHeaders) => (None, false),
        Err(_) => return Err(ParseError::NotHttp),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return partial_request_line(buf);
    };
    let body = if complete {
        request_framing(req.headers)
    } else {
        Framing::Length(0)
    };
    Ok(Request {
        method: Method::parse(method),
        path: strip_query(target),
        http10: version == 0,
        line_complete: true,
        head_len,
        body,
    })
}

/// A request line cut off by the capture: method and the visible part of
/// the path (its last, possibly cut, segment is unreliable; the route
/// templater bounds it).
fn partial_request_line(buf: &[u8]) -> Result<Request<'_>, ParseError> {
    let line_end = buf.iter().position(|&b| b == b'\r' || b == b'\n');
    if line_end.is_some() {
        // The whole line is there but httparse rejected it.
        return Err(ParseError::NotHttp);
    }
    let text = std::str::from_utf8(buf).map_err(|e| {
        if e.error_len().is_none() {
            ParseError::Incomplete
        } else {
            ParseError::NotHttp
        }
    });
    let text = match text {
        Ok(t) => t,
        Err(ParseError::Incomplete) => std::str::from_utf8(&buf[..buf.len().saturating_sub(3)])
            .map_err(|_| ParseError::NotHttp)?,
        Err(e) => return Err(e),
    };
    let mut parts = text.splitn(2, ' ');
    let method = parts.next().ok_or(ParseError::Incomplete)?;
    let path = parts.next().ok_or(ParseError::Incomplete)?;
    if !path.starts_with('/') && path != "*" {
        return Err(ParseError::Incomplete);
    }
    Ok(Request {
        method: Method::parse(method),
        path: strip_query(path),
        http10: false,
        line_complete: false,
        head_len: None,
        body: Framing::Length(0),
    })
}

/// Cheap check that `buf` starts with a method token and a space: a
/// request, not the middle of a body. Tokens are upper-case letters here,
/// as every registered method is.
pub fn starts_like_request(buf: &[u8]) -> bool {
    let token_len = buf
        .iter()
        .take(17)
        .take_while(|b| b.is_ascii_uppercase() || **b == b'-' || **b == b'_')
        .count();
    token_len > 0 && buf.get(token_len) == Some(&b' ')
}

/// The path of a request target, without query or fragment. An
/// absolute-form target (`http://user:pw@host:port/x`) gives its path, so
/// neither its userinfo nor its host goes further; `*` stays; any other
/// form (CONNECT's `host:port`) gives an empty path, which the templater
/// files under a placeholder.
fn strip_query(target: &str) -> &str {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    let target = &target[..end];
    if target.starts_with('/') || target == "*" {
        return target;
    }
    match target.find("://") {
        // Scheme letters only before "://", then the authority up to the
        // first '/'.
        Some(i) if i > 0 && target[..i].bytes().all(|b| b.is_ascii_alphabetic()) => {
            let rest = &target[i + 3..];
            rest.find('/').map_or("/", |slash| &rest[slash..])
        }
        _ => "",
    }
}

fn request_framing(headers: &[httparse::Header<'_>]) -> Framing {
    let mut framing = Framing::Length(0);
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") && contains_token(h.value, b"chunked") {
            return Framing::Chunked;
        }
        if h.name.eq_ignore_ascii_case("content-length")
            && let Some(n) = parse_u64(h.value)
        {
            framing = Framing::Length(n);
        }
    }
    framing
}

/// Parses a status line and head at the start of `buf`.
pub fn parse_response(buf: &[u8]) -> Result<Response, ParseError> {
    if !buf.starts_with(b"HTTP/1.") {
        return if b"HTTP/1.".starts_with(&buf[..buf.len().min(7)]) {
            Err(ParseError::Incomplete)
        } else {
            Err(ParseError::NotHttp)
        };
    }
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    );
    let (head_len, complete) = match parsed {
        Ok(httparse::Status::Complete(n)) => (Some(n), true),
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => (None, false),
        Err(_) => return Err(ParseError::NotHttp),
    };
    let status = match resp.code {
        // httparse takes any three digits; HTTP has 100 to 599.
        Some(code) if (100..=599).contains(&code) => code,
        Some(_) => return Err(ParseError::NotHttp),
        None => status_from_line(buf)?,
    };
    let mut body = Framing::Close;
    let mut connection_close = resp.version == Some(0);
    if complete {
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding")
                && contains_token(h.value, b"chunked")
            {
                body = Framing::Chunked;
            } else if h.name.eq_ignore_ascii_case("content-length")
                && body != Framing::Chunked
                && let Some(n) = parse_u64(h.value)
            {
                body = Framing::Length(n);
            } else if h.name.eq_ignore_ascii_case("connection") {
                if contains_token(h.value, b"close") {
                    connection_close = true;
                } else if contains_token(h.value, b"keep-alive") {
                    connection_close = false;
                }
            }
        }
    }
    Ok(Response {
        status,
        head_len,
        body,
        connection_close,
    })
}

/// The status code of a status line httparse could not finish (its head
/// was cut off by the capture).
fn status_from_line(buf: &[u8]) -> Result<u16, ParseError> {
    let code = buf.get(9..12).ok_or(ParseError::Incomplete)?;
    if buf.get(8) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::NotHttp);
    }
    let code = code
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    if (100..=599).contains(&code) {
        Ok(code)
    } else {
        Err(ParseError::NotHttp)
    }
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

fn parse_u64(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// Whether a response to `method` with `status` has no body whatever its
/// headers say (RFC 9110 6.4.1).
pub fn bodyless(method: Method, status: u16) -> bool {
    method == Method::Head || (100..200).contains(&status) || status == 204 || status == 304
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_line_method_path_and_framing() {
        let r = parse_request(
            b"POST /api/users?token=secret HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        )
        .expect("parse");
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.path, "/api/users");
        assert_eq!(r.head_len, Some(69));
        assert_eq!(r.body, Framing::Length(5));
        assert!(!r.http10);
    }

    #[test]
    fn absolute_and_authority_form_targets_keep_only_the_path() {
        let path = |line: &str| {
            parse_request(format!("{line} HTTP/1.1\r\n\r\n").as_bytes())
                .map(|r| r.path.to_owned())
                .expect("parse")
        };
        assert_eq!(path("GET http://bob:pw@example.com:8080/x/y?k=v"), "/x/y");
        assert_eq!(path("GET HTTPS://example.com"), "/");
        assert_eq!(path("GET http://u:p?ss@host/x"), "/");
        assert_eq!(path("CONNECT db.internal:5432"), "");
        assert_eq!(path("OPTIONS *"), "*");
        assert_eq!(path("GET /a#frag"), "/a");
    }

    #[test]
    fn status_codes_outside_100_to_599_are_not_http() {
        for line in [
            "HTTP/1.1 000 X",
            "HTTP/1.1 099 X",
            "HTTP/1.1 600 X",
            "HTTP/1.1 999 X",
        ] {
            let full = format!("{line}\r\nContent-Length: 0\r\n\r\n");
            assert_eq!(
                parse_response(full.as_bytes()).map(|r| r.status),
                Err(ParseError::NotHttp),
                "{line}"
            );
            // Cut before the end of the head too.
            assert_eq!(
                parse_response(line.as_bytes()).map(|r| r.status),
                Err(ParseError::NotHttp),
                "{line}"
            );
        }
        assert_eq!(
            parse_response(b"HTTP/1.1 599 X\r\n\r\n").map(|r| r.status),
            Ok(599)
        );
    }

    #[test]
    fn unknown_methods_become_other() {
        let r = parse_request(b"PROPFIND /dav HTTP/1.1\r\n\r\n").expect("parse");
        assert_eq!(r.method.as_str(), "_OTHER");
        assert_eq!(Method::parse("get"), Method::Other);
    }

    #[test]
    fn split_request_line_is_incomplete_or_partial() {
        // Cut inside the method: not recognisable yet.
        assert_eq!(parse_request(b"GE"), Err(ParseError::NotHttp));
        // Cut inside the path: method and visible path.
        let r = parse_request(b"GET /very/long/pa").expect("partial");
        assert_eq!(
            (r.method, r.path, r.head_len),
            (Method::Get, "/very/long/pa", None)
        );
        // Line complete, headers cut: head_len unknown.
        let r = parse_request(b"GET /a HTTP/1.1\r\nHost: x\r\nUser-Ag").expect("partial");
        assert_eq!((r.path, r.head_len), ("/a", None));
    }

    #[test]
    fn garbage_is_not_http() {
        for g in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
            b"*3\r\n$3\r\nSET\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/9.9\r\n\r\n",
            b"",
        ] {
            assert!(parse_request(g).is_err(), "{g:?}");
        }
        assert_eq!(parse_response(b"garbage"), Err(ParseError::NotHttp));
        assert_eq!(
            parse_response(b"HTTP/1.1 9999 X\r\n\r\n"),
            Err(ParseError::NotHttp)
        );
    }

    #[test]
    fn http10_and_connection_close() {
        let r = parse_request(b"GET / HTTP/1.0\r\n\r\n").expect("parse");
        assert!(r.http10);
        let resp = parse_response(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>")
            .expect("parse");
        assert!(resp.connection_close);
        assert_eq!(resp.body, Framing::Close);
        let resp =
            parse_response(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
                .expect("parse");
        assert!(resp.connection_close);
        assert_eq!(resp.body, Framing::Length(2));
    }

    #[test]
    fn response_framing() {
        let r =
            parse_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n").expect("parse");
        assert_eq!(
            (r.status, r.head_len, r.body),
            (404, Some(45), Framing::Length(9))
        );
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            .expect("parse");
        assert_eq!(r.body, Framing::Chunked);
        // Head cut by the capture: status known, framing not.
        let r =
            parse_response(b"HTTP/1.1 500 Internal Server Error\r\nServer: ngi").expect("parse");
        assert_eq!((r.status, r.head_len), (500, None));
        assert_eq!(parse_response(b"HTTP/1"), Err(ParseError::Incomplete));
        assert!(bodyless(Method::Head, 200));
        assert!(bodyless(Method::Get, 304));
        assert!(!bodyless(Method::Get, 200));
    }

    #[test]
    fn pipelined_requests_parse_one_after_another() {
        let batch = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b?x=1 HTTP/1.1\r\nHost: x\r\n\r\nHEAD /c HTTP/1.1\r\n\r\n";
        let mut off = 0;
        let mut seen = Vec::new();
        while off < batch.len() {
            let r = parse_request(&batch[off..]).expect("parse");
            seen.push((r.method, r.path.to_owned()));
            off += r.head_len.expect("complete");
        }
        assert_eq!(
            seen,
            vec![
                (Method::Get, "/a".to_owned()),
                (Method::Get, "/b".to_owned()),
                (Method::Head, "/c".to_owned())
            ]
        );
    }
}
