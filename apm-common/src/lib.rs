//! Types shared by apm's eBPF programs (`apm-ebpf`) and its agent
//! (`apm-agent`).
//!
//! Every type here is `#[repr(C)]`, `Copy`, made of fixed-size integers with
//! no implicit padding, and has its size checked at compile time, so the
//! kernel and user views of a map value can never drift apart silently.
//! Map names are constants so both sides spell them the same way.
#![no_std]

pub mod events;
pub mod maps;
mod tls;
pub mod tracepoints;
mod verdict;

pub use tls::*;
pub use verdict::*;

/// TCP states as `sock:inet_sock_set_state` reports them (include/net/tcp_states.h).
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const SYN_RECV: i32 = 3;
    pub const FIN_WAIT1: i32 = 4;
    pub const CLOSE: i32 = 7;
    pub const CLOSE_WAIT: i32 = 8;
    pub const LISTEN: i32 = 10;
}

/// `IPPROTO_TCP`: the only protocol apm counts connections for.
pub const IPPROTO_TCP: u16 = 6;

/// Per-CPU connection counters of one monitored local port (value of
/// [`maps::PORTS`]). The agent sums the CPUs' copies.
///
/// `accepted` counts server-side connections that reached ESTABLISHED
/// (SYN_RECV -> ESTABLISHED). `closed` counts those that then left the
/// established set, {ESTABLISHED, CLOSE_WAIT}, the same set the kernel's
/// `CurrEstab` MIB counter uses. Active is `accepted - closed`.
///
/// The TCP health counters are by local port, whatever the socket's state:
/// segments retransmitted (SYN-ACKs included) and resets sent and received.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub accepted: u64,
    pub closed: u64,
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
}
const _: () = assert!(core::mem::size_of::<PortCounters>() == 40);

impl core::ops::Add for PortCounters {
    type Output = Self;
    /// Two CPUs' copies summed.
    fn add(self, o: Self) -> Self {
        Self {
            accepted: self.accepted + o.accepted,
            closed: self.closed + o.closed,
            retransmits: self.retransmits + o.retransmits,
            resets_sent: self.resets_sent + o.resets_sent,
            resets_received: self.resets_received + o.resets_received,
        }
    }
}

/// One outbound connection pool: a monitored process (tgid) and a
/// destination (key of [`maps::POOLS`] and value of [`maps::OUT_SOCKETS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Destination address; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    pub tgid: u32,
    /// Destination port, host byte order.
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<PoolKey>() == 24);

/// A destination captured by address (key of `maps::REMOTE_ADDRS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteAddr {
    /// IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<RemoteAddr>() == 24);

/// Per-CPU counters of one pool: connections opened (CLOSE -> SYN_SENT, in
/// the connecting task) and closed (left {SYN_SENT, ESTABLISHED,
/// CLOSE_WAIT}). Active is `opened - closed`. `connect_failures` counts
/// those closed from SYN_SENT (refused, timed out or given up); the rest
/// is TCP health as in [`PortCounters`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolCounters {
    pub opened: u64,
    pub closed: u64,
    pub connect_failures: u64,
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
}
const _: () = assert!(core::mem::size_of::<PoolCounters>() == 48);

impl core::ops::Add for PoolCounters {
    type Output = Self;
    /// Two CPUs' copies summed.
    fn add(self, o: Self) -> Self {
        Self {
            opened: self.opened + o.opened,
            closed: self.closed + o.closed,
            connect_failures: self.connect_failures + o.connect_failures,
            retransmits: self.retransmits + o.retransmits,
            resets_sent: self.resets_sent + o.resets_sent,
            resets_received: self.resets_received + o.resets_received,
        }
    }
}

/// What the kernel remembers of one counted socket (value of
/// [`maps::SOCKETS`], keyed by the socket's kernel address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketInfo {
    /// Local (listening) port, host byte order.
    pub port: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<SocketInfo>() == 8);

/// Per-CPU syscall counters of one tracked process (value of
/// [`maps::PIDS`], keyed by tgid). The agent creates the entry when it starts
/// tracking the process; the kernel only updates existing entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PidCounters {
    /// Successful accept()/accept4() calls.
    pub accepts: u64,
    /// close() calls on a descriptor that an accept returned.
    pub closes: u64,
}
const _: () = assert!(core::mem::size_of::<PidCounters>() == 16);

/// A connection as the process sees it: its tgid and the descriptor that
/// accept returned (key of [`maps::CONNS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: u32,
}
const _: () = assert!(core::mem::size_of::<ConnKey>() == 8);

