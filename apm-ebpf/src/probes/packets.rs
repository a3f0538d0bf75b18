//! `cgroup_skb` ingress and egress on the cgroup-v2 root: the TCP segments
//! of monitored server sockets, as byte-stream pieces for the agent.
//!
//! Every packet of every socket on the host passes here, so the first test
//! is one array lookup on the socket's local port; an unselected port costs
//! that and nothing else. For a selected port, a segment with payload (or a
//! FIN/RST) becomes one record: socket cookie, network-namespace cookie,
//! direction, TCP sequence number, payload length, time, and the first
//! DATA_CAP payload bytes (plus the last TAIL_CAP of a longer one). The
//! programs never drop or alter a packet: they always return 1 (pass).

use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_socket_cookie, macros::cgroup_skb,
    programs::SkBuffContext,
};

use apm_common::{
    DropReason, IPPROTO_TCP, conn_flags,
    events::{ConnectEvent, DATA_CAP, MAX_CHUNKS, direction, side, tcp_flags},
    maps::{ADDR_ONLY, OUTBOUND_FLAGS, OUTBOUND_H2, OUTBOUND_HEAD, OUTBOUND_HELLO, OUTBOUND_TLS},
};

use super::{
    h2,
    records::{Ids, Out, Payload, Segment, Walked, emit},
    sockets, tls_tie,
    verdict::{self, H2Start},
};
use crate::{
    emit::wakeup_flags_ahead,
    maps::{CAPTURE_PORTS, EVENTS, OUTBOUND, REMOTE_PORTS, WATCHED, WATCHED_PORTS, count_drop},
};

/// What a cgroup_skb program returns to let the packet through.
const PASS: i32 = 1;

const IPV6_HEADER: u32 = 40;

#[cgroup_skb]
pub fn capture_ingress(ctx: SkBuffContext) -> i32 {
    capture::<true>(&ctx, direction::INGRESS);
    PASS
}

#[cgroup_skb]
pub fn capture_egress(ctx: SkBuffContext) -> i32 {
    capture::<true>(&ctx, direction::EGRESS);
    PASS
}

/// The same without following HTTP/2 frames, for kernels without
/// `bpf_loop` (before 5.17): an HTTP/2 connection's segments are copied
/// whole, up to `MAX_CHUNKS` records each.
#[cgroup_skb]
pub fn capture_ingress_whole(ctx: SkBuffContext) -> i32 {
    capture::<false>(&ctx, direction::INGRESS);
    PASS
}

#[cgroup_skb]
pub fn capture_egress_whole(ctx: SkBuffContext) -> i32 {
    capture::<false>(&ctx, direction::EGRESS);
    PASS
}

/// `TCP_LISTEN` in the kernel's socket states.
const TCP_LISTEN: u32 = 10;

/// The remote end's port of the packet's socket (host order).
#[inline(always)]
fn remote_port(ctx: &SkBuffContext) -> u32 {
    // SAFETY: the context is the kernel's __sk_buff for this program;
    // remote_port holds the port in network byte order, shifted into the
    // upper half on little-endian kernels.
    let remote = unsafe { (*ctx.skb.skb).remote_port };
    u32::from(u16::from_be(
        (if remote > 0xffff {
            remote >> 16
        } else {
            remote
        }) as u16,
    ))
}

/// Whether the packet's socket is listening: TCP runs the filter of the
/// listener (not of the new connection) on the segment that completes a
/// handshake whose last ACK was lost, so its data is the new connection's
/// first, under the listener's cookie.
#[inline(always)]
fn on_listener(ctx: &SkBuffContext) -> bool {
    // SAFETY: cgroup_skb programs may read __sk_buff.sk, a socket (common
    // part) or null, checked before its state is read, which the verifier
    // allows on the common part.
    unsafe {
        let sk = (*ctx.skb.skb).__bindgen_anon_2.sk;
        !sk.is_null() && (*sk).state == TCP_LISTEN
    }
}

