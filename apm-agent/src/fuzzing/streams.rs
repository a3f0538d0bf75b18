//! The `streams` fuzz target: whole HTTP and RESP conversations, cut into
//! packet records the way the kernel cuts segments, then lost, repeated,
//! reordered and interleaved as the bytes choose.
//!
//! Input, byte by byte (a missing byte ends that part):
//! 1. the table size (1 to 4) and the number of connections (1 to 3);
//! 2. per connection: its kind (HTTP, RESP, a RESP client's connection
//!    with its connect record; records per segment; how it closes), its
//!    messages (a request and a response index each, either may be none)
//!    and where its sequence numbers start;
//! 3. per direction of each connection: segment sizes (one byte each, the
//!    rest in one segment once they run out);
//! 4. delivery: each byte takes the next record of a queue it picks, maybe
//!    after swapping it with the one behind it, and loses it, delivers it,
//!    or delivers it and queues it again (a retransmission); the time step
//!    too. What is left is delivered in order.

use std::{collections::VecDeque, sync::Arc};

use apm_common::events::{
    DATA_CAP, MAX_CHUNKS, PacketHeader, TAIL_CAP, direction, side, tcp_flags,
};

use crate::{
    protocols::{resp::commands::Command, routes::Route, sql::Statement},
    streams::{
        Streams,
        http2::{RpcCall, RpcSink},
        pairing::{Completed, MAX_PIPELINE, Origin, Sink, Unpaired},
        postgres::{Outcome, StatementSink},
        resp::{CacheResult, CommandSink, Peer},
        sql::System,
    },
    telemetry::synthetic,
};

/// Connections at most (cookies 1..=CONNS).
const CONNS: usize = 3;
/// Messages per connection at most.
const MESSAGES: u8 = 8;
const HEADER: usize = std::mem::size_of::<PacketHeader>();

/// Arbitrary bytes, one at a time.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
}

/// HTTP requests (none contains a line a Redis command could start).
fn http_request(i: u8) -> Vec<u8> {
    match i % 6 {
        0 => b"GET /a HTTP/1.1\r\n\r\n".to_vec(),
        1 => b"POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
        2 => b"GET /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
        3 => b"HEAD /d HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        4 => big(
            b"PUT /e HTTP/1.1\r\nContent-Length: 1500\r\n\r\n",
            b'v',
            1500,
            b"",
        ),
        _ => b"OPTIONS * HTTP/1.1\r\n\r\n".to_vec(),
    }
}

fn http_response(i: u8) -> Vec<u8> {
    match i % 7 {
        0 => b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
        1 => b"HTTP/1.1 500 X\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        2 => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec()
        }
        3 => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n".to_vec(),
        4 => big(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n",
            b'x',
            2000,
            b"",
        ),
        5 => big(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n",
            b'y',
            2000,
            b"\r\n0\r\n\r\n",
        ),
        _ => b"HTTP/1.1 304 Not Modified\r\n\r\n".to_vec(),
    }
}

/// Redis commands: arrays, an inline one, MULTI/EXEC, subscriptions.
fn resp_command(i: u8) -> Vec<u8> {
    match i % 9 {
        0 => b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec(),
        1 => b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n".to_vec(),
        2 => b"PING\r\n".to_vec(),
        3 => b"*1\r\n$5\r\nMULTI\r\n".to_vec(),
        4 => b"*1\r\n$4\r\nEXEC\r\n".to_vec(),
        5 => b"*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\nb\r\n".to_vec(),
        6 => b"*1\r\n$11\r\nUNSUBSCRIBE\r\n".to_vec(),
        7 => big(
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1500\r\n",
            b'v',
            1500,
            b"\r\n",
        ),
        _ => b"*2\r\n$8\r\nSMEMBERS\r\n$1\r\ns\r\n".to_vec(),
    }
}

