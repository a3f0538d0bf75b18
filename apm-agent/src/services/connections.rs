//! The connections a process already holds, read from procfs: the ones
//! accepted or opened before the agent saw them, and whether a descriptor
//! still holds the socket it did. Listener discovery is in
//! [`super::discovery`]; this reads the same socket tables per process.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

use procfs::process::{FDTarget, Process};
use procfs_core::net::TcpState;

use super::discovery::Discovery;

impl Discovery {
    /// Descriptors of `pid` that are established server-side connections on
    /// one of `ports`, as (fd, local port): connections accepted before the
    /// agent started tracking the process.
    pub fn established_fds(&self, pid: u32, ports: &HashSet<u16>) -> Vec<(u32, u16)> {
        // The process's own network namespace (pid 1's as a fallback).
        let sockets = self
            .sockets_of(&pid.to_string(), TcpState::Established)
            .or_else(|_| self.sockets_of("1", TcpState::Established));
        let Ok(sockets) = sockets else {
            return Vec::new();
        };
        let by_inode: HashMap<u64, u16> = sockets
            .into_iter()
            .filter(|(port, _)| ports.contains(port))
            .map(|(port, inode)| (inode, port))
            .collect();
        self.fds_of(pid, &by_inode)
    }

    /// Descriptors of `pid` that are established connections it opened
    /// (their local port is not one its namespace listens on), as (fd,
    /// socket inode, remote address): client connections opened before the
    /// agent saw the process connect.
    pub fn client_fds(&self, pid: u32) -> Vec<(u32, u64, SocketAddr)> {
        let Ok(entries) = self.socket_table(&pid.to_string()) else {
            return Vec::new();
        };
        let listening: HashSet<u16> = entries
            .iter()
            .filter(|e| e.state == TcpState::Listen)
            .map(|e| e.local_address.port())
            .collect();
        let by_inode: HashMap<u64, (u64, SocketAddr)> = entries
            .into_iter()
            .filter(|e| {
                e.state == TcpState::Established && !listening.contains(&e.local_address.port())
            })
            .map(|e| (e.inode, (e.inode, e.remote_address)))
            .collect();
        self.fds_of(pid, &by_inode)
            .into_iter()
            .map(|(fd, (inode, addr))| (fd, inode, addr))
            .collect()
    }

    /// Whether descriptor `fd` of `pid` is still socket `inode`.
    pub fn fd_is_socket(&self, pid: u32, fd: u32, inode: u64) -> bool {
        let link = self
            .root
            .join(pid.to_string())
            .join("fd")
            .join(fd.to_string());
        std::fs::read_link(link)
            .is_ok_and(|t| t.as_os_str() == format!("socket:[{inode}]").as_str())
    }

    /// The descriptors of `pid` that are sockets in `by_inode`, with what
    /// it holds for each.
    fn fds_of<T: Copy>(&self, pid: u32, by_inode: &HashMap<u64, T>) -> Vec<(u32, T)> {
        if by_inode.is_empty() {
            return Vec::new();
        }
        let Ok(process) = Process::new_with_root(self.root.join(pid.to_string())) else {
            return Vec::new();
        };
        let Ok(fds) = process.fd() else {
            return Vec::new();
        };
        fds.flatten()
            .filter_map(|fd| match fd.target {
                FDTarget::Socket(inode) => by_inode
                    .get(&inode)
                    .and_then(|&v| Some((u32::try_from(fd.fd).ok()?, v))),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, os::unix::fs::symlink};

    use super::Discovery;
    use crate::services::discovery::tests::{TCP, fake_proc};

    #[test]
    fn established_connections_of_a_process_are_found() {
        let root = fake_proc();
        let d = Discovery::new(&root);
        // Socket 2222 is established on local port 8080 and held by pid 13.
        assert_eq!(d.established_fds(13, &[8080].into()), vec![(7, 8080)]);
        assert!(d.established_fds(13, &[9999].into()).is_empty());
        assert!(d.established_fds(10, &[8080].into()).is_empty());
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn connections_a_process_opened_are_found_and_accepted_ones_are_not() {
        let root = fake_proc();
        // Pid 13 also holds 5555, from local port 50001 to 127.0.0.1:6379;
        // 2222 is on 8080, which its namespace listens on: accepted.
        let opened = "   3: 0100007F:C351 0100007F:18EB 01 00000000:00000000 00:00000000 00000000     0        0 5555 1 0000000000000000 20 4 30 10 -1\n";
        std::fs::write(root.join("13/net/tcp"), format!("{TCP}{opened}")).expect("tcp");
        symlink("socket:[5555]", root.join("13/fd/8")).expect("symlink");
        let d = Discovery::new(&root);
        let redis: SocketAddr = "127.0.0.1:6379".parse().expect("addr");
        assert_eq!(d.client_fds(13), vec![(8, 5555, redis)]);
        assert!(d.client_fds(10).is_empty());
        assert!(d.fd_is_socket(13, 8, 5555));
        assert!(!d.fd_is_socket(13, 8, 2222), "another socket now");
        assert!(!d.fd_is_socket(13, 9, 5555), "no such descriptor");
        std::fs::remove_dir_all(root).ok();
    }
}
