//! `Upgrade: h2c`: a request answered `101 Switching Protocols` whose
//! connection speaks HTTP/2 from the end of that head on. The request is
//! its stream 1, answered over HTTP/2; the HTTP/1 pairing hands it over.

use std::sync::Arc;

use super::{Current, SeqAt, Tracker};
use crate::protocols::http::{Method, TraceParent};

/// The upgraded request, and where HTTP/2 starts in the piece that
/// carried the 101's head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgraded {
    pub method: Method,
    pub route: Arc<str>,
    pub start_ns: u64,
    pub seq: Option<SeqAt>,
    pub trace: Option<TraceParent>,
    /// Offset of the first HTTP/2 byte in that piece.
    pub at: usize,
}

impl Upgraded {
    pub(super) fn of(cur: Current, at: usize) -> Box<Self> {
        let r = cur.request;
        Box::new(Self {
            method: r.method,
            route: r.route,
            start_ns: r.start_ns,
            seq: r.seq,
            trace: r.trace,
            at,
        })
    }
}

impl Tracker {
    /// Connection `conn` if its last piece switched it to HTTP/2: it
    /// leaves the HTTP/1 pairing.
    pub fn take_upgrade(&mut self, conn: u64) -> Option<Box<Upgraded>> {
        self.conns.peek(conn)?.upgraded.as_ref()?;
        self.conns.remove(conn)?.upgraded
    }
}
