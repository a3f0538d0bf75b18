//! Which process owns which TCP listener, read from procfs.
//!
//! Listening sockets come from `<proc>/<pid>/net/tcp{,6}` of one process in
//! each network namespace (containers and pods have their own; the
//! namespace of each pid is read once from `<proc>/<pid>/ns/net`); their
//! owners come from the `socket:[inode]` links under `<proc>/<pid>/fd`. Walking every
//! process's descriptors is the expensive part, so it happens only when a
//! listener with an unknown owner appears, and otherwise every
//! [`FULL_RESCAN_EVERY`] scans (to notice forked workers).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use procfs::process::{FDTarget, Process};
use procfs_core::net::{TcpNetEntry, TcpState};

/// Full process walks happen at least this often (in scans).
pub const FULL_RESCAN_EVERY: u64 = 10;

/// One process that holds a listening socket.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    pub pid: u32,
    /// `/proc/<pid>/comm`, the kernel's 15-byte process name.
    pub comm: String,
}

/// Listening ports and the processes holding them (sorted by pid, deduplicated).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listeners {
    pub by_port: BTreeMap<u16, Vec<Owner>>,
    /// The same per (network-namespace inode, port): two pods listening on
    /// one port stay apart here.
    pub by_socket: BTreeMap<(u64, u16), Vec<Owner>>,
    /// One (pid, fd) holding each (namespace, port) listener, from which
    /// the namespace's cookie can be read.
    pub holders: BTreeMap<(u64, u16), (u32, u32)>,
}

impl Listeners {
    /// Every pid that holds any listener.
    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_port.values().flatten().map(|o| o.pid)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("reading the TCP socket table under {root}: {source}")]
    SocketTable {
        root: PathBuf,
        #[source]
        source: procfs::ProcError,
    },
    #[error("listing processes under {root}: {source}")]
    Processes {
        root: PathBuf,
        #[source]
        source: procfs::ProcError,
    },
}

pub struct Discovery {
    pub(super) root: PathBuf,
    owners: HashMap<u64, Vec<Owner>>,
    /// One (pid, fd) holding each listening inode.
    holders: HashMap<u64, (u32, u32)>,
    /// Listening inodes that the last full walk could not attribute (owned
    /// by a process we may not read): not a reason for another walk.
    orphans: HashSet<u64>,
    scans: u64,
    /// Network namespace inode of each pid seen (read once per pid).
    pid_netns: HashMap<u32, u64>,
    /// The last listening-socket read, with the kernel's listen-change count
    /// at that time and when it was made.
    listening: Option<ListeningRead>,
}

/// Listening sockets as (namespace inode, port, socket inode).
type Listening = Vec<(u64, u16, u64)>;

struct ListeningRead {
    changes: u64,
    at: Instant,
    sockets: Listening,
}

/// How long a listening-socket read is reused while the kernel reports no
/// listener change: a backstop for changes the tracepoint could miss.
const LISTENING_MAX_AGE: Duration = Duration::from_secs(30);

