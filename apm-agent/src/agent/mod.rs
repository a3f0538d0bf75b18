//! The agent's state: which ports and processes are monitored, what each
//! is called, and (in `counters`) how the kernel's cumulative counters
//! become Prometheus series. Owned behind one mutex, shared by the refresh task and the
//! /metrics handler (which collects at scrape time so that a scrape is exact).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use apm_common::{DropReason, PidCounters, PortCounters, Verdict};
use tracing::{info, warn};

mod counters;
mod netns;
mod outbound;
mod ports;

use crate::{
    capture::kernel::{Kernel, ProbeReport},
    config::Config,
    services::directory::{Directory, ServiceInfo, ServiceResource, Services, ownerless_name},
    services::discovery::{Discovery, Listeners, Owner},
    telemetry::metrics::Metrics,
};

/// What the user asked to monitor.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub all: bool,
    pub ports: BTreeSet<u16>,
    pub pids: BTreeSet<u32>,
    pub comms: BTreeSet<String>,
    pub names: HashMap<u16, String>,
}

impl Selection {
    pub fn from_config(c: &Config) -> Self {
        Self {
            all: c.monitors_all_ports(),
            ports: c.ports.iter().copied().collect(),
            pids: c.pids.iter().copied().collect(),
            comms: c.comms.iter().cloned().collect(),
            names: c.service_names.iter().cloned().collect(),
        }
    }

    pub fn selects(&self, port: u16, owners: &[Owner]) -> bool {
        self.all
            || self.ports.contains(&port)
            || owners
                .iter()
                .any(|o| self.pids.contains(&o.pid) || self.comms.contains(&o.comm))
    }

    /// Configured name, else the first (lowest-pid, usually the master)
    /// owner's process name.
    pub fn service_name(&self, port: u16, owners: &[Owner]) -> Option<String> {
        self.names
            .get(&port)
            .cloned()
            .or_else(|| owners.first().map(|o| o.comm.clone()))
    }
}

/// How long a process gone away still names its service: past the
/// pipeline's lag (ring polling, the reordering window) behind the scan
/// that saw it go. At most [`MAX_DEPARTED`] are kept.
const DEPARTED_GRACE: std::time::Duration = std::time::Duration::from_secs(30);
const MAX_DEPARTED: usize = 4096;

pub struct Agent {
    pub metrics: Arc<Metrics>,
    /// tgid → service, shared with the request pipeline.
    pub directory: Arc<Directory>,
    kernel: Option<Kernel>,
    discovery: Discovery,
    proc_root: std::path::PathBuf,
    selection: Selection,
    /// Service name per monitored port; absent until known.
    port_names: HashMap<u16, String>,
    /// Ports the kernel counts but no scan could name: `port-N` for now.
    nameless: HashSet<u16>,
    /// Ports named by this scan, whose series appear once it is published.
    newly_named: Vec<(u16, String)>,
    /// Each tracked process: pid → (service, ports), as last published to
    /// the directory.
    published: HashMap<u32, (String, Vec<u16>)>,
    /// Processes gone from `published` lately: their service, and when
    /// they went (their last calls may still be in the pipeline).
    departed: HashMap<u32, (String, std::time::Instant)>,
    /// What the directory holds now.
    services: Services,
    /// Network-namespace inode → its cookie, for namespaces that still
    /// have listeners. Failures are not cached (a holder that exited is
    /// retried with the next one) but are logged once per namespace.
    netns_cookies: HashMap<u64, u64>,
    netns_warned: HashSet<u64>,
    /// Each service's lowest pid and its container, for spans' resources
    /// (read again when the processes change).
    resources: rustc_hash::FxHashMap<Arc<str>, ServiceResource>,
    /// Ports and pids the kernel maps refused (full): not retried.
    refused_ports: HashSet<u16>,
    refused_pids: HashSet<u32>,
    /// Last kernel values seen, to turn cumulative values into increments.
    last_ports: HashMap<u16, PortCounters>,
    /// The same per outbound pool.
    last_pools: HashMap<apm_common::PoolKey, apm_common::PoolCounters>,
    /// When each monitored port last listened or had a connection open.
    port_seen: HashMap<u16, std::time::Instant>,
    /// Ports of Redis, PostgreSQL and MySQL servers (--redis-port,
    /// --postgres-port, --mysql-port).
    db_ports: BTreeSet<u16>,
    /// Those servers by address (--redis-addr, --postgres-addr,
    /// --mysql-addr), as given.
    db_addrs: Vec<(String, u16)>,
    /// Recognise Redis clients on other ports (not --no-redis-detect).
    redis_detect: bool,
    /// When the kernel's watched-port flags were last pruned, and how
    /// often (--watched-ports-prune-interval).
    watched_prune: std::time::Instant,
    watched_prune_interval: std::time::Duration,
    /// (tgid, fd) → (socket inode, server): client connections opened
    /// before the agent saw their process connect, for the pools.
    preexisting: std::collections::BTreeMap<(u32, u32), (u64, std::net::SocketAddr)>,
    /// How long a port that stopped listening, with no connection left,
    /// keeps its state and series (--series-ttl).
    port_ttl: std::time::Duration,
    last_pids: HashMap<u32, PidCounters>,
    last_drops: [u64; DropReason::ALL.len()],
    /// Per verdict: (connections, segments not copied) at the last read.
    last_verdicts: [(u64, u64); Verdict::ALL.len()],
    /// (when, ring-buffer records lost so far), a minute's worth.
    ringbuf_losses: std::collections::VecDeque<(std::time::Instant, u64)>,
    /// [`Self::lost_last_minute`] as of the last collection, for readers
    /// that must not wait for the agent's lock (/health/detailed).
    pub lost_recently: Arc<std::sync::atomic::AtomicU64>,
    /// The TLS libraries probed or skipped, for /health/detailed.
    pub tls_libraries: TlsLibraries,
}

