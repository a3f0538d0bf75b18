//! HTTP/2 pairing per connection: frames per direction, header blocks
//! through each direction's HPACK table, and every stream timed from its
//! request's HEADERS to the END_STREAM of its response (trailers
//! included). A gRPC stream (`content-type: application/grpc`) is a call
//! with the status its trailers give; any other is an HTTP request.
//!
//! A stream reset (RST_STREAM) or refused by a GOAWAY is counted as that
//! outcome; a gRPC one reset after its `grpc-timeout` is the
//! DEADLINE_EXCEEDED its client saw, before it CANCELLED. A request whose
//! method or path sits in a table entry apm never saw (a connection older
//! than the agent) is counted as `hpack_unknown`, never named. Lost
//! framing (bytes never seen) ends the connection's pairing: there is no
//! marker to find the next frame by.

use std::sync::Arc;

use rustc_hash::FxHashMap;

mod ends;

use self::ends::{complete, finish, reset, resolve, unpaired};
use super::{
    pairing::{Event, Flow, Origin, SeqAt, Sink, Unpaired, Upgraded},
    table::{EVICTABLE_NS, Full, LastSeen, Table},
};
use crate::protocols::{
    http::{Method, TraceParent},
    http2::{
        Headers,
        frames::{Frame, Framer, PREFACE, error_code, flags, fragment, kind, starts_frames},
        hpack::Decoder,
        read_block,
    },
};

/// Streams open at once on one connection (servers allow about 100).
const MAX_STREAMS: usize = 1024;
/// The route of a path longer than apm keeps.
const TRUNCATED: &str = "{truncated}";
/// A header block (HEADERS and its CONTINUATIONs) is read up to this.
const BLOCK_MAX: usize = 64 << 10;

/// A gRPC call answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcCall {
    pub origin: Origin,
    pub port: u16,
    /// `/package.Service/Method`, through the route templater.
    pub method: Arc<str>,
    /// The gRPC status code.
    pub code: u16,
    pub duration_ns: u64,
    pub start_ns: u64,
    pub conn: u64,
    pub seq: Option<SeqAt>,
    pub trace: Option<TraceParent>,
}

/// Where gRPC calls go (HTTP/2 requests go to [`Sink`]).
pub trait RpcSink {
    /// The label of gRPC method `path` (`/package.Service/Method`): the
    /// path itself while the service has few, else a placeholder.
    fn rpc_method(&mut self, origin: Origin, path: &str) -> Arc<str>;
    fn rpc_completed(&mut self, call: RpcCall);
    /// A call that will not be paired.
    fn rpc_unpaired(&mut self, origin: Origin, port: u16, reason: Unpaired);
}

/// One direction's state.
struct Side {
    framer: Framer,
    hpack: Decoder,
    /// A header block being gathered: its stream, first frame, bytes.
    block: Option<(Frame, Vec<u8>)>,
    /// The table is out of step (a block cut or undecodable): every
    /// later block is unknown.
    broken: bool,
}

impl Side {
    fn new(start: bool, preface: bool) -> Self {
        Self {
            framer: Framer::new(start && preface),
            hpack: Decoder::new(!start),
            block: None,
            broken: false,
        }
    }
}

/// A request waiting for its response's end.
struct Stream {
    start_ns: u64,
    seq: Option<SeqAt>,
    method: Method,
    route: Arc<str>,
    grpc: bool,
    timeout_ns: Option<u64>,
    trace: Option<TraceParent>,
    status: Option<u16>,
    grpc_status: Option<u16>,
    /// The path of a request that may be a gRPC call or not: a field of
    /// its header block was an entry apm never saw (joined mid-way), its
    /// content-type maybe. The response says which.
    unsure: Option<Box<str>>,
}

struct Conn {
    origin: Origin,
    port: u16,
    to_server: Side,
    from_server: Side,
    streams: FxHashMap<u32, Stream>,
    last_seen_ns: u64,
}

impl Conn {
    /// `ev`'s connection, followed from its start (`start`) or joined.
    fn new(ev: &Event<'_>, start: bool) -> Self {
        Self {
            origin: ev.origin,
            port: ev.port,
            to_server: Side::new(start, true),
            from_server: Side::new(start, false),
            streams: FxHashMap::default(),
            last_seen_ns: ev.ts_ns,
        }
    }