#[inline(always)]
fn capture<const FOLLOW: bool>(ctx: &SkBuffContext, dir: u8) {
    // SAFETY: the context is the kernel's __sk_buff for this program; the
    // verifier allows cgroup_skb programs to read local_port and len.
    let (local, len) = unsafe { ((*ctx.skb.skb).local_port, (*ctx.skb.skb).len) };
    let mut chunks = CAPTURE_PORTS.get(local).copied().unwrap_or(0);
    let mut port = local;
    let mut whose = side::SERVER;
    let mut watched = None;
    // A monitored client's socket that may carry TLS: (address, cookie),
    // and its process.
    let mut client_tls = None;
    let mut client_owner = None;
    // A monitored client's HTTP/2 connection: followed already (`None`),
    // or recognised at this segment (how it starts).
    let mut client_h2 = None;
    // A TLS client's connection not tied to its library yet: its cookie.
    let mut hello = None;

    if chunks == 0 {
        // A monitored client's connection to a captured remote port, or
        // one being watched for RESP? The port first (array lookups), the
        // socket's cookie only then.
        let remote = remote_port(ctx);
        // The address-only flag is the connect hook's business: a socket
        // it let through is in OUTBOUND.
        let listed = REMOTE_PORTS.get(remote).copied().unwrap_or(0) & !ADDR_ONLY;
        let watching = WATCHED_PORTS.get(remote).copied().unwrap_or(0) != 0;
        if listed == 0 && !watching {
            return;
        }
        // SAFETY: a plain helper call on this program's own context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // SAFETY: a read-only copy of a plain value.
        let outbound = unsafe { OUTBOUND.get(cookie) }.copied();
        if outbound.is_some_and(|v| v & OUTBOUND_TLS != 0) {
            // Ciphertext: its plaintext comes from the TLS library, and
            // its end from inet_sock_set_state.
            return;
        }
        if let Some(value) = outbound
            && sockets::enabled()
        {
            client_tls = verdict::seen_client(ctx).map(|addr| (addr, cookie));
            client_owner = Some(value & !OUTBOUND_FLAGS);
        }
        if outbound.is_some_and(|v| v & OUTBOUND_H2 != 0) {
            client_h2 = Some(None);
        }
        hello = outbound
            .is_some_and(|v| v & OUTBOUND_HELLO != 0)
            .then_some(cookie);

        if outbound.is_none() {
            // Looked up before the headers are parsed: most packets on a
            // watched port belong to sockets nobody watches.
            // SAFETY: the value is copied out at once.
            let Some(event) = watching
                .then(|| unsafe { WATCHED.get(cookie) }.copied())
                .flatten()
            else {
                return;
            };
            watched = Some(event);
        }
        chunks = if outbound.is_some_and(|v| v & OUTBOUND_HEAD != 0) {
            1
        } else if listed != 0 {
            listed
        } else {
            MAX_CHUNKS
        };
        port = remote;
        whose = side::CLIENT;
    }
    let Some(mut seg) = segment(ctx, dir) else {
        return;
    };
    if whose == side::CLIENT {
        // As the server sees it: the other end's port is the client's.
        seg.remote_port = local as u16;
    }
    let payload = len.saturating_sub(seg.payload_off);
    // A bare ACK (or the handshake): nothing to record or decide.
    if payload == 0 && seg.flags & (tcp_flags::FIN | tcp_flags::RST) == 0 {
        return;
    }
    if dir == direction::EGRESS
        && payload > 0
        && let Some((addr, cookie)) = client_tls
        && tls_tie::on_send(
            ctx,
            addr,
            cookie,
            port as u16,
            conn_flags::CLIENT,
            client_owner,
            seg.payload_off,
            payload,
        )
    {
        // Ciphertext from here on: its plaintext comes from the library.
        return;
    }
    if let Some(cookie) = hello {
        // Ciphertext: its plaintext comes from the library once tied. A
        // library apm does not probe never ties it: its end goes to the
        // agent, and its entry leaves OUTBOUND.
        if seg.flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
            let _ = OUTBOUND.remove(cookie);
            let out = Out {
                ids: Ids::of(ctx, None, dir, whose),
                seg,
                len,
                port: port as u16,
                dir,
                whose,
            };
            emit(ctx, &out, payload, 0, 0, true);
        }
        return;
    }
    let mut known = None;
    let mut h2 = None;
    if whose == side::SERVER {
        if on_listener(ctx) {
            whose = side::LISTENER;
        } else {
            let admission = verdict::admit(
                ctx,
                dir,
                seg.seq,
                seg.payload_off,
                payload,
                chunks == MAX_CHUNKS,
            );
            if let Some((addr, cookie)) = admission.tls_send
                && sockets::enabled()
                && tls_tie::on_send(
                    ctx,
                    addr,
                    cookie,
                    port as u16,
                    0,
                    None,
                    seg.payload_off,
                    payload,
                )
            {
                return;
            }
            if !admission.copy {
                return;
            }
            h2 = admission.h2;
            known = admission.ids;
        }
    }
    if let Some(event) = watched {
        match recognise(ctx, dir, &event, &seg, payload) {
            Seen::Not => return,
            Seen::Call => {}
            // Its handshake: the plaintext comes from its TLS library.
            Seen::Tls => return,
            Seen::Http2(start) => client_h2 = Some(Some(start)),
        }
    }
    if let Some(start) = client_h2 {
        h2 = verdict::client_h2(ctx, dir, seg.seq, start);
    }
    let out = Out {
        ids: Ids::of(ctx, known, dir, whose),
        seg,
        len,
        port: port as u16,
        dir,
        whose,
    };
    if payload == 0 {
        if seg.flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
            emit(ctx, &out, 0, 0, 0, true);
        }
        return;
    }
    let mut off = 0u32;
    if let Some(d) = h2 {
        chunks = MAX_CHUNKS;
        if FOLLOW {
            let walked = Walked {
                payload: Payload::of(ctx, seg.payload_off),
                out,
            };
            match h2::follow(&walked, d, seg.seq, payload, dir == direction::INGRESS) {
                Some(from) => off = from,
                None => return,
            }
        }
    }
    // Consecutive records of DATA_CAP bytes, the last one carrying the
    // rest of the segment's length (and its FIN/RST): the agent places
    // them by sequence number like separate segments.
    for i in 0..MAX_CHUNKS {
        let rest = payload - off;
        let last = i + 1 >= chunks || rest <= DATA_CAP as u32;
        let piece = if last { rest } else { DATA_CAP as u32 };
        emit(ctx, &out, off, piece, piece, last);
        if last {
            return;
        }
        off += DATA_CAP as u32;
    }
}

