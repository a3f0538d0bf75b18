//! A bounded in-memory ring of recent log records, filled by a tracing
//! layer beside the JSON/text output, served by /logs/recent. No log file
//! is needed; when the ring is full the oldest record goes (counted).

use std::{
    collections::{BTreeMap, VecDeque},
    fmt::Debug,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{Layer, layer::Context};

/// Characters kept of one field value (a record stays small).
const MAX_VALUE: usize = 1024;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LogRecord {
    /// Seconds since the Unix epoch.
    pub timestamp: f64,
    pub level: &'static str,
    pub target: String,
    pub message: String,
    pub fields: BTreeMap<String, String>,
    #[serde(skip)]
    severity: Level,
}

pub struct LogRing {
    records: Mutex<VecDeque<LogRecord>>,
    capacity: usize,
    evicted: AtomicU64,
    /// How many of the evicted records a scrape has already counted.
    counted: AtomicU64,
}

impl LogRing {
    pub fn new(capacity: usize) -> Self {
        Self {
            records: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            capacity: capacity.max(1),
            evicted: AtomicU64::new(0),
            counted: AtomicU64::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records pushed out so far.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Evictions no earlier call has returned: concurrent scrapes add each
    /// eviction to the counter once.
    pub fn take_uncounted_evictions(&self) -> u64 {
        let now = self.evicted.load(Ordering::Relaxed);
        let before = self.counted.fetch_max(now, Ordering::Relaxed);
        now.saturating_sub(before)
    }

    /// The records; a panic elsewhere while holding them leaves a valid
    /// queue, so a poisoned lock is recovered, not treated as empty.
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<LogRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, record: LogRecord) {
        let mut records = self.lock();
        if records.len() >= self.capacity {
            records.pop_front();
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        records.push_back(record);
    }

    /// The newest `limit` records at least as severe as `min`, oldest first.
    pub fn recent(&self, limit: usize, min: Level) -> Vec<LogRecord> {
        let records = self.lock();
        let mut out: Vec<LogRecord> = records
            .iter()
            .rev()
            .filter(|r| r.severity <= min)
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }
}

/// Parses a `level` query value (error, warn, info, debug, trace).
pub fn parse_level(s: &str) -> Option<Level> {
    s.parse().ok()
}

/// The tracing layer that copies every event into a [`LogRing`].
pub struct RingLayer(pub std::sync::Arc<LogRing>);

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut visitor = Fields::default();
        event.record(&mut visitor);
        let meta = event.metadata();
        self.0.push(LogRecord {
            timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            level: level_name(*meta.level()),
            target: meta.target().to_owned(),
            message: visitor.message,
            fields: visitor.fields,
            severity: *meta.level(),
        });
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: BTreeMap<String, String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, mut value: String) {
        if value.len() > MAX_VALUE {
            let mut cut = MAX_VALUE;
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            value.truncate(cut);
        }
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.insert(field.name().to_owned(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[test]
    fn ring_keeps_the_newest_records_and_filters_by_level() {
        let ring = Arc::new(LogRing::new(100));
        let subscriber = tracing_subscriber::registry().with(RingLayer(ring.clone()));
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..10_000 {
                tracing::info!(i, "flood");
                if i % 1000 == 0 {
                    tracing::warn!(port = 80, "something off");
                }
            }
            tracing::error!(reason = "x", "lost data");
        });
        assert_eq!(ring.len(), 100, "the ring grew past its bound");
        assert_eq!(ring.evicted(), 10_000 + 10 + 1 - 100);
        let last = ring.recent(3, Level::TRACE);
        assert_eq!(last.len(), 3);
        assert_eq!(last[2].message, "lost data");
        assert_eq!(last[2].level, "ERROR");
        assert_eq!(last[1].fields["i"], "9999");
        let warn = ring.recent(50, Level::WARN);
        // Only the error survived among warn+ (the warns were pushed out).
        assert_eq!(warn.len(), 1);
        assert_eq!(warn[0].fields["reason"], "x");
        assert_eq!(parse_level("warn"), Some(Level::WARN));
        assert_eq!(parse_level("loud"), None);
        // Two scrapes: the evictions are counted by one of them only.
        assert_eq!(ring.take_uncounted_evictions(), 10_000 + 10 + 1 - 100);
        assert_eq!(ring.take_uncounted_evictions(), 0);
    }
}
