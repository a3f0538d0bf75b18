//! Which pairing a connection goes to, from its first bytes, and client
//! connections named by their connect records.

mod http2;
mod sink;

use apm_common::events::{EventKind, PacketHeader, direction, side, tcp_flags};

pub(super) use self::sink::Both;
use super::{
    Streams,
    closing::CLOSE_DELAY_NS,
    pairing::{Origin, Unpaired},
};
use crate::telemetry::synthetic;

fn segment(cookie: u64, dir: u8, whose: u8, seq: u32, data: &[u8]) -> Vec<u8> {
    let header = PacketHeader {
        ts_ns: u64::from(seq) + 1,
        cookie,
        netns: 9,
        port: 6379,
        direction: dir,
        side: whose,
        seq,
        ..Default::default()
    };
    synthetic::packet(header, data)
}

/// The connect record of process `tgid`'s socket `cookie` (or, with
/// `descriptor`, its descriptor's stream `cookie`) to 10.1.2.3.
fn connect(tgid: u32, cookie: u64, descriptor: bool) -> Vec<u8> {
    let addr = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3];
    synthetic::connect(cookie, tgid, addr, 6379, descriptor)
}

#[test]
fn a_request_line_written_in_pieces_stays_http() {
    let (mut s, mut sink) = (Streams::new(16), Both::default());
    let (i, e) = (direction::INGRESS, direction::EGRESS);
    // "GET " alone looks like the start of an inline Redis GET.
    for (seq, piece) in [
        (0, &b"GET "[..]),
        (4, b"/users/7"),
        (12, b" HTTP/1.1\r\n\r\n"),
    ] {
        s.handle_record(&segment(1, i, side::SERVER, seq, piece), &mut sink)
            .expect("record");
    }
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    s.handle_record(&segment(1, e, side::SERVER, 0, ok), &mut sink)
        .expect("record");
    assert_eq!(sink.http, vec![("/users/7".to_owned(), 200)]);
    assert!(sink.redis.is_empty());
}

#[test]
fn resp_connections_and_client_connections_pair_as_redis() {
    let (mut s, mut sink) = (Streams::new(16), Both::default());
    let (i, e) = (direction::INGRESS, direction::EGRESS);
    // Server side: a command array.
    s.handle_record(
        &segment(1, i, side::SERVER, 0, b"*1\r\n$4\r\nPING\r\n"),
        &mut sink,
    )
    .expect("record");
    s.handle_record(&segment(1, e, side::SERVER, 0, b"+PONG\r\n"), &mut sink)
        .expect("record");
    // Client side: unknown until its connect record names it.
    let get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    s.handle_record(&segment(2, e, side::CLIENT, 0, get), &mut sink)
        .expect("record");
    assert_eq!(sink.redis.len(), 1);
    s.handle_record(&connect(77, 3, false), &mut sink)
        .expect("connect");
    // What the client sends (egress) is the command, what it receives the reply.
    s.handle_record(&segment(3, e, side::CLIENT, 0, get), &mut sink)
        .expect("record");
    s.handle_record(&segment(3, i, side::CLIENT, 0, b"$-1\r\n"), &mut sink)
        .expect("record");
    let (name, peer) = sink.redis[1];
    assert_eq!(name, "GET");
    assert_eq!(peer.origin, Origin::Process(77));
    assert_eq!(peer.server, Some("10.1.2.3".parse().expect("ip")));
    assert!(sink.http.is_empty() && sink.unpaired.is_empty());
}

#[test]
fn a_client_call_pairs_as_http_of_its_process_and_to_its_server() {
    let (mut s, mut sink) = (Streams::new(16), Both::default());
    let (i, e) = (direction::INGRESS, direction::EGRESS);
    s.handle_record(&connect(77, 3, false), &mut sink)
        .expect("connect");
    // Two calls on one keep-alive connection; the second's response is
    // chunked over two segments.
    let get = b"GET /back/1?token=secret HTTP/1.1\r\nHost: b\r\n\r\n";
    s.handle_record(&segment(3, e, side::CLIENT, 0, get), &mut sink)
        .expect("record");
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    s.handle_record(&segment(3, i, side::CLIENT, 0, ok), &mut sink)
        .expect("record");
    let post = b"POST /back HTTP/1.1\r\nContent-Length: 1\r\n\r\nx";
    let at = get.len() as u32;
    s.handle_record(&segment(3, e, side::CLIENT, at, post), &mut sink)
        .expect("record");
    let head = b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n";
    let at = ok.len() as u32;
    s.handle_record(&segment(3, i, side::CLIENT, at, head), &mut sink)
        .expect("record");
    assert_eq!(sink.http.len(), 1, "the chunked response has not ended");
    let at = at + head.len() as u32;
    s.handle_record(&segment(3, i, side::CLIENT, at, b"0\r\n\r\n"), &mut sink)
        .expect("record");
    let server = "10.1.2.3".parse().expect("ip");
    assert_eq!(sink.methods, ["GET", "POST"]);
    assert_eq!(
        sink.http.iter().map(|h| h.1).collect::<Vec<_>>(),
        [200, 503]
    );
    assert_eq!(
        sink.origins,
        [
            Origin::Client { tgid: 77, server },
            Origin::Client { tgid: 77, server }
        ]
    );
    assert!(sink.redis.is_empty() && sink.unpaired.is_empty());
}

