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

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_skb_load_bytes},
    macros::cgroup_skb,
    programs::SkBuffContext,
};

use apm_common::{
    Drop, IPPROTO_TCP,
    events::{DATA_CAP, EventKind, PacketEvent, PacketHeader, TAIL_CAP, direction, tcp_flags},
};

use crate::{
    emit::wakeup_flags,
    maps::{CAPTURE_PORTS, EVENTS, count_drop},
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
    flags: u8,
}

#[inline(always)]
fn capture(ctx: &SkBuffContext, dir: u8) {
    // SAFETY: the context is the kernel's __sk_buff for this program; the
    // verifier allows cgroup_skb programs to read local_port and len.
    let (port, len) = unsafe { ((*ctx.skb.skb).local_port, (*ctx.skb.skb).len) };
    let selected = CAPTURE_PORTS.get(port).is_some_and(|on| *on != 0);
    if !selected {
        return;
    }
    let Some(seg) = segment(ctx) else {
        return;
    };
    let payload = len.saturating_sub(seg.payload_off);
    if payload == 0 && seg.flags & (tcp_flags::FIN | tcp_flags::RST) == 0 {
        return;
    }
    emit(ctx, dir, port as u16, &seg, payload, len);
}

/// Parses the IP and TCP headers. The packet starts at the network header;
/// its IP version is read from the packet itself, because a dual-stack
/// (IPv6) socket carries IPv4 packets.
#[inline(always)]
fn segment(ctx: &SkBuffContext) -> Option<Segment> {
    let first: u8 = ctx.load(0).ok()?;
    let ip_len = match first >> 4 {
        4 => {
            let protocol: u8 = ctx.load(9).ok()?;
            if u16::from(protocol) != IPPROTO_TCP {
                return None;
            }
            u32::from(first & 0x0f) * 4
        }
        6 => {
            // Extension headers before TCP are rare on server traffic and
            // not followed: such packets are not captured.
            let next: u8 = ctx.load(6).ok()?;
            if u16::from(next) != IPPROTO_TCP {
                return None;
            }
            IPV6_HEADER
        }
        _ => return None,
    };
    let off = ip_len as usize;
    let seq: [u8; 4] = ctx.load(off + 4).ok()?;
    let doff: u8 = ctx.load(off + 12).ok()?;
    let flags: u8 = ctx.load(off + 13).ok()?;
    Some(Segment {
        payload_off: ip_len + u32::from(doff >> 4) * 4,
        seq: u32::from_be_bytes(seq),
        flags,
    })
}

#[inline(always)]
fn emit(ctx: &SkBuffContext, dir: u8, port: u16, seg: &Segment, payload: u32, len: u32) {
    let Some(mut entry) = EVENTS.reserve::<PacketEvent>(0) else {
        count_drop(Drop::RingbufFull);
        return;
    };
    let ev = entry.as_mut_ptr();
    let raw = ctx.as_ptr();
    let mut h = PacketHeader {
        kind: EventKind::Packet as u32,
        // SAFETY: plain helper calls on this program's own context.
        ts_ns: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
        // SAFETY: as above.
        cookie: unsafe { bpf_get_socket_cookie(raw) },
        // SAFETY: as above.
        netns: unsafe { bpf_get_netns_cookie(raw) },
        seq: seg.seq,
        len: payload,
        port,
        direction: dir,
        flags: seg.flags,
        ..PacketHeader::default()
    };
    if payload > 0 {
        // min(payload, DATA_CAP) written so that the verifier sees the
        // range [1, DATA_CAP] whatever the compiler reorders: the mask
        // bounds it above, the + 1 below (DATA_CAP is a power of two).
        let cap = DATA_CAP as u32;
        let n = (core::cmp::min(payload - 1, cap - 1) & (cap - 1)) + 1;
        // SAFETY: `ev` points at a reserved record of size_of::<PacketEvent>();
        // 0 < n <= DATA_CAP fits `data`; the helper checks the packet bounds
        // and fails (nothing captured) rather than read past them.
        let rc = unsafe {
            bpf_skb_load_bytes(
                raw,
                seg.payload_off,
                core::ptr::addr_of_mut!((*ev).data).cast(),
                n,
            )
        };
        if rc == 0 {
            h.captured = n;
        }
    }
    if payload > DATA_CAP as u32 {
        let mut tail = [0u8; TAIL_CAP];
        // SAFETY: a stack array of exactly TAIL_CAP bytes; the helper checks
        // the packet bounds.
        let rc = unsafe {
            bpf_skb_load_bytes(
                raw,
                len - TAIL_CAP as u32,
                tail.as_mut_ptr().cast(),
                TAIL_CAP as u32,
            )
        };
        if rc == 0 {
            h.tail = tail;
            h.tail_len = TAIL_CAP as u8;
        }
    }
    // SAFETY: writing the header part of the reserved record.
    unsafe { core::ptr::addr_of_mut!((*ev).header).write(h) };
    entry.submit(wakeup_flags());
}