/// State of one tracked connection, accepted or (a client's) connected
/// (value of [`maps::CONNS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnInfo {
    /// `bpf_ktime_get_ns()` at accept exit (0 for connections the agent
    /// seeded from procfs).
    pub accepted_ns: u64,
    /// Local port (a client's: the remote port), host byte order; 0
    /// when unknown.
    pub port: u16,
    /// [`conn_flags`].
    pub flags: u8,
    pub _pad: [u8; 5],
    /// The TLS library object (`SSL *`) tied to this descriptor through
    /// a memory BIO ([`maps::TLS_LINKS`]); 0 when none is.
    pub ssl: u64,
}
const _: () = assert!(core::mem::size_of::<ConnInfo>() == 24);

/// Bits of [`ConnInfo::flags`].
pub mod conn_flags {
    /// A TLS library reads and writes this descriptor: its plaintext comes
    /// from the library's probes, so the syscall capture skips its bytes.
    pub const TLS: u8 = 1;
    /// The syscall capture looked at the first bytes read (a TLS
    /// handshake record sets [`TLS`]: the ciphertext is no parser's).
    pub const DECIDED: u8 = 2;
    /// The process connected this descriptor (to a captured remote
    /// port): `ConnInfo::port` is the remote port, and its reads are the
    /// responses.
    pub const CLIENT: u8 = 4;
}

/// The remote end of a server-side connection, as both
/// `inet_sock_set_state` and accept's sockaddr show it: IPv4 addresses are
/// stored IPv4-mapped (`::ffff:a.b.c.d`), the port in host byte order.
/// Key of [`maps::PEERS`], whose value is the local port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<PeerKey>() == 24);

/// A syscall on a tracked descriptor between its enter and exit
/// (value of [`maps::INFLIGHT`], keyed by pid_tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    /// User pointer: the buffer, the iovec array, the msghdr or the
    /// sockaddr, depending on `shape`.
    pub ptr: u64,
    pub fd: u32,
    /// One of the `shape` constants.
    pub shape: u16,
    pub port: u16,
    /// iovec count for writev.
    pub vlen: u32,
    /// 1: the descriptor's first read is still to be looked at
    /// ([`conn_flags::DECIDED`]).
    pub undecided: u32,
}
const _: () = assert!(core::mem::size_of::<InFlight>() == 24);

/// How an [`InFlight`] pointer is to be read.
pub mod shape {
    pub const BUF: u16 = 1;
    pub const IOVEC: u16 = 2;
    pub const MSGHDR: u16 = 3;
    pub const SENDFILE: u16 = 4;
    pub const SOCKADDR: u16 = 5;
}

/// Agent-to-kernel settings (the single element of [`maps::CONFIG`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// 1: count every listening port on the host (ports are added to
    /// [`maps::PORTS`] by the kernel on first connection); 0: count only
    /// ports the agent put there.
    pub all_ports: u32,
    /// The programs wake the ring's reader each time a record takes the
    /// producer position across a multiple of 2^wake_shift bytes
    /// ([`events::WAKE_STEP_BYTES`], or a quarter of a smaller ring): it
    /// otherwise drains on its own timer. 0: never.
    pub wake_shift: u32,
    /// 1: a monitored process's connection to a port not captured is
    /// watched until its first payload, and captured as a Redis client's
    /// when that is a RESP command (see [`maps::WATCHED`]); 0: only the
    /// ports and addresses the agent lists are.
    pub detect_resp: u32,
    /// 1: accept and close records for every tracked descriptor (the
    /// syscall capture); 0: close records only for descriptors a TLS
    /// library uses (the packet capture, whose TLS plaintext is keyed by
    /// descriptor).
    pub descriptor_records: u32,
    /// 1: a monitored process's connect() to a captured remote port is
    /// tracked by descriptor too (`CONNS`, a [`conn_flags::CLIENT`] entry,
    /// and a connect record keyed by descriptor), for its TLS plaintext.
    pub client_descriptors: u32,
    /// 1: TLS plaintext is keyed by socket cookie, as packets are: the
    /// probes find a descriptor's socket through the task's file table
    /// (`layout`), so no syscall tracepoint is attached for TLS.
    pub tls_sockets: u32,
    pub layout: KernelLayout,
    /// Offset in `struct sk_buff` of `TCP_SKB_CB(skb)->tcp_gso_segs`, the
    /// segments a retransmitted buffer carries (from BTF); 0: unknown,
    /// each retransmission counts one.
    pub skb_gso_segs: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 72);

