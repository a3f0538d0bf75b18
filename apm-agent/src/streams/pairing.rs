//! Request/response pairing per connection, from read/write/close events
//! of either capture (syscall records, or packets turned into in-order
//! stream pieces by `reassembly`).
//!
//! Each connection keeps a FIFO of parsed requests awaiting a response, so
//! keep-alive and pipelined HTTP/1.1 (several requests in one read,
//! responses in order) pair correctly. A request starts at the read that
//! brought its first byte and ends at the write that completed its
//! response: by Content-Length (counting `sendfile` bytes too), by the last
//! chunk (`0\r\n\r\n` at the end of a write), or, for responses delimited by
//! the connection, at the last write before the close. Responses whose
//! framing cannot be seen (a head cut off by the capture) end at their last
//! write before the next request or response begins.
//!
//! Everything that cannot be paired is reported by reason; no state
//! outlives its connection, and the table of connections is bounded.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use apm_common::events::EventKind;

use crate::protocols::{
    http::{self, Framing, Method, ParseError},
    routes::Route,
};

/// Requests that may wait for responses on one connection (pipelining).
pub const MAX_PIPELINE: usize = 64;
/// Bytes of a request line carried over to the next read when a read ends
/// inside it.
const MAX_CARRY: usize = 1024;

/// Whose connection it is, for naming its service: the process (syscall
/// capture) or the server socket's namespace and port (packet capture).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    Process(u32),
    Socket { netns: u64, port: u16 },
}

/// One piece of a connection's traffic, decoded. `Read` carries request
/// bytes, `Write` response bytes, `Sendfile` response bytes not captured.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    pub kind: EventKind,
    pub ts_ns: u64,
    /// The connection: (tgid << 32 | fd) for syscalls, the socket cookie
    /// for packets.
    pub conn: u64,
    pub origin: Origin,
    pub port: u16,
    /// Bytes transferred.
    pub ret: i64,
    /// The captured prefix of those bytes.
    pub data: &'a [u8],
    /// The last bytes of a long write (empty otherwise).
    pub tail: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unpaired {
    /// The connection closed before the response began.
    ClosedMidRequest,
    /// The connection closed before a length-delimited response ended.
    ClosedMidResponse,
    /// A status line with no request waiting for it.
    ResponseWithoutRequest,
    /// Bytes that are not HTTP/1.x (counted once per connection).
    NotHttp,
    /// Bytes beyond the capture that may have held requests.
    Truncated,
    /// More than [`MAX_PIPELINE`] requests waiting on one connection.
    QueueFull,
    /// Connection state dropped (idle too long, table full, fd reused).
    Evicted,
    /// Bytes of the connection were never seen (ring-buffer loss, a
    /// segment out of order): the requests waiting on it are dropped and
    /// pairing resyncs; each gap counts at least once.
    Gap,
}

impl Unpaired {
    pub const ALL: [Unpaired; 8] = [
        Unpaired::ClosedMidRequest,
        Unpaired::ClosedMidResponse,
        Unpaired::ResponseWithoutRequest,
        Unpaired::NotHttp,
        Unpaired::Truncated,
        Unpaired::QueueFull,
        Unpaired::Evicted,
        Unpaired::Gap,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClosedMidRequest => "closed_mid_request",
            Self::ClosedMidResponse => "closed_mid_response",
            Self::ResponseWithoutRequest => "response_without_request",
            Self::NotHttp => "not_http",
            Self::Truncated => "truncated",
            Self::QueueFull => "queue_full",
            Self::Evicted => "evicted",
            Self::Gap => "gap",
        }
    }
}

/// A paired request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed {
    pub origin: Origin,
    pub port: u16,
    pub method: Method,
    pub route: Arc<str>,
    pub status: u16,
    pub duration_ns: u64,
}

/// Where pairing results go. `route` turns a raw path into a template
/// (the raw path goes no further).
pub trait Sink {
    fn route(&mut self, origin: Origin, path: &str) -> Route;
    fn request(&mut self, origin: Origin, port: u16);
    fn completed(&mut self, done: Completed);
    fn unpaired(&mut self, origin: Origin, port: u16, reason: Unpaired);
}

