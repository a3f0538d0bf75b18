//! TCP health per service, from the kernel's `tcp:` tracepoints: segments
//! retransmitted and resets sent and received on its server ports, the
//! same for its outbound connections per destination, and the connections
//! it opened that never connected.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use apm_common::{PoolCounters, PortCounters};
use prometheus::{IntCounterVec, Opts, Registry, core::Collector};
use serde::Serialize;

use super::super::metrics::{MetricsError, PORT, SERVICE};

const ADDRESS: &str = "server_address";
const DIRECTION: &str = "direction";

/// Destinations (service, address, port) with series of their own; the
/// events of further ones count under [`OTHER`].
const MAX_DESTINATIONS: usize = 1024;
/// The address and port the events of destinations past the bound count
/// under: kept, but not per destination.
pub const OTHER: &str = "other";

pub struct TcpHealthMetrics {
    retransmits: IntCounterVec,
    resets: IntCounterVec,
    out_retransmits: IntCounterVec,
    out_resets: IntCounterVec,
    connect_failures: IntCounterVec,
    /// Destinations with series of their own, and when each last had a
    /// pool.
    destinations: Mutex<HashMap<(String, String, String), Instant>>,
}

impl TcpHealthMetrics {
    pub fn register(registry: &Registry) -> Result<Self, MetricsError> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, MetricsError>(c)
        };
        Ok(Self {
            retransmits: counter(
                "apm_tcp_retransmitted_segments_total",
                "Segments the service's connections on its server port retransmitted, SYN-ACKs included (tcp:tcp_retransmit_skb, tcp:tcp_retransmit_synack).",
                &[SERVICE, PORT],
            )?,
            resets: counter(
                "apm_tcp_resets_total",
                "TCP resets the service's server port sent (an abortive close, a segment no connection wanted) or received from its clients.",
                &[SERVICE, PORT, DIRECTION],
            )?,
            out_retransmits: counter(
                "apm_outbound_retransmitted_segments_total",
                "Segments the service's outbound connections to the destination retransmitted, SYNs included.",
                &[SERVICE, ADDRESS, PORT],
            )?,
            out_resets: counter(
                "apm_outbound_resets_total",
                "TCP resets the service's outbound connections to the destination sent or received (a refused connect among them).",
                &[SERVICE, ADDRESS, PORT, DIRECTION],
            )?,
            connect_failures: counter(
                "apm_outbound_connect_failures_total",
                "Outbound connections of the service that closed before they connected (SYN_SENT to CLOSE: refused, timed out or abandoned).",
                &[SERVICE, ADDRESS, PORT],
            )?,
            destinations: Mutex::default(),
        })
    }

    /// Adds what the server port's counters gained from `last` to `now`.
    pub fn served(&self, service: &str, port: &str, last: &PortCounters, now: &PortCounters) {
        self.retransmits
            .with_label_values(&[service, port])
            .inc_by(increment(last.retransmits, now.retransmits));
        add_resets(
            &self.resets,
            &[service, port],
            (last.resets_sent, last.resets_received),
            (now.resets_sent, now.resets_received),
        );
    }

    /// Adds what an outbound pool's counters gained from `last` to `now`.
    pub fn outbound(
        &self,
        service: &str,
        (address, port): (&str, &str),
        last: &PoolCounters,
        now: &PoolCounters,
    ) {
        let (address, port) = self.destination(service, address, port);
        let labels = [service, address, port];
        // Every pool has these two, as it has its active gauge.
        self.out_retransmits
            .with_label_values(&labels)
            .inc_by(increment(last.retransmits, now.retransmits));
        self.connect_failures
            .with_label_values(&labels)
            .inc_by(increment(last.connect_failures, now.connect_failures));
        add_resets(
            &self.out_resets,
            &labels,
            (last.resets_sent, last.resets_received),
            (now.resets_sent, now.resets_received),
        );
    }

    /// The destination's labels: its own while fewer than
    /// [`MAX_DESTINATIONS`] have series, else [`OTHER`].
    fn destination<'a>(
        &self,
        service: &str,
        address: &'a str,
        port: &'a str,
    ) -> (&'a str, &'a str) {
        let mut known = self
            .destinations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (service.to_owned(), address.to_owned(), port.to_owned());
        let now = Instant::now();
        if let Some(seen) = known.get_mut(&key) {
            *seen = now;
            return (address, port);
        }
        if known.len() < MAX_DESTINATIONS {
            known.insert(key, now);
            return (address, port);
        }
        (OTHER, OTHER)
    }

    /// Forgets the destinations without a pool for `ttl` and their
    /// series, so that new ones get series of their own again.
    pub fn expire(&self, ttl: Duration) {
        let mut known = self
            .destinations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        known.retain(|(service, address, port), seen| {
            if seen.elapsed() <= ttl {
                return true;
            }
            let labels = [service.as_str(), address, port];
            let _ = self.out_retransmits.remove_label_values(&labels);
            let _ = self.connect_failures.remove_label_values(&labels);
            for direction in ["sent", "received"] {
                let _ = self
                    .out_resets
                    .remove_label_values(&[service, address, port, direction]);
            }
            false
        });
    }

    /// Moves a server port's counts from service `from` to `to` (a port
    /// counted before its owner was known).
    pub fn adopt(&self, port: &str, from: &str, to: &str) {
        // A lookup makes the series it looks for: only those that exist
        // move, and resets keep having no series before the first.
        let moves = [
            (&self.retransmits, None),
            (&self.resets, Some("sent")),
            (&self.resets, Some("received")),
        ];
        for (family, direction) in moves {
            let exists = series(family, Some(from)).iter().any(|(l, _)| {
                l.get(PORT).is_some_and(|p| p == port)
                    && l.get(DIRECTION).map(String::as_str) == direction
            });
            if !exists {
                continue;
            }
            let old: Vec<&str> = [from, port].into_iter().chain(direction).collect();
            let new: Vec<&str> = [to, port].into_iter().chain(direction).collect();
            if let Ok(counter) = family.get_metric_with_label_values(&old) {
                let carried = counter.get();
                let _ = family.remove_label_values(&old);
                family.with_label_values(&new).inc_by(carried);
            }
        }
    }

    /// Drops a server port's series (the port is forgotten).
    pub fn forget_port(&self, service: &str, port: &str) {
        let _ = self.retransmits.remove_label_values(&[service, port]);
        for direction in ["sent", "received"] {
            let _ = self.resets.remove_label_values(&[service, port, direction]);
        }
    }
}

