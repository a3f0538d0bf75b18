//! Per-connection byte streams: ring-buffer records decoded into stream
//! pieces (this file), TCP sequence numbers turned into exact offsets
//! (`reassembly`), and requests paired with responses (`pairing`).
//!
//! Both captures end here. A syscall record is already a piece of a
//! stream, in order, keyed by (tgid, fd). A packet record is keyed by its
//! socket cookie and placed by its sequence number: retransmissions are
//! dropped, gaps make the pairing resync, and a FIN sent by the server (or
//! an RST either way) closes the connection. TLS plaintext comes as
//! syscall-like records, keyed by descriptor, or by socket cookie like
//! the connection's packets: then the packets of that connection
//! (ciphertext) are ignored, and its close comes as a record, held back
//! for a moment (`closing`).
//!
//! A connection is HTTP unless its first bytes are RESP (a command array,
//! an inline Redis command, or a reply first): then `resp` pairs it; or a
//! PostgreSQL startup message: then `postgres` does. A monitored client's
//! connection is the same, its HTTP paired by a tracker of its own.

mod closing;
mod dispatch;
mod handshake;
pub mod http2;
pub mod mysql;
pub mod pairing;
pub mod postgres;
pub mod reassembly;
pub mod resp;
pub mod sql;
pub mod table;
#[cfg(test)]
mod tests;
mod untied;

use std::net::IpAddr;

use apm_common::events::{
    ConnectEvent, EventHeader, EventKind, PacketHeader, direction, ip_of, record_flags,
    record_kind, side, tcp_flags,
};

use self::{
    closing::{CLOSE_DELAY_NS, Close, Closing},
    handshake::Handshakes,
    http2::RpcSink,
    pairing::{Event, Flow, InFlight, Origin, Sink, Tracker, Unpaired},
    postgres::StatementSink,
    reassembly::{Piece, REORDER_WINDOW_NS, Reassembly, Verdict},
    resp::CommandSink,
    table::{EVICTABLE_NS, LastSeen, Table},
    untied::Untied,
};
use crate::protocols::{
    mysql as my, postgres as pg,
    resp::{starts_like_command, starts_like_reply},
};

/// A packet's connection as its server sees it ([`Streams::view`]).
struct View {
    conn: u64,
    port: u16,
    origin: Origin,
    server: Option<IpAddr>,
    dir: u8,
}

/// Every pairing's sink: HTTP requests, gRPC calls, RESP commands, SQL
/// statements.
pub trait Sinks: Sink + RpcSink + CommandSink + StatementSink {}
impl<T: Sink + RpcSink + CommandSink + StatementSink> Sinks for T {}

/// A ring-buffer record that could not be decoded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("undecodable ring-buffer record ({0} bytes)")]
pub struct DecodeError(pub usize);

pub struct Streams {
    tracker: Tracker,
    /// Monitored clients' HTTP calls.
    clients: Tracker,
    http2: http2::Tracker,
    resp: resp::Tracker,
    postgres: postgres::Tracker,
    mysql: mysql::Tracker,
    reassembly: Reassembly,
    /// Client connections from their connect records, by socket cookie.
    outbound: Table<Outbound>,
    /// Connections whose TLS plaintext is keyed by socket cookie: their
    /// packets carry ciphertext.
    tls: Table<Plaintext>,
    /// Their closes, waiting for the owner's last records.
    closing: Closing,
    /// Memory-BIO objects' records, waiting for their sockets.
    untied: Untied,
    /// The latest time of a packet or a sweep: a connect record has none.
    now_ns: u64,
    handshakes: Handshakes,
}

/// A connection whose plaintext comes from its TLS library.
struct Plaintext {
    last_seen_ns: u64,
}

impl LastSeen for Plaintext {
    fn last_seen_ns(&self) -> u64 {
        self.last_seen_ns
    }
}

/// A client connection: the connecting process and the server's address.
struct Outbound {
    tgid: u32,
    server: IpAddr,
    last_seen_ns: u64,
    /// The thread that last sent on it (0: not known).
    tid: u32,
    /// Keyed by `tgid << 32 | fd` (its syscall-kind records, TLS
    /// plaintext), not by socket cookie (its packets).
    descriptor: bool,
}

