//! The response side of a connection: status lines popping the FIFO, and
//! each response's end found by its framing.

use super::{
    Conn, Current, Event, RespPhase, Sink, Unpaired, Upgraded,
    chunked::{Chunked, Step},
    complete_at, drop_waiting,
};
use crate::protocols::http::{self, Framing, ParseError};

pub(super) fn on_write(conn: &mut Conn, ev: &Event<'_>, sink: &mut impl Sink) {
    let data = ev.data;
    let total = ev.ret.max(0) as u64;
    let captured = data.len() as u64;
    let previous_write_ns = conn.last_write_ns;
    conn.last_write_ns = ev.ts_ns;
    let mut off = 0u64;
    while off < total {
        let seen = data.get(off as usize..).unwrap_or(&[]);
        match conn.resp {
            RespPhase::Body(rem) => {
                let n = rem.min(total - off);
                off += n;
                if rem == n {
                    complete_current(conn, ev, sink);
                } else {
                    conn.resp = RespPhase::Body(rem - n);
                }
            }
            RespPhase::Chunked(mut body) => match body.advance(data, ev.tail, off, total) {
                Step::More => {
                    conn.resp = RespPhase::Chunked(body);
                    off = total;
                }
                Step::Done(end) => {
                    complete_current(conn, ev, sink);
                    off = end;
                }
                Step::Lost => {
                    // A chunk-size line not captured: the response ends at
                    // its last write before the next request or response.
                    unframed(conn, sink);
                    off = total;
                }
            },
            RespPhase::Lost => {
                if !conn.pending.is_empty() && seen.starts_with(b"HTTP/1.") {
                    conn.resp = RespPhase::Start;
                } else {
                    off = total;
                }
            }
            RespPhase::UntilClose | RespPhase::Unframed => {
                if conn.resp == RespPhase::Unframed && seen.starts_with(b"HTTP/1.") {
                    // The next response starts: the previous one ended
                    // with the write before this one.
                    if let Some(cur) = conn.current.take() {
                        complete_at(conn, cur, previous_write_ns, sink);
                    }
                    conn.resp = RespPhase::Start;
                } else {
                    off = total;
                }
            }
            RespPhase::Start => {
                if off >= captured {
                    // A response may start in bytes we cannot see: which
                    // request the next status line answers is unknown.
                    lost(conn, sink, Unpaired::Truncated);
                    off = total;
                    continue;
                }
                let resp = match http::parse_response(seen) {
                    Ok(resp) => resp,
                    Err(ParseError::Incomplete) if conn.pending.is_empty() => {
                        off = total;
                        continue;
                    }
                    Err(ParseError::Incomplete) => {
                        // A status line cut by the end of the piece.
                        lost(conn, sink, Unpaired::Truncated);
                        off = total;
                        continue;
                    }
                    Err(_) if conn.pending.is_empty() && conn.current.is_none() => {
                        // Not a status line and nothing waits: the rest of a
                        // response whose start was missed.
                        conn.resp = RespPhase::Unframed;
                        off = total;
                        continue;
                    }
                    Err(_) => {
                        lost(conn, sink, Unpaired::Malformed);
                        off = total;
                        continue;
                    }
                };
                let head = resp.head_len.map_or(total - off, |h| h as u64);
                if (100..200).contains(&resp.status) && resp.status != 101 {
                    // Informational: the final response is still to come.
                    off += head;
                    continue;
                }
                off += head;
                let Some(request) = conn.pending.pop_front() else {
                    sink.resync(conn.origin, conn.port, Unpaired::ResponseWithoutRequest);
                    conn.resp = match (resp.head_len, resp.body) {
                        (None, _) => RespPhase::Unframed,
                        (Some(_), Framing::Length(0)) => RespPhase::Start,
                        (Some(_), Framing::Length(n)) => RespPhase::Body(n),
                        (Some(_), Framing::Chunked) => RespPhase::Chunked(Chunked::default()),
                        (Some(_), Framing::Close) => RespPhase::UntilClose,
                    };
                    continue;
                };
                let bodyless = http::bodyless(request.method, resp.status);
                conn.current = Some(Current {
                    request,
                    status: resp.status,
                    tid: ev.tid,
                });
                if resp.status == 101 {
                    // Switching protocols: what follows is not HTTP/1.x;
                    // HTTP/2 (`Upgrade: h2c`) answers the request as its
                    // stream 1.
                    match conn.current.take() {
                        Some(cur) if resp.h2c && resp.head_len.is_some() => {
                            conn.upgraded = Some(Upgraded::of(cur, off as usize));
                        }
                        cur => {
                            conn.current = cur;
                            complete_current(conn, ev, sink);
                        }
                    }
                    conn.ignored = true;
                    return;
                }
                conn.resp = match (resp.head_len, bodyless, resp.body) {
                    (None, _, _) => {
                        unframed(conn, sink);
                        off = total;
                        continue;
                    }
                    (Some(_), true, _) | (Some(_), false, Framing::Length(0)) => {
                        complete_current(conn, ev, sink);
                        RespPhase::Start
                    }
                    (Some(_), false, Framing::Length(n)) => RespPhase::Body(n),
                    (Some(_), false, Framing::Chunked) => RespPhase::Chunked(Chunked::default()),
                    (Some(_), false, Framing::Close) => RespPhase::UntilClose,
                };
                if matches!(conn.resp, RespPhase::Chunked(_)) && off >= total {
                    // The whole write was the head; the chunks follow.
                    break;
                }
            }
        }
    }
}

/// The current response's end cannot be seen. Alone on the connection, it
/// ends at its last write before the next request (exact on keep-alive);
/// with requests pipelined behind it, where the next response starts is
/// not known either, and they are all dropped (counted as truncated).
fn unframed(conn: &mut Conn, sink: &mut impl Sink) {
    if conn.pending.is_empty() {
        conn.resp = RespPhase::Unframed;
    } else {
        lost(conn, sink, Unpaired::Truncated);
    }
}

/// Framing lost where a response should start: the requests waiting can
/// no longer be told which status line is theirs. They are dropped
/// (counted with `reason`) and responses resume after the next request.
fn lost(conn: &mut Conn, sink: &mut impl Sink, reason: Unpaired) {
    if conn.pending.is_empty() && conn.current.is_none() {
        return;
    }
    sink.resync(conn.origin, conn.port, reason);
    drop_waiting(conn, sink, reason);
}

pub(super) fn on_sendfile(conn: &mut Conn, ev: &Event<'_>, sink: &mut impl Sink) {
    conn.last_write_ns = ev.ts_ns;
    if let RespPhase::Body(rem) = conn.resp {
        let n = rem.min(ev.ret.max(0) as u64);
        if rem == n {
            complete_current(conn, ev, sink);
        } else {
            conn.resp = RespPhase::Body(rem - n);
        }
    }
}

fn complete_current(conn: &mut Conn, ev: &Event<'_>, sink: &mut impl Sink) {
    conn.resp = RespPhase::Start;
    if let Some(cur) = conn.current.take() {
        complete_at(conn, cur, ev.ts_ns, sink);
    }
}
