//! Pairing on byte fixtures: keep-alive, pipelining, split lines, bodies,
//! chunked and sendfile framing, closes, garbage and bounds.

use super::*;
use crate::protocols::routes::Route;

#[derive(Default)]
struct Recorder {
    done: Vec<(Method, String, u16, u64)>,
    unpaired: Vec<Unpaired>,
    resyncs: Vec<Unpaired>,
    requests: usize,
    /// Each completed request's (first-byte sequence number, traceparent).
    wire: Vec<(Option<SeqAt>, Option<TraceParent>)>,
}

impl Sink for Recorder {
    fn route(&mut self, _origin: Origin, path: &str) -> Route {
        Route {
            template: path.into(),
            overflow: false,
        }
    }
    fn request(&mut self, _origin: Origin, _port: u16) {
        self.requests += 1;
    }
    fn completed(&mut self, d: Completed) {
        self.done
            .push((d.method, d.route.to_string(), d.status, d.duration_ns));
        self.wire.push((d.seq, d.trace));
    }
    fn unpaired(&mut self, _origin: Origin, _port: u16, reason: Unpaired) {
        self.unpaired.push(reason);
    }
    fn resync(&mut self, _origin: Origin, _port: u16, reason: Unpaired) {
        self.resyncs.push(reason);
    }
}

/// Drives a tracker for one connection (tgid 1, fd 5, port 80).
struct Conn1 {
    t: Tracker,
    r: Recorder,
}

impl Conn1 {
    fn new() -> Self {
        let mut c = Self {
            t: Tracker::new(16),
            r: Recorder::default(),
        };
        c.ev(Flow::Accept, 0, b"", 0);
        c
    }

    fn ev(&mut self, kind: Flow, ts: u64, data: &[u8], ret: i64) {
        self.ev_tail(kind, ts, data, ret, b"");
    }

    fn ev_tail(&mut self, kind: Flow, ts: u64, data: &[u8], ret: i64, tail: &[u8]) {
        let ev = Event {
            kind,
            ts_ns: ts,
            conn: 5,
            origin: Origin::Process(1),
            port: 80,
            ret,
            data,
            tail,
            seq: None,
            tid: 0,
        };
        self.t.handle(&ev, &mut self.r);
    }

    fn read(&mut self, ts: u64, data: &[u8]) {
        self.ev(Flow::ToServer, ts, data, data.len() as i64);
    }

    /// A segment whose first byte has sequence number `seq`.
    fn segment(&mut self, ts: u64, seq: u32, data: &[u8]) {
        let ev = Event {
            kind: Flow::ToServer,
            ts_ns: ts,
            conn: 5,
            origin: Origin::Process(1),
            port: 80,
            ret: data.len() as i64,
            data,
            tail: b"",
            seq: Some((40000, seq)),
            tid: 0,
        };
        self.t.handle(&ev, &mut self.r);
    }

    fn write(&mut self, ts: u64, data: &[u8]) {
        self.ev(Flow::FromServer, ts, data, data.len() as i64);
    }
}

fn done(m: Method, route: &str, status: u16, dur: u64) -> (Method, String, u16, u64) {
    (m, route.to_owned(), status, dur)
}

