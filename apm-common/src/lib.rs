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

pub use tls::*;

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
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub accepted: u64,
    pub closed: u64,
}
const _: () = assert!(core::mem::size_of::<PortCounters>() == 16);

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
/// CLOSE_WAIT}). Active is `opened - closed`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolCounters {
    pub opened: u64,
    pub closed: u64,
}
const _: () = assert!(core::mem::size_of::<PoolCounters>() == 16);

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
}
const _: () = assert!(core::mem::size_of::<Config>() == 64);

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

/// What the packet programs decided a server connection carries, from
/// its first payload bytes: indexes into [`maps::VERDICTS`]. Only the
/// connections of a protocol a parser reads are copied into the ring; the
/// others cost one socket-storage lookup per segment after the first.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No in-order first byte seen yet (or the connection predates the
    /// programs, or its socket has no storage): copied as before.
    Undecided = 0,
    /// The client spoke first with an HTTP/1.x method token and a space.
    Http = 1,
    /// A RESP array (`*` and a digit), an inline command line (a word
    /// ended by the line, or one with lower case and a space), or any
    /// bytes on a Redis port.
    Resp = 2,
    /// The HTTP/2 client preface (`PRI * HTTP/2.0`): not decoded yet.
    Http2 = 3,
    /// A TLS handshake record (0x16 0x03): not decoded from packets.
    Tls = 4,
    /// The server spoke first (SSH, MySQL, SMTP banners).
    ServerFirst = 5,
    /// Anything else the client sent first (etcd, …).
    Other = 6,
    /// A PostgreSQL startup message (or an SSLRequest, GSSENCRequest or
    /// CancelRequest): a length of 8 to 10 000 and a protocol 3.x or
    /// request code.
    Postgres = 7,
}

impl Verdict {
    pub const ALL: [Verdict; 8] = [
        Verdict::Undecided,
        Verdict::Http,
        Verdict::Resp,
        Verdict::Http2,
        Verdict::Tls,
        Verdict::ServerFirst,
        Verdict::Other,
        Verdict::Postgres,
    ];
    /// Counters per verdict in [`maps::VERDICTS`]: connections decided at
    /// `v`, payload segments not copied at `SLOTS + v`.
    pub const SLOTS: u32 = 8;

    /// Whether a parser reads this connection's bytes.
    pub const fn captured(self) -> bool {
        Self::captured_raw(self as u32)
    }

    /// [`Self::captured`] of a verdict as the socket storage holds it.
    pub const fn captured_raw(verdict: u32) -> bool {
        verdict == Verdict::Undecided as u32
            || verdict == Verdict::Http as u32
            || verdict == Verdict::Resp as u32
            || verdict == Verdict::Postgres as u32
    }

    /// The `verdict` label value.
    pub const fn label(self) -> &'static str {
        match self {
            Verdict::Undecided => "undecided",
            Verdict::Http => "http",
            Verdict::Resp => "resp",
            Verdict::Http2 => "http2",
            Verdict::Tls => "tls",
            Verdict::ServerFirst => "server_first",
            Verdict::Other => "other",
            Verdict::Postgres => "postgres",
        }
    }

    /// The verdict on the first bytes a client sent on a server
    /// connection, `first[..n]` (n ≤ 16), on a port known to be Redis or
    /// not; `Undecided` when those bytes do not settle it (a method token
    /// cut short).
    pub fn of_request(first: &[u8; 16], n: usize, redis_port: bool) -> Verdict {
        let n = if n < first.len() { n } else { first.len() };
        if n >= 2 && first[0] == 0x16 && first[1] == 0x03 {
            return Verdict::Tls;
        }
        if redis_port || (n >= 2 && first[0] == b'*' && first[1].is_ascii_digit()) {
            return Verdict::Resp;
        }
        // A big-endian length under 16 MiB starts with a zero byte, which
        // no text protocol sends first.
        if n >= 1 && first[0] == 0 {
            if n < 8 {
                return Verdict::Undecided;
            }
            let head = [
                first[0], first[1], first[2], first[3], first[4], first[5], first[6], first[7],
            ];
            return if postgres_startup(&head) {
                Verdict::Postgres
            } else {
                Verdict::Other
            };
        }
        if n < 2 && (n == 0 || first[0] == b'*' || first[0] == 0x16) {
            return Verdict::Undecided;
        }
        if n == first.len() && first.starts_with(b"PRI * HTTP/2.0") {
            return Verdict::Http2;
        }
        // A word: a method token (upper case, '-', '_' as the agent's
        // parser takes it) and a space is HTTP; a word ended by the line
        // (or with lower case and a space) is a Redis inline command
        // ("PING\r\n", a load balancer's health check), which the agent
        // checks against Redis's command table.
        let mut i = 0;
        let mut method = true;
        while i < n {
            let b = first[i];
            if i > 0 && (b == b' ' || b == b'\r' || b == b'\n') {
                return if b == b' ' && method {
                    Verdict::Http
                } else {
                    Verdict::Resp
                };
            }
            if b.is_ascii_lowercase() {
                method = false;
            } else if !(b.is_ascii_uppercase() || b == b'-' || b == b'_') {
                return Verdict::Other;
            }
            i += 1;
        }
        if n < first.len() {
            Verdict::Undecided
        } else {
            Verdict::Other
        }
    }
}