#[derive(Clone, Debug)]
struct Pending {
    method: Method,
    route: Arc<str>,
    start_ns: u64,
}

#[derive(Clone, Debug)]
struct Current {
    request: Pending,
    status: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReqPhase {
    /// The next byte starts a request.
    Start,
    /// Skipping this many request-body bytes.
    Body(u64),
    /// The head continues beyond what was captured: skip to its end.
    HeadRest,
    /// Lost track (a chunked body, unseen bytes): wait for a read that
    /// starts like a request.
    Resync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RespPhase {
    Start,
    Body(u64),
    Chunked,
    /// Ends at close.
    UntilClose,
    /// Framing unknown: ends at the last write before the next message.
    Unframed,
    /// After a gap: response bytes are ignored until a request has
    /// arrived and a status line starts.
    Lost,
}

#[derive(Debug)]
struct Conn {
    origin: Origin,
    port: u16,
    pending: VecDeque<Pending>,
    current: Option<Current>,
    req: ReqPhase,
    resp: RespPhase,
    /// The start of a request line split across reads.
    carry: Vec<u8>,
    carry_ns: u64,
    last_write_ns: u64,
    last_seen_ns: u64,
    saw_http: bool,
    /// Not HTTP: ignore the rest of the connection.
    ignored: bool,
}

impl Conn {
    fn new(origin: Origin, port: u16, now: u64) -> Self {
        Self {
            origin,
            port,
            pending: VecDeque::new(),
            current: None,
            req: ReqPhase::Start,
            resp: RespPhase::Start,
            carry: Vec::new(),
            carry_ns: 0,
            last_write_ns: now,
            last_seen_ns: now,
            saw_http: false,
            ignored: false,
        }
    }
}

/// One request in flight, for /stats/requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlight {
    pub origin: Origin,
    pub port: u16,
    pub method: Method,
    pub route: Arc<str>,
    pub start_ns: u64,
}

pub struct Tracker {
    conns: HashMap<u64, Conn>,
    max_conns: usize,
}

impl Tracker {
    pub fn new(max_conns: usize) -> Self {
        Self {
            conns: HashMap::new(),
            max_conns,
        }
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    pub fn handle(&mut self, ev: &Event<'_>, sink: &mut impl Sink) {
        let key = ev.conn;
        match ev.kind {
            EventKind::Accept => {
                // A reused descriptor whose close we did not see (dup2,
                // close_range): the old connection is over.
                if let Some(old) = self.conns.remove(&key) {
                    finish(old, sink, Unpaired::Evicted);
                }
                if self.make_room(ev.ts_ns, sink) {
                    self.conns
                        .insert(key, Conn::new(ev.origin, ev.port, ev.ts_ns));
                }
            }
            EventKind::Close => {
                if let Some(conn) = self.conns.remove(&key) {
                    finish(conn, sink, Unpaired::ClosedMidRequest);
                }
            }
            EventKind::Read | EventKind::Write | EventKind::Sendfile => {
                if !self.conns.contains_key(&key) && !self.make_room(ev.ts_ns, sink) {
                    return;
                }
                let conn = self
                    .conns
                    .entry(key)
                    .or_insert_with(|| Conn::new(ev.origin, ev.port, ev.ts_ns));
                if conn.port == 0 {
                    conn.port = ev.port;
                }
                conn.last_seen_ns = ev.ts_ns;
                if conn.ignored {
                    return;
                }
                match ev.kind {
                    EventKind::Read => on_read(conn, ev, sink),
                    EventKind::Write => on_write(conn, ev, sink),
                    _ => on_sendfile(conn, ev, sink),
                }
            }
            EventKind::Packet => {}
        }
    }

    /// Bytes of `conn` were lost before the event at `ts_ns`: drop what
    /// waits on it (counted as [`Unpaired::Gap`], at least once) and
    /// resync. Requests resume at the next segment that starts like a
    /// request; responses at the next status line after that request.
    pub fn gap(&mut self, conn: u64, sink: &mut impl Sink) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let mut dropped = c.pending.len();
        c.pending.clear();
        if c.current.take().is_some() {
            dropped += 1;
        }
        for _ in 0..dropped.max(1) {
            sink.unpaired(c.origin, c.port, Unpaired::Gap);
        }
        c.carry.clear();
        c.req = ReqPhase::Resync;
        c.resp = RespPhase::Lost;
    }