#[test]
fn keep_alive_content_length_responses() {
    let mut c = Conn1::new();
    c.read(100, b"GET /a?secret=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    c.write(150, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
    c.write(170, b"hello");
    c.read(200, b"GET /b HTTP/1.1\r\n\r\n");
    c.write(
        260,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno",
    );
    assert_eq!(
        c.r.done,
        vec![
            done(Method::Get, "/a", 200, 70),
            done(Method::Get, "/b", 404, 60)
        ]
    );
    assert!(c.r.unpaired.is_empty());
    assert_eq!(c.t.in_flight().count(), 0);
}

#[test]
fn pipelined_batch_in_one_read_pairs_in_order() {
    let mut c = Conn1::new();
    c.read(
        10,
        b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nHEAD /3 HTTP/1.1\r\n\r\n",
    );
    assert_eq!(c.t.in_flight().count(), 3);
    // Responses written back to back in one write.
    c.write(
        50,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 500 E\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
    );
    assert_eq!(
        c.r.done,
        vec![
            done(Method::Get, "/1", 200, 40),
            done(Method::Get, "/2", 500, 40),
            done(Method::Head, "/3", 200, 40)
        ]
    );
    assert!(c.r.unpaired.is_empty());
}

#[test]
fn split_request_line_is_carried_to_the_next_read() {
    let mut c = Conn1::new();
    c.read(10, b"GET /spl");
    c.read(20, b"it HTTP/1.1\r\nHost: x\r\n\r\n");
    c.write(50, b"HTTP/1.1 204 No Content\r\n\r\n");
    assert_eq!(c.r.done, vec![done(Method::Get, "/split", 204, 40)]);
}

#[test]
fn request_bodies_are_skipped() {
    let mut c = Conn1::new();
    c.read(
        10,
        b"POST /p HTTP/1.1\r\nContent-Length: 10\r\n\r\nGET /x HTT",
    );
    c.write(20, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(c.r.done, vec![done(Method::Post, "/p", 201, 10)]);
    assert_eq!(c.r.requests, 1);
}

#[test]
fn chunked_response_ends_at_last_chunk_even_beyond_capture() {
    let mut c = Conn1::new();
    c.read(0, b"GET /c HTTP/1.1\r\n\r\n");
    c.write(10, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    c.write(20, b"5\r\nhello\r\n");
    assert!(c.r.done.is_empty());
    // A long write: only a prefix captured, the tail shows the end.
    c.ev_tail(
        Flow::FromServer,
        30,
        b"1000\r\nxxxx",
        6 + 4096 + 2 + 5,
        b"\r\n0\r\n\r\n",
    );
    assert_eq!(c.r.done, vec![done(Method::Get, "/c", 200, 30)]);
}

#[test]
fn chunked_response_whose_size_line_was_not_captured_ends_before_the_next_request() {
    let mut c = Conn1::new();
    c.read(0, b"GET /c HTTP/1.1\r\n\r\n");
    c.write(10, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    // The next size line sits in bytes neither captured nor in the tail.
    c.ev_tail(
        Flow::FromServer,
        20,
        b"10\r\n0123456789",
        6000,
        b"89abc\r\n",
    );
    c.write(30, b"0\r\n\r\n");
    assert!(c.r.done.is_empty());
    c.read(40, b"GET /d HTTP/1.1\r\n\r\n");
    assert_eq!(c.r.done, vec![done(Method::Get, "/c", 200, 30)]);
    c.write(50, b"HTTP/1.1 204 No Content\r\n\r\n");
    assert_eq!(c.r.done[1], done(Method::Get, "/d", 204, 10));
    assert!(c.r.unpaired.is_empty());
}

#[test]
fn sendfile_bodies_count_toward_content_length() {
    let mut c = Conn1::new();
    c.read(0, b"GET /f HTTP/1.1\r\n\r\n");
    c.write(5, b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n");
    c.ev(Flow::Sendfile, 7, b"", 2000);
    assert!(c.r.done.is_empty());
    c.ev(Flow::Sendfile, 9, b"", 1000);
    assert_eq!(c.r.done, vec![done(Method::Get, "/f", 200, 9)]);
}

#[test]
fn http10_without_length_ends_at_close() {
    let mut c = Conn1::new();
    c.read(0, b"GET /old HTTP/1.0\r\n\r\n");
    c.write(10, b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n");
    c.write(30, b"body...");
    assert!(c.r.done.is_empty());
    c.ev(Flow::Close, 40, b"", 0);
    assert_eq!(c.r.done, vec![done(Method::Get, "/old", 200, 30)]);
    assert_eq!(c.t.connections(), 0);
}

#[test]
fn connection_close_with_length_completes_before_close() {
    let mut c = Conn1::new();
    c.read(0, b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n");
    c.write(
        10,
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    );
    assert_eq!(c.r.done, vec![done(Method::Get, "/x", 200, 10)]);
    c.ev(Flow::Close, 20, b"", 0);
    assert!(c.r.unpaired.is_empty());
}

#[test]
fn close_mid_request_and_orphan_responses_are_counted() {
    let mut c = Conn1::new();
    c.write(5, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    c.read(10, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
    c.ev(Flow::Close, 20, b"", 0);
    assert_eq!(
        c.r.unpaired,
        vec![Unpaired::ClosedMidRequest, Unpaired::ClosedMidRequest]
    );
    assert_eq!(c.r.resyncs, vec![Unpaired::ResponseWithoutRequest]);
    assert_eq!(c.t.connections(), 0);
}

#[test]
fn garbage_marks_the_connection_not_http_once() {
    let mut c = Conn1::new();
    c.read(0, b"*1\r\n$4\r\nPING\r\n");
    c.read(5, b"*1\r\n$4\r\nPING\r\n");
    c.write(6, b"+PONG\r\n");
    assert_eq!(c.r.resyncs, vec![Unpaired::NotHttp]);
    assert!(c.r.unpaired.is_empty());
    assert!(c.r.done.is_empty());
}

#[test]
fn truncated_capture_of_a_long_pipelined_batch_is_reported() {
    let mut c = Conn1::new();
    // 3000 bytes were read but only the first request was captured.
    c.ev(Flow::ToServer, 0, b"GET /1 HTTP/1.1\r\n\r\n", 3000);
    assert_eq!(c.r.resyncs, vec![Unpaired::Truncated]);
    assert!(c.r.unpaired.is_empty());
    c.write(10, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(c.r.done, vec![done(Method::Get, "/1", 200, 10)]);
}

#[test]
fn unframed_response_ends_before_the_next_request() {
    let mut c = Conn1::new();
    c.read(0, b"GET /big HTTP/1.1\r\n\r\n");
    // The head was cut by the capture: no framing visible.
    c.ev(
        Flow::FromServer,
        10,
        b"HTTP/1.1 200 OK\r\nX-Long: aaaa",
        4000,
    );
    c.write(20, b"more body");
    c.read(50, b"GET /next HTTP/1.1\r\n\r\n");
    assert_eq!(c.r.done, vec![done(Method::Get, "/big", 200, 20)]);
    assert_eq!(c.t.in_flight().count(), 1);
}

#[test]
fn state_is_bounded_and_idle_connections_are_evicted() {
    let mut t = Tracker::new(2);
    let mut r = Recorder::default();
    let ev = |kind, conn, ts_ns| Event {
        kind,
        ts_ns,
        conn,
        origin: Origin::Process(1),
        port: 80,
        ret: 18,
        data: b"GET / HTTP/1.1\r\n\r\n",
        tail: b"",
        seq: None,
        tid: 0,
    };
    for fd in 0..3 {
        t.handle(&ev(Flow::ToServer, fd, fd), &mut r);
    }
    assert_eq!(
        t.connections(),
        2,
        "third connection refused while others are fresh"
    );
    // Its request is counted: seen, and unpaired for want of room.
    assert_eq!(
        (r.requests, &r.unpaired[..]),
        (3, &[Unpaired::TableFull][..])
    );
    // Bytes that are no request count nothing.
    t.handle(&ev(Flow::FromServer, 2, 3), &mut r);
    assert_eq!(r.unpaired, [Unpaired::TableFull]);
    // Two seconds on, fd 0 seen again, a new connection evicts the one
    // seen least recently (fd 1, its request with it), and only that one.
    t.handle(&ev(Flow::ToServer, 0, 2_000_000_000), &mut r);
    t.handle(&ev(Flow::ToServer, 3, 2_000_000_001), &mut r);
    assert_eq!(t.connections(), 2);
    assert_eq!(r.unpaired, [Unpaired::TableFull, Unpaired::Evicted]);
    t.sweep(10_000_000_000, 1_000_000_000, &mut r);
    assert_eq!(t.connections(), 0);
    // fd 0 had two requests waiting, fd 3 one.
    assert_eq!(r.unpaired.len(), 5);
    assert!(r.unpaired[1..].iter().all(|u| *u == Unpaired::Evicted));
}

mod traffic;

#[test]
fn each_request_carries_its_first_bytes_sequence_number_and_traceparent() {
    let mut c = Conn1::new();
    let tp = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n";
    // Two pipelined requests in one segment, the second with a traceparent;
    // then a head cut after its request line, whose traceparent line
    // comes whole in the next segment.
    let two = format!("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n{tp}\r\n");
    c.segment(10, 1000, two.as_bytes());
    let first = "GET /a HTTP/1.1\r\n\r\n".len() as u32;
    // The split request line: its start is carried.
    c.segment(11, 1000 + two.len() as u32, b"GET /c HT");
    let rest = "TP/1.1\r\nHost: x\r\nX-Pad: ";
    c.segment(12, 1009 + two.len() as u32, rest.as_bytes());
    let end = format!("1\r\n{tp}\r\n");
    c.segment(13, 1009 + (two.len() + rest.len()) as u32, end.as_bytes());
    for ts in 20..23 {
        c.write(ts, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    }
    let trace = crate::protocols::http::trace_context::parse(
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    assert!(trace.is_some());
    assert_eq!(
        c.r.wire,
        [
            (Some((40000, 1000)), None),
            (Some((40000, 1000 + first)), trace),
            (Some((40000, 1000 + two.len() as u32)), trace),
        ]
    );
}
