//! `sock:inet_sock_set_state`: server-side connections per local port, and
//! the outbound connections of monitored processes per destination.
//!
//! This tracepoint can fire in softirq context, where the current task is not
//! the socket's owner, so everything here is keyed by port and socket
//! address, never by `bpf_get_current_pid_tgid()` — except CLOSE -> SYN_SENT,
//! which only connect() does, in the connecting task.

use aya_ebpf::{bindings::BPF_NOEXIST, macros::tracepoint, programs::TracePointContext};

use aya_ebpf::helpers::bpf_get_current_pid_tgid;

use apm_common::{
    DropReason, IPPROTO_TCP, PeerKey, PoolCounters, PoolKey, PortCounters, SocketInfo, tcp_state,
};

use crate::{
    maps::{
        CLIENTS, CONFIG, LISTEN_CHANGES, OUT_SOCKETS, PEERS, POOLS, PORTS, SOCKETS, count_drop,
    },
    probes::{sockets, tcp_health},
};

// Field offsets from the tracepoint's format file, checked by the agent
// before it attaches.
use apm_common::tracepoints::inet_sock_set_state::{
    DADDR, DADDR_V6, DPORT, FAMILY, NEWSTATE, OLDSTATE, PROTOCOL, SKADDR, SPORT,
};

const AF_INET: u16 = 2;

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    match try_inet_sock_set_state(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: the offsets come from this tracepoint's format file and the
    // types match the sizes listed there; read_at copies through
    // bpf_probe_read_kernel, which faults safely.
    let (protocol, oldstate, newstate) = unsafe {
        (
            ctx.read_at::<u16>(PROTOCOL)?,
            ctx.read_at::<i32>(OLDSTATE)?,
            ctx.read_at::<i32>(NEWSTATE)?,
        )
    };
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    if oldstate == tcp_state::LISTEN {
        // LISTEN -> SYN_RECV is a connection's socket cloned from its
        // listener (every accepted connection), not the listener going.
        if newstate != tcp_state::SYN_RECV {
            count_listen_change();
        }
        return Ok(());
    }
    if newstate == tcp_state::LISTEN {
        count_listen_change();
        return Ok(());
    }
    // SAFETY: as above.
    let skaddr = unsafe { ctx.read_at::<u64>(SKADDR)? };

    if oldstate == tcp_state::CLOSE && newstate == tcp_state::SYN_SENT {
        // A new socket at a closed one's address is not its pool's.
        tcp_health::forget_closed(skaddr);
        open_pool(ctx, skaddr);
    } else if oldstate == tcp_state::SYN_RECV && newstate == tcp_state::ESTABLISHED {
        tcp_health::forget_closed(skaddr);
        // SAFETY: as above; sport is already in host byte order.
        let port = unsafe { ctx.read_at::<u16>(SPORT)? };
        let Some(counters) = port_counters(port) else {
            return Ok(());
        };
        let info = SocketInfo { port, _pad: [0; 6] };
        if SOCKETS
            .insert(skaddr, info, u64::from(BPF_NOEXIST))
            .is_err()
        {
            // Not remembered means its close could not be matched: count
            // neither side so that active stays exact.
            count_drop(DropReason::SocketsFull);
            return Ok(());
        }
        // SAFETY: this CPU's copy of a per-CPU value; no other program writes
        // it concurrently.
        unsafe { (*counters).accepted += 1 };
        remember_peer(ctx, port);
    } else if newstate != tcp_state::ESTABLISHED && newstate != tcp_state::CLOSE_WAIT {
        // The end of a TLS socket's connection ends its plaintext stream.
        sockets::closed(skaddr);
        // SAFETY: read-only copy of a value this program wrote.
        let Some(info) = (unsafe { SOCKETS.get(skaddr) }).copied() else {
            close_pool(skaddr, oldstate == tcp_state::SYN_SENT);
            return Ok(());
        };
        // Removing first makes the close count exactly once even if two
        // transitions of one socket raced.
        if SOCKETS.remove(skaddr).is_err() {
            return Ok(());
        }
        if let Some(counters) = PORTS.get_ptr_mut(info.port) {
            // SAFETY: as for accepted above.
            unsafe { (*counters).closed += 1 };
        }
    }
    Ok(())
}

/// A listener came or went: the agent's discovery rereads procfs.
#[inline(always)]
fn count_listen_change() {
    if let Some(changes) = LISTEN_CHANGES.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array, valid for the
        // program's run; tracepoint programs do not nest on one CPU.
        unsafe { *changes += 1 };
    }
}

