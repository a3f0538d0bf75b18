//! The server's side of a MySQL connection: its greeting, authentication,
//! and the answers that end the commands waiting, in order.

use std::sync::Arc;

use super::{Cmd, Conn, Phase, record};
use crate::{
    protocols::mysql::{self, CURSOR_EXISTS, Framer, KEEP_BACK, MORE_RESULTS, Packet, lenenc},
    streams::{
        pairing::{Event, Unpaired},
        sql::{Outcome, StatementSink, System},
    },
};

/// The id the statement prepared last is also remembered under (MariaDB's
/// Execute of id 0xffffffff).
pub(super) const LAST_PREPARED: [u8; 4] = [0xff; 4];

/// Where the server is in the answer to the command at the queue's head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reading {
    /// Its first packet is next.
    Start,
    /// Its framing was lost in its middle.
    Lost,
    /// A result set's column definitions: `left` to go.
    Defs {
        left: u64,
    },
    /// After them: an EOF (when the convention has one), or the rows.
    AfterDefs,
    Rows,
    /// A LOCAL INFILE request was answered with the file: its OK or ERR.
    Infile,
    /// A prepare's parameter then column definitions: `left` of this
    /// group, `next` of the one after; `eof`: an EOF may come now.
    Prepared {
        left: u64,
        next: u64,
        eof: bool,
    },
}

pub(super) fn on_back(c: &mut Conn, ev: &Event<'_>, total: usize, sink: &mut impl StatementSink) {
    if c.back.is_lost() {
        // Joined, or after an answer whose framing was lost: the next
        // answer starts a piece. An answer lost in its middle ends with
        // its last bytes, or when the client sends its next command.
        let resume = c.reading != Reading::Lost
            && !c.pending.is_empty()
            && mysql::starts_like_answer(ev.data, total);
        if !resume {
            if c.reading == Reading::Lost && ends_result(ev, total) {
                end_at(c, ev.ts_ns, sink);
            }
            c.last_back_ns = ev.ts_ns;
            return;
        }
        c.back.resume();
    }
    c.last_back_ns = ev.ts_ns;
    // Each packet goes straight to the pairing, which never touches the
    // server's framer: lent out meanwhile (and lost by the pairing when
    // an answer makes no sense).
    let mut back = std::mem::replace(&mut c.back, Framer::new(KEEP_BACK));
    let framed = back.feed(ev.data, total, |p| on_packet(c, &p, ev.ts_ns, sink));
    if !c.back.is_lost() {
        if c.phase != Phase::Handshake {
            back.set_keep(KEEP_BACK);
        }
        c.back = back;
    }
    if framed.is_err() {
        if ends_result(ev, total) {
            end_at(c, ev.ts_ns, sink);
        } else if !c.pending.is_empty() {
            c.reading = Reading::Lost;
        }
    }
}

/// The answer whose framing was lost ended by the last piece seen (the
/// client sent its next command).
pub(super) fn end_lost(c: &mut Conn, sink: &mut impl StatementSink) {
    if c.reading == Reading::Lost {
        let ts_ns = c.last_back_ns;
        end_at(c, ts_ns, sink);
    }
}

/// Ends the command at the head, its outcome not known; the server's
/// framing resumes at a piece that starts like an answer.
fn end_at(c: &mut Conn, ts_ns: u64, sink: &mut impl StatementSink) {
    if !c.pending.is_empty() {
        command_end(c, Outcome::Unknown, ts_ns, sink);
    }
    c.reading = Reading::Start;
    c.back = Framer::lost(KEEP_BACK);
}

/// Whether a piece's last bytes are an EOF, or an OK that ends a result
/// set, with no more results to follow: classic `05 00 00 seq fe w w s s`
/// (the last 8 bytes of it), or `07 00 00 seq fe 00 00 s s w w`.
fn ends_result(ev: &Event<'_>, total: usize) -> bool {
    let end = if ev.data.len() >= total {
        ev.data
    } else {
        ev.tail
    };
    let Some(t) = end.last_chunk::<8>() else {
        return false;
    };
    let (status, shaped) = if t[0] == 0 && t[1] == 0 && t[3] == 0xfe {
        (u16::from_le_bytes([t[6], t[7]]), true)
    } else if t[1] == 0xfe && t[2] == 0 && t[3] == 0 {
        (u16::from_le_bytes([t[4], t[5]]), true)
    } else {
        (0, false)
    };
    shaped && status & MORE_RESULTS == 0
}

fn on_packet(c: &mut Conn, p: &Packet<'_>, ts_ns: u64, sink: &mut impl StatementSink) {
    match c.phase {
        Phase::Handshake => greeting(c, p),
        Phase::Auth => match p.first() {
            Some(0x00) => c.phase = Phase::Command,
            // Refused: the connection ends.
            Some(0xff) => c.phase = Phase::Ignored,
            _ => {}
        },
        Phase::Command => answer(c, p, ts_ns, sink),
        Phase::Encrypted | Phase::Ignored => {}
    }
}