fn resp_reply(i: u8) -> Vec<u8> {
    match i % 11 {
        0 => b"+OK\r\n".to_vec(),
        1 => b"$-1\r\n".to_vec(),
        2 => b"$1\r\nv\r\n".to_vec(),
        3 => b"+QUEUED\r\n".to_vec(),
        4 => b"*2\r\n$-1\r\n+OK\r\n".to_vec(),
        5 => b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n".to_vec(),
        6 => b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n".to_vec(),
        7 => b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n".to_vec(),
        8 => b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n".to_vec(),
        9 => big(b"$2000\r\n", b'x', 2000, b"\r\n"),
        _ => b"*2\r\n$9\r\nsubscribe\r\n$10\r\nnewsletter\r\n".to_vec(),
    }
}

fn big(head: &[u8], fill: u8, n: usize, end: &[u8]) -> Vec<u8> {
    let mut out = head.to_vec();
    out.resize(head.len() + n, fill);
    out.extend_from_slice(end);
    out
}

/// One connection as the input describes it.
struct Conn {
    resp: bool,
    client: bool,
    /// Records one segment becomes (the kernel's `CAPTURE_PORTS` value).
    chunks: u32,
    close: Option<u8>,
    /// Request and response bytes.
    streams: [Vec<u8>; 2],
    /// Requests (or commands) in the request stream.
    requests: u64,
    seq: u32,
}

impl Conn {
    fn read(input: &mut Input<'_>) -> Self {
        let c = input.byte().unwrap_or(0);
        let resp = c & 1 != 0;
        let mut conn = Self {
            resp,
            client: resp && c & 2 != 0,
            chunks: if resp {
                1 + u32::from((c >> 2) & 15) % MAX_CHUNKS
            } else {
                1
            },
            close: match c >> 6 {
                0 => None,
                1 | 2 => Some(tcp_flags::FIN),
                _ => Some(tcp_flags::RST),
            },
            streams: [Vec::new(), Vec::new()],
            requests: 0,
            seq: 0,
        };
        let messages = input.byte().unwrap_or(0) % (MESSAGES + 1);
        for _ in 0..messages {
            let m = input.byte().unwrap_or(0);
            // Index 15 of either half: no message.
            let (req, res) = (m & 15, m >> 4);
            if req != 15 {
                let bytes = if resp {
                    resp_command(req)
                } else {
                    http_request(req)
                };
                conn.streams[0].extend(bytes);
                conn.requests += 1;
            }
            if res != 15 {
                let bytes = if resp {
                    resp_reply(res)
                } else {
                    http_response(res)
                };
                conn.streams[1].extend(bytes);
            }
        }
        let b = input.byte().unwrap_or(1);
        // Some streams wrap around 2^32.
        conn.seq = u32::from_le_bytes([b; 4]).wrapping_sub(2048);
        conn
    }

    /// The socket's own direction of the request or response stream.
    fn direction(&self, dir: usize) -> u8 {
        let server_side = [direction::INGRESS, direction::EGRESS][dir];
        match (self.client, server_side) {
            (false, d) => d,
            (true, direction::INGRESS) => direction::EGRESS,
            (true, _) => direction::INGRESS,
        }
    }
}

/// A packet record and what it covers of its stream.
#[derive(Clone)]
struct Rec {
    bytes: Vec<u8>,
    conn: usize,
    dir: usize,
    off: u32,
    len: u32,
}

