//! Request/response pairing per connection, from read/write/close events
//! of either capture (syscall records, or packets turned into in-order
//! stream pieces by `reassembly`).
//!
//! Each connection keeps a FIFO of parsed requests awaiting a response, so
//! keep-alive and pipelined HTTP/1.1 (several requests in one read,
//! responses in order) pair correctly. A request starts at the read that
//! brought its first byte and ends at the write that completed its
//! response: by Content-Length (counting `sendfile` bytes too), by the
//! chunked framing followed chunk by chunk (`chunked`), or, for responses
//! delimited by the connection, at the last write before the close.
//! Responses whose framing cannot be seen (a head or a chunk-size line cut
//! off by the capture) end at their last write before the next request or
//! response begins.
//!
//! A request head longer than the capture is followed to its blank line
//! where that is captured, and otherwise given up at the next piece that
//! starts with a request line; whenever framing is lost the pairing
//! resyncs at the next request or status line, and says so
//! ([`Sink::resync`]). Every request parsed ([`Sink::request`]) ends
//! exactly once: completed, or unpaired with a reason. No state outlives
//! its connection, and the table of connections is bounded.

use std::{collections::VecDeque, sync::Arc};

use super::table::{EVICTABLE_NS, Full, LastSeen, Table};
use crate::protocols::http::{self, Method, TraceParent};

mod chunked;
mod cut_head;
mod request;
mod response;
#[cfg(test)]
mod tests;
mod upgrade;
mod vocabulary;

pub use self::{upgrade::Upgraded, vocabulary::*};

use self::{
    chunked::Chunked,
    cut_head::CutHead,
    request::on_read,
    response::{on_sendfile, on_write},
};

/// Requests that may wait for responses on one connection (pipelining).
pub const MAX_PIPELINE: usize = 64;
/// Bytes of a request line carried over to the next read when a read ends
/// inside it.
const MAX_CARRY: usize = 1024;

#[derive(Clone, Debug)]
struct Pending {
    method: Method,
    route: Arc<str>,
    start_ns: u64,
    seq: Option<SeqAt>,
    trace: Option<TraceParent>,
    /// The thread that sent its first byte.
    tid: u32,
}

