//! MySQL/MariaDB pairing per connection: commands in the order the client
//! sends them, their answers in the same order.
//!
//! One operation per statement of a COM_QUERY (split on `;`; with
//! multi-statements each result ends one, and after an error the rest
//! never ran and are not counted) and per COM_STMT_EXECUTE, whose
//! statement is the one COM_STMT_PREPARE gave that id (remembered per
//! connection, bounded). An operation runs from its command to the packet
//! that ends its answer: an OK, an ERR (with its error number) or the EOF
//! or OK after a result set's rows. Other commands (ping, prepare, reset,
//! fetch, …) are followed so their answers pair with nothing.
//!
//! A connection is followed from the server's greeting: its version says
//! MariaDB or MySQL (`db_system_name`), the client's answer whether
//! result sets end their column definitions with an EOF. A client that
//! asks for TLS is left alone until the TLS capture's plaintext shows its
//! handshake response; a compressed session is not read. A connection
//! older than the capture is joined at a command: its prepared statements
//! are unknown and its EOF convention is learnt from the first result set;
//! whether it is MariaDB, from the last greeting of the same server.

mod answers;
#[cfg(test)]
mod tests;

use std::{collections::VecDeque, sync::Arc};

use rustc_hash::FxHashMap;

use self::answers::Reading;
use super::{
    pairing::{Event, Flow, Unpaired},
    resp::Peer,
    sql::{self as sql_shared, Conns, Names, Outcome, StatementSink, System, Waiting},
    table::LastSeen,
};
use crate::protocols::{
    mysql::{
        self, CLIENT_COMPRESS, CLIENT_DEPRECATE_EOF, CLIENT_PROTOCOL_41, CLIENT_QUERY_ATTRIBUTES,
        CLIENT_SSL, CLIENT_ZSTD, Framer, KEEP_BACK, KEEP_FRONT, KEEP_GREETING, Packet,
    },
    sql::{self, Dialect, Statement},
};

/// Commands that may wait for their answers on one connection; past it
/// they are counted (`queue_full`) and their answers absorbed.
pub const MAX_PENDING: usize = 1024;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The greeting and the client's answer to it.
    Handshake,
    /// The client asked for TLS: ciphertext until the TLS capture's
    /// plaintext shows its handshake response.
    Encrypted,
    /// Authentication, until the server's OK.
    Auth,
    Command,
    /// Compressed, or a replication stream: not read.
    Ignored,
}

/// A command waiting for its answer.
#[derive(Clone, Debug)]
enum Cmd {
    /// A COM_QUERY's statements still to end; the first started at
    /// `start_ns`.
    Query {
        stmts: VecDeque<Arc<Statement>>,
        start_ns: u64,
    },
    Execute {
        stmt: Arc<Statement>,
        start_ns: u64,
        /// Opened a cursor: its rows come by COM_STMT_FETCH.
        cursor: bool,
    },
    Prepare {
        stmt: Arc<Statement>,
    },
    /// Answered by rows and their end, no column count: COM_STMT_FETCH,
    /// COM_FIELD_LIST (column definitions as rows).
    Rows,
    /// COM_STATISTICS: one packet, whatever it starts with.
    Raw,
    /// Any other command: an OK, ERR, EOF or result set, not counted.
    Other,
    /// Commands not queued for want of room: their answers are absorbed.
    Skip(u32),
}

struct Conn {
    peer: Peer,
    system: System,
    /// `system` is the greeting's (or learnt from another connection to
    /// the same server).
    known: bool,
    phase: Phase,
    front: Framer,
    back: Framer,
    server_caps: Option<u32>,
    /// Whether COM_QUERY carries query attributes (None: not seen).
    attributes: Option<bool>,
    /// The client is sending a LOCAL INFILE's contents (to an empty
    /// packet): no commands.
    infile: bool,
    /// Whether result sets end their column definitions with an EOF
    /// (None: not known yet).
    eof_after_defs: Option<bool>,
    prepared: Names,
    pending: VecDeque<Cmd>,
    reading: Reading,
    /// An EOF of this sequence number may still end the prepare answered
    /// last (its convention was not known).
    maybe_eof: Option<u8>,
    last_back_ns: u64,
    last_seen_ns: u64,
}

