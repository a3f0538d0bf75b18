//! The life of a monitored port: counted from when it is selected, named
//! when its listener is found, and forgotten (kernel map entries, capture
//! selection and series) once it has neither listened nor had a connection
//! for --series-ttl, so a host whose services come and go on new ports
//! does not accumulate them.

use std::time::Instant;

use tracing::{info, warn};

use super::Agent;
use crate::{capture::Capture, services::directory::ownerless_name};

impl Agent {
    pub(super) fn monitor_port(&mut self, port: u16, name: Option<String>) {
        let chunks = self.capture_depth(port, name.as_deref());
        if let Some(name) = name {
            self.nameless.remove(&port);
            let previous = self.port_names.insert(port, name.clone());
            match previous {
                None => {
                    info!(port, service = %name, "monitoring port");
                    self.newly_named.push((port, name));
                }
                Some(old) if old != name => {
                    info!(port, service = %name, previous = %old, "port changed owner");
                    // The gauge follows the port; counters keep their history.
                    let _ = self
                        .metrics
                        .conns_active
                        .remove_label_values(&[old.as_str(), &port.to_string()]);
                }
                Some(_) => {}
            }
        } else if !self.port_names.contains_key(&port) {
            self.nameless.insert(port);
        }
        let Some(kernel) = self.kernel.as_mut() else {
            return;
        };
        if self.refused_ports.contains(&port) {
            return;
        }
        let captured = match kernel.capture() {
            Capture::Packets => kernel.capture_port(port, chunks),
            Capture::Syscalls => Ok(()),
        };
        if let Err(e) = kernel.add_port(port).and(captured) {
            self.refused_ports.insert(port);
            self.metrics
                .agent_drops
                .with_label_values(&["ports_map_full"])
                .inc();
            warn!(port, error = %e, "cannot count this port");
        }
    }

    /// Records per segment for `port`: Redis, PostgreSQL and MySQL servers get
    /// the deepest capture (pipelined commands and batches, and long
    /// statements, run past one record), HTTP one.
    fn capture_depth(&self, port: u16, name: Option<&str>) -> u32 {
        const DEEP: [&str; 7] = [
            "redis",
            "valkey",
            "keydb",
            "postgres",
            "postmaster",
            "mysqld",
            "mariadbd",
        ];
        let deep = self.db_ports.contains(&port)
            || name.is_some_and(|n| DEEP.iter().any(|r| n.contains(r)));
        if deep {
            apm_common::events::MAX_CHUNKS
        } else {
            1
        }
    }

    /// Names the series of the ports this scan named. Only now, after the
    /// scan traced the owners it found and published the directory: a
    /// scrape that does not wait for a scan never shows a port named
    /// before the request pipeline can file its requests (the end-to-end
    /// tests wait for that series).
    pub(super) fn adopt_newly_named(&mut self) {
        for (port, name) in std::mem::take(&mut self.newly_named) {
            self.adopt_ownerless_series(port, &name);
        }
    }

    /// Connections counted while the port had no known owner were the new
    /// owner's: move them from the ownerless series (`port-N`) to the
    /// named one, so one port never shows two series at once.
    fn adopt_ownerless_series(&mut self, port: u16, name: &str) {
        let ownerless = ownerless_name(port);
        let port = port.to_string();
        let old = [ownerless.as_str(), port.as_str()];
        let new = [name, port.as_str()];
        let m = &self.metrics;
        for family in [&m.conns_accepted, &m.conns_closed] {
            if let Ok(counter) = family.get_metric_with_label_values(&old) {
                let carried = counter.get();
                let _ = family.remove_label_values(&old);
                family.with_label_values(&new).inc_by(carried);
            }
        }
        m.saturation.tcp.adopt(&port, &ownerless, name);
        if let Ok(gauge) = m.conns_active.get_metric_with_label_values(&old) {
            let active = gauge.get();
            let _ = m.conns_active.remove_label_values(&old);
            m.conns_active.with_label_values(&new).set(active);
        }
    }

    /// Forgets the ports nobody used for `port_ttl`: not selected
    /// explicitly, not listening, no connection open.
    pub(super) fn expire_ports(&mut self, now: Instant) {
        let ttl = self.port_ttl;
        let idle: Vec<u16> = self
            .port_names
            .keys()
            .chain(self.nameless.iter())
            .copied()
            .filter(|port| !self.selection.ports.contains(port))
            .filter(|port| {
                self.port_seen
                    .get(port)
                    .is_none_or(|seen| now.saturating_duration_since(*seen) > ttl)
            })
            .collect();
        for port in idle {
            // A port first met now (never seen) gets its full TTL.
            if let std::collections::hash_map::Entry::Vacant(e) = self.port_seen.entry(port) {
                e.insert(now);
                continue;
            }
            self.forget_port(port);
        }
    }

