//! The service directory: which service a record belongs to. The agent
//! publishes it after its first scan and replaces it wholesale whenever
//! discovery changes something; the request pipeline and the sampler read
//! snapshots of it.

use std::sync::{
    Arc, RwLock,
    atomic::{AtomicBool, Ordering},
};

use rustc_hash::FxHashMap;

/// Label value for a process, or a record, whose service is not known.
pub const UNKNOWN_SERVICE: &str = "unknown";

/// The service name of a listener whose owner cannot be found (a kernel
/// socket, a process the agent may not look into): its port, so that
/// such listeners are not all merged into one service.
pub fn ownerless_name(port: u16) -> String {
    format!("port-{port}")
}

/// Whether `name` is an [`ownerless_name`].
pub fn is_ownerless(name: &str) -> bool {
    name.strip_prefix("port-")
        .is_some_and(|p| p.parse::<u16>().is_ok())
}

/// Which service a traced process belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: Arc<str>,
    /// The monitored ports this process listens on (to label connections
    /// whose local port the kernel could not learn).
    pub ports: Vec<u16>,
}

/// What a span's resource says of its service: its lowest pid and that
/// process's container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceResource {
    pub pid: u32,
    pub container_id: Option<Arc<str>>,
}

/// One consistent view of every monitored service. Keys are made by the
/// kernel or the agent, never by traffic, so a fast non-keyed hash is safe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Services {
    /// tgid → service (sampling, and records of the syscall capture).
    pub by_pid: FxHashMap<u32, ServiceInfo>,
    /// (network-namespace cookie, local port) → service, for packet
    /// records: two pods listening on one port stay apart.
    pub by_socket: FxHashMap<(u64, u16), Arc<str>>,
    /// Local port → service, for the ports whose listeners' namespace
    /// cookies the agent could not learn.
    pub by_port: FxHashMap<u16, Arc<str>>,
    /// Service → its resource (spans).
    pub resources: FxHashMap<Arc<str>, ServiceResource>,
    /// tgid → service of processes gone lately, whose last records may
    /// come after the scan that saw them go.
    pub departed: FxHashMap<u32, Arc<str>>,
}

impl Services {
    /// Whether `name` is one of the services now.
    pub fn names(&self, name: &str) -> bool {
        self.by_pid.values().any(|s| &*s.name == name)
            || self.by_socket.values().any(|s| &**s == name)
            || self.by_port.values().any(|s| &**s == name)
    }

    /// The service of a packet record.
    pub fn of_socket(&self, netns: u64, port: u16) -> Option<&Arc<str>> {
        self.by_socket
            .get(&(netns, port))
            .or_else(|| self.by_port.get(&port))
    }
}

#[derive(Default)]
pub struct Directory {
    services: RwLock<Arc<Services>>,
    /// Whether the agent's first scan has been published.
    published: AtomicBool,
}

impl Directory {
    /// The current directory. The lock only guards an Arc swap, which a
    /// panic cannot leave half done, so a poisoned lock is recovered (an
    /// empty directory would silently file everything under "unknown").
    pub fn snapshot(&self) -> Arc<Services> {
        self.services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn replace(&self, services: Services) {
        *self.services.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(services);
        self.published.store(true, Ordering::Release);
    }

    /// Whether a scan has published the services yet (before it, every
    /// record would be filed under "unknown").
    pub fn published(&self) -> bool {
        self.published.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_found_by_namespace_then_by_port() {
        let services = Services {
            by_socket: [((1, 8080), "a".into()), ((2, 8080), "b".into())]
                .into_iter()
                .collect(),
            by_port: [(9090, "c".into())].into_iter().collect(),
            ..Default::default()
        };
        assert_eq!(services.of_socket(2, 8080).map(|s| &**s), Some("b"));
        assert_eq!(services.of_socket(1, 8080).map(|s| &**s), Some("a"));
        // Another namespace's socket on 8080 is neither.
        assert_eq!(services.of_socket(9, 8080), None);
        // A port whose namespace is unknown is named by the port.
        assert_eq!(services.of_socket(9, 9090).map(|s| &**s), Some("c"));
        assert_eq!(services.of_socket(1, 9), None);
    }
}
