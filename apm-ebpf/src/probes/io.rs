//! The read and write families on tracked descriptors:
//! read, readv, recvfrom, recvmsg, write, writev, sendto, sendmsg, sendfile.
//!
//! Entry programs look the (tgid, fd) up in CONNS — the one map lookup an
//! untracked syscall costs — and remember the user pointer in INFLIGHT.
//! Exit programs (one INFLIGHT lookup when untracked) copy the first bytes
//! that actually moved into a ring-buffer record.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};

use apm_common::{
    ConnKey, DropReason, InFlight, conn_flags,
    events::{DATA_CAP, EventKind, TAIL_CAP},
    shape,
};

use crate::{
    ctx::field_u64,
    emit::{Key, emit_buf, emit_data, emit_header},
    maps::{CONNS, INFLIGHT, count_drop, maybe_traced},
    probes::tls_link,
};

// Offsets shared by every format file involved: fd (or out_fd) at 16, the
// buffer / iovec / msghdr pointer at 24, count / vlen at 32; ret at 16 on exit.
const FD: usize = 16;
const PTR: usize = 24;
const VLEN: usize = 32;
const RET: usize = 16;

/// struct user_msghdr: msg_iov at 16, msg_iovlen at 24.
const MSG_IOV: usize = 16;
const MSG_IOVLEN: usize = 24;
/// Largest iovec index considered for a write's tail (UIO_MAXIOV is 1024).
const MAX_IOV: u64 = 1024;

macro_rules! enter {
    ($name:ident, $shape:expr, $read:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            on_enter(&ctx, $shape, $read)
        }
    };
}

macro_rules! exit {
    ($name:ident, $kind:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            on_exit(&ctx, $kind)
        }
    };
}

enter!(sys_enter_read, shape::BUF, true);
enter!(sys_enter_recvfrom, shape::BUF, true);
enter!(sys_enter_readv, shape::IOVEC, true);
enter!(sys_enter_recvmsg, shape::MSGHDR, true);
enter!(sys_enter_write, shape::BUF, false);
enter!(sys_enter_sendto, shape::BUF, false);
enter!(sys_enter_writev, shape::IOVEC, false);
enter!(sys_enter_sendmsg, shape::MSGHDR, false);
enter!(sys_enter_sendfile64, shape::SENDFILE, false);

exit!(sys_exit_read, EventKind::Read);
exit!(sys_exit_recvfrom, EventKind::Read);
exit!(sys_exit_readv, EventKind::Read);
exit!(sys_exit_recvmsg, EventKind::Read);
exit!(sys_exit_write, EventKind::Write);
exit!(sys_exit_sendto, EventKind::Write);
exit!(sys_exit_writev, EventKind::Write);
exit!(sys_exit_sendmsg, EventKind::Write);
exit!(sys_exit_sendfile64, EventKind::Sendfile);

#[inline(always)]
fn on_enter(ctx: &TracePointContext, shape: u16, read: bool) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !maybe_traced((pid_tgid >> 32) as u32) {
        return 0;
    }
    let fd = field_u64(ctx, FD);
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd: fd as u32,
    };
    // SAFETY: read-only copy of a plain value. A TLS connection's
    // plaintext comes from the TLS library's probes, if at all.
    let Some(conn) = (unsafe { CONNS.get(key) }).copied() else {
        return 0;
    };
    // A TLS connection's socket reads may tie its library object to it;
    // a plaintext one's (decided, no TLS) need not be noted.
    if read && conn.flags & (conn_flags::TLS | conn_flags::DECIDED) != conn_flags::DECIDED {
        tls_link::note_read(pid_tgid, u64::from(key.fd));
    }
    if conn.flags & conn_flags::TLS != 0 {
        return 0;
    }
    let (ptr, vlen) = (field_u64(ctx, PTR), field_u64(ctx, VLEN));
    let pending = InFlight {
        ptr,
        fd: fd as u32,
        shape,
        port: conn.port,
        vlen: vlen as u32,
        undecided: u32::from(conn.flags & conn_flags::DECIDED == 0),
    };
    if INFLIGHT.insert(pid_tgid, pending, 0).is_err() {
        count_drop(DropReason::InflightFull);
    }
    0
}

