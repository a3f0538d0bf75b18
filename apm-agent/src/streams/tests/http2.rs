//! HTTP/2 and gRPC through `Streams`: streams interleaved on one
//! connection, statuses from trailers, resets, and frames split anywhere.

use apm_common::events::{EventKind, PacketHeader, direction, side, tcp_flags};
use loona_hpack::Encoder;

use super::{Both, connect};
use crate::{
    protocols::http2::frames::{PREFACE, flags, kind},
    streams::{
        Streams,
        pairing::{Origin, Unpaired},
    },
    telemetry::synthetic,
};

const MS: u64 = 1_000_000;

fn frame(k: u8, f: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    b.extend([k, f]);
    b.extend(stream.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

fn headers(e: &mut Encoder<'_>, stream: u32, end: bool, fields: &[(&str, &str)]) -> Vec<u8> {
    let block = e.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    let f = flags::END_HEADERS | if end { flags::END_STREAM } else { 0 };
    frame(kind::HEADERS, f, stream, &block)
}

fn grpc_call(e: &mut Encoder<'_>, stream: u32, method: &str, timeout: &str) -> Vec<u8> {
    let mut b = headers(
        e,
        stream,
        false,
        &[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("grpc-timeout", timeout),
            ("te", "trailers"),
        ],
    );
    b.extend(frame(
        kind::DATA,
        flags::END_STREAM,
        stream,
        &[0, 0, 0, 0, 2, 8, 1],
    ));
    b
}

/// One conversation: (to the server?, time, bytes).
fn conversation() -> Vec<(bool, u64, Vec<u8>)> {
    let (mut c, mut s) = (Encoder::new(), Encoder::new());
    let mut first = PREFACE.to_vec();
    first.extend(frame(kind::SETTINGS, 0, 0, &[]));
    first.extend(grpc_call(&mut c, 1, "/shop.Cart/Get", "1S"));
    first.extend(headers(
        &mut c,
        3,
        true,
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/items/7?secret=1"),
            (":authority", "localhost"),
        ],
    ));
    first.extend(grpc_call(&mut c, 5, "/shop.Cart/Slow", "10m"));
    let mut answers = frame(kind::SETTINGS, 0, 0, &[]);
    answers.extend(headers(&mut s, 3, true, &[(":status", "404")]));
    answers.extend(headers(
        &mut s,
        1,
        false,
        &[(":status", "200"), ("content-type", "application/grpc")],
    ));
    answers.extend(frame(kind::DATA, 0, 1, &[0, 0, 0, 0, 0]));
    answers.extend(headers(
        &mut s,
        1,
        true,
        &[("grpc-status", "5"), ("grpc-message", "no such cart")],
    ));
    // The client gives up on stream 5 after its 10 ms deadline.
    let cancel = frame(kind::RST_STREAM, 0, 5, &8u32.to_be_bytes());
    vec![
        (true, MS, first),
        (false, 3 * MS, answers),
        (true, 20 * MS, cancel),
    ]
}

fn run(pieces: &[(bool, u64, Vec<u8>)]) -> Both {
    let (mut streams, mut sink) = (Streams::new(16), Both::default());
    for (to_server, ts, bytes) in pieces {
        let kind = if *to_server {
            EventKind::Read
        } else {
            EventKind::Write
        };
        let record = synthetic::record(kind, *ts, 7, 4, 50051, bytes);
        streams.handle_record(&record, &mut sink).expect("record");
    }
    let close = synthetic::record(EventKind::Close, 30 * MS, 7, 4, 50051, b"");
    streams.handle_record(&close, &mut sink).expect("close");
    sink
}

/// [`conversation`]'s outcomes: its HTTP request, its Get's NOT_FOUND,
/// and its Slow call reset with gRPC status `slow`.
fn conversation_paired(sink: &Both, slow: u16) {
    assert_eq!(sink.http, vec![("/items/7".to_owned(), 404)]);
    let mut rpc = sink.rpc.clone();
    rpc.sort();
    assert_eq!(
        rpc,
        vec![
            ("/shop.Cart/Get".to_owned(), 5),
            ("/shop.Cart/Slow".to_owned(), slow),
        ]
    );
}

#[test]
fn grpc_calls_and_http2_requests_pair_per_stream() {
    let sink = run(&conversation());
    conversation_paired(&sink, 4);
    assert!(sink.unpaired.is_empty(), "{:?}", sink.unpaired);
    assert!(sink.resyncs.is_empty(), "{:?}", sink.resyncs);
}

/// A segment of client socket `cookie` at `seq` that acknowledges the
/// other direction up to `ack` (what places a direction's first bytes
/// that start no HTTP/1, RESP or SQL message).
fn acked(cookie: u64, dir: u8, seq: u32, ack: u32, data: &[u8]) -> Vec<u8> {
    let header = PacketHeader {
        ts_ns: u64::from(seq) + 1,
        cookie,
        netns: 9,
        port: 50051,
        direction: dir,
        side: side::CLIENT,
        seq,
        ack,
        flags: tcp_flags::ACK,
        ..Default::default()
    };
    synthetic::packet(header, data)
}

#[test]
fn a_monitored_clients_http2_calls_are_its_own_to_its_server() {
    let (mut s, mut sink) = (Streams::new(16), Both::default());
    s.handle_record(&connect(77, 3, false), &mut sink)
        .expect("connect");
    // Bytes sent and received so far.
    let mut at = [0u32; 2];
    for (to_server, _, bytes) in conversation() {
        let (dir, i) = if to_server {
            (direction::EGRESS, 0)
        } else {
            (direction::INGRESS, 1)
        };
        s.handle_record(&acked(3, dir, at[i], at[1 - i], &bytes), &mut sink)
            .expect("record");
        at[i] += bytes.len() as u32;
    }
    // Stream 5 is reset (in this test's clock) long before its deadline.
    conversation_paired(&sink, 1);
    let server = "10.1.2.3".parse().expect("ip");
    assert_eq!(sink.origins, [Origin::Client { tgid: 77, server }; 3]);
    assert!(sink.unpaired.is_empty(), "{:?}", sink.unpaired);
}

#[test]
fn frames_split_at_every_byte_pair_the_same() {
    let whole = conversation();
    let expected = run(&whole);
    for (i, (to_server, ts, bytes)) in whole.iter().enumerate() {
        // A connection is taken for HTTP/2 by its first read holding the
        // start of the preface (a segment holds all of it).
        let from = if i == 0 { 4 } else { 1 };
        for cut in from..bytes.len() {
            let mut pieces = whole.clone();
            let (a, b) = bytes.split_at(cut);
            pieces.splice(
                i..=i,
                [(*to_server, *ts, a.to_vec()), (*to_server, *ts, b.to_vec())],
            );
            let got = run(&pieces);
            assert_eq!(got.http, expected.http, "piece {i} cut at {cut}");
            let (mut a, mut b) = (got.rpc.clone(), expected.rpc.clone());
            a.sort();
            b.sort();
            assert_eq!(a, b, "piece {i} cut at {cut}");
        }
    }
}

#[test]
fn responses_framing_lost_counts_the_open_streams_and_resumes_at_frames() {
    let mut pieces = conversation();
    let answers = pieces[1].2.clone();
    // The answers' bytes are seen but a frame header sits past what
    // was captured: a piece whose captured prefix ends mid-header.
    let cut = 9 + 3;
    let (mut streams, mut sink) = (Streams::new(16), Both::default());
    let record = |to_server: bool, ts: u64, data: &[u8], len: usize| {
        let kind = if to_server {
            EventKind::Read
        } else {
            EventKind::Write
        };
        let mut r = synthetic::record(kind, ts, 7, 4, 50051, data);
        // `ret` (bytes moved) past the captured bytes.
        r[32..40].copy_from_slice(&(len as i64).to_ne_bytes());
        r
    };
    streams
        .handle_record(
            &record(true, MS, &pieces[0].2, pieces[0].2.len()),
            &mut sink,
        )
        .expect("requests");
    streams
        .handle_record(
            &record(false, 2 * MS, &answers[..cut], answers.len()),
            &mut sink,
        )
        .expect("answers cut");
    // The three open streams are counted now, their ends unseen.
    assert_eq!(
        sink.unpaired.len() + sink.rpc.len(),
        3,
        "{:?}",
        sink.unpaired
    );
    assert!(sink.unpaired.iter().all(|r| *r == Unpaired::Gap));
    // A later answer that starts with frames resumes them; a request
    // after it pairs again (its table entries, older, are unknown: the
    // encoder here only uses the static table and literals).
    let mut c = Encoder::new();
    pieces[2] = (
        true,
        5 * MS,
        headers(
            &mut c,
            7,
            true,
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/items/9"),
                (":authority", "localhost"),
            ],
        ),
    );
    streams
        .handle_record(
            &record(true, 5 * MS, &pieces[2].2, pieces[2].2.len()),
            &mut sink,
        )
        .expect("request");
    let reply = headers(&mut Encoder::new(), 7, true, &[(":status", "200")]);
    streams
        .handle_record(&record(false, 6 * MS, &reply, reply.len()), &mut sink)
        .expect("reply");
    assert_eq!(sink.http, vec![("/items/9".to_owned(), 200)]);
}