    /// Drops connections idle for longer than `idle_ns`.
    pub fn sweep(&mut self, now_ns: u64, idle_ns: u64, sink: &mut impl Sink) {
        let stale: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| now_ns.saturating_sub(c.last_seen_ns) > idle_ns)
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            if let Some(conn) = self.conns.remove(&key) {
                finish(conn, sink, Unpaired::Evicted);
            }
        }
    }

    /// Whether a new connection fits, evicting idle ones when full.
    fn make_room(&mut self, now_ns: u64, sink: &mut impl Sink) -> bool {
        if self.conns.len() < self.max_conns {
            return true;
        }
        // Evict what has been idle for a second or more, then give up.
        self.sweep(now_ns, 1_000_000_000, sink);
        self.conns.len() < self.max_conns
    }

    /// Requests waiting for or receiving their response.
    pub fn in_flight(&self) -> impl Iterator<Item = InFlight> + '_ {
        self.conns.values().flat_map(|conn| {
            conn.current
                .iter()
                .map(|c| &c.request)
                .chain(conn.pending.iter())
                .map(move |p| InFlight {
                    origin: conn.origin,
                    port: conn.port,
                    method: p.method,
                    route: p.route.clone(),
                    start_ns: p.start_ns,
                })
        })
    }
}

/// The connection is gone: a response that ran until close is complete;
/// anything else still waiting is unpaired.
fn finish(mut conn: Conn, sink: &mut impl Sink, pending_reason: Unpaired) {
    let origin = conn.origin;
    if let Some(cur) = conn.current.take() {
        match conn.resp {
            RespPhase::UntilClose | RespPhase::Unframed | RespPhase::Start | RespPhase::Lost => {
                complete_at(origin, conn.port, cur, conn.last_write_ns, sink)
            }
            RespPhase::Body(_) | RespPhase::Chunked => {
                let reason = if pending_reason == Unpaired::Evicted {
                    Unpaired::Evicted
                } else {
                    Unpaired::ClosedMidResponse
                };
                sink.unpaired(origin, conn.port, reason);
            }
        }
    }
    for _ in conn.pending.drain(..) {
        sink.unpaired(origin, conn.port, pending_reason);
    }
}

fn complete_at(origin: Origin, port: u16, cur: Current, end_ns: u64, sink: &mut impl Sink) {
    sink.completed(Completed {
        origin,
        port,
        method: cur.request.method,
        route: cur.request.route,
        status: cur.status,
        duration_ns: end_ns.saturating_sub(cur.request.start_ns),
    });
}

