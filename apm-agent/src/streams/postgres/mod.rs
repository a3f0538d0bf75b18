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

#[cfg(test)]
mod tests;

use std::{collections::VecDeque, sync::Arc};

use rustc_hash::FxHashMap;

use super::{
    pairing::{Event, Flow, Unpaired},
    resp::Peer,
    table::{EVICTABLE_NS, Full, LastSeen, Table},
};
use crate::protocols::{
    postgres::{self, Desync, Framer, Message, Side},
    sql::{self, Statement},
};

/// Operations that may wait for their ends on one connection.
pub const MAX_PENDING: usize = 1024;
/// Prepared statements and portals remembered per connection; past it
/// the oldest is forgotten (an Execute of it is of an unknown statement).
pub const MAX_NAMES: usize = 256;

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// An ErrorResponse, with its SQLSTATE when it carried one.
    Error(Option<[u8; 5]>),
    /// Ended while the answer's framing was lost: not known.
    Unknown,
}

/// Where PostgreSQL pairing results go.
pub trait StatementSink {
    fn statement(&mut self, peer: &Peer, stmt: &Arc<Statement>, outcome: Outcome, duration_ns: u64);
    fn statement_unpaired(&mut self, peer: &Peer, reason: Unpaired);
}

#[derive(Clone, Debug)]
enum Op {
    Run {
        stmt: Arc<Statement>,
        start_ns: u64,
    },
    /// A Sync, or a simple query's end: answered by ReadyForQuery.
    Sync,
}

struct Conn {
    peer: Peer,
    front: Framer,
    back: Framer,
    prepared: Names,
    portals: Names,
    pending: VecDeque<Op>,
    /// The session went encrypted: nothing more is read.
    encrypted: bool,
    last_seen_ns: u64,
}

impl LastSeen for Conn {
    fn last_seen_ns(&self) -> u64 {
        self.last_seen_ns
    }
}

/// Name → statement, at most [`MAX_NAMES`], the oldest forgotten first.
#[derive(Default)]
struct Names {
    map: FxHashMap<Vec<u8>, (Arc<Statement>, u64)>,
    next: u64,
}

impl Names {
    fn insert(&mut self, name: &[u8], stmt: Arc<Statement>) {
        if self.map.len() >= MAX_NAMES && !self.map.contains_key(name) {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, (_, n))| *n)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.map.remove(&oldest);
            }
        }
        self.next += 1;
        self.map.insert(name.to_vec(), (stmt, self.next));
    }

    fn get(&self, name: &[u8]) -> Option<Arc<Statement>> {
        self.map.get(name).map(|(s, _)| Arc::clone(s))
    }

    fn remove(&mut self, name: &[u8]) {
        self.map.remove(name);
    }
}

pub struct Tracker {
    conns: Table<Conn>,
    /// The statement of an Execute whose portal or statement is unknown
    /// (prepared before the capture saw the connection).
    unknown: Arc<Statement>,
}

impl Tracker {
    pub fn new(max_conns: usize) -> Self {
        Self {
            conns: Table::new(max_conns),
            unknown: Arc::new(Statement {
                text: "(unknown prepared statement)".into(),
                operation: "UNKNOWN".into(),
                ..Statement::default()
            }),
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
            pending: VecDeque::new(),
            encrypted: false,
            last_seen_ns: ev.ts_ns,
        };
        match self.conns.insert(ev.conn, conn, ev.ts_ns, EVICTABLE_NS) {
            Ok(evicted) => {
                if let Some(old) = evicted {
                    finish(old, sink, Unpaired::Evicted);
                }
                true
            }
            Err(Full) => {
                sink.statement_unpaired(&peer, Unpaired::TableFull);
                false
            }
        }
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
            Flow::FromServer | Flow::Sendfile => on_back(c, ev, total, sink),
            _ => {}
        }
    }

    /// The connection ended.
    pub fn close(&mut self, conn: u64, sink: &mut impl StatementSink) {
        if let Some(c) = self.conns.remove(conn) {
            finish(c, sink, Unpaired::ClosedMidRequest);
        }
    }

    /// Bytes of `conn` were never seen: drop what waits and resync.
    pub fn gap(&mut self, conn: u64, sink: &mut impl StatementSink) {
        let Some(c) = self.conns.peek_mut(conn) else {
            return;
        };
        let dropped = runs(&c.pending).max(1);
        c.pending.clear();
        for _ in 0..dropped {
            sink.statement_unpaired(&c.peer, Unpaired::Gap);
        }
        c.front = Framer::joined(Side::Front);
        c.back = Framer::joined(Side::Back);
    }

    /// Forgets connections idle for longer than `idle_ns`.
    pub fn sweep(&mut self, now_ns: u64, idle_ns: u64, sink: &mut impl StatementSink) {
        for c in self.conns.sweep(now_ns, idle_ns) {
            finish(c, sink, Unpaired::Evicted);
        }
    }
}

fn runs(pending: &VecDeque<Op>) -> usize {
    pending
        .iter()
        .filter(|o| matches!(o, Op::Run { .. }))
        .count()
}

fn finish(c: Conn, sink: &mut impl StatementSink, reason: Unpaired) {
    for _ in 0..runs(&c.pending) {
        sink.statement_unpaired(&c.peer, reason);
    }
}

/// Queues `op`; a full queue counts it and drops it.
fn push(c: &mut Conn, op: Op, sink: &mut impl StatementSink) {
    if c.pending.len() >= MAX_PENDING {
        if matches!(op, Op::Run { .. }) {
            sink.statement_unpaired(&c.peer, Unpaired::QueueFull);
        }
        return;
    }
    c.pending.push_back(op);
}

