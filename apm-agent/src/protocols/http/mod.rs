//! HTTP/1.x request and status line parsing from captured prefixes.
//!
//! Captured bytes live only here: the parser returns the method, the path
//! without its query string (for templating, then dropped), the status code
//! and the framing of the message (header length, Content-Length, chunked,
//! Connection: close). Headers and bodies are never returned or stored.

mod first_line;
mod head;
pub mod trace_context;

use head::Head;
pub use trace_context::TraceParent;

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

/// The HTTP version a request came in (HTTP/1.x, or an HTTP/2 stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    Http1,
    Http2,
}

impl Version {
    /// OpenTelemetry's `network.protocol.version`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "1.1",
            Self::Http2 => "2",
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
    /// The caller's span, from a `traceparent` header.
    pub trace: Option<TraceParent>,
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
    /// `Upgrade: h2c` (with a 101: HTTP/2 follows the head).
    pub h2c: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The bytes end before the request or status line does.
    Incomplete,
    /// Not an HTTP/1.x message.
    NotHttp,
}

/// Parses a request head at the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Result<Request<'_>, ParseError> {
    if !starts_like_request(buf) {
        // A read can end inside the method: Go's HTTP server reads the
        // next request's first byte alone while a handler runs.
        return Err(if method_so_far(buf) {
            ParseError::Incomplete
        } else {
            ParseError::NotHttp
        });
    }
    // The common line in one pass, else httparse reads the request line
    // alone (it then wants more bytes and says Partial); `head::scan`
    // reads the header lines after it.
    let line = line_end(buf);
    let fast = line.and_then(|l| first_line::request_line(&buf[..l]));
    let (method, target, version) = match fast {
        Some(f) => (f.method, f.target, f.minor),
        None => {
            let mut req = httparse::Request::new(&mut []);
            if req.parse(&buf[..line.unwrap_or(buf.len())]).is_err() {
                return Err(ParseError::NotHttp);
            }
            let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version)
            else {
                return partial_request_line(buf);
            };
            (method, target, version)
        }
    };
    let head = head::scan_after(buf, line)?;
    let body = match head {
        Head { len: None, .. } => Framing::Length(0),
        Head { chunked: true, .. } => Framing::Chunked,
        Head { length, .. } => Framing::Length(length.unwrap_or(0)),
    };
    Ok(Request {
        method: Method::parse(method),
        path: strip_query(target),
        http10: version == 0,
        line_complete: true,
        head_len: head.len,
        body,
        trace: head.trace,
    })
}

/// Where the line after the first one starts, if the first one ends.
fn line_end(buf: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', buf).map(|nl| nl + 1)
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
        trace: None,
    })
}

/// The longest method token looked for (the longest registered method
/// has 17 letters).
const METHOD_MAX: usize = 17;

/// A byte of a method token: upper-case letters here, as every
/// registered method is, and `-` and `_`.
fn method_byte(b: &u8) -> bool {
    b.is_ascii_uppercase() || *b == b'-' || *b == b'_'
}

/// Whether `buf` could be the start of a method token, cut before its
/// space.
fn method_so_far(buf: &[u8]) -> bool {
    !buf.is_empty() && buf.len() < METHOD_MAX && buf.iter().all(method_byte)
}

/// Cheap check that `buf` starts with a method token ([`method_byte`]s)
/// and a space: a request, not the middle of a body.
pub fn starts_like_request(buf: &[u8]) -> bool {
    let token_len = buf
        .iter()
        .take(METHOD_MAX)
        .take_while(|b| method_byte(b))
        .count();
    token_len > 0 && buf.get(token_len) == Some(&b' ')
}

/// The path of a request target, without query or fragment. An
/// absolute-form target (`http://user:pw@host:port/x`) gives its path, so
/// neither its userinfo nor its host goes further; `*` stays; any other
/// form (CONNECT's `host:port`) gives an empty path, which the templater
/// files under a placeholder.
fn strip_query(target: &str) -> &str {
    let end = memchr::memchr2(b'?', b'#', target.as_bytes()).unwrap_or(target.len());
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

/// Parses a status line and head at the start of `buf`.
pub fn parse_response(buf: &[u8]) -> Result<Response, ParseError> {
    if !buf.starts_with(b"HTTP/1.") {
        return if b"HTTP/1.".starts_with(&buf[..buf.len().min(7)]) {
            Err(ParseError::Incomplete)
        } else {
            Err(ParseError::NotHttp)
        };
    }
    // As for requests: httparse for the status line, head::scan for the
    // header lines.
    let line = line_end(buf);
    let (version, code) = match line.and_then(|l| first_line::status_line(&buf[..l])) {
        Some((minor, code)) => (Some(minor), Some(code)),
        None => {
            let mut resp = httparse::Response::new(&mut []);
            if resp.parse(&buf[..line.unwrap_or(buf.len())]).is_err() {
                return Err(ParseError::NotHttp);
            }
            (resp.version, resp.code)
        }
    };
    let status = match code {
        // httparse takes any three digits; HTTP has 100 to 599.
        Some(code) if (100..=599).contains(&code) => code,
        Some(_) => return Err(ParseError::NotHttp),
        None => status_from_line(buf)?,
    };
    let head = head::scan_after(buf, line)?;
    let http10 = version == Some(0);
    let (body, connection_close) = match head {
        Head { len: None, .. } => (Framing::Close, http10),
        Head {
            chunked,
            length,
            close,
            ..
        } => {
            let body = match (chunked, length) {
                (true, _) => Framing::Chunked,
                (false, Some(n)) => Framing::Length(n),
                (false, None) => Framing::Close,
            };
            (body, close.unwrap_or(http10))
        }
    };
    Ok(Response {
        status,
        head_len: head.len,
        body,
        connection_close,
        h2c: head.h2c,
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

/// Whether a response to `method` with `status` has no body whatever its
/// headers say (RFC 9110 6.4.1).
pub fn bodyless(method: Method, status: u16) -> bool {
    method == Method::Head || (100..200).contains(&status) || status == 204 || status == 304
}

#[cfg(test)]
mod tests;
