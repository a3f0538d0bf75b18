//! A protocol verdict per server connection, decided in the kernel from
//! its first in-order payload bytes and kept in the socket's own storage:
//! a connection no parser reads (TLS, SSH, a database the agent does not
//! decode) puts nothing in the ring after that, and its bytes never reach
//! the agent. Connections per verdict and segments not copied are counted
//! in `VERDICTS`.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_SK_STORAGE_GET_F_CREATE, bpf_sock, bpf_tcp_sock},
    btf_maps::SkStorage,
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_sk_storage_get, bpf_skb_load_bytes,
        bpf_tcp_sock,
    },
    macros::btf_map,
    programs::SkBuffContext,
};

use apm_common::{Verdict, events::direction};

use super::{
    h2::{self, H2Dir},
    records::Payload,
};
use crate::maps::VERDICTS;

/// The packet programs' state of one server socket.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockState {
    /// A [`Verdict`] (0: undecided).
    pub verdict: u32,
    /// A MySQL connection's client has sent its first packet (1).
    pub client_seen: u32,
    /// The socket's and its namespace's cookies, fetched on its first
    /// segment (0: not yet): one line read instead of two helper calls
    /// per segment.
    pub cookie: u64,
    pub netns: u64,
    /// The socket's kernel address, once it may carry TLS: stored and
    /// loaded back, which makes it a number the verifier lets us hash.
    pub addr: u64,
    /// HTTP/2: each direction's frame following, by [`direction`].
    pub h2: [H2Dir; 2],
}

/// What [`admit`] decided about a segment.
pub struct Admission {
    pub copy: bool,
    /// The socket's (cookie, namespace cookie) when its storage has them.
    pub ids: Option<(u64, u64)>,
    /// A segment with payload sent on a socket that may carry TLS: its
    /// (kernel address, cookie), for `tls_tie`.
    pub tls_send: Option<(u64, u64)>,
    /// HTTP/2: the segment's direction's frame following; what it does
    /// not account for is copied whole, whatever the port's records per
    /// segment.
    pub h2: Option<*mut H2Dir>,
}

impl Admission {
    #[inline(always)]
    fn copy() -> Self {
        Self {
            copy: true,
            ids: None,
            tls_send: None,
            h2: None,
        }
    }
}

#[btf_map]
static SOCK_STATE: SkStorage<SockState> = SkStorage::new();

