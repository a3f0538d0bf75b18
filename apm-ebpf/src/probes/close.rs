//! `syscalls:sys_enter_close`: forget a tracked descriptor of a tracked
//! process and tell the agent (the syscall capture, a TLS connection, or a
//! client's connection).
//! Counted at entry: close releases the descriptor even when it returns an
//! error (other than EBADF, which cannot match a tracked fd).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};

use apm_common::{ConnKey, conn_flags, events::EventKind};

use crate::{
    ctx::field_u64,
    emit::{Key, emit_header},
    maps::{CONNS, descriptor_records, traced},
};

/// Offset of `unsigned int fd` in sys_enter_close's format file.
const FD: usize = 16;

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(counters) = traced(tgid) else {
        return 0;
    };
    // The fd field is 8 bytes wide at this offset (format file).
    let fd = field_u64(&ctx, FD);
    let key = ConnKey {
        tgid,
        fd: fd as u32,
    };
    // SAFETY: read-only copy of the entry before removing it.
    let Some(conn) = (unsafe { CONNS.get(key) }).copied() else {
        return 0;
    };
    if CONNS.remove(key).is_ok() {
        if conn.flags & conn_flags::CLIENT == 0 {
            // SAFETY: this CPU's copy of a per-CPU value.
            unsafe { (*counters).closes += 1 };
        }
        if descriptor_records() || conn.flags & (conn_flags::TLS | conn_flags::CLIENT) != 0 {
            emit_header(EventKind::Close, Key::fd(fd as u32), conn.port, 0);
        }
    }
    0
}
