//! Accept queues: each monitored port's connections waiting for
//! accept() against its backlog and the attempts its listeners dropped
//! (sock_diag, in the agent's network namespace and, with CAP_SYS_ADMIN,
//! in each other namespace with monitored listeners), and the host's
//! (`/proc/net/netstat` TcpExt `ListenOverflows` and `ListenDrops`).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    os::{fd::OwnedFd, unix::fs::MetadataExt as _},
    path::Path,
    sync::Arc,
};

use tracing::warn;

use prometheus::{Counter, CounterVec, GaugeVec, Opts, Registry};
use serde::Serialize;

use super::{
    super::metrics::{MetricsError, PORT, SERVICE},
    tcp::increment,
};
use crate::services::sock_diag::{AcceptQueue, accept_queues, accept_queues_with, socket_in};

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

/// Network namespaces whose listeners are read each sample at most
/// (each needs a socket of its own, kept while it has monitored ports).
const MAX_NAMESPACES: usize = 1024;

/// One network namespace's monitored listeners: a process in it, and its
/// services' ports there.
#[derive(Debug, Default)]
pub struct Namespace {
    pub pid: u32,
    pub ports: BTreeMap<Arc<str>, BTreeSet<u16>>,
}

/// The previous sample's host counters and the series it set.
#[derive(Default)]
pub struct Listen {
    last: Option<(u64, u64)>,
    shown: BTreeSet<(Arc<str>, u16)>,
    /// Each (namespace, listening socket inode)'s drops when last read.
    last_drops: HashMap<(u64, u64), u64>,
    /// The agent's own namespace (its inode), read with the agent's
    /// socket; others each with a socket made in them.
    own: Option<u64>,
    sockets: HashMap<u64, OwnedFd>,
    /// Namespaces the agent could not join (no CAP_SYS_ADMIN): said once.
    refused: HashSet<u64>,
}

impl Listen {
    pub fn new() -> Self {
        Self {
            own: std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino()),
            ..Self::default()
        }
    }

    /// Samples the accept queues of the monitored ports of each network
    /// namespace in `namespaces` (by inode), and the host counters under
    /// `proc_root`. A port's queues in several namespaces add up.
    pub fn sample(
        &mut self,
        proc_root: &Path,
        namespaces: &BTreeMap<u64, Namespace>,
        m: &ListenMetrics,
    ) -> BTreeMap<Arc<str>, Vec<PortQueue>> {
        let mut sums: BTreeMap<(Arc<str>, u16), PortQueue> = BTreeMap::new();
        let mut drops = HashMap::new();
        let mut read = HashSet::new();
        for (&ns, wanted) in namespaces.iter().take(MAX_NAMESPACES) {
            let Some(queues) = self.queues_in(proc_root, ns, wanted.pid) else {
                continue;
            };
            read.insert(ns);
            for (service, ports) in &wanted.ports {
                for &port in ports {
                    let Some(q) = queues.get(&port) else {
                        continue;
                    };
                    // Per listening socket: the counter starts from what
                    // it counted since it opened, as a kernel counter
                    // does; the alert signal (`dropped`) only from the
                    // agent's first look at it.
                    let (mut total, mut since) = (0, 0);
                    for &(inode, now) in &q.listeners {
                        let last = self.last_drops.get(&(ns, inode)).copied();
                        drops.insert((ns, inode), now);
                        let inc = increment(last.unwrap_or(0), now);
                        total += inc;
                        since += if last.is_some() { inc } else { 0 };
                    }
                    m.dropped
                        .with_label_values(&[&**service, &port.to_string()])
                        .inc_by(total as f64);
                    let sum = sums.entry((service.clone(), port)).or_default();
                    sum.port = port;
                    sum.queued += q.queued;
                    sum.limit += q.limit;
                    sum.dropped += since;
                }
            }
        }
        // A namespace not read this time keeps its listeners' counts.
        self.last_drops
            .retain(|(ns, _), _| !read.contains(ns) && namespaces.contains_key(ns));
        self.last_drops.extend(drops);
        self.sockets.retain(|ns, _| namespaces.contains_key(ns));
        let mut out: BTreeMap<Arc<str>, Vec<PortQueue>> = BTreeMap::new();
        let mut shown = BTreeSet::new();
        for ((service, port), q) in sums {
            let p = port.to_string();
            let labels = [&*service, p.as_str()];
            m.queued.with_label_values(&labels).set(q.queued as f64);
            m.limit.with_label_values(&labels).set(q.limit as f64);
            out.entry(service.clone()).or_default().push(q);
            shown.insert((service, port));
        }
        for (service, port) in self.shown.difference(&shown) {
            let p = port.to_string();
            let _ = m.queued.remove_label_values(&[&**service, &p]);
            let _ = m.limit.remove_label_values(&[&**service, &p]);
            let _ = m.dropped.remove_label_values(&[&**service, &p]);
        }
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

    /// The accept queues of namespace `ns`, joined through `pid`'s.
    fn queues_in(
        &mut self,
        proc_root: &Path,
        ns: u64,
        pid: u32,
    ) -> Option<HashMap<u16, AcceptQueue>> {
        if ns == 0 || self.own.is_none_or(|own| own == ns) {
            return accept_queues().ok();
        }
        if self.refused.contains(&ns) {
            return None;
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = self.sockets.entry(ns) {
            match socket_in(&proc_root.join(format!("{pid}/ns/net")), ns) {
                Ok(sock) => {
                    slot.insert(sock);
                }
                // A process gone or moved: its namespace is tried again
                // through another next time.
                Err(e) if e.kind() != std::io::ErrorKind::PermissionDenied => return None,
                Err(e) => {
                    // One line for all: every namespace refuses alike.
                    if self.refused.is_empty() {
                        warn!(netns = ns, pid, error = %e, "cannot read the accept queues of other network namespaces (joining one needs CAP_SYS_ADMIN): only the agent's own are read");
                    }
                    if self.refused.len() < MAX_NAMESPACES {
                        self.refused.insert(ns);
                    }
                    return None;
                }
            }
        }
        accept_queues_with(self.sockets.get(&ns)?).ok()
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