/// What [`recognise`] made of a watched connection's segment.
enum Seen {
    /// Not a call apm reads (or still watching): not captured.
    Not,
    /// A call of a protocol read from its segments' heads.
    Call,
    /// A TLS client's handshake (with `--capture-tls`): its plaintext
    /// comes from the library's probes, which find the socket in
    /// `OUTBOUND`.
    Tls,
    /// HTTP/2, its frames followed from this segment.
    Http2(H2Start),
}

/// Ends the watch of the connection whose `WATCHED` value is `event`
/// at its first payload (or its end): when the client sends first and that
/// starts a RESP array (`*` and a digit), an HTTP/1.x request line, the
/// HTTP/2 preface, or a PostgreSQL startup message
/// (or SSLRequest, or a PostgreSQL or MySQL request or HTTP/2 frames of a
/// connection opened earlier), or the server sends a MySQL greeting
/// first, or (with `--capture-tls`) the client sends a TLS ClientHello,
/// the socket moves to `OUTBOUND` and `event`, its
/// connect record, goes to the agent ahead of this segment. An HTTP/2
/// server's SETTINGS sent first make it an HTTP/2 client's.
#[inline(always)]
fn recognise(
    ctx: &SkBuffContext,
    dir: u8,
    event: &ConnectEvent,
    seg: &Segment,
    payload: u32,
) -> Seen {
    if payload == 0 && seg.flags & (tcp_flags::FIN | tcp_flags::RST) == 0 {
        // The handshake and bare ACKs: still watching.
        return Seen::Not;
    }
    let first: [u8; 8] = if payload >= 8 {
        ctx.load(seg.payload_off as usize).unwrap_or([0; 8])
    } else if payload >= 5 {
        // A MySQL COM_PING, or a statement id's command.
        let five: [u8; 5] = ctx.load(seg.payload_off as usize).unwrap_or([0; 5]);
        [five[0], five[1], five[2], five[3], five[4], 0, 0, 0]
    } else if payload >= 2 {
        let two: [u8; 2] = ctx.load(seg.payload_off as usize).unwrap_or([0; 2]);
        [two[0], two[1], 0, 0, 0, 0, 0, 0]
    } else {
        [0; 8]
    };
    let _ = WATCHED.remove(event.cookie);
    let resp = first[0] == b'*' && first[1].is_ascii_digit();
    // A connection opened before the agent (put here by the agent) joins
    // in the middle: its next request, not a startup (a new connection
    // never starts with one).
    let head = [first[0], first[1], first[2], first[3], first[4]];
    let joined = event.joined != 0 && payload >= 5;
    let postgres =
        apm_common::postgres_startup(&first) || (joined && apm_common::postgres_request(&head));
    let mysql = joined && apm_common::mysql_command(&head);
    // An HTTP/1.x request line: a client's call (`first` is zero-padded
    // when the payload is shorter, which no request line is).
    let http = apm_common::http_request(&first);
    // MySQL's server speaks first: its greeting comes in.
    let greeting = dir == direction::INGRESS && apm_common::mysql_greeting(&first);
    let h2 = if dir == direction::EGRESS && apm_common::http2_preface(&first) {
        Some(H2Start::Preface)
    } else if dir == direction::INGRESS && event.joined == 0 && apm_common::http2_settings(&first) {
        // An HTTP/2 server speaks first (gRPC's may): its SETTINGS, then
        // the client's preface.
        Some(H2Start::ServerFirst)
    } else if joined && h2::starts_frames(&Payload::of(ctx, seg.payload_off), payload) {
        Some(H2Start::Joined)
    } else {
        None
    };
    // A TLS ClientHello record, whatever protocol it carries.
    let tls = dir == direction::EGRESS
        && first[0] == 0x16
        && first[1] == 0x03
        && first[5] == 0x01
        && sockets::enabled();
    if !greeting
        && !tls
        && h2.is_none()
        && (dir != direction::EGRESS || !(resp || postgres || mysql || http))
    {
        return Seen::Not;
    }
    let value = if http {
        event.tgid | OUTBOUND_HEAD
    } else if tls && h2.is_none() {
        event.tgid | OUTBOUND_HELLO
    } else if h2.is_some() {
        event.tgid | OUTBOUND_H2
    } else {
        event.tgid
    };
    if OUTBOUND.insert(event.cookie, value, 0).is_err() {
        count_drop(DropReason::OutboundFull);
        return Seen::Not;
    }
    if EVENTS
        .output::<ConnectEvent>(event, wakeup_flags_ahead(size_of::<ConnectEvent>()))
        .is_err()
    {
        count_drop(DropReason::RingbufFull);
    }
    match h2 {
        Some(start) => Seen::Http2(start),
        None if tls => Seen::Tls,
        None => Seen::Call,
    }
}