#[test]
fn open_streams_at_close_and_lost_framing_are_counted() {
    let mut pieces = conversation();
    // No answers: every stream is still open at the close.
    pieces.remove(1);
    let sink = run(&pieces);
    assert!(sink.http.is_empty());
    // Stream 5 ended by its reset; 1 and 3 by the close.
    assert_eq!(sink.rpc, vec![("/shop.Cart/Slow".to_owned(), 4)]);
    assert_eq!(
        sink.unpaired,
        vec![Unpaired::ClosedMidResponse, Unpaired::ClosedMidResponse]
    );
}

/// A literal field with an indexed name (RFC 7541 §6.2.2, not indexed).
fn literal(name_index: u8, value: &str) -> Vec<u8> {
    let mut b = vec![name_index, value.len() as u8];
    b.extend_from_slice(value.as_bytes());
    b
}

/// A connection joined mid-way: fields in entries apm never saw. A
/// request whose content-type may sit in one is told gRPC or HTTP by its
/// response, and counted unknown when that says nothing either.
#[test]
fn a_joined_connection_tells_grpc_from_http_by_the_response() {
    let h = |stream: u32, end: bool, block: Vec<u8>| {
        let f = flags::END_HEADERS | if end { flags::END_STREAM } else { 0 };
        frame(kind::HEADERS, f, stream, &block)
    };
    // Requests: POST (static 3), :path inserted (name 4, incremental
    // indexing), and an entry apm never saw (index 63, past the one
    // inserted here): the client's content-type, say.
    let mut post = vec![0x83, 0x44, 14];
    post.extend_from_slice(b"/shop.Cart/New");
    post.push(0x80 | 63);
    let mut requests = h(3, false, post);
    requests.extend(frame(kind::DATA, flags::END_STREAM, 3, &[0, 0, 0, 0, 0]));
    // The same path again (now index 62, seen), content-type unknown.
    requests.extend(h(5, false, vec![0x83, 0x80 | 62, 0x80 | 63]));
    requests.extend(frame(kind::DATA, flags::END_STREAM, 5, &[0, 0, 0, 0, 0]));
    // GET (static 2), a literal path, and an unknown field.
    let mut get = vec![0x82];
    get.extend(literal(0x04, "/items"));
    get.push(0x80 | 63);
    requests.extend(h(7, true, get));
    // Responses: 200 with a gRPC content-type (name 31, the 4-bit prefix
    // overflowing: 15 + 16); 200 and an unknown field, then trailers
    // that say nothing known; 404 whose every field is known.
    let mut grpc = vec![0x88, 0x0f, 0x10, 16];
    grpc.extend_from_slice(b"application/grpc");
    let mut responses = h(3, false, grpc);
    let mut trailers = vec![0x00, 11];
    trailers.extend_from_slice(b"grpc-status");
    trailers.extend([1, b'0']);
    responses.extend(h(3, true, trailers));
    responses.extend(h(5, false, vec![0x88, 0x80 | 64]));
    responses.extend(h(5, true, vec![0x80 | 64]));
    responses.extend(h(7, true, vec![0x8d]));
    let sink = run(&[(true, MS, requests), (false, 2 * MS, responses)]);
    assert_eq!(sink.rpc, vec![("/shop.Cart/New".to_owned(), 0)]);
    assert_eq!(sink.http, vec![("/items".to_owned(), 404)]);
    assert_eq!(sink.unpaired, vec![Unpaired::HpackUnknown]);
    assert!(sink.resyncs.is_empty(), "{:?}", sink.resyncs);
}

