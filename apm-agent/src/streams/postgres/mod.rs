//! PostgreSQL pairing per connection: statements in the order the client
//! sends them, their ends in the order the server answers.
//!
//! One operation per statement of a simple query (`Q`, split on `;`) and
//! per Execute of the extended protocol, whose statement is the one its
//! portal was bound to (`B`) from a statement parsed (`P`) by name or
//! unnamed: names are remembered per connection, bounded. An operation
//! runs from its first byte (a later statement of a simple query: from
//! the end of the one before) to its CommandComplete, EmptyQueryResponse
//! or ErrorResponse (with its SQLSTATE). After an error the server skips
//! to the next Sync (the rest of a simple query): those statements never
//! ran and are not counted. ReadyForQuery answers a Sync or a simple
//! query. COPY, notices and notifications do not disturb the order.
//!
//! An SSLRequest or GSSENCRequest answered `N` is followed by the
//! startup; answered `S`/`G`, the session is encrypted and its bytes are
//! left alone (the TLS capture feeds its plaintext under the same key,
//! from a StartupMessage on). A server whose answer framing is lost (a
//! header past the capture, in a long result) ends the operations waiting
//! at the next ReadyForQuery the capture shows at a piece's end; their
//! outcomes are not known, and they count as completed.

mod answers;
mod names;
#[cfg(test)]
mod tests;

use std::{collections::VecDeque, sync::Arc};

use self::names::{Names, Portals, Suspended};
pub use super::sql::{Outcome, StatementSink};
use super::{
    pairing::{Event, Flow, Unpaired},
    resp::Peer,
    sql::{self as sql_shared, Conns, System, Waiting},
    table::LastSeen,
};
use crate::protocols::{
    postgres::{self, Desync, Framer, Message, Side},
    sql::{self, Statement},
};

/// Operations that may wait for their ends on one connection; past it
/// they are counted (`queue_full`) and their answers absorbed.
pub const MAX_PENDING: usize = 1024;

#[derive(Clone, Debug)]
enum Op {
    Run {
        stmt: Arc<Statement>,
        start_ns: u64,
        /// An Execute's portal.
        portal: Option<Vec<u8>>,
    },
    /// Operations not queued for want of room: their answers are
    /// absorbed, never paired with the wrong statement.
    Skip(u32),
    /// Answered by ReadyForQuery: a Sync (`explicit`), or the end of a
    /// simple query or a function call. `cut`: a simple query whose text
    /// the capture cut, so statements past what it saw may end before it.
    Sync { explicit: bool, cut: bool },
}

impl Op {
    fn sync(explicit: bool, cut: bool) -> Self {
        Op::Sync { explicit, cut }
    }
}

struct Conn {
    peer: Peer,
    front: Framer,
    back: Framer,
    prepared: Names,
    portals: Names,
    suspended: Portals,
    pending: VecDeque<Op>,
    /// The server reads COPY data: it ignores Syncs until CopyDone/Fail.
    copy_in: bool,
    /// The session went encrypted: nothing more is read.
    encrypted: bool,
    last_seen_ns: u64,
}

impl LastSeen for Conn {
    fn last_seen_ns(&self) -> u64 {
        self.last_seen_ns
    }
}

pub struct Tracker {
    conns: Conns<Conn>,
    /// The statement of an Execute whose portal or statement is unknown
    /// (prepared before the capture saw the connection).
    unknown: Arc<Statement>,
}

