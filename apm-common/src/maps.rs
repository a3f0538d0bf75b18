//! Names and sizes of the BPF maps and programs, shared so that the kernel
//! side declares exactly what the agent looks up. Sizes bound the kernel
//! memory apm can use; every failed insert is counted in `DROPS`.

/// `PerCpuHashMap<u16 port, PortCounters>`: the ports being counted.
pub const PORTS: &str = "PORTS";
pub const PORTS_MAX: u32 = 1024;

/// `HashMap<u64 sock address, SocketInfo>`: server-side sockets counted as
/// accepted and not yet closed.
pub const SOCKETS: &str = "SOCKETS";
pub const SOCKETS_MAX: u32 = 65_536;

/// `PerCpuHashMap<u32 tgid, PidCounters>`: processes whose syscalls are traced.
pub const PIDS: &str = "PIDS";
pub const PIDS_MAX: u32 = 4096;

/// `LruHashMap<ConnKey, ConnInfo>`: descriptors returned by accept in
/// tracked processes. LRU because a process that exits never calls close.
pub const CONNS: &str = "CONNS";
pub const CONNS_MAX: u32 = 65_536;

/// `LruHashMap<PeerKey, u16 local port>`: remote ends of connections just
/// established, so accept can learn its connection's local port.
pub const PEERS: &str = "PEERS";
pub const PEERS_MAX: u32 = 16_384;

/// `HashMap<u64 pid_tgid, InFlight>`: syscalls on tracked descriptors
/// between enter and exit (one per thread at most).
pub const INFLIGHT: &str = "INFLIGHT";
pub const INFLIGHT_MAX: u32 = 16_384;

/// `RingBuf` of `events::EventHeader`-prefixed records.
pub const EVENTS: &str = "EVENTS";

/// `Array<Config>` with one element.
pub const CONFIG: &str = "CONFIG";

/// `PerCpuArray<u64>` indexed by [`crate::Drop`].
pub const DROPS: &str = "DROPS";

/// One kernel program: its name in the object and the tracepoint it attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub program: &'static str,
    pub category: &'static str,
    pub tracepoint: &'static str,
    /// Without this probe apm has no connection counts at all.
    pub essential: bool,
    /// Only needed for HTTP request timing (the read/write family); the
    /// agent leaves these out with `--no-http`.
    pub http: bool,
}

/// Every program in the object, in attach order.
pub const PROBES: &[Probe] = &[
    essential("inet_sock_set_state", "sock", "inet_sock_set_state"),
    syscall("sys_enter_accept4"),
    syscall("sys_exit_accept4"),
    syscall("sys_enter_accept"),
    syscall("sys_exit_accept"),
    syscall("sys_enter_close"),
    io("sys_enter_read"),
    io("sys_exit_read"),
    io("sys_enter_readv"),
    io("sys_exit_readv"),
    io("sys_enter_recvfrom"),
    io("sys_exit_recvfrom"),
    io("sys_enter_recvmsg"),
    io("sys_exit_recvmsg"),
    io("sys_enter_write"),
    io("sys_exit_write"),
    io("sys_enter_writev"),
    io("sys_exit_writev"),
    io("sys_enter_sendto"),
    io("sys_exit_sendto"),
    io("sys_enter_sendmsg"),
    io("sys_exit_sendmsg"),
    io("sys_enter_sendfile64"),
    io("sys_exit_sendfile64"),
];

const fn essential(
    program: &'static str,
    category: &'static str,
    tracepoint: &'static str,
) -> Probe {
    Probe {
        program,
        category,
        tracepoint,
        essential: true,
        http: false,
    }
}

/// A `syscalls:` tracepoint whose program has the tracepoint's name.
const fn syscall(name: &'static str) -> Probe {
    Probe {
        program: name,
        category: "syscalls",
        tracepoint: name,
        essential: false,
        http: false,
    }
}

/// A read/write-family `syscalls:` tracepoint, needed only for HTTP.
const fn io(name: &'static str) -> Probe {
    Probe {
        http: true,
        ..syscall(name)
    }
}