/// A server that speaks first (its SETTINGS before the client's preface)
/// is taken for a connection joined mid-way until the preface comes:
/// that is the start, and nothing of the client's is lost.
#[test]
fn a_server_speaking_first_loses_nothing_of_its_client() {
    let mut pieces = conversation();
    let mut settings = frame(kind::SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
    settings.extend(frame(8, 0, 0, &1_000u32.to_be_bytes()));
    pieces.insert(0, (false, MS / 2, settings));
    let sink = run(&pieces);
    assert_eq!(sink.http, vec![("/items/7".to_owned(), 404)]);
    assert_eq!(sink.rpc.len(), 2, "{:?}", sink.rpc);
    assert!(sink.resyncs.is_empty(), "{:?}", sink.resyncs);
}

#[test]
fn a_reset_near_its_deadline_is_the_deadline_and_earlier_a_cancel() {
    let mut c = Encoder::new();
    let mut first = PREFACE.to_vec();
    first.extend(grpc_call(&mut c, 1, "/shop.Cart/Hang", "100m"));
    first.extend(grpc_call(&mut c, 3, "/shop.Cart/Hang", "100m"));
    let rst = |stream| frame(kind::RST_STREAM, 0, stream, &8u32.to_be_bytes());
    // The headers left the client's socket 5 ms after it wrote the
    // timeout: its deadline comes 95 ms after them.
    let sink = run(&[
        (true, MS, first),
        (true, 80 * MS, rst(3)),
        (true, 96 * MS, rst(1)),
    ]);
    let mut rpc = sink.rpc.clone();
    rpc.sort();
    assert_eq!(
        rpc,
        vec![
            ("/shop.Cart/Hang".to_owned(), 1),
            ("/shop.Cart/Hang".to_owned(), 4),
        ]
    );
}

#[test]
fn a_request_upgraded_to_h2c_is_stream_1_and_the_connection_goes_on_as_http2() {
    let (mut c, mut s) = (Encoder::new(), Encoder::new());
    let upgrade = b"GET /items/7 HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n\
        Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        .to_vec();
    let mut switched =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".to_vec();
    switched.extend(frame(kind::SETTINGS, 0, 0, &[]));
    switched.extend(headers(&mut s, 1, false, &[(":status", "200")]));
    switched.extend(frame(kind::DATA, flags::END_STREAM, 1, b"{}"));
    let mut preface = PREFACE.to_vec();
    preface.extend(frame(kind::SETTINGS, 0, 0, &[]));
    preface.extend(headers(
        &mut c,
        3,
        true,
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/missing"),
            (":authority", "a"),
        ],
    ));
    let answer = headers(&mut s, 3, true, &[(":status", "404")]);
    let sink = run(&[
        (true, MS, upgrade),
        (false, 2 * MS, switched),
        (true, 3 * MS, preface),
        (false, 4 * MS, answer),
    ]);
    assert_eq!(
        sink.http,
        vec![("/items/7".to_owned(), 200), ("/missing".to_owned(), 404)]
    );
    assert!(sink.unpaired.is_empty(), "{:?}", sink.unpaired);
    assert!(sink.resyncs.is_empty(), "{:?}", sink.resyncs);
}

