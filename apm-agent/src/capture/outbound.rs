//! The kernel maps behind outbound connections: which processes are
//! clients worth following (`CLIENTS`), which remote ports their
//! connections are captured to (`REMOTE_PORTS`), which connections are
//! watched for RESP (`WATCHED`), and their connection pools per
//! destination (`POOLS`).

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use apm_common::{
    PoolCounters, PoolKey, RemoteAddr,
    events::{ConnectEvent, EventKind},
    maps::{self as names, ADDR_ONLY},
};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuHashMap},
};

use super::kernel::{KernelError, map_err, take_map};

pub struct Outbound {
    clients: BpfHashMap<MapData, u32, u32>,
    remote_ports: Array<MapData, u32>,
    remote_addrs: BpfHashMap<MapData, RemoteAddr, u32>,
    watched: BpfHashMap<MapData, u64, ConnectEvent>,
    watched_ports: Array<MapData, u32>,
    pools: PerCpuHashMap<MapData, PoolKey, PoolCounters>,
    /// What `clients` holds.
    known: BTreeSet<u32>,
    /// Ports of connections opened before the agent saw them that the
    /// agent could not follow (see [`Outbound::watch`]): no pool counts
    /// them and their close is not seen, so their flags stay set for good.
    pinned: BTreeSet<u16>,
}

/// One pool: a process's open connections to one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub tgid: u32,
    pub addr: IpAddr,
    pub port: u16,
    pub active: u64,
    /// Its counters, summed over CPUs.
    pub counters: PoolCounters,
    pub key: PoolKey,
}

impl Outbound {
    pub(super) fn new(ebpf: &mut Ebpf) -> Result<Self, KernelError> {
        Ok(Self {
            clients: take_map(ebpf, names::CLIENTS)?,
            remote_ports: take_map(ebpf, names::REMOTE_PORTS)?,
            remote_addrs: take_map(ebpf, names::REMOTE_ADDRS)?,
            watched: take_map(ebpf, names::WATCHED)?,
            watched_ports: take_map(ebpf, names::WATCHED_PORTS)?,
            pools: take_map(ebpf, names::POOLS)?,
            known: BTreeSet::new(),
            pinned: BTreeSet::new(),
        })
    }

    /// Makes `tgids` the client processes; returns how many did not fit,
    /// and the ones that are new.
    pub fn set_clients(&mut self, tgids: &BTreeSet<u32>) -> (usize, Vec<u32>) {
        for gone in self.known.difference(tgids) {
            let _ = self.clients.remove(gone);
        }
        let (mut refused, mut added) = (0, Vec::new());
        let mut now = BTreeSet::new();
        for &tgid in tgids {
            if self.known.contains(&tgid) {
                now.insert(tgid);
            } else if self.clients.insert(tgid, 1, 0).is_ok() {
                now.insert(tgid);
                added.push(tgid);
            } else {
                refused += 1;
            }
        }
        self.known = now;
        (refused, added)
    }

    /// Whether the connect hooks capture a connection to `addr` from the
    /// start (`--redis-port`, `--redis-addr`).
    pub fn listed(&self, addr: SocketAddr) -> bool {
        let Ok(value) = self.remote_ports.get(&u32::from(addr.port()), 0) else {
            return false;
        };
        value != 0
            && (value & ADDR_ONLY == 0 || self.remote_addrs.get(&remote_addr(addr), 0).is_ok())
    }

    /// Watches connection `cookie` of process `tgid` to `addr`, opened
    /// before its connect could be seen, as the connect hooks watch a new
    /// one: captured from its first payload if that is a RESP command.
    /// Its port's flag is cleared by [`Outbound::prune_watched_ports`]
    /// once the connection is no longer among the `open` ports passed to
    /// it, or never when `pin` (the caller does not follow it).
    pub fn watch(
        &mut self,
        cookie: u64,
        tgid: u32,
        addr: SocketAddr,
        pin: bool,
    ) -> Result<(), KernelError> {
        let event = ConnectEvent {
            kind: EventKind::Connect as u32,
            tgid,
            cookie,
            addr: mapped(addr.ip()),
            port: addr.port(),
            descriptor: 0,
            joined: 1,
            _pad: [0; 4],
        };
        self.watched
            .insert(cookie, event, 0)
            .map_err(map_err(names::WATCHED))?;
        if pin {
            self.pinned.insert(addr.port());
        }
        self.watched_ports
            .set(u32::from(addr.port()), 1, 0)
            .map_err(map_err(names::WATCHED_PORTS))
    }

