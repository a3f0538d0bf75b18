//! The request side of a connection: segments or reads parsed into
//! requests waiting for their responses.

use super::{
    Conn, Event, MAX_CARRY, MAX_PIPELINE, Pending, ReqPhase, RespPhase, Sink, Unpaired, complete_at,
};
use crate::protocols::http::{self, Framing, ParseError};

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
            ReqPhase::HeadRest => {
                let seen = data.get(off as usize..).unwrap_or(&[]);
                match find(seen, b"\r\n\r\n") {
                    Some(pos) => {
                        off += pos as u64 + 4;
                        conn.req = ReqPhase::Start;
                    }
                    None => off = total,
                }
            }
            ReqPhase::Resync => {
                let seen = data.get(off as usize..).unwrap_or(&[]);
                if http::starts_like_request(seen) {
                    conn.req = ReqPhase::Start;
                } else {
                    off = total;
                }
            }
            ReqPhase::Start => {
                if off >= captured {
                    // Bytes we cannot see: possibly more pipelined requests.
                    sink.unpaired(conn.origin, conn.port, Unpaired::Truncated);
                    conn.req = ReqPhase::Resync;
                    off = total;
                    continue;
                }
                let seen = &data[off as usize..];
                match http::parse_request(seen) {
                    Ok(req)
                        if !req.line_complete && captured == total && seen.len() <= MAX_CARRY =>
                    {
                        // The read ended inside the request line: wait for
                        // the rest of it.
                        conn.carry = seen.to_vec();
                        conn.carry_ns = start_ns;
                        off = total;
                    }
                    Ok(req) => {
                        conn.saw_http = true;
                        // A response whose end we could not see is over
                        // once the next request arrives on a quiet
                        // connection.
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
                        match req.head_len {
                            Some(head) => {
                                off += head as u64;
                                conn.req = match req.body {
                                    Framing::Length(0) | Framing::Close => ReqPhase::Start,
                                    Framing::Length(n) => ReqPhase::Body(n),
                                    Framing::Chunked => ReqPhase::Resync,
                                };
                            }
                            None => {
                                // The head goes on past what we saw.
                                conn.req = ReqPhase::HeadRest;
                                off = total;
                            }
                        }
                    }
                    Err(ParseError::Incomplete) => {
                        if seen.len() <= MAX_CARRY && captured == total {
                            conn.carry = seen.to_vec();
                            conn.carry_ns = start_ns;
                        } else {
                            sink.unpaired(conn.origin, conn.port, Unpaired::Truncated);
                            conn.req = ReqPhase::Resync;
                        }
                        off = total;
                    }
                    Err(ParseError::NotHttp) => {
                        if !conn.saw_http {
                            conn.ignored = true;
                            sink.unpaired(conn.origin, conn.port, Unpaired::NotHttp);
                            return;
                        }
                        conn.req = ReqPhase::Resync;
                        off = total;
                    }
                }
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
