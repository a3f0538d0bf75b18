use super::*;

#[derive(Default)]
struct Rec {
    done: Vec<(&'static str, u64)>,
    results: Vec<(&'static str, CacheResult)>,
    unpaired: Vec<Unpaired>,
}

impl CommandSink for Rec {
    fn completed(&mut self, _: &Peer, cmd: Command, d: u64, _: u64, _: u32) {
        self.done.push((cmd.name, d));
    }
    fn result(&mut self, _: &Peer, cmd: Command, r: CacheResult) {
        self.results.push((cmd.name, r));
    }
    fn unpaired(&mut self, _: &Peer, reason: Unpaired) {
        self.unpaired.push(reason);
    }
}

const PEER: Peer = Peer {
    origin: Origin::Socket {
        netns: 1,
        port: 6379,
    },
    port: 6379,
    server: None,
};

struct Conn1 {
    t: Tracker,
    r: Rec,
}

impl Conn1 {
    fn new() -> Self {
        Self {
            t: Tracker::new(16),
            r: Rec::default(),
        }
    }

    fn piece(&mut self, kind: Flow, ts: u64, data: &[u8], total: usize) {
        let ev = Event {
            kind,
            ts_ns: ts,
            conn: 7,
            origin: PEER.origin,
            port: 6379,
            ret: total as i64,
            data,
            tail: &[],
            seq: None,
            tid: 0,
        };
        if !self.t.has(7) {
            assert!(self.t.open(&ev, PEER, &mut self.r));
        }
        self.t.handle(&ev, &mut self.r);
    }

    fn cmd(&mut self, ts: u64, data: &[u8]) {
        self.piece(Flow::ToServer, ts, data, data.len());
    }

    fn reply(&mut self, ts: u64, data: &[u8]) {
        self.piece(Flow::FromServer, ts, data, data.len());
    }
}

fn array(words: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        out.extend_from_slice(format!("${}\r\n{w}\r\n", w.len()).as_bytes());
    }
    out
}

#[test]
fn a_pipeline_of_hundreds_in_one_segment_pairs_in_order() {
    let mut c = Conn1::new();
    let mut cmds = Vec::new();
    let mut replies = Vec::new();
    for i in 0..300 {
        if i % 3 == 0 {
            cmds.extend(array(&["GET", &format!("k{i}")]));
            replies.extend_from_slice(b"$-1\r\n");
        } else if i % 3 == 1 {
            cmds.extend(array(&["SET", &format!("k{i}"), "v"]));
            replies.extend_from_slice(b"+OK\r\n");
        } else {
            cmds.extend(array(&["GET", "k"]));
            replies.extend_from_slice(b"$1\r\nv\r\n");
        }
    }
    c.cmd(100, &cmds);
    c.reply(250, &replies);
    assert_eq!(c.r.done.len(), 300);
    assert!(c.r.done.iter().all(|&(_, d)| d == 150));
    let count = |name, r| c.r.results.iter().filter(|x| **x == (name, r)).count();
    assert_eq!(count("GET", CacheResult::Miss), 100);
    assert_eq!(count("GET", CacheResult::Hit), 100);
    assert_eq!(count("SET", CacheResult::Ok), 100);
    assert!(c.r.unpaired.is_empty());
}

#[test]
fn split_commands_start_at_their_first_byte() {
    let mut c = Conn1::new();
    let get = array(&["GET", "key"]);
    c.cmd(10, &get[..5]);
    c.cmd(20, &get[5..]);
    c.reply(35, b"$2\r\nhi\r\n");
    assert_eq!(c.r.done, vec![("GET", 25)]);
    // A reply split across pieces ends at its last byte.
    c.cmd(40, b"PING\r\n");
    c.reply(41, b"+PO");
    c.reply(47, b"NG\r\n");
    assert_eq!(c.r.done[1], ("PING", 7));
}

#[test]
fn multi_exec_results_come_from_execs_reply() {
    let mut c = Conn1::new();
    let mut cmds = array(&["MULTI"]);
    cmds.extend(array(&["GET", "missing"]));
    cmds.extend(array(&["SET", "a", "1"]));
    cmds.extend(array(&["GET", "a"]));
    cmds.extend(array(&["EXEC"]));
    c.cmd(1, &cmds);
    c.reply(
        2,
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n$-1\r\n+OK\r\n$1\r\n1\r\n",
    );
    let names: Vec<_> = c.r.done.iter().map(|d| d.0).collect();
    assert_eq!(names, vec!["MULTI", "GET", "SET", "GET", "EXEC"]);
    assert_eq!(
        c.r.results,
        vec![
            ("MULTI", CacheResult::Ok),
            ("GET", CacheResult::Miss),
            ("SET", CacheResult::Ok),
            ("GET", CacheResult::Hit),
            ("EXEC", CacheResult::Ok),
        ]
    );
    // DISCARD drops the queue: no results for its commands.
    let mut c = Conn1::new();
    let mut cmds = array(&["MULTI"]);
    cmds.extend(array(&["GET", "a"]));
    cmds.extend(array(&["DISCARD"]));
    c.cmd(1, &cmds);
    c.reply(2, b"+OK\r\n+QUEUED\r\n+OK\r\n");
    assert_eq!(c.r.done.len(), 3);
    assert_eq!(c.r.results.len(), 2);
}

#[test]
fn pushes_are_not_replies() {
    let mut c = Conn1::new();
    c.cmd(1, &array(&["SUBSCRIBE", "a", "b"]));
    c.reply(
        2,
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n",
    );
    c.reply(3, b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nhello\r\n");
    c.cmd(4, &array(&["PING"]));
    c.reply(5, b"*3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$2\r\nyo\r\n");
    c.reply(6, b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    c.cmd(7, &array(&["UNSUBSCRIBE"]));
    c.reply(
        8,
        b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n",
    );
    // Not subscribed any more: an array starting with "message" is a reply.
    c.cmd(9, &array(&["LRANGE", "l", "0", "-1"]));
    c.reply(10, b"*1\r\n$7\r\nmessage\r\n");
    assert_eq!(
        c.r.done,
        vec![
            ("SUBSCRIBE", 1),
            ("PING", 2),
            ("UNSUBSCRIBE", 1),
            ("LRANGE", 1)
        ]
    );
    // RESP3: pushes carry their own type.
    let mut c = Conn1::new();
    c.cmd(1, &array(&["GET", "k"]));
    c.reply(2, b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n_\r\n");
    assert_eq!(c.r.results, vec![("GET", CacheResult::Miss)]);
}

#[test]
fn a_gap_drops_what_waits_and_pairing_resumes() {
    let mut c = Conn1::new();
    c.cmd(1, &array(&["GET", "a"]));
    c.cmd(2, &array(&["GET", "b"]));
    c.t.gap(7, &mut c.r);
    assert_eq!(c.r.unpaired, vec![Unpaired::Gap, Unpaired::Gap]);
    // The rest of a reply that was cut: ignored.
    c.reply(3, b"lue\r\n$1\r\nx\r\n");
    // A piece that does not start like a command is skipped.
    c.cmd(4, b"ue\r\n");
    c.cmd(5, &array(&["SET", "k", "v"]));
    c.reply(9, b"+OK\r\n");
    assert_eq!(c.r.done, vec![("SET", 4)]);
}

#[test]
fn replies_past_the_capture_end_at_the_next_command() {
    let mut c = Conn1::new();
    let mut cmds = array(&["LRANGE", "l", "0", "-1"]);
    cmds.extend(array(&["GET", "k"]));
    c.cmd(10, &cmds);
    // A 600-element reply of which the capture saw 1024 bytes, then GET's.
    let mut reply = b"*600\r\n".to_vec();
    for _ in 0..600 {
        reply.extend_from_slice(b"$3\r\nxxx\r\n");
    }
    reply.extend_from_slice(b"$1\r\nv\r\n");
    c.piece(Flow::FromServer, 20, &reply[..1024], reply.len());
    c.reply(30, b"");
    assert!(c.r.done.is_empty());
    c.cmd(50, &array(&["PING"]));
    c.reply(51, b"+PONG\r\n");
    assert_eq!(c.r.done, vec![("LRANGE", 20), ("GET", 20), ("PING", 1)]);
    // Their results are unknown; PING's is known.
    assert_eq!(c.r.results, vec![("PING", CacheResult::Ok)]);
}

#[test]
fn close_and_errors() {
    let mut c = Conn1::new();
    c.cmd(1, &array(&["INCR", "s"]));
    c.reply(2, b"-ERR value is not an integer\r\n");
    c.cmd(3, &array(&["GET", "a"]));
    c.t.close(7, &mut c.r);
    assert_eq!(c.r.results, vec![("INCR", CacheResult::Error)]);
    assert_eq!(c.r.unpaired, vec![Unpaired::ClosedMidRequest]);
    assert_eq!(c.t.connections(), 0);
}

/// A RESP2 confirmation (or any three-element array) of `kind`, `channel`
/// (nil for `None`) and `count`.
fn confirmation(kind: &str, channel: Option<&str>, count: u64) -> Vec<u8> {
    let channel = channel.map_or_else(
        || "$-1\r\n".to_owned(),
        |c| format!("${}\r\n{c}\r\n", c.len()),
    );
    format!("*3\r\n${}\r\n{kind}\r\n{channel}:{count}\r\n", kind.len()).into_bytes()
}

fn names(c: &Conn1) -> Vec<&'static str> {
    c.r.done.iter().map(|d| d.0).collect()
}

#[test]
fn a_reply_that_looks_like_a_confirmation_answers_its_command() {
    let mut c = Conn1::new();
    c.cmd(1, &array(&["SMEMBERS", "topics"]));
    c.reply(2, &array(&["subscribe", "newsletter"]));
    c.cmd(3, &array(&["GET", "k"]));
    c.reply(4, b"$-1\r\n");
    assert_eq!(c.r.done, vec![("SMEMBERS", 1), ("GET", 1)]);
    assert_eq!(
        c.r.results,
        vec![("SMEMBERS", CacheResult::Hit), ("GET", CacheResult::Miss)]
    );
    assert!(c.r.unpaired.is_empty());
    // Nor does it leave the connection subscribed: a message-like array
    // is a reply too.
    c.cmd(5, &array(&["LRANGE", "l", "0", "-1"]));
    c.reply(6, &array(&["message", "news", "hi"]));
    assert_eq!(names(&c), vec!["SMEMBERS", "GET", "LRANGE"]);
}

#[test]
fn confirmation_like_replies_in_a_pipeline_pair_exactly() {
    let mut c = Conn1::new();
    let mut cmds = array(&["GET", "a"]);
    cmds.extend(array(&["SMEMBERS", "s"]));
    cmds.extend(array(&["SET", "k", "v"]));
    cmds.extend(array(&["SMEMBERS", "t"]));
    cmds.extend(array(&["LRANGE", "l", "0", "-1"]));
    cmds.extend(array(&["PING"]));
    c.cmd(10, &cmds);
    let mut replies = b"$1\r\nx\r\n".to_vec();
    replies.extend(array(&["subscribe", "newsletter"]));
    replies.extend_from_slice(b"+OK\r\n");
    replies.extend(confirmation("unsubscribe", Some("x"), 0));
    replies.extend(array(&["psubscribe", "p*", "q*"]));
    replies.extend_from_slice(b"+PONG\r\n");
    c.reply(20, &replies);
    assert_eq!(
        names(&c),
        vec!["GET", "SMEMBERS", "SET", "SMEMBERS", "LRANGE", "PING"]
    );
    assert!(c.r.done.iter().all(|&(_, d)| d == 10));
    assert_eq!(c.r.results.len(), 6);
    assert!(c.r.unpaired.is_empty());
}

#[test]
fn each_channel_gets_its_confirmation() {
    let mut c = Conn1::new();
    c.cmd(1, &array(&["SUBSCRIBE", "a", "b", "c"]));
    let mut replies = Vec::new();
    for (i, ch) in ["a", "b", "c"].iter().enumerate() {
        replies.extend(confirmation("subscribe", Some(ch), i as u64 + 1));
    }
    c.reply(2, &replies);
    // Subscribed (RESP2): messages are pushes, PING's reply is an array.
    c.reply(3, &array(&["message", "a", "hello"]));
    c.cmd(4, &array(&["PING"]));
    c.reply(5, &array(&["pong", ""]));
    // A pipeline: the second UNSUBSCRIBE's confirmation is not taken for
    // the first's, which names none and gets one per channel left (a, c).
    let mut cmds = array(&["UNSUBSCRIBE", "b"]);
    cmds.extend(array(&["PSUBSCRIBE", "p*"]));
    cmds.extend(array(&["UNSUBSCRIBE"]));
    cmds.extend(array(&["UNSUBSCRIBE", "z"]));
    cmds.extend(array(&["PUNSUBSCRIBE"]));
    c.cmd(10, &cmds);
    let mut replies = confirmation("unsubscribe", Some("b"), 2);
    replies.extend(confirmation("psubscribe", Some("p*"), 3));
    replies.extend(confirmation("unsubscribe", Some("a"), 2));
    replies.extend(confirmation("unsubscribe", Some("c"), 1));
    c.reply(11, &replies);
    c.reply(12, &array(&["pmessage", "p*", "p1", "hi"]));
    c.reply(13, &confirmation("unsubscribe", Some("z"), 1));
    c.reply(14, &confirmation("punsubscribe", Some("p*"), 0));
    // Not subscribed any more: arrays are replies again.
    c.cmd(20, &array(&["SMEMBERS", "s"]));
    c.reply(21, &array(&["subscribe", "newsletter"]));
    assert_eq!(
        c.r.done,
        vec![
            ("SUBSCRIBE", 1),
            ("PING", 1),
            ("UNSUBSCRIBE", 1),
            ("PSUBSCRIBE", 1),
            ("UNSUBSCRIBE", 1),
            ("UNSUBSCRIBE", 3),
            ("PUNSUBSCRIBE", 4),
            ("SMEMBERS", 1),
        ]
    );
    assert!(c.r.unpaired.is_empty());
}

#[test]
fn unsubscribing_from_nothing_and_subscribing_to_nothing() {
    let mut c = Conn1::new();
    // One confirmation with a nil channel.
    let mut cmds = array(&["UNSUBSCRIBE"]);
    cmds.extend(array(&["GET", "k"]));
    c.cmd(1, &cmds);
    let mut replies = confirmation("unsubscribe", None, 0);
    replies.extend_from_slice(b"$1\r\nv\r\n");
    c.reply(2, &replies);
    // No channel: an error, not a confirmation.
    let mut cmds = array(&["SUBSCRIBE"]);
    cmds.extend(array(&["SMEMBERS", "s"]));
    c.cmd(3, &cmds);
    let mut replies = b"-ERR wrong number of arguments for 'subscribe' command\r\n".to_vec();
    replies.extend(array(&["subscribe", "x"]));
    c.reply(4, &replies);
    assert_eq!(
        names(&c),
        vec!["UNSUBSCRIBE", "GET", "SUBSCRIBE", "SMEMBERS"]
    );
    assert_eq!(c.r.results[2], ("SUBSCRIBE", CacheResult::Error));
    assert_eq!(c.r.results[3], ("SMEMBERS", CacheResult::Hit));
    assert!(c.r.unpaired.is_empty());
    // An inline subscription counts its words.
    let mut c = Conn1::new();
    c.cmd(1, b"subscribe a b\r\n");
    let mut replies = confirmation("subscribe", Some("a"), 1);
    replies.extend(confirmation("subscribe", Some("b"), 2));
    c.reply(2, &replies);
    c.cmd(3, b"unsubscribe b\r\n");
    c.reply(4, &confirmation("unsubscribe", Some("b"), 1));
    assert_eq!(names(&c), vec!["SUBSCRIBE", "UNSUBSCRIBE"]);
}

#[test]
fn resp3_pushes_are_never_replies_and_arrays_always_are() {
    let mut c = Conn1::new();
    c.cmd(1, &array(&["SUBSCRIBE", "a", "b"]));
    c.reply(
        2,
        b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n>3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n",
    );
    // Subscribed, yet commands are answered as usual and arrays that look
    // like confirmations or messages are their replies.
    let mut cmds = array(&["SMEMBERS", "s"]);
    cmds.extend(array(&["LRANGE", "l", "0", "-1"]));
    cmds.extend(array(&["GET", "k"]));
    c.cmd(3, &cmds);
    c.reply(4, &array(&["subscribe", "newsletter"]));
    c.reply(5, b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n");
    c.reply(6, &array(&["message", "a", "hi"]));
    // A confirmation pushed while GET waits answers nothing.
    c.reply(7, b">3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:1\r\n");
    c.reply(8, b"_\r\n");
    c.cmd(9, &array(&["UNSUBSCRIBE"]));
    c.reply(10, b">3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n");
    assert_eq!(
        c.r.done,
        vec![
            ("SUBSCRIBE", 1),
            ("SMEMBERS", 1),
            ("LRANGE", 3),
            ("GET", 5),
            ("UNSUBSCRIBE", 1),
        ]
    );
    assert_eq!(c.r.results[3], ("GET", CacheResult::Miss));
    assert!(c.r.unpaired.is_empty());
}
