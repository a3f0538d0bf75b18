//! The RESP pairing's sink: database operation histograms (a monitored
//! client's, or a monitored server's) and cache results. Each series keeps
//! its handle, so recording an operation hashes no labels; series count
//! against the same `--max-series` budget as HTTP's and expire with them.

use std::{net::IpAddr, sync::Arc};

use prometheus::{Histogram, IntCounter};
use rustc_hash::FxHashMap;
use sketches_ddsketch::{Config as SketchConfig, DDSketch};

use super::recorder::{Recorder, SeriesBudget, service_of};
use crate::{
    protocols::resp::commands::Command,
    streams::{
        pairing::Unpaired,
        resp::{CacheResult, CommandSink, Peer},
    },
    telemetry::{metrics::Metrics, traces::make},
};

/// `db_system_name` of every RESP series.
pub const REDIS: &str = "redis";

/// (service, operation, server address for a client, server port).
type DbKey = (Arc<str>, Op, Option<IpAddr>, u16);

/// An operation name as a key: equal by content, as the name itself, but
/// compared by address first. Every name comes from the command table, so
/// a lookup costs one comparison instead of a memcmp call (a command looks
/// up four keys holding one).
#[derive(Clone, Copy, Debug, Eq)]
struct Op(&'static str);

impl PartialEq for Op {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0, other.0) || self.0 == other.0
    }
}

impl std::hash::Hash for Op {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

struct Tracked<T> {
    handle: T,
    last_ns: u64,
}

/// One command of one service (both sides together), for /stats/requests
/// and the dashboard.
pub struct DbTotals {
    pub operations: u64,
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
    pub sketch: DDSketch,
}

impl Default for DbTotals {
    fn default() -> Self {
        Self {
            operations: 0,
            hits: 0,
            misses: 0,
            errors: 0,
            // 1% relative accuracy, like the routes'.
            sketch: DDSketch::new(SketchConfig::new(0.01, 2048, 1e-9)),
        }
    }
}

/// A command's totals as /stats/requests shows them.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CommandSummary {
    pub operation: &'static str,
    pub count: u64,
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
}

/// Commands listed per service at most (busiest first).
pub const MAX_COMMANDS_SHOWN: usize = 50;

#[derive(Default)]
pub struct DbStats {
    series: FxHashMap<DbKey, Tracked<Histogram>>,
    cache: FxHashMap<(Arc<str>, Op, CacheResult), Tracked<IntCounter>>,
    /// Per service, per command (bounded by the command table).
    totals: FxHashMap<Arc<str>, FxHashMap<Op, DbTotals>>,
}

impl DbStats {
    fn totals_of(&mut self, service: &Arc<str>, operation: &'static str) -> &mut DbTotals {
        self.totals
            .entry(service.clone())
            .or_default()
            .entry(Op(operation))
            .or_default()
    }
    /// Each service's commands, busiest first.
    pub fn summaries(&self) -> std::collections::HashMap<String, Vec<CommandSummary>> {
        let q = |s: &DDSketch, q| s.quantile(q).ok().flatten().unwrap_or(0.0);
        self.totals
            .iter()
            .map(|(service, commands)| {
                let mut list: Vec<CommandSummary> = commands
                    .iter()
                    .map(|(&Op(operation), t)| CommandSummary {
                        operation,
                        count: t.operations,
                        hits: t.hits,
                        misses: t.misses,
                        errors: t.errors,
                        p50_seconds: q(&t.sketch, 0.5),
                        p99_seconds: q(&t.sketch, 0.99),
                    })
                    .collect();
                list.sort_by(|a, b| b.count.cmp(&a.count).then(a.operation.cmp(b.operation)));
                list.truncate(MAX_COMMANDS_SHOWN);
                (service.to_string(), list)
            })
            .collect()
    }

