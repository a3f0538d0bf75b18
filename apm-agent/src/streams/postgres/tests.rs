use super::*;
use crate::{
    protocols::postgres::tests::{msg, startup},
    streams::pairing::Origin,
};

#[derive(Default)]
struct Rec {
    done: Vec<(String, Outcome, u64)>,
    unpaired: Vec<Unpaired>,
}

impl StatementSink for Rec {
    fn statement(
        &mut self,
        _: &Peer,
        _: System,
        stmt: &Arc<Statement>,
        outcome: Outcome,
        d: (u64, u64),
    ) {
        self.done
            .push((stmt.text.clone(), outcome, d.1.saturating_sub(d.0)));
    }
    fn statement_unpaired(&mut self, _: &Peer, _: System, reason: Unpaired) {
        self.unpaired.push(reason);
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

struct Conn1 {
    t: Tracker,
    r: Rec,
}

impl Conn1 {
    /// A connection past its startup.
    fn new() -> Self {
        let mut c = Self {
            t: Tracker::new(16),
            r: Rec::default(),
        };
        c.front(0, &startup("bench"));
        let mut auth = msg(b'R', &[0, 0, 0, 0]);
        auth.extend(msg(b'S', b"server_version\x0016\0"));
        auth.extend(msg(b'K', &[0; 8]));
        auth.extend(ready());
        c.back(1, &auth);
        c
    }

    fn piece(&mut self, kind: Flow, ts: u64, data: &[u8], total: usize, tail: &[u8]) {
        let ev = Event {
            kind,
            ts_ns: ts,
            conn: 7,
            origin: PEER.origin,
            port: 5432,
            ret: total as i64,
            data,
            tail,
            seq: None,
            tid: 0,
        };
        if !self.t.has(7) {
            assert!(self.t.open(&ev, PEER, false, &mut self.r));
        }
        self.t.handle(&ev, &mut self.r);
    }

    fn front(&mut self, ts: u64, data: &[u8]) {
        self.piece(Flow::ToServer, ts, data, data.len(), &[]);
    }

    fn back(&mut self, ts: u64, data: &[u8]) {
        self.piece(Flow::FromServer, ts, data, data.len(), &[]);
    }

    fn texts(&self) -> Vec<&str> {
        self.r.done.iter().map(|d| d.0.as_str()).collect()
    }
}

/// Parse, Bind and Execute of an unnamed statement.
fn unnamed(sql: &str) -> Vec<u8> {
    let mut m = msg(b'P', format!("\0{sql}\0\0\0").as_bytes());
    m.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
    m.extend(msg(b'E', b"\0\0\0\0\0"));
    m
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn complete(tag: &str) -> Vec<u8> {
    msg(b'C', format!("{tag}\0").as_bytes())
}

fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', format!("{sql}\0").as_bytes())
}

fn error(state: &str) -> Vec<u8> {
    msg(b'E', format!("SERROR\0C{state}\0Mno\0\0").as_bytes())
}

#[test]
fn simple_queries_time_each_statement() {
    let mut c = Conn1::new();
    c.front(
        10,
        &query("BEGIN; UPDATE t SET a = a + 5 WHERE id = 7; SELECT 1"),
    );
    let mut answer = complete("BEGIN");
    answer.extend(complete("UPDATE 1"));
    c.back(30, &answer);
    let mut rest = msg(b'T', &[0; 20]);
    rest.extend(msg(b'D', &[0; 10]));
    rest.extend(complete("SELECT 1"));
    rest.extend(ready());
    c.back(45, &rest);
    assert_eq!(
        c.texts(),
        [
            "BEGIN",
            "UPDATE t SET a = a + $1 WHERE id = $2",
            "SELECT $1"
        ]
    );
    let took: Vec<u64> = c.r.done.iter().map(|d| d.2).collect();
    // The second statement starts when the first ends.
    assert_eq!(took, [20, 0, 15]);
    assert!(c.r.unpaired.is_empty());
}

#[test]
fn the_extended_protocol_pairs_executes_of_named_and_unnamed_statements() {
    let mut c = Conn1::new();
    // pgbench -M prepared: Parse once by name, then Bind/Execute/Sync.
    let mut batch = msg(b'P', b"P0_1\0UPDATE a SET b = b + $1 WHERE aid = $2\0\0\0");
    batch.extend(msg(b'B', b"\0P0_1\0\0\0\0\0\0\0"));
    batch.extend(msg(b'E', b"\0\0\0\0\0"));
    // And an unnamed one in the same pipeline.
    batch.extend(unnamed("SELECT x FROM y WHERE z = 'lit'"));
    batch.extend(msg(b'S', b""));
    c.front(100, &batch);
    let mut answer = msg(b'1', b"");
    answer.extend(msg(b'2', b""));
    answer.extend(complete("UPDATE 1"));
    c.back(140, &answer);
    let mut answer = msg(b'1', b"");
    answer.extend(msg(b'2', b""));
    answer.extend(msg(b'D', &[1; 30]));
    answer.extend(complete("SELECT 1"));
    answer.extend(ready());
    c.back(150, &answer);
    // Executed again by name: Bind/Execute/Sync only.
    let mut again = msg(b'B', b"\0P0_1\0\0\0\0\0\0\0");
    again.extend(msg(b'E', b"\0\0\0\0\0"));
    again.extend(msg(b'S', b""));
    c.front(200, &again);
    let mut answer = msg(b'2', b"");
    answer.extend(complete("UPDATE 1"));
    answer.extend(ready());
    c.back(230, &answer);
    assert_eq!(
        c.texts(),
        [
            "UPDATE a SET b = b + $1 WHERE aid = $2",
            "SELECT x FROM y WHERE z = $1",
            "UPDATE a SET b = b + $1 WHERE aid = $2",
        ]
    );
    let took: Vec<u64> = c.r.done.iter().map(|d| d.2).collect();
    assert_eq!(took, [40, 10, 30]);
}

#[test]
fn an_error_carries_its_sqlstate_and_skips_to_the_sync() {
    let mut c = Conn1::new();
    let mut batch = Vec::new();
    for sql in ["INSERT INTO u VALUES (1)", "SELECT 2"] {
        batch.extend(unnamed(sql));
    }
    batch.extend(msg(b'S', b""));
    c.front(10, &batch);
    let mut answer = msg(b'1', b"");
    answer.extend(msg(b'2', b""));
    answer.extend(error("23505"));
    answer.extend(ready());
    c.back(20, &answer);
    assert_eq!(c.r.done.len(), 1);
    assert_eq!(c.r.done[0].1, Outcome::Error(Some(*b"23505")));
    // The next query pairs as usual.
    c.front(30, &query("SELECT 3"));
    let mut answer = complete("SELECT 1");
    answer.extend(ready());
    c.back(35, &answer);
    assert_eq!(c.texts()[1], "SELECT $1");
    assert!(c.r.unpaired.is_empty(), "{:?}", c.r.unpaired);
}

#[test]
fn a_long_result_past_the_capture_ends_at_the_ready_in_its_tail() {
    let mut c = Conn1::new();
    c.front(10, &query("SELECT * FROM big"));
    let mut answer = msg(b'T', &[0; 20]);
    for _ in 0..100 {
        answer.extend(msg(b'D', &[7; 500]));
    }
    answer.extend(complete("SELECT 100"));
    answer.extend(ready());
    // 1 KiB captured, the last 8 bytes as the tail.
    let tail = &answer[answer.len() - 8..];
    c.piece(Flow::FromServer, 90, &answer[..1024], answer.len(), tail);
    assert_eq!(c.r.done.len(), 1);
    assert_eq!(c.r.done[0].1, Outcome::Unknown);
    assert_eq!(c.r.done[0].2, 80);
    // Framing resumes with the next answer.
    c.front(100, &query("SELECT 1"));
    let mut answer = complete("SELECT 1");
    answer.extend(ready());
    c.back(110, &answer);
    assert_eq!(c.r.done[1].1, Outcome::Ok);
}

#[test]
fn an_ssl_request_refused_is_followed_and_one_accepted_is_left_alone() {
    let mut refused = Conn1 {
        t: Tracker::new(4),
        r: Rec::default(),
    };
    let mut req = 8u32.to_be_bytes().to_vec();
    req.extend_from_slice(&postgres::SSL_REQUEST.to_be_bytes());
    refused.front(1, &req);
    refused.back(2, b"N");
    refused.front(3, &startup("u"));
    refused.back(4, &ready());
    refused.front(5, &query("SELECT 1"));
    let mut answer = complete("SELECT 1");
    answer.extend(ready());
    refused.back(6, &answer);
    assert_eq!(refused.texts(), ["SELECT $1"]);

    let mut accepted = Conn1 {
        t: Tracker::new(4),
        r: Rec::default(),
    };
    accepted.front(1, &req);
    accepted.back(2, b"S");
    // Ciphertext: neither parsed nor counted.
    accepted.front(3, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]);
    accepted.back(4, &[0x16, 0x03, 0x03, 0x00, 0x7a]);
    assert!(accepted.r.done.is_empty() && accepted.r.unpaired.is_empty());
    // The TLS capture's plaintext, under the same key, from its startup.
    accepted.front(5, &startup("u"));
    accepted.back(6, &ready());
    accepted.front(7, &query("SELECT 1"));
    accepted.back(8, &answer);
    assert_eq!(accepted.texts(), ["SELECT $1"]);
}

#[test]
fn messages_split_anywhere_pair_the_same() {
    let mut front = query("UPDATE t SET a = 1");
    front.extend(query("SELECT 2"));
    let mut back = complete("UPDATE 1");
    back.extend(ready());
    back.extend(complete("SELECT 1"));
    back.extend(ready());
    for cut in 1..front.len() {
        for back_cut in [1, 7, back.len() - 1] {
            let mut c = Conn1::new();
            c.front(10, &front[..cut]);
            c.front(11, &front[cut..]);
            c.back(20, &back[..back_cut]);
            c.back(21, &back[back_cut..]);
            assert_eq!(
                c.texts(),
                ["UPDATE t SET a = $1", "SELECT $1"],
                "{cut} {back_cut}"
            );
            assert!(c.r.unpaired.is_empty());
        }
    }
}

#[test]
fn a_gap_drops_what_waits_and_pairing_resumes() {
    let mut c = Conn1::new();
    c.front(10, &query("SELECT 1"));
    c.t.gap(7, &mut c.r);
    assert_eq!(c.r.unpaired, [Unpaired::Gap]);
    // The rest of the lost answer is not a message start: ignored.
    c.back(12, b"ECT 1\0");
    c.front(20, &query("SELECT 2"));
    let mut answer = complete("SELECT 1");
    answer.extend(ready());
    c.back(25, &answer);
    assert_eq!(c.texts(), ["SELECT $1"]);
}

#[test]
fn a_connection_older_than_the_capture_joins_at_its_next_request() {
    let mut c = Conn1 {
        t: Tracker::new(4),
        r: Rec::default(),
    };
    // The tail of an answer from before: ignored, not counted.
    let mut stale = complete("SELECT 1");
    stale.extend(ready());
    // A named statement prepared before the capture, executed now, then
    // a statement parsed now.
    let mut batch = msg(b'B', b"\0old\0\0\0\0\0\0\0");
    batch.extend(msg(b'E', b"\0\0\0\0\0"));
    batch.extend(unnamed("SELECT 7"));
    batch.extend(msg(b'S', b""));
    let first = ev(Flow::ToServer, 10, &batch);
    assert!(c.t.open(&first, PEER, true, &mut c.r));
    c.t.handle(&ev(Flow::FromServer, 5, &stale[2..]), &mut c.r);
    c.t.handle(&first, &mut c.r);
    let mut answer = msg(b'2', b"");
    answer.extend(complete("UPDATE 1"));
    answer.extend(msg(b'1', b""));
    answer.extend(msg(b'2', b""));
    answer.extend(complete("SELECT 1"));
    answer.extend(ready());
    c.t.handle(&ev(Flow::FromServer, 20, &answer), &mut c.r);
    assert_eq!(c.texts(), ["(unknown prepared statement)", "SELECT $1"]);
    assert!(c.r.unpaired.is_empty(), "{:?}", c.r.unpaired);
}

/// A whole piece of connection 7.
fn ev(kind: Flow, ts: u64, data: &[u8]) -> Event<'_> {
    Event {
        kind,
        ts_ns: ts,
        conn: 7,
        origin: PEER.origin,
        port: 5432,
        ret: data.len() as i64,
        data,
        tail: &[],
        seq: None,
        tid: 0,
    }
}

