//! HTTP/2 connections' segments (the `http2` verdict): frame headers are
//! followed per direction in the socket's storage, so a segment becomes
//! records that copy every frame header and every frame apm reads, and
//! stand for DATA payloads without copying them (a record's length runs
//! past the bytes it copied; the agent's framer skips them by the frame's
//! length).
//!
//! The walk over a segment's frames runs in `bpf_loop`, so the verifier
//! checks one step, not every frame a segment may hold. A direction is
//! followed while its frame headers can be placed: bytes seen already
//! (a retransmission) are skipped going out and copied whole coming in
//! (they fill a hole), and a hole (a segment lost or reordered on its
//! way in) inside a frame's payload is stepped over. A hole where a
//! header was, or a header no sender writes, and the direction is copied
//! whole (up to `MAX_CHUNKS` records a segment) until a segment starts
//! with frame headers again.

use aya_ebpf::{bindings::__sk_buff, helpers::generated::bpf_loop, programs::SkBuffContext};

use apm_common::events::{DATA_CAP, direction};

use super::records::{Out, emit};

/// Frame header length.
const HEADER: u32 = 9;
/// The largest frame a peer sends unless its peer raised
/// SETTINGS_MAX_FRAME_SIZE: where a direction resumes, no frame is longer.
const FRAME_MAX: u32 = 16 << 10;
/// Steps of one segment's walk: a frame each, or a record of a long
/// frame apm reads. A 64 KiB segment of 16-byte frames takes 4096.
const MAX_STEPS: u32 = 8192;

/// One direction's state.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct H2Dir {
    /// Followed (1), or copied whole (0).
    pub synced: u32,
    /// The sequence number after the furthest byte seen.
    pub end: u32,
    /// Where the next frame header starts.
    pub next: u32,
    /// The current frame's bytes are copied up to here (a frame apm
    /// reads, running past its segment).
    pub keep_until: u32,
    /// A frame header cut by a segment's end: its first bytes (the four
    /// that matter: length and type), and how many of its nine were seen.
    pub part: [u8; 4],
    pub part_len: u32,
}

impl H2Dir {
    /// A direction followed from sequence number `start`, whose first
    /// `copy` bytes are copied (the client's preface).
    #[inline(always)]
    pub fn at(start: u32, copy: u32) -> Self {
        Self {
            synced: 1,
            end: start,
            next: start.wrapping_add(copy),
            keep_until: start.wrapping_add(copy),
            part: [0; 4],
            part_len: 0,
        }
    }

    /// A direction not followed yet, whose next new byte is `next`: it
    /// resumes at a segment that starts with frames.
    #[inline(always)]
    pub fn resuming(next: u32) -> Self {
        Self {
            synced: 0,
            ..Self::at(next, 0)
        }
    }
}

/// A frame's payload length and type from its header's first four bytes.
#[inline(always)]
fn length_type(h: [u8; 4]) -> (u32, u8) {
    (
        (u32::from(h[0]) << 16) | (u32::from(h[1]) << 8) | u32::from(h[2]),
        h[3],
    )
}

/// Whether apm reads a frame type's payload: HEADERS, RST_STREAM,
/// PUSH_PROMISE, GOAWAY and CONTINUATION.
#[inline(always)]
fn kept(kind: u8) -> bool {
    matches!(kind, 1 | 3 | 5 | 7 | 9)
}

/// Whether a header can be one a sender wrote: a type of RFC 9113, or an
/// extension's that peers send (ALTSVC 10, ORIGIN 12, PRIORITY_UPDATE 16).
#[inline(always)]
fn plausible(kind: u8) -> bool {
    kind <= 10 || kind == 12 || kind == 16
}

/// Whether the frame header `h` is one a direction may resume at: a type
/// of RFC 9113 on a stream its type allows, no longer than `FRAME_MAX`.
#[inline(always)]
fn resumable(h: &[u8; 9]) -> Option<u32> {
    let (len, kind) = length_type([h[0], h[1], h[2], h[3]]);
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
    let on_stream = match kind {
        4 | 6 | 7 => false,
        8 => return (len <= FRAME_MAX && stream & 0x8000_0000 == 0).then_some(len),
        0..=9 => true,
        _ => return None,
    };
    (len <= FRAME_MAX && stream & 0x8000_0000 == 0 && on_stream == (stream != 0)).then_some(len)
}

