//! The traces /traces/recent lists, whether sampled or not: per service,
//! the slowest few of each root operation and the latest failed ones of
//! the last five minutes, bounded.

use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde_json::{Value as Json, json};

use super::{Trace, hex};

/// How long a trace stays listed.
pub const WINDOW_NS: u64 = 300_000_000_000;
/// The slowest traces kept per (service, root operation).
const SLOWEST_PER_OPERATION: usize = 3;
/// The latest failed traces kept per service.
const FAILED_PER_SERVICE: usize = 10;
/// Traces kept per service at most (the fastest go first).
const MAX_PER_SERVICE: usize = 200;
/// Services listed at most (the directory bounds them; this is a backstop).
const MAX_SERVICES: usize = 1024;

struct Entry {
    trace: Arc<Trace>,
    operation: String,
    error: bool,
    duration_ns: u64,
    end_ns: u64,
}

#[derive(Default)]
pub struct RecentTraces {
    by_service: FxHashMap<Arc<str>, Vec<Entry>>,
}

impl RecentTraces {
    /// Considers `trace` (its root ended by `now_ns`); true when listed.
    pub fn add(&mut self, trace: &Arc<Trace>, now_ns: u64) -> bool {
        let root = trace.root();
        if !self.by_service.contains_key(&root.service) && self.by_service.len() >= MAX_SERVICES {
            return false;
        }
        let list = self.by_service.entry(root.service.clone()).or_default();
        let since = now_ns.saturating_sub(WINDOW_NS);
        list.retain(|e| e.end_ns >= since);
        let entry = Entry {
            trace: trace.clone(),
            operation: root.name(),
            error: trace.error(),
            duration_ns: root.duration_ns(),
            end_ns: root.end_ns,
        };
        if entry.error {
            list.push(entry);
            let failed = list.iter().filter(|e| e.error).count();
            if failed > FAILED_PER_SERVICE
                && let Some(oldest) = list
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.error)
                    .min_by_key(|(_, e)| e.end_ns)
                    .map(|(i, _)| i)
            {
                list.swap_remove(oldest);
            }
        } else {
            let same: Vec<usize> = (0..list.len())
                .filter(|&i| !list[i].error && list[i].operation == entry.operation)
                .collect();
            if same.len() < SLOWEST_PER_OPERATION {
                list.push(entry);
            } else {
                let Some(fastest) = same.into_iter().min_by_key(|&i| list[i].duration_ns) else {
                    return false;
                };
                if list[fastest].duration_ns >= entry.duration_ns {
                    return false;
                }
                list[fastest] = entry;
            }
        }
        if list.len() > MAX_PER_SERVICE
            && let Some(fastest) = (0..list.len())
                .filter(|&i| !list[i].error)
                .min_by_key(|&i| list[i].duration_ns)
        {
            list.swap_remove(fastest);
        }
        true
    }

    /// Forgets traces older than the window and services with none.
    pub fn expire(&mut self, now_ns: u64) {
        let since = now_ns.saturating_sub(WINDOW_NS);
        self.by_service.retain(|_, list| {
            list.retain(|e| e.end_ns >= since);
            !list.is_empty()
        });
    }

    /// A copy to publish (the traces themselves are shared).
    pub fn snapshot(&self) -> RecentTraces {
        RecentTraces {
            by_service: self
                .by_service
                .iter()
                .map(|(s, list)| {
                    let copy = list
                        .iter()
                        .map(|e| Entry {
                            trace: e.trace.clone(),
                            operation: e.operation.clone(),
                            error: e.error,
                            duration_ns: e.duration_ns,
                            end_ns: e.end_ns,
                        })
                        .collect();
                    (s.clone(), copy)
                })
                .collect(),
        }
    }

    /// The /traces/recent document: traces of `service` (all when
    /// `None`) whose root operation is `operation` (or any), failed ones
    /// first, then the slowest; at most `limit`. `unix_offset_ns` turns the
    /// kernel clock into Unix time.
    pub fn to_json(
        &self,
        service: Option<&str>,
        operation: Option<&str>,
        limit: usize,
        unix_offset_ns: i128,
    ) -> Json {
        let mut entries: Vec<&Entry> = self
            .by_service
            .iter()
            .filter(|(s, _)| service.is_none_or(|want| &***s == want))
            .flat_map(|(_, list)| list.iter())
            .filter(|e| operation.is_none_or(|want| e.operation == want))
            .collect();
        entries.sort_by(|a, b| {
            b.error
                .cmp(&a.error)
                .then(b.duration_ns.cmp(&a.duration_ns))
                .then(b.end_ns.cmp(&a.end_ns))
        });
        entries.truncate(limit);
        let traces: Vec<Json> = entries
            .iter()
            .map(|e| trace_json(&e.trace, &e.operation, unix_offset_ns))
            .collect();
        json!({ "window_seconds": WINDOW_NS / 1_000_000_000, "traces": traces })
    }
}

/// Unix nanoseconds of kernel-clock time `ns`.
pub fn unix_ns(ns: u64, offset: i128) -> u64 {
    u64::try_from(i128::from(ns) + offset).unwrap_or(0)
}

fn trace_json(trace: &Trace, operation: &str, offset: i128) -> Json {
    let root = trace.root();
    let spans: Vec<Json> = trace
        .spans
        .iter()
        .map(|p| {
            let s = &p.span;
            let attributes: serde_json::Map<String, Json> = s
                .attributes
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        serde_json::to_value(v).unwrap_or(Json::Null),
                    )
                })
                .collect();
            json!({
                "span_id": hex(&s.id.to_be_bytes()),
                "parent_span_id": p.parent.map(|id| hex(&id.to_be_bytes())).unwrap_or_default(),
                "name": s.name(),
                "kind": s.kind,
                "service": &*s.service,
                "start_unix_nano": unix_ns(s.start_ns, offset),
                "end_unix_nano": unix_ns(s.end_ns, offset),
                "duration_seconds": s.duration_ns() as f64 / 1e9,
                "error": s.error,
                "join": p.join.as_str(),
                "attributes": attributes,
            })
        })
        .collect();
    json!({
        "trace_id": hex(&trace.trace_id),
        "service": &*root.service,
        "name": operation,
        "start_unix_nano": unix_ns(root.start_ns, offset),
        "duration_seconds": root.duration_ns() as f64 / 1e9,
        "error": trace.error(),
        "spans": spans,
    })
}
