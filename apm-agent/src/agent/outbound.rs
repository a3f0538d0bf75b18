//! Outbound connections of monitored services: which processes the kernel
//! follows as clients, which remote ports (Redis) their connections are
//! captured to, and their connection pools per destination.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{SocketAddr, ToSocketAddrs},
    time::Instant,
};

use tracing::{debug, info, warn};

use super::Agent;
use crate::capture::Capture;

/// Connections opened before the agent saw them that are counted in the
/// pools (a bound on `Agent::preexisting`).
const MAX_PREEXISTING: usize = 4096;

impl Agent {
    /// Captures monitored clients' connections to the Redis, PostgreSQL
    /// and MySQL ports, then to their addresses (a host name resolved now).
    pub(super) fn capture_db_destinations(&mut self) {
        let Some(kernel) = self.kernel.as_mut() else {
            return;
        };
        // The syscall capture follows clients' connections only for their
        // TLS plaintext (by descriptor).
        if kernel.capture() != Capture::Packets && !kernel.reads_tls() {
            return;
        }
        for &port in &self.db_ports {
            if let Err(e) = kernel
                .outbound()
                .capture_remote_port(port, apm_common::events::MAX_CHUNKS)
            {
                warn!(port, error = %e, "cannot capture client connections to this port");
            }
        }
        for (host, port) in &self.db_addrs {
            let addrs = match (host.as_str(), *port).to_socket_addrs() {
                Ok(addrs) => addrs.collect::<BTreeSet<SocketAddr>>(),
                Err(e) => {
                    warn!(host, port, error = %e, "cannot resolve a database server address (--redis-addr, --postgres-addr, --mysql-addr); its connections are not timed");
                    continue;
                }
            };
            for addr in addrs {
                match kernel
                    .outbound()
                    .capture_remote_addr(addr, apm_common::events::MAX_CHUNKS)
                {
                    Ok(()) => {
                        info!(%addr, host, "capturing client connections to this database server")
                    }
                    Err(e) => {
                        warn!(%addr, error = %e, "cannot capture client connections to this address")
                    }
                }
            }
        }
    }

    /// The processes of monitored services are the kernel's clients.
    pub(super) fn publish_clients(&mut self) {
        let Some(kernel) = self.kernel.as_mut() else {
            return;
        };
        let tgids: BTreeSet<u32> = self.published.keys().copied().collect();
        let (refused, added) = kernel.outbound().set_clients(&tgids);
        if refused > 0 {
            self.metrics
                .agent_drops
                .with_label_values(&["clients_map_full"])
                .inc_by(refused as u64);
        }
        if kernel.capture() == Capture::Packets {
            for tgid in added {
                self.watch_open_connections(tgid);
            }
        }
    }

    /// Connections a new client process opened before its connect could be
    /// seen (before the agent, or before it was a monitored service) are
    /// watched like new ones: each is timed from its next command if that
    /// is RESP, whatever the port (only listed destinations with
    /// --no-redis-detect). Their cookies come from a sock_diag dump of the
    /// agent's own network namespace; those of processes in other
    /// namespaces are not found there and stay untimed (one INFO line).
    fn watch_open_connections(&mut self, tgid: u32) {
        let Some(kernel) = self.kernel.as_mut() else {
            return;
        };
        let mut watched = 0;
        // A process that was a client before has its connections since
        // then in the kernel's pools already.
        let counted = kernel.outbound().pools().iter().any(|p| p.tgid == tgid);
        let fds = self.discovery.client_fds(tgid);
        let inodes = fds.iter().map(|&(_, inode, _)| inode).collect();
        let (cookies, dumped) = match crate::services::sock_diag::socket_cookies(&inodes) {
            Ok(cookies) => (cookies, true),
            Err(e) => {
                warn!(pid = tgid, error = %e, "cannot read socket cookies (sock_diag); this process's open connections are not timed");
                (Default::default(), false)
            }
        };
        let mut elsewhere = 0;
        for (fd, inode, addr) in fds {
            // No pool counted it at its connect: counted here until the
            // descriptor closes (collect_pools), which also keeps its port
            // watched until then; one not followed keeps it for good.
            let mut followed = false;
            if !counted {
                if self.preexisting.len() < MAX_PREEXISTING {
                    self.preexisting.insert((tgid, fd), (inode, addr));
                    followed = true;
                } else {
                    self.metrics
                        .agent_drops
                        .with_label_values(&["preexisting_full"])
                        .inc();
                }
            }
            if !self.redis_detect && !kernel.outbound().listed(addr) {
                continue;
            }
            let Some(&cookie) = cookies.get(&inode) else {
                elsewhere += usize::from(dumped);
                continue;
            };
            match kernel.outbound().watch(cookie, tgid, addr, !followed) {
                Ok(()) => watched += 1,
                Err(e) => {
                    warn!(pid = tgid, error = %e, "cannot watch this process's open connections");
                    break;
                }
            }
        }
        if elsewhere > 0 {
            info!(
                pid = tgid,
                connections = elsewhere,
                "connections opened before the agent saw them, in another network namespace, are not timed"
            );
        }
        if watched > 0 {
            info!(
                pid = tgid,
                connections = watched,
                "watching connections opened before the agent saw them, for Redis commands"
            );
        }
    }

