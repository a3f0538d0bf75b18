#![allow(dead_code)] // Shared by two bench targets; each uses a part.

//! The synthetic traffic the pipeline benchmarks replay (criterion's
//! `pipeline` and the instruction counts of `instructions`).

use std::sync::Arc;

use apm_agent::{
    services::directory::{Directory, ServiceInfo, Services},
    telemetry::{
        metrics::Metrics,
        pipeline::Pipeline,
        synthetic::{packet, record},
    },
};
use apm_common::events::{EventKind, PacketHeader, direction, tcp_flags};

pub const CONNS: u32 = 64;
pub const ROUNDS: u64 = 64;

/// Requests (or pairs of Redis commands) per replay of a workload.
pub fn requests() -> u64 {
    ROUNDS * u64::from(CONNS)
}

fn path(round: u64, conn: u32) -> String {
    match round % 4 {
        0 => "/api/users/12345/orders?limit=10".to_owned(),
        1 => format!("/api/items/{}", round * 31 + u64::from(conn)),
        2 => "/static/app.js".to_owned(),
        _ => "/health".to_owned(),
    }
}

/// The request of `conn` in `round`, as wrk would send it.
pub fn request(round: u64, conn: u32) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n",
        path(round, conn)
    )
}

/// A response head shaped like nginx's (the server `cargo xtask bench`
/// measures), eight headers.
pub const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 29 Nov 2026 16:40:04 GMT\r\n\
Content-Type: application/json\r\nContent-Length: 13\r\nLast-Modified: Sun, 29 Nov 2026 10:00:00 GMT\r\n\
Connection: keep-alive\r\nETag: \"6929c2a0-d\"\r\nAccept-Ranges: bytes\r\n\r\n";
pub const BODY: &[u8] = b"{\"ok\":true}\r\n";

/// Keep-alive traffic over CONNS connections as packets: per request one
/// ingress segment and one egress segment (head and body together).
pub fn packets() -> Vec<Vec<u8>> {
    let response = [HEAD, BODY].concat();
    as_packets(8080, |round, conn| {
        vec![(request(round, conn).into_bytes(), response.clone())]
    })
}

/// redis-benchmark's traffic as packets, server side: per connection and
/// round one SET and one GET (16-byte keys, 3-byte values), each one
/// ingress segment (the command) and one egress segment (the reply).
pub fn resp_packets() -> Vec<Vec<u8>> {
    as_packets(6379, |round, conn| {
        let key = format!("key:{:012}", round * 64 + u64::from(conn));
        vec![
            (
                format!("*3\r\n$3\r\nSET\r\n$16\r\n{key}\r\n$3\r\nxxx\r\n").into_bytes(),
                b"+OK\r\n".to_vec(),
            ),
            (
                format!("*2\r\n$3\r\nGET\r\n$16\r\n{key}\r\n").into_bytes(),
                b"$3\r\nxxx\r\n".to_vec(),
            ),
        ]
    })
}

/// The server's packet records for `exchanges(round, conn)` (request and
/// response bytes, one segment each) of every connection in every round,
/// on server port `port`; the server closes every connection at the end.
fn as_packets(port: u16, exchanges: impl Fn(u64, u32) -> Vec<(Vec<u8>, Vec<u8>)>) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let mut ts = 0u64;
    let mut seq = [[0u32; 2]; CONNS as usize];
    let seg = |conn: u32, ts_ns, dir: u8, seq: u32| PacketHeader {
        ts_ns,
        cookie: u64::from(conn) + 1,
        netns: 1,
        port,
        direction: dir,
        seq,
        ..Default::default()
    };
    for round in 0..ROUNDS {
        for conn in 0..CONNS {
            for (request, response) in exchanges(round, conn) {
                ts += 1000;
                let s = &mut seq[conn as usize];
                records.push(packet(seg(conn, ts, direction::INGRESS, s[0]), &request));
                records.push(packet(
                    seg(conn, ts + 500, direction::EGRESS, s[1]),
                    &response,
                ));
                s[0] += request.len() as u32;
                s[1] += response.len() as u32;
            }
        }
    }
    for conn in 0..CONNS {
        let fin = PacketHeader {
            flags: tcp_flags::FIN,
            ..seg(conn, ts + 1000, direction::EGRESS, seq[conn as usize][1])
        };
        records.push(packet(fin, b""));
    }
    records
}

/// Where the socket cookie sits in a packet record.
const COOKIE: std::ops::Range<usize> = 16..24;

/// The same traffic as syscall records: per request one read and two
/// writes (head, body).
pub fn syscalls() -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let mut ts = 0u64;
    for fd in 0..CONNS {
        records.push(record(EventKind::Accept, ts, 7, fd, 8080, b""));
    }
    for round in 0..ROUNDS {
        for fd in 0..CONNS {
            ts += 1000;
            let req = request(round, fd);
            records.push(record(EventKind::Read, ts, 7, fd, 8080, req.as_bytes()));
            records.push(record(EventKind::Write, ts + 400, 7, fd, 8080, HEAD));
            records.push(record(EventKind::Write, ts + 500, 7, fd, 8080, BODY));
        }
    }
    records
}

/// Replays `records` on new connections (socket cookies of `generation`).
pub fn renew(records: &mut [Vec<u8>], generation: u64, requests: &mut Pipeline, metrics: &Metrics) {
    for r in records.iter_mut() {
        let cookie = u64::from_ne_bytes(r[COOKIE].try_into().expect("8 bytes"));
        let next = (cookie & 0xffff) | (generation << 16);
        r[COOKIE].copy_from_slice(&next.to_ne_bytes());
        requests.handle_record(r, metrics);
    }
}

/// The services of the synthetic traffic: process 7 and port 8080 are
/// "bench", port 6379 is "cache".
pub fn directory() -> Arc<Directory> {
    let directory = Arc::new(Directory::default());
    directory.replace(Services {
        by_pid: [(
            7,
            ServiceInfo {
                name: "bench".into(),
                ports: vec![8080],
            },
        )]
        .into_iter()
        .collect(),
        by_socket: [((1, 8080), "bench".into()), ((1, 6379), "cache".into())]
            .into_iter()
            .collect(),
        ..Default::default()
    });
    directory
}
