//! Tying TLS objects on memory BIOs to their sockets as they send, with
//! plaintext keyed by socket (`Config::tls_sockets`).
//!
//! An object whose BIO is a memory buffer (Python's asyncio `SSLObject`,
//! Node.js's TLS sockets) never names a descriptor: the process moves the
//! ciphertext itself. What it writes through the object it sends next,
//! from the same thread, in the same callback: so each write of an untied
//! object is noted per thread (`TLS_PENDING`), and the egress packet
//! program ties the object to the TLS socket that thread sends on next,
//! if that segment starts (within its first few records) an
//! application-data record of the size one of those writes makes, and
//! neither the socket nor the object is tracked already.
//!
//! Until then the object's calls are recorded under the object
//! (`record_flags::OBJECT`) and the agent holds them; the tie's record
//! hands them to the socket's stream. Nothing runs for a socket read: a
//! process that is not monitored pays nothing, and a monitored socket's
//! egress one lookup of its thread while it is a TLS socket.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    programs::SkBuffContext,
};

use apm_common::{
    DropReason, PendingTie, SslKey, TLS_RECORD_MAX, TlsSock, conn_flags, events::EventKind,
    maps::OUTBOUND_TLS, tls_record_fits,
};

use crate::{
    emit::{Key, emit_header_of},
    maps::{OUTBOUND, TLS_LINKS, TLS_PENDING, TLS_SOCKS, count_drop},
};

/// The `TLS_LINKS` value of an object not tied yet whose records the
/// agent holds; one less for each write it sent untied.
pub const HELD: u64 = u64::MAX;
/// Writes an object may send untied: the next one shows its connection
/// is not one apm follows (an outbound call elsewhere), or not one it
/// can tie.
pub const UNTIED_WRITES: u64 = 3;
/// The `TLS_LINKS` value of such an object: its calls are neither read
/// nor counted (its giving up is, once, as `tls_unlinked`).
pub const NOT_OURS: u64 = u64::MAX - 16;

/// Whether a `TLS_LINKS` value is an object still held.
#[inline(always)]
pub fn is_held(value: u64) -> bool {
    value >= HELD - UNTIED_WRITES
}

/// How long after a write its thread's next send may tie the object. The
/// libraries' callers send in the callback of the write itself,
/// microseconds later; a write whose send went to a socket apm does not
/// follow must not linger to match another's.
const TIE_WINDOW_NS: u64 = 10_000_000;

/// Records of a segment looked at for the write's: earlier writes sent
/// together may come first.
const RECORDS: usize = 4;

/// TLS record header: content type, version, length.
const RECORD_HEADER: u32 = 5;
const APPLICATION_DATA: u8 = 23;

/// Thread `pid_tgid` wrote `moved` bytes through untied object `ssl`.
#[inline(always)]
pub fn wrote(pid_tgid: u64, ssl: u64, moved: i64) {
    let plain = core::cmp::min(moved as u64, u64::from(TLS_RECORD_MAX)) as u32;
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a read-only copy of a plain value.
    let pending = match unsafe { TLS_PENDING.get(pid_tgid) } {
        Some(p) if p.ssl == ssl && now.wrapping_sub(p.at_ns) <= TIE_WINDOW_NS => {
            PendingTie { last: plain, ..*p }
        }
        _ => PendingTie {
            ssl,
            at_ns: now,
            first: plain,
            last: plain,
        },
    };
    // An LRU map: a full one forgets its oldest thread.
    let _ = TLS_PENDING.insert(pid_tgid, pending, 0);
}

/// Thread `pid_tgid` calls the library on object `ssl`: a pending write
/// of another object went out already (the callers send in the write's
/// callback), or not to a socket apm follows. Either way it is dropped,
/// so it cannot match a later send of another socket.
#[inline(always)]
pub fn called(pid_tgid: u64, ssl: u64) {
    // SAFETY: a read-only copy of a plain value.
    if unsafe { TLS_PENDING.get(pid_tgid) }.is_some_and(|p| p.ssl != ssl) {
        let _ = TLS_PENDING.remove(pid_tgid);
    }
}

