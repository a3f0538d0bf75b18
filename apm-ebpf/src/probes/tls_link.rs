//! Tying TLS objects on memory BIOs to their connections.
//!
//! An object whose BIO is a memory buffer (Python's asyncio `SSLObject`,
//! Node.js's TLS sockets) never touches a descriptor: the process reads
//! the ciphertext from the socket itself and hands it over. So the
//! connection is found from the thread. Keyed by descriptor, each read of
//! a traced process notes, per thread, the tracked descriptor it read
//! (`LAST_READS`, at the syscall's entry); an object's first read that
//! returns plaintext is tied to the connection its thread read last,
//! within [`LINK_WINDOW_NS`], if no other object is tied to it. Keyed by
//! socket, the tie is made as the object's first write is sent
//! (`tls_tie`). One object per connection and one connection per object:
//! a tie lasts until `SSL_free`, or until the connection ends (a new one
//! on the same descriptor or socket address holds no object). A call with
//! no tie is counted, never guessed.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};

use apm_common::{ConnKey, DropReason, LastRead, SslKey, conn_flags, events::EventKind};

use crate::{
    ctx::field_u64,
    emit::{Key, emit_header},
    maps::{CONNS, LAST_READS, TLS_LINKS, TLS_SOCKS, count_drop, maybe_traced},
    probes::{
        sockets,
        tls::Conn,
        tls_tie::{HELD, NOT_OURS, UNTIED_WRITES, is_held},
    },
};

/// How long after a thread reads a connection the plaintext of an untied
/// object may be tied to it. The libraries' callers decrypt in the
/// callback of the read itself, microseconds later.
const LINK_WINDOW_NS: u64 = 1_000_000_000;

/// Offset of the descriptor in the read family's sys_enter format files.
const FD: usize = 16;

macro_rules! note {
    ($name:ident) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            let pid_tgid = bpf_get_current_pid_tgid();
            let tgid = (pid_tgid >> 32) as u32;
            if !maybe_traced(tgid) {
                return 0;
            }
            let fd = field_u64(&ctx, FD) as u32;
            let key = ConnKey { tgid, fd };
            if CONNS.get_ptr(key).is_some() {
                note_read(pid_tgid, u64::from(fd));
            }
            0
        }
    };
}

note!(tls_note_read);
note!(tls_note_readv);
note!(tls_note_recvfrom);
note!(tls_note_recvmsg);

/// Notes that thread `pid_tgid` reads connection `target`.
#[inline(always)]
pub fn note_read(pid_tgid: u64, target: u64) {
    let last = LastRead {
        // SAFETY: plain helper call without arguments.
        at_ns: unsafe { bpf_ktime_get_ns() },
        target,
    };
    // An LRU map: a full one forgets its oldest thread.
    let _ = LAST_READS.insert(pid_tgid, last, 0);
}

fn key(tgid: u32, ssl: u64) -> SslKey {
    SslKey { ssl, tgid, _pad: 0 }
}

/// Where connection `target` of process `tgid` keeps the object tied to
/// it, if it is tracked: its `TlsSock` or its `ConnInfo`.
#[inline(always)]
fn holder(tgid: u32, target: u64) -> Option<(*mut u64, Conn)> {
    if sockets::enabled() {
        let sock = TLS_SOCKS.get_ptr_mut(target)?;
        // SAFETY: this socket's TLS_SOCKS value, valid for the run.
        return Some(unsafe {
            (
                core::ptr::addr_of_mut!((*sock).ssl),
                Conn {
                    target,
                    cookie: (*sock).cookie,
                    port: (*sock).port,
                },
            )
        });
    }
    let conn = CONNS.get_ptr_mut(ConnKey {
        tgid,
        fd: target as u32,
    })?;
    // SAFETY: this connection's CONNS value, valid for the run.
    Some(unsafe {
        (
            core::ptr::addr_of_mut!((*conn).ssl),
            Conn {
                target,
                cookie: 0,
                port: (*conn).port,
            },
        )
    })
}