/// Whether a segment of a server socket (not a listener) with `payload`
/// bytes at `payload_off` and sequence number `seq` is to be copied, and
/// the socket's cookies.
/// Undecided connections are copied; the verdict is taken on the first
/// in-order payload: the client's (its first bytes), or the server's when
/// it speaks first (a MySQL greeting is copied, other banners are not). `redis_port`: the port is one of Redis.
#[inline(always)]
pub fn admit(
    ctx: &SkBuffContext,
    dir: u8,
    seq: u32,
    payload_off: u32,
    payload: u32,
    redis_port: bool,
) -> Admission {
    // A request or time-wait socket (no storage) is copied as before.
    let Some((sk, state)) = socket_state(ctx) else {
        return Admission::copy();
    };
    // SAFETY: the storage is this socket's, valid for the program's run.
    let mut verdict = unsafe { (*state).verdict };
    // The cookies only for a segment that is copied: a connection never
    // copied (TLS, SSH) costs no more than its verdict.
    let admit = move |copy: bool| Admission {
        copy,
        ids: copy.then(|| cookies(ctx, state)),
        tls_send: if dir == direction::EGRESS && payload > 0 {
            // SAFETY: as above.
            let addr = unsafe { (*state).addr };
            (addr != 0).then(|| (addr, cookies(ctx, state).0))
        } else {
            None
        },
        // SAFETY: as above; `dir` is 0 or 1.
        h2: (unsafe { (*state).verdict } == Verdict::Http2 as u32)
            .then(|| unsafe { core::ptr::addr_of_mut!((*state).h2[usize::from(dir & 1)]) }),
    };
    if verdict == Verdict::Mysql as u32 && dir == direction::INGRESS && payload > 0 {
        mysql_client_first(ctx, sk, state, payload_off, payload);
        // SAFETY: as above; TLS now, maybe.
        verdict = unsafe { (*state).verdict };
    }
    if verdict == Verdict::Http as u32 && dir == direction::EGRESS && payload >= 12 {
        switching(ctx, sk, state, seq, (payload_off, payload));
    }
    if verdict != Verdict::Undecided as u32 {
        let copy = Verdict::captured_raw(verdict);
        if !copy && payload > 0 {
            count(Verdict::SLOTS + verdict);
        }
        return admit(copy);
    }
    if payload == 0 {
        return admit(true);
    }
    // SAFETY: as above; the helper returns null for a non-TCP socket.
    let tp = unsafe { bpf_tcp_sock(sk) };
    if tp.is_null() {
        return admit(true);
    }
    // SAFETY: a TCP socket's fields, readable by cgroup_skb programs.
    let (received, rcv_nxt) = unsafe { ((*tp).bytes_received, (*tp).rcv_nxt) };
    // A connection older than the programs, or one whose first bytes went
    // by on its listener: its start was not seen, so it stays undecided,
    // unless a segment starts with HTTP/2 frames (joined mid-way).
    if received != 0 {
        seen_as_tls(state, sk);
        if h2::starts_frames(&Payload::of(ctx, payload_off), payload) {
            // This direction followed from its first frame, the other
            // from its next segment that starts with frames.
            start_h2(state, tp, dir, seq, H2Start::Joined);
            count(Verdict::Http2 as u32);
        }
        return admit(true);
    }
    let decided = if dir == direction::EGRESS {
        // The server spoke first: a MySQL greeting is read, anything
        // else (SSH, SMTP banners) is not.
        let mut first = [0u8; 8];
        // SAFETY: a stack array of 8 bytes; the helper checks the packet
        // bounds (a shorter payload fails and is no greeting).
        let rc =
            unsafe { bpf_skb_load_bytes(ctx.as_ptr(), payload_off, first.as_mut_ptr().cast(), 8) };
        if rc == 0 && apm_common::mysql_greeting(&first) {
            Verdict::Mysql
        } else if rc == 0 && apm_common::http2_settings(&first) {
            // An HTTP/2 server's SETTINGS, sent before the client's
            // preface came in: the preface decides.
            return admit(true);
        } else {
            Verdict::ServerFirst
        }
    } else if seq != rcv_nxt {
        // Out of order, ahead of the first bytes: wait for them.
        return admit(true);
    } else {
        let mut first = [0u8; 16];
        // min(payload, 16) in [1, 16] whatever the compiler reorders.
        let n = (core::cmp::min(payload - 1, 15) & 15) + 1;
        // SAFETY: a stack array of 16 bytes and 0 < n <= 16; the helper
        // checks the packet bounds.
        let rc =
            unsafe { bpf_skb_load_bytes(ctx.as_ptr(), payload_off, first.as_mut_ptr().cast(), n) };
        if rc != 0 {
            return admit(true);
        }
        match Verdict::of_request(&first, n as usize, redis_port) {
            Verdict::Undecided => return admit(true),
            v => v,
        }
    };
    // SAFETY: as above.
    unsafe { (*state).verdict = decided as u32 };
    if decided == Verdict::Http2 {
        // Followed from here: the client's from this segment (its
        // preface copied), the server's from the next byte it sends (it
        // writes whole frames; SETTINGS may have gone already).
        start_h2(state, tp, dir, seq, H2Start::Preface);
    }
    count(decided as u32);
    if !decided.captured() {
        count(Verdict::SLOTS + decided as u32);
        // Its cookie all the same, once: a TLS library's probes key the
        // connection's plaintext by it (`sockets`).
        cookies(ctx, state);
        if decided == Verdict::Tls {
            seen_as_tls(state, sk);
        }
    }
    admit(decided.captured())
}

/// Where HTTP/2 is followed from, on the segment that decides it.
#[derive(Clone, Copy)]
#[repr(u8)]
pub enum H2Start {
    /// The segment starts with the client's preface (copied); the other
    /// direction starts a frame at its next byte.
    Preface,
    /// The segment starts with frames, of a connection joined mid-way;
    /// the other direction resumes at a segment that starts with frames.
    Joined,
    /// The server's SETTINGS, before its client's preface: the client's
    /// direction starts with the preface (copied) at its next byte.
    ServerFirst,
}

impl H2Start {
    /// (the segment's first bytes copied, the other direction starts a
    /// frame at its next byte, after this many copied).
    #[inline(always)]
    fn shape(self) -> (u32, bool, u32) {
        match self {
            Self::Preface => (h2::PREFACE_LEN, true, 0),
            Self::Joined => (0, false, 0),
            Self::ServerFirst => (0, true, h2::PREFACE_LEN),
        }
    }
}

