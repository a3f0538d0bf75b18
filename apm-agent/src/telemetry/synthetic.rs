//! Synthetic ring-buffer records for tests and benchmarks.

use apm_common::events::{
    ConnectEvent, DATA_CAP, EventHeader, EventKind, PacketHeader, record_flags,
};

/// The bytes of a plain-integer repr(C) header followed by `data`,
/// padded to a full record.
fn with_payload<H: Copy>(header: &H, data: &[u8]) -> Vec<u8> {
    let size = std::mem::size_of::<H>();
    let mut out = Vec::with_capacity(size + DATA_CAP);
    // SAFETY: callers pass repr(C) headers made only of integers;
    // viewing one as bytes is sound.
    let bytes = unsafe { std::slice::from_raw_parts((header as *const H).cast::<u8>(), size) };
    out.extend_from_slice(bytes);
    out.extend_from_slice(&data[..data.len().min(DATA_CAP)]);
    out.resize(size + DATA_CAP, 0);
    out
}

/// One packet record as the cgroup_skb programs would write it:
/// `header` (kind, length and capture filled in here) and `data` as
/// the segment's payload.
pub fn packet(header: PacketHeader, data: &[u8]) -> Vec<u8> {
    let header = PacketHeader {
        kind: EventKind::Packet as u32,
        captured: data.len().min(DATA_CAP) as u32,
        len: data.len() as u32,
        ..header
    };
    with_payload(&header, data)
}

/// One ring-buffer record as the kernel would write it.
pub fn record(kind: EventKind, ts_ns: u64, tgid: u32, fd: u32, port: u16, data: &[u8]) -> Vec<u8> {
    keyed(kind, ts_ns, tgid, (u64::from(fd), 0), port, data)
}

/// [`record`] of TLS plaintext keyed by socket `cookie`.
pub fn socket_record(
    kind: EventKind,
    ts_ns: u64,
    tgid: u32,
    cookie: u64,
    port: u16,
    data: &[u8],
) -> Vec<u8> {
    keyed(
        kind,
        ts_ns,
        tgid,
        (cookie, record_flags::SOCKET),
        port,
        data,
    )
}

/// A TLS call record of memory-BIO object `ssl` of process `tgid`, not
/// yet tied to its socket.
pub fn object_record(kind: EventKind, ts_ns: u64, tgid: u32, ssl: u64, data: &[u8]) -> Vec<u8> {
    keyed(kind, ts_ns, tgid, (ssl, record_flags::OBJECT), 0, data)
}

/// The kernel tied object `ssl` of process `tgid` to socket `cookie`.
pub fn tie_record(ts_ns: u64, tgid: u32, ssl: u64, cookie: u64, port: u16) -> Vec<u8> {
    let mut record = keyed(
        EventKind::Tie,
        ts_ns,
        tgid,
        (cookie, record_flags::SOCKET),
        port,
        b"",
    );
    // `ret` (after kind, captured, ts, tgid, port, tail_len, flags, conn)
    // names the object.
    record[32..40].copy_from_slice(&(ssl as i64).to_ne_bytes());
    record
}

fn keyed(
    kind: EventKind,
    ts_ns: u64,
    tgid: u32,
    (conn, flags): (u64, u8),
    port: u16,
    data: &[u8],
) -> Vec<u8> {
    let captured = data.len().min(DATA_CAP);
    let header = EventHeader {
        kind: kind as u32,
        captured: captured as u32,
        ts_ns,
        tgid,
        port,
        tail_len: 0,
        flags,
        conn,
        ret: data.len() as i64,
        tail: [0; 8],
    };
    with_payload(&header, data)
}

/// A connect record: process `tgid` opened socket `cookie` (with
/// `descriptor`, the descriptor stream `tgid << 32 | fd`) to `addr` (IPv6
/// or IPv4-mapped) at `port`.
pub fn connect(cookie: u64, tgid: u32, addr: [u8; 16], port: u16, descriptor: bool) -> Vec<u8> {
    let event = ConnectEvent {
        kind: EventKind::Connect as u32,
        tgid,
        cookie,
        addr,
        port,
        descriptor: u8::from(descriptor),
        joined: 0,
        _pad: [0; 4],
    };
    let size = std::mem::size_of::<ConnectEvent>();
    // SAFETY: ConnectEvent is repr(C) plain integers; viewing it as its
    // bytes is sound.
    unsafe { std::slice::from_raw_parts((&raw const event).cast::<u8>(), size) }.to_vec()
}