/// The TLS libraries' checks, shared with the admin API.
pub type TlsLibraries = Arc<std::sync::RwLock<Vec<crate::capture::kernel::Check>>>;

impl Agent {
    pub fn new(
        config: &Config,
        kernel: Option<Kernel>,
        report: &ProbeReport,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.ebpf_up.set(i64::from(kernel.is_some()));
        for probe in &report.probes {
            metrics
                .probe_attached
                .with_label_values(&[probe.name.as_str()])
                .set(i64::from(
                    probe.ok && kernel.is_some() && !report.off.contains(&probe.name),
                ));
        }
        let selection = Selection::from_config(config);
        let mut agent = Self {
            metrics,
            directory: Arc::new(Directory::default()),
            kernel,
            discovery: Discovery::new(&config.proc_root),
            proc_root: config.proc_root.clone(),
            selection,
            port_names: HashMap::new(),
            nameless: HashSet::new(),
            published: HashMap::new(),
            departed: HashMap::new(),
            services: Services::default(),
            netns_cookies: HashMap::new(),
            netns_warned: HashSet::new(),
            resources: Default::default(),
            refused_ports: HashSet::new(),
            refused_pids: HashSet::new(),
            newly_named: Vec::new(),
            last_ports: HashMap::new(),
            last_pools: HashMap::new(),
            port_seen: HashMap::new(),
            port_ttl: config.series_ttl,
            db_ports: config
                .redis_ports
                .iter()
                .chain(&config.postgres_ports)
                .chain(&config.mysql_ports)
                .copied()
                .collect(),
            db_addrs: config
                .redis_addrs
                .iter()
                .chain(&config.postgres_addrs)
                .chain(&config.mysql_addrs)
                .cloned()
                .collect(),
            redis_detect: !config.no_redis_detect,
            watched_prune: std::time::Instant::now(),
            watched_prune_interval: config.watched_ports_prune_interval,
            preexisting: std::collections::BTreeMap::new(),
            last_pids: HashMap::new(),
            last_drops: [0; DropReason::ALL.len()],
            last_verdicts: [(0, 0); Verdict::ALL.len()],
            ringbuf_losses: std::collections::VecDeque::new(),
            lost_recently: Arc::default(),
            tls_libraries: Arc::default(),
        };
        // Explicit ports are counted from the start, even before anything
        // listens on them, so a server started later loses no connection.
        let explicit: Vec<u16> = agent.selection.ports.iter().copied().collect();
        for port in explicit {
            agent.monitor_port(port, None);
        }
        agent.capture_db_destinations();
        agent
    }