impl Discovery {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            root: proc_root.into(),
            owners: HashMap::new(),
            holders: HashMap::new(),
            orphans: HashSet::new(),
            scans: 0,
            pid_netns: HashMap::new(),
            listening: None,
        }
    }

    /// One pid per network namespace (the lowest), as `<proc>` entry names;
    /// `None` when namespaces cannot be read.
    fn namespaces(&mut self) -> Option<Vec<String>> {
        let entries = std::fs::read_dir(&self.root).ok()?;
        let mut live = HashSet::new();
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            live.insert(pid);
            if self.pid_netns.contains_key(&pid) {
                continue;
            }
            let link = std::fs::read_link(entry.path().join("ns/net")).ok();
            let ns = link
                .as_ref()
                .and_then(|l| l.to_str())
                .and_then(|l| l.strip_prefix("net:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(ns) = ns {
                self.pid_netns.insert(pid, ns);
            }
        }
        self.pid_netns.retain(|pid, _| live.contains(pid));
        let mut first: HashMap<u64, u32> = HashMap::new();
        for (&pid, &ns) in &self.pid_netns {
            let slot = first.entry(ns).or_insert(pid);
            *slot = (*slot).min(pid);
        }
        if first.is_empty() {
            return None;
        }
        let mut reps: Vec<u32> = first.into_values().collect();
        reps.sort_unstable();
        Some(reps.into_iter().map(|p| p.to_string()).collect())
    }

    pub fn scan(&mut self) -> Result<Listeners, DiscoveryError> {
        self.scan_with(None)
    }

    /// A scan that reuses the last read of the listening sockets while
    /// `listen_changes` (the kernel's count of sockets entering or leaving
    /// LISTEN) is unchanged: reading `net/tcp` walks every established
    /// socket of the host, which under load is most of the agent's
    /// discovery cost.
    pub fn scan_with(&mut self, listen_changes: Option<u64>) -> Result<Listeners, DiscoveryError> {
        let fresh = |read: &ListeningRead, changes: u64| {
            read.changes == changes && read.at.elapsed() < LISTENING_MAX_AGE
        };
        let listening = match (listen_changes, &self.listening) {
            (Some(changes), Some(read)) if fresh(read, changes) => read.sockets.clone(),
            _ => {
                let sockets = self.listening_sockets()?;
                self.listening = listen_changes.map(|changes| ListeningRead {
                    changes,
                    at: Instant::now(),
                    sockets: sockets.clone(),
                });
                sockets
            }
        };
        let needs_walk = self.scans.is_multiple_of(FULL_RESCAN_EVERY)
            || listening.iter().any(|(_, _, inode)| {
                !self.owners.contains_key(inode) && !self.orphans.contains(inode)
            });
        self.scans += 1;
        if needs_walk {
            let wanted: HashSet<u64> = listening.iter().map(|&(_, _, inode)| inode).collect();
            (self.owners, self.holders) = self.walk_processes(&wanted)?;
            self.orphans = wanted
                .into_iter()
                .filter(|inode| !self.owners.contains_key(inode))
                .collect();
        } else {
            // Cheap liveness check instead of a walk.
            let root = &self.root;
            for owners in self.owners.values_mut() {
                owners.retain(|o| root.join(o.pid.to_string()).exists());
            }
        }
        let mut listeners = Listeners::default();
        for (ns, port, inode) in listening {
            let found = self.owners.get(&inode).map(Vec::as_slice).unwrap_or(&[]);
            listeners
                .by_port
                .entry(port)
                .or_default()
                .extend(found.iter().cloned());
            listeners
                .by_socket
                .entry((ns, port))
                .or_default()
                .extend(found.iter().cloned());
            if let Some(&holder) = self.holders.get(&inode) {
                listeners.holders.entry((ns, port)).or_insert(holder);
            }
        }
        for owners in listeners
            .by_port
            .values_mut()
            .chain(listeners.by_socket.values_mut())
        {
            owners.sort();
            owners.dedup();
        }
        Ok(listeners)
    }

    /// (namespace inode, port, inode) of every TCP socket in LISTEN state,
    /// IPv4 and IPv6, in every network namespace (namespace 0: unknown).
    fn listening_sockets(&mut self) -> Result<Listening, DiscoveryError> {
        let Some(namespaces) = self.namespaces() else {
            // No readable ns links: pid 1's namespace, else our own.
            let sockets = self
                .sockets_of("1", TcpState::Listen)
                .or_else(|_| self.sockets_of("self", TcpState::Listen))?;
            return Ok(sockets.into_iter().map(|(p, i)| (0, p, i)).collect());
        };
        let mut all = Vec::new();
        let mut last_err = None;
        let mut any = false;
        for ns in &namespaces {
            // A namespace whose process just exited is not an error.
            let inode = ns
                .parse::<u32>()
                .ok()
                .and_then(|pid| self.pid_netns.get(&pid).copied())
                .unwrap_or(0);
            match self.sockets_of(ns, TcpState::Listen) {
                Ok(sockets) => {
                    any = true;
                    all.extend(sockets.into_iter().map(|(p, i)| (inode, p, i)));
                }
                Err(e) => last_err = Some(e),
            }
        }
        match (any, last_err) {
            (false, Some(e)) => Err(e),
            _ => Ok(all),
        }
    }

    /// TCP sockets in `state` in the network namespace of `<proc>/<entry>`.
    pub(super) fn sockets_of(
        &self,
        entry: &str,
        state: TcpState,
    ) -> Result<Vec<(u16, u64)>, DiscoveryError> {
        Ok(self
            .socket_table(entry)?
            .into_iter()
            .filter(|e| e.state == state)
            .map(|e| (e.local_address.port(), e.inode))
            .collect())
    }

    /// The IPv4 and IPv6 TCP sockets of the network namespace of
    /// `<proc>/<entry>`.
    pub(super) fn socket_table(&self, entry: &str) -> Result<Vec<TcpNetEntry>, DiscoveryError> {
        let err = |source| DiscoveryError::SocketTable {
            root: self.root.join(entry),
            source,
        };
        let process = Process::new_with_root(self.root.join(entry)).map_err(err)?;
        let mut entries = process.tcp().map_err(err)?;
        // No IPv6 in this namespace (or kernel) is not an error.
        entries.extend(process.tcp6().unwrap_or_default());
        Ok(entries)
    }

    /// The owners of each wanted inode, and one (pid, fd) holding it.
    #[allow(clippy::type_complexity)]
    fn walk_processes(
        &self,
        wanted: &HashSet<u64>,
    ) -> Result<(HashMap<u64, Vec<Owner>>, HashMap<u64, (u32, u32)>), DiscoveryError> {
        let mut owners: HashMap<u64, Vec<Owner>> = HashMap::new();
        let mut holders: HashMap<u64, (u32, u32)> = HashMap::new();
        if wanted.is_empty() {
            return Ok((owners, holders));
        }
        let processes = procfs::process::all_processes_with_root(&self.root).map_err(|source| {
            DiscoveryError::Processes {
                root: self.root.clone(),
                source,
            }
        })?;
        // Processes vanish and deny access all the time: skip those.
        for process in processes.flatten() {
            let Ok(fds) = process.fd() else { continue };
            let mut comm = None;
            for fd in fds.flatten() {
                let FDTarget::Socket(inode) = fd.target else {
                    continue;
                };
                if !wanted.contains(&inode) {
                    continue;
                }
                let comm = comm.get_or_insert_with(|| read_comm(&self.root, process.pid));
                let Ok(pid) = u32::try_from(process.pid) else {
                    continue;
                };
                if let Ok(fd) = u32::try_from(fd.fd) {
                    holders.entry(inode).or_insert((pid, fd));
                }
                owners.entry(inode).or_default().push(Owner {
                    pid,
                    comm: comm.clone(),
                });
            }
        }
        Ok((owners, holders))
    }
}

