//! Tying TLS objects on memory BIOs to their sockets.
//!
//! An object whose BIO is a memory buffer (Python's asyncio `SSLObject`,
//! Node.js's TLS sockets) never touches a descriptor: the process reads
//! the ciphertext from the socket itself and hands it over. So the socket
//! is found from the thread. The read entries note which tracked
//! descriptor each thread of a monitored process starts reading
//! (`LAST_READS`); an object's first read that returns plaintext is tied
//! to the descriptor its thread started reading last, within
//! [`LINK_WINDOW_NS`], if no other object is tied to it. One object per
//! socket and one socket per object: a tie lasts until `SSL_free`, or
//! until the descriptor is closed (a new connection on the same number
//! holds no object). A call with no tie is counted, never guessed.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};

use apm_common::{ConnKey, DropReason, LastRead, SslKey, conn_flags};

use crate::{
    ctx::field_u64,
    maps::{CONNS, LAST_READS, TLS_LINKS, count_drop, maybe_traced},
};

/// How long after a thread starts reading a socket the plaintext of an
/// untied object may be tied to it. The libraries' callers decrypt in the
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
                note_read(pid_tgid, fd);
            }
            0
        }
    };
}

note!(tls_note_read);
note!(tls_note_readv);
note!(tls_note_recvfrom);
note!(tls_note_recvmsg);

/// Notes that thread `pid_tgid` starts reading tracked descriptor `fd`.
#[inline(always)]
pub fn note_read(pid_tgid: u64, fd: u32) {
    let last = LastRead {
        // SAFETY: plain helper call without arguments.
        at_ns: unsafe { bpf_ktime_get_ns() },
        fd,
        _pad: 0,
    };
    // An LRU map: a full one forgets its oldest thread.
    let _ = LAST_READS.insert(pid_tgid, last, 0);
}

fn key(tgid: u32, ssl: u64) -> SslKey {
    SslKey { ssl, tgid, _pad: 0 }
}

/// The socket `ssl` is tied to, as (descriptor, local port).
#[inline(always)]
pub fn tied(tgid: u32, ssl: u64) -> Option<(u32, u16)> {
    // SAFETY: read-only copies of plain values.
    let fd = unsafe { TLS_LINKS.get(key(tgid, ssl)) }.copied()?;
    // SAFETY: as above.
    let conn = unsafe { CONNS.get(ConnKey { tgid, fd }) }?;
    (conn.ssl == ssl).then_some((fd, conn.port))
}

/// The socket an untied object's read would be tied to: the one thread
/// `pid_tgid` started reading last, recently, if no object holds it.
#[inline(always)]
pub fn candidate(pid_tgid: u64) -> Option<(u32, u16)> {
    // SAFETY: read-only copies of plain values.
    let last = unsafe { LAST_READS.get(pid_tgid) }.copied()?;
    // SAFETY: plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(last.at_ns) > LINK_WINDOW_NS {
        return None;
    }
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: as above.
    let conn = unsafe { CONNS.get(ConnKey { tgid, fd: last.fd }) }?;
    (conn.ssl == 0).then_some((last.fd, conn.port))
}

/// Ties `ssl` to descriptor `fd` unless another object holds it; returns
/// whether they are tied.
#[inline(always)]
pub fn tie(tgid: u32, ssl: u64, fd: u32) -> bool {
    let Some(conn) = CONNS.get_ptr_mut(ConnKey { tgid, fd }) else {
        return false;
    };
    // SAFETY: this connection's CONNS value, valid for the program's run.
    // Only a thread of this process ties objects to its descriptors, and
    // its event loop reads one socket at a time.
    unsafe {
        if (*conn).ssl != 0 && (*conn).ssl != ssl {
            return false;
        }
    }
    if TLS_LINKS.insert(key(tgid, ssl), fd, 0).is_err() {
        count_drop(DropReason::TlsLinksFull);
        return false;
    }
    // SAFETY: as above.
    unsafe {
        (*conn).ssl = ssl;
        (*conn).flags |= conn_flags::TLS;
    }
    true
}

/// Unties `ssl` (freed by the library).
#[inline(always)]
pub fn untie(tgid: u32, ssl: u64) {
    let key = key(tgid, ssl);
    // SAFETY: read-only copy of a plain value.
    let Some(fd) = (unsafe { TLS_LINKS.get(key) }).copied() else {
        return;
    };
    let _ = TLS_LINKS.remove(key);
    if let Some(conn) = CONNS.get_ptr_mut(ConnKey { tgid, fd }) {
        // SAFETY: as in `tie`.
        unsafe {
            if (*conn).ssl == ssl {
                (*conn).ssl = 0;
            }
        }
    }
}
