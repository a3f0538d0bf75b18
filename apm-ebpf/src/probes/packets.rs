//! `cgroup_skb` ingress and egress on the cgroup-v2 root: the TCP segments
//! of monitored server sockets, as byte-stream pieces for the agent.
//!
//! Every packet of every socket on the host passes here, so the first test
//! is one array lookup on the socket's local port; an unselected port costs
//! that and nothing else. For a selected port, a segment with payload (or a
//! FIN/RST) becomes one record: socket cookie, network-namespace cookie,
//! direction, TCP sequence number, payload length, time, and the first
//! DATA_CAP payload bytes (plus the last TAIL_CAP of a longer one). The
//! programs never drop or alter a packet: they always return 1 (pass).

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_PROD_POS},
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_skb_load_bytes},
    macros::cgroup_skb,
    programs::SkBuffContext,
};

use apm_common::{
    DropReason, IPPROTO_TCP,
    events::{
        ConnectEvent, DATA_CAP, EventKind, MAX_CHUNKS, PacketEvent, PacketHeader, TAIL_CAP,
        direction, side, tcp_flags,
    },
    maps::ADDR_ONLY,
};

use crate::maps::{
    CAPTURE_PORTS, CONFIG, EVENTS, NESTING, OUTBOUND, REMOTE_PORTS, SCRATCH, WATCHED,
    WATCHED_PORTS, count_drop,
};

/// What a cgroup_skb program returns to let the packet through.
const PASS: i32 = 1;

const IPV6_HEADER: u32 = 40;

#[cgroup_skb]
pub fn capture_ingress(ctx: SkBuffContext) -> i32 {
    capture(&ctx, direction::INGRESS);
    PASS
}

#[cgroup_skb]
pub fn capture_egress(ctx: SkBuffContext) -> i32 {
    capture(&ctx, direction::EGRESS);
    PASS
}

/// The TCP segment in a packet: where its payload starts, its sequence
/// number and flags.
struct Segment {
    payload_off: u32,
    seq: u32,
    ack: u32,
    flags: u8,
    /// The remote end's port (host order).
    remote_port: u16,
}

/// `TCP_LISTEN` in the kernel's socket states.
const TCP_LISTEN: u32 = 10;

/// The remote end's port of the packet's socket (host order).
#[inline(always)]
fn remote_port(ctx: &SkBuffContext) -> u32 {
    // SAFETY: the context is the kernel's __sk_buff for this program;
    // remote_port holds the port in network byte order, shifted into the
    // upper half on little-endian kernels.
    let remote = unsafe { (*ctx.skb.skb).remote_port };
    u32::from(u16::from_be(
        (if remote > 0xffff {
            remote >> 16
        } else {
            remote
        }) as u16,
    ))
}

/// Whether the packet's socket is listening: TCP runs the filter of the
/// listener (not of the new connection) on the segment that completes a
/// handshake whose last ACK was lost, so its data is the new connection's
/// first, under the listener's cookie.
#[inline(always)]
fn on_listener(ctx: &SkBuffContext) -> bool {
    // SAFETY: cgroup_skb programs may read __sk_buff.sk, a socket (common
    // part) or null, checked before its state is read, which the verifier
    // allows on the common part.
    unsafe {
        let sk = (*ctx.skb.skb).__bindgen_anon_2.sk;
        !sk.is_null() && (*sk).state == TCP_LISTEN
    }
}

#[inline(always)]
fn capture(ctx: &SkBuffContext, dir: u8) {
    // SAFETY: the context is the kernel's __sk_buff for this program; the
    // verifier allows cgroup_skb programs to read local_port and len.
    let (local, len) = unsafe { ((*ctx.skb.skb).local_port, (*ctx.skb.skb).len) };
    let mut chunks = CAPTURE_PORTS.get(local).copied().unwrap_or(0);
    let mut port = local;
    let mut whose = side::SERVER;
    let mut watched = None;
    if chunks == 0 {
        // A monitored client's connection to a captured remote port, or
        // one being watched for RESP? The port first (array lookups), the
        // socket's cookie only then.
        let remote = remote_port(ctx);
        // The address-only flag is the connect hook's business: a socket
        // it let through is in OUTBOUND.
        let listed = REMOTE_PORTS.get(remote).copied().unwrap_or(0) & !ADDR_ONLY;
        let watching = WATCHED_PORTS.get(remote).copied().unwrap_or(0) != 0;
        if listed == 0 && !watching {
            return;
        }
        // SAFETY: a plain helper call on this program's own context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // SAFETY: a read-only lookup; the value is not kept.
        if unsafe { OUTBOUND.get(cookie) }.is_none() {
            // Looked up before the headers are parsed: most packets on a
            // watched port belong to sockets nobody watches.
            // SAFETY: the value is copied out at once.
            let Some(event) = watching
                .then(|| unsafe { WATCHED.get(cookie) }.copied())
                .flatten()
            else {
                return;
            };
            watched = Some((cookie, event));
        }
        chunks = if listed != 0 { listed } else { MAX_CHUNKS };
        port = remote;
        whose = side::CLIENT;
    }
    let Some(seg) = segment(ctx, dir) else {
        return;
    };
    if whose == side::SERVER && on_listener(ctx) {
        whose = side::LISTENER;
    }
    let payload = len.saturating_sub(seg.payload_off);
    if let Some((cookie, event)) = watched
        && !recognise(ctx, dir, cookie, &event, &seg, payload)
    {
        return;
    }
    if payload == 0 {
        if seg.flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
            emit(ctx, dir, port as u16, whose, &seg, 0, 0, len);
        }
        return;
    }
    // Consecutive records of DATA_CAP bytes, the last one carrying the
    // rest of the segment's length (and its FIN/RST): the agent places
    // them by sequence number like separate segments.
    let mut off = 0u32;
    for i in 0..MAX_CHUNKS {
        let rest = payload - off;
        let last = i + 1 >= chunks || rest <= DATA_CAP as u32;
        let piece = if last { rest } else { DATA_CAP as u32 };
        emit(
            ctx,
            dir,
            port as u16,
            whose,
            &seg,
            off,
            piece,
            if last { len } else { 0 },
        );
        if last {
            return;
        }
        off += DATA_CAP as u32;
    }
}

