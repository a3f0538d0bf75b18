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

/// `Array<u32>` of [`TRACED_SLOTS`], indexed by `tgid % TRACED_SLOTS`: how
/// many processes of `PIDS` fall in that slot. The syscall programs, which
/// run for every process on the host, look here first: an array lookup
/// the verifier inlines, where a hash lookup costs a bystander's syscall
/// about a hundred nanoseconds more.
pub const TRACED: &str = "TRACED";
pub const TRACED_SLOTS: u32 = 65_536;

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

/// `HashMap<u64 pid_tgid, TlsCall>`: TLS library calls of monitored
/// processes between entry and return (one per thread at most).
pub const TLS_CALLS: &str = "TLS_CALLS";
pub const TLS_CALLS_MAX: u32 = 16_384;

/// `LruHashMap<SslKey, TlsCall>`: Go `crypto/tls` calls of monitored
/// processes between entry and a `RET`, keyed by goroutine (`g`): one
/// per goroutine at most. LRU: a goroutine that never returns is
/// forgotten.
pub const GO_CALLS: &str = "GO_CALLS";
pub const GO_CALLS_MAX: u32 = 16_384;

/// `LruHashMap<SslKey, u64>`: TLS objects on memory BIOs (Python's
/// asyncio, Node.js) tied to their connection, if no other object holds
/// it (`ConnInfo::ssl` or `TlsSock::ssl` says which one does). Keyed by
/// descriptor: the one the calling thread read last before the object's
/// first read that returned plaintext. With `Config::tls_sockets`: the
/// socket the thread sent its first write's ciphertext on
/// ([`TLS_PENDING`]); until then the value is 0, which says the object
/// has records the agent holds. Removed at `SSL_free`.
pub const TLS_LINKS: &str = "TLS_LINKS";
pub const TLS_LINKS_MAX: u32 = 65_536;

/// `LruHashMap<u64 pid_tgid, LastRead>`: keyed by descriptor, the
/// connection each thread of a monitored process read last.
pub const LAST_READS: &str = "LAST_READS";
pub const LAST_READS_MAX: u32 = 16_384;

/// `LruHashMap<u64 pid_tgid, PendingTie>`: with `Config::tls_sockets`,
/// the memory-BIO object each thread of a monitored process wrote through
/// last while it was not tied; the egress packet program ties it to the
/// TLS socket the thread sends its ciphertext on next.
pub const TLS_PENDING: &str = "TLS_PENDING";
pub const TLS_PENDING_MAX: u32 = 16_384;

/// `LruHashMap<u64 socket address, TlsSock>`: with `Config::tls_sockets`,
/// the sockets of monitored connections that a TLS library reads and
/// writes, from the first call that moved bytes to the connection's end
/// (`inet_sock_set_state`), which closes their plaintext stream.
pub const TLS_SOCKS: &str = "TLS_SOCKS";
pub const TLS_SOCKS_MAX: u32 = 65_536;

/// `Array<u32>` indexed by local port: non-zero when the cgroup_skb
/// programs capture that port's segments, and then the number of records
/// (of `events::DATA_CAP` bytes) a segment may become, at most
/// `events::MAX_CHUNKS`.
pub const CAPTURE_PORTS: &str = "CAPTURE_PORTS";
pub const CAPTURE_PORTS_MAX: u32 = 65_536;

/// `PerCpuArray<u64>` of 2 × [`crate::Verdict::SLOTS`]: server connections
/// per protocol verdict, then payload segments not copied per verdict.
pub const VERDICTS: &str = "VERDICTS";

/// `SkStorage<SockState>` (socket-local storage, a BTF map): the packet
/// programs' state per server socket, its verdict first.
pub const SOCK_STATE: &str = "SOCK_STATE";

/// `HashMap<u32 tgid, u32>`: the processes of monitored services, whose
/// outbound connections are counted in `POOLS` and, to `REMOTE_PORTS`,
/// captured.
pub const CLIENTS: &str = "CLIENTS";
pub const CLIENTS_MAX: u32 = 4096;

