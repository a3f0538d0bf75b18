//! The pairing's sink: where a paired, unpaired or new request becomes
//! per-service statistics and Prometheus samples. Each service keeps the
//! handles of its hot series, so recording a request hashes no labels.

use std::{collections::HashMap, sync::Arc};

use prometheus::{Histogram, IntCounter};
use rustc_hash::FxHashMap;

use crate::{
    protocols::{
        http::Method,
        routes::{Route, Routes},
    },
    services::directory::Services,
    streams::pairing::{Completed, Origin, Sink, Unpaired, Version},
    telemetry::{
        metrics::Metrics,
        recent::RecentDurations,
        traces::{Span, make, tracer::Tracer},
        windows::Windows,
    },
};

pub(super) struct RouteStats {
    pub count: u64,
    pub errors: u64,
    /// Durations over the recent window.
    pub recent: RecentDurations,
    /// When a request of this route last completed (kernel clock).
    pub last_ns: u64,
}

/// The duration histogram of one (method, route, status, port, version)
/// of a service.
pub(super) type SeriesKey = (Method, Arc<str>, u16, u16, Version);

/// A duration histogram series and when it was last observed.
pub(super) struct Series {
    pub histogram: Histogram,
    pub last_ns: u64,
}

/// Duration series across all services: at most `max` exist at once.
pub(super) struct SeriesBudget {
    pub max: usize,
    pub used: usize,
}

impl SeriesBudget {
    /// Observes `seconds` in `key`'s series of `series`, made by `make`
    /// when new and the budget has room; else counted in `over`.
    pub(super) fn observe<K: Eq + std::hash::Hash>(
        &mut self,
        series: &mut FxHashMap<K, Series>,
        key: K,
        (seconds, now_ns): (f64, u64),
        over: &IntCounter,
        make: impl FnOnce() -> Histogram,
    ) {
        if let Some(s) = series.get_mut(&key) {
            s.histogram.observe(seconds);
            s.last_ns = now_ns;
            return;
        }
        if self.used >= self.max {
            over.inc();
            return;
        }
        let histogram = make();
        histogram.observe(seconds);
        self.used += 1;
        series.insert(
            key,
            Series {
                histogram,
                last_ns: now_ns,
            },
        );
    }
}

pub(super) struct ServiceStats {
    pub seen: u64,
    pub paired: u64,
    pub unpaired: HashMap<&'static str, u64>,
    pub resyncs: HashMap<&'static str, u64>,
    pub routes: FxHashMap<(Method, Arc<str>), RouteStats>,
    seen_total: IntCounter,
    paired_total: IntCounter,
    /// Bounded like the series themselves: routes are capped per service.
    pub durations: FxHashMap<SeriesKey, Series>,
}

/// The service and port label of a connection.
pub(super) fn service_of<'a>(
    services: &'a Services,
    unknown: &'a Arc<str>,
    origin: Origin,
    port: u16,
) -> (&'a Arc<str>, u16) {
    match origin {
        Origin::Process(tgid) | Origin::Client { tgid, .. } => match services.by_pid.get(&tgid) {
            Some(info) => {
                let port = if port == 0 && info.ports.len() == 1 {
                    info.ports[0]
                } else {
                    port
                };
                (&info.name, port)
            }
            None => (services.departed.get(&tgid).unwrap_or(unknown), port),
        },
        Origin::Socket { netns, port } => {
            (services.of_socket(netns, port).unwrap_or(unknown), port)
        }
    }
}

pub(super) struct Recorder<'a> {
    pub routes: &'a mut Routes,
    pub stats: &'a mut FxHashMap<Arc<str>, ServiceStats>,
    pub services: &'a Services,
    pub unknown: &'a Arc<str>,
    pub metrics: &'a Metrics,
    pub budget: &'a mut SeriesBudget,
    pub windows: &'a mut Windows,
    pub statement_windows: &'a mut Windows,
    pub call_windows: &'a mut Windows,
    pub db: &'a mut super::db::DbStats,
    pub sql: &'a mut super::sql::SqlStats,
    pub http_client: &'a mut super::http_client::ClientStats,
    pub rpc: &'a mut super::rpc::RpcStats,
    pub tracer: &'a mut Tracer,
    /// The thread that last sent on the client connection being handled
    /// ([`StatementSink::calling_thread`]).
    pub thread: u32,
    /// The time of the batch being recorded (kernel clock).
    pub now_ns: u64,
}