    /// Clears the `WATCHED_PORTS` flag of every port that no connection
    /// uses any more (`open`: the ports of the connections opened before
    /// the agent that are still open); returns how many were cleared. A
    /// connect hook flags
    /// its port for good, and each packet on a flagged port pays for a
    /// socket lookup.
    ///
    /// A full pass over the 65 536 flags, one lookup each, so the agent
    /// runs it rarely; it only reads. The few ports it finds unused are
    /// then checked again and cleared, and a connect hook that races the
    /// clearing (it puts its socket in `WATCHED` before it sets the flag,
    /// and in a pool at SYN_SENT before its first payload can move it from
    /// `WATCHED` to `OUTBOUND`) has its port flagged again at once: the
    /// flag is off for the few map operations in between, not for the
    /// whole pass.
    pub fn prune_watched_ports(&mut self, open: &BTreeSet<u16>) -> usize {
        let in_use = self.ports_in_use(open);
        let unused: Vec<u16> = (0..=u16::MAX)
            .filter(|&port| {
                !in_use.contains(&port)
                    && self
                        .watched_ports
                        .get(&u32::from(port), 0)
                        .is_ok_and(|v| v != 0)
            })
            .collect();
        if unused.is_empty() {
            return 0;
        }
        let in_use = self.ports_in_use(open);
        let mut cleared: Vec<u16> = unused
            .into_iter()
            .filter(|p| !in_use.contains(p))
            .filter(|&p| self.watched_ports.set(u32::from(p), 0, 0).is_ok())
            .collect();
        let now = self.ports_in_use(open);
        for &port in cleared.iter().filter(|p| now.contains(p)) {
            let _ = self.watched_ports.set(u32::from(port), 1, 0);
        }
        cleared.retain(|p| !now.contains(p));
        cleared.len()
    }

    /// Ports a flag must stay on for: those of the connections in
    /// `WATCHED`, of pools with connections open (recognised connections
    /// among them), of `open` and the pinned ones.
    fn ports_in_use(&self, open_before: &BTreeSet<u16>) -> BTreeSet<u16> {
        let watched = self.watched.iter().flatten().map(|(_, event)| event.port);
        let open = self
            .pools()
            .into_iter()
            .filter(|p| p.active > 0)
            .map(|p| p.port);
        watched
            .chain(open)
            .chain(self.pinned.iter().copied())
            .chain(open_before.iter().copied())
            .collect()
    }

    /// Captures client connections to remote `port`, `chunks` records per
    /// segment.
    pub fn capture_remote_port(&mut self, port: u16, chunks: u32) -> Result<(), KernelError> {
        self.set_remote_port(port, chunks, 0)
    }

    /// `REMOTE_PORTS[port]`: `chunks` (1 to MAX_CHUNKS) with `flags`.
    fn set_remote_port(&mut self, port: u16, chunks: u32, flags: u32) -> Result<(), KernelError> {
        let chunks = chunks.clamp(1, apm_common::events::MAX_CHUNKS);
        self.remote_ports
            .set(u32::from(port), chunks | flags, 0)
            .map_err(map_err(names::REMOTE_PORTS))
    }

    /// Captures client connections to `addr` only (not to other hosts on
    /// its port, unless the port is captured as a whole).
    pub fn capture_remote_addr(
        &mut self,
        addr: SocketAddr,
        chunks: u32,
    ) -> Result<(), KernelError> {
        self.remote_addrs
            .insert(remote_addr(addr), 1, 0)
            .map_err(map_err(names::REMOTE_ADDRS))?;
        let whole_port = self
            .remote_ports
            .get(&u32::from(addr.port()), 0)
            .is_ok_and(|v| v != 0 && v & ADDR_ONLY == 0);
        if whole_port {
            return Ok(());
        }
        self.set_remote_port(addr.port(), chunks, ADDR_ONLY)
    }

    /// Every pool, summed over CPUs.
    pub fn pools(&self) -> Vec<Pool> {
        self.pools
            .iter()
            .flatten()
            .map(|(key, per_cpu)| {
                let c = per_cpu.iter().fold(PoolCounters::default(), |a, v| a + *v);
                Pool {
                    tgid: key.tgid,
                    addr: apm_common::events::ip_of(key.addr),
                    port: key.port,
                    active: c.opened.saturating_sub(c.closed),
                    counters: c,
                    key,
                }
            })
            .collect()
    }

    /// Forgets a pool with no open connection whose process is gone.
    pub fn forget(&mut self, pool: &Pool) {
        let _ = self.pools.remove(&pool.key);
    }
}

/// `addr` as the kernel side keys it.
fn remote_addr(addr: SocketAddr) -> RemoteAddr {
    RemoteAddr {
        addr: mapped(addr.ip()),
        port: addr.port(),
        _pad: [0; 6],
    }
}

/// An address as the kernel side stores it: IPv4 as `::ffff:a.b.c.d`.
fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}
