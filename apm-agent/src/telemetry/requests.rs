//! From ring-buffer records to HTTP metrics and /stats/requests: decode and
//! pair (`streams`), template (`routes`), record (`metrics`).
//!
//! Nothing here touches aya or tokio, so the whole pipeline runs in unit
//! tests and benchmarks on synthetic records.

use std::{collections::HashMap, sync::Arc, time::Duration};

use rustc_hash::FxHashMap;
use serde::Serialize;
use sketches_ddsketch::DDSketch;

use super::recorder::{Recorder, SeriesBudget, ServiceStats, service_of};
use crate::{
    protocols::routes::{RouteConfig, Routes},
    services::directory::{Directory, Services, UNKNOWN_SERVICE},
    streams::{Streams, pairing::Unpaired},
    telemetry::{metrics::Metrics, windows::Windows},
};

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the struct we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// In-flight requests listed by /stats/requests at most.
pub const MAX_IN_FLIGHT_SHOWN: usize = 100;
/// Routes listed per service by /stats/requests at most (busiest first).
pub const MAX_ROUTES_SHOWN: usize = 50;

pub struct Requests {
    streams: Streams,
    routes: Routes,
    /// Per service; names come from the agent, so a non-keyed hash is safe.
    stats: FxHashMap<Arc<str>, ServiceStats>,
    directory: Arc<Directory>,
    services: Arc<Services>,
    unknown: Arc<str>,
    budget: SeriesBudget,
    windows: Windows,
    db: super::db::DbStats,
    /// The current batch's time (kernel clock), for series' last use.
    now_ns: u64,
}

/// Duration series across all services, by default (`--max-series`).
pub const DEFAULT_MAX_SERIES: usize = 20_000;

impl Requests {
    pub fn new(routes: RouteConfig, max_connections: usize, directory: Arc<Directory>) -> Self {
        Self {
            streams: Streams::new(max_connections),
            routes: Routes::new(routes),
            stats: FxHashMap::default(),
            services: directory.snapshot(),
            directory,
            unknown: UNKNOWN_SERVICE.into(),
            budget: SeriesBudget {
                max: DEFAULT_MAX_SERIES,
                used: 0,
            },
            windows: Windows::new(Duration::ZERO),
            db: Default::default(),
            now_ns: 0,
        }
    }

    /// Keeps `keep` of rolling windows for the alert rules (none by
    /// default).
    pub fn with_windows(mut self, keep: Duration) -> Self {
        self.windows = Windows::new(keep);
        self
    }

    pub fn windows(&self) -> &Windows {
        &self.windows
    }

    /// Requests read and not yet answered, per service.
    pub fn in_flight_by_service(&self) -> HashMap<String, u64> {
        let mut out: HashMap<String, u64> = HashMap::new();
        for f in self.streams.in_flight() {
            let (service, _) = service_of(&self.services, &self.unknown, f.origin, f.port);
            *out.entry(service.to_string()).or_default() += 1;
        }
        out
    }

    /// At most `max` duration series across services.
    pub fn with_max_series(mut self, max: usize) -> Self {
        self.budget.max = max;
        self
    }

    /// Picks up the agent's latest service directory and the time; call
    /// once per batch.
    pub fn refresh_services(&mut self) {
        self.services = self.directory.snapshot();
        self.now_ns = monotonic_ns();
    }