    fn forget_port(&mut self, port: u16) {
        let name = self
            .port_names
            .remove(&port)
            .unwrap_or_else(|| ownerless_name(port));
        self.nameless.remove(&port);
        self.port_seen.remove(&port);
        self.last_ports.remove(&port);
        self.refused_ports.remove(&port);
        if let Some(kernel) = self.kernel.as_mut()
            && let Err(e) = kernel.remove_port(port)
        {
            warn!(port, error = %e, "cannot remove an idle port from the kernel maps");
        }
        let labels = [name.as_str(), &port.to_string()];
        let m = &self.metrics;
        for family in [&m.conns_accepted, &m.conns_closed] {
            let _ = family.remove_label_values(&labels);
        }
        let _ = m.conns_active.remove_label_values(&labels);
        m.saturation.tcp.forget_port(labels[0], labels[1]);
        m.ports_expired.inc();
        info!(port, service = %name, "port idle; forgotten");
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use clap::Parser as _;

    use super::*;
    use crate::{
        capture::kernel::ProbeReport,
        config::Config,
        services::discovery::{Listeners, Owner},
        telemetry::metrics::Metrics,
    };

    fn listening(ports: &[u16]) -> Listeners {
        let owner = Owner {
            pid: 7,
            comm: "api".into(),
        };
        Listeners {
            by_port: ports.iter().map(|&p| (p, vec![owner.clone()])).collect(),
            by_socket: ports
                .iter()
                .map(|&p| ((1, p), vec![owner.clone()]))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn ports_that_stop_listening_are_forgotten_after_the_ttl() {
        let config = Config::try_parse_from(["apm-agent", "--port", "9000", "--comm", "api"])
            .expect("config");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let mut agent = Agent::new(&config, None, &ProbeReport::default(), metrics.clone());
        agent.apply(&listening(&[8080, 9000]));
        let t0 = Instant::now();
        agent.expire_ports(t0);
        assert!(agent.port_names.contains_key(&8080));
        // Nothing listens any more; within the TTL the port stays.
        agent.apply(&listening(&[]));
        agent.expire_ports(t0 + Duration::from_secs(60));
        assert!(agent.port_names.contains_key(&8080));
        // After it, 8080 is gone; 9000, selected explicitly, stays.
        agent.expire_ports(t0 + agent.port_ttl + Duration::from_secs(1));
        assert!(!agent.port_names.contains_key(&8080));
        assert!(agent.port_names.contains_key(&9000));
        assert_eq!(metrics.ports_expired.get(), 1);
    }

    #[test]
    fn a_listener_without_an_owner_is_named_by_its_port_until_one_is_found() {
        let config = Config::try_parse_from(["apm-agent", "--port", "8080"]).expect("config");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let mut agent = Agent::new(&config, None, &ProbeReport::default(), metrics.clone());
        let ownerless = Listeners {
            by_port: [(8080, vec![])].into(),
            by_socket: [((1, 8080), vec![])].into(),
            ..Default::default()
        };
        agent.apply(&ownerless);
        assert!(agent.directory.snapshot().names("port-8080"));
        // Connections counted meanwhile move to the owner once found.
        metrics
            .conns_accepted
            .with_label_values(&["port-8080", "8080"])
            .inc_by(3);
        agent.apply(&listening(&[8080]));
        assert!(agent.directory.snapshot().names("api"));
        let text = metrics.encode().expect("encode");
        assert!(
            text.contains(
                "apm_tcp_connections_accepted_total{server_port=\"8080\",service_name=\"api\"} 3"
            ),
            "{text}"
        );
        assert!(!text.contains("port-8080"), "{text}");
    }

    #[test]
    fn a_ports_series_is_named_only_once_the_directory_names_its_owner() {
        let config = Config::try_parse_from(["apm-agent", "--comm", "api"]).expect("config");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let mut agent = Agent::new(&config, None, &ProbeReport::default(), metrics.clone());
        let named = |m: &Metrics| {
            m.encode().expect("encode").contains(
                "apm_tcp_connections_accepted_total{server_port=\"8080\",service_name=\"api\"}",
            )
        };
        // Named mid-scan: a scrape that does not wait for the scan must
        // not see the series before the pipeline can file requests.
        agent.monitor_port(8080, Some("api".into()));
        assert!(!named(&metrics));
        assert!(!agent.directory.published());
        agent.apply(&listening(&[8080]));
        assert!(named(&metrics));
        assert!(agent.directory.published());
        assert!(agent.directory.snapshot().names("api"));
    }
}
