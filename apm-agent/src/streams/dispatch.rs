//! Which protocol's pairing an event goes to: the connection's own once
//! known, else the one its first bytes start (a client's connection is
//! HTTP, RESP, SQL or nothing).

use std::net::IpAddr;

use super::{
    Sinks, Streams,
    pairing::{Event, Flow, Origin, Upgraded},
    resp::Peer,
};
use crate::protocols::{
    http2::frames::{PREFACE, starts_frames},
    mysql as my,
    postgres::{self as pg, starts_like_startup},
    resp::{starts_like_command, starts_like_reply},
};

impl Streams {
    /// Sends an event to its connection's protocol, recognising the
    /// protocol of a new connection from its first bytes. A client's
    /// connection (to `server`) is HTTP/1, HTTP/2, RESP, SQL or nothing.
    pub(super) fn dispatch(
        &mut self,
        ev: &Event<'_>,
        server: Option<IpAddr>,
        sink: &mut impl Sinks,
    ) {
        let call = client_call(ev, server);
        if call.is_some()
            && let Some(out) = self.outbound.peek_mut(ev.conn)
        {
            // The calls its answers complete were sent by this thread.
            if ev.kind == Flow::ToServer && ev.tid != 0 {
                out.tid = ev.tid;
            }
            sink.calling_thread(out.tid);
        }
        match ev.kind {
            Flow::Close => {
                self.http2.close(ev.conn, sink);
                self.resp.close(ev.conn, sink);
                self.postgres.close(ev.conn, sink);
                self.mysql.close(ev.conn, sink);
                match &call {
                    Some(call) => self.clients.handle(call, sink),
                    None => self.tracker.handle(ev, sink),
                }
            }
            Flow::ToServer | Flow::FromServer | Flow::Sendfile => {
                // Most events are of connections already known as HTTP.
                let http = match &call {
                    Some(call) => self.clients.handle_http(call, sink),
                    None => self.tracker.handle_http(ev, sink),
                };
                if http {
                    let tracker = match call {
                        Some(_) => &mut self.clients,
                        None => &mut self.tracker,
                    };
                    if let Some(up) = tracker.take_upgrade(ev.conn) {
                        self.upgrade(call.as_ref().unwrap_or(ev), &up, sink);
                    }
                    return;
                }
                if self.http2.has(ev.conn) {
                    self.http2.handle(ev, sink);
                    return;
                }
                // HTTP/2 with prior knowledge: the client's preface (a
                // server's connection, or a monitored client's call).
                let h2 = call.as_ref().unwrap_or(ev);
                if ev.kind == Flow::ToServer
                    && ev
                        .data
                        .starts_with(&PREFACE[..ev.data.len().min(PREFACE.len())])
                    && ev.data.len() >= 4
                    && self.yield_fresh(ev.conn, call.is_some())
                {
                    if self.http2.open(h2, true, sink) {
                        self.http2.handle(h2, sink);
                    }
                    return;
                }
                // HTTP/2 joined mid-way (a connection older than the
                // agent): a piece that starts with frame headers, which
                // no HTTP/1, RESP or SQL message does.
                let total = usize::try_from(ev.ret.max(0)).unwrap_or(usize::MAX);
                if !self.resp.has(ev.conn)
                    && !self.postgres.has(ev.conn)
                    && !self.mysql.has(ev.conn)
                    && starts_frames(ev.data, total)
                    && self.yield_fresh(ev.conn, call.is_some())
                {
                    if self.http2.open(h2, false, sink) {
                        self.http2.handle(h2, sink);
                    }
                    return;
                }
                if self.resp.has(ev.conn) {
                    self.resp.handle(ev, sink);
                    return;
                }
                if self.postgres.has(ev.conn) {
                    self.postgres.handle(ev, sink);
                    return;
                }
                if self.mysql.has(ev.conn) {
                    self.mysql.handle(ev, sink);
                    return;
                }
                // MySQL: the server's greeting first, or one whole command
                // of a connection older than the capture (before
                // PostgreSQL's request, which some commands also look like).
                let to_server = ev.kind == Flow::ToServer;
                let greeting = !to_server && my::starts_like_greeting(ev.data);
                let joined = to_server && my::starts_like_joined(ev.data, total);
                if (greeting || joined) && self.tracker.yield_fresh(ev.conn) {
                    if self.mysql.open(ev, peer(ev, server), joined, sink) {
                        self.mysql.handle(ev, sink);
                    }
                    return;
                }
                // PostgreSQL: a startup message first, or a request of a
                // connection older than the capture.
                let startup = to_server && starts_like_startup(ev.data);
                let joined = to_server && !startup && pg::starts_like_request(ev.data);
                if (startup || joined) && self.tracker.yield_fresh(ev.conn) {
                    if self.postgres.open(ev, peer(ev, server), joined, sink) {
                        self.postgres.handle(ev, sink);
                    }
                    return;
                }
                // A server-side connection is taken for RESP by a command
                // only: one first seen in the middle of an HTTP body may
                // start with any byte. A reply first is a client's
                // connection, to a port known to be Redis.
                let resp = match ev.kind {
                    Flow::ToServer => starts_like_command(ev.data),
                    _ => server.is_some() && starts_like_reply(ev.data),
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
                match &call {
                    // A call's connection is recognised by its request
                    // line only: the kernel moved it here on one.
                    Some(call) => {
                        if ev.kind == Flow::ToServer
                            && crate::protocols::http::starts_like_request(ev.data)
                        {
                            self.clients.handle(call, sink);
                        }
                    }
                    None => self.tracker.handle(ev, sink),
                }
            }
            Flow::Accept => self.tracker.handle(ev, sink),
        }
    }
}

impl Streams {
    /// `ev`'s connection switched to HTTP/2 (`Upgrade: h2c`) in `ev`:
    /// its upgraded request is stream 1, and the bytes after the 101's
    /// head are the server's first frames.
    fn upgrade(&mut self, ev: &Event<'_>, up: &Upgraded, sink: &mut impl Sinks) {
        if !self.http2.open_upgraded(ev, up, sink) {
            return;
        }
        let at = u32::try_from(up.at).unwrap_or(u32::MAX);
        let rest = Event {
            data: ev.data.get(up.at..).unwrap_or(&[]),
            ret: ev.ret - i64::from(at),
            seq: ev.seq.map(|(p, s)| (p, s.wrapping_add(at))),
            ..*ev
        };
        if rest.ret > 0 {
            self.http2.handle(&rest, sink);
        }
    }

    /// Whether HTTP/1 leaves `conn` (a `client`'s call, or a server's
    /// connection) to another protocol: it has seen no request on it.
    fn yield_fresh(&mut self, conn: u64, client: bool) -> bool {
        if client {
            self.clients.yield_fresh(conn)
        } else {
            self.tracker.yield_fresh(conn)
        }
    }
}

/// A monitored client's event (its connection to `server`) as an HTTP
/// call of its process.
fn client_call<'a>(ev: &Event<'a>, server: Option<IpAddr>) -> Option<Event<'a>> {
    let (server, Origin::Process(tgid)) = (server?, ev.origin) else {
        return None;
    };
    Some(Event {
        origin: Origin::Client { tgid, server },
        ..*ev
    })
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