/// Ends the watch of connection `cookie` (whose `WATCHED` value is `event`)
/// at its first payload (or its end): when the client sends first and that
/// starts a RESP array (`*` and a digit), the socket moves to `OUTBOUND`
/// and `event`, its connect record, goes to the agent ahead of this
/// segment. Returns whether the segment is to be captured.
#[inline(always)]
fn recognise(
    ctx: &SkBuffContext,
    dir: u8,
    cookie: u64,
    event: &ConnectEvent,
    seg: &Segment,
    payload: u32,
) -> bool {
    if payload == 0 && seg.flags & (tcp_flags::FIN | tcp_flags::RST) == 0 {
        // The handshake and bare ACKs: still watching.
        return false;
    }
    let first: [u8; 2] = if payload >= 2 {
        ctx.load(seg.payload_off as usize).unwrap_or([0; 2])
    } else {
        [0; 2]
    };
    let _ = WATCHED.remove(cookie);
    if dir != direction::EGRESS || first[0] != b'*' || !first[1].is_ascii_digit() {
        return false;
    }
    if OUTBOUND.insert(cookie, event.tgid, 0).is_err() {
        count_drop(DropReason::OutboundFull);
        return false;
    }
    if EVENTS.output::<ConnectEvent>(event, 0).is_err() {
        count_drop(DropReason::RingbufFull);
    }
    true
}

/// Parses the IP and TCP headers. The packet starts at the network header;
/// its IP version is read from the packet itself, because a dual-stack
/// (IPv6) socket carries IPv4 packets. One helper call covers an IPv4 and
/// TCP header without options (any TCP/IPv4 packet has those 40 bytes); a
/// second one reads the TCP header after IPv4 options or IPv6.
#[inline(always)]
fn segment(ctx: &SkBuffContext, dir: u8) -> Option<Segment> {
    let head: [u8; 40] = ctx.load(0).ok()?;
    let (ip_len, protocol) = match head[0] >> 4 {
        4 => (u32::from(head[0] & 0x0f) * 4, head[9]),
        // Extension headers before TCP are rare on server traffic and not
        // followed: such packets are not captured.
        6 => (IPV6_HEADER, head[6]),
        _ => return None,
    };
    if u16::from(protocol) != IPPROTO_TCP {
        return None;
    }
    // Ports at 0..4, seq at 4..8, ack at 8..12, data offset at 12, flags
    // at 13 of the TCP header.
    let tcp: [u8; 14] = if ip_len == 20 {
        let mut t = [0u8; 14];
        t.copy_from_slice(&head[20..34]);
        t
    } else {
        ctx.load(ip_len as usize).ok()?
    };
    Some(Segment {
        payload_off: ip_len + u32::from(tcp[12] >> 4) * 4,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        flags: tcp[13],
        // From the header, not the socket: a listener's socket has none.
        remote_port: if dir == direction::INGRESS {
            u16::from_be_bytes([tcp[0], tcp[1]])
        } else {
            u16::from_be_bytes([tcp[2], tcp[3]])
        },
    })
}

/// Writes one record of exactly the header and the captured bytes: the
/// `payload` bytes at offset `off` of the segment's payload; `end` is the
/// packet's length when this record is the segment's last (its flags and
/// tail), else 0. It is assembled in a scratch record of this CPU and
/// copied out with bpf_ringbuf_output. A fixed 1 KiB reservation per
/// segment, most of it unused, costs more in cache misses than the second
/// copy of ~100 bytes.
///
/// The scratch record is the one of this program's nesting level on the
/// CPU ([`NESTING`]): an egress program in process context runs with
/// softirqs enabled, so a NIC interrupt's ingress program can run on the
/// same CPU in the middle of it, and with one shared record it would
/// overwrite the bytes the first program is about to send. Nesting is
/// strictly last-in first-out, so a level read before an interruption is
/// still free when the interrupted program resumes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit(
    ctx: &SkBuffContext,
    dir: u8,
    port: u16,
    whose: u8,
    seg: &Segment,
    off: u32,
    payload: u32,
    end: u32,
) {
    let Some(depth) = NESTING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array, valid for the program's
    // run; a program that interrupts this one restores it before we resume.
    let level = unsafe { *depth };
    let Some(ev) = SCRATCH.get_ptr_mut(level) else {
        count_drop(DropReason::NestedTooDeep);
        return;
    };
    // SAFETY: as above.
    unsafe { *depth = level + 1 };
    fill_and_send(ctx, ev, dir, port, whose, seg, off, payload, end);
    // SAFETY: as above.
    unsafe { *depth = level };
}

