//! TCP sequence numbers turned into exact stream offsets, per connection
//! and direction, with a small reordering window.
//!
//! The packet programs see ingress segments before TCP's out-of-order
//! queue and egress segments after the netfilter hooks, so a lost segment
//! shows as a hole that its retransmission fills a moment later. A segment
//! that starts beyond the next expected byte is held (with its captured
//! bytes) until the hole fills, then handed on in order; a hole still open
//! after [`REORDER_WINDOW_NS`], or with more than [`MAX_HELD`] segments
//! (or [`HELD_BYTES_BUDGET`] captured bytes over all connections) behind
//! it, is declared a gap, which the pairing turns into a counted resync.
//! A hole that the other side has acknowledged past (every segment carries
//! its acknowledgment number) will never be filled: the bytes reached the
//! peer and only the capture's record of them was lost, so it is a gap at
//! once. A segment that only repeats bytes already seen is dropped; one
//! that overlaps them is trimmed.
//!
//! The first segment of a direction starts it if it starts a message, or
//! where the other side's acknowledgments say it starts; any other is held
//! like one behind a hole, for an earlier segment that does.
//!
//! A closed connection is remembered until it is swept, so a segment
//! retransmitted after the close is dropped rather than taken for a new
//! connection's first bytes. State is bounded: at most `max` connections,
//! idle ones swept.

use std::collections::VecDeque;

use apm_common::events::{PacketHeader, tcp_flags};
use rustc_hash::FxHashMap;

use super::table::{EVICTABLE_NS, Full, LastSeen, Table};

/// How long a hole may stay open before it is declared a gap. Linux's
/// minimum retransmission timeout is 200 ms, and a lost fast retransmit
/// waits for it: a second covers that and the first backoff.
pub const REORDER_WINDOW_NS: u64 = 1_000_000_000;
/// Segments held behind one hole, per direction.
pub const MAX_HELD: usize = 1024;
/// Bytes held over all connections (captured bytes and bookkeeping).
pub const HELD_BYTES_BUDGET: usize = 16 << 20;

/// What to do with a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every byte was seen before (or the connection is closed).
    Duplicate,
    /// New bytes, after skipping `skip` already-seen ones at the front.
    /// `gap`: bytes before this segment were never seen.
    New { skip: u32, gap: bool },
    /// Beyond a hole: kept, and handed out by [`Reassembly::ready`] once
    /// the hole fills or is declared a gap.
    Held,
}

/// One segment as the packet programs reported it: its header and the
/// captured prefix of its payload.
#[derive(Clone, Copy, Debug)]
pub struct Piece<'a> {
    pub header: &'a PacketHeader,
    pub data: &'a [u8],
}

/// A held segment, owned.
#[derive(Clone, Debug)]
pub struct Held {
    pub header: PacketHeader,
    pub data: Box<[u8]>,
}

#[derive(Debug, Default)]
struct Direction {
    /// Next expected sequence number.
    next: Option<u32>,
    /// The highest acknowledgment the other side sent for this direction:
    /// bytes it has received in order, which a retransmission will not
    /// bring again.
    acked: Option<u32>,
    /// Bytes before `next` were skipped as lost: the next segment handed
    /// on follows a gap.
    lost: bool,
    /// Segments beyond a hole, in sequence order.
    held: VecDeque<Held>,
    /// When the hole before the first held segment was seen open.
    held_since_ns: u64,
    /// The hole was declared a gap: hand the held segments out anyway.
    give_up: bool,
}

impl Direction {
    /// Skips what the other side acknowledged of a hole before the held
    /// segments: those bytes reached it, only their records were lost, and
    /// no retransmission will bring them. A hole beyond the acknowledgment
    /// still waits.
    fn skip_acked(&mut self) {
        let (Some(acked), Some(front)) = (self.acked, self.held.front()) else {
            return;
        };
        let front = front.header.seq;
        match self.next {
            Some(next) if ahead(acked, next) > 0 => {
                self.next = Some(if ahead(acked, front) >= 0 {
                    front
                } else {
                    acked
                });
                self.lost = true;
            }
            // Where it started was never seen; the other side has what was
            // before the held segments: joined mid-stream, they go on.
            None if ahead(acked, front) > 0 => self.next = Some(front),
            _ => {}
        }
    }
}

/// Bytes a held segment costs against [`HELD_BYTES_BUDGET`].
fn cost(h: &Held) -> usize {
    std::mem::size_of::<Held>() + h.data.len()
}

#[derive(Debug, Default)]
struct Stream {
    /// Its socket cookie.
    conn: u64,
    dirs: [Direction; 2],
    last_seen_ns: u64,
    closed: bool,
}

impl LastSeen for Stream {
    fn last_seen_ns(&self) -> u64 {
        self.last_seen_ns
    }
}

pub struct Reassembly {
    /// Keyed by socket cookies, least recently seen first.
    streams: Table<Stream>,
    /// Connections with held segments, and bytes held in all.
    holding: FxHashMap<(u64, u8), u64>,
    held_bytes: usize,
    /// Holes are checked for expiry at most once a millisecond.
    next_check_ns: u64,
    /// Streams evicted for room since the caller last asked: what they
    /// held, and where they were, is gone.
    evicted: Vec<u64>,
}

