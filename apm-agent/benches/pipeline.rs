//! The userspace request pipeline on synthetic ring-buffer records:
//! decode, (reassemble,) pair, parse, template, record into the histogram,
//! for packet records (the default capture) and syscall records.
//! `cargo xtask bench` reports both throughputs in docs/benchmarks.md.
//! The `table_full` group then measures segments of connections that a
//! full 65 536-connection table cannot hold.

use std::sync::Arc;

use apm_agent::{
    protocols::routes::RouteConfig,
    services::directory::Directory,
    telemetry::{
        metrics::Metrics,
        pipeline::Pipeline,
        synthetic::{packet, record},
    },
};
use apm_common::events::{EventKind, PacketHeader, direction};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use workloads::{BODY, HEAD, packets, renew, request, resp_packets, syscalls};

mod workloads;

fn pipeline(c: &mut Criterion) {
    let directory = workloads::directory();
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