    /// `apm_outbound_connections_active` per service and destination; the
    /// pools of processes that are gone and have nothing open are
    /// forgotten in the kernel.
    pub(super) fn collect_pools(&mut self) {
        let Some(kernel) = self.kernel.as_mut() else {
            return;
        };
        let mut by_service: BTreeMap<(String, String, u16), u64> = BTreeMap::new();
        // Connections opened before the agent saw their process connect,
        // while their descriptors still hold them.
        let discovery = &self.discovery;
        self.preexisting
            .retain(|&(tgid, fd), &mut (inode, _)| discovery.fd_is_socket(tgid, fd, inode));
        if self.watched_prune.elapsed() >= self.watched_prune_interval {
            self.watched_prune = Instant::now();
            let open: BTreeSet<u16> = self.preexisting.values().map(|(_, a)| a.port()).collect();
            let cleared = kernel.outbound().prune_watched_ports(&open);
            if cleared > 0 {
                debug!(
                    ports = cleared,
                    "ports no connection uses are no longer watched for Redis"
                );
            }
        }
        let pools = kernel.outbound().pools();
        let mut last_pools = HashMap::with_capacity(pools.len());
        for pool in pools {
            let last = self.last_pools.get(&pool.key).copied().unwrap_or_default();
            let published = self.published.get(&pool.tgid).map(|(s, _)| s);
            // A process that just left still names its last counts.
            let named = published.or_else(|| self.departed.get(&pool.tgid).map(|(s, _)| s));
            let addr = pool.addr.to_string();
            if let Some(service) = named {
                let port = pool.port.to_string();
                let tcp = &self.metrics.saturation.tcp;
                tcp.outbound(service, (&addr, &port), &last, &pool.counters);
            }
            match published {
                Some(service) => {
                    *by_service
                        .entry((service.clone(), addr, pool.port))
                        .or_default() += pool.active;
                }
                None if pool.active == 0 => {
                    kernel.outbound().forget(&pool);
                    continue;
                }
                None => {}
            }
            last_pools.insert(pool.key, pool.counters);
        }
        self.metrics.saturation.tcp.expire(self.port_ttl);
        self.last_pools = last_pools;
        for (&(tgid, _), &(_, addr)) in &self.preexisting {
            if let Some((service, _)) = self.published.get(&tgid) {
                *by_service
                    .entry((
                        service.clone(),
                        addr.ip().to_canonical().to_string(),
                        addr.port(),
                    ))
                    .or_default() += 1;
            }
        }
        let gauge = &self.metrics.outbound_active;
        gauge.reset();
        for ((service, addr, port), active) in by_service {
            gauge
                .with_label_values(&[&service, &addr, &port.to_string()])
                .set(i64::try_from(active).unwrap_or(i64::MAX));
        }
    }
}