/// Byte offsets of the kernel fields between a task and a descriptor's
/// socket, read by the agent from the kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    /// `task_struct.files`
    pub task_files: u32,
    /// `files_struct.fdt`
    pub files_fdt: u32,
    /// `fdtable.max_fds`
    pub fdt_max_fds: u32,
    /// `fdtable.fd`
    pub fdt_fd: u32,
    /// `file.f_inode`
    pub file_inode: u32,
    /// `file.private_data` (a socket file's `struct socket`)
    pub file_private: u32,
    /// `inode.i_mode`
    pub inode_mode: u32,
    /// `socket.sk`
    pub socket_sk: u32,
    /// `sock_common.skc_cookie`
    pub sk_cookie: u32,
    /// `sock.sk_protocol` (a u16)
    pub sk_protocol: u32,
}
const _: () = assert!(core::mem::size_of::<KernelLayout>() == 40);

/// Indexes into [`maps::DROPS`], a per-CPU array of `u64` counters of
/// everything the kernel side had to give up on. Each is exported as
/// `apm_ebpf_drops_total{reason}`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// [`maps::SOCKETS`] was full: a connection was not counted.
    SocketsFull = 0,
    /// [`maps::PORTS`] was full: a new port was not counted.
    PortsFull = 1,
    /// [`maps::CONNS`] insert failed: an accepted fd is not tracked.
    ConnsFull = 2,
    /// The ring buffer was full: a read/write record was lost.
    RingbufFull = 3,
    /// [`maps::INFLIGHT`] insert failed: a syscall on a tracked fd was missed.
    InflightFull = 4,
    /// [`maps::OUT_SOCKETS`] or [`maps::POOLS`] was full: an outbound
    /// connection was not counted (neither opened nor closed).
    PoolsFull = 5,
    /// [`maps::OUTBOUND`] insert failed: a client connection to a Redis
    /// port is not captured.
    OutboundFull = 6,
    /// [`maps::TLS_CALLS`] insert failed: a TLS call's plaintext was lost.
    TlsCallsFull = 7,
    /// A TLS call that moved bytes on a connection not known: a memory
    /// BIO not (yet) tied to its socket, or a descriptor BIO on a socket
    /// not tracked. Its plaintext is not read, never guessed.
    TlsUnlinked = 8,
    /// [`maps::TLS_LINKS`] was full: a memory BIO was not tied to its
    /// socket, so its calls count as [`DropReason::TlsUnlinked`].
    TlsLinksFull = 9,
    /// [`maps::TLS_SOCKS`] insert failed: a TLS socket's plaintext is not
    /// read (its calls count as [`DropReason::TlsUnlinked`] too).
    TlsSocketsFull = 10,
}

impl DropReason {
    pub const ALL: [DropReason; 11] = [
        DropReason::SocketsFull,
        DropReason::PortsFull,
        DropReason::ConnsFull,
        DropReason::RingbufFull,
        DropReason::InflightFull,
        DropReason::PoolsFull,
        DropReason::OutboundFull,
        DropReason::TlsCallsFull,
        DropReason::TlsUnlinked,
        DropReason::TlsLinksFull,
        DropReason::TlsSocketsFull,
    ];
    /// Length of the [`maps::DROPS`] array (room for later reasons).
    pub const SLOTS: u32 = 16;

    /// The `reason` label value.
    pub const fn reason(self) -> &'static str {
        match self {
            DropReason::SocketsFull => "sockets_map_full",
            DropReason::PortsFull => "ports_map_full",
            DropReason::ConnsFull => "conns_map_full",
            DropReason::RingbufFull => "ringbuf_full",
            DropReason::InflightFull => "inflight_map_full",
            DropReason::PoolsFull => "pools_map_full",
            DropReason::OutboundFull => "outbound_map_full",
            DropReason::TlsCallsFull => "tls_calls_map_full",
            DropReason::TlsUnlinked => "tls_unlinked",
            DropReason::TlsLinksFull => "tls_links_map_full",
            DropReason::TlsSocketsFull => "tls_sockets_map_full",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: each type is repr(C), Copy, made only of integers, with its
    // padding spelled out as explicit fields (sizes asserted above), so every
    // bit pattern is a valid value.
    unsafe impl aya::Pod for PortCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SocketInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PidCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PeerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for InFlight {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PoolKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RemoteAddr {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PoolCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::events::ConnectEvent {}
}
