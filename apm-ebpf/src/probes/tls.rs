//! Uprobes on OpenSSL's `SSL_read`, `SSL_write`, `SSL_read_ex` and
//! `SSL_write_ex`: the plaintext of monitored processes' TLS connections,
//! as read and write records of the descriptor the connection is, so the
//! agent pairs them like the syscall capture's; and on `SSL_free`.
//!
//! The agent attaches them in each monitored process that maps the
//! library (other processes do not hit them; PIDS is checked anyway). The
//! attach cookie (`apm_common::tls_layout`) says where the library keeps
//! the BIO and its descriptor. A call on a socket BIO names its
//! descriptor; a call on any other BIO (a memory BIO pair, as in Node.js
//! or Python's asyncio) takes the connection its object is tied to
//! (`tls_link`), or keyed by socket is recorded under its object until
//! the tie (`tls_tie`). With `Config::tls_sockets` a descriptor stands for its
//! kernel socket (`sockets`) and records are keyed by the socket's
//! cookie, as its packets are; otherwise by descriptor, as the syscall
//! capture's. A call that moved bytes on a monitored connection not
//! tracked is counted and not read: a guessed connection could be wrong.
//! Go's crypto/tls ends the same way (`go_tls`).

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_get_attach_cookie},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use apm_common::{ConnKey, DropReason, TlsCall, conn_flags, events::EventKind, tls_layout};

use crate::{
    emit::{Key, emit_buf},
    maps::{CONNS, PIDS, TLS_CALLS, count_drop},
    probes::{
        sockets::{self, Found},
        tls_h2, tls_link, tls_tie,
    },
};

/// A TLS call's connection: a descriptor, or a socket's address and
/// cookie (`TlsCall::target`, `TlsCall::cookie`).
#[derive(Clone, Copy)]
pub struct Conn {
    pub target: u64,
    pub cookie: u64,
    pub port: u16,
}

impl Conn {
    /// A call on a connection that is not known.
    pub const UNLINKED: Self = Self {
        target: TlsCall::UNLINKED,
        cookie: 0,
        port: 0,
    };

    /// A call on a connection apm does not follow (not a loss).
    pub const OTHER: Self = Self {
        target: TlsCall::OTHER,
        cookie: 0,
        port: 0,
    };

    /// Keyed by socket, a call on a memory BIO not tied yet: recorded
    /// under its object (`tls_tie`).
    pub const OBJECT: Self = Self {
        target: TlsCall::OBJECT,
        cookie: 0,
        port: 0,
    };

    /// What the record of `call` is keyed by.
    #[inline(always)]
    fn record(call: &TlsCall) -> Key {
        if call.cookie != 0 {
            Key::socket(call.cookie)
        } else {
            Key::fd(call.target as u32)
        }
    }

    /// The entry of a call of `kind` on this connection.
    #[inline(always)]
    /// `object`: the library's object of the connection.
    pub fn call(self, kind: EventKind, buf: u64, count_at: u64, link: u64, object: u64) -> TlsCall {
        TlsCall {
            buf,
            count_at,
            link,
            target: self.target,
            cookie: self.cookie,
            port: self.port,
            kind: kind as u8,
            _pad: [0; 5],
            object,
        }
    }
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, EventKind::Read, false)
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, EventKind::Read, true)
}

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, EventKind::Write, false)
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, EventKind::Write, true)
}

/// The return of any of the four: the call's record, if it moved bytes.
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    returned::<true>(&ctx)
}

/// The same without following HTTP/2 frames, for kernels without
/// `bpf_loop` (before 5.17).
#[uretprobe]
pub fn ssl_return_whole(ctx: RetProbeContext) -> u32 {
    returned::<false>(&ctx)
}

#[inline(always)]
fn returned<const FOLLOW: bool>(ctx: &RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: read-only copy of the entry this thread's entry probe wrote.
    let Some(call) = (unsafe { TLS_CALLS.get(pid_tgid) }).copied() else {
        return 0;
    };
    let _ = TLS_CALLS.remove(pid_tgid);
    // SSL_read/SSL_write return the byte count; the _ex forms 1 on success
    // and the count through their last argument.
    let ret: i64 = ctx.ret::<i32>().into();
    let moved = if call.count_at == 0 {
        ret
    } else if ret == 1 {
        // SAFETY: user memory read through bpf_probe_read_user (faults
        // safely); the library wrote a size_t there before returning.
        unsafe { bpf_probe_read_user(call.count_at as *const u64) }.map_or(0, |n| n as i64)
    } else {
        0
    };
    finish::<FOLLOW>((pid_tgid >> 32) as u32, &call, moved);
    0
}

