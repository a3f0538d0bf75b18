//! `tcp:` tracepoints of TCP health: segments retransmitted and resets sent
//! and received, counted by a monitored server's local port (`PORTS`) or a
//! monitored client's pool (`OUT_SOCKETS`, then `OUT_CLOSED` once closed).
//! They fire only on those events, never on a segment's fast path, and
//! often in softirq or timer context: keyed by port and socket address,
//! never by the current task.

use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::tracepoint, programs::TracePointContext};

use apm_common::{PoolCounters, PoolKey, tracepoints};

use crate::{
    maps::{CONFIG, OUT_CLOSED, OUT_SOCKETS, POOLS, PORTS},
    probes::tcp_state::remote_addr,
};

/// Which counter an event adds to.
#[derive(Clone, Copy)]
enum Kind {
    Retransmit,
    ResetSent,
    ResetReceived,
}

/// Where `tcp_retransmit_skb`, `tcp_retransmit_synack` and
/// `tcp_receive_reset` keep the fields they share (checked by the agent
/// against the format files before it attaches).
struct Layout {
    skaddr: usize,
    sport: usize,
    dport: usize,
    family: usize,
    daddr: usize,
    daddr_v6: usize,
}

macro_rules! layout {
    ($m:ident) => {
        Layout {
            skaddr: tracepoints::$m::SKADDR,
            sport: tracepoints::$m::SPORT,
            dport: tracepoints::$m::DPORT,
            family: tracepoints::$m::FAMILY,
            daddr: tracepoints::$m::DADDR,
            daddr_v6: tracepoints::$m::DADDR_V6,
        }
    };
}

const RETRANSMIT: Layout = layout!(tcp_retransmit_skb);
const SYNACK: Layout = layout!(tcp_retransmit_synack);
const RECEIVE_RESET: Layout = layout!(tcp_receive_reset);
use tracepoints::tcp_retransmit_skb::SKBADDR as RETRANSMIT_SKBADDR;
use tracepoints::tcp_send_reset::{
    DADDR as SEND_RESET_DADDR, SADDR as SEND_RESET_SADDR, SKADDR as SEND_RESET_SKADDR,
};

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    // SAFETY: the offset comes from the format file; read_at copies
    // through bpf_probe_read_kernel, which faults safely.
    let skb = unsafe { ctx.read_at::<u64>(RETRANSMIT_SKBADDR) }.unwrap_or(0);
    count_event(&ctx, &RETRANSMIT, Kind::Retransmit, segments(skb));
    0
}

#[tracepoint]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    // A listener's SYN-ACK: the socket is the listener, never a pool's.
    count_event(&ctx, &SYNACK, Kind::Retransmit, 1);
    0
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    count_event(&ctx, &RECEIVE_RESET, Kind::ResetReceived, 1);
    0
}

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets and sizes from the format file; read_at faults safely.
    let (skaddr, sport, dport) = unsafe {
        (
            ctx.read_at::<u64>(SEND_RESET_SKADDR).unwrap_or(0),
            ctx.read_at::<u16>(SEND_RESET_SADDR + 2).unwrap_or(0),
            ctx.read_at::<u16>(SEND_RESET_DADDR + 2).unwrap_or(0),
        )
    };
    let (sport, dport) = (u16::from_be(sport), u16::from_be(dport));
    if add_to_port(sport, Kind::ResetSent, 1) || skaddr == 0 {
        return 0;
    }
    // The remote address after the family and port: sin_addr, or
    // sin6_addr after sin6_flowinfo.
    let at = SEND_RESET_DADDR;
    if let Some(daddr) = remote_addr(&ctx, at, at + 4, at + 8) {
        add_to_pool(skaddr, daddr, dport, Kind::ResetSent, 1);
    }
    0
}