    /// Removes series, cache counters and totals unused since `cutoff`
    /// (kernel clock); returns how many duration series went.
    pub(super) fn expire(
        &mut self,
        cutoff: u64,
        budget: &mut SeriesBudget,
        metrics: &Metrics,
    ) -> usize {
        let before = self.series.len();
        self.series.retain(|(service, Op(op), server, port), s| {
            let keep = s.last_ns >= cutoff;
            if !keep {
                let port = port.to_string();
                let _ = match server {
                    Some(addr) => metrics.db_client_duration.remove_label_values(&[
                        REDIS,
                        op,
                        "",
                        "",
                        &addr.to_string(),
                        &port,
                        service,
                    ]),
                    None => metrics
                        .db_server_duration
                        .remove_label_values(&[REDIS, op, "", "", service, &port]),
                };
            }
            keep
        });
        let removed = before - self.series.len();
        budget.used = budget.used.saturating_sub(removed);
        self.cache.retain(|(service, Op(op), result), c| {
            let keep = c.last_ns >= cutoff;
            if !keep {
                let _ = metrics.cache_operations.remove_label_values(&[
                    &**service,
                    op,
                    result.as_str(),
                ]);
            }
            keep
        });
        let live: std::collections::HashSet<&Arc<str>> =
            self.series.keys().map(|(s, ..)| s).collect();
        self.totals.retain(|s, _| live.contains(s));
        removed
    }
}

impl CommandSink for Recorder<'_> {
    fn completed(&mut self, peer: &Peer, cmd: Command, duration_ns: u64, end_ns: u64, tid: u32) {
        let (name, port) = service_of(self.services, self.unknown, peer.origin, peer.port);
        let (metrics, now_ns) = (self.metrics, self.now_ns);
        if peer.server.is_some() {
            let at = (end_ns.saturating_sub(duration_ns), end_ns);
            self.trace_call(name, || make::redis(peer, cmd, name.clone(), at, tid));
        }
        let seconds = duration_ns as f64 / 1e9;
        if !self.db.totals.contains_key(name) {
            // A new service: export every unpaired reason from zero.
            for reason in Unpaired::ALL {
                metrics
                    .db_unpaired
                    .with_label_values(&[name, REDIS, reason.as_str()])
                    .inc_by(0);
            }
        }
        let totals = self.db.totals_of(name, cmd.name);
        totals.operations += 1;
        totals.sketch.add(seconds);
        let key = (name.clone(), Op(cmd.name), peer.server, port);
        if let Some(s) = self.db.series.get_mut(&key) {
            s.handle.observe(seconds);
            s.last_ns = now_ns;
            return;
        }
        if self.budget.used >= self.budget.max {
            metrics.http_series_over_budget.inc();
            return;
        }
        let port_label = port.to_string();
        let handle = match peer.server {
            Some(addr) => metrics.db_client_duration.with_label_values(&[
                REDIS,
                cmd.name,
                "",
                "",
                &addr.to_string(),
                &port_label,
                name,
            ]),
            None => metrics.db_server_duration.with_label_values(&[
                REDIS,
                cmd.name,
                "",
                "",
                name,
                &port_label,
            ]),
        };
        handle.observe(seconds);
        self.budget.used += 1;
        self.db.series.insert(
            key,
            Tracked {
                handle,
                last_ns: now_ns,
            },
        );
    }

    fn result(&mut self, peer: &Peer, cmd: Command, result: CacheResult) {
        let (name, _) = service_of(self.services, self.unknown, peer.origin, peer.port);
        if result == CacheResult::Error && peer.server.is_some() {
            self.tracer.last_call_failed(cmd.name);
        }
        let totals = self.db.totals_of(name, cmd.name);
        match result {
            CacheResult::Hit => totals.hits += 1,
            CacheResult::Miss => totals.misses += 1,
            CacheResult::Error => totals.errors += 1,
            CacheResult::Ok => {}
        }
        let metrics = self.metrics;
        let counter = self
            .db
            .cache
            .entry((name.clone(), Op(cmd.name), result))
            .or_insert_with(|| Tracked {
                handle: metrics.cache_operations.with_label_values(&[
                    name,
                    cmd.name,
                    result.as_str(),
                ]),
                last_ns: 0,
            });
        counter.handle.inc();
        counter.last_ns = self.now_ns;
    }

    fn unpaired(&mut self, peer: &Peer, reason: Unpaired) {
        let (name, _) = service_of(self.services, self.unknown, peer.origin, peer.port);
        self.metrics
            .db_unpaired
            .with_label_values(&[name, REDIS, reason.as_str()])
            .inc();
    }
}