/// One server port's or destination's TCP health, as the dashboard shows
/// it: `port 8080` or `10.0.0.7:5432`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NetworkRow {
    pub target: String,
    pub retransmitted: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    /// Outbound only.
    pub connect_failures: Option<u64>,
    /// Server ports only.
    pub listen_drops: Option<u64>,
}

/// Rows by service, then by target.
pub type Rows = BTreeMap<String, BTreeMap<String, NetworkRow>>;

impl TcpHealthMetrics {
    /// The server ports and destinations of `service` (every service's
    /// if None), by service and target.
    pub fn rows(&self, service: Option<&str>) -> Rows {
        let mut rows = Rows::new();
        for family in [&self.retransmits, &self.out_retransmits] {
            for (l, v) in series(family, service) {
                row(&mut rows, &l).retransmitted += v as u64;
            }
        }
        for family in [&self.resets, &self.out_resets] {
            for (l, v) in series(family, service) {
                let sent = l.get(DIRECTION).is_some_and(|d| d == "sent");
                let r = row(&mut rows, &l);
                *if sent {
                    &mut r.resets_sent
                } else {
                    &mut r.resets_received
                } += v as u64;
            }
        }
        for (l, v) in series(&self.connect_failures, service) {
            *row(&mut rows, &l).connect_failures.get_or_insert(0) += v as u64;
        }
        rows
    }
}

/// Adds the resets gained from `last` to `now` (sent, received) to
/// `family` under `labels` and their direction. No series until the
/// first: most ports and destinations never see one.
fn add_resets(family: &IntCounterVec, labels: &[&str], last: (u64, u64), now: (u64, u64)) {
    for (direction, last, now) in [("sent", last.0, now.0), ("received", last.1, now.1)] {
        let inc = increment(last, now);
        if inc > 0 {
            let mut all = labels.to_vec();
            all.push(direction);
            family.with_label_values(&all).inc_by(inc);
        }
    }
}

/// The row of the series labelled `l` (a server port's or a
/// destination's) in `rows`, made if new.
pub fn row<'a>(rows: &'a mut Rows, l: &BTreeMap<String, String>) -> &'a mut NetworkRow {
    let port = l.get(PORT).map_or("", String::as_str);
    let target = match l.get(ADDRESS) {
        Some(a) => format!("{a}:{port}"),
        None => format!("port {port}"),
    };
    rows.entry(l.get(SERVICE).cloned().unwrap_or_default())
        .or_default()
        .entry(target.clone())
        .or_insert_with(|| NetworkRow {
            target,
            ..Default::default()
        })
}

/// Each series of `family` (whose `service_name` is `service`, if
/// given): its labels and value.
pub fn series(
    family: &impl Collector,
    service: Option<&str>,
) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for f in family.collect() {
        let counter = f.get_field_type() == prometheus::proto::MetricType::COUNTER;
        for m in f.get_metric() {
            let labels: BTreeMap<String, String> = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_owned(), l.value().to_owned()))
                .collect();
            if service.is_some_and(|s| labels.get(SERVICE).is_none_or(|l| l != s)) {
                continue;
            }
            let value = if counter {
                m.get_counter().get_value()
            } else {
                m.get_gauge().get_value()
            };
            out.push((labels, value));
        }
    }
    out
}