    /// Removes duration series and routes without a request for `ttl_ns`,
    /// and every series of a service that is gone and has none left: label
    /// sets do not outlive their traffic, and their budget is freed.
    pub fn expire(&mut self, now_ns: u64, ttl_ns: u64, metrics: &Metrics) {
        let cutoff = now_ns.saturating_sub(ttl_ns);
        let removed = self.db.expire(cutoff, &mut self.budget, metrics);
        metrics.http_series_expired.inc_by(removed as u64);
        let mut gone = Vec::new();
        for (name, stats) in &mut self.stats {
            let before = stats.durations.len();
            stats
                .durations
                .retain(|(method, route, status, port), series| {
                    let keep = series.last_ns >= cutoff;
                    if !keep {
                        let _ = metrics.http_duration.remove_label_values(&[
                            method.as_str(),
                            route,
                            &status.to_string(),
                            name,
                            &port.to_string(),
                        ]);
                    }
                    keep
                });
            let removed = before - stats.durations.len();
            self.budget.used = self.budget.used.saturating_sub(removed);
            metrics.http_series_expired.inc_by(removed as u64);
            let mut expired = Vec::new();
            stats.routes.retain(|(_, route), r| {
                let keep = r.last_ns >= cutoff;
                if !keep {
                    expired.push(route.clone());
                }
                keep
            });
            for route in expired {
                if !stats.routes.keys().any(|(_, r)| *r == route) {
                    self.routes.forget(name, &route);
                    self.windows.forget_route(name, &route);
                }
            }
            if !is_idle(stats) || self.services.names(name) {
                metrics
                    .http_routes
                    .with_label_values(&[&**name])
                    .set(i64::try_from(self.routes.count(name)).unwrap_or(i64::MAX));
                continue;
            }
            gone.push(name.clone());
        }
        for name in gone {
            self.stats.remove(&name);
            self.routes.forget_service(&name);
            self.windows.forget_service(&name);
            for reason in Unpaired::ALL {
                for family in [&metrics.http_unpaired, &metrics.http_resyncs] {
                    let _ = family.remove_label_values(&[&name, reason.as_str()]);
                }
            }
            for family in [
                &metrics.http_seen,
                &metrics.http_paired,
                &metrics.http_route_overflow,
            ] {
                let _ = family.remove_label_values(&[&name]);
            }
            let _ = metrics.http_routes.remove_label_values(&[&name]);
        }
    }

    /// Decodes and processes one ring-buffer record.
    pub fn handle_record(&mut self, record: &[u8], metrics: &Metrics) {
        metrics.ringbuf_records.inc();
        let mut failed = false;
        self.with_streams(metrics, |streams, sink| {
            failed = streams.handle_record(record, sink).is_err();
        });
        if failed {
            metrics.ringbuf_decode_errors.inc();
        }
    }

    /// Forgets connections idle for longer than `idle_ns` (kernel clock).
    pub fn sweep(&mut self, now_ns: u64, idle_ns: u64, metrics: &Metrics) {
        self.with_streams(metrics, |streams, sink| {
            streams.sweep(now_ns, idle_ns, sink)
        });
    }

    /// Runs `f` on the streams with a sink into the routes, stats and
    /// metrics, then updates the tracked-connections gauge.
    fn with_streams(&mut self, metrics: &Metrics, f: impl FnOnce(&mut Streams, &mut Recorder<'_>)) {
        let mut sink = Recorder {
            routes: &mut self.routes,
            stats: &mut self.stats,
            services: &self.services,
            unknown: &self.unknown,
            metrics,
            budget: &mut self.budget,
            windows: &mut self.windows,
            db: &mut self.db,
            now_ns: self.now_ns,
        };
        f(&mut self.streams, &mut sink);
        metrics
            .http_connections
            .set(i64::try_from(self.streams.connections()).unwrap_or(i64::MAX));
    }

    /// The /stats/requests document at kernel time `now_ns`.
    pub fn snapshot(&self, now_ns: u64) -> RequestStats {
        let mut in_flight: Vec<InFlightRequest> = self
            .streams
            .in_flight()
            .map(|f| {
                let (service, port) = service_of(&self.services, &self.unknown, f.origin, f.port);
                InFlightRequest {
                    service_name: service.to_string(),
                    server_port: port,
                    method: f.method.as_str(),
                    route: f.route.to_string(),
                    age_seconds: now_ns.saturating_sub(f.start_ns) as f64 / 1e9,
                }
            })
            .collect();
        let total = in_flight.len();
        in_flight.sort_by(|a, b| b.age_seconds.total_cmp(&a.age_seconds));
        in_flight.truncate(MAX_IN_FLIGHT_SHOWN);
        let mut per_service_in_flight: HashMap<&str, u64> = HashMap::new();
        for f in self.streams.in_flight() {
            let (service, _) = service_of(&self.services, &self.unknown, f.origin, f.port);
            *per_service_in_flight.entry(&**service).or_default() += 1;
        }
        let services = self
            .stats
            .iter()
            .map(|(name, s)| {
                let mut routes: Vec<RouteSummary> = s
                    .routes
                    .iter()
                    .map(|((method, route), r)| RouteSummary {
                        method: method.as_str(),
                        route: route.to_string(),
                        count: r.count,
                        errors_5xx: r.errors,
                        p50_seconds: quantile(&r.sketch, 0.5),
                        p90_seconds: quantile(&r.sketch, 0.9),
                        p99_seconds: quantile(&r.sketch, 0.99),
                        max_seconds: r.sketch.max().unwrap_or(0.0),
                    })
                    .collect();
                let route_count = routes.len();
                routes.sort_by(|a, b| b.count.cmp(&a.count).then(a.route.cmp(&b.route)));
                routes.truncate(MAX_ROUTES_SHOWN);
                let summary = ServiceSummary {
                    requests_seen: s.seen,
                    requests_paired: s.paired,
                    unpaired: s
                        .unpaired
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), *v))
                        .collect(),
                    resyncs: s
                        .resyncs
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), *v))
                        .collect(),
                    in_flight: per_service_in_flight.get(&**name).copied().unwrap_or(0),
                    route_count,
                    routes,
                };
                (name.to_string(), summary)
            })
            .collect();
        RequestStats {
            in_flight_total: total,
            in_flight,
            services,
            databases: self.db.summaries(),
        }
    }
}

