use super::*;
use crate::{
    protocols::mysql::{
        MORE_RESULTS,
        tests::{greeting_packet, packet},
    },
    streams::pairing::Origin,
};

#[derive(Default)]
struct Rec {
    done: Vec<(System, String, Outcome, u64)>,
    unpaired: Vec<Unpaired>,
}

impl StatementSink for Rec {
    fn statement(&mut self, _: &Peer, s: System, stmt: &Arc<Statement>, o: Outcome, d: (u64, u64)) {
        self.done
            .push((s, stmt.text.clone(), o, d.1.saturating_sub(d.0)));
    }
    fn statement_unpaired(&mut self, _: &Peer, _: System, reason: Unpaired) {
        self.unpaired.push(reason);
    }
}

const PEER: Peer = Peer {
    origin: Origin::Socket {
        netns: 1,
        port: 3306,
    },
    port: 3306,
    server: None,
};

const CLASSIC: u32 = CLIENT_PROTOCOL_41 | 0x0001_0000;
const DEPRECATE: u32 = CLASSIC | CLIENT_DEPRECATE_EOF;

struct Conn1 {
    t: Tracker,
    r: Rec,
}

impl Conn1 {
    /// A connection past its authentication, the client's capabilities
    /// `caps`.
    fn new(caps: u32) -> Self {
        let mut c = Self::bare();
        c.back(
            0,
            &greeting_packet("5.5.5-10.11.6-MariaDB", !CLIENT_COMPRESS),
        );
        c.front(1, &response(caps));
        c.back(2, &ok(2, 0x0002));
        c
    }

    fn bare() -> Self {
        Self {
            t: Tracker::new(16),
            r: Rec::default(),
        }
    }

    fn piece(&mut self, kind: Flow, ts: u64, data: &[u8], total: usize, tail: &[u8], joined: bool) {
        let ev = Event {
            kind,
            ts_ns: ts,
            conn: 7,
            origin: PEER.origin,
            port: 3306,
            ret: total as i64,
            data,
            tail,
            seq: None,
            tid: 0,
        };
        if !self.t.has(7) {
            assert!(self.t.open(&ev, PEER, joined, &mut self.r));
        }
        self.t.handle(&ev, &mut self.r);
    }

    fn front(&mut self, ts: u64, data: &[u8]) {
        self.piece(Flow::ToServer, ts, data, data.len(), &[], false);
    }

    fn back(&mut self, ts: u64, data: &[u8]) {
        self.piece(Flow::FromServer, ts, data, data.len(), &[], false);
    }

    fn query(&mut self, ts: u64, sql: &str) {
        let mut q = vec![mysql::COM_QUERY];
        q.extend_from_slice(sql.as_bytes());
        self.front(ts, &packet(0, &q));
    }

    fn texts(&self) -> Vec<&str> {
        self.r.done.iter().map(|d| d.1.as_str()).collect()
    }
}

/// A 4.1 handshake response with capabilities `caps`.
fn response(caps: u32) -> Vec<u8> {
    let mut r = caps.to_le_bytes().to_vec();
    r.extend_from_slice(&[0, 0, 0, 1, 33]);
    r.extend_from_slice(&[0; 23]);
    r.extend_from_slice(b"apm\0\x14");
    r.extend_from_slice(&[7; 20]);
    packet(1, &r)
}

fn ok(seq: u8, status: u16) -> Vec<u8> {
    let s = status.to_le_bytes();
    packet(seq, &[0, 0, 0, s[0], s[1], 0, 0])
}

fn eof(seq: u8, status: u16) -> Vec<u8> {
    let s = status.to_le_bytes();
    packet(seq, &[0xfe, 0, 0, s[0], s[1]])
}

/// The OK that ends a result set when EOFs are deprecated.
fn ok_end(seq: u8, status: u16) -> Vec<u8> {
    let s = status.to_le_bytes();
    packet(seq, &[0xfe, 0, 0, s[0], s[1], 0, 0])
}

fn err(seq: u8, code: u16) -> Vec<u8> {
    let mut e = vec![0xff];
    e.extend_from_slice(&code.to_le_bytes());
    e.extend_from_slice(b"#23000Duplicate entry");
    packet(seq, &e)
}