/// Starts following HTTP/2 on the socket whose storage is `state`:
/// direction `dir` from sequence number `seq`, the other from its next
/// byte, as `start` says.
#[inline(always)]
fn start_h2(state: *mut SockState, tp: *mut bpf_tcp_sock, dir: u8, seq: u32, start: H2Start) {
    const _: () = assert!(direction::INGRESS == 0 && direction::EGRESS == 1);
    let ingress = dir == direction::INGRESS;
    // SAFETY: a TCP socket's fields, readable by cgroup_skb programs.
    let next = unsafe {
        if ingress {
            (*tp).snd_nxt
        } else {
            (*tp).rcv_nxt
        }
    };
    let (copy, synced, other_copy) = start.shape();
    let this = H2Dir::at(seq, copy);
    let other = if synced {
        H2Dir::at(next, other_copy)
    } else {
        H2Dir::resuming(next)
    };
    // SAFETY: the socket's storage, valid for the program's run.
    unsafe {
        (*state).verdict = Verdict::Http2 as u32;
        (*state).h2 = if ingress {
            [this, other]
        } else {
            [other, this]
        };
    }
}

/// A monitored client's HTTP/2 connection (`OUTBOUND_H2`): direction
/// `dir`'s frame following, started at the segment at `seq` when `start`
/// says how.
#[inline(always)]
pub fn client_h2(
    ctx: &SkBuffContext,
    dir: u8,
    seq: u32,
    start: Option<H2Start>,
) -> Option<*mut H2Dir> {
    let (sk, state) = socket_state(ctx)?;
    if let Some(start) = start {
        // SAFETY: the helper returns null for a non-TCP socket.
        let tp = unsafe { bpf_tcp_sock(sk) };
        if tp.is_null() {
            return None;
        }
        start_h2(state, tp, dir, seq, start);
    }
    // SAFETY: the socket's storage, valid for the program's run; `dir` is
    // 0 or 1.
    (unsafe { (*state).verdict } == Verdict::Http2 as u32)
        .then(|| unsafe { core::ptr::addr_of_mut!((*state).h2[usize::from(dir & 1)]) })
}

/// An HTTP/1.1 server's segment at `seq` (`payload` bytes at
/// `payload_off`) that starts `101 Switching Protocols` with `h2c` in its
/// first 140 bytes: the connection speaks HTTP/2 from after the head
/// (`Upgrade: h2c`, which the agent reads; a WebSocket's 101 stays
/// HTTP's). Both directions are copied whole until each resumes at a
/// segment that starts with frames: this one (the head, and maybe frames
/// after it), and the client's preface.
#[inline(always)]
fn switching(
    ctx: &SkBuffContext,
    sk: *mut bpf_sock,
    state: *mut SockState,
    seq: u32,
    (payload_off, payload): (u32, u32),
) {
    let Ok(first) = ctx.load::<[u8; 12]>(payload_off as usize) else {
        return;
    };
    if &first != b"HTTP/1.1 101" || payload < 28 {
        return;
    }
    // 16-byte windows 14 apart, the last one ending where the payload
    // does: "h2c" is whole in one of them.
    let mut found = false;
    let mut at = 12u32;
    for _ in 0..10 {
        let from = core::cmp::min(at, payload - 16);
        let Ok(w) = ctx.load::<[u8; 16]>((payload_off + from) as usize) else {
            break;
        };
        let mut i = 0;
        while i < 14 {
            found |= w[i] == b'h' && w[i + 1] == b'2' && w[i + 2] == b'c';
            i += 1;
        }
        if found {
            break;
        }
        if from + 16 >= payload {
            break;
        }
        at += 14;
    }
    if !found {
        return;
    }
    // SAFETY: the helper returns null for a non-TCP socket.
    let tp = unsafe { bpf_tcp_sock(sk) };
    if tp.is_null() {
        return;
    }
    // SAFETY: a TCP socket's field, readable by cgroup_skb programs; the
    // socket's storage, valid for the program's run.
    unsafe {
        let received = (*tp).rcv_nxt;
        (*state).verdict = Verdict::Http2 as u32;
        (*state).h2 = [H2Dir::resuming(received), H2Dir::resuming(seq)];
    }
    count(Verdict::Http2 as u32);
}