    pub fn ebpf_up(&self) -> bool {
        self.kernel.is_some()
    }

    /// Rescan procfs, apply what changed, and collect the kernel counters.
    pub fn refresh(&mut self) {
        let listen_changes = self.kernel.as_ref().and_then(|k| k.listen_changes());
        match self.discovery.scan_with(listen_changes) {
            Ok(listeners) => {
                self.apply(&listeners);
                self.update_tls();
                self.expire_ports(std::time::Instant::now());
            }
            Err(e) => {
                self.metrics
                    .discovery_errors
                    .with_label_values(&["scan"])
                    .inc();
                warn!(error = %e, "listener discovery failed");
            }
        }
        self.collect();
    }

    /// Collect for a scrape, which never walks /proc: the connections of a
    /// port the kernel started counting since the last scan (every-port
    /// mode) wait, uncounted, for the refresh that names it, so they are
    /// filed under its service rather than its `port-N` name.
    pub fn collect_for_scrape(&mut self) {
        self.collect_ports(true);
    }

    /// Follow the listeners procfs shows: name ports, track their processes.
    pub fn apply(&mut self, listeners: &Listeners) {
        let mut owners_now: HashMap<u32, (String, Vec<u16>)> = HashMap::new();
        for (&port, owners) in &listeners.by_port {
            if !self.selection.selects(port, owners) {
                continue;
            }
            let name = self.selection.service_name(port, owners);
            self.monitor_port(port, name);
            self.port_seen.insert(port, std::time::Instant::now());
        }
        // Processes, and packet records, are named per network namespace:
        // two pods listening on one port are two services.
        let mut named_sockets: Vec<((u64, u16), String)> = Vec::new();
        for (&(ns, port), owners) in &listeners.by_socket {
            if !self.selection.selects(port, owners) {
                continue;
            }
            let name = self
                .selection
                .service_name(port, owners)
                .unwrap_or_else(|| ownerless_name(port));
            named_sockets.push(((ns, port), name.clone()));
            for owner in owners {
                let entry = owners_now
                    .entry(owner.pid)
                    .or_insert_with(|| (name.clone(), Vec::new()));
                entry.1.push(port);
            }
        }
        // Ports that the kernel counts on its own (every-port mode) but that
        // are not listening any more keep their last name, or `port-N`.
        if let Some(kernel) = &self.kernel {
            for port in kernel.port_counters().keys() {
                if !self.port_names.contains_key(port) {
                    self.nameless.insert(*port);
                }
            }
        }
        let changed = self.track_pids(owners_now);
        if changed || self.resources.is_empty() {
            self.resources = self.service_resources();
        }
        self.publish_directory(listeners, &named_sockets);
        // Services appear in /metrics only once the pipeline can file
        // their requests (a scrape may not wait for this scan).
        if changed {
            self.publish_identities();
        }
        self.adopt_newly_named();
        self.metrics
            .monitored_ports
            .set(i64::try_from(self.port_names.len() + self.nameless.len()).unwrap_or(i64::MAX));
        self.metrics
            .tracked_processes
            .set(i64::try_from(self.published.len()).unwrap_or(i64::MAX));
    }

