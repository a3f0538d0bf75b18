//! HTTP/2's frame headers followed per direction, so a piece of a
//! connection's bytes (a TCP segment of the `http2` verdict, or the
//! plaintext of a TLS call) becomes records that copy every frame header
//! and every frame apm reads, and stand for DATA payloads without copying
//! them (a record's length runs past the bytes it copied; the agent's
//! framer skips them by the frame's length). Where the bytes come from and
//! where records go is a [`Source`]: packets (`records`) or a TLS call's
//! user buffer (`tls_h2`).
//!
//! The walk over a piece's frames runs in `bpf_loop`, so the verifier
//! checks one step, not every frame a segment may hold. A direction is
//! followed while its frame headers can be placed: bytes seen already
//! (a retransmission) are skipped going out and copied whole coming in
//! (they fill a hole), and a hole (a segment lost or reordered on its
//! way in) inside a frame's payload is stepped over. A hole where a
//! header was, or a header no sender writes, and the direction is copied
//! whole by the caller until a piece starts with frame headers again.

use aya_ebpf::helpers::generated::bpf_loop;

use apm_common::events::DATA_CAP;

/// Frame header length.
const HEADER: u32 = 9;
/// The client connection preface's length.
pub const PREFACE_LEN: u32 = 24;
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
    /// The walk of the piece being followed. Kept here, not on the
    /// stack: a map value's fields are unknown to the verifier at each
    /// step, so it sees one step, where values it tracked would make
    /// every step a new state.
    pub walk: Cursor,
}

/// Where a walk is: the next frame header (piece offset), and the record
/// being made, [rec, ..) with [rec, cap) copied and copying due up to
/// `want`; and whether the walk is over.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Cursor {
    pub at: u32,
    pub rec: u32,
    pub cap: u32,
    pub want: u32,
    pub status: u32,
}