/// Whether a segment of `n` payload bytes at packet offset `base` starts
/// with frame headers: two chained, or one that ends the segment (the
/// rule of the agent's framer, which resumes there too).
#[inline(always)]
pub fn starts_frames(ctx: &SkBuffContext, base: u32, n: u32) -> bool {
    let Some(len) = ctx
        .load::<[u8; 9]>(base as usize)
        .ok()
        .and_then(|h| resumable(&h))
    else {
        return false;
    };
    let second = HEADER + len;
    if second == n {
        return true;
    }
    second + HEADER <= n
        && ctx
            .load::<[u8; 9]>((base + second) as usize)
            .ok()
            .and_then(|h| resumable(&h))
            .is_some()
}

/// A walk over one segment, shared with the loop's step.
#[repr(C)]
struct Walk {
    skb: *mut __sk_buff,
    dir: *mut H2Dir,
    out: Out,
    /// Payload bytes in the segment.
    n: u32,
    /// Where the next frame header starts (segment offset).
    at: u32,
    /// The record being made: [rec, ..) with [rec, cap) copied, and
    /// copying due up to `want`.
    rec: u32,
    cap: u32,
    want: u32,
    status: u32,
}

const WALKING: u32 = 0;
const DONE: u32 = 1;
const LOST: u32 = 2;

/// Follows a segment of `n` payload bytes of the direction `d`, writing
/// its records. Returns `None` when they account for every byte, else
/// the payload offset from which the caller copies the rest whole.
#[inline(always)]
pub fn follow(ctx: &SkBuffContext, d: *mut H2Dir, out: &Out, n: u32) -> Option<u32> {
    // SAFETY: the socket's storage, valid for the program's run; only
    // this socket's packets of one direction reach this half of it.
    let s = unsafe { &mut *d };
    let seq = out.seg.seq;
    let upto = seq.wrapping_add(n);
    if (upto.wrapping_sub(s.end) as i32) <= 0 {
        // Seen already: a retransmission going out (its bytes reached
        // the agent), or a hole filled coming in.
        return (out.dir == direction::INGRESS).then_some(0);
    }
    if s.synced == 0 {
        let behind = (seq.wrapping_sub(s.end) as i32) < 0;
        s.end = upto;
        if behind || !starts_frames(ctx, out.seg.payload_off, n) {
            return Some(0);
        }
        *s = H2Dir::at(seq, 0);
    }
    let ahead = seq.wrapping_sub(s.end) as i32;
    let mut o = 0;
    if ahead > 0 {
        // A hole: stepped over when it lies inside a frame's payload
        // (whatever of it is read comes later, copied whole).
        if s.part_len != 0 || (s.next.wrapping_sub(seq) as i32) < 0 {
            s.synced = 0;
            s.end = upto;
            return Some(0);
        }
    } else {
        o = (-ahead) as u32;
    }
    s.end = upto;
    let mut w = Walk {
        skb: ctx.skb.skb,
        dir: d,
        out: *out,
        n,
        at: 0,
        rec: o,
        cap: o,
        want: o,
        status: WALKING,
    };
    if s.part_len != 0 {
        // The rest of a header cut by the last segment's end.
        let k = s.part_len;
        let need = HEADER - k;
        let Some(h) = cut_header(ctx, s, out.seg.payload_off + o, k, n - o) else {
            s.synced = 0;
            return Some(o);
        };
        s.part_len = 0;
        let (len, kind) = length_type(h);
        if !plausible(kind) {
            s.synced = 0;
            return Some(o);
        }
        let frame_end = o + need + len;
        let copy_end = if kept(kind) { frame_end } else { o + need };
        s.next = seq.wrapping_add(frame_end);
        s.keep_until = seq.wrapping_add(copy_end);
        w.want = core::cmp::min(copy_end, n);
        w.at = frame_end;
    } else {
        let at = s.next.wrapping_sub(seq) as i32;
        if at < o as i32 {
            s.synced = 0;
            return Some(o);
        }
        w.at = at as u32;
        let keep = s.keep_until.wrapping_sub(seq) as i32;
        if keep > o as i32 {
            w.want = core::cmp::min(keep as u32, n);
        }
    }
    // SAFETY: `step` has the callback's signature and reads `w` as the
    // `Walk` it is, on this program's stack for the helper's run.
    unsafe {
        bpf_loop(
            MAX_STEPS,
            step as *mut core::ffi::c_void,
            core::ptr::addr_of_mut!(w).cast(),
            0,
        );
    }
    if w.status == DONE {
        return None;
    }
    // A header no sender writes, or more steps than one walk takes.
    s.synced = 0;
    Some(w.rec)
}