#[test]
fn a_portal_run_to_a_row_limit_counts_once_when_it_ends() {
    let mut c = Conn1::new();
    // asyncpg's fetchrow: Execute with a limit of 1, answered by a row and
    // PortalSuspended; the implicit transaction ends at the Sync.
    let mut batch = msg(b'B', b"\0s1\0\0\0\0\0\0\0");
    batch.extend(msg(b'E', b"\0\0\0\0\x01"));
    batch.extend(msg(b'S', b""));
    c.front(1, &msg(b'P', b"s1\0SELECT a FROM t WHERE id = $1\0\0\0"));
    c.front(10, &batch);
    let mut answer = msg(b'2', b"");
    answer.extend(msg(b'D', &[0; 10]));
    answer.extend(msg(b's', b""));
    answer.extend(ready());
    c.back(14, &answer);
    assert_eq!(c.texts(), ["SELECT a FROM t WHERE id = $1"]);
    assert_eq!(c.r.done[0].2, 4);
    // A cursor in a transaction: two Executes of a named portal, then
    // its end; one operation, from its first Execute.
    c.front(20, &query("BEGIN"));
    let mut answer = complete("BEGIN");
    answer.extend(msg(b'Z', b"T"));
    c.back(21, &answer);
    let mut first = msg(b'B', b"cur\0s1\0\0\0\0\0\0\0");
    first.extend(msg(b'E', b"cur\0\0\0\0\x05"));
    first.extend(msg(b'S', b""));
    c.front(30, &first);
    let mut answer = msg(b'2', b"");
    answer.extend(msg(b's', b""));
    answer.extend(msg(b'Z', b"T"));
    c.back(31, &answer);
    let mut rest = msg(b'E', b"cur\0\0\0\0\x05");
    rest.extend(msg(b'S', b""));
    c.front(40, &rest);
    let mut answer = complete("SELECT 7");
    answer.extend(msg(b'Z', b"T"));
    c.back(45, &answer);
    assert_eq!(c.texts().len(), 3);
    assert_eq!(c.r.done[2].0, "SELECT a FROM t WHERE id = $1");
    assert_eq!(c.r.done[2].2, 15);
    assert!(c.r.unpaired.is_empty(), "{:?}", c.r.unpaired);
}

