//! What the SQL pairings share: how a statement ended, where it goes, and
//! the names (prepared statements, portals) a connection remembers.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::{
    pairing::Unpaired,
    resp::Peer,
    table::{EVICTABLE_NS, Full, LastSeen, Table},
};
use crate::protocols::sql::Statement;

/// The database a statement ran on (`db_system_name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum System {
    Postgres,
    Mysql,
    /// A MySQL-protocol server whose greeting says MariaDB.
    Mariadb,
}

impl System {
    pub const ALL: [System; 3] = [System::Postgres, System::Mysql, System::Mariadb];

    /// OpenTelemetry's `db.system.name`.
    pub const fn label(self) -> &'static str {
        match self {
            System::Postgres => "postgresql",
            System::Mysql => "mysql",
            System::Mariadb => "mariadb",
        }
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// An error, with its code when it carried one: PostgreSQL's
    /// SQLSTATE, or MySQL's error number in decimal (NUL-padded).
    Error(Option<[u8; 5]>),
    /// Ended while the answer's framing was lost: not known.
    Unknown,
}

/// Where SQL pairing results go.
pub trait StatementSink {
    /// A statement answered: when its first byte went and its answer
    /// ended (kernel clock).
    fn statement(
        &mut self,
        peer: &Peer,
        system: System,
        stmt: &Arc<Statement>,
        outcome: Outcome,
        at: (u64, u64),
    );
    fn statement_unpaired(&mut self, peer: &Peer, system: System, reason: Unpaired);
    /// The thread that last sent on the client connection whose event
    /// comes next (0: not known), for the calls that event completes.
    fn calling_thread(&mut self, _tid: u32) {}
}

/// A SQL connection whose waiting operations count as unpaired when it
/// goes.
pub trait Waiting: LastSeen {
    fn peer(&self) -> &Peer;
    fn system(&self) -> System;
    /// Operations (statements) waiting for their ends.
    fn waiting(&self) -> usize;
}

/// Counts what waits on `c` as unpaired for `reason`.
pub fn finish(c: &impl Waiting, sink: &mut impl StatementSink, reason: Unpaired) {
    for _ in 0..c.waiting() {
        sink.statement_unpaired(c.peer(), c.system(), reason);
    }
}

/// A SQL pairing's connections, bounded: one that goes (closed, idle,
/// evicted for a newer one) counts what waited on it.
pub struct Conns<C>(Table<C>);

impl<C: Waiting> Conns<C> {
    pub fn new(max: usize) -> Self {
        Self(Table::new(max))
    }

    /// Follows `c` as connection `conn`; false (counted `table_full`)
    /// when the table is full of connections seen in the last second.
    pub fn open(&mut self, conn: u64, c: C, ts_ns: u64, sink: &mut impl StatementSink) -> bool {
        let (peer, system) = (*c.peer(), c.system());
        match self.0.insert(conn, c, ts_ns, EVICTABLE_NS) {
            Ok(evicted) => {
                if let Some(old) = evicted {
                    finish(&old, sink, Unpaired::Evicted);
                }
                true
            }
            Err(Full) => {
                sink.statement_unpaired(&peer, system, Unpaired::TableFull);
                false
            }
        }
    }

    /// The connection ended.
    pub fn close(&mut self, conn: u64, sink: &mut impl StatementSink) {
        if let Some(c) = self.0.remove(conn) {
            finish(&c, sink, Unpaired::ClosedMidRequest);
        }
    }

    /// Forgets connections idle for longer than `idle_ns`.
    pub fn sweep(&mut self, now_ns: u64, idle_ns: u64, sink: &mut impl StatementSink) {
        for c in self.0.sweep(now_ns, idle_ns) {
            finish(&c, sink, Unpaired::Evicted);
        }
    }
}

impl<C> std::ops::Deref for Conns<C> {
    type Target = Table<C>;
    fn deref(&self) -> &Table<C> {
        &self.0
    }
}

impl<C> std::ops::DerefMut for Conns<C> {
    fn deref_mut(&mut self) -> &mut Table<C> {
        &mut self.0
    }
}

/// The statement of an Execute whose statement is not known (prepared
/// before the capture saw the connection).
pub fn unknown_statement() -> Arc<Statement> {
    Arc::new(Statement {
        text: "(unknown prepared statement)".into(),
        operation: "UNKNOWN",
        ..Statement::default()
    })
}

/// Prepared statements and portals remembered per connection; past it
/// the least recently used is forgotten (an Execute of it is of an
/// unknown statement).
pub const MAX_NAMES: usize = 256;
/// PostgreSQL compares names up to NAMEDATALEN - 1 bytes (MySQL's
/// statement ids are 4).
const NAME_LEN: usize = 63;

/// A name as the server compares it.
pub fn name(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.len().min(NAME_LEN)]
}

/// Name → statement, at most [`MAX_NAMES`].
#[derive(Default)]
pub struct Names {
    map: FxHashMap<Vec<u8>, (Arc<Statement>, u64)>,
    clock: u64,
}

impl Names {
    pub fn insert(&mut self, key: &[u8], stmt: Arc<Statement>) {
        let key = name(key);
        if self.map.len() >= MAX_NAMES && !self.map.contains_key(key) {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.map.remove(&oldest);
            }
        }
        self.clock += 1;
        self.map.insert(key.to_vec(), (stmt, self.clock));
    }

    /// The statement `key` stands for, now the most recently used.
    pub fn get(&mut self, key: &[u8]) -> Option<Arc<Statement>> {
        self.clock += 1;
        let (stmt, used) = self.map.get_mut(name(key))?;
        *used = self.clock;
        Some(Arc::clone(stmt))
    }

    pub fn remove(&mut self, key: &[u8]) {
        self.map.remove(name(key));
    }
}