/// Whether the first 8 bytes a client sent are a PostgreSQL startup
/// message, SSLRequest, GSSENCRequest or CancelRequest: a big-endian length
/// of 8 to 10 000 (PostgreSQL's MAX_STARTUP_PACKET_LENGTH) and a protocol
/// 3.x or request code.
#[inline(always)]
pub fn postgres_startup(first: &[u8; 8]) -> bool {
    let len = u32::from_be_bytes([first[0], first[1], first[2], first[3]]);
    let code = u32::from_be_bytes([first[4], first[5], first[6], first[7]]);
    let request = code == 80_877_103 || code == 80_877_104 || code == 80_877_102;
    (8..=10_000).contains(&len) && (code >> 16 == 3 || request)
}

/// Whether the first 5 bytes a client sent on a connection already open are
/// a PostgreSQL request: a Query, Parse or Bind and a length under 16 MiB
/// (a zero byte after the type, which no text protocol sends there).
#[inline(always)]
pub fn postgres_request(first: &[u8; 5]) -> bool {
    let len = u32::from_be_bytes([first[1], first[2], first[3], first[4]]);
    (first[0] == b'Q' || first[0] == b'P' || first[0] == b'B') && (4..1 << 24).contains(&len)
}

#[cfg(test)]
mod verdict_tests {
    use super::Verdict;

    fn of(bytes: &[u8], redis: bool) -> Verdict {
        let mut first = [0u8; 16];
        let n = bytes.len().min(16);
        first[..n].copy_from_slice(&bytes[..n]);
        Verdict::of_request(&first, n, redis)
    }

    #[test]
    fn first_bytes_decide_the_protocol() {
        assert_eq!(of(b"GET / HTTP/1.1\r\nHost: x\r\n", false), Verdict::Http);
        assert_eq!(of(b"M-SEARCH * HTTP/1.1\r\n", false), Verdict::Http);
        assert_eq!(of(b"*3\r\n$3\r\nSET\r\n", false), Verdict::Resp);
        assert_eq!(of(b"PING\r\n", true), Verdict::Resp);
        assert_eq!(
            of(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", false),
            Verdict::Http2
        );
        assert_eq!(of(&[0x16, 0x03, 0x01, 0x02, 0x00], false), Verdict::Tls);
        assert_eq!(of(&[0x16, 0x03, 0x01], true), Verdict::Tls);
        assert_eq!(of(b"SSH-2.0-OpenSSH_9.2\r\n", false), Verdict::Other);
        // A PostgreSQL SSLRequest.
        assert_eq!(
            of(&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f], false),
            Verdict::Postgres
        );
        assert_eq!(of(b" GET / HTTP/1.1\r\n", false), Verdict::Other);
        // Redis inline commands: the agent looks the word up.
        assert_eq!(of(b"PING\r\n", false), Verdict::Resp);
        assert_eq!(of(b"get key\r\n", false), Verdict::Resp);
        assert_eq!(of(b"ping\n", false), Verdict::Resp);
        assert_eq!(of(b"SSH-2.0-x\r\n", false), Verdict::Other);
        assert_eq!(of(b"ABCDEFGHIJKLMNOPQRS", false), Verdict::Other);
        // PostgreSQL: a startup message, an SSLRequest.
        assert_eq!(
            of(b"\0\0\0\x29\0\x03\0\0user\0bench\0", false),
            Verdict::Postgres
        );
        assert_eq!(of(b"\0\0\0\x08\0\0\0\0", false), Verdict::Other);
        assert_eq!(of(b"\0\0\0", false), Verdict::Undecided);
    }

    #[test]
    fn a_method_cut_short_stays_undecided() {
        assert_eq!(of(b"GE", false), Verdict::Undecided);
        assert_eq!(of(b"POST", false), Verdict::Undecided);
        assert_eq!(of(b"GET ", false), Verdict::Http);
        assert_eq!(of(b"*", false), Verdict::Undecided);
        assert_eq!(of(b"", false), Verdict::Undecided);
    }

    #[test]
    fn only_http_resp_and_postgres_are_copied() {
        let copied = Verdict::ALL.map(Verdict::captured);
        assert_eq!(copied, [true, true, true, false, false, false, false, true]);
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