impl LastSeen for Conn {
    fn last_seen_ns(&self) -> u64 {
        self.last_seen_ns
    }
}

/// Servers whose greeting said which database they are, remembered for
/// their connections older than the capture; past it they start over.
const MAX_SERVERS: usize = 4096;

pub struct Tracker {
    conns: Conns<Conn>,
    /// MariaDB or MySQL, per server from its greetings.
    servers: FxHashMap<Peer, System>,
    /// The statement of an Execute whose id is unknown (prepared before
    /// the capture saw the connection).
    unknown: Arc<Statement>,
}

impl Tracker {
    pub fn new(max_conns: usize) -> Self {
        Self {
            conns: Conns::new(max_conns),
            servers: FxHashMap::default(),
            unknown: sql_shared::unknown_statement(),
        }
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    pub fn has(&self, conn: u64) -> bool {
        self.conns.contains(conn)
    }

    /// Starts following `conn` from the server's greeting, or (`joined`,
    /// a connection older than the capture) from a client's command.
    /// False when the table is full of connections seen in the last
    /// second.
    pub fn open(
        &mut self,
        ev: &Event<'_>,
        peer: Peer,
        joined: bool,
        sink: &mut impl StatementSink,
    ) -> bool {
        let known = self.servers.get(&peer).copied();
        let conn = Conn {
            peer,
            system: known.unwrap_or(System::Mysql),
            known: known.is_some(),
            phase: if joined {
                Phase::Command
            } else {
                Phase::Handshake
            },
            front: Framer::new(KEEP_FRONT),
            back: if joined {
                Framer::lost(KEEP_BACK)
            } else {
                Framer::new(KEEP_GREETING)
            },
            server_caps: None,
            attributes: None,
            infile: false,
            eof_after_defs: None,
            prepared: Names::default(),
            pending: VecDeque::new(),
            reading: Reading::Start,
            maybe_eof: None,
            last_back_ns: ev.ts_ns,
            last_seen_ns: ev.ts_ns,
        };
        self.conns.open(ev.conn, conn, ev.ts_ns, sink)
    }

    /// A piece of a MySQL connection.
    pub fn handle(&mut self, ev: &Event<'_>, sink: &mut impl StatementSink) {
        let unknown = &self.unknown;
        let Some(c) = self.conns.get_mut(ev.conn) else {
            return;
        };
        c.last_seen_ns = ev.ts_ns;
        if !c.known
            && let Some(&system) = self.servers.get(&c.peer)
        {
            c.system = system;
            c.known = true;
        }
        let greeted = c.known;
        let total = usize::try_from(ev.ret.max(0)).unwrap_or(usize::MAX);
        match (c.phase, ev.kind) {
            (Phase::Ignored, _) => {}
            // The plaintext starts with the handshake response.
            (Phase::Encrypted, Flow::ToServer) if starts_like_response(ev.data, 2) => {
                c.phase = Phase::Handshake;
                c.front = Framer::new(KEEP_FRONT);
                c.back = Framer::new(KEEP_BACK);
                on_front(c, ev, total, unknown, sink);
            }
            (Phase::Encrypted, _) => {}
            (_, Flow::ToServer) => on_front(c, ev, total, unknown, sink),
            (_, Flow::FromServer | Flow::Sendfile) => answers::on_back(c, ev, total, sink),
            _ => {}
        }
        if c.known && !greeted {
            if self.servers.len() >= MAX_SERVERS {
                self.servers.clear();
            }
            self.servers.insert(c.peer, c.system);
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

/// Operations (statements) waiting in `pending`.
fn operations(pending: &[Cmd]) -> usize {
    pending
        .iter()
        .map(|c| match c {
            Cmd::Query { stmts, .. } => stmts.len(),
            Cmd::Execute { .. } => 1,
            _ => 0,
        })
        .sum()
}

impl Waiting for Conn {
    fn peer(&self) -> &Peer {
        &self.peer
    }
    fn system(&self) -> System {
        self.system
    }
    fn waiting(&self) -> usize {
        let (a, b) = self.pending.as_slices();
        operations(a) + operations(b)
    }
}

/// Drops what waits (at least one counted as `reason`) and follows both
/// directions again from pieces that start like a command and an answer.
fn reset(c: &mut Conn, sink: &mut impl StatementSink, reason: Unpaired) {
    for _ in 0..c.waiting().max(1) {
        sink.statement_unpaired(&c.peer, c.system, reason);
    }
    c.pending.clear();
    c.reading = Reading::Start;
    c.maybe_eof = None;
    c.infile = false;
    // A handshake whose bytes went missing: followed from the next
    // command, as a connection joined mid-way.
    if matches!(c.phase, Phase::Handshake | Phase::Auth | Phase::Command) {
        c.phase = Phase::Command;
        c.front = Framer::lost(KEEP_FRONT);
        c.back = Framer::lost(KEEP_BACK);
    }
}

/// Queues `cmd`; past [`MAX_PENDING`] it is counted and queued as a
/// placeholder that absorbs its answer.
fn push(c: &mut Conn, cmd: Cmd, sink: &mut impl StatementSink) {
    let ops = operations(std::slice::from_ref(&cmd));
    // Statements too: a query of thousands of `;` is as many.
    if c.pending.len() < MAX_PENDING && operations(c.pending.make_contiguous()) + ops <= MAX_PENDING
    {
        c.pending.push_back(cmd);
        return;
    }
    for _ in 0..ops {
        sink.statement_unpaired(&c.peer, c.system, Unpaired::QueueFull);
    }
    match c.pending.back_mut() {
        Some(Cmd::Skip(n)) => *n += 1,
        _ => c.pending.push_back(Cmd::Skip(1)),
    }
}

/// Whether a client's piece starts with a packet of sequence `seq` that
/// may be a (4.1) handshake response.
fn starts_like_response(data: &[u8], seq: u8) -> bool {
    let Some(head) = data.first_chunk::<8>() else {
        return false;
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], 0]);
    let caps = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    head[3] == seq && (32..=4096).contains(&len) && caps & CLIENT_PROTOCOL_41 != 0
}

fn on_front(
    c: &mut Conn,
    ev: &Event<'_>,
    total: usize,
    unknown: &Arc<Statement>,
    sink: &mut impl StatementSink,
) {
    if c.front.is_lost() {
        if !mysql::starts_like_command(ev.data, total) {
            return;
        }
        c.front.resume();
    }
    // A command while the answer before it was lost: that answer ended
    // before it (a client waits for it), its outcome not known.
    answers::end_lost(c, sink);
    // The framer hands each packet straight to the pairing, which never
    // touches the client's framer: lent out meanwhile.
    let mut front = std::mem::replace(&mut c.front, Framer::new(KEEP_FRONT));
    let framed = front.feed(ev.data, total, |p| {
        on_packet(c, &p, ev.ts_ns, unknown, sink)
    });
    if !c.front.is_lost() {
        c.front = front;
    }
    if framed.is_err() {
        // A command's header past the capture: what it held is lost.
        sink.statement_unpaired(&c.peer, c.system, Unpaired::Truncated);
    }
}

fn on_packet(
    c: &mut Conn,
    p: &Packet<'_>,
    ts_ns: u64,
    unknown: &Arc<Statement>,
    sink: &mut impl StatementSink,
) {
    match c.phase {
        Phase::Handshake => handshake_response(c, p, sink),
        // A file's packets, whatever their sequence numbers wrap to.
        Phase::Command if c.infile => c.infile = p.len > 0,
        Phase::Command if p.seq == 0 => on_command(c, p, ts_ns, unknown, sink),
        // Authentication data, LOCAL INFILE contents.
        _ => {}
    }
}

/// The client's answer to the greeting: TLS, compression and the EOF
/// convention are read from its capabilities.
fn handshake_response(c: &mut Conn, p: &Packet<'_>, sink: &mut impl StatementSink) {
    let Some(caps) = p.body.first_chunk::<4>().map(|b| u32::from_le_bytes(*b)) else {
        return;
    };
    if caps & CLIENT_SSL != 0 && p.len == 32 {
        c.phase = Phase::Encrypted;
        return;
    }
    let agreed = caps & c.server_caps.unwrap_or(caps);
    c.attributes = Some(agreed & CLIENT_QUERY_ATTRIBUTES != 0);
    if agreed & (CLIENT_COMPRESS | CLIENT_ZSTD) != 0 {
        // Counted once: its statements are not seen.
        sink.statement_unpaired(&c.peer, c.system, Unpaired::Malformed);
        c.phase = Phase::Ignored;
        return;
    }
    if caps & CLIENT_PROTOCOL_41 != 0 {
        c.eof_after_defs = Some(agreed & CLIENT_DEPRECATE_EOF == 0);
    }
    c.phase = Phase::Auth;
}

fn on_command(
    c: &mut Conn,
    p: &Packet<'_>,
    ts_ns: u64,
    unknown: &Arc<Statement>,
    sink: &mut impl StatementSink,
) {
    let Some((&command, body)) = p.body.split_first() else {
        return;
    };
    match command {
        mysql::COM_QUERY => {
            let Some(text) = mysql::query_text(body, c.attributes) else {
                // Attributes that do not parse: the statement is not
                // read (nor lexed as binary), its answer absorbed.
                sink.statement_unpaired(&c.peer, c.system, Unpaired::Malformed);
                push(c, Cmd::Other, sink);
                return;
            };
            let parts = sql::statements_in(Dialect::Mysql, text);
            let last = parts.len().saturating_sub(1);
            let stmts = parts
                .into_iter()
                .enumerate()
                .map(|(i, part)| {
                    Arc::new(sql::normalise_in(Dialect::Mysql, part, p.cut && i == last))
                })
                .collect();
            push(
                c,
                Cmd::Query {
                    stmts,
                    start_ns: ts_ns,
                },
                sink,
            );
        }
        mysql::COM_STMT_PREPARE => {
            let stmt = Arc::new(sql::normalise_in(Dialect::Mysql, body, p.cut));
            push(c, Cmd::Prepare { stmt }, sink);
        }
        mysql::COM_STMT_EXECUTE => {
            let id = body.first_chunk::<4>().copied().unwrap_or([0; 4]);
            let cursor = body.get(4).is_some_and(|f| f & 0x07 != 0);
            let stmt = if id == [0xff; 4] {
                // MariaDB's "the statement prepared last" (pipelined).
                last_prepared(c)
            } else {
                c.prepared.get(&id)
            }
            .unwrap_or_else(|| Arc::clone(unknown));
            push(
                c,
                Cmd::Execute {
                    stmt,
                    start_ns: ts_ns,
                    cursor,
                },
                sink,
            );
        }
        mysql::COM_STMT_CLOSE => {
            if let Some(id) = body.first_chunk::<4>() {
                c.prepared.remove(id);
            }
        }
        // No answer.
        mysql::COM_QUIT | mysql::COM_STMT_SEND_LONG_DATA => {}
        mysql::COM_STMT_FETCH | mysql::COM_FIELD_LIST => push(c, Cmd::Rows, sink),
        mysql::COM_STATISTICS => push(c, Cmd::Raw, sink),
        mysql::COM_CHANGE_USER => c.phase = Phase::Auth,
        mysql::COM_BINLOG_DUMP | mysql::COM_BINLOG_DUMP_GTID => c.phase = Phase::Ignored,
        _ => push(c, Cmd::Other, sink),
    }
}

/// The statement of the last prepare sent: one still waiting for its
/// answer, else the last one answered.
fn last_prepared(c: &mut Conn) -> Option<Arc<Statement>> {
    let waiting = c.pending.iter().rev().find_map(|cmd| match cmd {
        Cmd::Prepare { stmt } => Some(Arc::clone(stmt)),
        _ => None,
    });
    waiting.or_else(|| c.prepared.get(&answers::LAST_PREPARED))
}

/// Records `stmt` as ended at `ts_ns` with `outcome`.
fn record(
    c: &Conn,
    stmt: &Arc<Statement>,
    outcome: Outcome,
    start_ns: u64,
    ts_ns: u64,
    sink: &mut impl StatementSink,
) {
    sink.statement(&c.peer, c.system, stmt, outcome, (start_ns, ts_ns));
}