#[test]
fn a_request_whose_first_byte_is_read_alone_keeps_its_method() {
    // Go's HTTP server reads the next request's first byte by itself while
    // the previous handler runs, then the rest.
    let (mut s, mut sink) = (Streams::new(16), Both::default());
    let record = |kind, ts, data: &[u8]| synthetic::record(kind, ts, 5, 7, 443, data);
    for (kind, ts, data) in [
        (EventKind::Read, 1, &b"GET /a HTTP/1.1\r\n\r\n"[..]),
        (
            EventKind::Write,
            2,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ),
        (EventKind::Read, 3, b"G"),
        (EventKind::Read, 4, b"ET /b HTTP/1.1\r\n\r\n"),
        (
            EventKind::Write,
            5,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        ),
    ] {
        s.handle_record(&record(kind, ts, data), &mut sink)
            .expect("record");
    }
    assert_eq!(
        sink.http,
        vec![("/a".to_owned(), 200), ("/b".to_owned(), 404)]
    );
    assert_eq!(sink.methods, vec!["GET", "GET"]);
    assert!(sink.unpaired.is_empty() && sink.resyncs.is_empty());
}

#[test]
fn a_client_descriptor_pairs_its_writes_as_commands_until_it_closes() {
    let (mut s, mut sink) = (Streams::new(16), Both::default());
    let (tgid, fd) = (77, 9);
    let conn = (u64::from(tgid) << 32) | u64::from(fd);
    s.handle_record(&connect(tgid, conn, true), &mut sink)
        .expect("connect");
    // Its TLS plaintext: what it writes is the command, what it reads
    // the reply.
    let get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    let record = |kind, ts, data: &[u8]| synthetic::record(kind, ts, tgid, fd, 6379, data);
    for (kind, ts, data) in [
        (EventKind::Write, 1, &get[..]),
        (EventKind::Read, 2, b"$1\r\nv\r\n"),
        (EventKind::Close, 3, b""),
    ] {
        s.handle_record(&record(kind, ts, data), &mut sink)
            .expect("record");
    }
    let (name, peer) = sink.redis[0];
    assert_eq!((name, peer.origin), ("GET", Origin::Process(77)));
    assert_eq!(peer.server, Some("10.1.2.3".parse().expect("ip")));
    // Closed: the same descriptor number is a server's connection again
    // (a request read), not the client's.
    s.handle_record(&record(EventKind::Read, 4, get), &mut sink)
        .expect("record");
    s.handle_record(&record(EventKind::Write, 5, b"$-1\r\n"), &mut sink)
        .expect("record");
    assert_eq!(sink.redis.len(), 2);
    assert_eq!(sink.redis[1].1.server, None);
    assert!(sink.http.is_empty() && sink.unpaired.is_empty());
}