/// The record of a finished call of process `tgid` that moved `moved`
/// bytes, or its count as unlinked (a tie refused counts as one too);
/// `FOLLOW`: HTTP/2 frames followed (`tls_h2`).
#[inline(always)]
pub fn finish<const FOLLOW: bool>(tgid: u32, call: &TlsCall, moved: i64) {
    if moved <= 0 || call.target == TlsCall::OTHER {
        return;
    }
    let kind = if call.kind == EventKind::Write as u8 {
        EventKind::Write
    } else {
        EventKind::Read
    };
    let (key, port) = if call.target == TlsCall::OBJECT {
        if !tls_link::hold(tgid, call.link, kind == EventKind::Write) {
            return;
        }
        if kind == EventKind::Write {
            tls_tie::wrote(bpf_get_current_pid_tgid(), call.link, moved);
        }
        (Key::object(call.link), 0)
    } else {
        let linked = call.link == 0 || tls_link::tie(tgid, call.link, call.target);
        if call.target == TlsCall::UNLINKED || !linked {
            count_drop(DropReason::TlsUnlinked);
            return;
        }
        (Conn::record(call), call.port)
    };
    // One call site: the frame walk in it is verified once.
    if FOLLOW {
        tls_h2::emit(tgid, call, kind, key, port, moved);
    } else {
        emit_buf(kind, key, port, moved, call.buf);
    }
}

/// `SSL_free`: the object no longer stands for its socket.
#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if PIDS.get_ptr(tgid).is_none() {
        return 0;
    }
    if let Some(ssl) = ctx.arg::<u64>(0) {
        tls_link::untie(tgid, ssl);
        tls_tie::freed(pid_tgid, ssl);
        tls_h2::freed(tgid, ssl);
    }
    0
}

#[inline(always)]
fn enter(ctx: &ProbeContext, kind: EventKind, ex: bool) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if PIDS.get_ptr(tgid).is_none() {
        return 0;
    }
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return 0;
    };
    let count_at = if ex {
        ctx.arg::<u64>(3).unwrap_or(0)
    } else {
        0
    };
    // SAFETY: a plain helper call on this program's own context.
    let layout = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    if sockets::enabled() {
        tls_tie::called(pid_tgid, ssl);
    }
    let (conn, link) = match descriptor(ssl, layout, kind == EventKind::Write) {
        Some(fd) => (by_descriptor(tgid, fd), 0),
        None => match tls_link::tied(tgid, ssl) {
            Some(conn) => (conn, 0),
            None if sockets::enabled() => (Conn::OBJECT, ssl),
            None => match tls_link::candidate(pid_tgid) {
                Some(conn) if kind == EventKind::Read => (conn, ssl),
                _ => (Conn::UNLINKED, 0),
            },
        },
    };
    if TLS_CALLS
        .insert(pid_tgid, conn.call(kind, buf, count_at, link, ssl), 0)
        .is_err()
    {
        count_drop(DropReason::TlsCallsFull);
    }
    0
}

/// Descriptor `fd` of process `tgid` as a TLS call's connection. By
/// socket: its socket, if that is a monitored connection's. By
/// descriptor: a tracked one (accepted on a monitored port, or a
/// client's), flagged TLS so the syscall capture leaves its (encrypted)
/// bytes alone.
#[inline(always)]
pub fn by_descriptor(tgid: u32, fd: u32) -> Conn {
    if sockets::enabled() {
        let Some(sk) = sockets::socket_of(fd) else {
            return Conn::OTHER;
        };
        return match sockets::tls_socket(sk) {
            Found::Monitored(sock) => Conn {
                target: sk,
                cookie: sock.cookie,
                port: sock.port,
            },
            Found::Other => Conn::OTHER,
            Found::Unknown => Conn::UNLINKED,
        };
    }
    match CONNS.get_ptr_mut(ConnKey { tgid, fd }) {
        // SAFETY: a pointer to this connection's CONNS value, valid for
        // the program's run; a flag bit set by any writer means the same.
        Some(conn) => unsafe {
            (*conn).flags |= conn_flags::TLS;
            Conn {
                target: u64::from(fd),
                cookie: 0,
                port: (*conn).port,
            }
        },
        None => Conn::UNLINKED,
    }
}

/// The descriptor under `ssl`'s read (or write) BIO, if that BIO has one.
#[inline(always)]
fn descriptor(ssl: u64, layout: u64, write: bool) -> Option<u32> {
    let (method_at, num_at) = tls_layout::bio_offsets(layout)?;
    let field = tls_layout::SSL_RBIO + if write { 8 } else { 0 };
    // SAFETY: user memory read through bpf_probe_read_user, which faults
    // safely; the offsets come from the library's checked version.
    let bio = unsafe { bpf_probe_read_user((ssl + field) as *const u64) }.ok()?;
    if bio == 0 {
        return None;
    }
    // SAFETY: as above.
    let method = unsafe { bpf_probe_read_user((bio + method_at) as *const u64) }.ok()?;
    if method == 0 {
        return None;
    }
    // SAFETY: as above: `type` is the first field of bio_method_st.
    let kind = unsafe { bpf_probe_read_user(method as *const u32) }.ok()?;
    if kind & tls_layout::BIO_TYPE_DESCRIPTOR == 0 {
        return None;
    }
    // SAFETY: as above.
    let fd = unsafe { bpf_probe_read_user((bio + num_at) as *const i32) }.ok()?;
    u32::try_from(fd).ok()
}