/// The first four bytes of a header of which the last segment held the
/// first `k` (kept in `s.part`), the rest starting at packet offset
/// `from` of a segment with `left` bytes from there.
#[inline(always)]
fn cut_header(ctx: &SkBuffContext, s: &H2Dir, from: u32, k: u32, left: u32) -> Option<[u8; 4]> {
    if HEADER - k > left {
        // Cut again: a header over three segments, which senders do not
        // make.
        return None;
    }
    let p = s.part;
    let b = |i: u32| ctx.load::<u8>((from + i) as usize).ok();
    Some(match k {
        1 => [p[0], b(0)?, b(1)?, b(2)?],
        2 => [p[0], p[1], b(0)?, b(1)?],
        3 => [p[0], p[1], p[2], b(0)?],
        _ => p,
    })
}

/// One step of a walk: a record of a long copied run, or the next frame
/// header, or the segment's last record. Returns 1 to stop the loop.
#[inline(never)]
extern "C" fn step(_index: u64, walk: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `follow` passes its `Walk`, alive for the loop.
    let w = unsafe { &mut *walk.cast::<Walk>() };
    // The program's own context, kept in the walk.
    let ctx = SkBuffContext::new(w.skb);
    let cap = DATA_CAP as u32;
    if w.want > w.rec + cap {
        // A copied run longer than a record: a record's worth goes out.
        emit(&ctx, &w.out, w.rec, cap, cap, false);
        w.rec += cap;
        w.cap = w.rec;
        return 0;
    }
    if w.want > w.cap {
        w.cap = w.want;
    }
    let n = w.n;
    let at = w.at;
    if at >= n {
        emit(&ctx, &w.out, w.rec, n - w.rec, w.cap - w.rec, true);
        w.status = DONE;
        return 1;
    }
    // SAFETY: the direction's state, valid for the program's run.
    let s = unsafe { &mut *w.dir };
    let seq = w.out.seg.seq;
    let base = w.out.seg.payload_off;
    let (frame_end, copy_end) = if at + HEADER > n {
        // A header cut by the segment's end: copied, and its first bytes
        // kept for the next segment.
        let k = n - at;
        let part = if k >= 4 {
            ctx.load::<[u8; 4]>((base + at) as usize).ok()
        } else {
            let b = |i: u32| ctx.load::<u8>((base + at + i) as usize).ok();
            match k {
                1 => b(0).map(|x| [x, 0, 0, 0]),
                2 => b(0).zip(b(1)).map(|(x, y)| [x, y, 0, 0]),
                _ => b(0).zip(b(1)).zip(b(2)).map(|((x, y), z)| [x, y, z, 0]),
            }
        };
        let Some(part) = part else {
            w.status = LOST;
            return 1;
        };
        s.part = part;
        s.part_len = k;
        s.next = seq.wrapping_add(at);
        s.keep_until = seq.wrapping_add(n);
        (n, n)
    } else {
        let Ok(h) = ctx.load::<[u8; 4]>((base + at) as usize) else {
            w.status = LOST;
            return 1;
        };
        let (len, kind) = length_type(h);
        if !plausible(kind) {
            w.status = LOST;
            return 1;
        }
        let frame_end = at + HEADER + len;
        let copy_end = if kept(kind) { frame_end } else { at + HEADER };
        s.next = seq.wrapping_add(frame_end);
        s.keep_until = seq.wrapping_add(copy_end);
        (frame_end, copy_end)
    };
    if at > w.cap {
        // Bytes not copied (a DATA payload) before this header: the
        // record so far stands for them.
        emit(&ctx, &w.out, w.rec, at - w.rec, w.cap - w.rec, false);
        w.rec = at;
        w.cap = at;
    }
    w.want = core::cmp::min(copy_end, n);
    w.at = frame_end;
    0
}
