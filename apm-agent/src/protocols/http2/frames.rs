//! HTTP/2 framing (RFC 9113 §4): one direction's byte stream, in order,
//! cut into frames. The stream comes in pieces, each a run of bytes of
//! which a prefix was captured; bytes not captured may only be DATA
//! payload (the capture keeps every frame header and every other frame's
//! payload). A frame header not seen loses the framing for good: there
//! is no marker to find the next one by.

/// The client connection preface, before the client's first frame.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame header length.
pub const HEADER: usize = 9;

pub mod kind {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PUSH_PROMISE: u8 = 5;
    pub const GOAWAY: u8 = 7;
    pub const CONTINUATION: u8 = 9;
}

pub mod flags {
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Payload bytes kept of a frame apm reads (HEADERS, CONTINUATION,
/// PUSH_PROMISE, RST_STREAM, GOAWAY): a longer one is cut, which loses
/// its header block.
pub const KEPT_MAX: usize = 16 << 10;

/// A whole frame, as the framer hands it on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    /// Its payload's length.
    pub len: u32,
    /// The payload, for the kinds apm reads (empty for others); `cut`
    /// when part of it was not captured or it passed [`KEPT_MAX`].
    pub payload: Vec<u8>,
    pub cut: bool,
    /// When its first byte and its last byte were seen.
    pub start_ns: u64,
    pub end_ns: u64,
    /// The TCP sequence number of its first byte, on packets.
    pub seq: Option<u32>,
}

/// Whether apm reads a frame kind's payload.
fn kept(kind: u8) -> bool {
    matches!(
        kind,
        kind::HEADERS | kind::CONTINUATION | kind::PUSH_PROMISE | kind::RST_STREAM | kind::GOAWAY
    )
}

/// Why the framing is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lost {
    /// Bytes not captured where a frame header or a read payload was.
    Gap,
    /// The client's bytes did not start with the preface.
    NoPreface,
}

/// One direction's framing state.
#[derive(Clone, Debug)]
pub struct Framer {
    /// Preface bytes still to match (the client's direction from its
    /// start).
    preface: usize,
    /// A frame header split across pieces.
    head: [u8; HEADER],
    head_len: usize,
    /// Where and when the header's first byte was.
    head_seq: Option<u32>,
    head_ns: u64,
    /// The frame whose payload is coming: it and the bytes still due.
    current: Option<(Frame, u32)>,
    lost: Option<Lost>,
}

impl Framer {
    /// A framer at the start of a direction (`preface`: the client's,
    /// which starts with the connection preface), or at a frame boundary.
    pub fn new(preface: bool) -> Self {
        Self {
            preface: if preface { PREFACE.len() } else { 0 },
            head: [0; HEADER],
            head_len: 0,
            head_seq: None,
            head_ns: 0,
            current: None,
            lost: None,
        }
    }

    pub fn lost(&self) -> Option<Lost> {
        self.lost
    }

    /// The framing is lost (bytes never seen).
    pub fn lose(&mut self) {
        self.lost = Some(Lost::Gap);
        self.current = None;
        self.head_len = 0;
    }

