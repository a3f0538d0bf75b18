//! Uprobes on Go's `crypto/tls.(*Conn).Read` and `Write` (register ABI,
//! Go 1.17 and later): the plaintext of a monitored Go program's TLS
//! connections, as read and write records of their descriptors, like
//! OpenSSL's (`tls.rs`).
//!
//! Go moves goroutine stacks, so no return probe rewrites a return
//! address: the agent attaches `go_tls_return` at each `RET` of the two
//! functions, found by disassembling them. A call is keyed by its
//! goroutine (`g`, in R14 under the register ABI), which may run on
//! another thread when the call returns. The descriptor is read through
//! `c.conn` when that interface holds a `*net.TCPConn` (its itab is the
//! attach cookie): `TCPConn.fd` → `netFD.pfd.Sysfd`. Any other conn is
//! unlinked and counted.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_get_attach_cookie},
    macros::uprobe,
    programs::ProbeContext,
};

use apm_common::{DropReason, SslKey, events::EventKind};

use crate::{
    maps::{GO_CALLS, PIDS, count_drop},
    probes::tls::{Conn, by_descriptor, finish},
};

/// `netFD.pfd.Sysfd`: after poll.FD's 16-byte fdMutex.
const SYSFD: u64 = 16;

#[uprobe]
pub fn go_tls_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, EventKind::Read)
}

#[uprobe]
pub fn go_tls_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, EventKind::Write)
}

/// A `RET` of either function: the call's record, if it moved bytes
/// (the count is the first result, in RAX).
#[uprobe]
pub fn go_tls_return(ctx: ProbeContext) -> u32 {
    returned::<true>(&ctx)
}

/// The same without following HTTP/2 frames, for kernels without
/// `bpf_loop` (before 5.17).
#[uprobe]
pub fn go_tls_return_whole(ctx: ProbeContext) -> u32 {
    returned::<false>(&ctx)
}

#[inline(always)]
fn returned<const FOLLOW: bool>(ctx: &ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the context is this probe's pt_regs, readable by uprobes.
    let (g, n) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rax) };
    let key = SslKey {
        ssl: g,
        tgid,
        _pad: 0,
    };
    // SAFETY: read-only copy of the entry this goroutine's call wrote.
    let Some(call) = (unsafe { GO_CALLS.get(key) }).copied() else {
        return 0;
    };
    let _ = GO_CALLS.remove(key);
    finish::<FOLLOW>(tgid, &call, n as i64);
    0
}

#[inline(always)]
fn enter(ctx: &ProbeContext, kind: EventKind) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if PIDS.get_ptr(tgid).is_none() {
        return 0;
    }
    // SAFETY: as above. Register ABI: the receiver in RAX, the slice's
    // pointer in RBX; the goroutine in R14.
    let (conn, buf, g) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx, (*ctx.regs).r14) };
    // SAFETY: a plain helper call on this program's own context.
    let tcp_itab = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let call = descriptor(conn, tcp_itab)
        .map_or(Conn::UNLINKED, |fd| by_descriptor(tgid, fd))
        .call(kind, buf, 0, 0, conn);
    let key = SslKey {
        ssl: g,
        tgid,
        _pad: 0,
    };
    if GO_CALLS.insert(key, call, 0).is_err() {
        count_drop(DropReason::TlsCallsFull);
    }
    0
}

/// The descriptor of `*tls.Conn` `conn` when its `net.Conn` is a
/// `*net.TCPConn` (whose itab is at `tcp_itab`).
#[inline(always)]
fn descriptor(conn: u64, tcp_itab: u64) -> Option<u32> {
    // SAFETY: user memory read through bpf_probe_read_user, which faults
    // safely. tls.Conn starts with `conn net.Conn`: an itab and a pointer.
    let [itab, tcp] = unsafe { bpf_probe_read_user(conn as *const [u64; 2]) }.ok()?;
    if itab != tcp_itab || tcp == 0 {
        return None;
    }
    // SAFETY: as above; TCPConn{conn{fd *netFD}} starts with the pointer.
    let net_fd = unsafe { bpf_probe_read_user(tcp as *const u64) }.ok()?;
    // SAFETY: as above.
    let sysfd = unsafe { bpf_probe_read_user((net_fd + SYSFD) as *const i64) }.ok()?;
    u32::try_from(sysfd).ok()
}
