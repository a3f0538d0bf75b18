//! The verdict: the agent's numbers scraped and compared with the
//! client's ground truth, reported side by side.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};

use super::client::{Key, Truth};
use crate::{Agent, get, wait_for};

/// Fails unless the agent times HTTP from packets: eBPF up and both
/// cgroup_skb programs attached (a procfs-only agent would fail every
/// later check for a reason that has nothing to do with streams).
pub fn check_packet_capture(agent: &Agent) -> Result<()> {
    let attached = wait_for(Duration::from_secs(10), || {
        let m = agent.metrics().ok()?;
        let up = m.value("apm_ebpf_up", &[]) == Some(1.0);
        let probes = ["cgroup_skb:ingress", "cgroup_skb:egress"]
            .iter()
            .all(|p| m.value("apm_ebpf_probe_attached", &[("probe", p)]) == Some(1.0));
        (up && probes).then_some(())
    });
    ensure!(
        attached.is_some(),
        "the agent does not capture packets: {}",
        agent.log_text()
    );
    Ok(())
}

/// The agent's view of one service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceView {
    pub seen: u64,
    pub paired: u64,
    pub unpaired: BTreeMap<String, u64>,
    /// Where the agent lost a stream's framing, by reason
    /// (`apm_http_stream_resyncs_total`; reported, not asserted).
    pub resyncs: BTreeMap<String, u64>,
    pub in_flight: u64,
    /// Median latency in seconds per (method, route), from /stats/requests.
    pub p50: BTreeMap<(String, String), f64>,
}

impl ServiceView {
    pub fn unpaired_total(&self) -> u64 {
        self.unpaired.values().sum()
    }
}

/// What the agent reports for the test's servers.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Duration-histogram counts per (port, method, route, status).
    pub counts: BTreeMap<Key, u64>,
    /// By service name.
    pub services: BTreeMap<String, ServiceView>,
    /// Ring-buffer records the kernel could not deliver.
    pub ringbuf_full: u64,
    pub metrics_text: String,
}

impl Observed {
    /// The agent's numbers now for `services` (name, port).
    pub fn scrape(agent: &Agent, services: &[(&str, u16)]) -> Result<Self> {
        let m = agent.metrics()?;
        let stats = get(agent.addr, "/stats/requests")?;
        ensure!(stats.status == 200, "/stats/requests: {}", stats.status);
        let stats: serde_json::Value = serde_json::from_str(&stats.body)?;
        let mut o = Self {
            ringbuf_full: m
                .value("apm_ebpf_drops_total", &[("reason", "ringbuf_full")])
                .unwrap_or(0.0) as u64,
            metrics_text: m.text.clone(),
            ..Self::default()
        };
        for &(service, port) in services {
            let p = port.to_string();
            for s in m.matching(
                "http_server_request_duration_seconds_count",
                &[("service_name", service), ("server_port", &p)],
            ) {
                let key = (
                    port,
                    s.labels["http_request_method"].clone(),
                    s.labels["http_route"].clone(),
                    s.labels["http_response_status_code"].parse()?,
                );
                *o.counts.entry(key).or_default() += s.value as u64;
            }
            let mut view = ServiceView {
                seen: m.sum("apm_http_requests_seen_total", service) as u64,
                paired: m.sum("apm_http_requests_paired_total", service) as u64,
                ..ServiceView::default()
            };
            for s in m.matching(
                "apm_http_requests_unpaired_total",
                &[("service_name", service)],
            ) {
                if s.value > 0.0 {
                    view.unpaired
                        .insert(s.labels["reason"].clone(), s.value as u64);
                }
            }
            for s in m.matching(
                "apm_http_stream_resyncs_total",
                &[("service_name", service)],
            ) {
                if s.value > 0.0 {
                    view.resyncs
                        .insert(s.labels["reason"].clone(), s.value as u64);
                }
            }
            let summary = &stats["services"][service];
            view.in_flight = summary["in_flight"].as_u64().unwrap_or(0);
            for r in summary["routes"].as_array().into_iter().flatten() {
                if let (Some(method), Some(route), Some(p50)) = (
                    r["method"].as_str(),
                    r["route"].as_str(),
                    r["p50_seconds"].as_f64(),
                ) {
                    view.p50.insert((method.to_owned(), route.to_owned()), p50);
                }
            }
            o.services.insert(service.to_owned(), view);
        }
        Ok(o)
    }