/// Parses the IP and TCP headers. The packet starts at the network header;
/// its IP version is read from the packet itself, because a dual-stack
/// (IPv6) socket carries IPv4 packets. One helper call covers an IPv4 and
/// TCP header without options (any TCP/IPv4 packet has those 40 bytes); a
/// second one reads the TCP header after IPv4 options or IPv6.
#[inline(always)]
fn segment(ctx: &SkBuffContext, dir: u8) -> Option<Segment> {
    let head: [u8; 40] = ctx.load(0).ok()?;
    let (ip_len, protocol) = match head[0] >> 4 {
        4 => (u32::from(head[0] & 0x0f) * 4, head[9]),
        // Extension headers before TCP are rare on server traffic and not
        // followed: such packets are not captured.
        6 => (IPV6_HEADER, head[6]),
        _ => return None,
    };
    if u16::from(protocol) != IPPROTO_TCP {
        return None;
    }
    // Ports at 0..4, seq at 4..8, ack at 8..12, data offset at 12, flags
    // at 13 of the TCP header.
    let tcp: [u8; 14] = if ip_len == 20 {
        let mut t = [0u8; 14];
        t.copy_from_slice(&head[20..34]);
        t
    } else {
        ctx.load(ip_len as usize).ok()?
    };
    Some(Segment {
        payload_off: ip_len + u32::from(tcp[12] >> 4) * 4,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        flags: tcp[13],
        // From the header, not the socket: a listener's socket has none.
        remote_port: if dir == direction::INGRESS {
            u16::from_be_bytes([tcp[0], tcp[1]])
        } else {
            u16::from_be_bytes([tcp[2], tcp[3]])
        },
    })
}
