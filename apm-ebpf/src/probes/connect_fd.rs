//! `syscalls:sys_enter_connect`: the descriptors of monitored processes'
//! connections to a captured remote port (a Redis server), when their TLS
//! plaintext is read (`Config::client_descriptors`). That plaintext is
//! keyed by descriptor, where the packet capture knows the same
//! connection by socket cookie (`connect.rs`). An untracked process costs
//! one map lookup per connect.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};

use apm_common::{
    ConnInfo, ConnKey, DropReason, conn_flags,
    events::{ConnectEvent, EventKind},
};

use crate::{
    ctx::field_u64,
    emit::emit_connect,
    maps::{CLIENTS, CONFIG, CONNS, REMOTE_PORTS, count_drop, maybe_traced},
    probes::{accept::read_sockaddr, connect::listed},
};

/// Offsets of `fd` and `uservaddr` in sys_enter_connect's format file.
const FD: usize = 16;
const USERVADDR: usize = 24;

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a read-only lookup; the value is not kept.
    if !maybe_traced(tgid) || unsafe { CLIENTS.get(tgid) }.is_none() {
        return 0;
    }
    if CONFIG.get(0).is_none_or(|c| c.client_descriptors == 0) {
        return 0;
    }
    let fd = field_u64(&ctx, FD) as u32;
    let Some((addr, port)) = read_sockaddr(field_u64(&ctx, USERVADDR)) else {
        return 0;
    };
    let captured = REMOTE_PORTS.get(u32::from(port)).copied().unwrap_or(0);
    if !listed(captured, addr, port) {
        return 0;
    }
    let info = ConnInfo {
        port,
        flags: conn_flags::CLIENT,
        ..Default::default()
    };
    if CONNS.insert(ConnKey { tgid, fd }, info, 0).is_err() {
        count_drop(DropReason::ConnsFull);
        return 0;
    }
    let event = ConnectEvent {
        kind: EventKind::Connect as u32,
        tgid,
        cookie: (u64::from(tgid) << 32) | u64::from(fd),
        addr,
        port,
        descriptor: 1,
        joined: 0,
        _pad: [0; 4],
    };
    emit_connect(event);
    0
}
