//! The PostgreSQL fuzz target: SQL normalising and a conversation of
//! arbitrary pieces through the framing and pairing.

use std::sync::Arc;

use crate::{
    protocols::sql::{self, MAX_TEXT, Statement},
    streams::{
        pairing::{Event, Flow, Origin, Unpaired},
        postgres::{MAX_PENDING, Outcome, StatementSink, Tracker},
        resp::Peer,
        sql::System,
    },
};

#[derive(Default)]
struct Count {
    statements: usize,
    unpaired: usize,
}

impl StatementSink for Count {
    fn statement(&mut self, _: &Peer, _: System, stmt: &Arc<Statement>, _: Outcome, _: (u64, u64)) {
        assert!(stmt.text.len() <= MAX_TEXT + '…'.len_utf8());
        self.statements += 1;
    }
    fn statement_unpaired(&mut self, _: &Peer, _: System, _: Unpaired) {
        self.unpaired += 1;
    }
}

const PEER: Peer = Peer {
    origin: Origin::Socket {
        netns: 1,
        port: 5432,
    },
    port: 5432,
    server: None,
};

/// Never a panic. A normalised text is bounded, keeps no digit of a
/// number the input wrote outside words (so no literal leaks), and the
/// statements a conversation yields are bounded by the bytes it carried.
/// The input: pieces, each a length byte (its top bit: the server's) and
/// that many bytes, the first piece a startup message.
pub fn postgres(data: &[u8]) {
    let s = sql::normalise(data, false);
    assert!(s.text.len() <= MAX_TEXT + '…'.len_utf8());
    if !data.contains(&b'"') && !data.contains(&b'`') {
        assert_no_number(&s.text);
    }
    let _ = sql::statements(data);

    let mut tracker = Tracker::new(2);
    let mut count = Count::default();
    let mut rest = data;
    let mut ts = 0;
    let mut pieces: Vec<(bool, Vec<u8>)> = vec![(false, startup())];
    while let Some((&head, tail)) = rest.split_first() {
        let n = usize::from(head & 0x7f).min(tail.len());
        pieces.push((head & 0x80 != 0, tail[..n].to_vec()));
        rest = &tail[n..];
    }
    let carried: usize = pieces.iter().map(|p| p.1.len()).sum();
    for (server, bytes) in &pieces {
        ts += 1;
        let ev = Event {
            kind: if *server {
                Flow::FromServer
            } else {
                Flow::ToServer
            },
            ts_ns: ts,
            conn: 1,
            origin: PEER.origin,
            port: 5432,
            // Every fourth piece claims more than was captured.
            ret: (bytes.len() + if ts % 4 == 0 { 3000 } else { 0 }) as i64,
            data: bytes,
            tail: &[],
            seq: None,
            tid: 0,
        };
        if !tracker.has(1) {
            tracker.open(&ev, PEER, ts % 2 == 0, &mut count);
        }
        tracker.handle(&ev, &mut count);
        assert!(count.statements <= carried + MAX_PENDING);
    }
    tracker.close(1, &mut count);
    assert_eq!(tracker.connections(), 0);
}

/// A StartupMessage for user `u`.
fn startup() -> Vec<u8> {
    let body = b"\0\x03\0\0user\0u\0\0";
    let mut m = (body.len() as u32 + 4).to_be_bytes().to_vec();
    m.extend_from_slice(body);
    m
}

/// Every digit of a normalised text is a placeholder's or a word's (an
/// identifier such as `t1`): no number of the input is left.
pub(super) fn assert_no_number(text: &str) {
    let mut owned = false;
    for &b in text.as_bytes() {
        if b.is_ascii_digit() {
            assert!(owned, "a number left in {text:?}");
        } else {
            owned = b == b'$' || b == b'_' || b.is_ascii_alphabetic() || b >= 0x80;
        }
    }
}