/// A service whose statistics hold no series and no route any more.
fn is_idle(stats: &ServiceStats) -> bool {
    stats.durations.is_empty() && stats.routes.is_empty()
}

fn quantile(sketch: &DDSketch, q: f64) -> f64 {
    sketch.quantile(q).ok().flatten().unwrap_or(0.0)
}

impl crate::capture::reader::RecordSink for Requests {
    type Context = Metrics;

    fn start_batch(&mut self) {
        self.refresh_services();
    }

    fn record(&mut self, record: &[u8], metrics: &Metrics) {
        self.handle_record(record, metrics);
    }
}

#[derive(Serialize, Debug)]
pub struct RequestStats {
    /// Requests read and not yet answered, across services.
    pub in_flight_total: usize,
    /// The oldest of them (at most [`MAX_IN_FLIGHT_SHOWN`]).
    pub in_flight: Vec<InFlightRequest>,
    pub services: HashMap<String, ServiceSummary>,
    /// Redis commands per service (as client or server), busiest first.
    pub databases: HashMap<String, Vec<super::db::CommandSummary>>,
}

#[derive(Serialize, Debug)]
pub struct InFlightRequest {
    pub service_name: String,
    pub server_port: u16,
    pub method: &'static str,
    pub route: String,
    pub age_seconds: f64,
}

#[derive(Serialize, Debug)]
pub struct ServiceSummary {
    pub requests_seen: u64,
    pub requests_paired: u64,
    /// Requests seen and not paired, by reason: `requests_seen` is
    /// `requests_paired` plus these plus `in_flight`.
    pub unpaired: HashMap<String, u64>,
    /// Times framing was lost and pairing resynced, by reason.
    pub resyncs: HashMap<String, u64>,
    pub in_flight: u64,
    pub route_count: usize,
    /// The busiest routes (at most [`MAX_ROUTES_SHOWN`]), with latency
    /// quantiles at 1% relative accuracy.
    pub routes: Vec<RouteSummary>,
}

#[derive(Serialize, Debug)]
pub struct RouteSummary {
    pub method: &'static str,
    pub route: String,
    pub count: u64,
    pub errors_5xx: u64,
    pub p50_seconds: f64,
    pub p90_seconds: f64,
    pub p99_seconds: f64,
    pub max_seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::directory::ServiceInfo;
    use crate::telemetry::synthetic::record;
    use apm_common::events::{EventKind, direction, tcp_flags};

    fn setup() -> (Requests, Metrics) {
        let dir = Arc::new(Directory::default());
        dir.replace(Services {
            by_pid: [(
                7,
                ServiceInfo {
                    name: "api".into(),
                    ports: vec![8080],
                },
            )]
            .into_iter()
            .collect(),
            by_socket: [((42, 8080), "web".into())].into_iter().collect(),
            ..Default::default()
        });
        (
            Requests::new(RouteConfig::default(), 1024, dir),
            Metrics::new().expect("metrics"),
        )
    }