/// The connection `ssl` is tied to.
#[inline(always)]
pub fn tied(tgid: u32, ssl: u64) -> Option<Conn> {
    // SAFETY: read-only copies of plain values.
    let target = unsafe { TLS_LINKS.get(key(tgid, ssl)) }.copied()?;
    if target == NOT_OURS {
        return Some(Conn::OTHER);
    }
    let (holds, conn) = holder(tgid, target)?;
    // SAFETY: a pointer into a map value, valid for the run.
    (unsafe { *holds } == ssl).then_some(conn)
}

/// Keyed by descriptor, the connection an untied object's read would be
/// tied to: the one thread `pid_tgid` read last, recently, if no object
/// holds it.
#[inline(always)]
pub fn candidate(pid_tgid: u64) -> Option<Conn> {
    // SAFETY: read-only copies of plain values.
    let last = unsafe { LAST_READS.get(pid_tgid) }.copied()?;
    // SAFETY: plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(last.at_ns) > LINK_WINDOW_NS {
        return None;
    }
    let (holds, conn) = holder((pid_tgid >> 32) as u32, last.target)?;
    // SAFETY: as in `tied`.
    (unsafe { *holds } == 0).then_some(conn)
}

/// Ties `ssl` to connection `target` unless another object holds it;
/// returns whether they are tied.
#[inline(always)]
pub fn tie(tgid: u32, ssl: u64, target: u64) -> bool {
    let Some((holds, _)) = holder(tgid, target) else {
        return false;
    };
    // SAFETY: a pointer into a map value, valid for the run. Only a
    // thread of this process ties objects to its connections, and its
    // event loop reads one socket at a time.
    if unsafe { *holds != 0 && *holds != ssl } {
        return false;
    }
    if TLS_LINKS.insert(key(tgid, ssl), target, 0).is_err() {
        count_drop(DropReason::TlsLinksFull);
        return false;
    }
    // SAFETY: as above.
    unsafe { *holds = ssl };
    if !sockets::enabled()
        && let Some(conn) = CONNS.get_ptr_mut(ConnKey {
            tgid,
            fd: target as u32,
        })
    {
        // SAFETY: this connection's CONNS value, valid for the run.
        unsafe { (*conn).flags |= conn_flags::TLS };
    }
    true
}

/// Keyed by socket, untied object `ssl` makes a call (a `write`, or a
/// read): its records are held by the agent until its tie ([`HELD`]), or
/// its free says to drop them. Past [`UNTIED_WRITES`] writes sent untied
/// it is given up ([`NOT_OURS`], counted once, its held records closed):
/// returns false then, and the call is not recorded.
#[inline(always)]
pub fn hold(tgid: u32, ssl: u64, write: bool) -> bool {
    let k = key(tgid, ssl);
    // SAFETY: a read-only copy of a plain value. Anything else there
    // (absent, or a tie whose socket ended) starts afresh.
    let held = match unsafe { TLS_LINKS.get(k) } {
        Some(&v) if is_held(v) => v,
        _ => HELD,
    };
    let next = if write { held - 1 } else { held };
    if next < HELD - UNTIED_WRITES {
        let _ = TLS_LINKS.insert(k, NOT_OURS, 0);
        count_drop(DropReason::TlsUnlinked);
        emit_header(EventKind::Close, Key::object(ssl), 0, 0);
        return false;
    }
    // A full map leaves the object unmarked, and its held records
    // expire in the agent.
    let _ = TLS_LINKS.insert(k, next, 0);
    true
}

/// Unties `ssl` (freed by the library); one never tied closes its held
/// records.
#[inline(always)]
pub fn untie(tgid: u32, ssl: u64) {
    let key = key(tgid, ssl);
    // SAFETY: read-only copy of a plain value.
    let Some(target) = (unsafe { TLS_LINKS.get(key) }).copied() else {
        return;
    };
    let _ = TLS_LINKS.remove(key);
    if is_held(target) {
        emit_header(EventKind::Close, Key::object(ssl), 0, 0);
        return;
    }
    if target == NOT_OURS {
        return;
    }
    if let Some((holds, _)) = holder(tgid, target) {
        // SAFETY: as in `tie`.
        unsafe {
            if *holds == ssl {
                *holds = 0;
            }
        }
    }
}