fn on_read(conn: &mut Conn, ev: &Event<'_>, sink: &mut impl Sink) {
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

fn on_write(conn: &mut Conn, ev: &Event<'_>, sink: &mut impl Sink) {
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

fn on_sendfile(conn: &mut Conn, ev: &Event<'_>, sink: &mut impl Sink) {
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

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        done: Vec<(Method, String, u16, u64)>,
        unpaired: Vec<Unpaired>,
        requests: usize,
    }

    impl Sink for Recorder {
        fn route(&mut self, _origin: Origin, path: &str) -> Route {
            Route {
                template: path.into(),
                overflow: false,
            }
        }
        fn request(&mut self, _origin: Origin, _port: u16) {
            self.requests += 1;
        }
        fn completed(&mut self, d: Completed) {
            self.done
                .push((d.method, d.route.to_string(), d.status, d.duration_ns));
        }
        fn unpaired(&mut self, _origin: Origin, _port: u16, reason: Unpaired) {
            self.unpaired.push(reason);
        }
    }

    /// Drives a tracker for one connection (tgid 1, fd 5, port 80).
    struct Conn1 {
        t: Tracker,
        r: Recorder,
    }

    impl Conn1 {
        fn new() -> Self {
            let mut c = Self {
                t: Tracker::new(16),
                r: Recorder::default(),
            };
            c.ev(EventKind::Accept, 0, b"", 0);
            c
        }

        fn ev(&mut self, kind: EventKind, ts: u64, data: &[u8], ret: i64) {
            self.ev_tail(kind, ts, data, ret, b"");
        }

        fn ev_tail(&mut self, kind: EventKind, ts: u64, data: &[u8], ret: i64, tail: &[u8]) {
            let ev = Event {
                kind,
                ts_ns: ts,
                conn: 5,
                origin: Origin::Process(1),
                port: 80,
                ret,
                data,
                tail,
            };
            self.t.handle(&ev, &mut self.r);
        }

        fn read(&mut self, ts: u64, data: &[u8]) {
            self.ev(EventKind::Read, ts, data, data.len() as i64);
        }

        fn write(&mut self, ts: u64, data: &[u8]) {
            self.ev(EventKind::Write, ts, data, data.len() as i64);
        }
    }

    fn done(m: Method, route: &str, status: u16, dur: u64) -> (Method, String, u16, u64) {
        (m, route.to_owned(), status, dur)
    }

    #[test]
    fn keep_alive_content_length_responses() {
        let mut c = Conn1::new();
        c.read(100, b"GET /a?secret=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        c.write(150, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        c.write(170, b"hello");
        c.read(200, b"GET /b HTTP/1.1\r\n\r\n");
        c.write(
            260,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno",
        );
        assert_eq!(
            c.r.done,
            vec![
                done(Method::Get, "/a", 200, 70),
                done(Method::Get, "/b", 404, 60)
            ]
        );
        assert!(c.r.unpaired.is_empty());
        assert_eq!(c.t.in_flight().count(), 0);
    }

    #[test]
    fn pipelined_batch_in_one_read_pairs_in_order() {
        let mut c = Conn1::new();
        c.read(
            10,
            b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nHEAD /3 HTTP/1.1\r\n\r\n",
        );
        assert_eq!(c.t.in_flight().count(), 3);
        // Responses written back to back in one write.
        c.write(
            50,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 500 E\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
        );
        assert_eq!(
            c.r.done,
            vec![
                done(Method::Get, "/1", 200, 40),
                done(Method::Get, "/2", 500, 40),
                done(Method::Head, "/3", 200, 40)
            ]
        );
        assert!(c.r.unpaired.is_empty());
    }

    #[test]
    fn split_request_line_is_carried_to_the_next_read() {
        let mut c = Conn1::new();
        c.read(10, b"GET /spl");
        c.read(20, b"it HTTP/1.1\r\nHost: x\r\n\r\n");
        c.write(50, b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(c.r.done, vec![done(Method::Get, "/split", 204, 40)]);
    }

    #[test]
    fn request_bodies_are_skipped() {
        let mut c = Conn1::new();
        c.read(
            10,
            b"POST /p HTTP/1.1\r\nContent-Length: 10\r\n\r\nGET /x HTT",
        );
        c.write(20, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(c.r.done, vec![done(Method::Post, "/p", 201, 10)]);
        assert_eq!(c.r.requests, 1);
    }

    #[test]
    fn chunked_response_ends_at_last_chunk_even_beyond_capture() {
        let mut c = Conn1::new();
        c.read(0, b"GET /c HTTP/1.1\r\n\r\n");
        c.write(10, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        c.write(20, b"5\r\nhello\r\n");
        assert!(c.r.done.is_empty());
        // A long write: only a prefix captured, the tail shows the end.
        c.ev_tail(
            EventKind::Write,
            30,
            b"1000\r\nxxxx",
            5000,
            b"\r\n0\r\n\r\n",
        );
        assert_eq!(c.r.done, vec![done(Method::Get, "/c", 200, 30)]);
    }

    #[test]
    fn sendfile_bodies_count_toward_content_length() {
        let mut c = Conn1::new();
        c.read(0, b"GET /f HTTP/1.1\r\n\r\n");
        c.write(5, b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n");
        c.ev(EventKind::Sendfile, 7, b"", 2000);
        assert!(c.r.done.is_empty());
        c.ev(EventKind::Sendfile, 9, b"", 1000);
        assert_eq!(c.r.done, vec![done(Method::Get, "/f", 200, 9)]);
    }

    #[test]
    fn http10_without_length_ends_at_close() {
        let mut c = Conn1::new();
        c.read(0, b"GET /old HTTP/1.0\r\n\r\n");
        c.write(10, b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n");
        c.write(30, b"body...");
        assert!(c.r.done.is_empty());
        c.ev(EventKind::Close, 40, b"", 0);
        assert_eq!(c.r.done, vec![done(Method::Get, "/old", 200, 30)]);
        assert_eq!(c.t.connections(), 0);
    }

    #[test]
    fn connection_close_with_length_completes_before_close() {
        let mut c = Conn1::new();
        c.read(0, b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n");
        c.write(
            10,
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        );
        assert_eq!(c.r.done, vec![done(Method::Get, "/x", 200, 10)]);
        c.ev(EventKind::Close, 20, b"", 0);
        assert!(c.r.unpaired.is_empty());
    }

    #[test]
    fn close_mid_request_and_orphan_responses_are_counted() {
        let mut c = Conn1::new();
        c.write(5, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        c.read(10, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
        c.ev(EventKind::Close, 20, b"", 0);
        assert_eq!(
            c.r.unpaired,
            vec![
                Unpaired::ResponseWithoutRequest,
                Unpaired::ClosedMidRequest,
                Unpaired::ClosedMidRequest
            ]
        );
        assert_eq!(c.t.connections(), 0);
    }

    #[test]
    fn garbage_marks_the_connection_not_http_once() {
        let mut c = Conn1::new();
        c.read(0, b"*1\r\n$4\r\nPING\r\n");
        c.read(5, b"*1\r\n$4\r\nPING\r\n");
        c.write(6, b"+PONG\r\n");
        assert_eq!(c.r.unpaired, vec![Unpaired::NotHttp]);
        assert!(c.r.done.is_empty());
    }

    #[test]
    fn truncated_capture_of_a_long_pipelined_batch_is_reported() {
        let mut c = Conn1::new();
        // 3000 bytes were read but only the first request was captured.
        c.ev(EventKind::Read, 0, b"GET /1 HTTP/1.1\r\n\r\n", 3000);
        assert_eq!(c.r.unpaired, vec![Unpaired::Truncated]);
        c.write(10, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(c.r.done, vec![done(Method::Get, "/1", 200, 10)]);
    }

    #[test]
    fn unframed_response_ends_before_the_next_request() {
        let mut c = Conn1::new();
        c.read(0, b"GET /big HTTP/1.1\r\n\r\n");
        // The head was cut by the capture: no framing visible.
        c.ev(
            EventKind::Write,
            10,
            b"HTTP/1.1 200 OK\r\nX-Long: aaaa",
            4000,
        );
        c.write(20, b"more body");
        c.read(50, b"GET /next HTTP/1.1\r\n\r\n");
        assert_eq!(c.r.done, vec![done(Method::Get, "/big", 200, 20)]);
        assert_eq!(c.t.in_flight().count(), 1);
    }

    #[test]
    fn state_is_bounded_and_idle_connections_are_evicted() {
        let mut t = Tracker::new(2);
        let mut r = Recorder::default();
        for fd in 0..3u32 {
            let ev = Event {
                kind: EventKind::Read,
                ts_ns: u64::from(fd),
                conn: u64::from(fd),
                origin: Origin::Process(1),
                port: 80,
                ret: 18,
                data: b"GET / HTTP/1.1\r\n\r\n",
                tail: b"",
            };
            t.handle(&ev, &mut r);
        }
        assert_eq!(
            t.connections(),
            2,
            "third connection refused while others are fresh"
        );
        t.sweep(10_000_000_000, 1_000_000_000, &mut r);
        assert_eq!(t.connections(), 0);
        assert_eq!(r.unpaired, vec![Unpaired::Evicted, Unpaired::Evicted]);
    }
}