/// [`emit`] once it holds scratch record `ev`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fill_and_send(
    ctx: &SkBuffContext,
    ev: *mut PacketEvent,
    dir: u8,
    port: u16,
    whose: u8,
    seg: &Segment,
    off: u32,
    payload: u32,
    end: u32,
) {
    let raw = ctx.as_ptr();
    let mut h = PacketHeader {
        kind: EventKind::Packet as u32,
        // SAFETY: plain helper calls on this program's own context.
        ts_ns: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
        // SAFETY: as above.
        cookie: unsafe { bpf_get_socket_cookie(raw) },
        // SAFETY: as above.
        netns: unsafe { bpf_get_netns_cookie(raw) },
        seq: seg.seq.wrapping_add(off),
        len: payload,
        ack: seg.ack,
        remote_port: seg.remote_port,
        port,
        direction: dir,
        side: whose,
        // Every record carries the ACK flag (the acknowledgment is the
        // segment's); FIN and RST only the segment's last.
        flags: if end != 0 {
            seg.flags
        } else {
            seg.flags & tcp_flags::ACK
        },
        ..PacketHeader::default()
    };
    if payload > 0 {
        // min(payload, DATA_CAP) written so that the verifier sees the
        // range [1, DATA_CAP] whatever the compiler reorders: the mask
        // bounds it above, the + 1 below (DATA_CAP is a power of two).
        let cap = DATA_CAP as u32;
        let n = (core::cmp::min(payload - 1, cap - 1) & (cap - 1)) + 1;
        // SAFETY: `ev` is a scratch record of this CPU (a map value of
        // size_of::<PacketEvent>()); 0 < n <= DATA_CAP fits `data`; the
        // helper checks the packet bounds and fails rather than overread.
        let rc = unsafe {
            bpf_skb_load_bytes(
                raw,
                seg.payload_off + off,
                core::ptr::addr_of_mut!((*ev).data).cast(),
                n,
            )
        };
        if rc == 0 {
            h.captured = n;
        }
    }
    if end != 0 && payload > DATA_CAP as u32 {
        let mut tail = [0u8; TAIL_CAP];
        // SAFETY: a stack array of exactly TAIL_CAP bytes; the helper checks
        // the packet bounds.
        let rc = unsafe {
            bpf_skb_load_bytes(
                raw,
                end - TAIL_CAP as u32,
                tail.as_mut_ptr().cast(),
                TAIL_CAP as u32,
            )
        };
        if rc == 0 {
            h.tail = tail;
            h.tail_len = TAIL_CAP as u8;
        }
    }
    let size = size_of::<PacketHeader>() + (h.captured as usize & (DATA_CAP * 2 - 1));
    // SAFETY: writing the header part of the scratch record this program
    // holds on its CPU (its nesting level's), which nothing else uses now.
    unsafe { core::ptr::addr_of_mut!((*ev).header).write(h) };
    // SAFETY: the scratch record viewed as its bytes (plain integers).
    let bytes: &[u8; size_of::<PacketEvent>()] = unsafe { &*ev.cast() };
    let Some(record) = bytes.get(..size) else {
        return;
    };
    if EVENTS.output::<[u8]>(record, wakeup_flags(size)).is_err() {
        count_drop(DropReason::RingbufFull);
    }
}

/// Wakes the reader when this record (`size` bytes, plus the ring's 8-byte
/// record header, rounded up to 8) takes the producer position across a
/// multiple of the wake step (`CONFIG.wake_shift`, WAKE_STEP_BYTES): the
/// reader drains on its timer while the ring fills slowly and at every
/// step under load. Only the producer position is read (a line every
/// producer writes anyway); asking how much is queued would read the
/// consumer's line on every segment. A crossing hidden by another CPU's
/// record in between only delays the drain to the next step or tick.
#[inline(always)]
fn wakeup_flags(size: usize) -> u64 {
    let shift = CONFIG.get(0).map_or(0, |c| c.wake_shift);
    if shift == 0 || shift >= 32 {
        return u64::from(BPF_RB_NO_WAKEUP);
    }
    let step = 1u64 << shift;
    let pos = EVENTS.query(u64::from(BPF_RB_PROD_POS));
    let record = (size as u64 + 8 + 7) & !7;
    if (pos & (step - 1)) + record >= step {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}
