//! The maps, sized from `apm_common::maps`. The agent finds them by name.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};

use apm_common::{
    Config, ConnInfo, ConnKey, DropReason, InFlight, LastRead, PeerKey, PendingTie, PidCounters,
    PoolCounters, PoolKey, PortCounters, RemoteAddr, SocketInfo, SslKey, TlsCall, TlsSock, Verdict,
    events::{ConnectEvent, RINGBUF_BYTES},
    maps::{
        CAPTURE_PORTS_MAX, CLIENTS_MAX, CONNS_MAX, GO_CALLS_MAX, INFLIGHT_MAX, LAST_READS_MAX,
        OUT_CLOSED_MAX, OUT_SOCKETS_MAX, OUTBOUND_MAX, PEERS_MAX, PIDS_MAX, POOLS_MAX, PORTS_MAX,
        REMOTE_ADDRS_MAX, SOCKETS_MAX, TLS_CALLS_MAX, TLS_LINKS_MAX, TLS_PENDING_MAX,
        TLS_SOCKS_MAX, TRACED_SLOTS, WATCHED_MAX,
    },
};

use crate::probes::h2::H2Dir;

#[map]
pub static PORTS: PerCpuHashMap<u16, PortCounters> = PerCpuHashMap::with_max_entries(PORTS_MAX, 0);

#[map]
pub static SOCKETS: HashMap<u64, SocketInfo> = HashMap::with_max_entries(SOCKETS_MAX, 0);

#[map]
pub static PIDS: PerCpuHashMap<u32, PidCounters> = PerCpuHashMap::with_max_entries(PIDS_MAX, 0);

#[map]
pub static TRACED: Array<u32> = Array::with_max_entries(TRACED_SLOTS, 0);

#[map]
pub static CONNS: LruHashMap<ConnKey, ConnInfo> = LruHashMap::with_max_entries(CONNS_MAX, 0);

#[map]
pub static PEERS: LruHashMap<PeerKey, u16> = LruHashMap::with_max_entries(PEERS_MAX, 0);

#[map]
pub static INFLIGHT: HashMap<u64, InFlight> = HashMap::with_max_entries(INFLIGHT_MAX, 0);

#[map]
pub static TLS_CALLS: HashMap<u64, TlsCall> = HashMap::with_max_entries(TLS_CALLS_MAX, 0);

#[map]
pub static GO_CALLS: LruHashMap<SslKey, TlsCall> = LruHashMap::with_max_entries(GO_CALLS_MAX, 0);

#[map]
pub static TLS_LINKS: LruHashMap<SslKey, u64> = LruHashMap::with_max_entries(TLS_LINKS_MAX, 0);

/// HTTP/2 over TLS: each direction's frame following, by the library's
/// object (`tls_h2`).
#[map]
pub static TLS_H2: LruHashMap<SslKey, [H2Dir; 2]> = LruHashMap::with_max_entries(TLS_LINKS_MAX, 0);

#[map]
pub static TLS_PENDING: LruHashMap<u64, PendingTie> =
    LruHashMap::with_max_entries(TLS_PENDING_MAX, 0);

#[map]
pub static TLS_SOCKS: LruHashMap<u64, TlsSock> = LruHashMap::with_max_entries(TLS_SOCKS_MAX, 0);

#[map]
pub static LAST_READS: LruHashMap<u64, LastRead> = LruHashMap::with_max_entries(LAST_READS_MAX, 0);

#[map]
pub static CAPTURE_PORTS: Array<u32> = Array::with_max_entries(CAPTURE_PORTS_MAX, 0);

#[map]
pub static CLIENTS: HashMap<u32, u32> = HashMap::with_max_entries(CLIENTS_MAX, 0);

#[map]
pub static REMOTE_PORTS: Array<u32> = Array::with_max_entries(CAPTURE_PORTS_MAX, 0);

#[map]
pub static REMOTE_ADDRS: HashMap<RemoteAddr, u32> = HashMap::with_max_entries(REMOTE_ADDRS_MAX, 0);

#[map]
pub static OUTBOUND: LruHashMap<u64, u32> = LruHashMap::with_max_entries(OUTBOUND_MAX, 0);

#[map]
pub static WATCHED_PORTS: Array<u32> = Array::with_max_entries(CAPTURE_PORTS_MAX, 0);

#[map]
pub static WATCHED: LruHashMap<u64, ConnectEvent> = LruHashMap::with_max_entries(WATCHED_MAX, 0);

#[map]
pub static OUT_SOCKETS: HashMap<u64, PoolKey> = HashMap::with_max_entries(OUT_SOCKETS_MAX, 0);

#[map]
pub static OUT_CLOSED: LruHashMap<u64, PoolKey> = LruHashMap::with_max_entries(OUT_CLOSED_MAX, 0);

#[map]
pub static POOLS: PerCpuHashMap<PoolKey, PoolCounters> =
    PerCpuHashMap::with_max_entries(POOLS_MAX, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RINGBUF_BYTES, 0);

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::SLOTS, 0);

/// Server connections per verdict, then segments not copied per verdict
/// (`apm_common::Verdict`).
#[map]
pub static VERDICTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2 * Verdict::SLOTS, 0);

#[map]
pub static LISTEN_CHANGES: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Whether every tracked descriptor's accept and close go to the agent
/// (the syscall capture), not only a TLS descriptor's close.
#[inline(always)]
pub fn descriptor_records() -> bool {
    CONFIG.get(0).is_some_and(|c| c.descriptor_records != 0)
}

/// Whether process `tgid` may be traced (in `PIDS`): false for nearly
/// every other process, for the price of an inlined array lookup.
#[inline(always)]
pub fn maybe_traced(tgid: u32) -> bool {
    TRACED.get(tgid % TRACED_SLOTS).is_some_and(|&n| n != 0)
}

/// The counters of process `tgid` if it is traced; other processes are
/// turned away by [`maybe_traced`] before the hash lookup.
#[inline(always)]
pub fn traced(tgid: u32) -> Option<*mut PidCounters> {
    if !maybe_traced(tgid) {
        return None;
    }
    PIDS.get_ptr_mut(tgid)
}

/// Counts one thing the kernel side had to give up on.
#[inline(always)]
pub fn count_drop(reason: DropReason) {
    if let Some(slot) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array, valid for
        // the program's run; programs do not migrate between CPUs mid-run and
        // the kernel does not nest tracepoint programs on one CPU.
        unsafe { *slot += 1 };
    }
}