#[test]
fn copy_from_stdin_over_the_extended_protocol_keeps_the_order() {
    let mut c = Conn1::new();
    let mut batch = unnamed("COPY t FROM STDIN");
    batch.extend(msg(b'S', b""));
    c.front(10, &batch);
    let mut answer = msg(b'1', b"");
    answer.extend(msg(b'2', b""));
    answer.extend(msg(b'G', &[0, 0, 0]));
    c.back(11, &answer);
    // The data, its end and a Sync; the server ignored the first Sync.
    let mut data = msg(b'd', b"1\tx\n");
    data.extend(msg(b'c', b""));
    data.extend(msg(b'S', b""));
    c.front(12, &data);
    let mut answer = complete("COPY 1");
    answer.extend(ready());
    c.back(13, &answer);
    // The next statement pairs with its own answer.
    c.front(20, &query("SELECT 1"));
    let mut answer = complete("SELECT 1");
    answer.extend(ready());
    c.back(26, &answer);
    assert_eq!(c.texts(), ["COPY t FROM STDIN", "SELECT $1"]);
    assert_eq!(c.r.done[1].2, 6);
    assert!(c.r.unpaired.is_empty(), "{:?}", c.r.unpaired);
}

#[test]
fn a_pipeline_longer_than_the_queue_pairs_what_it_queued() {
    let mut c = Conn1::new();
    let n = MAX_PENDING + 10;
    let mut batch = Vec::new();
    for _ in 0..n {
        batch.extend(msg(b'P', b"\0SELECT 1\0\0\0"));
        batch.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
        batch.extend(msg(b'E', b"\0\0\0\0\0"));
    }
    batch.extend(msg(b'S', b""));
    c.front(10, &batch);
    let mut answer = Vec::new();
    for _ in 0..n {
        answer.extend(complete("SELECT 1"));
    }
    answer.extend(ready());
    c.back(20, &answer);
    assert_eq!(c.r.done.len(), MAX_PENDING);
    assert_eq!(c.r.unpaired.len(), 10);
    // And the next query is its own.
    c.front(30, &query("SELECT 2"));
    let mut answer = complete("SELECT 1");
    answer.extend(ready());
    c.back(31, &answer);
    assert_eq!(c.r.done.len(), MAX_PENDING + 1);
    assert_eq!(c.r.done[MAX_PENDING].2, 1);
}

