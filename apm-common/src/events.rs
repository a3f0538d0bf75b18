//! Ring-buffer records: what the kernel tells the agent about reads, writes,
//! accepts and closes on tracked connections.
//!
//! Each record starts with an [`EventHeader`]. Read and write records are
//! [`DataEvent`]s carrying the first [`DATA_CAP`] bytes of the transfer (the
//! request or status line and headers); the HTTP parser in the agent is the
//! only consumer of those bytes. Accept, close and sendfile records are the
//! header alone.

/// Bytes of each read or write captured: a request line with a path of
/// about 1000 bytes, or a status line with its headers, or a pipelined batch
/// of a dozen small requests. Larger transfers are cut; the agent counts
/// what it could not parse as truncated.
pub const DATA_CAP: usize = 1024;

/// Records one TCP segment of a captured port may become at most: a port
/// whose `CAPTURE_PORTS` value is n > 1 has the first n * [`DATA_CAP`]
/// payload bytes of a segment captured as n consecutive records (RESP
/// pipelines run past one record; HTTP ports use one).
pub const MAX_CHUNKS: u32 = 16;

/// Bytes kept from the end of a write longer than [`DATA_CAP`], to see the
/// last chunk (`0\r\n\r\n`) of a chunked response.
pub const TAIL_CAP: usize = 8;

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// accept()/accept4() returned `fd`; `port` is the local port.
    Accept = 1,
    /// `ret` bytes were read from `fd`.
    Read = 2,
    /// `ret` bytes were written to `fd`.
    Write = 3,
    /// sendfile() wrote `ret` bytes to `fd` (no data captured).
    Sendfile = 4,
    /// close(`fd`).
    Close = 5,
    /// A TCP segment of a monitored server socket, seen by the cgroup_skb
    /// programs: a [`PacketEvent`].
    Packet = 6,
    /// A monitored process connected to a captured remote port: a
    /// [`ConnectEvent`].
    Connect = 7,
    /// A TLS object on a memory BIO (`ret`: its `SSL *`) was tied to
    /// socket `conn` (a cookie) as the socket sent its first write: the
    /// object's records so far (keyed by [`record_flags::OBJECT`]) are
    /// this socket's.
    Tie = 8,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Accept,
            2 => Self::Read,
            3 => Self::Write,
            4 => Self::Sendfile,
            5 => Self::Close,
            6 => Self::Packet,
            7 => Self::Connect,
            8 => Self::Tie,
            _ => return None,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`].
    pub kind: u32,
    /// Valid bytes in [`DataEvent::data`].
    pub captured: u32,
    /// `bpf_ktime_get_ns()` at syscall exit (entry for close).
    pub ts_ns: u64,
    pub tgid: u32,
    /// Local port of the connection, 0 when unknown.
    pub port: u16,
    /// Valid bytes in `tail`.
    pub tail_len: u8,
    /// [`record_flags`].
    pub flags: u8,
    /// The descriptor, or with [`record_flags::SOCKET`] the socket's
    /// cookie.
    pub conn: u64,
    /// Bytes transferred (the syscall's return value).
    pub ret: i64,
    /// The last bytes of a write longer than [`DATA_CAP`].
    pub tail: [u8; TAIL_CAP],
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 48);

/// Bits of [`EventHeader::flags`].
pub mod record_flags {
    /// Keyed by socket cookie, as packets are (TLS plaintext with
    /// `Config::tls_sockets`), not by descriptor.
    pub const SOCKET: u8 = 1;
    /// Keyed by a TLS object (`SSL *`) of process `tgid` not yet tied to
    /// its socket: held by the agent until an [`super::EventKind::Tie`]
    /// names the socket; a close of such a key means the object was
    /// freed untied.
    pub const OBJECT: u8 = 2;
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataEvent {
    pub header: EventHeader,
    pub data: [u8; DATA_CAP],
}
const _: () = assert!(core::mem::size_of::<DataEvent>() == 48 + DATA_CAP);

/// Size of the ring buffer in bytes (a power of two, page aligned). Packet
/// records are as long as what they captured (typically 100 to 400 bytes),
/// so it holds tens of thousands of them; the reader drains it every
/// [`BUSY_POLL_MS`] under load, every [`POLL_INTERVAL_MS`] at rest, and
/// whenever the producers cross a wake step ([`WAKE_STEP_BYTES`], or a
/// quarter of a smaller ring). Syscall records are fixed [`DataEvent`]s
/// (about 7 500 fit). The agent may set another size at load time
/// (`--ring-buffer-bytes`).
pub const RINGBUF_BYTES: u32 = 8 * 1024 * 1024;

/// Direction of a [`PacketEvent`], as the server socket sees it.
pub mod direction {
    /// Received by the server: request bytes.
    pub const INGRESS: u8 = 0;
    /// Sent by the server: response bytes.
    pub const EGRESS: u8 = 1;
}

/// Whose socket a [`PacketEvent`] is of.
pub mod side {
    /// A monitored server's: `port` is its local port.
    pub const SERVER: u8 = 0;
    /// A monitored client's connection to a captured remote port: `port`
    /// is that remote port; `direction` is still the socket's own.
    pub const CLIENT: u8 = 1;
    /// A monitored server's listening socket: the data of a connection
    /// whose handshake this segment completed (its last ACK was lost), seen
    /// under the listener's cookie. `remote_port` tells which connection.
    pub const LISTENER: u8 = 2;
}

/// A monitored process's connect() to a captured remote port, from the
/// cgroup connect4/connect6 hooks (process context): which process the
/// connection's packet records belong to; or from `sys_enter_connect`,
/// for its descriptor's records.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectEvent {
    /// [`EventKind::Connect`].
    pub kind: u32,
    pub tgid: u32,
    /// The socket's cookie, as in its packet records.
    pub cookie: u64,
    /// Destination address; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Destination port, host byte order.
    pub port: u16,
    /// 1: `cookie` is `tgid << 32 | fd`, the descriptor whose records
    /// (TLS plaintext) are this connection's (`sys_enter_connect`).
    pub descriptor: u8,
    /// 1: a connection opened before the agent watched it (put in
    /// `WATCHED` by the agent): it may start with a request, not a
    /// protocol's first message.
    pub joined: u8,
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<ConnectEvent>() == 40);

/// An address as the programs store it (IPv4 as `::ffff:a.b.c.d`).
pub fn ip_of(bytes: [u8; 16]) -> core::net::IpAddr {
    let v6 = core::net::Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => core::net::IpAddr::V4(v4),
        None => core::net::IpAddr::V6(v6),
    }
}

impl ConnectEvent {
    pub fn decode(record: &[u8]) -> Option<Self> {
        if record.len() < core::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: the slice holds at least size_of::<Self>() bytes, the type
        // is repr(C) plain integers (any bit pattern is valid), and
        // read_unaligned makes no alignment assumption.
        Some(unsafe { core::ptr::read_unaligned(record.as_ptr().cast::<Self>()) })
    }
}

/// TCP header flags as they appear in [`PacketHeader::flags`].
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    /// [`super::PacketHeader::ack`] is valid.
    pub const ACK: u8 = 0x10;
}

/// The header of a [`PacketEvent`]: one TCP segment (or GSO/GRO batch of
/// segments) of a socket whose local port is selected, with payload or a
/// FIN/RST. `kind` sits where [`EventHeader::kind`] does, so a reader can
/// tell the two apart from the first four bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketHeader {
    /// [`EventKind::Packet`].
    pub kind: u32,
    /// Valid bytes in [`PacketEvent::data`].
    pub captured: u32,
    /// `bpf_ktime_get_ns()` when the program saw the segment.
    pub ts_ns: u64,
    /// `bpf_get_socket_cookie()`: the connection, unique for the life of
    /// the host.
    pub cookie: u64,
    /// `bpf_get_netns_cookie()`: the socket's network namespace.
    pub netns: u64,
    /// TCP sequence number of the first payload byte.
    pub seq: u32,
    /// Payload bytes in the segment.
    pub len: u32,
    /// TCP acknowledgment number (valid with the ACK flag): how much of the
    /// other direction the sender has received in order.
    pub ack: u32,
    /// Local (server) port, host byte order.
    pub port: u16,
    /// A [`direction`] constant.
    pub direction: u8,
    /// The TCP flags byte ([`tcp_flags`]).
    pub flags: u8,
    /// Valid bytes in `tail`.
    pub tail_len: u8,
    /// A [`side`] constant: whose socket the segment is of.
    pub side: u8,
    /// The client's port, host byte order: the remote end's for a
    /// server's segment, the socket's own for a client's.
    pub remote_port: u16,
    /// For a segment going out: the thread that sent it, when it belongs
    /// to the socket's process (a client's) or to a monitored process (a
    /// server's); else 0 (sent from softirq context, on another task's
    /// time).
    pub tid: u32,
    /// The last payload bytes of a segment longer than [`DATA_CAP`].
    pub tail: [u8; TAIL_CAP],
}
const _: () = assert!(core::mem::size_of::<PacketHeader>() == 64);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PacketEvent {
    pub header: PacketHeader,
    pub data: [u8; DATA_CAP],
}
const _: () = assert!(core::mem::size_of::<PacketEvent>() == 64 + DATA_CAP);

/// The kind of any ring-buffer record (its first four bytes).
pub fn record_kind(record: &[u8]) -> Option<EventKind> {
    let bytes: [u8; 4] = record.get(..4)?.try_into().ok()?;
    EventKind::from_u32(u32::from_ne_bytes(bytes))
}

/// The longest the reader waits between drains without a wakeup. Under
/// load it drains every [`BUSY_POLL_MS`] on its own timer instead.
pub const POLL_INTERVAL_MS: u64 = 100;

/// While records keep coming, the reader waits this long between drains
/// (or less, when the kernel wakes it at a wake step) rather than for the
/// kernel's wakeup: batches stay short (a few hundred requests at 50 000
/// per second) and no producer pays for a wakeup.
pub const BUSY_POLL_MS: u64 = 4;

/// How much the programs write between two wakeups of the reader (a
/// quarter of the ring when that is smaller): a safety net for a burst
/// that starts while the reader waits out [`POLL_INTERVAL_MS`], or that
/// fills a small ring within [`BUSY_POLL_MS`]. A wakeup is
/// an inter-processor interrupt raised on the producer's CPU, inside the
/// service's send: on this project's VM about 20 µs each, which at the
/// former 64 KiB step cost nginx 0.9 % of its CPU (perf, 2026-12-06).
pub const WAKE_STEP_BYTES: u32 = 1024 * 1024;

/// The two record headers: plain-integer repr(C) types with a count of
/// captured payload bytes after them and a tail.
macro_rules! record_header {
    ($header:ty) => {
        impl $header {
            /// Decodes the header at the start of a ring-buffer record.
            pub fn decode(record: &[u8]) -> Option<Self> {
                if record.len() < core::mem::size_of::<Self>() {
                    return None;
                }
                // SAFETY: the slice holds at least size_of::<Self>() bytes,
                // the type is repr(C) plain integers (any bit pattern is
                // valid), and read_unaligned makes no alignment assumption.
                Some(unsafe { core::ptr::read_unaligned(record.as_ptr().cast::<Self>()) })
            }

            /// The captured payload after the header (empty for a record
            /// without data, or a short or lying one).
            pub fn payload<'a>(&self, record: &'a [u8]) -> &'a [u8] {
                let start = core::mem::size_of::<Self>();
                let end = start + (self.captured as usize).min(DATA_CAP);
                record.get(start..end).unwrap_or(&[])
            }

            /// The last bytes of a transfer longer than [`DATA_CAP`].
            pub fn tail(&self) -> &[u8] {
                &self.tail[..(self.tail_len as usize).min(TAIL_CAP)]
            }
        }
    };
}

record_header!(EventHeader);
record_header!(PacketHeader);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_event_round_trips_through_bytes() {
        let mut ev = DataEvent {
            header: EventHeader {
                kind: EventKind::Read as u32,
                captured: 5,
                ts_ns: 42,
                tgid: 7,
                port: 8080,
                tail_len: 2,
                flags: record_flags::SOCKET,
                conn: 9,
                ret: 500,
                tail: *b"\r\n\0\0\0\0\0\0",
            },
            data: [0; DATA_CAP],
        };
        ev.data[..5].copy_from_slice(b"GET /");
        // SAFETY: DataEvent is repr(C) plain data; viewing it as bytes is sound.
        let bytes = unsafe {
            core::slice::from_raw_parts(
                (&ev as *const DataEvent).cast::<u8>(),
                core::mem::size_of::<DataEvent>(),
            )
        };
        let h = EventHeader::decode(bytes).expect("decode");
        assert_eq!(h, ev.header);
        assert_eq!(EventKind::from_u32(h.kind), Some(EventKind::Read));
        assert_eq!(h.payload(bytes), b"GET /");
        assert_eq!(h.tail(), b"\r\n");
    }

    #[test]
    fn packet_event_round_trips_through_bytes() {
        let mut ev = PacketEvent {
            header: PacketHeader {
                kind: EventKind::Packet as u32,
                captured: 3,
                ts_ns: 1,
                cookie: 2,
                netns: 3,
                seq: 4,
                len: 5000,
                ack: 6,
                port: 8080,
                direction: direction::EGRESS,
                flags: tcp_flags::FIN,
                tail_len: 5,
                side: side::SERVER,
                remote_port: 40000,
                tid: 77,
                tail: *b"0\r\n\r\n\0\0\0",
            },
            data: [0; DATA_CAP],
        };
        ev.data[..3].copy_from_slice(b"HTT");
        // SAFETY: PacketEvent is repr(C) plain data; viewing it as bytes is sound.
        let bytes = unsafe {
            core::slice::from_raw_parts(
                (&ev as *const PacketEvent).cast::<u8>(),
                core::mem::size_of::<PacketEvent>(),
            )
        };
        assert_eq!(record_kind(bytes), Some(EventKind::Packet));
        let h = PacketHeader::decode(bytes).expect("decode");
        assert_eq!(h, ev.header);
        assert_eq!(h.payload(bytes), b"HTT");
        assert_eq!(h.tail(), b"0\r\n\r\n");
        assert!(PacketHeader::decode(&bytes[..40]).is_none());
        assert_eq!(record_kind(&[1, 0]), None);
    }

    #[test]
    fn short_or_lying_records_do_not_overrun() {
        assert!(EventHeader::decode(&[0u8; 10]).is_none());
        let h = EventHeader {
            captured: 4000,
            ..Default::default()
        };
        // A header claiming more than the record holds yields nothing.
        assert_eq!(h.payload(&[0u8; 60]), &[] as &[u8]);
        assert_eq!(EventKind::from_u32(99), None);
    }
}