/// This CPU's counters for `port`, creating them when every port is counted.
#[inline(always)]
fn port_counters(port: u16) -> Option<*mut PortCounters> {
    if let Some(counters) = PORTS.get_ptr_mut(port) {
        return Some(counters);
    }
    let all_ports = CONFIG.get(0).map(|c| c.all_ports).unwrap_or(0);
    if all_ports == 0 {
        return None;
    }
    // Another CPU may create it first (EEXIST): the lookup below still works.
    if PORTS
        .insert(port, PortCounters::default(), u64::from(BPF_NOEXIST))
        .is_err()
        && PORTS.get_ptr_mut(port).is_none()
    {
        count_drop(DropReason::PortsFull);
        return None;
    }
    PORTS.get_ptr_mut(port)
}

/// A monitored process opened a connection: count it in its pool (this
/// process, that destination) and remember the socket for its close.
#[inline(always)]
fn open_pool(ctx: &TracePointContext, skaddr: u64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a read-only lookup; the value is not kept.
    if unsafe { CLIENTS.get(tgid) }.is_none() {
        return;
    }
    let Some(addr) = daddr(ctx) else {
        return;
    };
    // SAFETY: offset and size from the tracepoint's format file; dport is
    // in host byte order.
    let port = unsafe { ctx.read_at::<u16>(DPORT).unwrap_or(0) };
    let key = PoolKey {
        addr,
        tgid,
        port,
        _pad: 0,
    };
    let counters = match POOLS.get_ptr_mut(key) {
        Some(c) => Some(c),
        None => {
            // Another CPU may create it first (EEXIST): look it up again.
            let _ = POOLS.insert(key, PoolCounters::default(), u64::from(BPF_NOEXIST));
            POOLS.get_ptr_mut(key)
        }
    };
    let Some(counters) = counters else {
        count_drop(DropReason::PoolsFull);
        return;
    };
    if OUT_SOCKETS
        .insert(skaddr, key, u64::from(BPF_NOEXIST))
        .is_err()
    {
        // Its close could not be matched: count neither side.
        count_drop(DropReason::PoolsFull);
        return;
    }
    // SAFETY: this CPU's copy of a per-CPU value; no other program writes
    // it concurrently.
    unsafe { (*counters).opened += 1 };
}

/// An outbound socket left {SYN_SENT, ESTABLISHED, CLOSE_WAIT}; from
/// SYN_SENT (`failed`), it never connected.
#[inline(always)]
fn close_pool(skaddr: u64, failed: bool) {
    // SAFETY: read-only copy of a value this program wrote.
    let Some(key) = (unsafe { OUT_SOCKETS.get(skaddr) }).copied() else {
        return;
    };
    if OUT_SOCKETS.remove(skaddr).is_err() {
        return;
    }
    tcp_health::remember_closed(skaddr, &key);
    if let Some(counters) = POOLS.get_ptr_mut(key) {
        // SAFETY: as in open_pool.
        unsafe {
            (*counters).closed += 1;
            (*counters).connect_failures += u64::from(failed);
        }
    }
}

/// The remote address of the socket, IPv4 mapped into IPv6.
#[inline(always)]
fn daddr(ctx: &TracePointContext) -> Option<[u8; 16]> {
    remote_addr(ctx, FAMILY, DADDR, DADDR_V6)
}

/// The address a tracepoint record of `ctx` holds at `v4` (4 bytes) or
/// `v6` (16), as its family at `family` says; IPv4 mapped into IPv6.
#[inline(always)]
pub fn remote_addr(
    ctx: &TracePointContext,
    family: usize,
    v4: usize,
    v6: usize,
) -> Option<[u8; 16]> {
    // SAFETY: the callers' offsets and sizes come from the tracepoints'
    // format files; read_at copies through bpf_probe_read_kernel, which
    // faults safely.
    let family = unsafe { ctx.read_at::<u16>(family).unwrap_or(0) };
    if family == AF_INET {
        // SAFETY: as above; 4 bytes.
        let v4 = unsafe { ctx.read_at::<[u8; 4]>(v4) }.ok()?;
        Some(mapped_v4(v4))
    } else {
        // SAFETY: as above; 16 bytes.
        unsafe { ctx.read_at::<[u8; 16]>(v6) }.ok()
    }
}

/// Lets accept() learn the local port of the connection it returns: the
/// remote end is what both sides can see. Best effort (LRU map).
#[inline(always)]
fn remember_peer(ctx: &TracePointContext, port: u16) {
    // SAFETY: offsets and sizes from the tracepoint's format file.
    let dport = unsafe { ctx.read_at::<u16>(DPORT).unwrap_or(0) };
    let Some(addr) = daddr(ctx) else {
        return;
    };
    let key = PeerKey {
        port: dport,
        addr,
        ..Default::default()
    };
    let _ = PEERS.insert(key, port, 0);
}

/// `::ffff:a.b.c.d`
#[inline(always)]
pub fn mapped_v4(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}