impl Tracker {
    pub fn new(max_conns: usize) -> Self {
        Self {
            conns: Conns::new(max_conns),
            unknown: sql_shared::unknown_statement(),
        }
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    pub fn has(&self, conn: u64) -> bool {
        self.conns.contains(conn)
    }

    /// Starts following `conn` as PostgreSQL from its first client piece:
    /// a startup message, or (`joined`, a connection older than the
    /// capture) a request; then the server's answers are followed from
    /// the first piece that starts like one, and statements prepared
    /// before are unknown. False when the table is full of connections
    /// seen in the last second.
    pub fn open(
        &mut self,
        ev: &Event<'_>,
        peer: Peer,
        joined: bool,
        sink: &mut impl StatementSink,
    ) -> bool {
        let framer = if joined { Framer::joined } else { Framer::new };
        let conn = Conn {
            peer,
            front: framer(Side::Front),
            back: framer(Side::Back),
            prepared: Names::default(),
            portals: Names::default(),
            suspended: Portals::default(),
            pending: VecDeque::new(),
            copy_in: false,
            encrypted: false,
            last_seen_ns: ev.ts_ns,
        };
        self.conns.open(ev.conn, conn, ev.ts_ns, sink)
    }

    /// A piece of a PostgreSQL connection.
    pub fn handle(&mut self, ev: &Event<'_>, sink: &mut impl StatementSink) {
        let unknown = &self.unknown;
        let Some(c) = self.conns.get_mut(ev.conn) else {
            return;
        };
        c.last_seen_ns = ev.ts_ns;
        if c.encrypted {
            // The TLS capture's plaintext starts with a StartupMessage.
            if ev.kind != Flow::ToServer || !postgres::starts_like_startup(ev.data) {
                return;
            }
            c.encrypted = false;
            c.front = Framer::new(Side::Front);
            c.back = Framer::new(Side::Back);
        }
        let total = usize::try_from(ev.ret.max(0)).unwrap_or(usize::MAX);
        match ev.kind {
            Flow::ToServer => on_front(c, ev, total, unknown, sink),
            Flow::FromServer | Flow::Sendfile => answers::on_back(c, ev, total, sink),
            _ => {}
        }
    }

    /// The connection ended.
    pub fn close(&mut self, conn: u64, sink: &mut impl StatementSink) {
        self.conns.close(conn, sink);
    }

    /// Bytes of `conn` were never seen: drop what waits and resync.
    pub fn gap(&mut self, conn: u64, sink: &mut impl StatementSink) {
        if let Some(c) = self.conns.peek_mut(conn) {
            reset(c, sink, Unpaired::Gap);
        }
    }

    /// Forgets connections idle for longer than `idle_ns`.
    pub fn sweep(&mut self, now_ns: u64, idle_ns: u64, sink: &mut impl StatementSink) {
        self.conns.sweep(now_ns, idle_ns, sink);
    }
}

fn runs(pending: &VecDeque<Op>) -> usize {
    pending
        .iter()
        .filter(|o| matches!(o, Op::Run { .. }))
        .count()
}

impl Waiting for Conn {
    fn peer(&self) -> &Peer {
        &self.peer
    }
    fn system(&self) -> System {
        System::Postgres
    }
    fn waiting(&self) -> usize {
        runs(&self.pending)
    }
}

/// Drops what waits (at least one counted as `reason`) and follows both
/// directions again from a piece that starts like a message.
fn reset(c: &mut Conn, sink: &mut impl StatementSink, reason: Unpaired) {
    for _ in 0..runs(&c.pending).max(1) {
        sink.statement_unpaired(&c.peer, System::Postgres, reason);
    }
    c.pending.clear();
    c.copy_in = false;
    c.front = Framer::joined(Side::Front);
    c.back = Framer::joined(Side::Back);
}

/// Queues `op`. Past [`MAX_PENDING`] an operation is counted and queued
/// as a placeholder that absorbs its answer; Syncs are kept (to twice the
/// bound: a client that never reads its answers starts over).
fn push(c: &mut Conn, op: Op, sink: &mut impl StatementSink) {
    if c.pending.len() < MAX_PENDING {
        c.pending.push_back(op);
        return;
    }
    match op {
        Op::Sync { .. } if c.pending.len() >= 2 * MAX_PENDING => {
            reset(c, sink, Unpaired::QueueFull);
        }
        Op::Sync { .. } => c.pending.push_back(op),
        Op::Run { .. } | Op::Skip(_) => {
            sink.statement_unpaired(&c.peer, System::Postgres, Unpaired::QueueFull);
            match c.pending.back_mut() {
                Some(Op::Skip(n)) => *n += 1,
                _ => c.pending.push_back(Op::Skip(1)),
            }
        }
    }
}

/// A suspended portal that will not run again counts now, as run until
/// its last answer.
fn dropped(c: &Conn, s: &Suspended, sink: &mut impl StatementSink) {
    let at = (s.start_ns, s.answered_ns);
    sink.statement(&c.peer, System::Postgres, &s.stmt, Outcome::Ok, at);
}

fn on_front(
    c: &mut Conn,
    ev: &Event<'_>,
    total: usize,
    unknown: &Arc<Statement>,
    sink: &mut impl StatementSink,
) {
    let was_lost = c.front.lost();
    // The framer hands each message straight to the pairing, which never
    // touches the client's framer: lent out meanwhile, no body is copied.
    let mut front = std::mem::replace(&mut c.front, Framer::new(Side::Front));
    let framed = front.feed(ev.data, total, |m| {
        on_request(c, &m, ev.ts_ns, unknown, sink)
    });
    // Unless the pairing started over meanwhile (`reset`: the stand-in is
    // lost, waiting for a piece that starts like a message).
    if !c.front.lost() {
        c.front = front;
    }
    // Once per loss: requests past the capture, or bytes that are no
    // message; the stream resumes at a piece that starts like one.
    match framed {
        Err(Desync::Truncated) if !was_lost => {
            sink.statement_unpaired(&c.peer, System::Postgres, Unpaired::Truncated);
        }
        Err(Desync::Garbage) if !was_lost => {
            sink.statement_unpaired(&c.peer, System::Postgres, Unpaired::Malformed);
        }
        _ => {}
    }
}

fn on_request(
    c: &mut Conn,
    m: &Message<'_>,
    ts_ns: u64,
    unknown: &Arc<Statement>,
    sink: &mut impl StatementSink,
) {
    let mut fields = postgres::strings(m.body, 2);
    match m.kind {
        0 if matches!(m.code, postgres::SSL_REQUEST | postgres::GSSENC_REQUEST) => {
            c.back.expect_answer();
        }
        b'Q' => {
            let sql = fields.next().unwrap_or(&[]);
            let cut = m.cut || !m.body.contains(&0);
            let parts = sql::statements(sql);
            let last = parts.len().saturating_sub(1);
            for (i, part) in parts.into_iter().enumerate() {
                // Only the last statement seen can have been cut.
                let stmt = Arc::new(sql::normalise(part, cut && i == last));
                let portal = None;
                let start_ns = ts_ns;
                push(
                    c,
                    Op::Run {
                        stmt,
                        start_ns,
                        portal,
                    },
                    sink,
                );
            }
            push(c, Op::sync(false, cut), sink);
        }
        b'P' => {
            let name = fields.next().unwrap_or(&[]);
            let sql = fields.next().unwrap_or(&[]);
            let cut = m.cut || m.body.iter().filter(|&&b| b == 0).count() < 2;
            c.prepared.insert(name, Arc::new(sql::normalise(sql, cut)));
        }
        b'B' => {
            let portal = fields.next().unwrap_or(&[]);
            let stmt = fields.next().unwrap_or(&[]);
            // Bound again: a suspended portal of that name is over.
            if let Some(s) = c.suspended.resume(portal) {
                dropped(c, &s, sink);
            }
            let bound = c.prepared.get(stmt).unwrap_or_else(|| Arc::clone(unknown));
            c.portals.insert(portal, bound);
        }
        b'E' => {
            let portal = fields.next().unwrap_or(&[]);
            let (stmt, start_ns) = match c.suspended.resume(portal) {
                Some(s) => (s.stmt, s.start_ns),
                None => (
                    c.portals.get(portal).unwrap_or_else(|| Arc::clone(unknown)),
                    ts_ns,
                ),
            };
            let portal = Some(names::name(portal).to_vec());
            push(
                c,
                Op::Run {
                    stmt,
                    start_ns,
                    portal,
                },
                sink,
            );
        }
        // Syncs the server reads while it copies in are ignored by it.
        b'S' if !c.copy_in => push(c, Op::sync(true, false), sink),
        b'c' | b'f' => c.copy_in = false,
        // A function call is answered by its result and ReadyForQuery.
        b'F' => push(c, Op::sync(false, false), sink),
        b'C' => {
            let (what, name) = m.body.split_first().unwrap_or((&0, &[][..]));
            let name = name.split(|&b| b == 0).next().unwrap_or(&[]);
            match what {
                b'S' => c.prepared.remove(name),
                b'P' => {
                    c.portals.remove(name);
                    if let Some(s) = c.suspended.resume(name) {
                        dropped(c, &s, sink);
                    }
                }
                _ => {}
            }
        }
        _ => {}
    }
}
