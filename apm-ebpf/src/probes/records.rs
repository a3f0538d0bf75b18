//! The packet programs' ring records: a segment's bytes as one or more
//! records, each loaded straight from the packet into its reservation.

use aya_ebpf::{
    EbpfContext as _,
    bindings::__sk_buff,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_skb_load_bytes},
    },
    programs::SkBuffContext,
};

use apm_common::{
    DropReason,
    events::{DATA_CAP, EventKind, PacketHeader, TAIL_CAP, direction, side, tcp_flags},
    maps::OUTBOUND_FLAGS,
};

use super::h2;
use crate::{
    emit::wakeup_flags,
    maps::{CLIENTS, EVENTS, OUTBOUND, count_drop},
};

/// The TCP segment in a packet: where its payload starts, its sequence
/// number and flags.
#[derive(Clone, Copy)]
pub struct Segment {
    pub payload_off: u32,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The remote end's port (host order).
    pub remote_port: u16,
}

/// A record as reserved in the ring: the header and room for `N` payload
/// bytes, of which the header's `captured` are valid.
#[repr(C)]
struct Record<const N: usize> {
    header: PacketHeader,
    data: [u8; N],
}

/// The time and the socket's and namespace's cookies of a segment: one
/// set of helper calls however many records it becomes, and none for the
/// cookies when the socket's storage holds them (`known`).
#[derive(Clone, Copy)]
pub struct Ids {
    pub ts_ns: u64,
    pub cookie: u64,
    pub netns: u64,
    pub tid: u32,
}

impl Ids {
    /// `whose`: the segment's [`side`].
    #[inline(always)]
    pub fn of(ctx: &SkBuffContext, known: Option<(u64, u64)>, dir: u8, whose: u8) -> Self {
        let raw = ctx.as_ptr();
        // SAFETY: plain helper calls on this program's own context.
        let (cookie, netns) = known
            .unwrap_or_else(|| unsafe { (bpf_get_socket_cookie(raw), bpf_get_netns_cookie(raw)) });
        Self {
            // SAFETY: as above.
            ts_ns: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
            cookie,
            netns,
            tid: if dir == direction::EGRESS {
                sender(cookie, whose)
            } else {
                0
            },
        }
    }
}

/// The thread sending a segment of socket `cookie`, when the task running
/// is the socket's process (a client's, in `OUTBOUND`), or for a server's
/// socket any monitored process: a segment sent from softirq context
/// (after an ACK opened the window, a retransmission) runs on whatever
/// task was interrupted, and gives 0.
#[inline(always)]
fn sender(cookie: u64, whose: u8) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let ours = if whose == side::CLIENT {
        // SAFETY: a read-only copy of a plain value.
        unsafe { OUTBOUND.get(cookie) }.is_some_and(|&v| v & !OUTBOUND_FLAGS == tgid)
    } else {
        // SAFETY: a read-only lookup; the value is not kept.
        unsafe { CLIENTS.get(tgid) }.is_some()
    };
    if ours { tid } else { 0 }
}

/// What every record of one segment shares.
#[derive(Clone, Copy)]
pub struct Out {
    pub ids: Ids,
    pub seg: Segment,
    /// The packet's length (where its payload ends).
    pub len: u32,
    pub port: u16,
    pub dir: u8,
    /// A [`side`] constant.
    pub whose: u8,
}

/// Writes one record: the `payload` bytes at offset `off` of the segment's
/// payload, of which the first `copied` (at most DATA_CAP) are captured;
/// `last`: the segment's last record (its flags, and its tail past
/// DATA_CAP). The bytes are loaded straight into a reservation of the
/// smallest of three sizes that holds them: no second copy, no per-CPU
/// scratch record, and (the ring serialising reservations) nothing a
/// program nested on this CPU can overwrite. The agent reads `captured`
/// bytes and ignores the rest of the room.
#[inline(always)]
pub fn emit(ctx: &SkBuffContext, out: &Out, off: u32, payload: u32, copied: u32, last: bool) {
    let piece = Piece {
        off,
        payload,
        copied,
        last,
    };
    if copied == 0 {
        send::<0>(ctx, out, &piece);
    } else if copied <= SMALL as u32 {
        send::<SMALL>(ctx, out, &piece);
    } else if copied <= MEDIUM as u32 {
        send::<MEDIUM>(ctx, out, &piece);
    } else {
        send::<DATA_CAP>(ctx, out, &piece);
    }
}

/// One record's place in its segment (see [`emit`]).
struct Piece {
    off: u32,
    payload: u32,
    copied: u32,
    last: bool,
}

/// Record sizes below DATA_CAP: a request head, a response head.
const SMALL: usize = 128;
const MEDIUM: usize = 512;