    #[test]
    fn records_become_histograms_and_stats_without_the_query() {
        let (mut r, m) = setup();
        let ms = 1_000_000;
        r.handle_record(&record(EventKind::Accept, 0, 7, 4, 8080, b""), &m);
        r.handle_record(
            &record(
                EventKind::Read,
                10 * ms,
                7,
                4,
                8080,
                b"GET /users/42?token=hunter2 HTTP/1.1\r\n\r\n",
            ),
            &m,
        );
        let mid = r.snapshot(15 * ms);
        assert_eq!(mid.in_flight_total, 1);
        assert_eq!(mid.in_flight[0].route, "/users/{id}");
        assert!((mid.in_flight[0].age_seconds - 0.005).abs() < 1e-9);
        r.handle_record(
            &record(
                EventKind::Write,
                30 * ms,
                7,
                4,
                8080,
                b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
            ),
            &m,
        );
        let text = m.encode().expect("encode");
        assert!(text.contains(
            r#"http_server_request_duration_seconds_bucket{http_request_method="GET",http_response_status_code="500",http_route="/users/{id}",server_port="8080",service_name="api",le="0.025"} 1"#
        ), "{text}");
        assert!(!text.contains("hunter2"));
        let s = r.snapshot(40 * ms);
        let json = serde_json::to_string(&s).expect("json");
        assert!(!json.contains("hunter2"));
        let api = &s.services["api"];
        assert_eq!(
            (api.requests_seen, api.requests_paired, api.in_flight),
            (1, 1, 0)
        );
        assert_eq!(api.routes[0].errors_5xx, 1);
        assert!((api.routes[0].p50_seconds - 0.020).abs() < 0.0003, "{json}");
    }

    /// A packet record of port 8080.
    fn packet(
        ts_ns: u64,
        cookie: u64,
        netns: u64,
        direction: u8,
        seq: u32,
        flags: u8,
        data: &[u8],
    ) -> Vec<u8> {
        let header = apm_common::events::PacketHeader {
            ts_ns,
            cookie,
            netns,
            port: 8080,
            direction,
            seq,
            flags,
            ..Default::default()
        };
        crate::telemetry::synthetic::packet(header, data)
    }

    #[test]
    fn packets_pair_by_cookie_and_name_their_service_by_namespace() {
        let (mut r, m) = setup();
        let ms = 1_000_000;
        let get = b"GET /orders/7 HTTP/1.1\r\nHost: x\r\n\r\n";
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let (i, e) = (direction::INGRESS, direction::EGRESS);
        r.handle_record(&packet(10 * ms, 1, 42, i, 100, 0, get), &m);
        // A retransmission of the request changes nothing.
        r.handle_record(&packet(11 * ms, 1, 42, i, 100, 0, get), &m);
        r.handle_record(&packet(25 * ms, 1, 42, e, 900, 0, ok), &m);
        // The same port in another namespace is another service.
        r.handle_record(&packet(30 * ms, 2, 43, i, 5, 0, get), &m);
        r.handle_record(&packet(32 * ms, 2, 43, e, 5, 0, ok), &m);
        let s = r.snapshot(40 * ms);
        let web = &s.services["web"];
        assert_eq!((web.requests_seen, web.requests_paired), (1, 1));
        assert!((web.routes[0].p50_seconds - 0.015).abs() < 0.0003);
        assert_eq!(s.services["unknown"].requests_paired, 1);
        // The server's FIN ends the connection.
        r.handle_record(
            &packet(
                50 * ms,
                1,
                42,
                e,
                900 + ok.len() as u32,
                tcp_flags::FIN,
                b"",
            ),
            &m,
        );
        r.handle_record(
            &packet(50 * ms, 2, 43, i, 5 + get.len() as u32, tcp_flags::RST, b""),
            &m,
        );
        assert_eq!(m.http_connections.get(), 0);
    }