fn def(seq: u8) -> Vec<u8> {
    packet(
        seq,
        b"\x03def\x04shop\x01t\x01t\x02id\x02id\x0c?\0\x0b\0\0\0\x03\0\0\0\0\0",
    )
}

/// A result set of `cols` columns and `rows` rows, classic or not.
fn result_set(cols: u8, rows: usize, classic: bool, status: u16) -> Vec<u8> {
    let mut out = packet(1, &[cols]);
    let mut seq = 2u8;
    for _ in 0..cols {
        out.extend(def(seq));
        seq = seq.wrapping_add(1);
    }
    if classic {
        out.extend(eof(seq, 0x0002));
        seq = seq.wrapping_add(1);
    }
    for i in 0..rows {
        out.extend(packet(seq, format!("\x05row{i:02}").as_bytes()));
        seq = seq.wrapping_add(1);
    }
    out.extend(if classic {
        eof(seq, status)
    } else {
        ok_end(seq, status)
    });
    out
}

#[test]
fn a_query_is_timed_from_its_command_to_the_end_of_its_rows() {
    for (caps, classic) in [(CLASSIC, true), (DEPRECATE, false)] {
        let mut c = Conn1::new(caps);
        c.query(100, "SELECT id FROM t WHERE name = 'secret'");
        let rows = result_set(1, 3, classic, 0x0002);
        let (a, b) = rows.split_at(rows.len() / 2);
        c.back(150, a);
        assert!(c.r.done.is_empty());
        c.back(180, b);
        assert_eq!(
            c.r.done,
            vec![(
                System::Mariadb,
                "SELECT id FROM t WHERE name = ?".to_owned(),
                Outcome::Ok,
                80
            )]
        );
        // An OK answers an UPDATE.
        c.query(200, "UPDATE t SET n = n + 1 WHERE id = 4");
        c.back(230, &ok(1, 0x0002));
        assert_eq!(c.r.done[1].3, 30);
        assert!(c.r.unpaired.is_empty(), "{:?}", c.r.unpaired);
    }
}

#[test]
fn errors_carry_their_number() {
    let mut c = Conn1::new(DEPRECATE);
    c.query(10, "INSERT INTO t VALUES (1)");
    c.back(20, &err(1, 1062));
    assert_eq!(c.r.done[0].2, Outcome::Error(Some(*b"1062\0")));
}

#[test]
fn each_result_of_a_multi_statement_query_ends_one_statement() {
    let mut c = Conn1::new(DEPRECATE);
    c.query(10, "SELECT 1; UPDATE t SET a = 2; SELECT 3");
    let mut answer = result_set(1, 1, false, MORE_RESULTS | 2);
    c.back(20, &answer);
    answer = ok(1, MORE_RESULTS | 2);
    c.back(30, &answer);
    c.back(45, &result_set(1, 1, false, 2));
    let got: Vec<(String, u64)> = c.r.done.iter().map(|d| (d.1.clone(), d.3)).collect();
    assert_eq!(
        got,
        [
            ("SELECT ?".to_owned(), 10),
            ("UPDATE t SET a = ?".to_owned(), 10),
            ("SELECT ?".to_owned(), 15)
        ]
    );
    // After an error the rest never ran.
    c.query(50, "SELECT 1; SELEC 2; SELECT 3");
    c.back(60, &result_set(1, 1, false, MORE_RESULTS | 2));
    c.back(70, &err(1, 1064));
    assert_eq!(c.r.done.len(), 5);
    assert_eq!(c.r.done[4].2, Outcome::Error(Some(*b"1064\0")));
    // A procedure's results all belong to its CALL.
    c.query(100, "CALL p(1)");
    c.back(110, &result_set(1, 2, false, MORE_RESULTS | 2));
    c.back(120, &ok(1, 2));
    assert_eq!(c.r.done.len(), 6);
    assert_eq!(c.r.done[5].3, 20);
}

/// A prepare's answer: its id, `params` and `cols` definitions.
fn prepare_ok(id: u32, params: u16, cols: u16, classic: bool) -> Vec<u8> {
    let mut body = vec![0];
    body.extend_from_slice(&id.to_le_bytes());
    body.extend_from_slice(&cols.to_le_bytes());
    body.extend_from_slice(&params.to_le_bytes());
    body.extend_from_slice(&[0, 0, 0]);
    let mut out = packet(1, &body);
    let mut seq = 2;
    for n in [params, cols] {
        for _ in 0..n {
            out.extend(def(seq));
            seq += 1;
        }
        if classic && n > 0 {
            out.extend(eof(seq, 2));
            seq += 1;
        }
    }
    out
}