/// The increase from `last` to `now` of a cumulative kernel counter; a
/// value that went down was reset (its map entry recreated), so all of
/// `now` is new.
pub fn increment(last: u64, now: u64) -> u64 {
    if now >= last { now - last } else { now }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increments_survive_resets() {
        assert_eq!(increment(5, 8), 3);
        assert_eq!(increment(5, 5), 0);
        assert_eq!(increment(5, 2), 2);
    }

    #[test]
    fn destinations_past_the_bound_count_under_other() {
        let m = TcpHealthMetrics::register(&Registry::new()).expect("register");
        let failed = PoolCounters {
            connect_failures: 1,
            ..Default::default()
        };
        let none = PoolCounters::default();
        for port in 0..=MAX_DESTINATIONS {
            m.outbound("scanner", ("10.0.0.9", &port.to_string()), &none, &failed);
        }
        m.outbound("scanner", ("10.0.0.9", "7"), &none, &failed);
        let other = m
            .connect_failures
            .with_label_values(&["scanner", OTHER, OTHER])
            .get();
        let seven = m
            .connect_failures
            .with_label_values(&["scanner", "10.0.0.9", "7"])
            .get();
        assert_eq!((other, seven), (1, 2));
        // Once they had no pool for the TTL, new destinations are named.
        m.expire(Duration::ZERO);
        m.outbound("scanner", ("10.0.0.9", "8"), &none, &failed);
        let eight = m
            .connect_failures
            .with_label_values(&["scanner", "10.0.0.9", "8"])
            .get();
        assert_eq!(eight, 1);
        assert!(m.rows(Some("scanner"))["scanner"].len() <= 2);
    }

    #[test]
    fn a_ports_counts_move_to_its_owner_once_known() {
        let m = TcpHealthMetrics::register(&Registry::new()).expect("register");
        let now = PortCounters {
            retransmits: 4,
            resets_received: 1,
            ..Default::default()
        };
        m.served("unknown", "80", &PortCounters::default(), &now);
        m.adopt("80", "unknown", "web");
        assert!(!m.rows(Some("unknown")).contains_key("unknown"));
        let row = &m.rows(Some("web"))["web"]["port 80"];
        assert_eq!(
            (row.retransmitted, row.resets_received, row.resets_sent),
            (4, 1, 0)
        );
        // No series for a direction that saw nothing.
        assert_eq!(series(&m.resets, Some("web")).len(), 1);
    }

    #[test]
    fn a_services_rows_join_its_families_by_target() {
        let m = TcpHealthMetrics::register(&Registry::new()).expect("register");
        let now = PortCounters {
            retransmits: 5,
            resets_sent: 2,
            ..Default::default()
        };
        m.served("web", "80", &PortCounters::default(), &now);
        m.served("other", "81", &PortCounters::default(), &now);
        let pool = PoolCounters {
            connect_failures: 3,
            resets_received: 3,
            ..Default::default()
        };
        m.outbound("web", ("10.0.0.1", "5432"), &PoolCounters::default(), &pool);
        let all = m.rows(None);
        assert_eq!(all.len(), 2, "{all:?}");
        let rows = &m.rows(Some("web"))["web"];
        assert_eq!(rows.len(), 2, "{rows:?}");
        let port = &rows["port 80"];
        assert_eq!(
            (port.retransmitted, port.resets_sent, port.connect_failures),
            (5, 2, None)
        );
        let db = &rows["10.0.0.1:5432"];
        assert_eq!((db.resets_received, db.connect_failures), (3, Some(3)));
    }

    #[test]
    fn only_what_happened_gets_a_series() {
        let registry = Registry::new();
        let m = TcpHealthMetrics::register(&registry).expect("register");
        let last = PortCounters::default();
        let now = PortCounters {
            retransmits: 3,
            resets_received: 2,
            ..Default::default()
        };
        m.served("web", "80", &last, &now);
        m.served("web", "80", &now, &now);
        let pool = PoolCounters {
            connect_failures: 4,
            resets_received: 4,
            ..Default::default()
        };
        m.outbound("web", ("10.0.0.1", "5432"), &PoolCounters::default(), &pool);
        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut text)
            .expect("encode");
        assert!(
            text.contains(
                "apm_tcp_retransmitted_segments_total{server_port=\"80\",service_name=\"web\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains("direction=\"received\",server_port=\"80\",service_name=\"web\"} 2"),
            "{text}"
        );
        assert!(!text.contains("direction=\"sent\""), "{text}");
        assert!(text.contains("apm_outbound_connect_failures_total{server_address=\"10.0.0.1\",server_port=\"5432\",service_name=\"web\"} 4"), "{text}");
        // Every pool has its retransmissions, zero or not.
        assert!(text.contains("apm_outbound_retransmitted_segments_total{server_address=\"10.0.0.1\",server_port=\"5432\",service_name=\"web\"} 0"), "{text}");
    }
}
