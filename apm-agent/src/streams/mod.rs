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

use apm_common::events::{EventHeader, EventKind, PacketHeader, direction, record_kind, tcp_flags};

use self::{
    pairing::{Event, InFlight, Origin, Sink, Tracker},
    reassembly::{Reassembly, Verdict},
    resp::{CommandSink, Peer},
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
}

impl Streams {
    pub fn new(max_connections: usize) -> Self {
        Self {
            tracker: Tracker::new(max_connections),
            resp: resp::Tracker::new(max_connections),
            reassembly: Reassembly::new(max_connections),
        }
    }

    /// Connections whose requests are being paired.
    pub fn connections(&self) -> usize {
        self.tracker.connections() + self.resp.connections()
    }

    /// RESP commands waiting for their replies.
    pub fn commands_in_flight(&self) -> impl Iterator<Item = (Peer, &'static str, u64)> + '_ {
        self.resp.in_flight()
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
                self.dispatch(&event, sink);
            }
        }
        Ok(())
    }

    fn handle_packet(&mut self, h: &PacketHeader, data: &[u8], sink: &mut impl Sinks) {
        let conn = h.cookie;
        let origin = Origin::Socket {
            netns: h.netns,
            port: h.port,
        };
        if h.len > 0 {
            match self
                .reassembly
                .accept(conn, h.direction, h.seq, h.len, h.ts_ns)
            {
                Verdict::Duplicate => {}
                Verdict::New { skip, gap } => {
                    if gap {
                        self.tracker.gap(conn, sink);
                        self.resp.gap(conn, sink);
                    }
                    let kind = if h.direction == direction::INGRESS {
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
                    self.dispatch(&event, sink);
                }
            }
        }
        // The server closing (FIN out) or either side resetting ends the
        // connection; a client's FIN only half-closes it.
        let closes = h.flags & tcp_flags::RST != 0
            || (h.direction == direction::EGRESS && h.flags & tcp_flags::FIN != 0);
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
            self.dispatch(&event, sink);
            self.reassembly.forget(conn);
        }
    }

    /// Sends an event to its connection's protocol, recognising the
    /// protocol of a new connection from its first bytes.
    fn dispatch(&mut self, ev: &Event<'_>, sink: &mut impl Sinks) {
        match ev.kind {
            EventKind::Close => {
                self.resp.close(ev.conn, sink);
                self.tracker.handle(ev, sink);
            }
            EventKind::Read | EventKind::Write | EventKind::Sendfile => {
                if self.resp.has(ev.conn) {
                    self.resp.handle(ev, sink);
                    return;
                }
                let resp = match ev.kind {
                    EventKind::Read => starts_like_command(ev.data),
                    _ => starts_like_reply(ev.data),
                };
                if resp
                    && (!self.tracker.has(ev.conn) || self.tracker.forget_fresh(ev.conn))
                    && self.resp.open(ev, self.peer(ev), sink)
                {
                    self.resp.handle(ev, sink);
                    return;
                }
                self.tracker.handle(ev, sink);
            }
            EventKind::Accept | EventKind::Packet => self.tracker.handle(ev, sink),
        }
    }

    /// Who a RESP connection belongs to.
    fn peer(&self, ev: &Event<'_>) -> Peer {
        Peer {
            origin: ev.origin,
            port: ev.port,
            server: None,
        }
    }

    /// Forgets connections idle for longer than `idle_ns`.
    pub fn sweep(&mut self, now_ns: u64, idle_ns: u64, sink: &mut impl Sinks) {
        self.tracker.sweep(now_ns, idle_ns, sink);
        self.resp.sweep(now_ns, idle_ns, sink);
        self.reassembly.sweep(now_ns, idle_ns);
    }
}