#[inline(always)]
fn on_exit(ctx: &TracePointContext, kind: EventKind) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !maybe_traced((pid_tgid >> 32) as u32) {
        return 0;
    }
    // SAFETY: read-only copy of an entry this thread's enter program wrote.
    let Some(p) = (unsafe { INFLIGHT.get(pid_tgid) }).copied() else {
        return 0;
    };
    let _ = INFLIGHT.remove(pid_tgid);
    // `ret` is a `long` at this offset in every sys_exit_* record.
    let ret = field_u64(ctx, RET) as i64;
    if ret <= 0 {
        return 0;
    }
    let write = kind == EventKind::Write;
    if p.undecided != 0 && !write && handshake_read(&p, (pid_tgid >> 32) as u32, ret) {
        return 0;
    }
    match p.shape {
        shape::BUF => emit_buf(kind, Key::fd(p.fd), p.port, ret, p.ptr),
        shape::IOVEC => emit_iov(kind, &p, p.ptr, u64::from(p.vlen), ret, write),
        shape::MSGHDR => {
            let msg = p.ptr as *const u8;
            // SAFETY: user memory through bpf_probe_read_user (faults safely).
            let iov = unsafe { bpf_probe_read_user(msg.add(MSG_IOV).cast::<u64>()) }.unwrap_or(0);
            // SAFETY: as above.
            let n = unsafe { bpf_probe_read_user(msg.add(MSG_IOVLEN).cast::<u64>()) }.unwrap_or(0);
            emit_iov(kind, &p, iov, n, ret, write);
        }
        shape::SENDFILE => emit_header(EventKind::Sendfile, Key::fd(p.fd), p.port, ret),
        _ => {}
    }
    0
}

/// Looks at a connection's first reads until one has 3 bytes: a TLS
/// handshake record there makes it a TLS connection, whose bytes this
/// capture leaves alone; anything else decides it as before. Returns
/// whether the read is to be left out: a TLS record, or a shorter read
/// starting like one (nginx peeks at 1 byte first). Only a plain buffer
/// is looked at: TLS libraries read their records with read(2).
#[inline(always)]
fn handshake_read(p: &InFlight, tgid: u32, ret: i64) -> bool {
    if p.shape != shape::BUF {
        return false;
    }
    // SAFETY: user memory through bpf_probe_read_user (faults safely);
    // beyond `ret` only the caller's own buffer is read, and not used.
    let Ok(first) = (unsafe { bpf_probe_read_user(p.ptr as *const [u8; 3]) }) else {
        return false;
    };
    if ret < 3 {
        return first[0] == TLS_HANDSHAKE;
    }
    let tls = matches!(first, [TLS_HANDSHAKE, 3, minor] if minor <= 4);
    if let Some(conn) = CONNS.get_ptr_mut(ConnKey { tgid, fd: p.fd }) {
        let flags = conn_flags::DECIDED | if tls { conn_flags::TLS } else { 0 };
        // SAFETY: this connection's CONNS value, valid for the program's
        // run; setting a flag bit twice means the same.
        unsafe { (*conn).flags |= flags };
    }
    tls
}

/// The content type of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Data from the first iovec; for long writes, the tail of the last one.
#[inline(always)]
fn emit_iov(kind: EventKind, p: &InFlight, iov: u64, vlen: u64, ret: i64, write: bool) {
    if iov == 0 || vlen == 0 {
        return;
    }
    let base = iov as *const [u64; 2];
    // SAFETY: user memory through bpf_probe_read_user (faults safely); an
    // iovec is { void *base; size_t len }.
    let Ok([first_base, first_len]) = (unsafe { bpf_probe_read_user(base) }) else {
        return;
    };
    let mut tail = 0;
    if write && ret as u64 > DATA_CAP as u64 && vlen <= MAX_IOV {
        let last_iov = base.wrapping_add((vlen - 1) as usize);
        // SAFETY: as above, at index vlen - 1 < UIO_MAXIOV.
        let last = unsafe { bpf_probe_read_user(last_iov) };
        if let Ok([last_base, last_len]) = last
            && last_len >= TAIL_CAP as u64
        {
            tail = last_base + last_len - TAIL_CAP as u64;
        }
    }
    emit_data(
        kind,
        Key::fd(p.fd),
        p.port,
        ret,
        first_base,
        first_len,
        tail,
    );
}