/// The process name, or "unknown" when it cannot be read (it exited).
pub fn read_comm(root: &Path, pid: i32) -> String {
    std::fs::read_to_string(root.join(pid.to_string()).join("comm"))
        .map(|s| s.trim_end_matches('\n').to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    pub(in crate::services) const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 20 4 30 10 -1
   2: 00000000:1A0B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0
";

    /// A fake procfs: pid 1 carries the socket tables; pids 10 and 11 share
    /// listener 1111 (master and worker), pid 12 holds the IPv6 one, pid 13
    /// holds only a connected socket.
    pub(in crate::services) fn fake_proc() -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "apm-discovery-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let mk = |pid: &str, comm: &str, fds: &[(u32, &str)]| {
            let dir = root.join(pid);
            std::fs::create_dir_all(dir.join("fd")).expect("mkdir");
            std::fs::create_dir_all(dir.join("net")).expect("mkdir");
            std::fs::write(dir.join("comm"), format!("{comm}\n")).expect("comm");
            for (fd, target) in fds {
                symlink(target, dir.join("fd").join(fd.to_string())).expect("symlink");
            }
        };
        mk("1", "init", &[]);
        std::fs::write(root.join("1/net/tcp"), TCP).expect("tcp");
        std::fs::write(root.join("1/net/tcp6"), TCP6).expect("tcp6");
        mk("10", "nginx", &[(3, "socket:[1111]"), (4, "/dev/null")]);
        mk("11", "nginx", &[(3, "socket:[1111]")]);
        mk("12", "api", &[(5, "socket:[4444]")]);
        mk("13", "client", &[(7, "socket:[2222]")]);
        root
    }

    #[test]
    fn listeners_are_attributed_to_every_owner() {
        let root = fake_proc();
        let mut d = Discovery::new(&root);
        let l = d.scan().expect("scan");
        let nginx = |pid| Owner {
            pid,
            comm: "nginx".into(),
        };
        // 0x1F90 = 8080 on v4 (two owners) and v6 (one more owner).
        assert_eq!(
            l.by_port.get(&8080),
            Some(&vec![
                nginx(10),
                nginx(11),
                Owner {
                    pid: 12,
                    comm: "api".into()
                }
            ])
        );
        // 0x1A0B = 6667: listening, owner not found.
        assert_eq!(l.by_port.get(&6667), Some(&vec![]));
        // The connected socket (state 01) is not a listener.
        assert_eq!(l.by_port.len(), 2);
        let mut pids: Vec<u32> = l.pids().collect();
        pids.sort();
        assert_eq!(pids, vec![10, 11, 12]);
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn listening_sockets_are_reread_only_when_the_kernel_saw_a_listen_change() {
        let root = fake_proc();
        let mut d = Discovery::new(&root);
        assert_eq!(d.scan_with(Some(7)).expect("scan").by_port.len(), 2);
        // A new listener on 0x1F91 = 8081 appears in procfs...
        let more = format!(
            "{TCP}   3: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5555 1 0000000000000000 100 0 0 10 0\n"
        );
        std::fs::write(root.join("1/net/tcp"), more).expect("tcp");
        // ...but the kernel's count did not move: the last read is reused.
        assert_eq!(d.scan_with(Some(7)).expect("scan").by_port.len(), 2);
        // The count moved: reread.
        let l = d.scan_with(Some(8)).expect("scan");
        assert!(l.by_port.contains_key(&8081), "{:?}", l.by_port.keys());
        // Without the kernel's count (procfs-only), every scan rereads.
        std::fs::write(root.join("1/net/tcp"), TCP).expect("tcp");
        assert_eq!(d.scan().expect("scan").by_port.len(), 2);
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn exited_owners_are_dropped_without_a_walk() {
        let root = fake_proc();
        let mut d = Discovery::new(&root);
        d.scan().expect("first scan walks");
        std::fs::remove_dir_all(root.join("11")).expect("rm");
        let l = d.scan().expect("second scan");
        let pids: Vec<u32> = l.by_port[&8080].iter().map(|o| o.pid).collect();
        assert_eq!(pids, vec![10, 12]);
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn listeners_of_every_network_namespace_are_found() {
        let root = fake_proc();
        // pid 12 lives in a namespace of its own, whose table has port 9090.
        for (pid, ns) in [
            ("1", 111),
            ("10", 111),
            ("11", 111),
            ("12", 222),
            ("13", 111),
        ] {
            std::fs::create_dir_all(root.join(pid).join("ns")).expect("ns dir");
            symlink(format!("net:[{ns}]"), root.join(pid).join("ns/net")).expect("ns link");
        }
        let own_ns = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:2382 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0
";
        std::fs::write(root.join("12/net/tcp"), own_ns).expect("tcp");
        std::fs::write(root.join("12/net/tcp6"), "  sl  local_address\n").expect("tcp6");
        let mut d = Discovery::new(&root);
        let l = d.scan().expect("scan");
        // 0x2382 = 9090, held by pid 12 (socket 4444) in its own namespace.
        assert_eq!(
            l.by_port
                .get(&9090)
                .map(|o| o.iter().map(|o| o.pid).collect::<Vec<_>>()),
            Some(vec![12])
        );
        assert!(l.by_port.contains_key(&8080));
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn a_missing_socket_table_is_an_error_not_a_panic() {
        let mut d = Discovery::new("/nonexistent-apm-proc");
        let err = d.scan().expect_err("no table");
        assert!(err.to_string().contains("/nonexistent-apm-proc"), "{err}");
    }
}
