//! The SQL pairings' sink: statement durations (a monitored client's, or a
//! monitored database server's) per operation, table and outcome, and
//! per-statement totals for /stats/requests. Labels stay bounded: a
//! service's tables past its first [`MAX_COLLECTIONS`] are `_OTHER`, the
//! SQLSTATE is one of PostgreSQL's few hundred (MySQL's error numbers a
//! few thousand), and a statement's text is never a label. A service keeps
//! at most [`MAX_STATEMENTS`] statements per database; later ones count
//! under one `(other statements)` entry. Series count against the same
//! `--max-series` budget as HTTP's and expire with them.

use std::{net::IpAddr, sync::Arc};

use prometheus::Histogram;
use rustc_hash::{FxHashMap, FxHashSet};
use sketches_ddsketch::{Config as SketchConfig, DDSketch};

use super::recorder::{Recorder, SeriesBudget, service_of};
use crate::{
    protocols::sql::Statement,
    streams::{
        pairing::Unpaired,
        resp::Peer,
        sql::{Outcome, StatementSink, System},
    },
    telemetry::{metrics::Metrics, traces::make, windows::Windows},
};

/// Tables per service with their own `db_collection_name`.
pub const MAX_COLLECTIONS: usize = 100;
/// Statements per service with their own totals.
pub const MAX_STATEMENTS: usize = 500;
/// Statements listed per service at most (busiest first).
pub const MAX_STATEMENTS_SHOWN: usize = 50;
/// The label of a table past the cap, and the text of statements past it.
const OTHER_TABLE: &str = "_OTHER";
const OTHER_STATEMENTS: &str = "(other statements)";

/// (service, database, operation, table, error code, server address for
/// a client, server port).
type SeriesKey = (
    Arc<str>,
    System,
    &'static str,
    Arc<str>,
    [u8; 5],
    Option<IpAddr>,
    u16,
);

struct Tracked {
    handle: Histogram,
    last_ns: u64,
}

/// One statement of one service, both sides together.
struct Totals {
    operation: &'static str,
    collection: Arc<str>,
    count: u64,
    errors: u64,
    sketch: DDSketch,
    last_ns: u64,
}

impl Totals {
    fn new(operation: &'static str, collection: Arc<str>) -> Self {
        Self {
            operation,
            collection,
            count: 0,
            errors: 0,
            // 1% relative accuracy, like the routes'.
            sketch: DDSketch::new(SketchConfig::new(0.01, 2048, 1e-9)),
            last_ns: 0,
        }
    }
}

/// A statement's totals as /stats/requests shows them.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StatementSummary {
    pub db_system_name: &'static str,
    /// The normalised text: literals are placeholders.
    pub statement: String,
    pub operation: &'static str,
    pub collection: String,
    pub count: u64,
    pub errors: u64,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
}

#[derive(Default)]
pub struct SqlStats {
    series: FxHashMap<SeriesKey, Tracked>,
    collections: FxHashMap<Arc<str>, FxHashSet<Arc<str>>>,
    /// Per (service, database), per normalised text.
    statements: FxHashMap<(Arc<str>, System), FxHashMap<Arc<str>, Totals>>,
    /// The label of a statement with no table, shared.
    no_table: Arc<str>,
}

/// The SQLSTATE label of an outcome: empty for success (or not known).
fn status(outcome: Outcome) -> [u8; 5] {
    match outcome {
        Outcome::Error(Some(code)) => code,
        // An error whose code the capture did not show.
        Outcome::Error(None) => *b"?????",
        Outcome::Ok | Outcome::Unknown => [0; 5],
    }
}

/// A SQLSTATE, or a MySQL error number (NUL-padded): its text.
fn status_label(code: &[u8; 5]) -> &str {
    let len = code.iter().position(|&b| b == 0).unwrap_or(code.len());
    std::str::from_utf8(&code[..len]).unwrap_or("")
}

impl SqlStats {
    /// The table's label for `service`: its own while under the cap.
    fn collection(&mut self, service: &Arc<str>, table: Option<&str>) -> Arc<str> {
        let Some(table) = table else {
            return self.no_table.clone();
        };
        let known = self.collections.entry(service.clone()).or_default();
        if let Some(t) = known.get(table) {
            return t.clone();
        }
        if known.len() >= MAX_COLLECTIONS {
            return Arc::from(OTHER_TABLE);
        }
        let t: Arc<str> = Arc::from(table);
        known.insert(t.clone());
        t
    }

    /// The totals of `stmt` of `system` for `service` (or of the
    /// statements past the cap), and the text they are kept under.
    fn totals(
        &mut self,
        service: &Arc<str>,
        system: System,
        stmt: &Statement,
        collection: &Arc<str>,
    ) -> (Arc<str>, &mut Totals) {
        let per = self
            .statements
            .entry((service.clone(), system))
            .or_default();
        let own = per.contains_key(stmt.text.as_str()) || per.len() < MAX_STATEMENTS;
        let text = if own {
            stmt.text.as_str()
        } else {
            OTHER_STATEMENTS
        };
        let key = per
            .get_key_value(text)
            .map_or_else(|| Arc::from(text), |(k, _)| k.clone());
        let totals = per.entry(key.clone()).or_insert_with(|| {
            if own {
                Totals::new(stmt.operation, collection.clone())
            } else {
                Totals::new("", Arc::from(""))
            }
        });
        (key, totals)
    }

