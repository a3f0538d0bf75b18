//! The userspace request pipeline on synthetic ring-buffer records:
//! decode, (reassemble,) pair, parse, template, record into the histogram,
//! for packet records (the default capture) and syscall records.
//! `cargo xtask bench` reports both throughputs in docs/benchmarks.md.
//! The `table_full` group then measures segments of connections that a
//! full 65 536-connection table cannot hold.

use std::sync::Arc;

use apm_agent::{
    protocols::routes::RouteConfig,
    services::directory::{Directory, ServiceInfo, Services},
    telemetry::{
        metrics::Metrics,
        pipeline::Pipeline,
        synthetic::{packet, record},
    },
};
use apm_common::events::{EventKind, PacketHeader, direction, tcp_flags};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const CONNS: u32 = 64;
const ROUNDS: u64 = 64;

fn path(round: u64, conn: u32) -> String {
    match round % 4 {
        0 => "/api/users/12345/orders?limit=10".to_owned(),
        1 => format!("/api/items/{}", round * 31 + u64::from(conn)),
        2 => "/static/app.js".to_owned(),
        _ => "/health".to_owned(),
    }
}

/// The request of `conn` in `round`, as wrk would send it.
fn request(round: u64, conn: u32) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n",
        path(round, conn)
    )
}

/// A response head shaped like nginx's (the server `cargo xtask bench`
/// measures), eight headers.
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 29 Nov 2026 16:40:04 GMT\r\n\
Content-Type: application/json\r\nContent-Length: 13\r\nLast-Modified: Sun, 29 Nov 2026 10:00:00 GMT\r\n\
Connection: keep-alive\r\nETag: \"6929c2a0-d\"\r\nAccept-Ranges: bytes\r\n\r\n";
const BODY: &[u8] = b"{\"ok\":true}\r\n";

/// Keep-alive traffic over CONNS connections as packets: per request one
/// ingress segment and one egress segment (head and body together).
fn packets() -> Vec<Vec<u8>> {
    let response = [HEAD, BODY].concat();
    as_packets(8080, |round, conn| {
        vec![(request(round, conn).into_bytes(), response.clone())]
    })
}

/// redis-benchmark's traffic as packets, server side: per connection and
/// round one SET and one GET (16-byte keys, 3-byte values), each one
/// ingress segment (the command) and one egress segment (the reply).
fn resp_packets() -> Vec<Vec<u8>> {
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
fn syscalls() -> Vec<Vec<u8>> {
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

fn pipeline(c: &mut Criterion) {
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
    let metrics = Metrics::new().expect("metrics");
    let mut group = c.benchmark_group("pipeline");
    // Packets first: `cargo xtask bench` reads the throughput lines in
    // this order. Each iteration replays the traffic on new connections
    // (fresh socket cookies; each connection ends with the server's FIN),
    // so the pipeline runs in its steady state: services and routes known,
    // connections coming and going.
    let mut packets = packets();
    let mut requests = Pipeline::new(RouteConfig::default(), 65_536, directory.clone());
    group.throughput(Throughput::Elements(packets.len() as u64));
    let mut generation = 0u64;
    group.bench_function("packets_reassemble_pair_parse_template_record", |b| {
        b.iter(|| {
            generation += 1;
            renew(&mut packets, generation, &mut requests, &metrics);
        })
    });
    let syscalls = syscalls();
    let mut requests = Pipeline::new(RouteConfig::default(), 65_536, directory.clone());
    group.throughput(Throughput::Elements(syscalls.len() as u64));
    group.bench_function("syscalls_decode_pair_parse_template_record", |b| {
        b.iter(|| {
            for r in &syscalls {
                requests.handle_record(r, &metrics);
            }
        })
    });
    // Redis server side: commands, not requests, but the same steps.
    let mut resp = resp_packets();
    let mut requests = Pipeline::new(RouteConfig::default(), 65_536, directory);
    group.throughput(Throughput::Elements(resp.len() as u64));
    group.bench_function("resp_packets_reassemble_pair_parse_record", |b| {
        b.iter(|| {
            generation += 1;
            renew(&mut resp, generation, &mut requests, &metrics);
        })
    });
    group.finish();
}

/// Replays `records` on new connections (socket cookies of `generation`).
fn renew(records: &mut [Vec<u8>], generation: u64, requests: &mut Pipeline, metrics: &Metrics) {
    for r in records.iter_mut() {
        let cookie = u64::from_ne_bytes(r[COOKIE].try_into().expect("8 bytes"));
        let next = (cookie & 0xffff) | (generation << 16);
        r[COOKIE].copy_from_slice(&next.to_ne_bytes());
        requests.handle_record(r, metrics);
    }
}

/// Connections the `table_full` benchmarks fill their tables with (the
/// default `--max-connections`).
const FULL: u32 = 65_536;
/// New connections per iteration of a `table_full` benchmark, each sending
/// one request (or command) segment and one response segment.
const ARRIVING: u32 = 64;

/// A full table under churn: every table holds FULL connections seen less
/// than a second ago (none evictable), and each iteration brings ARRIVING
/// new connections whose segments no table has room for. Per segment cost
/// is the time per iteration over `2 * ARRIVING`.
fn table_full(c: &mut Criterion) {
    let directory = Arc::new(Directory::default());
    let metrics = Metrics::new().expect("metrics");
    let mut group = c.benchmark_group("table_full");
    group
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(3))
        .throughput(Throughput::Elements(u64::from(2 * ARRIVING)));
    let http = request(0, 0);
    let http_response = [HEAD, BODY].concat();
    let ping = b"*1\r\n$4\r\nPING\r\n";
    // Syscall records: the pairing tables alone.
    for (name, port, ask, answer) in [
        ("http_syscalls", 8080, http.as_bytes(), &http_response[..]),
        ("resp_syscalls", 6379, &ping[..], &b"+PONG\r\n"[..]),
    ] {
        let mut requests = Pipeline::new(RouteConfig::default(), FULL as usize, directory.clone());
        for fd in 0..FULL {
            let r = record(EventKind::Read, u64::from(fd), 7, fd, port, ask);
            requests.handle_record(&r, &metrics);
        }
        let mut next = FULL;
        group.bench_function(name, |b| {
            b.iter(|| {
                for _ in 0..ARRIVING {
                    next = next.wrapping_add(1);
                    for (kind, data) in [(EventKind::Read, ask), (EventKind::Write, answer)] {
                        let r = record(kind, 500_000_000, 7, next, port, data);
                        requests.handle_record(&r, &metrics);
                    }
                }
            })
        });
    }
    // Packet records: reassembly's table too.
    let mut requests = Pipeline::new(RouteConfig::default(), FULL as usize, directory);
    let seg = |cookie: u64, ts_ns, dir| PacketHeader {
        ts_ns,
        cookie,
        netns: 1,
        port: 8080,
        direction: dir,
        ..Default::default()
    };
    for cookie in 0..u64::from(FULL) {
        let r = packet(seg(cookie, cookie, direction::INGRESS), http.as_bytes());
        requests.handle_record(&r, &metrics);
    }
    let mut next = u64::from(FULL);
    group.bench_function("http_packets", |b| {
        b.iter(|| {
            for _ in 0..ARRIVING {
                next += 1;
                let ask = packet(seg(next, 500_000_000, direction::INGRESS), http.as_bytes());
                let answer = packet(seg(next, 500_000_000, direction::EGRESS), &http_response);
                requests.handle_record(&ask, &metrics);
                requests.handle_record(&answer, &metrics);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline, table_full);
criterion_main!(benches);