/// Cuts stream `dir` of connection `i` into segments of sizes the input
/// picks, each into records as the packet programs write them: up to
/// `chunks` records of DATA_CAP bytes, the last one carrying the rest of
/// the segment's length (captured up to DATA_CAP) and its last TAIL_CAP
/// bytes when longer.
fn cut(input: &mut Input<'_>, i: usize, conn: &Conn, dir: usize) -> Vec<Rec> {
    let stream = &conn.streams[dir];
    let header = PacketHeader {
        cookie: i as u64 + 1,
        netns: i as u64 + 1,
        port: if conn.resp { 6379 } else { 8080 },
        direction: conn.direction(dir),
        side: if conn.client {
            side::CLIENT
        } else {
            side::SERVER
        },
        ..Default::default()
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let size = match input.byte() {
            Some(s) => match s >> 6 {
                0 => 1 + usize::from(s & 63),
                1 => 64 + usize::from(s & 63) * 16,
                2 => DATA_CAP + usize::from(s & 63) * 64,
                _ => stream.len(),
            },
            None => stream.len(),
        };
        let segment = &stream[at..stream.len().min(at + size)];
        let mut off = 0;
        for chunk in 0..conn.chunks {
            let rest = segment.len() - off;
            let last = chunk + 1 >= conn.chunks || rest <= DATA_CAP;
            let piece = if last { rest } else { DATA_CAP };
            let mut h = PacketHeader {
                seq: conn.seq.wrapping_add((at + off) as u32),
                ..header
            };
            if last && piece > DATA_CAP {
                h.tail.copy_from_slice(&segment[segment.len() - TAIL_CAP..]);
                h.tail_len = TAIL_CAP as u8;
            }
            let mut bytes = synthetic::packet(h, &segment[off..off + piece]);
            bytes.truncate(HEADER + piece.min(DATA_CAP));
            out.push(Rec {
                bytes,
                conn: i,
                dir,
                off: (at + off) as u32,
                len: piece as u32,
            });
            if last {
                break;
            }
            off += DATA_CAP;
        }
        at += segment.len();
    }
    out
}

/// What the pairing reported for one connection, per side.
#[derive(Clone, Copy, Debug, Default)]
struct Count {
    completed: u64,
    /// Unpaired for a reason that stands for a request: it closed, was
    /// evicted, did not fit, or was dropped at a gap (at least one a gap).
    lost: u64,
    /// Requests the HTTP side parsed.
    announced: u64,
}

#[derive(Default)]
struct Tally {
    http: [Count; CONNS + 1],
    resp: [Count; CONNS + 1],
    route: Option<Arc<str>>,
}

/// The connection an origin stands for: its namespace (server side) or
/// process (client side) is its cookie.
fn id(origin: Origin) -> usize {
    let n = match origin {
        Origin::Socket { netns, .. } => netns as usize,
        Origin::Process(tgid) | Origin::Client { tgid, .. } => tgid as usize,
    };
    n.min(CONNS)
}

fn stands_for_a_request(reason: Unpaired) -> bool {
    matches!(
        reason,
        Unpaired::ClosedMidRequest
            | Unpaired::ClosedMidResponse
            | Unpaired::QueueFull
            | Unpaired::Evicted
            | Unpaired::TableFull
            | Unpaired::Gap
            | Unpaired::HpackUnknown
            | Unpaired::Reset
            | Unpaired::Refused
    )
}

impl Sink for Tally {
    fn route(&mut self, _: Origin, _: &str) -> Route {
        let template = self.route.get_or_insert_with(|| "/".into()).clone();
        Route {
            template,
            overflow: false,
        }
    }
    fn request(&mut self, origin: Origin, _: u16) {
        self.http[id(origin)].announced += 1;
    }
    fn completed(&mut self, done: Completed) {
        self.http[id(done.origin)].completed += 1;
    }
    fn unpaired(&mut self, origin: Origin, _: u16, _: Unpaired) {
        // Each stands for one request seen.
        self.http[id(origin)].lost += 1;
    }
    fn resync(&mut self, _: Origin, _: u16, _: Unpaired) {}
}

impl CommandSink for Tally {
    fn completed(&mut self, peer: &Peer, _: Command, _: u64, _: u64, _: u32) {
        self.resp[id(peer.origin)].completed += 1;
    }
    fn result(&mut self, _: &Peer, _: Command, _: CacheResult) {}
    fn unpaired(&mut self, peer: &Peer, reason: Unpaired) {
        if stands_for_a_request(reason) {
            self.resp[id(peer.origin)].lost += 1;
        }
    }
}

/// gRPC calls are counted by no invariant here (their requests are not
/// announced to [`Sink::request`]).
impl RpcSink for Tally {
    fn rpc_method(&mut self, _: Origin, _: &str) -> Arc<str> {
        Arc::from("/")
    }
    fn rpc_completed(&mut self, _: RpcCall) {}
    fn rpc_unpaired(&mut self, _: Origin, _: u16, _: Unpaired) {}
}