/// Object `ssl` of thread `pid_tgid` is freed: its pending write goes.
#[inline(always)]
pub fn freed(pid_tgid: u64, ssl: u64) {
    // SAFETY: a read-only copy of a plain value.
    if unsafe { TLS_PENDING.get(pid_tgid) }.is_some_and(|p| p.ssl == ssl) {
        let _ = TLS_PENDING.remove(pid_tgid);
    }
}

/// The TLS socket at kernel address `addr` (cookie `cookie`; `port` and
/// `flags` as its `TlsSock` has them; `owner`, a client socket's process)
/// sends a segment of `payload` bytes at `payload_off`: ties the object
/// the running thread wrote through, if this is where that write goes.
/// Returns whether it tied one.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn on_send(
    ctx: &SkBuffContext,
    addr: u64,
    cookie: u64,
    port: u16,
    flags: u8,
    owner: Option<u32>,
    payload_off: u32,
    payload: u32,
) -> bool {
    let pid_tgid = bpf_get_current_pid_tgid();
    if owner.is_some_and(|o| o != (pid_tgid >> 32) as u32) {
        // Sent from softirq in another process's time.
        return false;
    }
    // SAFETY: a read-only copy of a plain value.
    let Some(pending) = (unsafe { TLS_PENDING.get(pid_tgid) }).copied() else {
        return false;
    };
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(pending.at_ns) > TIE_WINDOW_NS
        || !carries(ctx, &pending, payload_off, payload_off + payload)
    {
        return false;
    }
    // SAFETY: a read-only copy of a plain value. A socket known already
    // (a descriptor BIO's, or tied) is some other object's.
    if unsafe { TLS_SOCKS.get(addr) }.is_some_and(|known| known.cookie == cookie) {
        return false;
    }
    let _ = TLS_PENDING.remove(pid_tgid);
    let tgid = (pid_tgid >> 32) as u32;
    let key = SslKey {
        ssl: pending.ssl,
        tgid,
        _pad: 0,
    };
    // SAFETY: as above; an object tied to another socket stays there.
    if unsafe { TLS_LINKS.get(key) }.is_some_and(|&target| !is_held(target)) {
        return false;
    }
    let sock = TlsSock {
        cookie,
        ssl: pending.ssl,
        port,
        flags,
        _pad: 0,
        tgid,
    };
    if TLS_SOCKS.insert(addr, sock, 0).is_err() {
        count_drop(DropReason::TlsSocketsFull);
        return false;
    }
    if TLS_LINKS.insert(key, addr, 0).is_err() {
        let _ = TLS_SOCKS.remove(addr);
        count_drop(DropReason::TlsLinksFull);
        return false;
    }
    if flags & conn_flags::CLIENT != 0
        && let Some(value) = OUTBOUND.get_ptr_mut(cookie)
    {
        // SAFETY: this socket's OUTBOUND value, valid for the program's
        // run; the bit is only ever set. Its ciphertext is no longer
        // copied.
        unsafe { *value |= OUTBOUND_TLS };
    }
    emit_header_of(
        tgid,
        EventKind::Tie,
        Key::socket(cookie),
        port,
        pending.ssl as i64,
    );
    true
}

/// Whether one of the first [`RECORDS`] TLS records between packet
/// offsets `at` and `end`, all of them application data, is the size
/// `pending`'s first or latest write makes. A handshake flight starts
/// with a handshake or change_cipher_spec record, and is never taken.
#[inline(always)]
fn carries(ctx: &SkBuffContext, pending: &PendingTie, mut at: u32, end: u32) -> bool {
    for _ in 0..RECORDS {
        if at + RECORD_HEADER > end {
            return false;
        }
        let Ok(h) = ctx.load::<[u8; 5]>(at as usize) else {
            return false;
        };
        // Application data of TLS 1.0 to 1.3 only.
        if h[0] != APPLICATION_DATA || h[1] != 3 || h[2] > 4 {
            return false;
        }
        let len = u32::from(u16::from_be_bytes([h[3], h[4]]));
        if tls_record_fits(pending.first, len) || tls_record_fits(pending.last, len) {
            return true;
        }
        at += RECORD_HEADER + len;
    }
    false
}