#[test]
fn plaintext_keyed_by_socket_pairs_and_its_ciphertext_is_ignored() {
    let (mut s, mut sink) = (Streams::new(16), Both::default());
    let (tgid, server_cookie, client_cookie) = (77, 501, 502);
    let plain = |kind, ts, cookie, data: &[u8]| {
        synthetic::socket_record(kind, ts, tgid, cookie, 8443, data)
    };
    // A server's connection: its request read, a ciphertext segment of
    // the same socket (an old connection's, copied) in between, then the
    // response written.
    s.handle_record(
        &plain(
            EventKind::Read,
            1,
            server_cookie,
            b"GET /a HTTP/1.1\r\n\r\n",
        ),
        &mut sink,
    )
    .expect("read");
    let tls_record = [0x17, 0x03, 0x03, 0x00, 0x20, 0xde, 0xad, 0xbe, 0xef];
    s.handle_record(
        &segment(
            server_cookie,
            direction::INGRESS,
            side::SERVER,
            1,
            &tls_record,
        ),
        &mut sink,
    )
    .expect("ciphertext");
    s.handle_record(
        &plain(
            EventKind::Write,
            3,
            server_cookie,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ),
        &mut sink,
    )
    .expect("write");
    assert_eq!(sink.http, vec![("/a".to_owned(), 200)]);
    // A monitored client's socket, known from its connect record: its
    // writes are the commands, and its close record ends it.
    s.handle_record(&connect(tgid, client_cookie, false), &mut sink)
        .expect("connect");
    let get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    for (kind, ts, data) in [
        (EventKind::Write, 4, &get[..]),
        (EventKind::Read, 5, b"$1\r\nv\r\n"),
        (EventKind::Close, 6, b""),
    ] {
        s.handle_record(&plain(kind, ts, client_cookie, data), &mut sink)
            .expect("record");
    }
    let (name, peer) = sink.redis[0];
    assert_eq!(
        (name, peer.server),
        ("GET", Some("10.1.2.3".parse().expect("ip")))
    );
    s.handle_record(&plain(EventKind::Close, 7, server_cookie, b""), &mut sink)
        .expect("close");
    s.sweep(7 + CLOSE_DELAY_NS, u64::MAX, &mut sink);
    assert_eq!(s.connections(), 0);
    assert!(
        sink.unpaired.is_empty() && sink.resyncs.is_empty(),
        "{:?}",
        sink.resyncs
    );
}

#[test]
fn a_memory_bio_objects_records_wait_for_its_tie_and_pair_as_its_sockets() {
    let (mut s, mut sink) = (Streams::new(16), Both::default());
    let (tgid, ssl, cookie) = (77, 0x7f00_1000, 601);
    let object = |kind, ts, ssl, data: &[u8]| synthetic::object_record(kind, ts, tgid, ssl, data);
    for (kind, ts, ssl, data) in [
        (EventKind::Read, 1, ssl, &b"GET /a HTTP/1.1\r\n\r\n"[..]),
        // Another object, freed before it sent anything.
        (EventKind::Read, 2, ssl + 64, b"GET /lost HTTP/1.1\r\n\r\n"),
        (EventKind::Close, 3, ssl + 64, b""),
        (
            EventKind::Write,
            4,
            ssl,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ),
    ] {
        s.handle_record(&object(kind, ts, ssl, data), &mut sink)
            .expect("object record");
    }
    assert!(sink.http.is_empty(), "nothing is paired before the tie");
    s.handle_record(
        &synthetic::tie_record(5, tgid, ssl, cookie, 8443),
        &mut sink,
    )
    .expect("tie");
    assert_eq!(sink.http, vec![("/a".to_owned(), 200)]);
    assert_eq!(s.take_untied_lost(), 1, "the freed object's read");
    // From the tie on, the object's calls come keyed by its socket.
    let plain =
        |kind, ts, data: &[u8]| synthetic::socket_record(kind, ts, tgid, cookie, 8443, data);
    s.handle_record(
        &plain(EventKind::Read, 6, b"GET /b HTTP/1.1\r\n\r\n"),
        &mut sink,
    )
    .expect("read");
    s.handle_record(
        &plain(
            EventKind::Write,
            7,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        ),
        &mut sink,
    )
    .expect("write");
    assert_eq!(
        sink.http,
        vec![("/a".to_owned(), 200), ("/b".to_owned(), 404)]
    );
    assert!(sink.unpaired.is_empty() && sink.resyncs.is_empty());
}

#[test]
fn a_socket_close_ahead_of_the_owners_last_write_waits_for_it() {
    let (mut s, mut sink) = (Streams::new(16), Both::default());
    let record = |kind, ts, data: &[u8]| synthetic::socket_record(kind, ts, 77, 501, 8443, data);
    s.handle_record(
        &record(EventKind::Read, 1, b"GET /a HTTP/1.1\r\n\r\n"),
        &mut sink,
    )
    .expect("read");
    // The peer's reset ends the socket (softirq) before the return probe
    // of the server's SSL_write has run.
    s.handle_record(&record(EventKind::Close, 2, b""), &mut sink)
        .expect("close");
    assert_eq!(s.connections(), 1);
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    s.handle_record(&record(EventKind::Write, 3, ok), &mut sink)
        .expect("write");
    assert_eq!(sink.http, vec![("/a".to_owned(), 200)]);
    // Due once a later record (or a sweep) passes its delay.
    let other = synthetic::socket_record(
        EventKind::Read,
        2 + CLOSE_DELAY_NS,
        77,
        502,
        8443,
        b"GET /b HTTP/1.1\r\n\r\n",
    );
    s.handle_record(&other, &mut sink).expect("later");
    assert_eq!(s.connections(), 1);
    assert!(sink.unpaired.is_empty(), "{:?}", sink.unpaired);
}