impl Recorder<'_> {
    /// Requests of service `name` in flight now: seen, less paired, less
    /// unpaired (every unpaired reason stands for a request seen).
    fn in_flight(&self, name: &str) -> u64 {
        self.stats.get(name).map_or(0, |s| {
            let lost: u64 = s.unpaired.values().sum();
            s.seen.saturating_sub(s.paired).saturating_sub(lost)
        })
    }

    /// A monitored client's call of service `name` ended: `span()` makes
    /// its span, with the service's resource, for the tracer (when
    /// tracing).
    pub(super) fn trace_call(&mut self, name: &Arc<str>, span: impl FnOnce() -> Span) {
        if !self.tracer.enabled() {
            return;
        }
        let span = make::resourced(span(), self.services.resources.get(name));
        let in_flight = self.in_flight(name);
        self.tracer.call(span, in_flight, self.metrics);
    }

    pub(super) fn service(&mut self, origin: Origin, port: u16) -> (Arc<str>, u16) {
        let (name, port) = service_of(self.services, self.unknown, origin, port);
        (name.clone(), port)
    }

    fn stats(&mut self, name: &Arc<str>) -> &mut ServiceStats {
        let metrics = self.metrics;
        self.stats
            .entry(name.clone())
            .or_insert_with(|| new_service(metrics, name))
    }
}

/// A new service's statistics. Every unpaired reason is exported from
/// zero, so a rate() over them works before the first one happens.
fn new_service(metrics: &Metrics, name: &Arc<str>) -> ServiceStats {
    for reason in Unpaired::REQUEST {
        metrics
            .http_unpaired
            .with_label_values(&[&**name, reason.as_str()])
            .inc_by(0);
    }
    for reason in Unpaired::RESYNC {
        metrics
            .http_resyncs
            .with_label_values(&[&**name, reason.as_str()])
            .inc_by(0);
    }
    ServiceStats {
        seen: 0,
        paired: 0,
        unpaired: HashMap::new(),
        resyncs: HashMap::new(),
        routes: FxHashMap::default(),
        seen_total: metrics.http_seen.with_label_values(&[&**name]),
        paired_total: metrics.http_paired.with_label_values(&[&**name]),
        durations: FxHashMap::default(),
    }
}

impl Sink for Recorder<'_> {
    fn route(&mut self, origin: Origin, path: &str) -> Route {
        if origin.is_client() {
            return self.http_client.route();
        }
        let (name, _) = self.service(origin, 0);
        let (route, counts) = self.routes.template_counted(&name, path);
        let Some((before, after)) = counts else {
            // Remembered: a known route of a known service.
            return route;
        };
        let collapses = self.routes.take_collapses();
        if before == 0 {
            // A new service: export its counters from zero.
            for family in [
                &self.metrics.http_route_overflow,
                &self.metrics.http_route_collapses,
            ] {
                family.with_label_values(&[&*name]).inc_by(0);
            }
        }
        if route.overflow {
            self.metrics
                .http_route_overflow
                .with_label_values(&[&*name])
                .inc();
        }
        if collapses > 0 {
            self.metrics
                .http_route_collapses
                .with_label_values(&[&*name])
                .inc_by(collapses);
        }
        if after != before {
            self.metrics
                .http_routes
                .with_label_values(&[&*name])
                .set(i64::try_from(after).unwrap_or(i64::MAX));
        }
        route
    }

    fn call_started(&mut self, port: u16, seq: (u16, u32), start_ns: u64) {
        if self.tracer.enabled() {
            self.tracer.call_started(port, seq, start_ns);
        }
    }

    fn request(&mut self, origin: Origin, port: u16) {
        if origin.is_client() {
            return;
        }
        let (name, _) = self.service(origin, port);
        let stats = self.stats(&name);
        stats.seen_total.inc();
        stats.seen += 1;
    }

    fn completed(&mut self, done: Completed) {
        let (name, port) = self.service(done.origin, done.port);
        if let Origin::Client { server, .. } = done.origin {
            let (metrics, now_ns) = (self.metrics, self.now_ns);
            self.http_client
                .completed(metrics, self.budget, &name, server, &done, now_ns);
            self.trace_call(&name, || make::http(&done, name.clone(), port));
            return;
        }
        if self.tracer.enabled() {
            let resource = self.services.resources.get(&name);
            self.tracer
                .request(&done, (name.clone(), port), resource, self.metrics);
        }
        let seconds = done.duration_ns as f64 / 1e9;
        let (metrics, now_ns) = (self.metrics, self.now_ns);
        let budget = &mut *self.budget;
        let stats = self
            .stats
            .entry(name.clone())
            .or_insert_with(|| new_service(metrics, &name));
        let key = (
            done.method,
            done.route.clone(),
            done.status,
            port,
            done.version,
        );
        match stats.durations.get_mut(&key) {
            Some(series) => {
                series.histogram.observe(seconds);
                series.last_ns = now_ns;
            }
            None if budget.used >= budget.max => metrics.http_series_over_budget.inc(),
            None => {
                let histogram = metrics.http_duration.with_label_values(&[
                    done.method.as_str(),
                    &*done.route,
                    &done.status.to_string(),
                    done.version.as_str(),
                    &*name,
                    &port.to_string(),
                ]);
                histogram.observe(seconds);
                budget.used += 1;
                stats.durations.insert(
                    key,
                    Series {
                        histogram,
                        last_ns: now_ns,
                    },
                );
            }
        }
        stats.paired_total.inc();
        stats.paired += 1;
        self.route_done(&name, done.method, done.route, done.status, seconds);
    }

    fn unpaired(&mut self, origin: Origin, port: u16, reason: Unpaired) {
        self.count(origin, port, reason, false);
    }

    fn resync(&mut self, origin: Origin, port: u16, reason: Unpaired) {
        self.count(origin, port, reason, true);
    }
}