fn greeting(c: &mut Conn, p: &Packet<'_>) {
    if p.seq != 0 {
        return;
    }
    match mysql::greeting(p.body) {
        Some(g) => {
            c.system = if g.mariadb {
                System::Mariadb
            } else {
                System::Mysql
            };
            c.known = true;
            c.server_caps = Some(g.capabilities);
        }
        // An ERR instead (too many connections, host not allowed).
        None => c.phase = Phase::Ignored,
    }
    c.back.set_keep(KEEP_BACK);
}

fn answer(c: &mut Conn, p: &Packet<'_>, ts_ns: u64, sink: &mut impl StatementSink) {
    // The pairing lost the place earlier in this piece: the rest waits.
    if c.back.is_lost() {
        return;
    }
    let first = p.first().unwrap_or(0);
    // The EOF a prepare's answer may still have had.
    if let Some(seq) = c.maybe_eof.take()
        && seq == p.seq
        && first == 0xfe
        && p.len == 5
    {
        c.eof_after_defs = Some(true);
        return;
    }
    // MariaDB's progress reports come before the answer.
    if p.is_progress() {
        return;
    }
    let Some(head) = c.pending.front() else {
        // Nothing waits: an answer to a command the capture did not see,
        // counted once; framed again at the next answer's start.
        sink.statement_unpaired(&c.peer, c.system, Unpaired::ResponseWithoutRequest);
        c.back.lose();
        return;
    };
    match c.reading {
        Reading::Start => match head {
            Cmd::Raw => command_end(c, Outcome::Ok, ts_ns, sink),
            Cmd::Rows => {
                c.reading = Reading::Rows;
                row(c, p, first, ts_ns, sink);
            }
            Cmd::Prepare { .. } if first == 0x00 && p.len >= 12 && p.body.len() >= 9 => {
                prepared(c, p, ts_ns, sink);
            }
            _ => first_packet(c, p, first, ts_ns, sink),
        },
        Reading::Defs { left } => {
            c.reading = if left > 1 {
                Reading::Defs { left: left - 1 }
            } else {
                Reading::AfterDefs
            };
        }
        Reading::AfterDefs => {
            if first == 0xfe && p.len == 5 {
                c.eof_after_defs = Some(true);
                let cursor = matches!(head, Cmd::Execute { cursor: true, .. });
                if cursor && p.status() & CURSOR_EXISTS != 0 {
                    command_end(c, Outcome::Ok, ts_ns, sink);
                } else {
                    c.reading = Reading::Rows;
                }
                return;
            }
            if c.eof_after_defs.is_none() {
                c.eof_after_defs = Some(false);
            }
            c.reading = Reading::Rows;
            row(c, p, first, ts_ns, sink);
        }
        Reading::Rows => row(c, p, first, ts_ns, sink),
        // Not framed while lost.
        Reading::Lost => {}
        Reading::Infile => match first {
            0xff => command_end(c, error(p), ts_ns, sink),
            _ => result_end(c, p.status(), true, ts_ns, sink),
        },
        Reading::Prepared { left, next, eof } => prepared_def(c, p, (left, next, eof), ts_ns, sink),
    }
}

/// The first packet of an answer.
fn first_packet(
    c: &mut Conn,
    p: &Packet<'_>,
    first: u8,
    ts_ns: u64,
    sink: &mut impl StatementSink,
) {
    match first {
        0x00 if p.len >= 7 => result_end(c, p.status(), true, ts_ns, sink),
        0xff => command_end(c, error(p), ts_ns, sink),
        // An EOF answers COM_SET_OPTION and COM_DEBUG.
        0xfe if p.len < 9 => result_end(c, p.status(), false, ts_ns, sink),
        0xfb => {
            c.reading = Reading::Infile;
            c.infile = true;
        }
        _ => match lenenc(p.body) {
            // MariaDB's cached metadata: a flag 0 after the count, and
            // no definitions (their EOF all the same, in the classic
            // convention).
            Some((_, n)) if p.body.get(n) == Some(&0) => c.reading = Reading::AfterDefs,
            Some((count, _)) if count > 0 => c.reading = Reading::Defs { left: count },
            _ => {
                sink.statement_unpaired(&c.peer, c.system, Unpaired::Malformed);
                c.back.lose();
                c.reading = Reading::Lost;
            }
        },
    }
}

/// A packet among a result set's rows: an ERR or the end ends it.
fn row(c: &mut Conn, p: &Packet<'_>, first: u8, ts_ns: u64, sink: &mut impl StatementSink) {
    if first == 0xff {
        command_end(c, error(p), ts_ns, sink);
    } else if p.is_eof() {
        result_end(c, p.status(), false, ts_ns, sink);
    }
}

fn error(p: &Packet<'_>) -> Outcome {
    Outcome::Error(p.error_code())
}