/// A server-side segment with the ACK flag, acknowledging `ack`.
fn acked(cookie: u64, dir: u8, seq: u32, ack: u32, flags: u8, data: &[u8]) -> Vec<u8> {
    let header = PacketHeader {
        ts_ns: u64::from(seq) + 1,
        cookie,
        netns: 9,
        port: 8080,
        direction: dir,
        side: side::SERVER,
        seq,
        ack,
        flags: flags | tcp_flags::ACK,
        ..Default::default()
    };
    synthetic::packet(header, data)
}

#[test]
fn a_retransmission_fills_the_hole_and_pairing_stays_exact() {
    let (mut s, mut sink) = (Streams::new(16), Both::default());
    let (i, e) = (direction::INGRESS, direction::EGRESS);
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n";
    let n = head.len() as u32;
    s.handle_record(&acked(1, i, 0, 0, 0, b"GET /a HTTP/1.1\r\n\r\n"), &mut sink)
        .expect("record");
    // The response head and the first half of its body are lost once; the
    // second half arrives first, then the retransmission.
    s.handle_record(&acked(1, e, n + 10, 19, 0, b"0123456789"), &mut sink)
        .expect("record");
    assert!(sink.http.is_empty() && sink.resyncs.is_empty());
    let mut first = head.to_vec();
    first.extend_from_slice(b"abcdefghij");
    s.handle_record(&acked(1, e, 0, 19, 0, &first), &mut sink)
        .expect("record");
    assert_eq!(sink.http, vec![("/a".to_owned(), 200)]);
    // The server closes; its last segment is retransmitted after the FIN.
    s.handle_record(&acked(1, e, n + 20, 19, tcp_flags::FIN, b""), &mut sink)
        .expect("record");
    s.handle_record(&acked(1, e, n + 10, 19, 0, b"0123456789"), &mut sink)
        .expect("record");
    s.handle_record(&acked(1, e, 0, 19, 0, &first), &mut sink)
        .expect("record");
    assert!(sink.resyncs.is_empty(), "{:?}", sink.resyncs);
    assert!(sink.unpaired.is_empty(), "{:?}", sink.unpaired);
    assert_eq!(s.connections(), 0);
}

#[test]
fn a_keep_alive_connection_first_seen_mid_body_stays_http() {
    let (mut s, mut sink) = (Streams::new(16), Both::default());
    let (i, e) = (direction::INGRESS, direction::EGRESS);
    // The agent starts in the middle of a response whose body is text
    // that looks like RESP ("#", "-", "*" lines), then of an upload.
    let next = b"GET /next HTTP/1.1\r\n\r\n";
    let after = 12 + next.len() as u32;
    s.handle_record(&acked(1, e, 0, 0, 0, b"# heading\n- item\n"), &mut sink)
        .expect("record");
    s.handle_record(&acked(1, i, 0, 17, 0, b"*3 starred\r\n"), &mut sink)
        .expect("record");
    s.handle_record(&acked(1, i, 12, 17, 0, next), &mut sink)
        .expect("record");
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    s.handle_record(&acked(1, e, 17, after, 0, ok), &mut sink)
        .expect("record");
    assert!(sink.redis.is_empty());
    assert_eq!(sink.http, vec![("/next".to_owned(), 200)]);
    assert!(sink.unpaired.is_empty());
}

#[test]
fn a_full_resp_table_counts_commands_once_and_leaves_them_out_of_http() {
    let (mut s, mut sink) = (Streams::new(2), Both::default());
    let (i, e) = (direction::INGRESS, direction::EGRESS);
    for cookie in 1..=3 {
        let ping = segment(cookie, i, side::SERVER, 0, b"*1\r\n$4\r\nPING\r\n");
        s.handle_record(&ping, &mut sink).expect("record");
    }
    // The third connection's command: table_full, and not not_http.
    assert_eq!(sink.unpaired, [Unpaired::TableFull]);
    assert_eq!(s.connections(), 2);
    // Its reply carries no command: nothing more is counted.
    s.handle_record(&segment(3, e, side::SERVER, 0, b"+PONG\r\n"), &mut sink)
        .expect("record");
    assert_eq!(sink.unpaired, [Unpaired::TableFull]);
    assert_eq!(s.connections(), 2);
}