    /// The numbers that settle once the agent has processed everything.
    fn settled_part(&self) -> (BTreeMap<Key, u64>, Vec<[u64; 4]>) {
        (
            self.counts.clone(),
            self.services
                .values()
                .map(|s| [s.seen, s.paired, s.unpaired_total(), s.in_flight])
                .collect(),
        )
    }

    /// Scrapes until the agent's counts equal `truth` with nothing in
    /// flight, or until its numbers stopped changing for 3 s (it will not
    /// get there), or 60 s pass.
    pub fn settle(agent: &Agent, services: &[(&str, u16)], truth: &Truth) -> Result<Self> {
        let want: BTreeMap<Key, u64> = truth
            .counts
            .iter()
            .filter(|(k, _)| services.iter().any(|(_, p)| *p == k.0))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = Self::scrape(agent, services)?;
        let mut stable_since = Instant::now();
        loop {
            let done = last.counts == want && last.services.values().all(|s| s.in_flight == 0);
            if done
                || stable_since.elapsed() >= Duration::from_secs(3)
                || Instant::now() >= deadline
            {
                return Ok(last);
            }
            std::thread::sleep(Duration::from_millis(250));
            let now = Self::scrape(agent, services)?;
            if now.settled_part() != last.settled_part() {
                stable_since = Instant::now();
            }
            last = now;
        }
    }
}

/// A side-by-side table of the client's and the agent's counts, with
/// each service's request accounting.
pub fn report(truth: &Truth, obs: &Observed, services: &[(&str, u16)]) -> String {
    let mut out = String::from("port  method  route  status: client agent\n");
    let keys: BTreeSet<&Key> = truth.counts.keys().chain(obs.counts.keys()).collect();
    for k in keys {
        if !services.iter().any(|(_, p)| *p == k.0) {
            continue;
        }
        let c = truth.counts.get(k).copied().unwrap_or(0);
        let a = obs.counts.get(k).copied().unwrap_or(0);
        let mark = if c == a { "" } else { "   <-- differs" };
        out.push_str(&format!("{} {} {} {}: {c} {a}{mark}\n", k.0, k.1, k.2, k.3));
    }
    for &(service, port) in services {
        let v = obs.services.get(service).cloned().unwrap_or_default();
        out.push_str(&format!(
            "{service} (port {port}): client sent {}, agent seen {}, paired {}, unpaired {:?}, in flight {}, resyncs {:?}\n",
            truth.total(port),
            v.seen,
            v.paired,
            v.unpaired,
            v.in_flight,
            v.resyncs
        ));
    }
    out.push_str(&format!("ring buffer records lost: {}\n", obs.ringbuf_full));
    out
}

