//! `syscalls:sys_exit_accept4` and `sys_exit_accept`: descriptors that
//! tracked processes accept. An untracked process costs one map lookup.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};

use apm_common::{ConnInfo, ConnKey, Drop};

use crate::maps::{CONNS, PIDS, count_drop};

/// Offset of `long ret` in every sys_exit_* format file.
const RET: usize = 16;

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx)
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx)
}

#[inline(always)]
fn on_accept_exit(ctx: &TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(counters) = PIDS.get_ptr_mut(tgid) else {
        return 0;
    };
    // SAFETY: `ret` is a `long` at this offset in every sys_exit_* record.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(RET) }) else {
        return 1;
    };
    if ret < 0 {
        return 0;
    }
    let key = ConnKey {
        tgid,
        fd: ret as u32,
    };
    // SAFETY: plain helper call without arguments.
    let accepted_ns = unsafe { bpf_ktime_get_ns() };
    if CONNS.insert(key, ConnInfo { accepted_ns }, 0).is_err() {
        count_drop(Drop::ConnsFull);
    }
    // SAFETY: this CPU's copy of a per-CPU value; no other program writes it
    // concurrently.
    unsafe { (*counters).accepts += 1 };
    0
}
