//! From ring-buffer records to HTTP metrics and /stats/requests: decode and
//! pair (`streams`), template (`routes`), record (`metrics`).
//!
//! Nothing here but `run` (the thread that reads the ring) touches aya,
//! and nothing touches tokio, so the whole pipeline runs in unit tests and
//! benchmarks on synthetic records.

use std::{collections::HashMap, sync::Arc, time::Duration};

use super::{
    recent::RECENT_WINDOW_NS,
    recorder::{Recorder, SeriesBudget, ServiceStats, service_of},
    snapshot::{InFlightRequest, PipelineSnapshot, RequestStats, RouteSummary, ServiceSummary},
};
use crate::{
    protocols::routes::{RouteConfig, Routes},
    services::directory::{Directory, Services, UNKNOWN_SERVICE},
    streams::{
        Streams,
        pairing::{InFlight, Unpaired},
    },
    telemetry::{
        metrics::Metrics,
        traces::{
            assemble::Unplaced,
            export::Queue,
            recent::RecentTraces,
            tracer::{TraceConfig, Tracer},
        },
        windows::Windows,
    },
};
use rustc_hash::FxHashMap;

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

pub struct Pipeline {
    streams: Streams,
    routes: Routes,
    /// Per service; names come from the agent, so a non-keyed hash is safe.
    stats: FxHashMap<Arc<str>, ServiceStats>,
    directory: Arc<Directory>,
    services: Arc<Services>,
    unknown: Arc<str>,
    budget: SeriesBudget,
    windows: Windows,
    statement_windows: Windows,
    /// gRPC calls per service and method, a server error counting as a
    /// 5xx: the `grpc_error_ratio` alert signal.
    call_windows: Windows,
    db: super::db::DbStats,
    http_client: super::http_client::ClientStats,
    rpc: super::rpc::RpcStats,
    sql: super::sql::SqlStats,
    tracer: Tracer,
    /// The last /traces/recent list published.
    recent_traces: Arc<RecentTraces>,
    /// The current batch's time (kernel clock), for series' last use.
    now_ns: u64,
}

/// Duration series across all services, by default (`--max-series`).
pub const DEFAULT_MAX_SERIES: usize = 20_000;