    /// The requests' direction (`to_server`) or the responses'.
    fn side(&mut self, to_server: bool) -> &mut Side {
        if to_server {
            &mut self.to_server
        } else {
            &mut self.from_server
        }
    }
}

impl LastSeen for Conn {
    fn last_seen_ns(&self) -> u64 {
        self.last_seen_ns
    }
}

pub struct Tracker {
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

    pub fn has(&self, conn: u64) -> bool {
        self.conns.contains(conn)
    }

    /// Starts following `ev.conn` as HTTP/2: `start` when `ev` is its
    /// client's first bytes (the preface), else joined mid-way (its
    /// tables partly unknown). False when the table has no room.
    pub fn open(&mut self, ev: &Event<'_>, start: bool, sink: &mut (impl Sink + RpcSink)) -> bool {
        let mut conn = Conn::new(ev, start);
        if !start {
            // Joined at `ev`, which starts with a frame: the other
            // direction resumes at its first piece that starts with one.
            conn.side(ev.kind != Flow::ToServer).framer.lose();
        }
        if self.insert(ev, conn, sink) {
            return true;
        }
        // Counted once, as the HTTP/1 tracker counts a full table's first
        // request.
        sink.request(ev.origin, ev.port);
        sink.unpaired(ev.origin, ev.port, Unpaired::TableFull);
        false
    }

    /// Follows `conn` as `ev`'s connection (an idle one evicted for room,
    /// its streams counted); false when the table is full.
    fn insert(&mut self, ev: &Event<'_>, conn: Conn, sink: &mut (impl Sink + RpcSink)) -> bool {
        match self.conns.insert(ev.conn, conn, ev.ts_ns, EVICTABLE_NS) {
            Ok(evicted) => {
                if let Some(mut old) = evicted {
                    finish(&mut old, Unpaired::Evicted, sink);
                }
                true
            }
            Err(Full) => false,
        }
    }

    /// Starts following `ev.conn` as HTTP/2 after a `101 Switching
    /// Protocols` to `Upgrade: h2c` in `ev`: the upgraded request is
    /// stream 1, the client's preface comes next. False when the table
    /// has no room (the request counted unpaired).
    pub fn open_upgraded(
        &mut self,
        ev: &Event<'_>,
        up: &Upgraded,
        sink: &mut (impl Sink + RpcSink),
    ) -> bool {
        // Its client's preface comes next, its server's frames at once.
        let mut conn = Conn::new(ev, true);
        conn.streams.insert(
            1,
            Stream {
                start_ns: up.start_ns,
                seq: up.seq,
                method: up.method,
                route: up.route.clone(),
                grpc: false,
                timeout_ns: None,
                trace: up.trace,
                status: None,
                grpc_status: None,
                unsure: None,
            },
        );
        let inserted = self.insert(ev, conn, sink);
        if !inserted {
            sink.unpaired(ev.origin, ev.port, Unpaired::TableFull);
        }
        inserted
    }

    pub fn handle(&mut self, ev: &Event<'_>, sink: &mut (impl Sink + RpcSink)) {
        let Some(conn) = self.conns.get_mut(ev.conn) else {
            return;
        };
        conn.last_seen_ns = ev.ts_ns;
        let to_server = match ev.kind {
            Flow::ToServer => true,
            Flow::FromServer | Flow::Sendfile => false,
            _ => return,
        };
        let len = usize::try_from(ev.ret.max(0)).unwrap_or(usize::MAX);
        let mut frames = Vec::new();
        let side = conn.side(to_server);
        if side.framer.lost().is_some() {
            // Framing resumes at a piece that starts with frames; the
            // table may have missed insertions in what was lost, so it
            // starts afresh, its older entries unknown. The client's
            // preface is the connection's start (its server spoke first,
            // and was taken for a connection joined mid-way).
            if to_server && ev.data.starts_with(PREFACE) {
                *side = Side::new(true, true);
            } else if starts_frames(ev.data, len) {
                *side = Side::new(false, false);
            } else {
                return;
            }
        }
        side.framer
            .feed(ev.ts_ns, ev.seq.map(|(_, s)| s), ev.data, len, |f| {
                frames.push(f)
            });
        let lost = side.framer.lost().is_some();
        let client_port = ev.seq.map(|(p, _)| p);
        for f in frames {
            on_frame(conn, ev.conn, to_server, f, client_port, sink);
            if !lost && conn.side(to_server).framer.lost().is_some() {
                // A malformed frame: the rest waits for a resumption.
                return;
            }
        }
        if lost {
            lose(conn, to_server, Unpaired::Gap, sink);
        }
    }

