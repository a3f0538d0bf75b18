//! The server's side of a PostgreSQL connection: its answers end the
//! operations waiting, in order.

use super::{Conn, Op, Outcome, StatementSink, System, dropped, names::Suspended};
use crate::{
    protocols::postgres::{self, Framer, Side},
    streams::pairing::{Event, Unpaired},
};

/// What the pairing reads of an answer besides its type.
#[derive(Clone, Copy)]
struct Answer {
    kind: u8,
    /// The encryption answer's byte.
    code: u32,
    /// An ErrorResponse's SQLSTATE.
    state: Option<[u8; 5]>,
    /// ReadyForQuery's transaction status (`I`: idle, no transaction).
    status: u8,
}

pub(super) fn on_back(c: &mut Conn, ev: &Event<'_>, total: usize, sink: &mut impl StatementSink) {
    if !c.back.lost() {
        // Each answer goes straight to the pairing, which never touches
        // the server's framer: lent out meanwhile.
        let mut back = std::mem::replace(&mut c.back, Framer::new(Side::Back));
        let framed = back.feed(ev.data, total, |m| {
            let a = Answer {
                kind: m.kind,
                code: m.code,
                state: (m.kind == b'E')
                    .then(|| postgres::sqlstate(m.body))
                    .flatten(),
                status: if m.kind == b'Z' {
                    m.body.first().copied().unwrap_or(0)
                } else {
                    0
                },
            };
            on_answer(c, a, ev.ts_ns, sink);
        });
        c.back = back;
        if framed.is_ok() {
            return;
        }
    }
    // Lost in a long answer: it ends with a piece whose last bytes are a
    // ReadyForQuery (this one's, maybe), and the next piece starts anew.
    // The operations up to the first Sync end there, their outcome not
    // known; any queued behind cannot be told apart any more.
    let end = if ev.data.len() >= total {
        ev.data
    } else {
        ev.tail
    };
    if end.len() < 6 || !postgres::is_ready(&end[end.len() - 6..]) {
        return;
    }
    while let Some(op) = c.pending.pop_front() {
        match op {
            Op::Sync { .. } => break,
            Op::Skip(_) => {}
            Op::Run { stmt, start_ns, .. } => {
                let at = (start_ns, ev.ts_ns);
                sink.statement(&c.peer, System::Postgres, &stmt, Outcome::Unknown, at);
            }
        }
    }
    for _ in 0..super::runs(&c.pending) {
        sink.statement_unpaired(&c.peer, System::Postgres, Unpaired::Truncated);
    }
    c.pending.clear();
    c.back = Framer::new(Side::Back);
}

/// The operation at the head of the queue ended at `ts_ns`; recorded
/// unless it was empty or a placeholder. The next one cannot have
/// started before.
fn complete(
    c: &mut Conn,
    outcome: Outcome,
    ts_ns: u64,
    record: bool,
    sink: &mut impl StatementSink,
) {
    match c.pending.front_mut() {
        Some(Op::Skip(n)) if *n > 1 => *n -= 1,
        Some(Op::Skip(_)) => {
            c.pending.pop_front();
        }
        Some(Op::Run { .. }) => {
            if let Some(Op::Run { stmt, start_ns, .. }) = c.pending.pop_front()
                && record
            {
                sink.statement(&c.peer, System::Postgres, &stmt, outcome, (start_ns, ts_ns));
            }
        }
        // A statement of a simple query past what the capture saw of it:
        // counted, not timed.
        Some(Op::Sync { cut: true, .. }) if record => {
            sink.statement_unpaired(&c.peer, System::Postgres, Unpaired::Truncated);
            return;
        }
        Some(Op::Sync { .. }) | None => return,
    }
    started_by(c, ts_ns);
}

/// The operation now at the head cannot have started before `ts_ns`.
fn started_by(c: &mut Conn, ts_ns: u64) {
    if let Some(Op::Run { start_ns, .. }) = c.pending.front_mut() {
        *start_ns = (*start_ns).max(ts_ns);
    }
}

fn on_answer(c: &mut Conn, a: Answer, ts_ns: u64, sink: &mut impl StatementSink) {
    match a.kind {
        // The one-byte answer to an encryption request.
        0 if a.code == u32::from(b'N') => c.front.expect_startup(),
        0 => c.encrypted = true,
        b'C' => complete(c, Outcome::Ok, ts_ns, true, sink),
        b'I' => complete(c, Outcome::Ok, ts_ns, false, sink),
        b'E' => {
            complete(c, Outcome::Error(a.state), ts_ns, true, sink);
            // The server skips what follows, to the next Sync: those never
            // ran.
            while matches!(c.pending.front(), Some(Op::Run { .. } | Op::Skip(_))) {
                c.pending.pop_front();
            }
        }
        // A portal run to a row limit: it counts once, when it ends.
        b's' => {
            if let Some(Op::Run {
                portal: Some(_), ..
            }) = c.pending.front()
                && let Some(Op::Run {
                    stmt,
                    start_ns,
                    portal: Some(portal),
                }) = c.pending.pop_front()
            {
                let s = Suspended {
                    portal,
                    stmt,
                    start_ns,
                    answered_ns: ts_ns,
                };
                if let Some(gone) = c.suspended.suspend(s) {
                    dropped(c, &gone, sink);
                }
                started_by(c, ts_ns);
            }
        }
        // COPY FROM STDIN: the Syncs the client sent after its Execute are
        // read, and ignored, while the server copies in.
        b'G' => {
            if matches!(c.pending.front(), Some(Op::Run { .. })) {
                while matches!(c.pending.get(1), Some(Op::Sync { explicit: true, .. })) {
                    c.pending.remove(1);
                }
            }
            c.copy_in = true;
        }
        b'Z' => {
            while let Some(op) = c.pending.pop_front() {
                match op {
                    Op::Sync { .. } => break,
                    Op::Skip(_) => {}
                    Op::Run { .. } => {
                        sink.statement_unpaired(&c.peer, System::Postgres, Unpaired::Malformed)
                    }
                }
            }
            // Out of any transaction: its portals are gone.
            if a.status == b'I' && !c.suspended.is_empty() {
                let ended: Vec<Suspended> = c.suspended.drain().collect();
                for s in &ended {
                    dropped(c, s, sink);
                }
            }
            started_by(c, ts_ns);
        }
        _ => {}
    }
}