/// SQL statements are counted by no invariant here (a simple query holds
/// any number): the postgres fuzz target checks their framing.
impl StatementSink for Tally {
    fn statement(&mut self, _: &Peer, _: System, _: &Arc<Statement>, _: Outcome, _: (u64, u64)) {}
    fn statement_unpaired(&mut self, _: &Peer, _: System, _: Unpaired) {}
}

/// Whole conversations through [`Streams`]. Whatever the bytes: no panic;
/// each table holds at most its maximum; after the final sweep nothing is
/// left and every request the HTTP side parsed was completed or reported
/// unpaired. When the tables hold every connection (so retransmissions
/// are recognised), an HTTP connection's completed and unpaired requests
/// are at most the requests its stream holds, plus one per hole; every
/// connection's, read as either protocol (a Redis one joined mid-stream
/// may read commands out of bulk data), at most one per line, record cut
/// by the capture, or hole.
pub fn streams(data: &[u8]) {
    let mut input = Input(data);
    let first = input.byte().unwrap_or(0);
    let max = 1 + usize::from(first & 3);
    let n = 1 + usize::from(first >> 2) % CONNS;
    let conns: Vec<Conn> = (0..n).map(|_| Conn::read(&mut input)).collect();
    // Queue 2i: connection i's requests, 2i + 1: its responses.
    let mut queues: Vec<VecDeque<Rec>> = Vec::with_capacity(2 * n);
    // Records cut by the capture, per connection.
    let mut cut_short = [0u64; CONNS];
    for (i, conn) in conns.iter().enumerate() {
        let mut requests: VecDeque<Rec> = cut(&mut input, i, conn, 0).into();
        cut_short[i] = requests
            .iter()
            .filter(|r| r.len as usize > DATA_CAP)
            .count() as u64;
        if conn.client {
            let bytes = synthetic::connect(i as u64 + 1, i as u32 + 1, [0; 16], 6379, false);
            requests.push_front(Rec {
                bytes,
                conn: i,
                dir: 0,
                off: 0,
                len: 0,
            });
        }
        queues.push(requests);
        queues.push(cut(&mut input, i, conn, 1).into());
    }

    let mut streams = Streams::new(max);
    let mut tally = Tally::default();
    let mut ts = 0u64;
    // Where what was delivered in order per queue ends, and holes per
    // connection.
    let mut furthest: Vec<Option<u32>> = vec![None; queues.len()];
    // Every piece delivered per queue (a few hundred at most).
    let mut delivered: Vec<Vec<(u32, u32)>> = vec![Vec::new(); queues.len()];
    let mut holes = [0u64; CONNS];
    // A client connection's records before its connect record are not
    // followed: the agent does not know whose they are.
    let mut named: Vec<bool> = conns.iter().map(|c| !c.client).collect();
    let mut deliver = |mut rec: Rec, ts: u64, streams: &mut Streams, tally: &mut Tally| {
        if rec.len == 0 && rec.dir == 0 {
            named[rec.conn] = true;
        }
        if rec.len > 0 {
            // PacketHeader::ts_ns, bytes 8..16: stamped when sent.
            rec.bytes[8..16].copy_from_slice(&ts.to_ne_bytes());
        }
        if rec.len > 0 && named[rec.conn] {
            let q = 2 * rec.conn + rec.dir;
            let end = rec.off + rec.len;
            // Each piece that touches no bytes delivered before may open
            // a hole (one the reordering window gives up on once time
            // jumps past it): past them, or before them while the stream's
            // first byte is not settled (a piece older than the first one
            // seen, arriving within the window).
            let touches = delivered[q]
                .iter()
                .any(|&(start, stop)| rec.off <= stop && end >= start);
            if !touches && (rec.off > 0 || !delivered[q].is_empty()) {
                holes[rec.conn] += 1;
            }
            delivered[q].push((rec.off, end));
            if furthest[q].is_none_or(|f| rec.off <= f) {
                furthest[q] = Some(furthest[q].map_or(end, |f| f.max(end)));
            }
        }
        let decoded = streams.handle_record(&rec.bytes, tally);
        assert!(decoded.is_ok(), "{decoded:?}");
        // The HTTP and the RESP tables are capped separately.
        assert!(
            streams.connections() <= 2 * max,
            "{}",
            streams.connections()
        );
        assert!(streams.in_flight().count() <= max * (MAX_PIPELINE + 1));
    };
    while let Some(b) = input.byte() {
        let live: Vec<usize> = (0..queues.len())
            .filter(|&q| !queues[q].is_empty())
            .collect();
        if live.is_empty() {
            break;
        }
        let queue = &mut queues[live[usize::from(b & 7) % live.len()]];
        ts += [1_000, 50_000, 1_000_000, 2_000_000_000][usize::from(b >> 6)];
        if b & 32 != 0 && queue.len() > 1 {
            queue.swap(0, 1);
        }
        let Some(rec) = queue.pop_front() else {
            continue;
        };
        if b & 8 != 0 {
            continue;
        }
        if b & 16 != 0 {
            queue.push_back(rec.clone());
        }
        deliver(rec, ts, &mut streams, &mut tally);
    }
    while queues.iter().any(|q| !q.is_empty()) {
        for q in &mut queues {
            if let Some(rec) = q.pop_front() {
                ts += 1_000;
                deliver(rec, ts, &mut streams, &mut tally);
            }
        }
    }
    for (i, conn) in conns.iter().enumerate() {
        let Some(flags) = conn.close else {
            continue;
        };
        // A FIN after bytes never delivered sits beyond a hole.
        let sent = conn.streams[1].len() as u32;
        if furthest[2 * i + 1].is_none_or(|f| f < sent) {
            holes[i] += 1;
        }
        ts += 1_000;
        let header = PacketHeader {
            ts_ns: ts,
            cookie: i as u64 + 1,
            netns: i as u64 + 1,
            direction: conn.direction(1),
            side: if conn.client {
                side::CLIENT
            } else {
                side::SERVER
            },
            // Where the server's FIN sits: after its last byte.
            seq: conn.seq.wrapping_add(conn.streams[1].len() as u32),
            flags,
            ..Default::default()
        };
        let record = synthetic::packet(header, b"");
        assert!(streams.handle_record(&record[..HEADER], &mut tally).is_ok());
    }

    streams.sweep(u64::MAX, 0, &mut tally);
    assert_eq!(streams.connections(), 0);
    assert_eq!(streams.in_flight().count(), 0);
    let fits = max >= n;
    for (i, conn) in conns.iter().enumerate() {
        let (http, resp) = (tally.http[i + 1], tally.resp[i + 1]);
        // Every request seen ends once: completed or unpaired.
        assert_eq!(
            http.announced,
            http.completed + http.lost,
            "connection {i}: {http:?}"
        );
        if !fits {
            continue;
        }
        let (own, other) = if conn.resp {
            (resp, http)
        } else {
            (http, resp)
        };
        let lines = conn.streams[0].iter().filter(|&&b| b == b'\n').count() as u64;
        // Redis pairing joined mid-stream (after a hole, or a window given
        // up) may read commands out of bulk data, and a subscription may
        // complete more than once: only the line bound below holds there.
        assert!(
            conn.resp || own.completed + own.lost <= conn.requests + holes[i],
            "connection {i}: {own:?} of {} requests, {} holes",
            conn.requests,
            holes[i]
        );
        assert!(
            own.completed + own.lost + other.completed + other.lost
                <= lines + cut_short[i] + holes[i],
            "connection {i}: {own:?} {other:?} of {lines} lines, {} holes",
            holes[i]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random inputs (xorshift): a small fuzz run in every test
    /// run.
    #[test]
    fn random_inputs_hold() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..1000 {
            let len = (next() % 600) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            streams(&data);
        }
    }
}
