//! The traces /traces/recent lists, whether sampled or not: per service,
//! the slowest few of each root operation and the latest failed ones of
//! the last five minutes, bounded.

use std::{collections::VecDeque, sync::Arc};

use rustc_hash::FxHashMap;
use serde_json::{Value as Json, json};

use super::{Trace, Value, hex};

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

#[derive(Clone)]
struct Entry {
    trace: Arc<Trace>,
    duration_ns: u64,
    end_ns: u64,
}

/// A root operation, cheaply: (method or operation, route).
pub type Operation = (Value, Value);

#[derive(Clone, Default)]
struct Service {
    /// The slowest few per root operation.
    slowest: FxHashMap<Operation, Vec<Entry>>,
    /// The latest failed ones, oldest first.
    failed: VecDeque<Entry>,
    kept: usize,
}

#[derive(Clone, Default)]
pub struct RecentTraces {
    by_service: FxHashMap<Arc<str>, Service>,
}

/// Where a trace goes in an operation's list of the slowest.
enum Place {
    /// A free place: fewer than the kept number are listed.
    Free,
    /// Instead of the fastest one listed (at that index).
    Instead(usize),
}

/// Where a trace lasting `duration_ns` goes in `list`, whose entries that
/// ended before `since` no longer count; `None`: it is not listed.
fn place(list: &[Entry], duration_ns: u64, since: u64) -> Option<Place> {
    let live = || list.iter().enumerate().filter(|(_, e)| e.end_ns >= since);
    if live().count() < SLOWEST_PER_OPERATION {
        return Some(Place::Free);
    }
    let (fastest, e) = live().min_by_key(|(_, e)| e.duration_ns)?;
    (e.duration_ns < duration_ns).then_some(Place::Instead(fastest))
}

/// The key of a root span's operation.
fn operation(root: &super::Span) -> Operation {
    let first = root
        .attribute("http.request.method")
        .or_else(|| root.attribute("db.operation.name"))
        .cloned()
        .unwrap_or(Value::Static(""));
    let route = root
        .attribute("http.route")
        .cloned()
        .unwrap_or(Value::Static(""));
    (first, route)
}

impl RecentTraces {
    /// Whether a trace without error of `service`'s `op` lasting
    /// `duration_ns` and ending at `now_ns` would be listed.
    pub fn would_list(&self, service: &str, op: &Operation, duration_ns: u64, now_ns: u64) -> bool {
        let since = now_ns.saturating_sub(WINDOW_NS);
        self.by_service
            .get(service)
            .and_then(|s| s.slowest.get(op))
            .is_none_or(|list| place(list, duration_ns, since).is_some())
    }

    /// Considers `trace` (its root ended by `now_ns`): O(1) unless it is
    /// listed; true when it is.
    pub fn add(&mut self, trace: &Arc<Trace>, now_ns: u64) -> bool {
        let root = trace.root();
        if !self.by_service.contains_key(&root.service) && self.by_service.len() >= MAX_SERVICES {
            return false;
        }
        let service = self.by_service.entry(root.service.clone()).or_default();
        let since = now_ns.saturating_sub(WINDOW_NS);
        let entry = Entry {
            trace: trace.clone(),
            duration_ns: root.duration_ns(),
            end_ns: root.end_ns,
        };
        if trace.error() {
            service.failed.push_back(entry);
            if service.failed.len() > FAILED_PER_SERVICE {
                service.failed.pop_front();
            }
            return true;
        }
        let list = service.slowest.entry(operation(root)).or_default();
        let before = list.len();
        list.retain(|e| e.end_ns >= since);
        service.kept -= before - list.len();
        match place(list, entry.duration_ns, since) {
            None => return false,
            Some(Place::Free) => {
                list.push(entry);
                service.kept += 1;
            }
            Some(Place::Instead(fastest)) => list[fastest] = entry,
        }
        if service.kept > MAX_PER_SERVICE {
            // The fastest listed trace of the service goes.
            let fastest = service
                .slowest
                .iter()
                .flat_map(|(op, list)| {
                    list.iter()
                        .enumerate()
                        .map(move |(i, e)| (e.duration_ns, op, i))
                })
                .min_by_key(|&(d, ..)| d)
                .map(|(_, op, i)| (op.clone(), i));
            if let Some((op, i)) = fastest
                && let Some(list) = service.slowest.get_mut(&op)
            {
                list.swap_remove(i);
                service.kept -= 1;
                if list.is_empty() {
                    service.slowest.remove(&op);
                }
            }
        }
        true
    }

    /// Forgets traces older than the window and services with none;
    /// whether any went.
    pub fn expire(&mut self, now_ns: u64) -> bool {
        let since = now_ns.saturating_sub(WINDOW_NS);
        let mut gone = false;
        self.by_service.retain(|_, s| {
            let failed_before = s.failed.len();
            s.failed.retain(|e| e.end_ns >= since);
            let mut kept = 0;
            s.slowest.retain(|_, list| {
                list.retain(|e| e.end_ns >= since);
                kept += list.len();
                !list.is_empty()
            });
            gone |= s.failed.len() < failed_before || kept < s.kept;
            s.kept = kept;
            kept > 0 || !s.failed.is_empty()
        });
        gone
    }

    /// A copy to publish (the traces themselves are shared).
    pub fn snapshot(&self) -> RecentTraces {
        self.clone()
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
        // (failed, entry), named.
        let mut entries: Vec<(bool, &Entry, String)> = self
            .by_service
            .iter()
            .filter(|(s, _)| service.is_none_or(|want| &***s == want))
            .flat_map(|(_, s)| {
                let failed = s.failed.iter().map(|e| (true, e));
                failed.chain(s.slowest.values().flatten().map(|e| (false, e)))
            })
            .map(|(failed, e)| (failed, e, e.trace.root().name()))
            .filter(|(.., name)| operation.is_none_or(|want| name == want))
            .collect();
        entries.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then(b.1.duration_ns.cmp(&a.1.duration_ns))
                .then(b.1.end_ns.cmp(&a.1.end_ns))
        });
        entries.truncate(limit);
        let traces: Vec<Json> = entries
            .iter()
            .map(|(_, e, name)| trace_json(&e.trace, name, unix_offset_ns))
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