    pub fn close(&mut self, conn: u64, sink: &mut (impl Sink + RpcSink)) {
        if let Some(mut c) = self.conns.remove(conn) {
            finish(&mut c, Unpaired::ClosedMidResponse, sink);
        }
    }

    /// Bytes of `conn` were never seen: its framing is lost both ways
    /// until each resumes.
    pub fn gap(&mut self, conn: u64, sink: &mut (impl Sink + RpcSink)) {
        if let Some(c) = self.conns.peek_mut(conn) {
            lose(c, true, Unpaired::Gap, sink);
            lose(c, false, Unpaired::Gap, sink);
        }
    }

    pub fn sweep(&mut self, now_ns: u64, idle_ns: u64, sink: &mut (impl Sink + RpcSink)) {
        for mut c in self.conns.sweep(now_ns, idle_ns) {
            finish(&mut c, Unpaired::Evicted, sink);
        }
    }
}

/// One direction's framing is lost (counted once): the requests', so no
/// new stream is seen until it resumes; or the responses', so every open
/// stream is counted unpaired now. Streams opened while the responses'
/// framing is lost are followed: an end lost with it leaves its stream
/// open until the connection ends (then counted), within the bound.
fn lose(conn: &mut Conn, to_server: bool, reason: Unpaired, sink: &mut (impl Sink + RpcSink)) {
    let side = conn.side(to_server);
    side.framer.lose();
    side.block = None;
    sink.resync(conn.origin, conn.port, reason);
    if !to_server {
        finish(conn, reason, sink);
    }
}

fn on_frame(
    conn: &mut Conn,
    key: u64,
    to_server: bool,
    f: Frame,
    client_port: Option<u16>,
    sink: &mut (impl Sink + RpcSink),
) {
    let side = conn.side(to_server);
    match f.kind {
        kind::HEADERS | kind::PUSH_PROMISE => {
            if side.block.is_some() {
                // Only CONTINUATION may follow an unfinished block.
                return lose(conn, to_server, Unpaired::Malformed, sink);
            }
            let Some(part) = fragment(&f).map(<[u8]>::to_vec) else {
                return lose(conn, to_server, Unpaired::Malformed, sink);
            };
            let cut = f.cut;
            let end = f.flags & flags::END_HEADERS != 0;
            side.block = Some((f, part));
            if cut {
                side.broken = true;
            }
            if end {
                block_done(conn, key, to_server, client_port, sink);
            }
        }
        kind::CONTINUATION => {
            let Some((first, bytes)) = &mut side.block else {
                return lose(conn, to_server, Unpaired::Malformed, sink);
            };
            if first.stream != f.stream {
                return lose(conn, to_server, Unpaired::Malformed, sink);
            }
            if f.cut || bytes.len() + f.payload.len() > BLOCK_MAX {
                side.broken = true;
            } else {
                bytes.extend_from_slice(&f.payload);
            }
            first.end_ns = f.end_ns;
            if f.flags & flags::END_HEADERS != 0 {
                block_done(conn, key, to_server, client_port, sink);
            }
        }
        kind::DATA if !to_server && f.flags & flags::END_STREAM != 0 => {
            if let Some(s) = conn.streams.remove(&f.stream) {
                complete(conn, key, s, f.end_ns, sink);
            }
        }
        kind::RST_STREAM => {
            if let Some(s) = conn.streams.remove(&f.stream) {
                reset(conn, key, s, f.end_ns, sink);
            }
        }
        kind::GOAWAY if !to_server => {
            // Streams past the last one the server processed were
            // refused: their clients retry them elsewhere.
            if let Some((last, _)) = error_code(&f) {
                let refused: Vec<u32> = conn
                    .streams
                    .keys()
                    .copied()
                    .filter(|&id| id > last)
                    .collect();
                for id in refused {
                    if let Some(s) = conn.streams.remove(&id) {
                        unpaired(conn.origin, conn.port, &s, Unpaired::Refused, sink);
                    }
                }
            }
        }
        _ => {}
    }
}