    #[test]
    fn series_are_bounded_expire_when_idle_and_go_with_their_service() {
        let (r, m) = setup();
        let mut r = r.with_max_series(2);
        let (i, e) = (direction::INGRESS, direction::EGRESS);
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let sec = 1_000_000_000u64;
        let get = |p: &str| format!("GET {p} HTTP/1.1\r\n\r\n").into_bytes();
        r.now_ns = 100 * sec;
        for (conn, path) in [(1u64, "/a"), (2, "/b"), (3, "/c")] {
            r.handle_record(&packet(1, conn, 42, i, 0, 0, &get(path)), &m);
            r.handle_record(&packet(2, conn, 42, e, 0, 0, ok), &m);
        }
        // Two series at most: /c was paired but is not in the histogram.
        assert_eq!(m.http_series_over_budget.get(), 1);
        assert_eq!(r.snapshot(0).services["web"].requests_paired, 3);
        let series = |m: &Metrics, route: &str| {
            m.encode()
                .expect("encode")
                .contains(&format!("http_route=\"{route}\""))
        };
        assert!(series(&m, "/a") && series(&m, "/b") && !series(&m, "/c"));
        // /a again ten minutes later; /b stays silent.
        r.now_ns = 700 * sec;
        let a = get("/a");
        r.handle_record(&packet(3, 1, 42, i, a.len() as u32, 0, &a), &m);
        r.handle_record(&packet(4, 1, 42, e, ok.len() as u32, 0, ok), &m);
        r.expire(701 * sec, 600 * sec, &m);
        assert!(series(&m, "/a") && !series(&m, "/b"));
        assert_eq!(m.http_series_expired.get(), 1);
        // The freed budget takes a new series.
        r.handle_record(
            &packet(5, 3, 42, i, get("/c").len() as u32, 0, &get("/c")),
            &m,
        );
        r.handle_record(&packet(6, 3, 42, e, ok.len() as u32, 0, ok), &m);
        assert!(series(&m, "/c"));
        // The service goes away; once its series are idle too, nothing of
        // it is left.
        r.directory.replace(Services::default());
        r.refresh_services();
        r.expire(u64::MAX, 600 * sec, &m);
        let text = m.encode().expect("encode");
        assert!(!text.contains("service_name=\"web\""), "{text}");
        assert!(!r.snapshot(0).services.contains_key("web"));
        assert_eq!(r.routes.count("web"), 0);
    }

    #[test]
    fn a_lost_packet_resyncs_instead_of_shifting_responses() {
        let (mut r, m) = setup();
        let (i, e) = (direction::INGRESS, direction::EGRESS);
        let req = |p: &str| format!("GET {p} HTTP/1.1\r\n\r\n").into_bytes();
        let resp =
            |code: u16| format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").into_bytes();
        let (a, b, c) = (req("/a"), req("/b"), req("/c"));
        let (r200, r404, r500) = (resp(200), resp(404), resp(500));
        // Each side's next sequence number; every segment acknowledges
        // all the other side sent (the server did receive /b).
        let mut seq = [0u32; 2];
        let mut send = |r: &mut Requests, dir: u8, bytes: &[u8], lost: bool| {
            let d = usize::from(dir);
            let header = apm_common::events::PacketHeader {
                ts_ns: u64::from(seq[0] + seq[1]) + 1,
                cookie: 9,
                netns: 42,
                port: 8080,
                direction: dir,
                seq: seq[d],
                ack: seq[1 - d],
                flags: tcp_flags::ACK,
                ..Default::default()
            };
            if !lost {
                r.handle_record(&crate::telemetry::synthetic::packet(header, bytes), &m);
            }
            seq[d] += bytes.len() as u32;
        };
        send(&mut r, i, &a, false);
        send(&mut r, e, &r200, false);
        // /b's request record is lost from the ring; its 404 must not pair
        // with /c, and the 404's acknowledgment says /b will not come.
        send(&mut r, i, &b, true);
        send(&mut r, e, &r404, false);
        send(&mut r, i, &c, false);
        send(&mut r, e, &r500, false);
        let s = r.snapshot(0);
        let web = &s.services["web"];
        let route = |p: &str| {
            web.routes
                .iter()
                .find(|x| x.route == p)
                .map(|x| (x.count, x.errors_5xx))
        };
        assert_eq!(route("/a"), Some((1, 0)));
        assert_eq!(route("/c"), Some((1, 1)), "{web:?}");
        assert_eq!(web.resyncs.get("gap"), Some(&1), "{web:?}");
        assert_eq!(web.resyncs.get("response_without_request"), Some(&1));
        assert_eq!(web.requests_seen, 2);
    }

    #[test]
    fn garbage_records_are_counted_not_fatal() {
        let (mut r, m) = setup();
        r.handle_record(&[1, 2, 3], &m);
        let mut bad = record(EventKind::Read, 0, 7, 4, 8080, b"x");
        bad[0] = 99;
        r.handle_record(&bad, &m);
        assert_eq!(m.ringbuf_decode_errors.get(), 2);
    }
}
