//! The runtime under load: capture runs on the pipeline's own thread and
//! the API reads its published snapshots, so while pipelined requests with
//! distinct paths flood capture (every CPU busy with nginx, the clients and
//! the agent), the endpoints an SRE and the probes hit keep answering
//! quickly, and capture still accounts for every request.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use apm_common::events::DATA_CAP;
use apm_e2e::{
    get,
    prod::{Conn, Observed, Request, Scene, Truth},
};

/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(8);
/// Client connections, each writing batches of [`BATCH`] requests.
const CONNECTIONS: usize = 4;
/// Small enough that a batch's requests fit in the bytes captured of one
/// segment ([`DATA_CAP`]): requests past it are not seen until the capture
/// follows message boundaries (the capture-cost issue's work).
const BATCH: usize = 8;
/// Requests per connection at most (the loop is bounded in count too).
const MAX_PER_CONNECTION: usize = 400_000;
/// The p99 every endpoint must answer within.
const P99_BOUND: Duration = Duration::from_millis(50);

/// Requests per keep-alive connection (nginx closes one after 1000).
const PER_KEEPALIVE: usize = 512;

/// Pipelined GETs of distinct paths on one connection at a time until
/// `stop`.
fn flood(port: u16, conn_no: usize, stop: &AtomicBool) -> anyhow::Result<Truth> {
    let mut truth = Truth::default();
    let mut conn = Conn::open(port)?;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) && n < MAX_PER_CONNECTION {
        if n > 0 && n % PER_KEEPALIVE == 0 {
            conn = Conn::open(port)?;
        }
        let reqs: Vec<Request> = (0..BATCH)
            .map(|i| {
                let path = format!("/flood/{conn_no}-{}", n + i);
                Request::get(path, "/flood/{id}")
            })
            .collect();
        let bytes: usize = reqs.iter().map(|r| r.bytes().len()).sum();
        anyhow::ensure!(bytes <= DATA_CAP, "a batch of {bytes} bytes");
        for reply in conn.pipeline(&reqs, Duration::ZERO, &mut truth)? {
            anyhow::ensure!(reply.status == 404, "status {}", reply.status);
        }
        n += BATCH;
    }
    Ok(truth)
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get((v.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or_default()
}

/// Floods nginx from the scene's namespace for [`FLOOD`] while probing
/// the endpoints; what the clients sent and each endpoint's latencies.
fn flood_and_probe(scene: &Scene) -> (Truth, Vec<(&'static str, Vec<Duration>)>) {
    let nginx = scene.nginx.port;
    let stop = AtomicBool::new(false);
    let endpoints = ["/metrics", "/api/dashboard", "/health/ready"];
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..CONNECTIONS)
            .map(|c| {
                let stop = &stop;
                s.spawn(move || scene.run(|| flood(nginx, c, stop)))
            })
            .collect();
        // The probes: each endpoint in turn, every 10 ms, for the flood.
        let started = Instant::now();
        let mut latencies: Vec<(&'static str, Vec<Duration>)> =
            endpoints.iter().map(|e| (*e, Vec::new())).collect();
        let mut i = 0;
        while started.elapsed() < FLOOD {
            let (endpoint, l) = &mut latencies[i % endpoints.len()];
            let t = Instant::now();
            let r = get(scene.agent.addr, endpoint).expect("probe");
            assert_eq!(r.status, 200, "{endpoint}: {}", r.body);
            l.push(t.elapsed());
            i += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        let mut truth = Truth::default();
        for c in clients {
            truth.merge(c.join().expect("client thread").expect("client"));
        }
        (truth, latencies)
    })
}

/// The p99 bound per endpoint and the books, as failures; `saturated`:
/// the pipeline was made slower than the flood, so the kernel must have
/// lost (and counted) records.
fn verdict(scene: &Scene, what: &str, saturated: bool) {
    let nginx = scene.nginx.port;
    let (truth, latencies) = flood_and_probe(scene);
    let sent = truth.total(nginx);
    // Settles once the agent's per-route counts equal the client's or stop
    // changing; the totals are what this test compares.
    let obs = Observed::settle(&scene.agent, &[("nginx", nginx)], &truth).expect("agent");
    let view = &obs.services["nginx"];
    let mut failures = Vec::new();
    for (endpoint, l) in latencies {
        let (n, p) = (l.len(), p99(l));
        eprintln!(
            "{what}: {endpoint}: p99 {:.1} ms over {n} probes",
            p.as_secs_f64() * 1e3
        );
        if p > P99_BOUND {
            failures.push(format!("{endpoint}: p99 {p:?}"));
        }
    }
    eprintln!(
        "{what}: client sent {sent} requests in {FLOOD:?}; agent seen {}, paired {}, unpaired {:?}, in flight {}; ring records lost {}",
        view.seen, view.paired, view.unpaired, view.in_flight, obs.ringbuf_full
    );
    // Books: every request seen is paired, unpaired (counted by reason) or
    // in flight; with no ring record lost, every request sent is seen.
    if view.seen != view.paired + view.unpaired_total() + view.in_flight {
        failures.push(format!("books do not balance: {view:?}"));
    }
    if obs.ringbuf_full == 0 && view.seen != sent {
        failures.push(format!("no record lost, yet seen {} of {sent}", view.seen));
    }
    if obs.ringbuf_full > 0 && view.seen >= sent {
        failures.push("records lost, yet every request seen".to_owned());
    }
    if saturated && obs.ringbuf_full == 0 {
        failures.push("the pipeline kept up: nothing was saturated".to_owned());
    }
    assert!(sent > 10_000, "the flood sent only {sent} requests");
    if !failures.is_empty() {
        let lines: Vec<&str> = obs
            .metrics_text
            .lines()
            .filter(|l| l.starts_with("apm_http_requests") || l.starts_with("apm_http_stream"))
            .collect();
        eprintln!("{}", lines.join("\n"));
    }
    assert!(failures.is_empty(), "{what}: {failures:#?}");
}

#[test]
fn endpoints_answer_within_50_ms_at_p99_while_capture_is_flooded() {
    verdict(&Scene::start("flood", 0), "flood", false);
}

/// Every record costs the pipeline 100 µs more (`--test-fault
/// slow-pipeline`): the flood outruns it, the ring fills and the kernel
/// drops records (counted), and the endpoints still answer from the last
/// snapshot without waiting for the busy pipeline.
#[test]
fn endpoints_answer_within_50_ms_at_p99_while_the_pipeline_is_saturated() {
    let scene = Scene::start_with("saturated", 0, &["--test-fault", "slow-pipeline"]);
    verdict(&scene, "saturated", true);
}