/// A MySQL client's first packet after the greeting: an SSLRequest (36
/// bytes, sequence 1, `CLIENT_SSL`) makes the connection TLS, no longer
/// copied (its plaintext comes from the TLS library's probes). Once per
/// connection.
#[inline(always)]
fn mysql_client_first(
    ctx: &SkBuffContext,
    sk: *mut bpf_sock,
    state: *mut SockState,
    payload_off: u32,
    payload: u32,
) {
    // SAFETY: the socket's storage, valid for the program's run.
    if unsafe { (*state).client_seen } != 0 {
        return;
    }
    // SAFETY: as above.
    unsafe { (*state).client_seen = 1 };
    if payload != 36 {
        return;
    }
    let mut head = [0u8; 8];
    // SAFETY: a stack array of 8 bytes; the helper checks the packet
    // bounds.
    let rc = unsafe { bpf_skb_load_bytes(ctx.as_ptr(), payload_off, head.as_mut_ptr().cast(), 8) };
    let caps = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if rc == 0 && head[0] == 32 && head[1] == 0 && head[2] == 0 && head[3] == 1 && caps & 0x800 != 0
    {
        // SAFETY: as above.
        unsafe { (*state).verdict = Verdict::Tls as u32 };
        seen_as_tls(state, sk);
    }
}

/// The socket's and its namespace's cookies, from `state` or, the first
/// time, from the helpers (then kept there). Neither cookie is ever 0: a
/// pair half written by the other direction's program on another CPU is
/// fetched afresh.
#[inline(always)]
fn cookies(ctx: &SkBuffContext, state: *mut SockState) -> (u64, u64) {
    // SAFETY: the socket's storage, valid for the program's run.
    let (cookie, netns) = unsafe { ((*state).cookie, (*state).netns) };
    if cookie != 0 && netns != 0 {
        return (cookie, netns);
    }
    let raw = ctx.as_ptr();
    // SAFETY: plain helper calls on this program's own context.
    let ids = unsafe { (bpf_get_socket_cookie(raw), bpf_get_netns_cookie(raw)) };
    // SAFETY: as above.
    unsafe {
        (*state).cookie = ids.0;
        (*state).netns = ids.1;
    }
    ids
}

/// A monitored client's socket (in `OUTBOUND`) whose plaintext may come
/// from a TLS library: its kernel address, for a memory-BIO client
/// object to be tied to it as it sends (`tls_tie`).
#[inline(always)]
pub fn seen_client(ctx: &SkBuffContext) -> Option<u64> {
    let (sk, state) = socket_state(ctx)?;
    // SAFETY: the socket's storage, valid for the program's run.
    let addr = unsafe { (*state).addr };
    if addr != 0 {
        return Some(addr);
    }
    let addr = seen_as_tls(state, sk);
    (addr != 0).then_some(addr)
}

/// The packet's full socket and its storage (created zeroed on first
/// use); `None` for a packet with no socket or a request or time-wait
/// socket, which has no storage.
#[inline(always)]
fn socket_state(ctx: &SkBuffContext) -> Option<(*mut bpf_sock, *mut SockState)> {
    // SAFETY: cgroup_skb programs may read __sk_buff.sk, a socket or null.
    let sk: *mut bpf_sock = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a non-null socket of this packet and our map's address; the
    // helper returns null on anything but a full socket.
    let state = unsafe {
        bpf_sk_storage_get(
            core::ptr::addr_of!(SOCK_STATE).cast_mut().cast(),
            sk.cast(),
            core::ptr::null_mut(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    }
    .cast::<SockState>();
    (!state.is_null()).then_some((sk, state))
}

/// The socket `sk` (whose storage is `state`) may carry TLS: its
/// address is kept for `tls_tie`, and returned.
#[inline(always)]
fn seen_as_tls(state: *mut SockState, sk: *mut bpf_sock) -> u64 {
    // SAFETY: the socket's storage, valid for the program's run. The
    // address goes through memory (volatile, so it is really loaded
    // back): the verifier forbids arithmetic on a socket pointer, not on
    // a number read from a map (privileged programs may store one).
    unsafe {
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*state).addr), sk as u64);
        core::ptr::read_volatile(core::ptr::addr_of!((*state).addr))
    }
}

#[inline(always)]
fn count(slot: u32) {
    if let Some(c) = VERDICTS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot of a per-CPU array, valid for the run; a
        // program nested on this CPU (softirq over process context) may
        // lose one increment, which a counter of this kind can afford.
        unsafe { *c += 1 };
    }
}
