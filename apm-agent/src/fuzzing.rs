//! Entry points of the fuzz targets (apm-agent/fuzz, `cargo xtask fuzz`):
//! each takes arbitrary bytes, drives one stage that reads untrusted input,
//! and checks what must hold whatever the bytes. The regression fixtures
//! (inputs that once failed) and the seeds run through the same functions
//! in the unit tests, so a fixed crash stays fixed without the fuzzer.

mod http2;
mod mysql;
mod postgres;
mod streams;

use std::sync::Arc;

use apm_common::events::{PacketHeader, direction, tcp_flags};

use crate::{
    protocols::{
        http::{self, Framing},
        routes::{FILE_EXTENSIONS, OVERFLOW_ROUTE, RouteConfig, Routes, is_route_word, is_version},
    },
    services::directory::{Directory, Services},
    telemetry::{metrics::Metrics, pipeline::Pipeline, synthetic},
};

pub use self::{http2::http2, mysql::mysql, postgres::postgres, streams::streams};

/// The HTTP parsers: never a panic, and what comes out is bounded by what
/// went in and carries no query string.
pub fn http(data: &[u8]) {
    if let Ok(req) = http::parse_request(data) {
        assert!(!req.path.contains(['?', '#']), "{:?}", req.path);
        assert!(req.path.len() <= data.len());
        if let Some(n) = req.head_len {
            assert!(n <= data.len());
        }
    }
    if let Ok(resp) = http::parse_response(data) {
        assert!((100..=599).contains(&resp.status), "{}", resp.status);
        if let Some(n) = resp.head_len {
            assert!(n <= data.len());
        }
        if let Framing::Length(n) = resp.body {
            let _ = n;
        }
    }
}

/// The route templater on newline-separated paths: templates stay within
/// the caps, every kept segment is a route word or a placeholder, or a
/// file name whose name is one of those and whose extension is known, and
/// no position below the root holds more than `max_words` words.
pub fn routes(data: &[u8]) {
    let config = RouteConfig {
        max_routes: 20,
        max_words: 3,
        max_children: 4,
        patterns: Vec::new(),
    };
    let mut routes = Routes::new(config);
    let service: Arc<str> = "fuzz".into();
    for path in String::from_utf8_lossy(data).split('\n') {
        let route = routes.template(&service, path);
        let t = &*route.template;
        if t == OVERFLOW_ROUTE || t == "*" {
            continue;
        }
        assert!(t.starts_with('/'), "{t:?} from {path:?}");
        let word = |s: &str| {
            matches!(s, "{id}" | "{uuid}" | "{hex}" | "{var}" | "{rest}") || is_route_word(s)
        };
        for seg in t.split('/').filter(|s| !s.is_empty()) {
            let file = seg.rsplit_once('.').is_some_and(|(name, ext)| {
                word(name) && FILE_EXTENSIONS.binary_search(&ext).is_ok()
            });
            assert!(word(seg) || file, "{seg:?} in {t:?} from {path:?}");
        }
        assert!(routes.count("fuzz") <= 20);
        assert_words_per_position(&routes, "fuzz", 3);
    }
}

/// Panics if a position below the root holds more than `max` words in
/// the routes of `service`.
fn assert_words_per_position(routes: &Routes, service: &str, max: usize) {
    let mut words = std::collections::HashMap::<&str, std::collections::HashSet<&str>>::new();
    for t in routes.templates(service) {
        let mut end = 0;
        for seg in t.split('/').skip(1) {
            let parent = &t[..end];
            end += 1 + seg.len();
            if !parent.is_empty() && is_route_word(seg) && !is_version(seg) {
                words.entry(parent).or_default().insert(seg);
            }
        }
    }
    for (parent, w) in words {
        assert!(w.len() <= max, "{parent}: {w:?}");
    }
}