#[derive(Clone, Debug)]
struct Current {
    request: Pending,
    status: u16,
    /// The thread that sent the response's first byte.
    tid: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReqPhase {
    /// The next byte starts a request.
    Start,
    /// Skipping this many request-body bytes.
    Body(u64),
    /// Following a chunked request body.
    Chunked(Chunked),
    /// The head continues beyond what was captured: skip to its blank
    /// line if it is captured (then the body by the framing its captured
    /// lines gave), or to the next piece that starts with a request line.
    HeadRest(CutHead),
    /// Lost track (unseen bytes): wait for bytes that start with a request
    /// line.
    Resync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RespPhase {
    Start,
    Body(u64),
    Chunked(Chunked),
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
    key: u64,
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
    /// Bytes that are not HTTP were counted (once per connection).
    not_http_counted: bool,
    /// Switched protocols: ignore the rest of the connection.
    ignored: bool,
    /// Switched to HTTP/2 (`Upgrade: h2c`), for `take_upgrade`.
    upgraded: Option<Box<Upgraded>>,
}

impl Conn {
    fn new(key: u64, origin: Origin, port: u16, now: u64) -> Self {
        Self {
            key,
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
            not_http_counted: false,
            ignored: false,
            upgraded: None,
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
    /// Keyed by kernel-made ids (socket cookies, tgid and fd).
    conns: Table<Conn>,
}

impl Tracker {
    pub fn new(max_conns: usize) -> Self {
        Self {
            conns: Table::new(max_conns),
        }
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Whether `conn` may be another protocol's: unknown here, or known
    /// (from its accept) but not carrying HTTP yet, and then forgotten.
    pub fn yield_fresh(&mut self, conn: u64) -> bool {
        match self.conns.peek(conn) {
            None => true,
            Some(c) if !c.saw_http && c.pending.is_empty() && c.current.is_none() => {
                self.conns.remove(conn);
                true
            }
            Some(_) => false,
        }
    }

    pub fn handle(&mut self, ev: &Event<'_>, sink: &mut impl Sink) {
        let key = ev.conn;
        match ev.kind {
            Flow::Accept => {
                // A reused descriptor whose close we did not see (dup2,
                // close_range): the old connection is over.
                if let Some(old) = self.conns.remove(key) {
                    finish(old, sink, Unpaired::Evicted);
                }
                // No room: its requests count as table_full when they come.
                let conn = Conn::new(key, ev.origin, ev.port, ev.ts_ns);
                if let Ok(Some(old)) = self.conns.insert(key, conn, ev.ts_ns, EVICTABLE_NS) {
                    finish(old, sink, Unpaired::Evicted);
                }
            }
            Flow::Close => {
                if let Some(conn) = self.conns.remove(key) {
                    finish(conn, sink, Unpaired::ClosedMidRequest);
                }
            }
            Flow::ToServer | Flow::FromServer | Flow::Sendfile => {
                if let Some(conn) = self.conns.get_mut(key) {
                    process(conn, ev, sink);
                    return;
                }
                if ev.kind != Flow::ToServer && !ev.data.starts_with(b"HTTP/1.") {
                    // The rest of a response (or another protocol's bytes)
                    // on a connection not followed: nothing to pair.
                    return;
                }
                let conn = Conn::new(key, ev.origin, ev.port, ev.ts_ns);
                match self.conns.insert(key, conn, ev.ts_ns, EVICTABLE_NS) {
                    Ok(evicted) => {
                        if let Some(old) = evicted {
                            finish(old, sink, Unpaired::Evicted);
                        }
                    }
                    Err(Full) => return Self::table_full(ev, sink),
                }
                if let Some(conn) = self.conns.get_mut(key) {
                    process(conn, ev, sink);
                }
            }
        }
    }

    /// A piece of a connection the full table has no room for: a read
    /// that starts like a request counts as a request seen and unpaired
    /// ([`Unpaired::TableFull`]). Only its first request is parsed: more
    /// pipelined in the same read go uncounted.
    fn table_full(ev: &Event<'_>, sink: &mut impl Sink) {
        if ev.kind == Flow::ToServer && http::parse_request(ev.data).is_ok() {
            sink.request(ev.origin, ev.port);
            sink.unpaired(ev.origin, ev.port, Unpaired::TableFull);
        }
    }

    /// Handles a read or write of a connection already known to carry
    /// HTTP (one lookup: the common case); false, with nothing done, for
    /// any other connection.
    pub fn handle_http(&mut self, ev: &Event<'_>, sink: &mut impl Sink) -> bool {
        match self.conns.get_mut(ev.conn) {
            Some(conn) if conn.saw_http => {
                process(conn, ev, sink);
                true
            }
            _ => false,
        }
    }

    /// Bytes of `conn` were lost before the next event: drop what waits
    /// on it (each request counted as [`Unpaired::Gap`], the gap once as a
    /// resync) and resync. Requests resume at the next piece that starts
    /// with a request line; responses at the next status line after that
    /// request.
    pub fn gap(&mut self, conn: u64, sink: &mut impl Sink) {
        let Some(c) = self.conns.peek_mut(conn) else {
            return;
        };
        sink.resync(c.origin, c.port, Unpaired::Gap);
        drop_waiting(c, sink, Unpaired::Gap);
        c.carry.clear();
        c.req = ReqPhase::Resync;
    }

    /// Drops connections idle for longer than `idle_ns`.
    pub fn sweep(&mut self, now_ns: u64, idle_ns: u64, sink: &mut impl Sink) {
        for conn in self.conns.sweep(now_ns, idle_ns) {
            finish(conn, sink, Unpaired::Evicted);
        }
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

impl LastSeen for Conn {
    fn last_seen_ns(&self) -> u64 {
        self.last_seen_ns
    }
}

/// A read, write or sendfile of `conn`.
fn process(conn: &mut Conn, ev: &Event<'_>, sink: &mut impl Sink) {
    if conn.port == 0 {
        conn.port = ev.port;
    }
    conn.last_seen_ns = ev.ts_ns;
    if conn.ignored {
        return;
    }
    match ev.kind {
        Flow::ToServer => on_read(conn, ev, sink),
        Flow::FromServer => on_write(conn, ev, sink),
        Flow::Sendfile => on_sendfile(conn, ev, sink),
        _ => {}
    }
}

/// Drops every request waiting on `c` (counted with `reason`); responses
/// resume at the next status line after a new request.
fn drop_waiting(c: &mut Conn, sink: &mut impl Sink, reason: Unpaired) {
    let dropped = c.pending.len() + usize::from(c.current.is_some());
    c.pending.clear();
    c.current = None;
    for _ in 0..dropped {
        sink.unpaired(c.origin, c.port, reason);
    }
    c.resp = RespPhase::Lost;
}

/// The connection is gone: a response that ran until close is complete;
/// anything else still waiting is unpaired.
fn finish(mut conn: Conn, sink: &mut impl Sink, pending_reason: Unpaired) {
    let origin = conn.origin;
    if let Some(cur) = conn.current.take() {
        match conn.resp {
            RespPhase::UntilClose | RespPhase::Unframed | RespPhase::Start | RespPhase::Lost => {
                complete_at(&conn, cur, conn.last_write_ns, sink)
            }
            RespPhase::Body(_) | RespPhase::Chunked(_) => {
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

fn complete_at(conn: &Conn, cur: Current, end_ns: u64, sink: &mut impl Sink) {
    sink.completed(Completed {
        origin: conn.origin,
        port: conn.port,
        method: cur.request.method,
        route: cur.request.route,
        status: cur.status,
        duration_ns: end_ns.saturating_sub(cur.request.start_ns),
        start_ns: cur.request.start_ns,
        conn: conn.key,
        seq: cur.request.seq,
        trace: cur.request.trace,
        thread: if conn.origin.is_client() {
            cur.request.tid
        } else {
            cur.tid
        },
        version: Version::Http1,
    });
}