fn execute(id: u32) -> Vec<u8> {
    let mut e = vec![mysql::COM_STMT_EXECUTE];
    e.extend_from_slice(&id.to_le_bytes());
    e.extend_from_slice(&[0, 1, 0, 0, 0]);
    packet(0, &e)
}

#[test]
fn an_execute_is_timed_under_the_statement_its_id_was_prepared_with() {
    for (caps, classic) in [(CLASSIC, true), (DEPRECATE, false)] {
        let mut c = Conn1::new(caps);
        let mut prep = vec![mysql::COM_STMT_PREPARE];
        prep.extend_from_slice(b"SELECT name FROM users WHERE id = ? AND age > 30");
        c.front(10, &packet(0, &prep));
        c.back(20, &prepare_ok(5, 1, 1, classic));
        assert!(c.r.done.is_empty(), "a prepare is no operation");
        c.front(30, &execute(5));
        c.back(42, &result_set(1, 1, classic, 2));
        c.front(50, &execute(9));
        c.back(55, &ok(1, 2));
        assert_eq!(
            c.texts(),
            [
                "SELECT name FROM users WHERE id = ? AND age > ?",
                "(unknown prepared statement)"
            ]
        );
        assert_eq!(c.r.done[0].3, 12);
        // Closed: no answer, and the id is forgotten.
        let mut close = vec![mysql::COM_STMT_CLOSE];
        close.extend_from_slice(&5u32.to_le_bytes());
        c.front(60, &packet(0, &close));
        c.front(61, &packet(0, &[0x0e]));
        c.back(62, &ok(1, 2));
        c.front(70, &execute(5));
        c.back(75, &ok(1, 2));
        assert_eq!(c.texts()[2], "(unknown prepared statement)");
        assert!(c.r.unpaired.is_empty(), "{:?}", c.r.unpaired);
    }
}

#[test]
fn a_joined_connection_learns_the_eof_convention_from_its_answers() {
    let mut c = Conn1::bare();
    let q = packet(0, b"\x03SELECT 1");
    c.piece(Flow::ToServer, 10, &q, q.len(), &[], true);
    c.back(20, &result_set(1, 1, true, 2));
    assert_eq!(c.texts(), ["SELECT ?"]);
    // A prepare answered classically though the convention was first
    // unknown on another connection: its trailing EOF is absorbed.
    let mut d = Conn1::bare();
    let mut prep = vec![mysql::COM_STMT_PREPARE];
    prep.extend_from_slice(b"SELECT ?");
    let prep = packet(0, &prep);
    d.piece(Flow::ToServer, 10, &prep, prep.len(), &[], true);
    d.back(20, &prepare_ok(1, 1, 0, true));
    d.front(30, &execute(1));
    d.back(40, &ok(1, 2));
    assert_eq!(d.texts(), ["SELECT ?"]);
    assert!(d.r.unpaired.is_empty(), "{:?}", d.r.unpaired);
}

#[test]
fn a_long_result_past_the_capture_ends_at_its_last_bytes_or_the_next_command() {
    let mut c = Conn1::new(CLASSIC);
    c.query(10, "SELECT * FROM big");
    let rows = result_set(1, 200, true, 2);
    // Only the first 64 bytes of the piece were captured; its last 8 are
    // the EOF's.
    let tail = &rows[rows.len() - 8..];
    c.piece(Flow::FromServer, 50, &rows[..64], rows.len(), tail, false);
    assert_eq!(c.r.done.len(), 1);
    assert_eq!(c.r.done[0].2, Outcome::Unknown);
    assert_eq!(c.r.done[0].3, 40);
    // The next answer is framed again.
    c.query(60, "SELECT 2");
    c.back(70, &result_set(1, 1, true, 2));
    assert_eq!(c.r.done[1].2, Outcome::Ok);
    // Lost with no end in sight: the next command ends it.
    c.query(80, "SELECT * FROM big");
    let rows = result_set(1, 200, true, 2);
    c.piece(
        Flow::FromServer,
        90,
        &rows[..64],
        rows.len() - 9,
        &rows[rows.len() - 17..rows.len() - 9],
        false,
    );
    c.piece(
        Flow::FromServer,
        95,
        &[],
        9,
        &rows[rows.len() - 9..rows.len() - 1],
        false,
    );
    c.query(120, "SELECT 3");
    c.back(130, &ok(1, 2));
    let got: Vec<(Outcome, u64)> = c.r.done[2..].iter().map(|d| (d.2, d.3)).collect();
    assert_eq!(got, [(Outcome::Unknown, 15), (Outcome::Ok, 10)]);
}