impl Cursor {
    /// A walk whose first record starts at `rec` and copies up to `want`.
    #[inline(always)]
    fn from(rec: u32, want: u32) -> Self {
        Self {
            at: 0,
            rec,
            cap: rec,
            want,
            status: WALKING,
        }
    }
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
            walk: Cursor::from(0, 0),
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

/// The frame whose header starts with `h` and ends at piece offset
/// `body`, noted in `s`: where the next header starts and how far its
/// bytes are copied. Its (end, copy end), or `None` for a header no
/// sender writes.
#[inline(always)]
fn place(s: &mut H2Dir, seq: u32, body: u32, h: [u8; 4]) -> Option<(u32, u32)> {
    let (len, kind) = length_type(h);
    if !plausible(kind) {
        return None;
    }
    let frame_end = body + len;
    let copy_end = if copied(kind, len) { frame_end } else { body };
    s.next = seq.wrapping_add(frame_end);
    s.keep_until = seq.wrapping_add(copy_end);
    Some((frame_end, copy_end))
}

/// Whether a frame's payload is copied: one apm reads, or a short one of
/// any kind but DATA (SETTINGS, PING, WINDOW_UPDATE, PRIORITY), which
/// joins the records around it rather than cut them in two.
#[inline(always)]
fn copied(kind: u8, len: u32) -> bool {
    kept(kind) || (kind != 0 && len <= SHORT)
}

/// A control frame's payload up to this long is copied.
const SHORT: u32 = 64;

/// Whether a header can be one a sender wrote: a type of RFC 9113, or an
/// extension's that peers send (ALTSVC 10, ORIGIN 12, PRIORITY_UPDATE 16).
#[inline(always)]
fn plausible(kind: u8) -> bool {
    kind <= 10 || kind == 12 || kind == 16
}

/// Where a piece's bytes come from.
pub trait Bytes: Copy {
    /// `N` bytes at offset `off` of the piece.
    fn load<const N: usize>(&self, off: u32) -> Option<[u8; N]>;
    /// The first min(`k`, 4) bytes at offset `off` (`k` > 0 bytes are
    /// left there), the rest zero.
    fn head(&self, off: u32, k: u32) -> Option<[u8; 4]>;
}

/// A piece's bytes, and where its records go.
pub trait Source: Bytes {
    /// A record of the `len` bytes at offset `off`, the first `copied`
    /// of them captured; `last`: the piece's last record.
    fn emit(&self, off: u32, len: u32, copied: u32, last: bool);
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

/// Whether a piece of `n` bytes starts with frame headers: two chained,
/// or one that ends the piece (the rule of the agent's framer, which
/// resumes there too).
#[inline(always)]
pub fn starts_frames<B: Bytes>(src: &B, n: u32) -> bool {
    src.load::<9>(0)
        .is_some_and(|first| starts_frames_with(src, n, &first))
}

/// [`starts_frames`] with the piece's first 9 bytes read already.
#[inline(always)]
pub fn starts_frames_with<B: Bytes>(src: &B, n: u32, first: &[u8; 9]) -> bool {
    let Some(len) = resumable(first) else {
        return false;
    };
    let second = HEADER + len;
    if second == n {
        return true;
    }
    second + HEADER <= n && src.load::<9>(second).and_then(|h| resumable(&h)).is_some()
}

/// A walk over one piece, shared with the loop's step; where it is, in
/// the direction's `walk`.
#[repr(C)]
struct Walk<S> {
    src: S,
    dir: *mut H2Dir,
    /// The piece's first byte's sequence number, and its length.
    seq: u32,
    n: u32,
}

const WALKING: u32 = 0;
const DONE: u32 = 1;
const LOST: u32 = 2;

/// Follows a piece of `n` bytes at sequence number `seq` of the
/// direction `d`, writing its records. Returns `None` when they account
/// for every byte, else the piece offset from which the caller copies the
/// rest whole. `refill`: bytes seen already are copied whole (they come
/// in, filling a hole), else skipped (a retransmission going out).
#[inline(always)]
pub fn follow<S: Source>(src: &S, d: *mut H2Dir, seq: u32, n: u32, refill: bool) -> Option<u32> {
    // SAFETY: the direction's state (socket storage or a map value),
    // valid for the program's run; only this direction's pieces reach it.
    let s = unsafe { &mut *d };
    let upto = seq.wrapping_add(n);
    if (upto.wrapping_sub(s.end) as i32) <= 0 {
        return refill.then_some(0);
    }
    if s.synced == 0 {
        let behind = (seq.wrapping_sub(s.end) as i32) < 0;
        s.end = upto;
        if behind || !starts_frames(src, n) {
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
        src: *src,
        dir: d,
        seq,
        n,
    };
    // The part seen already: copied when it may fill a hole, else not.
    let mut c = if refill {
        Cursor::from(0, o)
    } else {
        Cursor::from(o, o)
    };
    if s.part_len != 0 {
        // The rest of a header cut by the last piece's end.
        let k = s.part_len;
        let need = HEADER - k;
        let Some(h) = cut_header(src, s, o, k, n - o) else {
            s.synced = 0;
            return Some(o);
        };
        s.part_len = 0;
        let Some((frame_end, copy_end)) = place(s, seq, o + need, h) else {
            s.synced = 0;
            return Some(o);
        };
        c.want = core::cmp::min(copy_end, n);
        c.at = frame_end;
    } else {
        let at = s.next.wrapping_sub(seq) as i32;
        if at < o as i32 {
            s.synced = 0;
            return Some(o);
        }
        c.at = at as u32;
        let keep = s.keep_until.wrapping_sub(seq) as i32;
        if keep > o as i32 {
            c.want = core::cmp::min(keep as u32, n);
        }
    }
    s.walk = c;
    // SAFETY: `step::<S>` has the callback's signature and reads `w` as
    // the `Walk<S>` it is, on this program's stack for the helper's run.
    unsafe {
        bpf_loop(
            MAX_STEPS,
            step::<S> as *mut core::ffi::c_void,
            core::ptr::addr_of_mut!(w).cast(),
            0,
        );
    }
    // SAFETY: as above; read afresh, the loop's steps wrote it.
    let walk = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*d).walk)) };
    if walk.status == DONE {
        return None;
    }
    // A header no sender writes, or more steps than one walk takes.
    // SAFETY: as above.
    unsafe { (*d).synced = 0 };
    Some(walk.rec)
}

