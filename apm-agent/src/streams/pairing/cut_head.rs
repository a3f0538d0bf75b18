//! A request head longer than the capture, followed through the parts of
//! it that were captured. The header lines read whole (between two line
//! ends) say how the body is framed; the blank line says where the body
//! starts. While every byte of the head was read, that is exact, and the
//! body is skipped by count even when each of its segments starts like a
//! request. Once bytes went uncaptured, the head may have ended in them
//! and a blank line read later may be the body's (a multipart part): the
//! body is then skipped only as far as it surely reaches, never into the
//! requests after it, and pairing resyncs at the next request line. A
//! header line read whole (other than a MIME part's) shows the head went
//! on at least to there.

use super::{ReqPhase, chunked::Chunked};
use crate::protocols::http::{TraceParent, trace_context};

/// Where the last piece read to its end stopped, within the head's lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Edge {
    #[default]
    MidLine,
    /// Just after a line end.
    LineStart,
    /// After a line end and a CR: a blank line if LF comes next.
    AfterCr,
}

/// What the captured lines of a cut head said about its body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutHead {
    /// `Content-Length`, when a whole such line was captured.
    length: Option<u64>,
    /// `Transfer-Encoding: chunked`, when a whole such line was captured.
    chunked: bool,
    /// `None` while every byte of the head was read; else how many bytes
    /// before the next byte to read the head may have ended.
    doubt: Option<u64>,
    edge: Edge,
    /// A `traceparent` line read whole, not yet handed on.
    trace: Option<TraceParent>,
    /// Whether its request was queued (else a traceparent has no owner).
    queued: bool,
}

/// Where a head ended: its offset past the blank line (from the start of
/// the bytes given) and the body's phase.
pub type Ended = (u64, ReqPhase);

impl CutHead {
    /// Starts with a piece whose captured bytes after the request line are
    /// `after_line`, followed by `beyond` bytes not captured but for the
    /// piece's last bytes in `tail`.
    /// `queued`: whether its request waits in the connection's queue.
    pub fn new(after_line: &[u8], tail: &[u8], beyond: u64, queued: bool) -> (Self, Option<Ended>) {
        let mut head = Self {
            edge: Edge::LineStart,
            queued,
            ..Self::default()
        };
        let found = head.read(after_line, tail, beyond);
        (head, found)
    }

    /// The `traceparent` of a line read whole since the last call.
    pub fn take_trace(&mut self) -> Option<TraceParent> {
        self.trace.take()
    }

    /// Reads a later piece from the offset reached: `region` is what was
    /// captured from there, then `beyond` bytes not captured but for the
    /// piece's last bytes in `tail`. Offsets are from the region's start.
    pub fn scan(&mut self, region: &[u8], tail: &[u8], beyond: u64) -> Option<Ended> {
        if self.doubt.is_none() && self.edge == Edge::AfterCr && region.first() == Some(&b'\n') {
            return Some((1, self.body(1, 0, true)));
        }
        self.read(region, tail, beyond)
    }

    fn read(&mut self, region: &[u8], tail: &[u8], beyond: u64) -> Option<Ended> {
        let exact = self.doubt.is_none();
        // The earliest the head may have ended, from the region's start.
        let mut earliest = -i64::try_from(self.doubt.unwrap_or(0)).unwrap_or(i64::MAX);
        let at_line_start = exact && self.edge == Edge::LineStart;
        if let Some(end) = self.lines(region, at_line_start, &mut earliest) {
            return Some((end as u64, self.body(end, earliest, exact)));
        }
        let len = region.len() as i64;
        if beyond == 0 {
            match self.doubt {
                None => self.edge = edge_after(region, self.edge),
                Some(_) => self.doubt = Some(len.saturating_sub(earliest).max(0) as u64),
            }
            return None;
        }
        // Bytes not captured: the head may end in them.
        if exact {
            earliest = len;
        }
        let shown = tail
            .len()
            .min(usize::try_from(beyond).unwrap_or(usize::MAX));
        let tail = &tail[tail.len() - shown..];
        let shift = len.saturating_add(i64::try_from(beyond).unwrap_or(i64::MAX) - shown as i64);
        // From the tail's start now.
        earliest = earliest.saturating_sub(shift);
        if let Some(end) = self.lines(tail, false, &mut earliest) {
            let at = (shift as u64).saturating_add(end as u64);
            return Some((at, self.body(end, earliest, false)));
        }
        self.doubt = Some((shown as i64).saturating_sub(earliest).max(0) as u64);
        None
    }

    /// Reads the whole lines of `region` (its first fragment too when it
    /// starts a line) up to a blank line; returns the offset past it. A
    /// header line read whole moves `earliest` past it.
    fn lines(&mut self, region: &[u8], at_line_start: bool, earliest: &mut i64) -> Option<usize> {
        let mut start = at_line_start.then_some(0);
        for nl in memchr::memchr_iter(b'\n', region) {
            if let Some(s) = start {
                let line = &region[s..nl];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.is_empty() {
                    return Some(nl + 1);
                }
                if self.header(line) {
                    // The blank line comes two bytes after it at the least.
                    *earliest = (*earliest).max(nl as i64 + 3);
                }
            }
            start = Some(nl + 1);
        }
        None
    }

    /// The body's phase once the head ended `end` bytes into what was
    /// read last, having ended no earlier than `earliest` (unless every
    /// byte of it was read: `exact`).
    fn body(&self, end: usize, earliest: i64, exact: bool) -> ReqPhase {
        let passed = if exact {
            0
        } else {
            (end as i64).saturating_sub(earliest).max(0) as u64
        };
        match (self.chunked, self.length) {
            (true, _) if passed == 0 => ReqPhase::Chunked(Chunked::default()),
            (false, Some(n)) => match n.saturating_sub(passed) {
                0 if passed > 0 => ReqPhase::Resync,
                0 => ReqPhase::Start,
                rest => ReqPhase::Body(rest),
            },
            _ => ReqPhase::Resync,
        }
    }

    /// Notes what a header line says of the body; whether it is a header
    /// line that shows the request head went on (a MIME part's lines may
    /// be the body's).
    fn header(&mut self, line: &[u8]) -> bool {
        let Some(colon) = memchr::memchr(b':', line) else {
            return false;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return false;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if !value.is_empty() && value.iter().all(u8::is_ascii_digit) {
                self.length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            }
        } else if self.queued && name.eq_ignore_ascii_case(b"traceparent") {
            self.trace = trace_context::parse(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // The last coding is the one that frames the body.
            let last = value.rsplit(|&b| b == b',').next().unwrap_or(&[]);
            self.chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        }
        ![
            &b"content-disposition"[..],
            b"content-type",
            b"content-transfer-encoding",
            b"content-id",
        ]
        .iter()
        .any(|part| name.eq_ignore_ascii_case(part))
    }
}

/// Where a region read to its end leaves the head's lines.
fn edge_after(region: &[u8], before: Edge) -> Edge {
    if region.ends_with(b"\n") {
        Edge::LineStart
    } else if region.ends_with(b"\n\r") || (region == b"\r" && before == Edge::LineStart) {
        Edge::AfterCr
    } else if region.is_empty() {
        before
    } else {
        Edge::MidLine
    }
}

/// A token character of a header name (RFC 9110 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests;