#[test]
fn a_tls_session_is_read_from_its_plaintext_and_compression_is_not() {
    let mut c = Conn1::bare();
    c.back(0, &greeting_packet("8.0.36", 0xffff_ffff));
    let mut ssl = (CLASSIC | CLIENT_SSL).to_le_bytes().to_vec();
    ssl.extend_from_slice(&[0; 28]);
    c.front(1, &packet(1, &ssl));
    // Ciphertext.
    c.front(2, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
    c.back(3, b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03");
    // The plaintext of the handshake response, sequence 2.
    let mut r = response(DEPRECATE);
    r[3] = 2;
    c.front(4, &r);
    c.back(5, &ok(3, 2));
    c.query(10, "SELECT 1");
    c.back(12, &ok(1, 2));
    assert_eq!(
        c.r.done,
        vec![(System::Mysql, "SELECT ?".into(), Outcome::Ok, 2)]
    );

    let mut z = Conn1::bare();
    z.back(0, &greeting_packet("8.0.36", 0xffff_ffff));
    z.front(1, &response(CLASSIC | CLIENT_COMPRESS));
    z.back(2, &ok(2, 2));
    z.query(10, "SELECT 1");
    z.back(12, &ok(1, 2));
    assert!(z.r.done.is_empty());
    assert_eq!(z.r.unpaired, [Unpaired::Malformed]);
}

#[test]
fn commands_that_are_no_statements_pair_with_nothing() {
    let mut c = Conn1::new(DEPRECATE);
    // Ping, init db, statistics, then a query.
    c.front(1, &packet(0, &[0x0e]));
    c.front(2, &packet(0, b"\x02shop"));
    c.front(3, &packet(0, &[mysql::COM_STATISTICS]));
    c.query(4, "SELECT 1");
    c.back(5, &ok(1, 2));
    c.back(6, &ok(1, 2));
    c.back(7, &packet(1, b"Uptime: 5  Threads: 1"));
    c.back(9, &ok(1, 2));
    // Pipelined: the query waited behind the others.
    assert_eq!(
        c.r.done,
        vec![(System::Mariadb, "SELECT ?".into(), Outcome::Ok, 2)]
    );
    c.front(20, &packet(0, &[mysql::COM_QUIT]));
    c.t.close(7, &mut c.r);
    assert!(c.r.unpaired.is_empty());
}

#[test]
fn a_joined_connection_takes_the_database_its_server_greeted_another_with() {
    let mut c = Conn1::bare();
    let q = packet(0, b"\x03SELECT 1");
    let ev = |conn, kind, data: &'static [u8]| Event {
        kind,
        ts_ns: 1,
        conn,
        origin: PEER.origin,
        port: 3306,
        ret: data.len() as i64,
        data,
        tail: &[],
        seq: None,
        tid: 0,
    };
    let q: &'static [u8] = Box::leak(q.into_boxed_slice());
    let answer: &'static [u8] = Box::leak(ok(1, 2).into_boxed_slice());
    let joined = ev(8, Flow::ToServer, q);
    assert!(c.t.open(&joined, PEER, true, &mut c.r));
    // Another connection's greeting, then the joined one's answer.
    let g: &'static [u8] =
        Box::leak(greeting_packet("5.5.5-10.11.6-MariaDB", 0xffff).into_boxed_slice());
    let fresh = ev(9, Flow::FromServer, g);
    assert!(c.t.open(&fresh, PEER, false, &mut c.r));
    c.t.handle(&fresh, &mut c.r);
    c.t.handle(&joined, &mut c.r);
    c.t.handle(&ev(8, Flow::FromServer, answer), &mut c.r);
    assert_eq!(c.r.done[0].0, System::Mariadb);
}

#[test]
fn a_local_infile_of_many_packets_is_no_command() {
    let mut c = Conn1::new(DEPRECATE);
    c.query(10, "LOAD DATA LOCAL INFILE '/tmp/x' INTO TABLE t");
    c.back(11, &packet(1, b"\xfb/tmp/x"));
    // 300 packets of the file: the 255th has sequence 0 again.
    for i in 0..300u32 {
        let seq = (2 + i) as u8;
        c.front(12, &packet(seq, b"\x11some,line\n"));
    }
    c.front(13, &packet(46, b""));
    c.back(20, &ok(47, 2));
    c.query(30, "SELECT 1");
    c.back(31, &ok(1, 2));
    assert_eq!(
        c.texts(),
        ["LOAD DATA LOCAL INFILE ? INTO TABLE t", "SELECT ?"]
    );
    assert_eq!(c.r.done[1].3, 1);
}

#[test]
fn a_call_before_other_statements_ends_at_its_own_ok() {
    let mut c = Conn1::new(DEPRECATE);
    c.query(10, "CALL p(); SELECT a FROM t; SELECT b FROM t");
    c.back(20, &result_set(1, 1, false, MORE_RESULTS | 2));
    c.back(25, &ok(1, MORE_RESULTS | 2));
    c.back(30, &result_set(1, 1, false, MORE_RESULTS | 2));
    c.back(40, &err(1, 1054));
    let got: Vec<(&str, Outcome, u64)> =
        c.r.done.iter().map(|d| (d.1.as_str(), d.2, d.3)).collect();
    assert_eq!(
        got,
        [
            ("CALL p()", Outcome::Ok, 15),
            ("SELECT a FROM t", Outcome::Ok, 5),
            ("SELECT b FROM t", Outcome::Error(Some(*b"1054\0")), 10)
        ]
    );
}

#[test]
fn field_lists_progress_reports_and_skipped_metadata_keep_the_order() {
    let mut c = Conn1::new(CLASSIC);
    // COM_FIELD_LIST: definitions and an EOF, no count.
    c.front(1, &packet(0, b"\x04t\0"));
    let mut defs = def(1);
    defs.extend(def(2));
    defs.extend(eof(3, 2));
    c.back(2, &defs);
    // A progress report, then the answer.
    c.query(10, "ALTER TABLE t ADD c INT");
    c.back(11, &packet(1, b"\xff\xff\xff\x01\x01\x00\x00\x10\x00stage"));
    c.back(20, &ok(2, 2));
    // Metadata skipped (MariaDB's cache), its EOF still sent.
    c.front(30, &execute(1));
    let mut rows = packet(1, &[1, 0]);
    rows.extend(eof(2, 2));
    rows.extend(packet(3, b"\x00\x00\x01\x02"));
    rows.extend(eof(4, 2));
    c.back(35, &rows);
    c.query(40, "SELECT 1");
    c.back(41, &ok(1, 2));
    let got: Vec<(&str, Outcome, u64)> =
        c.r.done.iter().map(|d| (d.1.as_str(), d.2, d.3)).collect();
    assert_eq!(
        got,
        [
            ("ALTER TABLE t ADD c INT", Outcome::Ok, 10),
            ("(unknown prepared statement)", Outcome::Ok, 5),
            ("SELECT ?", Outcome::Ok, 1)
        ]
    );
    assert!(c.r.unpaired.is_empty(), "{:?}", c.r.unpaired);
}

#[test]
fn answers_with_nothing_waiting_count_once_and_statements_are_bounded() {
    let mut c = Conn1::new(DEPRECATE);
    c.back(1, &result_set(1, 50, false, 2));
    assert_eq!(c.r.unpaired, [Unpaired::ResponseWithoutRequest]);
    c.query(2, "SELECT 1");
    c.back(3, &ok(1, 2));
    assert_eq!(c.texts(), ["SELECT ?"]);
    // Three queries of 400 statements: the third does not fit.
    let many = vec!["DO 1"; 400].join(";");
    for ts in 10..13 {
        c.query(ts, &many);
    }
    assert_eq!(c.r.unpaired.len(), 1 + 400);
    assert!(c.r.unpaired[1..].iter().all(|&u| u == Unpaired::QueueFull));
}