/// Everything that must hold when the agent is exact: per key counts
/// equal, every request seen and paired, nothing unpaired or in flight,
/// no ring-buffer loss. Returns the failures, one line each.
pub fn exactness_failures(truth: &Truth, obs: &Observed, services: &[(&str, u16)]) -> Vec<String> {
    let mut failures = Vec::new();
    if obs.ringbuf_full > 0 {
        failures.push(format!(
            "the ring buffer lost {} records (the agent fell behind)",
            obs.ringbuf_full
        ));
    }
    for &(service, port) in services {
        let want: BTreeMap<&Key, u64> = truth
            .counts
            .iter()
            .filter(|(k, _)| k.0 == port)
            .map(|(k, v)| (k, *v))
            .collect();
        let got: BTreeMap<&Key, u64> = obs
            .counts
            .iter()
            .filter(|(k, _)| k.0 == port)
            .map(|(k, v)| (k, *v))
            .collect();
        for k in want.keys().chain(got.keys()).collect::<BTreeSet<_>>() {
            let (c, a) = (
                want.get(k).copied().unwrap_or(0),
                got.get(k).copied().unwrap_or(0),
            );
            if c != a {
                failures.push(format!(
                    "{service}: {} {} {}: client {c}, agent {a}",
                    k.1, k.2, k.3
                ));
            }
        }
        let v = obs.services.get(service).cloned().unwrap_or_default();
        let sent = truth.total(port);
        if v.seen != sent {
            failures.push(format!(
                "{service}: agent saw {} requests, client sent {sent}",
                v.seen
            ));
        }
        if v.paired != sent {
            failures.push(format!(
                "{service}: agent paired {} requests, client sent {sent}",
                v.paired
            ));
        }
        if v.unpaired_total() != 0 {
            failures.push(format!("{service}: unpaired {:?}", v.unpaired));
        }
        if v.in_flight != 0 {
            failures.push(format!(
                "{service}: {} requests still in flight",
                v.in_flight
            ));
        }
        if v.seen != v.paired + v.unpaired_total() + v.in_flight {
            failures.push(format!(
                "{service}: seen {} != paired {} + unpaired {} + in flight {}",
                v.seen,
                v.paired,
                v.unpaired_total(),
                v.in_flight
            ));
        }
    }
    failures
}

/// The median of `v` at the rank the agent's sketch reports it
/// (sketches-ddsketch: the value of rank floor(0.5 (n - 1)), the lower
/// one of an even count), so that order statistics of the same requests
/// are compared.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[(v.len() - 1) / 2])
}

/// The agent's median latency for `method` `route` of `service` checked
/// against what is known of those requests. Each request's interval as
/// the agent measures it (first request byte in, last response byte out)
/// contains the server's own timing of it (`server`: from the parsed head
/// to just before the last body write) and lies within the client's
/// (first byte written to last byte read; under loss the client also
/// waits for retransmissions of segments the server sent before). So the
/// agent's median (1 % relative accuracy) is at least the server's and
/// at most the client's, within 10 % of the server's (the gap is the
/// head's parsing and a scheduling delay), and at least `floor`, what the
/// route is known to take. Returns the failure, if any.
pub fn median_failure(
    truth: &Truth,
    obs: &Observed,
    (service, port): (&str, u16),
    (method, route): (&str, &str),
    server: &[f64],
    floor: Duration,
) -> Option<String> {
    let Some(client) = truth.median(port, method, route) else {
        return Some(format!("{service}: the client timed no {method} {route}"));
    };
    let Some(server) = median(server.to_vec()) else {
        return Some(format!("{service}: the server timed no {method} {route}"));
    };
    let agent = obs
        .services
        .get(service)
        .and_then(|v| v.p50.get(&(method.to_owned(), route.to_owned())))
        .copied();
    let Some(agent) = agent else {
        return Some(format!(
            "{service}: no {method} {route} in /stats/requests (client median {:.1} ms)",
            client * 1e3
        ));
    };
    let floor = floor.as_secs_f64();
    let medians = format!(
        "{service} {method} {route}: median {:.2} ms by the agent, {:.2} ms by the server, \
         {:.2} ms by the client (the route takes at least {:.1} ms)",
        agent * 1e3,
        server * 1e3,
        client * 1e3,
        floor * 1e3
    );
    eprintln!("{medians}");
    let (lo, hi) = (0.99, 1.01);
    let wrong = agent < server * lo
        || agent > server * 1.10 * hi
        || agent > client * hi
        || agent < floor * lo;
    wrong.then_some(medians)
}

/// Panics with every failure and the report, if there are failures.
pub fn assert_none(what: &str, failures: &[String], report: &str) {
    assert!(
        failures.is_empty(),
        "{what}: {} failures\n- {}\n\n{report}",
        failures.len(),
        failures.join("\n- ")
    );
}
