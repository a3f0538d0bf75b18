//! TLS keyed by socket (`Config::tls_sockets`), so that no syscall
//! tracepoint is needed for it: a descriptor's kernel socket, found
//! through the current task's file table; the sockets of monitored
//! connections that a TLS library uses (`TLS_SOCKS`), whose records carry
//! the socket's cookie as its packets do; and the end of those
//! connections (`inet_sock_set_state`). Memory-BIO objects are tied to
//! their sockets as they send (`tls_tie`).

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel};

use apm_common::{DropReason, TlsSock, conn_flags, events::EventKind, maps::OUTBOUND_TLS};

use crate::{
    emit::{Key, emit_header_of},
    maps::{CAPTURE_PORTS, CONFIG, OUTBOUND, TLS_SOCKS, count_drop},
};

/// `sock_common.skc_dport` (network order) and `skc_num` (the local
/// port, host order): the same offsets in every kernel since 2.6.
const SKC_DPORT: u64 = 12;
const SKC_NUM: u64 = 14;

const S_IFMT: u16 = 0o170_000;
const S_IFSOCK: u16 = 0o140_000;

/// Whether TLS plaintext is keyed by socket.
#[inline(always)]
pub fn enabled() -> bool {
    CONFIG.get(0).is_some_and(|c| c.tls_sockets != 0)
}

/// A kernel value at `addr`.
#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copies through a checked helper that
    // faults safely on a bad address; the result is plain data.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// The kernel socket behind descriptor `fd` of the current process: its
/// file table's entry, if that file is a socket.
#[inline(always)]
pub fn socket_of(fd: u32) -> Option<u64> {
    let l = &CONFIG.get(0)?.layout;
    // SAFETY: a plain helper call without arguments.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task + u64::from(l.task_files))?;
    let fdt: u64 = read(files + u64::from(l.files_fdt))?;
    let max: u32 = read(fdt + u64::from(l.fdt_max_fds))?;
    if fd >= max {
        return None;
    }
    let fds: u64 = read(fdt + u64::from(l.fdt_fd))?;
    let file: u64 = read(fds + u64::from(fd) * 8)?;
    if file == 0 {
        return None;
    }
    let inode: u64 = read(file + u64::from(l.file_inode))?;
    let mode: u16 = read(inode + u64::from(l.inode_mode))?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let socket: u64 = read(file + u64::from(l.file_private))?;
    let sk: u64 = read(socket + u64::from(l.socket_sk))?;
    (sk != 0).then_some(sk)
}

/// What a TLS call's socket is to apm.
pub enum Found {
    /// A monitored connection's socket (server on a captured port, or a
    /// monitored client's to a captured destination).
    Monitored(TlsSock),
    /// Any other socket: not apm's to read, and not a loss.
    Other,
    /// Monitored but not trackable (no cookie yet, or no room): a loss.
    Unknown,
}

/// The socket at kernel address `sk` as a TLS call's connection, tracked
/// in `TLS_SOCKS` from its first call on. A client's connection is marked
/// in `OUTBOUND` so that its ciphertext is no longer copied.
#[inline(always)]
pub fn tls_socket(sk: u64) -> Found {
    let Some(offset) = CONFIG.get(0).map(|c| c.layout.sk_cookie) else {
        return Found::Unknown;
    };
    let Some(cookie) = read::<u64>(sk + u64::from(offset)) else {
        return Found::Unknown;
    };
    // SAFETY: a read-only copy of a plain value. The cookie tells this
    // socket from an earlier one freed at the same address.
    if let Some(known) = unsafe { TLS_SOCKS.get(sk) }
        && known.cookie == cookie
    {
        return Found::Monitored(*known);
    }
    let Some(local) = read::<u16>(sk + SKC_NUM) else {
        return Found::Unknown;
    };
    let server = CAPTURE_PORTS.get(u32::from(local)).is_some_and(|&c| c != 0);
    if cookie == 0 {
        // Never asked for: no packet program has seen it.
        return if server { Found::Unknown } else { Found::Other };
    }
    let (port, flags) = if server {
        (local, 0)
    } else if let Some(value) = OUTBOUND.get_ptr_mut(cookie) {
        // SAFETY: this socket's OUTBOUND value, valid for the program's
        // run; the bit is only ever set, so a racing writer agrees.
        unsafe { *value |= OUTBOUND_TLS };
        let Some(remote) = read::<u16>(sk + SKC_DPORT) else {
            return Found::Unknown;
        };
        (u16::from_be(remote), conn_flags::CLIENT)
    } else {
        return Found::Other;
    };
    let sock = TlsSock {
        cookie,
        ssl: 0,
        port,
        flags,
        _pad: 0,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
    };
    if TLS_SOCKS.insert(sk, sock, 0).is_err() {
        count_drop(DropReason::TlsSocketsFull);
        return Found::Unknown;
    }
    Found::Monitored(sock)
}

/// The connection of socket `skaddr` ended: its plaintext stream closes.
#[inline(always)]
pub fn closed(skaddr: u64) {
    if !enabled() {
        return;
    }
    // SAFETY: a read-only copy of a plain value.
    let Some(sock) = (unsafe { TLS_SOCKS.get(skaddr) }).copied() else {
        return;
    };
    if TLS_SOCKS.remove(skaddr).is_ok() {
        emit_header_of(
            sock.tgid,
            EventKind::Close,
            Key::socket(sock.cookie),
            sock.port,
            0,
        );
    }
}
