//! The response side of a connection: status lines popping the FIFO, and
//! each response's end found by its framing.

use super::{Conn, Current, Event, RespPhase, Sink, Unpaired, complete_at};
use crate::protocols::http::{self, Framing};

pub(super) fn on_write(conn: &mut Conn, ev: &Event<'_>, sink: &mut impl Sink) {
    let data = ev.data;
    let total = ev.ret.max(0) as u64;
    let captured = data.len() as u64;
    let previous_write_ns = conn.last_write_ns;
    conn.last_write_ns = ev.ts_ns;
    let mut off = 0u64;
    while off < total {
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
            RespPhase::Chunked => {
                let end: &[u8] = if captured == total { data } else { ev.tail };
                if end.ends_with(b"0\r\n\r\n") {
                    complete_current(conn, ev, sink);
                }
                off = total;
            }
            RespPhase::Lost => {
                let seen = data.get(off as usize..).unwrap_or(&[]);
                if !conn.pending.is_empty() && seen.starts_with(b"HTTP/1.") {
                    conn.resp = RespPhase::Start;
                } else {
                    off = total;
                }
            }
            RespPhase::UntilClose | RespPhase::Unframed => {
                let seen = data.get(off as usize..).unwrap_or(&[]);
                if conn.resp == RespPhase::Unframed && seen.starts_with(b"HTTP/1.") {
                    // The next response starts: the previous one ended
                    // with the write before this one.
                    if let Some(cur) = conn.current.take() {
                        complete_at(conn.origin, conn.port, cur, previous_write_ns, sink);
                    }
                    conn.resp = RespPhase::Start;
                } else {
                    off = total;
                }
            }
            RespPhase::Start => {
                if off >= captured {
                    off = total;
                    continue;
                }
                let seen = &data[off as usize..];
                let Ok(resp) = http::parse_response(seen) else {
                    // Not a status line where one should start: we lost
                    // the framing; wait for one that is.
                    conn.resp = RespPhase::Unframed;
                    off = total;
                    continue;
                };
                let head = resp.head_len.map_or(total - off, |h| h as u64);
                if (100..200).contains(&resp.status) && resp.status != 101 {
                    // Informational: the final response is still to come.
                    off += head;
                    continue;
                }
                let Some(request) = conn.pending.pop_front() else {
                    sink.unpaired(conn.origin, conn.port, Unpaired::ResponseWithoutRequest);
                    conn.resp = match (resp.head_len, resp.body) {
                        (Some(_), Framing::Length(n)) if n > 0 => RespPhase::Body(n),
                        _ => RespPhase::Unframed,
                    };
                    off += head;
                    continue;
                };
                let bodyless = http::bodyless(request.method, resp.status);
                conn.current = Some(Current {
                    request,
                    status: resp.status,
                });
                off += head;
                if resp.status == 101 {
                    // Switching protocols: what follows is not HTTP/1.x.
                    complete_current(conn, ev, sink);
                    conn.ignored = true;
                    return;
                }
                conn.resp = match (resp.head_len, bodyless, resp.body) {
                    (None, _, _) => RespPhase::Unframed,
                    (Some(_), true, _) | (Some(_), false, Framing::Length(0)) => {
                        complete_current(conn, ev, sink);
                        RespPhase::Start
                    }
                    (Some(_), false, Framing::Length(n)) => RespPhase::Body(n),
                    (Some(_), false, Framing::Chunked) => RespPhase::Chunked,
                    (Some(_), false, Framing::Close) => RespPhase::UntilClose,
                };
                if conn.resp == RespPhase::Chunked && off >= total {
                    // The whole write was the head; the chunks follow.
                    break;
                }
            }
        }
    }
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
        complete_at(conn.origin, conn.port, cur, ev.ts_ns, sink);
    }
}