    /// Traces the new owners and forgets the gone; whether any changed.
    fn track_pids(&mut self, owners_now: HashMap<u32, (String, Vec<u16>)>) -> bool {
        if owners_now == self.published {
            return false;
        }
        let gone: Vec<u32> = self
            .published
            .keys()
            .filter(|pid| !owners_now.contains_key(pid))
            .copied()
            .collect();
        for pid in gone {
            if let Some((name, _)) = self.published.get(&pid)
                && self.departed.len() < MAX_DEPARTED
            {
                self.departed
                    .insert(pid, (name.clone(), std::time::Instant::now()));
            }
            // Accounted under its name, still in `published` until the end.
            if let Some(kernel) = self.kernel.as_mut()
                && let Some(last) = kernel.untrack_pid(pid)
            {
                self.account_pid(pid, last);
            }
            self.last_pids.remove(&pid);
        }
        self.refused_pids.retain(|pid| owners_now.contains_key(pid));
        self.departed.retain(|pid, _| !owners_now.contains_key(pid));
        for (&pid, (_, ports)) in &owners_now {
            if self.published.contains_key(&pid) {
                continue;
            }
            // The syscall capture and TLS trace processes; packets alone
            // need none.
            let Some(kernel) = self.kernel.as_mut().filter(|k| k.traces_pids()) else {
                continue;
            };
            if self.refused_pids.contains(&pid) {
                continue;
            }
            if let Err(e) = kernel.track_pid(pid) {
                self.refused_pids.insert(pid);
                self.metrics
                    .agent_drops
                    .with_label_values(&["pids_map_full"])
                    .inc();
                warn!(pid, error = %e, "cannot trace this process");
                continue;
            }
            // Connections it accepted before we traced it.
            let ports: HashSet<u16> = ports.iter().copied().collect();
            for (fd, port) in self.discovery.established_fds(pid, &ports) {
                if let Err(e) = kernel.seed_conn(pid, fd, port) {
                    self.metrics
                        .agent_drops
                        .with_label_values(&["conns_map_full"])
                        .inc();
                    warn!(pid, fd, error = %e, "cannot track an existing connection");
                    break;
                }
            }
        }
        self.published = owners_now;
        self.publish_clients();
        true
    }

    /// Probes the TLS libraries of the traced processes (new processes at
    /// once, libraries loaded later within RECHECK), takes the probes of
    /// processes gone away, and says what changed.
    fn update_tls(&mut self) {
        if !self.kernel.as_ref().is_some_and(Kernel::reads_tls) {
            return;
        }
        let traced: HashSet<u32> = self
            .published
            .keys()
            .filter(|pid| !self.refused_pids.contains(pid))
            .copied()
            .collect();
        let Some(checks) = self.kernel.as_mut().and_then(|k| k.update_tls(&traced)) else {
            return;
        };
        if let Ok(mut shown) = self.tls_libraries.write() {
            // A library no traced process maps any more leaves the list.
            for gone in shown
                .iter()
                .filter(|old| checks.iter().all(|c| c.name != old.name))
            {
                let _ = self
                    .metrics
                    .probe_attached
                    .remove_label_values(&[gone.name.as_str()]);
            }
            shown.clone_from(&checks);
        }
        for check in checks {
            let attached = self
                .metrics
                .probe_attached
                .with_label_values(&[check.name.as_str()]);
            if attached.get() == i64::from(check.ok) && check.ok {
                continue;
            }
            attached.set(i64::from(check.ok));
            if check.ok {
                info!(library = %check.name, detail = %check.detail, "TLS library probed");
            } else {
                warn!(library = %check.name, detail = %check.detail, "TLS library not probed");
            }
        }
    }