/// Signed distance from `b` to `a` modulo 2^32 (sequence numbers wrap).
fn ahead(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

impl Reassembly {
    pub fn new(max: usize) -> Self {
        Self {
            streams: Table::new(max),
            holding: FxHashMap::default(),
            held_bytes: 0,
            next_check_ns: 0,
            evicted: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Bytes held behind holes, over all connections.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// A connection whose stream was evicted for room since the last call.
    pub fn take_evicted(&mut self) -> Option<u64> {
        self.evicted.pop()
    }

    /// Places a segment of direction `dir` (0 ingress, 1 egress) of
    /// connection `conn`. After any verdict, [`Self::ready`] may have held
    /// segments to hand out, in either direction (the segment's
    /// acknowledgment may have settled a hole in the other).
    /// `is_start` tells whether captured bytes start a message, for the
    /// first segment of a direction.
    pub fn accept(
        &mut self,
        conn: u64,
        dir: u8,
        p: &Piece<'_>,
        is_start: impl FnOnce(&[u8]) -> bool,
    ) -> Verdict {
        let fresh = Verdict::New {
            skip: 0,
            gap: false,
        };
        if !self.streams.contains(conn) {
            let stream = Stream {
                conn,
                ..Stream::default()
            };
            match self
                .streams
                .insert(conn, stream, p.header.ts_ns, EVICTABLE_NS)
            {
                Ok(evicted) => {
                    if let Some(old) = evicted {
                        self.forget(&old);
                        self.evicted.push(old.conn);
                    }
                }
                // No room to remember it: pass the bytes on unchecked.
                Err(Full) => return fresh,
            }
        }
        let Some(stream) = self.streams.get_mut(conn) else {
            return fresh;
        };
        stream.last_seen_ns = p.header.ts_ns;
        if stream.closed {
            return Verdict::Duplicate;
        }
        let dir = usize::from(dir.min(1));
        if p.header.flags & tcp_flags::ACK != 0 {
            let other = &mut stream.dirs[1 - dir];
            let ack = p.header.ack;
            if other.acked.is_none_or(|a| ahead(ack, a) > 0) {
                other.acked = Some(ack);
            }
            other.skip_acked();
        }
        let d = &mut stream.dirs[dir];
        let (seq, len) = (p.header.seq, p.header.len);
        let end = seq.wrapping_add(len);
        if d.next.is_none() {
            // Where this direction starts: what the other side says it
            // has received, else this segment if it starts a message (else
            // it waits a moment for an earlier one that does).
            if d.acked.is_some() {
                d.next = d.acked;
            } else if d.held.front().is_none_or(|h| ahead(h.header.seq, seq) > 0)
                && (len == 0 || is_start(p.data))
            {
                d.next = Some(end);
                return fresh;
            } else {
                return self.hold(conn, dir as u8, p);
            }
        }
        let Some(next) = d.next else {
            return fresh;
        };
        let start_ahead = ahead(seq, next);
        if start_ahead > 0 {
            if d.held.is_empty()
                && let Some(acked) = d.acked
                && ahead(acked, next) > 0
            {
                // The other side has the missing bytes up to `acked`.
                if ahead(acked, seq) >= 0 {
                    d.next = Some(end);
                    d.lost = false;
                    return Verdict::New { skip: 0, gap: true };
                }
                d.next = Some(acked);
                d.lost = true;
            }
            // Beyond a hole (a bare FIN too: it waits for the data).
            return self.hold(conn, dir as u8, p);
        }
        if ahead(end, next) <= 0 && !(len == 0 && start_ahead == 0) {
            return Verdict::Duplicate;
        }
        d.next = Some(end);
        Verdict::New {
            skip: start_ahead.unsigned_abs(),
            gap: std::mem::take(&mut d.lost),
        }
    }

    fn hold(&mut self, conn: u64, dir: u8, p: &Piece<'_>) -> Verdict {
        let Some(stream) = self.streams.peek_mut(conn) else {
            return Verdict::Duplicate;
        };
        let d = &mut stream.dirs[usize::from(dir.min(1))];
        // Sorted by sequence number; a repeat of a held segment is dropped.
        let (seq, len) = (p.header.seq, p.header.len);
        let at = d.held.partition_point(|h| ahead(h.header.seq, seq) < 0);
        if let Some(h) = d.held.get(at)
            && h.header.seq == seq
            && h.header.len >= len
        {
            return Verdict::Duplicate;
        }
        if d.held.is_empty() {
            d.held_since_ns = p.header.ts_ns;
        }
        let held = Held {
            header: *p.header,
            data: p.data.into(),
        };
        self.held_bytes += cost(&held);
        d.held.insert(at, held);
        self.holding.insert((conn, dir), d.held_since_ns);
        d.skip_acked();
        if d.held.len() > MAX_HELD || self.held_bytes > HELD_BYTES_BUDGET {
            d.give_up = true;
        }
        Verdict::Held
    }

    /// The next held segment of `conn`'s direction `dir` that can be handed
    /// on, with the bytes to skip at its front and whether a gap precedes
    /// it; `None` while the hole before the held segments is open.
    pub fn ready(&mut self, conn: u64, dir: u8) -> Option<(Held, u32, bool)> {
        let dir = dir.min(1);
        let stream = self.streams.peek_mut(conn)?;
        let d = &mut stream.dirs[usize::from(dir)];
        loop {
            let first = d.held.front()?;
            // Where the direction starts is still unknown: once given up,
            // it starts here (joined mid-stream: the parsers resync; no
            // byte that was followed is missing, so no gap).
            let next = match d.next {
                Some(next) => next,
                None if d.give_up => first.header.seq,
                None => return None,
            };
            let start_ahead = ahead(first.header.seq, next);
            if start_ahead > 0 && !d.give_up {
                return None;
            }
            let held = d.held.pop_front()?;
            self.held_bytes = self.held_bytes.saturating_sub(cost(&held));
            match d.held.front() {
                None => {
                    d.give_up = false;
                    self.holding.remove(&(conn, dir));
                }
                // A hole before the new first one is timed from when that
                // one arrived.
                Some(front) if !d.give_up => {
                    d.held_since_ns = front.header.ts_ns;
                    self.holding.insert((conn, dir), d.held_since_ns);
                }
                Some(_) => {}
            }
            let end = held.header.seq.wrapping_add(held.header.len);
            if start_ahead > 0 {
                d.next = Some(end);
                d.lost = false;
                return Some((held, 0, true));
            }
            if ahead(end, next) <= 0 && !(held.header.len == 0 && start_ahead == 0) {
                // Covered by what was handed on since it was held.
                continue;
            }
            d.next = Some(end);
            let gap = std::mem::take(&mut d.lost);
            return Some((held, start_ahead.unsigned_abs(), gap));
        }
    }

    /// Declares the holes open since before `now_ns - window_ns` gaps;
    /// returns the (connection, direction) pairs whose held segments
    /// [`Self::ready`] now hands out.
    pub fn expire(&mut self, now_ns: u64, window_ns: u64) -> Vec<(u64, u8)> {
        if self.holding.is_empty() {
            return Vec::new();
        }
        let due: Vec<(u64, u8)> = self
            .holding
            .iter()
            .filter(|(_, since)| now_ns.saturating_sub(**since) > window_ns)
            .map(|(k, _)| *k)
            .collect();
        for (conn, dir) in &due {
            if let Some(s) = self.streams.peek_mut(*conn) {
                s.dirs[usize::from(*dir)].give_up = true;
            }
        }
        due
    }

    /// Whether some hole was open before `now_ns - window_ns`: looked at
    /// once a millisecond at most, so a packet costs O(1) however many
    /// connections hold segments.
    pub fn has_expired(&mut self, now_ns: u64, window_ns: u64) -> bool {
        if self.holding.is_empty() || now_ns < self.next_check_ns {
            return false;
        }
        self.next_check_ns = now_ns.saturating_add(1_000_000);
        self.holding
            .values()
            .any(|since| now_ns.saturating_sub(*since) > window_ns)
    }

    /// Whether any segment is held.
    pub fn holds_any(&self) -> bool {
        !self.holding.is_empty()
    }

    /// Whether `conn` was closed (and is remembered as such).
    pub fn is_closed(&self, conn: u64) -> bool {
        self.streams.peek(conn).is_some_and(|s| s.closed)
    }

    /// Whether `conn` has a stream here, open or closed.
    pub fn knows(&self, conn: u64) -> bool {
        self.streams.contains(conn)
    }

    /// The connection closed: later segments of it are dropped until it
    /// is swept.
    pub fn close(&mut self, conn: u64) {
        if let Some(s) = self.streams.peek_mut(conn) {
            s.closed = true;
            self.release(conn, 0);
            self.release(conn, 1);
        }
    }

    /// Drops the held segments of `conn`'s direction `dir`.
    fn release(&mut self, conn: u64, dir: u8) {
        let Some(s) = self.streams.peek_mut(conn) else {
            return;
        };
        let d = &mut s.dirs[usize::from(dir)];
        let bytes: usize = d.held.drain(..).map(|h| cost(&h)).sum();
        d.give_up = false;
        self.held_bytes = self.held_bytes.saturating_sub(bytes);
        self.holding.remove(&(conn, dir));
    }

    /// Accounts for a stream removed from the table.
    fn forget(&mut self, old: &Stream) {
        for (dir, d) in old.dirs.iter().enumerate() {
            let bytes: usize = d.held.iter().map(cost).sum();
            self.held_bytes = self.held_bytes.saturating_sub(bytes);
            self.holding.remove(&(old.conn, dir as u8));
        }
    }

    /// Forgets streams idle for longer than `idle_ns`.
    pub fn sweep(&mut self, now_ns: u64, idle_ns: u64) {
        let stale: Vec<Stream> = self.streams.sweep(now_ns, idle_ns).collect();
        for old in &stale {
            self.forget(old);
        }
    }
}

#[cfg(test)]
mod tests;