/// Counts an event of a tracepoint laid out as `at`: on its local port if
/// a monitored server's, else on the socket's pool.
#[inline(always)]
fn count_event(ctx: &TracePointContext, at: &Layout, kind: Kind, n: u64) {
    // SAFETY: offsets and sizes from the format files; ports are in host
    // byte order there.
    let (sport, dport, skaddr) = unsafe {
        (
            ctx.read_at::<u16>(at.sport).unwrap_or(0),
            ctx.read_at::<u16>(at.dport).unwrap_or(0),
            ctx.read_at::<u64>(at.skaddr).unwrap_or(0),
        )
    };
    if add_to_port(sport, kind, n) {
        return;
    }
    if let Some(daddr) = remote_addr(ctx, at.family, at.daddr, at.daddr_v6) {
        add_to_pool(skaddr, daddr, dport, kind, n);
    }
}

/// Adds `n` to `port`'s counter if the port is counted.
#[inline(always)]
fn add_to_port(port: u16, kind: Kind, n: u64) -> bool {
    let Some(c) = PORTS.get_ptr_mut(port) else {
        return false;
    };
    // SAFETY: this CPU's copy of a per-CPU value; tracepoint programs do
    // not nest on one CPU, so no other program writes it concurrently.
    let c = unsafe { &mut *c };
    *pick(
        kind,
        &mut c.retransmits,
        &mut c.resets_sent,
        &mut c.resets_received,
    ) += n;
    true
}

/// Adds `n` to the pool of the outbound socket at `skaddr`: an open one,
/// or one just closed whose destination is `daddr`:`dport` (its address
/// may since have been reused by another socket).
#[inline(always)]
fn add_to_pool(skaddr: u64, daddr: [u8; 16], dport: u16, kind: Kind, n: u64) {
    // SAFETY: read-only copies of values the programs wrote.
    let key = match unsafe { OUT_SOCKETS.get(skaddr) } {
        Some(key) => *key,
        // SAFETY: as above.
        None => match unsafe { OUT_CLOSED.get(skaddr) } {
            Some(key) if key.addr == daddr && key.port == dport => *key,
            _ => return,
        },
    };
    let Some(c) = POOLS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: as in add_to_port.
    let c: &mut PoolCounters = unsafe { &mut *c };
    *pick(
        kind,
        &mut c.retransmits,
        &mut c.resets_sent,
        &mut c.resets_received,
    ) += n;
}

/// The counter of `kind` among a value's three.
#[inline(always)]
fn pick<'a>(
    kind: Kind,
    retransmits: &'a mut u64,
    sent: &'a mut u64,
    received: &'a mut u64,
) -> &'a mut u64 {
    match kind {
        Kind::Retransmit => retransmits,
        Kind::ResetSent => sent,
        Kind::ResetReceived => received,
    }
}

/// The segments the retransmitted buffer at `skb` carries (what the
/// kernel adds to `RetransSegs` and the socket's `total_retrans`), or 1
/// if the agent found no offset for them.
#[inline(always)]
fn segments(skb: u64) -> u64 {
    let offset = CONFIG.get(0).map_or(0, |c| c.skb_gso_segs);
    if offset == 0 || skb == 0 {
        return 1;
    }
    // SAFETY: a kernel address from the tracepoint plus a BTF offset;
    // bpf_probe_read_kernel faults safely on a bad one.
    let segs = unsafe { bpf_probe_read_kernel((skb + u64::from(offset)) as *const u16) };
    match segs {
        Ok(n) if n > 0 => u64::from(n),
        _ => 1,
    }
}

/// Keeps a closing outbound socket's pool for the events that follow its
/// state change (see `OUT_CLOSED`).
#[inline(always)]
pub fn remember_closed(skaddr: u64, key: &PoolKey) {
    let _ = OUT_CLOSED.insert(skaddr, *key, 0);
}

/// A socket now at `skaddr` is a new one: whatever closed there before
/// is forgotten (the allocator hands freed addresses straight out).
#[inline(always)]
pub fn forget_closed(skaddr: u64) {
    let _ = OUT_CLOSED.remove(skaddr);
}