impl Recorder<'_> {
    /// A request (or gRPC call, `status` 500 for a server error) of
    /// service `name` ended: the alert windows and its route's recent
    /// statistics (/stats/requests, the dashboard).
    pub(super) fn route_done(
        &mut self,
        name: &Arc<str>,
        method: Method,
        route: Arc<str>,
        status: u16,
        seconds: f64,
    ) {
        let now_ns = self.now_ns;
        self.windows
            .record(now_ns / 1_000_000_000, name, &route, status, seconds);
        let route = self
            .stats(name)
            .routes
            .entry((method, route))
            .or_insert_with(|| RouteStats {
                count: 0,
                errors: 0,
                recent: RecentDurations::new(now_ns),
                last_ns: now_ns,
            });
        route.count += 1;
        route.last_ns = now_ns;
        if status >= 500 {
            route.errors += 1;
        }
        route.recent.add(now_ns, seconds, status >= 500);
    }

    /// One unpaired request, or one resync, of `origin`'s service.
    fn count(&mut self, origin: Origin, port: u16, reason: Unpaired, resync: bool) {
        let (name, _) = self.service(origin, port);
        if origin.is_client() {
            super::http_client::ClientStats::unpaired(&self.metrics.http_client, &name, reason);
            return;
        }
        let family = if resync {
            &self.metrics.http_resyncs
        } else {
            &self.metrics.http_unpaired
        };
        family.with_label_values(&[&*name, reason.as_str()]).inc();
        let stats = self.stats(&name);
        let counts = if resync {
            &mut stats.resyncs
        } else {
            &mut stats.unpaired
        };
        *counts.entry(reason.as_str()).or_default() += 1;
        if !resync && self.tracer.enabled() {
            // Its calls can no longer be told from another request's.
            self.tracer.request_lost(&name, self.now_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::directory::ServiceInfo;

    #[test]
    fn a_process_gone_lately_still_names_its_calls() {
        let mut services = Services::default();
        services.by_pid.insert(
            7,
            ServiceInfo {
                name: "checkout".into(),
                ports: vec![8080],
            },
        );
        services.departed.insert(9, "shop".into());
        let unknown: Arc<str> = "unknown".into();
        let server = "10.0.0.1".parse().expect("ip");
        let name = |tgid| {
            let origin = Origin::Client { tgid, server };
            service_of(&services, &unknown, origin, 443).0.to_string()
        };
        assert_eq!(name(7), "checkout");
        assert_eq!(name(9), "shop");
        assert_eq!(name(11), "unknown");
        let served = service_of(&services, &unknown, Origin::Process(7), 0);
        assert_eq!(served.1, 8080);
    }
}
