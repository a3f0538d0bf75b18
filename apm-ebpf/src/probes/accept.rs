//! `syscalls:sys_{enter,exit}_accept{,4}`: descriptors that tracked
//! processes accept. An untracked process costs one map lookup per hook.
//!
//! At entry the peer sockaddr pointer is remembered; at exit the kernel has
//! filled it in, and the remote address finds the local port that
//! `inet_sock_set_state` recorded in PEERS.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};

use apm_common::{ConnInfo, ConnKey, DropReason, InFlight, PeerKey, events::EventKind, shape};

use crate::{
    emit::{Key, emit_header},
    maps::{CONNS, INFLIGHT, PEERS, count_drop, descriptor_records, traced},
    probes::tcp_state::mapped_v4,
};

/// Offsets in sys_enter_accept{,4} and sys_exit_* format files.
const UPEER_SOCKADDR: usize = 24;
const RET: usize = 16;

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    on_accept_enter(&ctx)
}

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    on_accept_enter(&ctx)
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx)
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx)
}

#[inline(always)]
fn on_accept_enter(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if traced((pid_tgid >> 32) as u32).is_none() {
        return 0;
    }
    // SAFETY: a user pointer at this offset (format file); may be null.
    let ptr = unsafe { ctx.read_at::<u64>(UPEER_SOCKADDR) }.unwrap_or(0);
    let pending = InFlight {
        ptr,
        shape: shape::SOCKADDR,
        ..Default::default()
    };
    if INFLIGHT.insert(pid_tgid, pending, 0).is_err() {
        count_drop(DropReason::InflightFull);
    }
    0
}

#[inline(always)]
fn on_accept_exit(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(counters) = traced(tgid) else {
        return 0;
    };
    // SAFETY: read-only copy of an entry this thread's enter program wrote.
    let sockaddr = unsafe { INFLIGHT.get(pid_tgid) }.map_or(0, |p| p.ptr);
    let _ = INFLIGHT.remove(pid_tgid);
    // SAFETY: `ret` is a `long` at this offset in every sys_exit_* record.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(RET) }) else {
        return 1;
    };
    if ret < 0 || unix(sockaddr) {
        // A Unix socket (mariadbd's, postgres's local clients): no TCP
        // segments, no port; not followed.
        return 0;
    }
    let port = local_port(sockaddr);
    let key = ConnKey {
        tgid,
        fd: ret as u32,
    };
    let info = ConnInfo {
        // SAFETY: plain helper call without arguments.
        accepted_ns: unsafe { bpf_ktime_get_ns() },
        port,
        ..Default::default()
    };
    if CONNS.insert(key, info, 0).is_err() {
        count_drop(DropReason::ConnsFull);
    }
    // SAFETY: this CPU's copy of a per-CPU value; no other program writes it
    // concurrently.
    unsafe { (*counters).accepts += 1 };
    if descriptor_records() {
        emit_header(EventKind::Accept, Key::fd(ret as u32), port, 0);
    }
    0
}

/// Whether the peer sockaddr at user address `sockaddr` is a Unix
/// socket's (unknown when the caller passed none).
#[inline(always)]
fn unix(sockaddr: u64) -> bool {
    if sockaddr == 0 {
        return false;
    }
    // SAFETY: user memory read through bpf_probe_read_user, which faults
    // safely; sa_family is the first field of every sockaddr.
    unsafe { bpf_probe_read_user((sockaddr as *const u8).cast::<u16>()) }
        .is_ok_and(|family| family == AF_UNIX)
}

/// The local port of the connection whose peer is at user address
/// `sockaddr` (filled in by accept), or 0.
#[inline(always)]
fn local_port(sockaddr: u64) -> u16 {
    let Some((addr, port)) = read_sockaddr(sockaddr) else {
        return 0;
    };
    let key = PeerKey {
        addr,
        port,
        ..Default::default()
    };
    // SAFETY: read-only copy of a u16 value.
    let port = unsafe { PEERS.get(key) }.copied().unwrap_or(0);
    let _ = PEERS.remove(key);
    port
}

/// The address (IPv4 mapped) and port (host order) of the IPv4 or IPv6
/// sockaddr at user address `sockaddr`.
#[inline(always)]
pub fn read_sockaddr(sockaddr: u64) -> Option<([u8; 16], u16)> {
    if sockaddr == 0 {
        return None;
    }
    let base = sockaddr as *const u8;
    // SAFETY: user memory read through bpf_probe_read_user, which faults
    // safely; offsets are those of sockaddr_in / sockaddr_in6.
    let family = unsafe { bpf_probe_read_user(base.cast::<u16>()) }.ok()?;
    // SAFETY: as above.
    let port_be = unsafe { bpf_probe_read_user(base.add(2).cast::<u16>()) }.ok()?;
    let addr = match family {
        // SAFETY: as above; sin_addr at offset 4.
        AF_INET => mapped_v4(unsafe { bpf_probe_read_user(base.add(4).cast::<[u8; 4]>()) }.ok()?),
        // SAFETY: as above; sin6_addr at offset 8.
        AF_INET6 => unsafe { bpf_probe_read_user(base.add(8).cast::<[u8; 16]>()) }.ok()?,
        _ => return None,
    };
    Some((addr, u16::from_be(port_be)))
}