/// Reserves a `Record<N>` and writes `piece` of the segment into it, its
/// header field by field and its bytes (min(`copied`, N)) loaded from
/// the packet: nothing of it is built on the stack, which the HTTP/2
/// walk's `bpf_loop` callback shares with the program (512 bytes).
#[inline(always)]
fn send<const N: usize>(ctx: &SkBuffContext, out: &Out, piece: &Piece) {
    let Some(mut entry) = EVENTS.reserve::<Record<N>>(0) else {
        count_drop(DropReason::RingbufFull);
        return;
    };
    let rec = entry.as_mut_ptr();
    let seg = &out.seg;
    let raw = ctx.as_ptr();
    // SAFETY: `rec` is a reservation of size_of::<Record<N>>() bytes;
    // every header field is written through the raw pointer (plain
    // integers, nothing dropped), the tail by the helper, which checks
    // the packet bounds.
    unsafe {
        let h = core::ptr::addr_of_mut!((*rec).header);
        (*h).kind = EventKind::Packet as u32;
        (*h).captured = 0;
        (*h).ts_ns = out.ids.ts_ns;
        (*h).cookie = out.ids.cookie;
        (*h).netns = out.ids.netns;
        (*h).seq = seg.seq.wrapping_add(piece.off);
        (*h).len = piece.payload;
        (*h).ack = seg.ack;
        (*h).port = out.port;
        (*h).direction = out.dir;
        // Every record carries the ACK flag (the acknowledgment is the
        // segment's); FIN and RST only the segment's last.
        (*h).flags = if piece.last {
            seg.flags
        } else {
            seg.flags & tcp_flags::ACK
        };
        (*h).side = out.whose;
        (*h).remote_port = seg.remote_port;
        (*h).tid = out.ids.tid;
        (*h).tail_len = 0;
        if piece.last && piece.payload > DATA_CAP as u32 {
            let rc = bpf_skb_load_bytes(
                raw,
                out.len - TAIL_CAP as u32,
                core::ptr::addr_of_mut!((*h).tail).cast(),
                TAIL_CAP as u32,
            );
            if rc == 0 {
                (*h).tail_len = TAIL_CAP as u8;
            }
        }
    }
    if N > 0 && piece.copied > 0 {
        // min(copied, N) in [1, N] as the verifier sees it: the mask
        // bounds it above, the + 1 below (N is a power of two). The
        // volatile read hides the range the caller's branch implies, so
        // the compiler keeps the mask.
        // SAFETY: a read of a local.
        let copied = unsafe { core::ptr::read_volatile(&piece.copied) };
        let cap = N as u32;
        let n = (core::cmp::min(copied - 1, cap - 1) & (cap - 1)) + 1;
        // SAFETY: `rec` is a reservation of size_of::<Record<N>>() bytes;
        // 0 < n <= N fits `data`; the helper checks the packet bounds and
        // fails rather than overread.
        let rc = unsafe {
            bpf_skb_load_bytes(
                raw,
                seg.payload_off + piece.off,
                core::ptr::addr_of_mut!((*rec).data).cast(),
                n,
            )
        };
        if rc == 0 {
            // SAFETY: as above.
            unsafe { (*rec).header.captured = n };
        }
    }
    entry.submit(wakeup_flags(size_of::<Record<N>>()));
}

/// A segment's payload, read from the packet (at `base`, where it starts).
#[derive(Clone, Copy)]
pub struct Payload {
    pub skb: *mut __sk_buff,
    pub base: u32,
}

impl Payload {
    #[inline(always)]
    pub fn of(ctx: &SkBuffContext, base: u32) -> Self {
        Self {
            skb: ctx.skb.skb,
            base,
        }
    }
}

impl h2::Bytes for Payload {
    #[inline(always)]
    fn load<const N: usize>(&self, off: u32) -> Option<[u8; N]> {
        SkBuffContext::new(self.skb)
            .load::<[u8; N]>((self.base + off) as usize)
            .ok()
    }

    #[inline(always)]
    fn head(&self, off: u32, k: u32) -> Option<[u8; 4]> {
        let mut b = [0u8; 4];
        // min(k, 4) in [1, 4] as the verifier sees it.
        let n = (core::cmp::min(k.wrapping_sub(1), 3) & 3) + 1;
        // SAFETY: a stack array of 4 bytes and 0 < n <= 4; the helper
        // checks the packet bounds.
        let rc = unsafe {
            bpf_skb_load_bytes(self.skb.cast(), self.base + off, b.as_mut_ptr().cast(), n)
        };
        (rc == 0).then_some(b)
    }
}

/// A segment as an HTTP/2 walk sees it: its payload, and its records.
#[derive(Clone, Copy)]
pub struct Walked {
    pub payload: Payload,
    pub out: Out,
}

impl h2::Bytes for Walked {
    #[inline(always)]
    fn load<const N: usize>(&self, off: u32) -> Option<[u8; N]> {
        self.payload.load(off)
    }

    #[inline(always)]
    fn head(&self, off: u32, k: u32) -> Option<[u8; 4]> {
        self.payload.head(off, k)
    }
}

impl h2::Source for Walked {
    #[inline(always)]
    fn emit(&self, off: u32, len: u32, copied: u32, last: bool) {
        emit(
            &SkBuffContext::new(self.payload.skb),
            &self.out,
            off,
            len,
            copied,
            last,
        );
    }
}