impl Pipeline {
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
            statement_windows: Windows::new(Duration::ZERO),
            call_windows: Windows::new(Duration::ZERO),
            db: Default::default(),
            http_client: Default::default(),
            rpc: Default::default(),
            sql: Default::default(),
            tracer: Tracer::new(TraceConfig::default(), None),
            recent_traces: Arc::default(),
            now_ns: 0,
        }
    }

    /// Keeps `keep` of rolling windows for the alert rules (none by
    /// default).
    pub fn with_windows(mut self, keep: Duration) -> Self {
        self.windows = Windows::new(keep);
        self.statement_windows = Windows::new(keep);
        self.call_windows = Windows::new(keep);
        self
    }

    pub fn windows(&self) -> &Windows {
        &self.windows
    }

    /// Requests read and not yet answered, per service.
    fn in_flight_by_service(&self) -> HashMap<String, u64> {
        let mut counts: FxHashMap<&Arc<str>, u64> = FxHashMap::default();
        for f in self.streams.in_flight() {
            let (service, _) = service_of(&self.services, &self.unknown, f.origin, f.port);
            *counts.entry(service).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|(name, n)| (name.to_string(), n))
            .collect()
    }

    /// Makes spans as `config` says and exports kept traces to `export`.
    pub fn with_traces(mut self, config: TraceConfig, export: Option<Queue>) -> Self {
        self.tracer = Tracer::new(config, export);
        self
    }

    /// Decides the traces whose roots have ended by the records handled
    /// so far (kernel time `now_ns` when none came for 2 s): a pipeline
    /// that falls behind does not decide a root before its children.
    pub fn finish_traces(&mut self, now_ns: u64, metrics: &Metrics) {
        let handled = self.streams.latest_ns().min(now_ns);
        let at = handled.max(now_ns.saturating_sub(2_000_000_000));
        self.tracer.finish(at, metrics);
    }

    /// At most `max` duration series across services.
    pub fn with_max_series(mut self, max: usize) -> Self {
        self.budget.max = max;
        self
    }

    /// Whether the agent has published its first scan's services.
    pub fn services_known(&self) -> bool {
        self.directory.published()
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
        let removed = self.db.expire(cutoff, &mut self.budget, metrics)
            + self
                .http_client
                .expire(cutoff, &mut self.budget, &metrics.http_client)
            + self.rpc.expire(cutoff, &mut self.budget, &metrics.rpc)
            + self.sql.expire(
                cutoff,
                &mut self.budget,
                &mut self.statement_windows,
                metrics,
            );
        metrics.http_series_expired.inc_by(removed as u64);
        let mut gone = Vec::new();
        for (name, stats) in &mut self.stats {
            let before = stats.durations.len();
            stats
                .durations
                .retain(|(method, route, status, port, version), series| {
                    let keep = series.last_ns >= cutoff;
                    if !keep {
                        let _ = metrics.http_duration.remove_label_values(&[
                            method.as_str(),
                            route,
                            &status.to_string(),
                            version.as_str(),
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
            self.call_windows.forget_service(&name);
            for reason in Unpaired::ALL {
                for family in [&metrics.http_unpaired, &metrics.http_resyncs] {
                    let _ = family.remove_label_values(&[&name, reason.as_str()]);
                }
            }
            for family in [
                &metrics.http_seen,
                &metrics.http_paired,
                &metrics.http_route_overflow,
                &metrics.http_route_collapses,
            ] {
                let _ = family.remove_label_values(&[&name]);
            }
            let _ = metrics.http_routes.remove_label_values(&[&name]);
            for why in Unplaced::ALL_CALLS {
                let _ = metrics
                    .traces
                    .unplaced
                    .remove_label_values(&[&name, why.as_str()]);
            }
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
            statement_windows: &mut self.statement_windows,
            call_windows: &mut self.call_windows,
            db: &mut self.db,
            http_client: &mut self.http_client,
            rpc: &mut self.rpc,
            sql: &mut self.sql,
            tracer: &mut self.tracer,
            thread: 0,
            now_ns: self.now_ns,
        };
        f(&mut self.streams, &mut sink);
        let untied = self.streams.take_untied_lost();
        if untied > 0 {
            metrics
                .agent_drops
                .with_label_values(&["tls_untied"])
                .inc_by(untied);
        }
        metrics
            .http_connections
            .set(i64::try_from(self.streams.connections()).unwrap_or(i64::MAX));
    }

    /// Everything readers see, as of kernel time `now_ns`.
    pub fn publish(&mut self, now_ns: u64) -> PipelineSnapshot {
        PipelineSnapshot {
            at_ns: now_ns,
            stats: self.snapshot(now_ns),
            windows: self.windows.clone(),
            statements: self.statement_windows.clone(),
            calls: self.call_windows.clone(),
            traces: match self.tracer.take_recent() {
                Some(recent) => {
                    self.recent_traces = recent.clone();
                    recent
                }
                None => self.recent_traces.clone(),
            },
        }
    }

    /// The /stats/requests document at kernel time `now_ns`.
    pub fn snapshot(&mut self, now_ns: u64) -> RequestStats {
        // The oldest MAX_IN_FLIGHT_SHOWN, chosen before anything is
        // allocated for them: there may be one per tracked connection.
        let mut oldest: Vec<InFlight> = self.streams.in_flight().collect();
        let total = oldest.len();
        if oldest.len() > MAX_IN_FLIGHT_SHOWN {
            oldest.select_nth_unstable_by_key(MAX_IN_FLIGHT_SHOWN, |f| f.start_ns);
            oldest.truncate(MAX_IN_FLIGHT_SHOWN);
        }
        oldest.sort_by_key(|f| f.start_ns);
        let in_flight: Vec<InFlightRequest> = oldest
            .into_iter()
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
        let per_service_in_flight = self.in_flight_by_service();
        let services = self
            .stats
            .iter_mut()
            .map(|(name, s)| {
                let routes: Vec<RouteSummary> = s
                    .routes
                    .iter_mut()
                    .map(|((method, route), r)| {
                        let recent = r.recent.summary(now_ns);
                        RouteSummary {
                            method: method.as_str(),
                            route: route.to_string(),
                            count: r.count,
                            errors_5xx: r.errors,
                            recent_count: recent.count,
                            recent_errors_5xx: recent.errors,
                            p50_seconds: recent.p50,
                            p90_seconds: recent.p90,
                            p99_seconds: recent.p99,
                            max_seconds: recent.max,
                        }
                    })
                    .collect();
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
                    route_count: routes.len(),
                    recent_window_seconds: RECENT_WINDOW_NS as f64 / 1e9,
                    slowest: top(&routes, MAX_RANKED, |r| {
                        (r.recent_count > 0).then_some(r.p99_seconds)
                    }),
                    most_errors: top(&routes, MAX_RANKED, |r| {
                        (r.recent_errors_5xx > 0)
                            .then(|| r.recent_errors_5xx as f64 / r.recent_count.max(1) as f64)
                    }),
                    routes: busiest(routes),
                };
                (name.to_string(), summary)
            })
            .collect();
        RequestStats {
            in_flight_total: total,
            in_flight,
            services,
            databases: self.db.summaries(),
            statements: self.sql.summaries(),
        }
    }
}

/// Routes ranked in the slowest and most-errors lists.
pub const MAX_RANKED: usize = 10;

/// The `n` routes with the highest `key` (those with one), highest first.
fn top(
    routes: &[RouteSummary],
    n: usize,
    key: impl Fn(&RouteSummary) -> Option<f64>,
) -> Vec<RouteSummary> {
    let mut ranked: Vec<(f64, &RouteSummary)> = routes
        .iter()
        .filter_map(|r| key(r).map(|k| (k, r)))
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.route.cmp(&b.1.route)));
    ranked.into_iter().take(n).map(|(_, r)| r.clone()).collect()
}

/// The busiest [`MAX_ROUTES_SHOWN`] routes: recent requests first, then
/// all-time ones.
fn busiest(mut routes: Vec<RouteSummary>) -> Vec<RouteSummary> {
    routes.sort_by(|a, b| {
        b.recent_count
            .cmp(&a.recent_count)
            .then(b.count.cmp(&a.count))
            .then(a.route.cmp(&b.route))
    });
    routes.truncate(MAX_ROUTES_SHOWN);
    routes
}

/// A service whose statistics hold no series and no route any more.
fn is_idle(stats: &ServiceStats) -> bool {
    stats.durations.is_empty() && stats.routes.is_empty()
}

pub mod run;
#[cfg(test)]
mod tests;