    /// Each service's statements, busiest first.
    pub fn summaries(&self) -> std::collections::HashMap<String, Vec<StatementSummary>> {
        let q = |s: &DDSketch, q| s.quantile(q).ok().flatten().unwrap_or(0.0);
        let mut out: std::collections::HashMap<String, Vec<StatementSummary>> =
            std::collections::HashMap::new();
        for ((service, system), statements) in &self.statements {
            out.entry(service.to_string())
                .or_default()
                .extend(statements.iter().map(|(text, t)| StatementSummary {
                    db_system_name: system.label(),
                    statement: text.to_string(),
                    operation: t.operation,
                    collection: t.collection.to_string(),
                    count: t.count,
                    errors: t.errors,
                    p50_seconds: q(&t.sketch, 0.5),
                    p99_seconds: q(&t.sketch, 0.99),
                }));
        }
        for list in out.values_mut() {
            list.sort_by(|a, b| b.count.cmp(&a.count).then(a.statement.cmp(&b.statement)));
            list.truncate(MAX_STATEMENTS_SHOWN);
        }
        out
    }

    /// Removes series and statements unused since `cutoff` (kernel
    /// clock); returns how many duration series went.
    pub(super) fn expire(
        &mut self,
        cutoff: u64,
        budget: &mut SeriesBudget,
        windows: &mut Windows,
        metrics: &Metrics,
    ) -> usize {
        let before = self.series.len();
        self.series
            .retain(|(service, system, op, table, code, server, port), s| {
                let keep = s.last_ns >= cutoff;
                if !keep {
                    let (port, code) = (port.to_string(), status_label(code));
                    let system = system.label();
                    let _ = match server {
                        Some(addr) => metrics.db_client_duration.remove_label_values(&[
                            system,
                            op,
                            table,
                            code,
                            &addr.to_string(),
                            &port,
                            service,
                        ]),
                        None => metrics
                            .db_server_duration
                            .remove_label_values(&[system, op, table, code, service, &port]),
                    };
                }
                keep
            });
        let removed = before - self.series.len();
        budget.used = budget.used.saturating_sub(removed);
        for ((service, _), per) in &mut self.statements {
            per.retain(|text, t| {
                let keep = t.last_ns >= cutoff;
                if !keep {
                    windows.forget_route(service, text);
                }
                keep
            });
        }
        self.statements.retain(|_, per| !per.is_empty());
        let live: FxHashSet<&Arc<str>> = self.statements.keys().map(|(s, _)| s).collect();
        self.collections.retain(|s, _| live.contains(s));
        removed
    }
}

impl StatementSink for Recorder<'_> {
    fn statement(
        &mut self,
        peer: &Peer,
        system: System,
        stmt: &Arc<Statement>,
        outcome: Outcome,
        (start_ns, end_ns): (u64, u64),
    ) {
        let (name, port) = service_of(self.services, self.unknown, peer.origin, peer.port);
        let (metrics, now_ns) = (self.metrics, self.now_ns);
        let duration_ns = end_ns.saturating_sub(start_ns);
        if peer.server.is_some() {
            let at = (end_ns.saturating_sub(duration_ns), end_ns);
            let thread = self.thread;
            self.trace_call(name, || {
                make::sql(peer, system, stmt, outcome, name.clone(), at, thread)
            });
        }
        let seconds = duration_ns as f64 / 1e9;
        let db = system.label();
        if !self.sql.statements.contains_key(&(name.clone(), system)) {
            // A new service: export every unpaired reason from zero.
            for reason in Unpaired::ALL {
                metrics
                    .db_unpaired
                    .with_label_values(&[name, db, reason.as_str()])
                    .inc_by(0);
            }
            metrics
                .db_statement_overflow
                .with_label_values(&[name, db])
                .inc_by(0);
        }
        let collection = self.sql.collection(name, stmt.collection.as_deref());
        let failed = matches!(outcome, Outcome::Error(_));
        let (text, totals) = self.sql.totals(name, system, stmt, &collection);
        if &*text == OTHER_STATEMENTS {
            metrics
                .db_statement_overflow
                .with_label_values(&[name, db])
                .inc();
        }
        totals.count += 1;
        totals.errors += u64::from(failed);
        totals.sketch.add(seconds);
        totals.last_ns = now_ns;
        let http_like = if failed { 500 } else { 200 };
        self.statement_windows
            .record(now_ns / 1_000_000_000, name, &text, http_like, seconds);
        let code = status(outcome);
        let key = (
            name.clone(),
            system,
            stmt.operation,
            collection,
            code,
            peer.server,
            port,
        );
        if let Some(s) = self.sql.series.get_mut(&key) {
            s.handle.observe(seconds);
            s.last_ns = now_ns;
            return;
        }
        if self.budget.used >= self.budget.max {
            metrics.http_series_over_budget.inc();
            return;
        }
        let (port_label, code_label) = (port.to_string(), status_label(&code));
        let handle = match peer.server {
            Some(addr) => metrics.db_client_duration.with_label_values(&[
                db,
                key.2,
                &key.3,
                code_label,
                &addr.to_string(),
                &port_label,
                name,
            ]),
            None => metrics.db_server_duration.with_label_values(&[
                db,
                key.2,
                &key.3,
                code_label,
                name,
                &port_label,
            ]),
        };
        handle.observe(seconds);
        self.budget.used += 1;
        self.sql.series.insert(
            key,
            Tracked {
                handle,
                last_ns: now_ns,
            },
        );
    }

    fn calling_thread(&mut self, tid: u32) {
        self.thread = tid;
    }

    fn statement_unpaired(&mut self, peer: &Peer, system: System, reason: Unpaired) {
        let (name, _) = service_of(self.services, self.unknown, peer.origin, peer.port);
        self.metrics
            .db_unpaired
            .with_label_values(&[name, system.label(), reason.as_str()])
            .inc();
    }
}