impl LastSeen for Outbound {
    fn last_seen_ns(&self) -> u64 {
        self.last_seen_ns
    }
}

impl Streams {
    pub fn new(max_connections: usize) -> Self {
        Self {
            tracker: Tracker::new(max_connections),
            clients: Tracker::new(max_connections),
            http2: http2::Tracker::new(max_connections),
            resp: resp::Tracker::new(max_connections),
            postgres: postgres::Tracker::new(max_connections),
            mysql: mysql::Tracker::new(max_connections),
            // The pairings' connections: one that a full reassembly
            // table could not place would pass retransmissions unchecked.
            reassembly: Reassembly::new(max_connections.saturating_mul(3)),
            outbound: Table::new(max_connections),
            tls: Table::new(max_connections),
            closing: Closing::new(max_connections),
            untied: Untied::default(),
            now_ns: 0,
            handshakes: Handshakes::default(),
        }
    }

    /// Connections whose requests are being paired.
    pub fn connections(&self) -> usize {
        self.tracker.connections()
            + self.clients.connections()
            + self.http2.connections()
            + self.resp.connections()
            + self.postgres.connections()
            + self.mysql.connections()
    }

    /// The latest packet's time (or sweep's): how far the records go.
    pub fn latest_ns(&self) -> u64 {
        self.now_ns
    }