/// `Array<u32>` indexed by remote port: like `CAPTURE_PORTS`, for the
/// connections monitored processes open to that port (Redis servers).
/// With [`ADDR_ONLY`] set, only connections to an address of
/// `REMOTE_ADDRS` on that port are captured.
pub const REMOTE_PORTS: &str = "REMOTE_PORTS";

/// A `REMOTE_PORTS` value flag: the port is captured only towards the
/// addresses listed in `REMOTE_ADDRS` (`--redis-addr`), not to any host.
pub const ADDR_ONLY: u32 = 1 << 31;

/// `HashMap<RemoteAddr, u32>`: destinations captured by address and port
/// (`--redis-addr`); the value is unused (1).
pub const REMOTE_ADDRS: &str = "REMOTE_ADDRS";
pub const REMOTE_ADDRS_MAX: u32 = 256;

/// `LruHashMap<u64 socket cookie, u32 tgid>`: client connections to a
/// `REMOTE_PORTS` port, opened by a monitored process; their segments are
/// captured, unless the value has [`OUTBOUND_TLS`]. LRU: a socket's end
/// is not hooked here.
pub const OUTBOUND: &str = "OUTBOUND";
pub const OUTBOUND_MAX: u32 = 65_536;
/// Set in an `OUTBOUND` value by the TLS probes (`Config::tls_sockets`):
/// the connection's plaintext comes from its TLS library, so none of its
/// segments (ciphertext) is copied.
pub const OUTBOUND_TLS: u32 = 1 << 31;
/// Set in an `OUTBOUND` value when the connection was recognised as an
/// HTTP client's: each segment's head is copied (1 KiB and its last
/// bytes), not its whole payload, as for an HTTP server's; a download's
/// body does not fill the ring.
pub const OUTBOUND_HEAD: u32 = 1 << 30;
/// Set in an `OUTBOUND` value when the connection was recognised as an
/// HTTP/2 client's (its preface, or frames on a connection older than the
/// agent): its frame headers are followed, DATA payloads not copied.
pub const OUTBOUND_H2: u32 = 1 << 29;
/// Set in an `OUTBOUND` value when the connection was recognised by a TLS
/// client's handshake (with `Config::tls_sockets`): none of its segments
/// is copied, its plaintext coming from the library once a call ties it.
pub const OUTBOUND_HELLO: u32 = 1 << 28;
/// The flag bits of an `OUTBOUND` value; the rest is the tgid.
pub const OUTBOUND_FLAGS: u32 = OUTBOUND_TLS | OUTBOUND_HEAD | OUTBOUND_H2 | OUTBOUND_HELLO;

/// `Array<u32>` indexed by remote port: nonzero once a monitored process
/// has opened a connection to that port that `REMOTE_PORTS` does not
/// capture (set by the connect hooks, when `Config::detect_resp` is on).
/// The packet programs look up the socket in [`WATCHED`] only on such
/// ports, so other traffic pays one more array lookup and nothing else.
pub const WATCHED_PORTS: &str = "WATCHED_PORTS";

/// `LruHashMap<u64 socket cookie, events::ConnectEvent>`: connections of
/// monitored processes to ports not captured, until their first payload.
/// If the client sends first and its first byte starts a RESP array
/// (`*`), the packet program moves the socket to `OUTBOUND` and emits the
/// stored connect record; any other first payload ends the watch. LRU: a
/// connection that never sends is forgotten by eviction.
pub const WATCHED: &str = "WATCHED";
pub const WATCHED_MAX: u32 = 4096;

/// `HashMap<u64 sock address, PoolKey>`: outbound sockets of monitored
/// processes, counted as opened and not yet closed.
pub const OUT_SOCKETS: &str = "OUT_SOCKETS";
pub const OUT_SOCKETS_MAX: u32 = 65_536;

