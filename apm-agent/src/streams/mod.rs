//! Per-connection byte streams: ring-buffer records decoded into stream
//! pieces (this file), TCP sequence numbers turned into exact offsets
//! (`reassembly`), and requests paired with responses (`pairing`).
//!
//! Both captures end here. A syscall record is already a piece of a
//! stream, in order, keyed by (tgid, fd). A packet record is keyed by its
//! socket cookie and placed by its sequence number: retransmissions are
//! dropped, gaps make the pairing resync, and a FIN sent by the server (or
//! an RST either way) closes the connection.
//!
//! A connection is HTTP unless its first bytes are RESP (a command array,
//! an inline Redis command, or a reply first): then `resp` pairs it.

pub mod pairing;
pub mod reassembly;
pub mod resp;
pub mod table;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use apm_common::events::{
    ConnectEvent, EventHeader, EventKind, PacketHeader, direction, ip_of, record_kind, side,
    tcp_flags,
};

use self::{
    pairing::{Event, InFlight, Origin, Sink, Tracker},
    reassembly::{Reassembly, Verdict},
    resp::{CommandSink, Peer},
    table::{EVICTABLE_NS, LastSeen, Table},
};
use crate::protocols::resp::{starts_like_command, starts_like_reply};

/// Both sinks: HTTP requests and RESP commands.
pub trait Sinks: Sink + CommandSink {}
impl<T: Sink + CommandSink> Sinks for T {}

/// A ring-buffer record that could not be decoded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("undecodable ring-buffer record ({0} bytes)")]
pub struct DecodeError(pub usize);

pub struct Streams {
    tracker: Tracker,
    resp: resp::Tracker,
    reassembly: Reassembly,
    /// Client connections from their connect records, by socket cookie.
    outbound: Table<Outbound>,
    /// The latest time of a packet or a sweep: a connect record has none.
    now_ns: u64,
}

/// A client connection: the connecting process and the server's address.
struct Outbound {
    tgid: u32,
    server: IpAddr,
    last_seen_ns: u64,
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
            resp: resp::Tracker::new(max_connections),
            reassembly: Reassembly::new(max_connections),
            outbound: Table::new(max_connections),
            now_ns: 0,
        }
    }

    /// Connections whose requests are being paired.
    pub fn connections(&self) -> usize {
        self.tracker.connections() + self.resp.connections()
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
                };
                // Evicted or refused for room, a connection is not timed.
                let _ = self
                    .outbound
                    .insert(c.cookie, out, self.now_ns, EVICTABLE_NS);
            }
            kind => {
                let header = EventHeader::decode(record).ok_or_else(bad)?;
                let event = Event {
                    kind,
                    ts_ns: header.ts_ns,
                    conn: (u64::from(header.tgid) << 32) | u64::from(header.fd),
                    origin: Origin::Process(header.tgid),
                    port: header.port,
                    ret: header.ret,
                    data: header.payload(record),
                    tail: header.tail(),
                };
                self.dispatch(&event, None, sink);
            }
        }
        Ok(())
    }

    fn handle_packet(&mut self, h: &PacketHeader, data: &[u8], sink: &mut impl Sinks) {
        let conn = h.cookie;
        self.now_ns = self.now_ns.max(h.ts_ns);
        let mut origin = Origin::Socket {
            netns: h.netns,
            port: h.port,
        };
        // A client's segment is seen as its server would see it: what the
        // client sends is the request direction.
        let mut server = None;
        let mut dir = h.direction;
        if h.side == side::CLIENT {
            let Some(out) = self.outbound.get_mut(conn) else {
                // Opened before the agent, or never told whose: not timed.
                return;
            };
            out.last_seen_ns = h.ts_ns;
            origin = Origin::Process(out.tgid);
            server = Some(out.server);
            dir = if h.direction == direction::INGRESS {
                direction::EGRESS
            } else {
                direction::INGRESS
            };
        }
        if h.len > 0 {
            match self.reassembly.accept(conn, dir, h.seq, h.len, h.ts_ns) {
                Verdict::Duplicate => {}
                Verdict::New { skip, gap } => {
                    if gap {
                        self.tracker.gap(conn, sink);
                        self.resp.gap(conn, sink);
                    }
                    let kind = if dir == direction::INGRESS {
                        EventKind::Read
                    } else {
                        EventKind::Write
                    };
                    let event = Event {
                        kind,
                        ts_ns: h.ts_ns,
                        conn,
                        origin,
                        port: h.port,
                        ret: i64::from(h.len - skip),
                        data: data.get(skip as usize..).unwrap_or(&[]),
                        tail: h.tail(),
                    };
                    self.dispatch(&event, server, sink);
                }
            }
        }
        // The server closing (FIN out) or either side resetting ends the
        // connection; a client's FIN only half-closes it.
        let closes = h.flags & tcp_flags::RST != 0
            || (dir == direction::EGRESS && h.flags & tcp_flags::FIN != 0);
        if closes {
            let event = Event {
                kind: EventKind::Close,
                ts_ns: h.ts_ns,
                conn,
                origin,
                port: h.port,
                ret: 0,
                data: &[],
                tail: &[],
            };
            self.dispatch(&event, server, sink);
            self.reassembly.forget(conn);
            self.outbound.remove(conn);
        }
    }

    /// Sends an event to its connection's protocol, recognising the
    /// protocol of a new connection from its first bytes. A client's
    /// connection (to `server`) is RESP or nothing.
    fn dispatch(&mut self, ev: &Event<'_>, server: Option<IpAddr>, sink: &mut impl Sinks) {
        match ev.kind {
            EventKind::Close => {
                self.resp.close(ev.conn, sink);
                self.tracker.handle(ev, sink);
            }
            EventKind::Read | EventKind::Write | EventKind::Sendfile => {
                // Most events are of connections already known as HTTP.
                if server.is_none() && self.tracker.handle_http(ev, sink) {
                    return;
                }
                if self.resp.has(ev.conn) {
                    self.resp.handle(ev, sink);
                    return;
                }
                let resp = match ev.kind {
                    EventKind::Read => starts_like_command(ev.data),
                    _ => starts_like_reply(ev.data),
                };
                if resp && self.tracker.yield_fresh(ev.conn) {
                    // Not handed to HTTP when the RESP table is full: it
                    // counted the piece (table_full), and HTTP would only
                    // find it is not HTTP.
                    if self.resp.open(ev, peer(ev, server), sink) {
                        self.resp.handle(ev, sink);
                    }
                    return;
                }
                if server.is_none() {
                    self.tracker.handle(ev, sink);
                }
            }
            EventKind::Accept | EventKind::Packet | EventKind::Connect => {
                self.tracker.handle(ev, sink)
            }
        }
    }

    /// Forgets connections idle for longer than `idle_ns`.
    pub fn sweep(&mut self, now_ns: u64, idle_ns: u64, sink: &mut impl Sinks) {
        self.tracker.sweep(now_ns, idle_ns, sink);
        self.resp.sweep(now_ns, idle_ns, sink);
        // Connect records of connections that were never captured or
        // never closed.
        self.now_ns = self.now_ns.max(now_ns);
        self.outbound.sweep(now_ns, idle_ns).for_each(drop);
        self.reassembly.sweep(now_ns, idle_ns);
    }
}

/// Who a RESP connection belongs to: the server socket's service, or the
/// client process connected to `server`.
fn peer(ev: &Event<'_>, server: Option<IpAddr>) -> Peer {
    Peer {
        origin: ev.origin,
        port: ev.port,
        server,
    }
}