/// Ring-buffer records as the kernel's programs could write them, cut
/// from `data` by a two-byte length prefix: decoding, reassembly, pairing
/// and recording never panic and keep their bounds.
pub fn records(data: &[u8]) {
    let (mut requests, metrics) = pipeline();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % 2048;
        rest = &rest[2..];
        let (record, tail) = rest.split_at(len.min(rest.len()));
        let mut record = record.to_vec();
        // Every record's time (bytes 8..16) is a bpf_ktime_get_ns() value,
        // which never reaches 2^62 ns (146 years of uptime): the sweep at
        // the end of time below then finds every connection idle.
        if let Some(high) = record.get_mut(15) {
            *high &= 0x3f;
        }
        requests.handle_record(&record, &metrics);
        rest = tail;
    }
    requests.sweep(u64::MAX, 1, &metrics);
    requests.expire(u64::MAX, 1, &metrics);
    assert_eq!(requests.snapshot(0).in_flight_total, 0);
}

/// Well-formed packet records whose order, payload and loss come from
/// `data`: HTTP fragments on four connections, with retransmissions, gaps,
/// FINs and RSTs. Pairing must stay consistent: never more paired than
/// seen, per service.
pub fn pairing(data: &[u8]) {
    const FRAGMENTS: &[&[u8]] = &[
        b"GET /a HTTP/1.1\r\n\r\n",
        b"POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        b"GET /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 500 X\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5\r\nhello\r\n",
        b"0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"GET /d HT",
        b"TP/1.1\r\n\r\n",
        b"\x16\x03\x01 not http",
    ];
    let (mut requests, metrics) = pipeline();
    // Next sequence number per (connection, direction).
    let mut seq = [[0u32; 2]; 4];
    for (i, op) in data.chunks(2).enumerate() {
        let a = op[0];
        let b = op.get(1).copied().unwrap_or(0);
        let conn = usize::from(a & 3);
        let dir = usize::from((a >> 2) & 1);
        let payload = FRAGMENTS[usize::from(b) % FRAGMENTS.len()];
        let flags = match a >> 5 {
            6 => tcp_flags::FIN,
            7 => tcp_flags::RST,
            _ => 0,
        };
        let header = PacketHeader {
            ts_ns: i as u64 * 1_000,
            cookie: conn as u64 + 1,
            netns: 1,
            port: 8080,
            direction: if dir == 0 {
                direction::INGRESS
            } else {
                direction::EGRESS
            },
            seq: seq[conn][dir],
            flags,
            ..Default::default()
        };
        let record = synthetic::packet(header, if flags == 0 { payload } else { b"" });
        // Bit 3: the record is lost (the stream skips it); bit 4: it is
        // sent twice (a retransmission).
        if a & 8 == 0 {
            requests.handle_record(&record, &metrics);
            if a & 16 != 0 {
                requests.handle_record(&record, &metrics);
            }
        }
        if flags == 0 {
            seq[conn][dir] = seq[conn][dir].wrapping_add(payload.len() as u32);
        } else {
            seq[conn][dir] = seq[conn][dir].wrapping_add(1);
        }
    }
    for s in requests.snapshot(0).services.values() {
        assert!(s.requests_paired <= s.requests_seen, "{s:?}");
    }
}

fn pipeline() -> (Pipeline, Metrics) {
    let directory = Arc::new(Directory::default());
    directory.replace(Services {
        by_port: [(8080, "fuzz".into())].into_iter().collect(),
        ..Default::default()
    });
    let requests = Pipeline::new(RouteConfig::default(), 64, directory).with_max_series(64);
    // A fresh registry per input: metrics keep no state across inputs.
    let metrics = Metrics::new().unwrap_or_else(|e| panic!("metrics registry: {e}"));
    (requests, metrics)
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, as `cargo xtask fuzz` and the regression test
/// know them.
pub const TARGETS: &[(&str, Target)] = &[
    ("http", http),
    ("routes", routes),
    ("records", records),
    ("pairing", pairing),
    ("streams", streams),
    ("postgres", postgres),
    ("mysql", mysql),
    ("http2", http2),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed and every regression fixture (an input a fuzzer once
    /// failed on) of every target passes.
    #[test]
    fn seeds_and_regressions_pass() {
        let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut ran = 0;
        for (name, target) in TARGETS {
            for dir in ["seeds", "regressions"] {
                let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(name)) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let data = std::fs::read(entry.path()).expect("fixture");
                    target(&data);
                    ran += 1;
                }
            }
        }
        assert!(
            ran >= TARGETS.len(),
            "no seeds found under {}",
            fuzz.display()
        );
    }
}