/// `LruHashMap<u64 sock address, PoolKey>`: outbound sockets just closed
/// (moved from `OUT_SOCKETS`), so the retransmissions of their FIN and the
/// reset an abortive close sends, which come after the state change, still
/// count in their pool. A hit must match the event's destination.
pub const OUT_CLOSED: &str = "OUT_CLOSED";
pub const OUT_CLOSED_MAX: u32 = 4096;

/// `PerCpuHashMap<PoolKey, PoolCounters>`: outbound connections per
/// process and destination.
pub const POOLS: &str = "POOLS";
pub const POOLS_MAX: u32 = 4096;

/// `RingBuf` of `events::EventHeader`- or `events::PacketHeader`-prefixed
/// records.
pub const EVENTS: &str = "EVENTS";

/// `Array<Config>` with one element.
pub const CONFIG: &str = "CONFIG";

/// `PerCpuArray<u64>` indexed by [`crate::DropReason`].
pub const DROPS: &str = "DROPS";

/// `PerCpuArray<u64>` with one element: TCP sockets that entered or left
/// the LISTEN state. Listener discovery rereads procfs when it changes.
pub const LISTEN_CHANGES: &str = "LISTEN_CHANGES";

/// Where a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// The tracepoint `category:name`.
    Tracepoint {
        category: &'static str,
        name: &'static str,
    },
    /// cgroup_skb ingress on the cgroup-v2 root.
    CgroupSkbIngress,
    /// cgroup_skb egress on the cgroup-v2 root.
    CgroupSkbEgress,
    /// cgroup_sock_addr connect4 on the cgroup-v2 root.
    CgroupConnect4,
    /// cgroup_sock_addr connect6 on the cgroup-v2 root.
    CgroupConnect6,
}

/// What a program is for, which decides when the agent attaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Connection counting; attached in every mode. Without it apm has no
    /// eBPF data at all.
    Connections,
    /// accept/close: descriptor state for the syscall capture.
    SyscallState,
    /// read/write families: request bytes for the syscall capture.
    SyscallData,
    /// Packets of monitored ports: request bytes for the packet capture.
    PacketData,
    /// connect() of monitored processes: which client connections to
    /// capture, and whose they are (packet capture; optional).
    Outbound,
    /// Read entries on tracked descriptors, noting which socket each
    /// thread reads, to tie memory-BIO TLS objects to it (the packet
    /// capture with TLS keyed by descriptor; the syscall capture's read
    /// programs note it themselves).
    TlsReads,
    /// Retransmissions and resets per port and pool: attached in every
    /// mode, fire only on those events; without them the rest works.
    TcpHealth,
}

/// One kernel program: its name in the object, its hook and its role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub program: &'static str,
    pub hook: Hook,
    pub role: Role,
}

/// The TLS uprobe programs and the OpenSSL functions they probe; the
/// agent attaches them per monitored process, not through [`PROBES`].
pub const TLS_ENTRIES: [(&str, &str); 4] = [
    ("ssl_read", "SSL_read"),
    ("ssl_read_ex", "SSL_read_ex"),
    ("ssl_write", "SSL_write"),
    ("ssl_write_ex", "SSL_write_ex"),
];
/// The return probe attached to every function of [`TLS_ENTRIES`].
pub const TLS_RETURN: &str = "ssl_return";
/// The probe on `SSL_free`, which unties an object from its socket.
pub const TLS_FREE: (&str, &str) = ("ssl_free", "SSL_free");
/// The Go `crypto/tls` entry programs and the functions they probe.
pub const GO_TLS_ENTRIES: [(&str, &str); 2] = [
    ("go_tls_read", "crypto/tls.(*Conn).Read"),
    ("go_tls_write", "crypto/tls.(*Conn).Write"),
];
/// The program attached at every `RET` of the [`GO_TLS_ENTRIES`].
pub const GO_TLS_RETURN: &str = "go_tls_return";
/// Every TLS uprobe program.
pub const TLS_PROGRAMS: [&str; 9] = [
    TLS_ENTRIES[0].0,
    TLS_ENTRIES[1].0,
    TLS_ENTRIES[2].0,
    TLS_ENTRIES[3].0,
    TLS_RETURN,
    TLS_FREE.0,
    GO_TLS_ENTRIES[0].0,
    GO_TLS_ENTRIES[1].0,
    GO_TLS_RETURN,
];