#[test]
fn pipelined_syncs_start_each_batch_when_the_one_before_is_answered() {
    let mut c = Conn1::new();
    let mut batch = Vec::new();
    for sql in ["SELECT 1", "SELECT 2"] {
        batch.extend(unnamed(sql));
        batch.extend(msg(b'S', b""));
    }
    c.front(0, &batch);
    let mut first = complete("SELECT 1");
    first.extend(ready());
    c.back(10, &first);
    let mut second = complete("SELECT 1");
    second.extend(ready());
    c.back(15, &second);
    let took: Vec<u64> = c.r.done.iter().map(|d| d.2).collect();
    assert_eq!(took, [10, 5]);
}

#[test]
fn statements_past_what_the_capture_saw_of_a_query_are_counted() {
    let mut c = Conn1::new();
    // A script of many statements, its text cut by the capture after the
    // second.
    let q = query("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2); INSERT INTO t VALUES (3)");
    c.piece(Flow::ToServer, 10, &q[..40], q.len(), &[]);
    let mut answer = Vec::new();
    for _ in 0..3 {
        answer.extend(complete("INSERT 0 1"));
    }
    answer.extend(ready());
    c.back(20, &answer);
    // The second is timed as far as it was seen; the third is counted.
    assert_eq!(c.texts(), ["INSERT INTO t VALUES ($1)", "INSERT IN…"]);
    assert_eq!(c.r.unpaired, [Unpaired::Truncated]);
}
