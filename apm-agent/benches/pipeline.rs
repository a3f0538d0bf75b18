//! The userspace request pipeline on synthetic ring-buffer records:
//! decode, pair, parse, template, record into the histogram.
//! `cargo xtask bench` reports its throughput in docs/benchmarks.md.

use std::sync::Arc;

use apm_agent::{
    protocols::routes::RouteConfig,
    telemetry::metrics::Metrics,
    telemetry::requests::{Directory, Requests, ServiceInfo, synthetic::record},
};
use apm_common::events::EventKind;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const CONNS: u32 = 64;
const ROUNDS: u64 = 64;

/// Keep-alive traffic over CONNS connections: per request one read and two
/// writes (head, body), with a few paths that need templating.
fn workload() -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let mut ts = 0u64;
    for fd in 0..CONNS {
        records.push(record(EventKind::Accept, ts, 7, fd, 8080, b""));
    }
    for round in 0..ROUNDS {
        for fd in 0..CONNS {
            ts += 1000;
            let path = match round % 4 {
                0 => "/api/users/12345/orders?limit=10".to_owned(),
                1 => format!("/api/items/{}", round * 31 + u64::from(fd)),
                2 => "/static/app.js".to_owned(),
                _ => "/health".to_owned(),
            };
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
            );
            records.push(record(EventKind::Read, ts, 7, fd, 8080, req.as_bytes()));
            records.push(record(
                EventKind::Write,
                ts + 400,
                7,
                fd,
                8080,
                b"HTTP/1.1 200 OK\r\nServer: bench\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n",
            ));
            records.push(record(
                EventKind::Write,
                ts + 500,
                7,
                fd,
                8080,
                b"{\"ok\":true}\r\n",
            ));
        }
    }
    records
}

fn pipeline(c: &mut Criterion) {
    let records = workload();
    let directory = Arc::new(Directory::default());
    directory.replace(
        [(
            7,
            ServiceInfo {
                name: "bench".into(),
                ports: vec![8080],
            },
        )]
        .into(),
    );
    let metrics = Metrics::new().expect("metrics");
    let mut requests = Requests::new(RouteConfig::default(), 65_536, directory);
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("decode_pair_parse_template_record", |b| {
        b.iter(|| {
            for r in &records {
                requests.handle_record(r, &metrics);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
