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
}

/// Every program in the object, in attach order.
pub const PROBES: &[Probe] = &[
    Probe {
        program: "inet_sock_set_state",
        category: "sock",
        tracepoint: "inet_sock_set_state",
        essential: true,
    },
    Probe {
        program: "sys_exit_accept4",
        category: "syscalls",
        tracepoint: "sys_exit_accept4",
        essential: false,
    },
    Probe {
        program: "sys_exit_accept",
        category: "syscalls",
        tracepoint: "sys_exit_accept",
        essential: false,
    },
    Probe {
        program: "sys_enter_close",
        category: "syscalls",
        tracepoint: "sys_enter_close",
        essential: false,
    },
];
