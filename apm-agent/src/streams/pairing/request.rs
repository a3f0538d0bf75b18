//! The request side of a connection: segments or reads parsed into
//! requests waiting for their responses.

use super::{
    Conn, Event, MAX_CARRY, MAX_PIPELINE, Pending, ReqPhase, RespPhase, Sink, Unpaired,
    chunked::{Chunked, Step},
    complete_at,
    cut_head::CutHead,
};
use crate::protocols::http::{self, Framing, ParseError, Request};

pub(super) fn on_read(conn: &mut Conn, ev: &Event<'_>, sink: &mut impl Sink) {
    // A request line split across reads: parse the carried start with
    // these bytes, from the time its first byte arrived.
    let joined;
    let (data, total, start_ns) = if conn.carry.is_empty() {
        (ev.data, ev.ret.max(0) as u64, ev.ts_ns)
    } else {
        let mut buf = std::mem::take(&mut conn.carry);
        let carried = buf.len() as u64;
        buf.extend_from_slice(ev.data);
        joined = buf;
        (&joined[..], carried + ev.ret.max(0) as u64, conn.carry_ns)
    };
    let captured = data.len() as u64;
    let mut off = 0u64;
    while off < total {
        let seen = data.get(off as usize..).unwrap_or(&[]);
        match conn.req {
            ReqPhase::Body(rem) => {
                let n = rem.min(total - off);
                off += n;
                conn.req = if rem == n {
                    ReqPhase::Start
                } else {
                    ReqPhase::Body(rem - n)
                };
            }
            ReqPhase::Chunked(mut body) => match body.advance(data, ev.tail, off, total) {
                Step::More => {
                    conn.req = ReqPhase::Chunked(body);
                    off = total;
                }
                Step::Done(end) => {
                    conn.req = ReqPhase::Start;
                    off = end;
                }
                Step::Lost => {
                    conn.req = ReqPhase::Resync;
                    off = total;
                }
            },
            ReqPhase::HeadRest(mut head) => {
                // A new piece that starts with a request line: the head
                // ended unseen, before it.
                if off == 0 && starts_request(seen) {
                    conn.req = ReqPhase::Start;
                    continue;
                }
                off = match head.scan(seen, false) {
                    Some(end) => {
                        conn.req = after_head(head);
                        off + end as u64
                    }
                    None => head_end_in_tail(conn, head, ev.tail, captured, total),
                };
            }
            ReqPhase::Resync => {
                if starts_request(seen) {
                    conn.req = ReqPhase::Start;
                } else {
                    off = total;
                }
            }
            ReqPhase::Start => {
                if off >= captured {
                    // Bytes we cannot see: possibly more pipelined requests.
                    sink.resync(conn.origin, conn.port, Unpaired::Truncated);
                    conn.req = ReqPhase::Resync;
                    off = total;
                    continue;
                }
                match http::parse_request(seen) {
                    Ok(req)
                        if !req.line_complete && captured == total && seen.len() <= MAX_CARRY =>
                    {
                        // The read ended inside the request line: wait for
                        // the rest of it.
                        carry(conn, seen, start_ns);
                        off = total;
                    }
                    Ok(req) => {
                        let head = request(conn, &req, start_ns, sink);
                        match head {
                            Some(head) => {
                                off += head as u64;
                                conn.req = match req.body {
                                    Framing::Length(0) | Framing::Close => ReqPhase::Start,
                                    Framing::Length(n) => ReqPhase::Body(n),
                                    Framing::Chunked => ReqPhase::Chunked(Chunked::default()),
                                };
                            }
                            None => {
                                // The head goes on past what we saw: its
                                // whole header lines may say how the body
                                // is framed, and the piece's tail where the
                                // head ends.
                                let mut head = CutHead::default();
                                if let Some(line) = memchr::memchr(b'\n', seen) {
                                    head.scan(&seen[line + 1..], true);
                                }
                                off = head_end_in_tail(conn, head, ev.tail, captured, total);
                            }
                        }
                    }
                    Err(ParseError::Incomplete) => {
                        if seen.len() <= MAX_CARRY && captured == total {
                            carry(conn, seen, start_ns);
                        } else {
                            sink.resync(conn.origin, conn.port, Unpaired::Truncated);
                            conn.req = ReqPhase::Resync;
                        }
                        off = total;
                    }
                    Err(ParseError::NotHttp) => {
                        // Not a request where one should start: the rest of
                        // a body whose start was missed, or another
                        // protocol. Counted once per connection.
                        if !conn.not_http_counted && !conn.saw_http {
                            conn.not_http_counted = true;
                            sink.resync(conn.origin, conn.port, Unpaired::NotHttp);
                        }
                        conn.req = ReqPhase::Resync;
                        off = total;
                    }
                }
            }
        }
    }
}

/// Where a cut head goes on after a piece of `total` bytes whose first
/// `captured` were read: past its blank line when the piece's tail holds
/// it (the body, if any, starts there), else into the next piece. Returns
/// the offset to go on from.
fn head_end_in_tail(
    conn: &mut Conn,
    mut head: CutHead,
    tail: &[u8],
    captured: u64,
    total: u64,
) -> u64 {
    let tail_start = total.saturating_sub(tail.len() as u64);
    if captured < total
        && tail_start >= captured
        && let Some(end) = head.scan(tail, false)
    {
        conn.req = after_head(head);
        return tail_start + end as u64;
    }
    conn.req = ReqPhase::HeadRest(head);
    total
}

/// The body after a head whose end was found: by its framing where a
/// whole line gave it, else wait for the next request line.
fn after_head(head: CutHead) -> ReqPhase {
    match (head.chunked, head.length) {
        (true, _) => ReqPhase::Chunked(Chunked::default()),
        (false, Some(0)) => ReqPhase::Start,
        (false, Some(n)) => ReqPhase::Body(n),
        (false, None) => ReqPhase::Resync,
    }
}

/// Whether `seen` starts with a request line (or the start of one, cut by
/// the capture or the end of the piece): where requests resume.
fn starts_request(seen: &[u8]) -> bool {
    http::starts_like_request(seen)
        && matches!(
            http::parse_request(seen),
            Ok(_) | Err(ParseError::Incomplete)
        )
}

fn carry(conn: &mut Conn, seen: &[u8], start_ns: u64) {
    conn.carry = seen.to_vec();
    conn.carry_ns = start_ns;
}

/// A parsed request joins the queue; returns its head's length when the
/// head was captured to its end.
fn request(
    conn: &mut Conn,
    req: &Request<'_>,
    start_ns: u64,
    sink: &mut impl Sink,
) -> Option<usize> {
    conn.saw_http = true;
    // A response whose end we could not see is over once the next request
    // arrives on a quiet connection.
    if conn.pending.is_empty()
        && matches!(conn.resp, RespPhase::Unframed | RespPhase::UntilClose)
        && let Some(cur) = conn.current.take()
    {
        complete_at(conn.origin, conn.port, cur, conn.last_write_ns, sink);
        conn.resp = RespPhase::Start;
    }
    let route = sink.route(conn.origin, req.path);
    sink.request(conn.origin, conn.port);
    if conn.pending.len() >= MAX_PIPELINE {
        sink.unpaired(conn.origin, conn.port, Unpaired::QueueFull);
    } else {
        conn.pending.push_back(Pending {
            method: req.method,
            route: route.template,
            start_ns,
        });
    }
    req.head_len
}
