//! Accept queues: each monitored port's connections waiting for
//! accept() against its backlog and the attempts its listeners dropped
//! (sock_diag, the agent's network namespace), and the host's
//! (`/proc/net/netstat` TcpExt `ListenOverflows` and `ListenDrops`).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
    sync::Arc,
};

use prometheus::{Counter, CounterVec, GaugeVec, Opts, Registry};
use serde::Serialize;

use super::{
    super::metrics::{MetricsError, PORT, SERVICE},
    tcp::increment,
};
use crate::services::sock_diag::{AcceptQueue, accept_queues};

/// One port's accept queue, as /stats/system shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PortQueue {
    pub port: u16,
    pub queued: u64,
    pub limit: u64,
    /// Attempts dropped since the previous sample.
    pub dropped: u64,
}

pub struct ListenMetrics {
    queued: GaugeVec,
    limit: GaugeVec,
    pub(super) dropped: CounterVec,
    overflows: Counter,
    drops: Counter,
}

impl ListenMetrics {
    pub fn register(registry: &Registry) -> Result<Self, MetricsError> {
        let gauge = |name: &str, help: &str| -> Result<GaugeVec, MetricsError> {
            let g = GaugeVec::new(Opts::new(name, help), &[SERVICE, PORT])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<Counter, MetricsError> {
            let c = Counter::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(Self {
            queued: gauge(
                "apm_listen_queue_connections",
                "Connections waiting for accept() on the service's listening port (the agent's network namespace).",
            )?,
            limit: gauge(
                "apm_listen_queue_limit",
                "The most that port's accept queue holds (its listen backlog).",
            )?,
            dropped: {
                let c = CounterVec::new(
                    Opts::new(
                        "apm_listen_drops_total",
                        "Connection attempts the service's listening port dropped (its listeners' drops: accept queue full, among others).",
                    ),
                    &[SERVICE, PORT],
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            overflows: counter(
                "apm_host_tcp_listen_overflows_total",
                "Host-wide: SYNs and handshakes dropped because a listener's accept queue was full (TcpExt ListenOverflows; not counted per port by the kernel).",
            )?,
            drops: counter(
                "apm_host_tcp_listen_drops_total",
                "Host-wide: connection attempts a listener dropped for any reason, overflows included (TcpExt ListenDrops).",
            )?,
        })
    }
}

/// The previous sample's host counters and the series it set.
#[derive(Default)]
pub struct Listen {
    last: Option<(u64, u64)>,
    shown: BTreeSet<(Arc<str>, u16)>,
    /// Each port's listeners' drops at the previous sample.
    last_drops: HashMap<u16, u64>,
}

impl Listen {
    /// Samples the accept queues of `ports` (service → its monitored
    /// ports) and the host counters under `proc_root`.
    pub fn sample(
        &mut self,
        proc_root: &Path,
        ports: &BTreeMap<Arc<str>, BTreeSet<u16>>,
        m: &ListenMetrics,
    ) -> BTreeMap<Arc<str>, Vec<PortQueue>> {
        let queues: HashMap<u16, AcceptQueue> = accept_queues().unwrap_or_default();
        let mut out: BTreeMap<Arc<str>, Vec<PortQueue>> = BTreeMap::new();
        let mut shown = BTreeSet::new();
        for (service, ports) in ports {
            for &port in ports {
                let Some(q) = queues.get(&port) else {
                    continue;
                };
                let p = port.to_string();
                let labels = [&**service, &p];
                m.queued.with_label_values(&labels).set(q.queued as f64);
                m.limit.with_label_values(&labels).set(q.limit as f64);
                // The counter starts from what the listeners counted since
                // they opened, as a kernel counter does; the alert signal
                // (`dropped`) only from the agent's first look.
                let last = self.last_drops.insert(port, q.drops);
                let total = increment(last.unwrap_or(0), q.drops);
                m.dropped.with_label_values(&labels).inc_by(total as f64);
                let dropped = if last.is_some() { total } else { 0 };
                shown.insert((service.clone(), port));
                out.entry(service.clone()).or_default().push(PortQueue {
                    port,
                    queued: q.queued,
                    limit: q.limit,
                    dropped,
                });
            }
        }
        for (service, port) in self.shown.difference(&shown) {
            let p = port.to_string();
            let _ = m.queued.remove_label_values(&[&**service, &p]);
            let _ = m.limit.remove_label_values(&[&**service, &p]);
            let _ = m.dropped.remove_label_values(&[&**service, &p]);
        }
        self.last_drops
            .retain(|port, _| shown.iter().any(|(_, p)| p == port));
        self.shown = shown;
        let now = std::fs::read_to_string(proc_root.join("net/netstat"))
            .ok()
            .and_then(|t| listen_counters(&t));
        if let (Some(last), Some(now)) = (self.last, now) {
            m.overflows.inc_by(now.0.saturating_sub(last.0) as f64);
            m.drops.inc_by(now.1.saturating_sub(last.1) as f64);
        }
        self.last = now.or(self.last);
        out
    }
}

/// (ListenOverflows, ListenDrops) from /proc/net/netstat's TcpExt lines:
/// a line of names, then one of values.
fn listen_counters(netstat: &str) -> Option<(u64, u64)> {
    let mut tcp_ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next()?, tcp_ext.next()?);
    let pairs: Vec<(&str, &str)> = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .collect();
    let get =
        |name: &str| -> Option<u64> { pairs.iter().find(|(n, _)| *n == name)?.1.parse().ok() };
    Some((get("ListenOverflows")?, get("ListenDrops")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstat_gives_the_listen_counters() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPHPHits\n\
                    TcpExt: 0 7 9 100\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(listen_counters(text), Some((7, 9)));
        assert_eq!(listen_counters("IpExt: A\nIpExt: 1\n"), None);
    }
}