    pub fn in_flight(&self) -> impl Iterator<Item = InFlight> + '_ {
        self.tracker.in_flight()
    }

    /// Decodes one record and feeds it to the pairing.
    pub fn handle_record(
        &mut self,
        record: &[u8],
        sink: &mut impl Sinks,
    ) -> Result<(), DecodeError> {
        let bad = || DecodeError(record.len());
        match record_kind(record).ok_or_else(bad)? {
            EventKind::Packet => {
                let header = PacketHeader::decode(record).ok_or_else(bad)?;
                self.handle_packet(&header, header.payload(record), sink);
            }
            EventKind::Connect => {
                let c = ConnectEvent::decode(record).ok_or_else(bad)?;
                let out = Outbound {
                    tgid: c.tgid,
                    server: ip_of(c.addr),
                    last_seen_ns: self.now_ns,
                    tid: 0,
                    descriptor: c.descriptor != 0,
                };
                // Evicted or refused for room, a connection is not timed.
                let _ = self
                    .outbound
                    .insert(c.cookie, out, self.now_ns, EVICTABLE_NS);
            }
            kind => {
                let header = EventHeader::decode(record).ok_or_else(bad)?;
                if header.flags & record_flags::OBJECT != 0 {
                    match kind {
                        EventKind::Close => self.untied.free(header.tgid, header.conn),
                        EventKind::Read | EventKind::Write => {
                            self.untied.hold(&header, header.payload(record));
                        }
                        _ => return Err(bad()),
                    }
                    return Ok(());
                }
                self.close_due(header.ts_ns, sink);
                if kind == EventKind::Tie {
                    self.tie(&header, sink);
                    return Ok(());
                }
                let flow = Flow::of_syscall(kind).ok_or_else(bad)?;
                if flow == Flow::Close && header.flags & record_flags::SOCKET != 0 {
                    self.hold_close(&header, sink);
                } else {
                    self.handle_call(&header, flow, header.payload(record), sink);
                }
            }
        }
        Ok(())
    }

    /// Object `header.ret` of process `header.tgid` was tied to socket
    /// `header.conn` as it sent: its held records are that socket's.
    fn tie(&mut self, header: &EventHeader, sink: &mut impl Sinks) {
        self.mark_plaintext(header.conn, header.ts_ns);
        for (mut held, data) in self.untied.tie(header.tgid, header.ret as u64) {
            let Some(flow) = EventKind::from_u32(held.kind).and_then(Flow::of_syscall) else {
                continue;
            };
            held.flags = record_flags::SOCKET;
            held.conn = header.conn;
            held.port = header.port;
            self.handle_call(&held, flow, &data, sink);
        }
    }

    /// TLS calls dropped since the last call because their object was
    /// never tied to its socket ([`untied`]).
    pub fn take_untied_lost(&mut self) -> u64 {
        self.untied.take_lost()
    }

    /// Holds a socket-keyed close ([`closing`]); a full queue hands on its
    /// oldest one now.
    fn hold_close(&mut self, header: &EventHeader, sink: &mut impl Sinks) {
        let close = Close {
            due_ns: header.ts_ns.saturating_add(CLOSE_DELAY_NS),
            ts_ns: header.ts_ns,
            conn: header.conn,
            tgid: header.tgid,
            port: header.port,
        };
        if let Some(early) = self.closing.hold(close) {
            self.close_socket(early, sink);
        }
    }

    /// Hands on the held closes due at `now_ns`.
    fn close_due(&mut self, now_ns: u64, sink: &mut impl Sinks) {
        while let Some(close) = self.closing.due(now_ns) {
            self.close_socket(close, sink);
        }
    }

    /// The end of a connection whose plaintext is keyed by socket.
    fn close_socket(&mut self, close: Close, sink: &mut impl Sinks) {
        let header = EventHeader {
            ts_ns: close.ts_ns,
            tgid: close.tgid,
            port: close.port,
            flags: record_flags::SOCKET,
            conn: close.conn,
            ..EventHeader::default()
        };
        self.handle_call(&header, Flow::Close, &[], sink);
    }

    /// A syscall's record, or a TLS library call's.
    fn handle_call(
        &mut self,
        header: &EventHeader,
        mut flow: Flow,
        data: &[u8],
        sink: &mut impl Sinks,
    ) {
        let socket = header.flags & record_flags::SOCKET != 0;
        let conn = if socket {
            self.mark_plaintext(header.conn, header.ts_ns);
            header.conn
        } else {
            (u64::from(header.tgid) << 32) | (header.conn & u64::from(u32::MAX))
        };
        // A client's connection: its port is the server's.
        let server = match self.outbound.get_mut(conn) {
            Some(out) if out.descriptor || socket => {
                out.last_seen_ns = header.ts_ns;
                flow = flow.of_client();
                Some(out.server)
            }
            _ => None,
        };
        let event = Event {
            kind: flow,
            ts_ns: header.ts_ns,
            conn,
            origin: Origin::Process(header.tgid),
            port: header.port,
            ret: header.ret,
            data,
            tail: header.tail(),
            seq: None,
            tid: 0,
        };
        self.dispatch(&event, server, sink);
        if flow == Flow::Close {
            if server.is_some() {
                self.outbound.remove(conn);
            }
            if socket {
                self.tls.remove(conn);
                self.reassembly.close(conn);
            }
        }
    }

    /// Connection `cookie`'s plaintext comes from its TLS library.
    fn mark_plaintext(&mut self, cookie: u64, ts_ns: u64) {
        match self.tls.get_mut(cookie) {
            Some(p) => p.last_seen_ns = ts_ns,
            // No room: its ciphertext, if captured, would only resync.
            None => {
                let _ = self.tls.insert(
                    cookie,
                    Plaintext {
                        last_seen_ns: ts_ns,
                    },
                    self.now_ns,
                    EVICTABLE_NS,
                );
            }
        }
    }

    fn handle_packet(&mut self, h: &PacketHeader, data: &[u8], sink: &mut impl Sinks) {
        self.now_ns = self.now_ns.max(h.ts_ns);
        if !self.closing.is_empty() {
            self.close_due(h.ts_ns, sink);
        }
        if !self.tls.is_empty() && self.tls.contains(h.cookie) {
            return;
        }
        if h.side == side::CLIENT
            && let Some(out) = self.outbound.get_mut(h.cookie)
            && !out.descriptor
        {
            out.last_seen_ns = h.ts_ns;
        }
        if h.side == side::LISTENER {
            if h.len > 0 && !self.handshakes.keep(h, data) {
                sink.resync(listener_origin(h.netns, h.port), h.port, Unpaired::Gap);
            }
            return;
        }
        if h.side == side::SERVER && !self.handshakes.is_empty() && !self.reassembly.knows(h.cookie)
        {
            // A new connection: its first data may have come through its
            // listener.
            for (first, bytes) in self.handshakes.take(h) {
                self.place(&first, &bytes, sink);
            }
        }
        self.place(h, data, sink);
        // Holes open for too long are gaps: what waits behind them goes on.
        if self.reassembly.has_expired(h.ts_ns, REORDER_WINDOW_NS) {
            self.expire_holes(h.ts_ns, sink);
        }
    }

    /// Hands on what waits behind holes opened before `now_ns` minus the
    /// reordering window.
    fn expire_holes(&mut self, now_ns: u64, sink: &mut impl Sinks) {
        for (conn, dir) in self.reassembly.expire(now_ns, REORDER_WINDOW_NS) {
            self.drain_held(conn, dir, sink);
        }
    }

    /// How the server sees a segment: its connection, whose it is, the
    /// server's address for a client's connection, and the direction (a
    /// client's segment is seen as its server would see it: what the
    /// client sends is the request direction). `None` for a client's
    /// connection nobody said whose it is (opened before the agent).
    fn view(&self, h: &PacketHeader) -> Option<View> {
        let conn = h.cookie;
        if h.side != side::CLIENT {
            return Some(View {
                conn,
                port: h.port,
                origin: Origin::Socket {
                    netns: h.netns,
                    port: h.port,
                },
                server: None,
                dir: h.direction,
            });
        }
        let out = self.outbound.peek(conn).filter(|o| !o.descriptor)?;
        Some(View {
            conn,
            port: h.port,
            origin: Origin::Process(out.tgid),
            server: Some(out.server),
            dir: if h.direction == direction::INGRESS {
                direction::EGRESS
            } else {
                direction::INGRESS
            },
        })
    }

    /// Places a segment by its sequence number and hands on what is in
    /// order. A reset ends the connection at once, whatever is held.
    fn place(&mut self, h: &PacketHeader, data: &[u8], sink: &mut impl Sinks) {
        let Some(view) = self.view(h) else {
            return;
        };
        if h.len > 0 || h.flags & tcp_flags::FIN != 0 {
            let piece = Piece { header: h, data };
            let dir = view.dir;
            let verdict = self
                .reassembly
                .accept(view.conn, dir, &piece, |d| starts_message(dir, d));
            // A stream evicted for room: where its connection was is lost.
            while let Some(conn) = self.reassembly.take_evicted() {
                self.gap(conn, sink);
            }
            // Its acknowledgment may have settled a hole the other way:
            // what the other side received came before this segment.
            if self.reassembly.holds_any() {
                self.drain_held(view.conn, dir ^ 1, sink);
            }
            if let Verdict::New { skip, gap } = verdict
                && !self.reassembly.is_closed(view.conn)
            {
                self.deliver(&view, h, data, skip, gap, sink);
            }
            if self.reassembly.holds_any() {
                self.drain_held(view.conn, dir, sink);
            }
        }
        if h.flags & tcp_flags::RST != 0 {
            self.close(&view, h.ts_ns, sink);
        }
    }

    /// Hands on the held segments of `conn`'s direction `dir` that are now
    /// in order (or behind a hole declared a gap).
    fn drain_held(&mut self, conn: u64, dir: u8, sink: &mut impl Sinks) {
        while let Some((held, skip, gap)) = self.reassembly.ready(conn, dir) {
            if let Some(view) = self.view(&held.header) {
                self.deliver(&view, &held.header, &held.data, skip, gap, sink);
            }
        }
    }

    /// One in-order segment: its new bytes to the pairing, then the close
    /// when the server sent a FIN.
    fn deliver(
        &mut self,
        view: &View,
        h: &PacketHeader,
        data: &[u8],
        skip: u32,
        gap: bool,
        sink: &mut impl Sinks,
    ) {
        if gap {
            self.gap(view.conn, sink);
        }
        if h.len > skip {
            let event = Event {
                kind: if view.dir == direction::INGRESS {
                    Flow::ToServer
                } else {
                    Flow::FromServer
                },
                ts_ns: h.ts_ns,
                conn: view.conn,
                origin: view.origin,
                port: view.port,
                ret: i64::from(h.len - skip),
                data: data.get(skip as usize..).unwrap_or(&[]),
                tail: h.tail(),
                seq: Some((h.remote_port, h.seq.wrapping_add(skip))),
                tid: h.tid,
            };
            self.dispatch(&event, view.server, sink);
        }
        // The server closing (FIN out) ends the connection; a client's FIN
        // only half-closes it.
        if view.dir == direction::EGRESS && h.flags & tcp_flags::FIN != 0 {
            self.close(view, h.ts_ns, sink);
        }
    }

    /// Bytes of `conn` were lost: whichever pairing follows it resyncs.
    fn gap(&mut self, conn: u64, sink: &mut impl Sinks) {
        self.tracker.gap(conn, sink);
        self.clients.gap(conn, sink);
        self.http2.gap(conn, sink);
        self.resp.gap(conn, sink);
        self.postgres.gap(conn, sink);
        self.mysql.gap(conn, sink);
    }

    fn close(&mut self, view: &View, ts_ns: u64, sink: &mut impl Sinks) {
        let event = Event {
            kind: Flow::Close,
            ts_ns,
            conn: view.conn,
            origin: view.origin,
            port: view.port,
            ret: 0,
            data: &[],
            tail: &[],
            seq: None,
            tid: 0,
        };
        self.dispatch(&event, view.server, sink);
        self.reassembly.close(view.conn);
        self.outbound.remove(view.conn);
    }

    /// Forgets connections idle for longer than `idle_ns`.
    pub fn sweep(&mut self, now_ns: u64, idle_ns: u64, sink: &mut impl Sinks) {
        self.close_due(now_ns, sink);
        if !self.untied.is_empty() {
            self.untied.expire(now_ns);
        }
        self.expire_holes(now_ns, sink);
        for (netns, port) in self.handshakes.expire(now_ns) {
            sink.resync(listener_origin(netns, port), port, Unpaired::Gap);
        }
        // HTTP/2 connections and monitored clients' connections keep
        // what cannot be learnt again (HPACK tables; whose call it is)
        // through longer silences: gRPC channels idle between bursts.
        let long_ns = idle_ns.saturating_mul(LONG_IDLE);
        self.tracker.sweep(now_ns, idle_ns, sink);
        self.clients.sweep(now_ns, idle_ns, sink);
        self.http2.sweep(now_ns, long_ns, sink);
        self.resp.sweep(now_ns, idle_ns, sink);
        self.postgres.sweep(now_ns, idle_ns, sink);
        self.mysql.sweep(now_ns, idle_ns, sink);
        // Connect records of connections that were never captured or
        // never closed.
        self.now_ns = self.now_ns.max(now_ns);
        self.outbound.sweep(now_ns, long_ns).for_each(drop);
        self.tls.sweep(now_ns, idle_ns).for_each(drop);
        self.reassembly.sweep(now_ns, idle_ns);
    }
}

/// How many idle periods an HTTP/2 connection or a client's connection
/// outlasts (an hour for the agent's 5 minutes); a full table still
/// evicts the least recently seen of them.
const LONG_IDLE: u64 = 12;

/// The service of a listener's records.
fn listener_origin(netns: u64, port: u16) -> Origin {
    Origin::Socket { netns, port }
}

/// Whether captured bytes of direction `dir` (as the server sees it) start
/// a message of a protocol followed here.
fn starts_message(dir: u8, data: &[u8]) -> bool {
    if dir == direction::INGRESS {
        crate::protocols::http::starts_like_request(data)
            || starts_like_command(data)
            || pg::starts_like_message(pg::Side::Front, data)
            || my::starts_like_command(data, data.len())
    } else {
        data.starts_with(b"HTTP/1.")
            || starts_like_reply(data)
            || pg::starts_like_message(pg::Side::Back, data)
            || my::starts_like_answer(data, data.len())
    }
}