#[test]
fn connect_records_are_bounded_and_the_least_recently_seen_idle_make_room() {
    let (mut s, mut sink) = (Streams::new(2), Both::default());
    // A GET from client socket `cookie` and its reply, at `seq` (time
    // seq + 1).
    let exchange = |s: &mut Streams, sink: &mut Both, cookie, seq| {
        let get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        for (dir, data) in [
            (direction::EGRESS, &get[..]),
            (direction::INGRESS, b"$-1\r\n"),
        ] {
            s.handle_record(&segment(cookie, dir, side::CLIENT, seq, data), sink)
                .expect("record");
        }
    };
    for cookie in 1..=3 {
        s.handle_record(&connect(70 + cookie as u32, cookie, false), &mut sink)
            .expect("connect");
    }
    // Full of connections made just now: the third is not named, so its
    // commands are not timed.
    exchange(&mut s, &mut sink, 3, 0);
    assert!(sink.redis.is_empty());
    // Two seconds on, socket 1 is seen again; a new connect record evicts
    // socket 2's, seen least recently.
    exchange(&mut s, &mut sink, 1, 2_000_000_000);
    s.handle_record(&connect(73, 3, false), &mut sink)
        .expect("connect");
    assert!(s.outbound.contains(1) && !s.outbound.contains(2));
    exchange(&mut s, &mut sink, 3, 2_000_000_000);
    exchange(&mut s, &mut sink, 2, 2_000_000_000);
    let timed: Vec<Origin> = sink.redis.iter().map(|(_, p)| p.origin).collect();
    assert_eq!(timed, [Origin::Process(71), Origin::Process(73)]);
    // Idle ones go at the sweep: a client's connection (whose call it
    // is) after 12 idle periods, its protocol's state after one.
    s.sweep(10_000_000_000, 1_000_000_000, &mut sink);
    assert_eq!((s.outbound.len(), s.connections()), (2, 0));
    s.sweep(20_000_000_000, 1_000_000_000, &mut sink);
    assert_eq!(s.outbound.len(), 0);
}

#[test]
fn a_request_that_completed_its_handshake_joins_its_connection() {
    let (mut s, mut sink) = (Streams::new(16), Both::default());
    let (i, e) = (direction::INGRESS, direction::EGRESS);
    let get = b"GET /first HTTP/1.1\r\n\r\n";
    // The client's last handshake ACK was lost: its request went through
    // the listener (cookie 100), from client port 40000.
    let via_listener = PacketHeader {
        ts_ns: 1,
        cookie: 100,
        netns: 9,
        port: 8080,
        remote_port: 40000,
        direction: i,
        side: side::LISTENER,
        seq: 1,
        ack: 501,
        flags: tcp_flags::ACK,
        ..Default::default()
    };
    s.handle_record(&synthetic::packet(via_listener, get), &mut sink)
        .expect("record");
    assert!(sink.http.is_empty() && sink.resyncs.is_empty());
    // The new connection's (cookie 7) response, acknowledging the request.
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let response = PacketHeader {
        ts_ns: 5,
        cookie: 7,
        netns: 9,
        port: 8080,
        remote_port: 40000,
        direction: e,
        side: side::SERVER,
        seq: 501,
        ack: 1 + get.len() as u32,
        flags: tcp_flags::ACK,
        ..Default::default()
    };
    s.handle_record(&synthetic::packet(response, ok), &mut sink)
        .expect("record");
    assert_eq!(sink.http, vec![("/first".to_owned(), 200)]);
    assert!(sink.resyncs.is_empty(), "{:?}", sink.resyncs);
    // One that never finds its connection is counted when it expires.
    let lone = PacketHeader {
        remote_port: 40001,
        ..via_listener
    };
    s.handle_record(&synthetic::packet(lone, get), &mut sink)
        .expect("record");
    s.sweep(10_000_000_000, 300_000_000_000, &mut sink);
    assert_eq!(sink.resyncs, vec![Unpaired::Gap]);
}
