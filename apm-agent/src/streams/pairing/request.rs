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
    let (data, total, start_ns, carried) = if conn.carry.is_empty() {
        (ev.data, ev.ret.max(0) as u64, ev.ts_ns, 0)
    } else {
        let mut buf = std::mem::take(&mut conn.carry);
        let carried = buf.len() as u64;
        buf.extend_from_slice(ev.data);
        joined = buf;
        (
            &joined[..],
            carried + ev.ret.max(0) as u64,
            conn.carry_ns,
            carried,
        )
    };
    // The sequence number of `data[0]`: carried bytes came just before.
    let seq = ev
        .seq
        .map(|(port, s)| (port, s.wrapping_sub(carried as u32)));
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
                let ended = head.scan(seen, ev.tail, total.saturating_sub(captured.max(off)));
                note_trace(conn, &mut head);
                match ended {
                    Some((end, body)) => {
                        conn.req = body;
                        off += end;
                    }
                    None => {
                        conn.req = ReqPhase::HeadRest(head);
                        off = total;
                    }
                }
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
                        let at = seq.map(|(port, s)| (port, s.wrapping_add(off as u32)));
                        let before = conn.pending.len();
                        let head = request(conn, &req, (start_ns, at, ev.tid), sink);
                        let queued = conn.pending.len() > before;
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
                                // is framed.
                                let line =
                                    memchr::memchr(b'\n', seen).map_or(seen.len(), |l| l + 1);
                                let beyond = total.saturating_sub(captured.max(off));
                                let (mut head, ended) =
                                    CutHead::new(&seen[line..], ev.tail, beyond, queued);
                                note_trace(conn, &mut head);
                                match (head, ended) {
                                    (_, Some((end, body))) => {
                                        conn.req = body;
                                        off += line as u64 + end;
                                    }
                                    (head, None) => {
                                        conn.req = ReqPhase::HeadRest(head);
                                        off = total;
                                    }
                                }
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

/// Whether `seen` starts with a request line (or the start of one, cut by
/// the capture or the end of the piece): where requests resume.
fn starts_request(seen: &[u8]) -> bool {
    // parse_request answers NotHttp at once unless the bytes start with a
    // method token and a space.
    matches!(
        http::parse_request(seen),
        Ok(_) | Err(ParseError::Incomplete)
    )
}

/// A `traceparent` line of a cut head belongs to the request it cut (the
/// last one queued: a head whose request was not queued reads none),
/// unless that had one already.
fn note_trace(conn: &mut Conn, head: &mut CutHead) {
    if let Some(trace) = head.take_trace()
        && let Some(p) = conn.pending.back_mut()
    {
        p.trace.get_or_insert(trace);
    }
}

fn carry(conn: &mut Conn, seen: &[u8], start_ns: u64) {
    conn.carry = seen.to_vec();
    conn.carry_ns = start_ns;
}

/// A parsed request joins the queue; returns its head's length when the
/// head was captured to its end.
/// `start` is when its first byte came, that byte's sequence number and
/// the thread that sent it.
fn request(
    conn: &mut Conn,
    req: &Request<'_>,
    (start_ns, seq, tid): (u64, Option<super::SeqAt>, u32),
    sink: &mut impl Sink,
) -> Option<usize> {
    conn.saw_http = true;
    // A response whose end we could not see is over once the next request
    // arrives on a quiet connection.
    if conn.pending.is_empty()
        && matches!(conn.resp, RespPhase::Unframed | RespPhase::UntilClose)
        && let Some(cur) = conn.current.take()
    {
        complete_at(conn, cur, conn.last_write_ns, sink);
        conn.resp = RespPhase::Start;
    }
    let route = sink.route(conn.origin, req.path);
    sink.request(conn.origin, conn.port);
    if let Some(seq) = seq
        && conn.origin.is_client()
    {
        sink.call_started(conn.port, seq, start_ns);
    }
    if conn.pending.len() >= MAX_PIPELINE {
        sink.unpaired(conn.origin, conn.port, Unpaired::QueueFull);
    } else {
        conn.pending.push_back(Pending {
            method: req.method,
            route: route.template,
            start_ns,
            seq,
            trace: req.trace,
            tid,
        });
    }
    req.head_len
}