#[test]
fn a_websockets_101_stays_http1() {
    let upgrade =
        b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            .to_vec();
    let mut switched =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            .to_vec();
    switched.extend([0x81, 0x02, b'h', b'i']);
    let sink = run(&[(true, MS, upgrade), (false, 2 * MS, switched)]);
    assert_eq!(sink.http, vec![("/chat".to_owned(), 101)]);
}

#[test]
fn an_http2_connection_idle_for_minutes_keeps_its_tables() {
    let (mut c, mut s) = (Encoder::new(), Encoder::new());
    let fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/shop.Cart/Get"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("x-tenant", "acme"),
    ];
    let call = |c: &mut Encoder<'_>, stream| {
        let mut b = headers(c, stream, false, &fields);
        b.extend(frame(kind::DATA, flags::END_STREAM, stream, &[0; 5]));
        b
    };
    let answer = |s: &mut Encoder<'_>, stream| {
        let mut b = headers(
            s,
            stream,
            false,
            &[(":status", "200"), ("content-type", "application/grpc")],
        );
        b.extend(headers(s, stream, true, &[("grpc-status", "0")]));
        b
    };
    let mut first = PREFACE.to_vec();
    first.extend(call(&mut c, 1));
    let (mut streams, mut sink) = (Streams::new(16), Both::default());
    let minute = 60_000 * MS;
    for (to_server, ts, bytes) in [
        (true, MS, first),
        (false, 2 * MS, answer(&mut s, 1)),
        // Ten minutes later, the same call: its fields are all table
        // entries by now.
        (true, 10 * minute, call(&mut c, 3)),
        (false, 10 * minute + MS, answer(&mut s, 3)),
    ] {
        let kind = if to_server {
            EventKind::Read
        } else {
            EventKind::Write
        };
        // The agent sweeps every refresh; 5 minutes is its idle limit.
        streams.sweep(ts, 5 * minute, &mut sink);
        let record = synthetic::record(kind, ts, 7, 4, 50051, &bytes);
        streams.handle_record(&record, &mut sink).expect("record");
    }
    assert_eq!(sink.rpc, vec![("/shop.Cart/Get".to_owned(), 0); 2]);
    assert!(sink.unpaired.is_empty(), "{:?}", sink.unpaired);
}