/// Every program in the object, in attach order.
pub const PROBES: &[Probe] = &[
    Probe {
        program: "inet_sock_set_state",
        hook: Hook::Tracepoint {
            category: "sock",
            name: "inet_sock_set_state",
        },
        role: Role::Connections,
    },
    tcp_health("tcp_retransmit_skb"),
    tcp_health("tcp_retransmit_synack"),
    tcp_health("tcp_send_reset"),
    tcp_health("tcp_receive_reset"),
    Probe {
        program: "capture_ingress",
        hook: Hook::CgroupSkbIngress,
        role: Role::PacketData,
    },
    Probe {
        program: "capture_egress",
        hook: Hook::CgroupSkbEgress,
        role: Role::PacketData,
    },
    Probe {
        program: "connect4",
        hook: Hook::CgroupConnect4,
        role: Role::Outbound,
    },
    Probe {
        program: "connect6",
        hook: Hook::CgroupConnect6,
        role: Role::Outbound,
    },
    syscall("sys_enter_accept4", Role::SyscallState),
    syscall("sys_exit_accept4", Role::SyscallState),
    syscall("sys_enter_accept", Role::SyscallState),
    syscall("sys_exit_accept", Role::SyscallState),
    syscall("sys_enter_close", Role::SyscallState),
    syscall("sys_enter_connect", Role::SyscallState),
    syscall("sys_enter_read", Role::SyscallData),
    syscall("sys_exit_read", Role::SyscallData),
    syscall("sys_enter_readv", Role::SyscallData),
    syscall("sys_exit_readv", Role::SyscallData),
    syscall("sys_enter_recvfrom", Role::SyscallData),
    syscall("sys_exit_recvfrom", Role::SyscallData),
    syscall("sys_enter_recvmsg", Role::SyscallData),
    syscall("sys_exit_recvmsg", Role::SyscallData),
    syscall("sys_enter_write", Role::SyscallData),
    syscall("sys_exit_write", Role::SyscallData),
    syscall("sys_enter_writev", Role::SyscallData),
    syscall("sys_exit_writev", Role::SyscallData),
    syscall("sys_enter_sendto", Role::SyscallData),
    syscall("sys_exit_sendto", Role::SyscallData),
    syscall("sys_enter_sendmsg", Role::SyscallData),
    syscall("sys_exit_sendmsg", Role::SyscallData),
    syscall("sys_enter_sendfile64", Role::SyscallData),
    syscall("sys_exit_sendfile64", Role::SyscallData),
    tls_reads("tls_note_read", "sys_enter_read"),
    tls_reads("tls_note_readv", "sys_enter_readv"),
    tls_reads("tls_note_recvfrom", "sys_enter_recvfrom"),
    tls_reads("tls_note_recvmsg", "sys_enter_recvmsg"),
];

/// A program of [`Role::TlsReads`] on a `syscalls:` tracepoint.
const fn tls_reads(program: &'static str, name: &'static str) -> Probe {
    Probe {
        program,
        hook: Hook::Tracepoint {
            category: "syscalls",
            name,
        },
        role: Role::TlsReads,
    }
}

/// A `tcp:` tracepoint of [`Role::TcpHealth`] whose program has its name.
const fn tcp_health(name: &'static str) -> Probe {
    Probe {
        program: name,
        hook: Hook::Tracepoint {
            category: "tcp",
            name,
        },
        role: Role::TcpHealth,
    }
}

/// A `syscalls:` tracepoint whose program has the tracepoint's name.
const fn syscall(name: &'static str, role: Role) -> Probe {
    Probe {
        program: name,
        hook: Hook::Tracepoint {
            category: "syscalls",
            name,
        },
        role,
    }
}