    /// Feeds a piece of `len` bytes seen at `ts_ns` (the first at TCP
    /// sequence number `seq`, on packets), of which `data` is the captured
    /// prefix, calling `frame` for every frame it completes.
    pub fn feed(
        &mut self,
        ts_ns: u64,
        seq: Option<u32>,
        data: &[u8],
        len: usize,
        mut frame: impl FnMut(Frame),
    ) {
        let mut at = 0;
        while at < len && self.lost.is_none() {
            let captured = &data[at.min(data.len())..];
            let remaining = len - at;
            if self.preface > 0 {
                let want = &PREFACE[PREFACE.len() - self.preface..];
                let n = want.len().min(remaining);
                if captured.len() < n || captured[..n] != want[..n] {
                    self.lost = Some(Lost::NoPreface);
                    return;
                }
                self.preface -= n;
                at += n;
                continue;
            }
            if let Some((mut f, due)) = self.current.take() {
                let n = (due as usize).min(remaining);
                let have = captured.len().min(n);
                if kept(f.kind) {
                    if have < n {
                        // A read payload not captured: its header block is
                        // gone, and the table with it.
                        self.lost = Some(Lost::Gap);
                        return;
                    }
                    let room = KEPT_MAX.saturating_sub(f.payload.len());
                    f.payload.extend_from_slice(&captured[..n.min(room)]);
                    f.cut |= n > room;
                }
                at += n;
                let due = due - n as u32;
                f.end_ns = ts_ns;
                if due == 0 {
                    frame(f);
                } else {
                    self.current = Some((f, due));
                }
                continue;
            }
            // A frame header, maybe split.
            if self.head_len == 0 {
                self.head_seq = seq.map(|s| s.wrapping_add(at as u32));
                self.head_ns = ts_ns;
            }
            let n = (HEADER - self.head_len).min(remaining);
            if captured.len() < n {
                self.lost = Some(Lost::Gap);
                return;
            }
            self.head[self.head_len..self.head_len + n].copy_from_slice(&captured[..n]);
            self.head_len += n;
            at += n;
            if self.head_len < HEADER {
                continue;
            }
            self.head_len = 0;
            let h = self.head;
            let f = Frame {
                kind: h[3],
                flags: h[4],
                stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
                payload: Vec::new(),
                cut: false,
                start_ns: self.head_ns,
                end_ns: ts_ns,
                seq: self.head_seq,
            };
            if f.len == 0 {
                frame(f);
            } else {
                let due = f.len;
                self.current = Some((f, due));
            }
        }
    }
}

/// The largest frame a peer may send unless it raised
/// SETTINGS_MAX_FRAME_SIZE (most do not).
const FRAME_MAX: usize = 16 << 10;

/// Whether a piece of `len` bytes whose captured prefix is `data` starts
/// at a frame boundary, as far as can be told: two or more plausible
/// frame headers chained through the captured bytes (or one that ends
/// the piece), each of a known type on a stream its type allows, none
/// longer than the default largest frame. Where framing was lost (bytes
/// not seen), a piece like this is where it resumes: a sender writes
/// whole frames, so a segment after a pause starts with one.
pub fn starts_frames(data: &[u8], len: usize) -> bool {
    let (mut at, mut frames) = (0usize, 0);
    while at + HEADER <= data.len() {
        let h = &data[at..at + HEADER];
        let flen = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
        let on_stream = match h[3] {
            kind::SETTINGS | kind::GOAWAY | 6 => false,
            8 => stream != 0,
            k if k <= kind::CONTINUATION => true,
            _ => return false,
        };
        if flen > FRAME_MAX
            || stream & 0x8000_0000 != 0
            || (on_stream != (stream != 0) && h[3] != 8)
        {
            return false;
        }
        frames += 1;
        at += HEADER + flen;
    }
    frames >= 2 || (frames == 1 && at == len)
}

/// A HEADERS or PUSH_PROMISE payload's header block fragment (padding
/// and priority fields taken off); `None` when the fields do not fit.
pub fn fragment(f: &Frame) -> Option<&[u8]> {
    let mut p = &f.payload[..];
    let mut pad = 0usize;
    if f.flags & flags::PADDED != 0 && f.kind != kind::CONTINUATION {
        let (&n, rest) = p.split_first()?;
        pad = usize::from(n);
        p = rest;
    }
    if f.kind == kind::HEADERS && f.flags & flags::PRIORITY != 0 {
        p = p.get(5..)?;
    }
    if f.kind == kind::PUSH_PROMISE {
        p = p.get(4..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}

/// The error code of an RST_STREAM, or of a GOAWAY with its last stream
/// id.
pub fn error_code(f: &Frame) -> Option<(u32, u32)> {
    let p = &f.payload;
    match f.kind {
        kind::RST_STREAM => Some((0, u32::from_be_bytes(p.get(..4)?.try_into().ok()?))),
        kind::GOAWAY => Some((
            u32::from_be_bytes(p.get(..4)?.try_into().ok()?) & 0x7fff_ffff,
            u32::from_be_bytes(p.get(4..8)?.try_into().ok()?),
        )),
        _ => None,
    }
}