    /// Hands the request pipeline and the sampler a new directory after
    /// the first scan and whenever anything in it changed: processes,
    /// ports, and (for packet records) each (network-namespace cookie,
    /// port) listener.
    /// `named` holds the selected (namespace inode, port) listeners and
    /// their service names, as `apply` computed them.
    fn publish_directory(&mut self, listeners: &Listeners, named: &[((u64, u16), String)]) {
        let mut by_socket = rustc_hash::FxHashMap::default();
        let mut socket_ports = HashSet::new();
        for &((ns, port), ref name) in named {
            if ns == 0 {
                continue;
            }
            let Some(cookie) =
                self.netns_cookie(ns, listeners.holders.get(&(ns, port)).map(|h| h.0))
            else {
                continue;
            };
            by_socket.insert((cookie, port), name.as_str().into());
            socket_ports.insert(port);
        }
        let services = Services {
            by_pid: self
                .published
                .iter()
                .map(|(&pid, (name, ports))| {
                    (
                        pid,
                        ServiceInfo {
                            name: name.as_str().into(),
                            ports: ports.clone(),
                        },
                    )
                })
                .collect(),
            // Only ports whose listeners' namespaces are unknown are named
            // by port alone: a client socket whose ephemeral port equals a
            // server port in another namespace is not that server.
            // Listeners without an owner go by their port's name.
            by_port: self
                .port_names
                .iter()
                .map(|(&port, name)| (port, name.as_str().into()))
                .chain(
                    self.nameless
                        .iter()
                        .map(|&port| (port, ownerless_name(port).into())),
                )
                .filter(|(port, _)| !socket_ports.contains(port))
                .collect(),
            by_socket,
            resources: self.resources.clone(),
            departed: {
                self.departed
                    .retain(|_, (_, at)| at.elapsed() < DEPARTED_GRACE);
                self.departed
                    .iter()
                    .map(|(&pid, (name, _))| (pid, name.as_str().into()))
                    .collect()
            },
        };
        // Namespaces without listeners are forgotten (an inode may be
        // reused by a new namespace with another cookie).
        let live: HashSet<u64> = listeners.by_socket.keys().map(|&(ns, _)| ns).collect();
        self.netns_cookies.retain(|ns, _| live.contains(ns));
        self.netns_warned.retain(|ns| live.contains(ns));
        if services != self.services || !self.directory.published() {
            self.directory.replace(services.clone());
            self.services = services;
        }
    }

    /// Each service's lowest pid and that process's container.
    fn service_resources(&self) -> rustc_hash::FxHashMap<Arc<str>, ServiceResource> {
        let mut first: std::collections::BTreeMap<&str, u32> = std::collections::BTreeMap::new();
        for (&pid, (name, _)) in &self.published {
            let slot = first.entry(name.as_str()).or_insert(pid);
            *slot = (*slot).min(pid);
        }
        first
            .into_iter()
            .map(|(name, pid)| {
                let id = crate::services::identity::of_process(&self.proc_root, pid);
                let resource = ServiceResource {
                    pid,
                    container_id: id.container_id.map(Arc::from),
                };
                (Arc::from(name), resource)
            })
            .collect()
    }

    /// `apm_service_info`: the container and pod of each service, from the
    /// cgroup of its lowest pid.
    fn publish_identities(&self) {
        let mut first: std::collections::BTreeMap<&str, u32> = std::collections::BTreeMap::new();
        for (&pid, (name, _)) in &self.published {
            let slot = first.entry(name.as_str()).or_insert(pid);
            *slot = (*slot).min(pid);
        }
        self.metrics.service_info.reset();
        for (name, pid) in first {
            let id = crate::services::identity::of_process(&self.proc_root, pid);
            self.metrics
                .service_info
                .with_label_values(&[
                    name,
                    id.container_id.as_deref().unwrap_or(""),
                    id.pod_uid.as_deref().unwrap_or(""),
                ])
                .set(1);
        }
    }

    /// Detach every program. Returns whether there was anything to detach.
    pub fn shutdown(&mut self) -> bool {
        self.kernel.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(pid: u32, comm: &str) -> Owner {
        Owner {
            pid,
            comm: comm.into(),
        }
    }

    #[test]
    fn selection_by_port_pid_or_comm() {
        let s = Selection {
            ports: [80].into(),
            pids: [42].into(),
            comms: ["redis-server".to_owned()].into(),
            ..Default::default()
        };
        assert!(s.selects(80, &[]));
        assert!(s.selects(9000, &[owner(7, "x"), owner(42, "y")]));
        assert!(s.selects(6379, &[owner(7, "redis-server")]));
        assert!(!s.selects(8080, &[owner(7, "nginx")]));
        let all = Selection {
            all: true,
            ..Default::default()
        };
        assert!(all.selects(1, &[]));
    }

    #[test]
    fn configured_names_win_over_process_names() {
        let s = Selection {
            names: [(8080, "api".to_owned())].into(),
            ..Default::default()
        };
        assert_eq!(
            s.service_name(8080, &[owner(1, "python3")]).as_deref(),
            Some("api")
        );
        assert_eq!(
            s.service_name(81, &[owner(1, "nginx"), owner(2, "nginx")])
                .as_deref(),
            Some("nginx")
        );
        assert_eq!(s.service_name(82, &[]), None);
    }
}
