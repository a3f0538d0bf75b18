//! `cgroup_sock_addr` connect4/connect6 on the cgroup-v2 root: a monitored
//! process connecting to a captured remote port, or address and port (a
//! Redis server). These run
//! in the connecting task, so the process is known here and nowhere else
//! on the packet path: the socket's cookie is remembered in `OUTBOUND`, so
//! the packet programs capture its segments, and a record tells the agent
//! whose connection it is and where it goes. A connection to any other
//! port is remembered in `WATCHED` instead (with the record it would have
//! sent), for the packet programs to recognise RESP in its first bytes.
//! The programs always allow the connect.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};

use apm_common::{
    DropReason, IPPROTO_TCP, RemoteAddr,
    events::{ConnectEvent, EventKind},
    maps::ADDR_ONLY,
};

use crate::{
    emit::emit_connect,
    maps::{
        CLIENTS, CONFIG, OUTBOUND, REMOTE_ADDRS, REMOTE_PORTS, WATCHED, WATCHED_PORTS, count_drop,
    },
    probes::tcp_state::mapped_v4,
};

/// What a connect hook returns to let the connect go ahead.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    on_connect::<false>(&ctx);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    on_connect::<true>(&ctx);
    ALLOW
}

#[inline(always)]
fn on_connect<const V6: bool>(ctx: &SockAddrContext) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a read-only lookup; the value is not kept.
    if unsafe { CLIENTS.get(tgid) }.is_none() {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the context is the kernel's bpf_sock_addr for this program;
    // the verifier allows connect hooks to read these fields (user_ip6
    // only in connect6, which is the only place it is read).
    let (protocol, port_be) = unsafe { ((*sa).protocol, (*sa).user_port) };
    if protocol != u32::from(IPPROTO_TCP) {
        return;
    }
    let port = u16::from_be(port_be as u16);
    let captured = REMOTE_PORTS.get(u32::from(port)).copied().unwrap_or(0);
    let detect = CONFIG.get(0).is_some_and(|c| c.detect_resp != 0);
    if captured == 0 && !detect {
        return;
    }
    let addr = if V6 {
        // SAFETY: as above (connect6).
        let w = unsafe { (*sa).user_ip6 };
        let mut a = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let b = w[i].to_ne_bytes();
            a[i * 4] = b[0];
            a[i * 4 + 1] = b[1];
            a[i * 4 + 2] = b[2];
            a[i * 4 + 3] = b[3];
            i += 1;
        }
        a
    } else {
        // SAFETY: as above (connect4).
        mapped_v4(unsafe { (*sa).user_ip4 }.to_ne_bytes())
    };
    let listed = listed(captured, addr, port);
    if !listed && !detect {
        return;
    }
    // SAFETY: a plain helper call on this program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let event = ConnectEvent {
        kind: EventKind::Connect as u32,
        tgid,
        cookie,
        addr,
        port,
        descriptor: 0,
        joined: 0,
        _pad: [0; 4],
    };
    if !listed {
        // Watched until its first payload (packets.rs). The socket first,
        // then the port flag: a packet that sees the flag finds the socket.
        if WATCHED.insert(cookie, event, 0).is_ok()
            && let Some(flag) = WATCHED_PORTS.get_ptr_mut(u32::from(port))
        {
            // SAFETY: an element of an array map, valid for the program's
            // run; only ever set to 1, so a racing writer writes the same.
            unsafe { *flag = 1 };
        }
        return;
    }
    if OUTBOUND.insert(cookie, tgid, 0).is_err() {
        count_drop(DropReason::OutboundFull);
        return;
    }
    emit_connect(event);
}

/// Whether connections to `addr`:`port` are captured, `captured` being
/// the port's `REMOTE_PORTS` value.
#[inline(always)]
pub fn listed(captured: u32, addr: [u8; 16], port: u16) -> bool {
    captured != 0
        && (captured & ADDR_ONLY == 0 || {
            let key = RemoteAddr {
                addr,
                port,
                _pad: [0; 6],
            };
            // SAFETY: a read-only lookup; the value is not kept.
            unsafe { REMOTE_ADDRS.get(key) }.is_some()
        })
}