/// The first four bytes of a header of which the last piece held the
/// first `k` (kept in `s.part`), the rest starting at offset `from` of a
/// piece with `left` bytes from there.
#[inline(always)]
fn cut_header<S: Source>(src: &S, s: &H2Dir, from: u32, k: u32, left: u32) -> Option<[u8; 4]> {
    if HEADER - k > left {
        // Cut again: a header over three pieces, which senders do not
        // make.
        return None;
    }
    let p = s.part;
    let b = |i: u32| src.load::<1>(from + i).map(|x| x[0]);
    Some(match k {
        1 => [p[0], b(0)?, b(1)?, b(2)?],
        2 => [p[0], p[1], b(0)?, b(1)?],
        3 => [p[0], p[1], p[2], b(0)?],
        _ => p,
    })
}

/// One step of a walk: a record of a long copied run, or the next frame
/// header, or the piece's last record. Returns 1 to stop the loop. One
/// place writes the step's record, so the verifier sees one copy of it.
#[inline(never)]
extern "C" fn step<S: Source>(_index: u64, walk: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `follow` passes its `Walk<S>`, alive for the loop.
    let w = unsafe { &mut *walk.cast::<Walk<S>>() };
    let (record, stop) = advance(w);
    if let Some((off, len, copied, last)) = record {
        w.src.emit(off, len, copied, last);
    }
    i64::from(stop)
}

/// A record to write: (offset, length, bytes copied, the piece's last).
type Record = (u32, u32, u32, bool);

/// What one step does to the walk, and the record it writes; true: the
/// walk is over.
#[inline(always)]
fn advance<S: Source>(w: &mut Walk<S>) -> (Option<Record>, bool) {
    // SAFETY: the direction's state, valid for the program's run.
    let s = unsafe { &mut *w.dir };
    let mut c = s.walk;
    let (record, stop) = walk_step(w, s, &mut c);
    s.walk = c;
    (record, stop)
}

#[inline(always)]
fn walk_step<S: Source>(w: &Walk<S>, s: &mut H2Dir, c: &mut Cursor) -> (Option<Record>, bool) {
    let cap = DATA_CAP as u32;
    if c.want > c.rec + cap {
        // A copied run longer than a record: a record's worth goes out.
        let record = (c.rec, cap, cap, false);
        c.rec += cap;
        c.cap = c.rec;
        return (Some(record), false);
    }
    if c.want > c.cap {
        c.cap = c.want;
    }
    let n = w.n;
    let at = c.at;
    if at >= n {
        c.status = DONE;
        return (Some((c.rec, n - c.rec, c.cap - c.rec, true)), true);
    }
    let seq = w.seq;
    let (frame_end, copy_end) = if at + HEADER > n {
        // A header cut by the piece's end: copied, and its first bytes
        // kept for the next piece.
        let k = n - at;
        let Some(part) = w.src.head(at, k) else {
            c.status = LOST;
            return (None, true);
        };
        s.part = part;
        s.part_len = k;
        s.next = seq.wrapping_add(at);
        s.keep_until = seq.wrapping_add(n);
        (n, n)
    } else {
        let Some(h) = w.src.load::<4>(at) else {
            c.status = LOST;
            return (None, true);
        };
        let Some(placed) = place(s, seq, at + HEADER, h) else {
            c.status = LOST;
            return (None, true);
        };
        placed
    };
    let mut record = None;
    if at > c.cap {
        // Bytes not copied (a DATA payload) before this header: the
        // record so far stands for them.
        record = Some((c.rec, at - c.rec, c.cap - c.rec, false));
        c.rec = at;
        c.cap = at;
    }
    c.want = core::cmp::min(copy_end, n);
    c.at = frame_end;
    (record, false)
}