/// A prepare's answer (PREPARE_OK): the id its statement is known by,
/// then its parameter and column definitions.
fn prepared(c: &mut Conn, p: &Packet<'_>, ts_ns: u64, sink: &mut impl StatementSink) {
    let b = p.body;
    let id = [b[1], b[2], b[3], b[4]];
    let columns = u64::from(u16::from_le_bytes([b[5], b[6]]));
    let params = u64::from(u16::from_le_bytes([b[7], b[8]]));
    if let Some(Cmd::Prepare { stmt }) = c.pending.front() {
        let stmt = Arc::clone(stmt);
        c.prepared.insert(&id, Arc::clone(&stmt));
        c.prepared.insert(&LAST_PREPARED, stmt);
    }
    let (left, next) = if params > 0 {
        (params, columns)
    } else {
        (columns, 0)
    };
    if left == 0 {
        command_end(c, Outcome::Ok, ts_ns, sink);
    } else {
        c.reading = Reading::Prepared {
            left,
            next,
            eof: false,
        };
    }
}

/// A packet of a prepare's definitions, or the EOF after a group of them.
fn prepared_def(
    c: &mut Conn,
    p: &Packet<'_>,
    (mut left, mut next, eof): (u64, u64, bool),
    ts_ns: u64,
    sink: &mut impl StatementSink,
) {
    if eof && p.first() == Some(0xfe) && p.len == 5 {
        c.eof_after_defs = Some(true);
        if left == 0 && next == 0 {
            command_end(c, Outcome::Ok, ts_ns, sink);
        } else {
            c.reading = Reading::Prepared {
                left,
                next,
                eof: false,
            };
        }
        return;
    }
    if eof && c.eof_after_defs.is_none() {
        c.eof_after_defs = Some(false);
    }
    if left == 0 {
        (left, next) = (next, 0);
    }
    left = left.saturating_sub(1);
    if left > 0 {
        c.reading = Reading::Prepared {
            left,
            next,
            eof: false,
        };
        return;
    }
    // A group ended: an EOF follows it in the classic convention.
    match (c.eof_after_defs, next) {
        (Some(false), 0) => command_end(c, Outcome::Ok, ts_ns, sink),
        (None, 0) => {
            command_end(c, Outcome::Ok, ts_ns, sink);
            c.maybe_eof = Some(p.seq.wrapping_add(1));
        }
        (Some(false), _) => {
            c.reading = Reading::Prepared {
                left: 0,
                next,
                eof: false,
            }
        }
        _ => {
            c.reading = Reading::Prepared {
                left: 0,
                next,
                eof: true,
            }
        }
    }
}

/// A result ended with `status` (`plain_ok`: by an OK, not the end of
/// rows): another may follow (multi-statements, a procedure's results),
/// else the command is over.
fn result_end(
    c: &mut Conn,
    status: u16,
    plain_ok: bool,
    ts_ns: u64,
    sink: &mut impl StatementSink,
) {
    if status & MORE_RESULTS == 0 {
        command_end(c, Outcome::Ok, ts_ns, sink);
        return;
    }
    c.reading = Reading::Start;
    // Each result ends a statement, but a CALL's result sets: its own OK
    // ends it.
    let ended = match c.pending.front_mut() {
        Some(Cmd::Query { stmts, start_ns })
            if stmts.len() > 1
                && (plain_ok || stmts.front().is_none_or(|s| s.operation != "CALL")) =>
        {
            stmts
                .pop_front()
                .map(|stmt| (stmt, std::mem::replace(start_ns, ts_ns)))
        }
        _ => None,
    };
    if let Some((stmt, start_ns)) = ended {
        record(c, &stmt, Outcome::Ok, start_ns, ts_ns, sink);
    }
}

/// The command at the head is answered: its statements end with
/// `outcome` (after an error, the rest of a query never ran).
pub(super) fn command_end(
    c: &mut Conn,
    outcome: Outcome,
    ts_ns: u64,
    sink: &mut impl StatementSink,
) {
    c.reading = Reading::Start;
    match c.pending.front_mut() {
        Some(Cmd::Skip(n)) if *n > 1 => *n -= 1,
        _ => match c.pending.pop_front() {
            Some(Cmd::Query { stmts, start_ns }) => {
                let failed = matches!(outcome, Outcome::Error(_));
                let ran = if failed { 1 } else { stmts.len() };
                for stmt in stmts.iter().take(ran) {
                    record(c, stmt, outcome, start_ns, ts_ns, sink);
                }
            }
            Some(Cmd::Execute { stmt, start_ns, .. }) => {
                record(c, &stmt, outcome, start_ns, ts_ns, sink);
            }
            _ => {}
        },
    }
    // The next command cannot have started before.
    if let Some(Cmd::Query { start_ns, .. } | Cmd::Execute { start_ns, .. }) = c.pending.front_mut()
    {
        *start_ns = (*start_ns).max(ts_ns);
    }
}
