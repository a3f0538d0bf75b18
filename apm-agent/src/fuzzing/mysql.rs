//! The MySQL fuzz target: SQL normalising in MySQL's dialect and a
//! conversation of arbitrary pieces through the framing and pairing.

use std::sync::Arc;

use crate::{
    protocols::sql::{self, Dialect, MAX_TEXT, Statement},
    streams::{
        mysql::{MAX_PENDING, Tracker},
        pairing::{Event, Flow, Origin, Unpaired},
        resp::Peer,
        sql::{Outcome, StatementSink, System},
    },
};

#[derive(Default)]
struct Count {
    statements: usize,
}

impl StatementSink for Count {
    fn statement(&mut self, _: &Peer, s: System, stmt: &Arc<Statement>, _: Outcome, _: (u64, u64)) {
        assert_ne!(s, System::Postgres);
        assert!(stmt.text.len() <= MAX_TEXT + '…'.len_utf8());
        self.statements += 1;
    }
    fn statement_unpaired(&mut self, _: &Peer, _: System, _: Unpaired) {}
}

const PEER: Peer = Peer {
    origin: Origin::Socket {
        netns: 1,
        port: 3306,
    },
    port: 3306,
    server: None,
};

/// Never a panic. A normalised text is bounded and keeps no digit of a
/// number or a string's content the input wrote outside words and
/// backticks; the statements a conversation yields are bounded by the
/// bytes it carried. The input: pieces, each a length byte (its top bit:
/// the server's) and that many bytes; the first is a greeting unless the
/// input's length is odd (a connection joined at a command).
pub fn mysql(data: &[u8]) {
    let s = sql::normalise_in(Dialect::Mysql, data, false);
    assert!(s.text.len() <= MAX_TEXT + '…'.len_utf8());
    if !data.contains(&b'`') {
        super::postgres::assert_no_number(&s.text);
    }
    let _ = sql::statements_in(Dialect::Mysql, data);

    let mut tracker = Tracker::new(2);
    let mut count = Count::default();
    let joined = data.len() % 2 == 1;
    let mut pieces: Vec<(bool, Vec<u8>)> = Vec::new();
    if !joined {
        pieces.push((true, greeting()));
    }
    let mut rest = data;
    while let Some((&head, tail)) = rest.split_first() {
        let n = usize::from(head & 0x7f).min(tail.len());
        pieces.push((head & 0x80 != 0, tail[..n].to_vec()));
        rest = &tail[n..];
    }
    let carried: usize = pieces.iter().map(|p| p.1.len()).sum();
    for (ts, (server, bytes)) in (1u64..).zip(&pieces) {
        let ev = Event {
            kind: if *server {
                Flow::FromServer
            } else {
                Flow::ToServer
            },
            ts_ns: ts,
            conn: 1,
            origin: PEER.origin,
            port: 3306,
            // Every fourth piece claims more than was captured.
            ret: (bytes.len() + if ts % 4 == 0 { 3000 } else { 0 }) as i64,
            data: bytes,
            tail: bytes.get(bytes.len().saturating_sub(8)..).unwrap_or(&[]),
            seq: None,
            tid: 0,
        };
        if !tracker.has(1) {
            tracker.open(&ev, PEER, joined, &mut count);
        }
        tracker.handle(&ev, &mut count);
        assert!(count.statements <= carried + MAX_PENDING);
    }
    tracker.close(1, &mut count);
    assert_eq!(tracker.connections(), 0);
}

/// A MariaDB greeting.
fn greeting() -> Vec<u8> {
    let mut g =
        b"\x0a5.5.5-10.11.6-MariaDB\0\x07\0\0\0abcdefgh\0\xfe\xf7\x08\x02\0\xff\x81\x15".to_vec();
    g.extend_from_slice(&[0; 10]);
    g.extend_from_slice(b"ijklmnopqrst\0mysql_native_password\0");
    let len = g.len() as u32;
    let mut p = len.to_le_bytes()[..3].to_vec();
    p.push(0);
    p.extend(g);
    p
}