/// A whole header block of `to_server`'s direction.
fn block_done(
    conn: &mut Conn,
    key: u64,
    to_server: bool,
    client_port: Option<u16>,
    sink: &mut (impl Sink + RpcSink),
) {
    let side = conn.side(to_server);
    let Some((first, bytes)) = side.block.take() else {
        return;
    };
    let headers = if side.broken {
        None
    } else {
        match read_block(&mut side.hpack, &bytes) {
            Ok(h) => Some(h),
            Err(_) => {
                side.broken = true;
                None
            }
        }
    };
    if first.kind == kind::PUSH_PROMISE {
        return;
    }
    let end_stream = first.flags & flags::END_STREAM != 0;
    if to_server {
        if conn.streams.contains_key(&first.stream) {
            // The request's trailers.
            return;
        }
        request(conn, &first, headers, client_port, sink);
        return;
    }
    let Some(mut stream) = conn.streams.remove(&first.stream) else {
        return;
    };
    match &headers {
        Some(h) if stream.status.is_none() => match h.status {
            // Informational: the final status is still to come.
            Some(100..=199) => {
                conn.streams.insert(first.stream, stream);
                return;
            }
            status => {
                stream.status = status;
                stream.grpc_status = h.grpc_status;
            }
        },
        Some(h) => stream.grpc_status = h.grpc_status.or(stream.grpc_status),
        None => {}
    }
    if let Some(h) = &headers {
        // A gRPC call is a POST answered 200 with a gRPC content-type or
        // a grpc-status (a gRPC server rejects anything else with another
        // status and the same fields: an HTTP request, its path never a
        // method label); a response whose every field apm knows and that
        // is not one is HTTP.
        let call = (h.grpc || h.grpc_status.is_some())
            && stream.method == Method::Post
            && stream.status == Some(200);
        if call {
            resolve(conn, &mut stream, true, sink);
        } else if stream.status.is_some_and(|s| s != 200) || (!h.unknown && stream.status.is_some())
        {
            resolve(conn, &mut stream, false, sink);
        }
    }
    if !end_stream {
        conn.streams.insert(first.stream, stream);
        return;
    }
    if headers.is_none() || stream.status.is_none() {
        // Its status sat in a table apm lost.
        return unpaired(
            conn.origin,
            conn.port,
            &stream,
            Unpaired::HpackUnknown,
            sink,
        );
    }
    complete(conn, key, stream, first.end_ns, sink);
}

/// A request's header block: a stream to time, or one counted as
/// unknown.
fn request(
    conn: &mut Conn,
    first: &Frame,
    headers: Option<Headers>,
    client_port: Option<u16>,
    sink: &mut (impl Sink + RpcSink),
) {
    let known = headers.filter(|h| h.method.is_some() && h.path.is_some());
    let Some(h) = known else {
        // Not even whether it is a gRPC call is known: an HTTP request.
        sink.request(conn.origin, conn.port);
        return sink.unpaired(conn.origin, conn.port, Unpaired::HpackUnknown);
    };
    // An unknown field may have been a gRPC content-type.
    let unsure = !h.grpc && h.unknown;
    if !h.grpc && !unsure {
        sink.request(conn.origin, conn.port);
    }
    if conn.streams.len() >= MAX_STREAMS {
        if unsure {
            sink.request(conn.origin, conn.port);
        }
        if h.grpc {
            return sink.rpc_unpaired(conn.origin, conn.port, Unpaired::QueueFull);
        }
        return sink.unpaired(conn.origin, conn.port, Unpaired::QueueFull);
    }
    let path = h.path.as_deref().unwrap_or("/");
    let route = if h.path_cut {
        Arc::from(TRUNCATED)
    } else if h.grpc {
        sink.rpc_method(conn.origin, path)
    } else if unsure {
        Arc::from("")
    } else {
        sink.route(conn.origin, path).template
    };
    conn.streams.insert(
        first.stream,
        Stream {
            start_ns: first.start_ns,
            seq: client_port.zip(first.seq),
            method: h.method.unwrap_or(Method::Other),
            route,
            grpc: h.grpc,
            timeout_ns: h.grpc_timeout_ns,
            trace: h.trace,
            status: None,
            grpc_status: None,
            unsure: unsure.then(|| Box::from(path)),
        },
    );
}