fn on_front(
    c: &mut Conn,
    ev: &Event<'_>,
    total: usize,
    unknown: &Arc<Statement>,
    sink: &mut impl StatementSink,
) {
    let was_lost = c.front.lost();
    let mut msgs: Vec<(u8, u32, Vec<u8>, bool)> = Vec::new();
    let framed = c.front.feed(ev.data, total, |m| {
        msgs.push((m.kind, m.code, m.body.to_vec(), m.cut))
    });
    for (kind, code, body, cut) in msgs {
        let m = Message {
            kind,
            code,
            body: &body,
            cut,
        };
        on_request(c, &m, ev.ts_ns, unknown, sink);
    }
    // Once per loss: requests past the capture, or bytes that are no
    // message; the stream resumes at a piece that starts like one.
    match framed {
        Err(Desync::Truncated) if !was_lost => {
            sink.statement_unpaired(&c.peer, Unpaired::Truncated);
        }
        Err(Desync::Garbage) if !was_lost => {
            sink.statement_unpaired(&c.peer, Unpaired::Malformed);
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
            for part in sql::statements(sql) {
                let stmt = Arc::new(sql::normalise(part, cut));
                push(
                    c,
                    Op::Run {
                        stmt,
                        start_ns: ts_ns,
                    },
                    sink,
                );
            }
            push(c, Op::Sync, sink);
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
            let bound = c.prepared.get(stmt).unwrap_or_else(|| Arc::clone(unknown));
            c.portals.insert(portal, bound);
        }
        b'E' => {
            let portal = fields.next().unwrap_or(&[]);
            let stmt = c.portals.get(portal).unwrap_or_else(|| Arc::clone(unknown));
            push(
                c,
                Op::Run {
                    stmt,
                    start_ns: ts_ns,
                },
                sink,
            );
        }
        b'S' => push(c, Op::Sync, sink),
        b'C' => {
            let (what, name) = m.body.split_first().unwrap_or((&0, &[][..]));
            let name = name.split(|&b| b == 0).next().unwrap_or(&[]);
            match what {
                b'S' => c.prepared.remove(name),
                b'P' => c.portals.remove(name),
                _ => {}
            }
        }
        _ => {}
    }
}

fn on_back(c: &mut Conn, ev: &Event<'_>, total: usize, sink: &mut impl StatementSink) {
    if !c.back.lost() {
        let mut msgs: Vec<(u8, u32, Option<[u8; 5]>)> = Vec::new();
        let framed = c.back.feed(ev.data, total, |m| {
            let state = (m.kind == b'E')
                .then(|| postgres::sqlstate(m.body))
                .flatten();
            msgs.push((m.kind, m.code, state));
        });
        for (kind, code, state) in msgs {
            on_answer(c, kind, code, state, ev.ts_ns, sink);
        }
        if framed.is_ok() {
            return;
        }
    }
    // Lost in a long answer: it ends with a piece whose last bytes are a
    // ReadyForQuery (this one's, maybe), and the next piece starts anew.
    let end = if ev.data.len() >= total {
        ev.data
    } else {
        ev.tail
    };
    if end.len() >= 6 && postgres::is_ready(&end[end.len() - 6..]) {
        while let Some(op) = c.pending.pop_front() {
            match op {
                Op::Sync => break,
                Op::Run { stmt, start_ns } => {
                    let took = ev.ts_ns.saturating_sub(start_ns);
                    sink.statement(&c.peer, &stmt, Outcome::Unknown, took);
                }
            }
        }
        c.back = Framer::new(Side::Back);
    }
}

/// The operation at the head of the queue ended at `ts_ns`; recorded
/// unless it was empty. The next one cannot have started before.
fn complete(
    c: &mut Conn,
    outcome: Outcome,
    ts_ns: u64,
    record: bool,
    sink: &mut impl StatementSink,
) {
    if !matches!(c.pending.front(), Some(Op::Run { .. })) {
        return;
    }
    if let Some(Op::Run { stmt, start_ns }) = c.pending.pop_front()
        && record
    {
        sink.statement(&c.peer, &stmt, outcome, ts_ns.saturating_sub(start_ns));
    }
    if let Some(Op::Run { start_ns, .. }) = c.pending.front_mut() {
        *start_ns = (*start_ns).max(ts_ns);
    }
}

fn on_answer(
    c: &mut Conn,
    kind: u8,
    code: u32,
    state: Option<[u8; 5]>,
    ts_ns: u64,
    sink: &mut impl StatementSink,
) {
    match kind {
        // The one-byte answer to an encryption request.
        0 if code == u32::from(b'N') => c.front.expect_startup(),
        0 => c.encrypted = true,
        b'C' => complete(c, Outcome::Ok, ts_ns, true, sink),
        b'I' => complete(c, Outcome::Ok, ts_ns, false, sink),
        b'E' => {
            complete(c, Outcome::Error(state), ts_ns, true, sink);
            // The server skips what follows, to the next Sync.
            while matches!(c.pending.front(), Some(Op::Run { .. })) {
                c.pending.pop_front();
            }
        }
        // A suspended portal: the Execute that runs it to its end counts.
        b's' => {
            if matches!(c.pending.front(), Some(Op::Run { .. })) {
                c.pending.pop_front();
            }
        }
        b'Z' => {
            while let Some(op) = c.pending.pop_front() {
                match op {
                    Op::Sync => break,
                    Op::Run { .. } => sink.statement_unpaired(&c.peer, Unpaired::Malformed),
                }
            }
        }
        _ => {}
    }
}
