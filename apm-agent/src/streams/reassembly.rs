//! TCP sequence numbers turned into exact stream offsets, per connection
//! and direction.
//!
//! The packet programs report every segment with its sequence number. A
//! segment that only repeats bytes already seen (a retransmission) is
//! dropped; one that overlaps them is trimmed; one that starts beyond the
//! next expected byte reveals a gap (a ring-buffer record lost, or a
//! segment out of order), which the pairing turns into a resync instead of
//! shifting every later response onto the wrong request.
//!
//! State is bounded: at most `max` connections, idle ones swept.

use rustc_hash::FxHashMap;

/// What to do with a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every byte was seen before.
    Duplicate,
    /// New bytes, after skipping `skip` already-seen ones at the front.
    /// `gap`: bytes before this segment were never seen.
    New { skip: u32, gap: bool },
}

#[derive(Clone, Copy, Debug)]
struct Stream {
    /// Next expected sequence number per direction (ingress, egress).
    next: [Option<u32>; 2],
    last_seen_ns: u64,
}

pub struct Reassembly {
    /// Keyed by socket cookies (kernel-made): a non-keyed hash is safe.
    streams: FxHashMap<u64, Stream>,
    max: usize,
}

/// Streams idle this long may be evicted to make room.
const EVICTABLE_NS: u64 = 1_000_000_000;

impl Reassembly {
    pub fn new(max: usize) -> Self {
        Self {
            streams: FxHashMap::default(),
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Places `len` payload bytes starting at `seq` in direction `dir`
    /// (0 ingress, 1 egress) of connection `conn`.
    pub fn accept(&mut self, conn: u64, dir: u8, seq: u32, len: u32, ts_ns: u64) -> Verdict {
        let fresh = Verdict::New {
            skip: 0,
            gap: false,
        };
        if len == 0 {
            return fresh;
        }
        if !self.streams.contains_key(&conn) && !self.make_room(ts_ns) {
            // No room to remember it: pass the bytes on unchecked.
            return fresh;
        }
        let stream = self.streams.entry(conn).or_insert(Stream {
            next: [None; 2],
            last_seen_ns: ts_ns,
        });
        stream.last_seen_ns = ts_ns;
        let slot = &mut stream.next[usize::from(dir.min(1))];
        let end = seq.wrapping_add(len);
        let Some(next) = *slot else {
            *slot = Some(end);
            return fresh;
        };
        // Signed distances modulo 2^32: sequence numbers wrap.
        let start_ahead = seq.wrapping_sub(next) as i32;
        let end_ahead = end.wrapping_sub(next) as i32;
        if end_ahead <= 0 {
            return Verdict::Duplicate;
        }
        *slot = Some(end);
        if start_ahead >= 0 {
            Verdict::New {
                skip: 0,
                gap: start_ahead > 0,
            }
        } else {
            Verdict::New {
                skip: start_ahead.unsigned_abs(),
                gap: false,
            }
        }
    }

    pub fn has(&self, conn: u64) -> bool {
        self.streams.contains_key(&conn)
    }

    /// The connection closed.
    pub fn forget(&mut self, conn: u64) {
        self.streams.remove(&conn);
    }

    /// Forgets streams idle for longer than `idle_ns`.
    pub fn sweep(&mut self, now_ns: u64, idle_ns: u64) {
        self.streams
            .retain(|_, s| now_ns.saturating_sub(s.last_seen_ns) <= idle_ns);
    }

    fn make_room(&mut self, now_ns: u64) -> bool {
        if self.streams.len() >= self.max {
            self.sweep(now_ns, EVICTABLE_NS);
        }
        self.streams.len() < self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: Verdict = Verdict::New {
        skip: 0,
        gap: false,
    };

    #[test]
    fn in_order_segments_are_new_and_repeats_are_duplicates() {
        let mut r = Reassembly::new(8);
        assert_eq!(r.accept(1, 0, 1000, 10, 0), NEW);
        assert_eq!(r.accept(1, 0, 1010, 5, 1), NEW);
        // A retransmission of the first segment.
        assert_eq!(r.accept(1, 0, 1000, 10, 2), Verdict::Duplicate);
        // The other direction has its own numbering.
        assert_eq!(r.accept(1, 1, 7, 3, 3), NEW);
    }

    #[test]
    fn overlaps_are_trimmed_and_holes_are_gaps() {
        let mut r = Reassembly::new(8);
        r.accept(1, 0, 100, 10, 0);
        assert_eq!(
            r.accept(1, 0, 105, 10, 1),
            Verdict::New {
                skip: 5,
                gap: false
            }
        );
        assert_eq!(
            r.accept(1, 0, 200, 4, 2),
            Verdict::New { skip: 0, gap: true }
        );
        // The late segment that filled the hole is older than what was
        // reported since: dropped.
        assert_eq!(r.accept(1, 0, 115, 50, 3), Verdict::Duplicate);
        assert_eq!(r.accept(1, 0, 204, 1, 4), NEW);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut r = Reassembly::new(8);
        r.accept(1, 1, u32::MAX - 4, 10, 0);
        assert_eq!(r.accept(1, 1, 5, 10, 1), NEW);
        assert_eq!(r.accept(1, 1, u32::MAX - 4, 10, 2), Verdict::Duplicate);
    }

    #[test]
    fn state_is_bounded() {
        let mut r = Reassembly::new(2);
        r.accept(1, 0, 0, 1, 0);
        r.accept(2, 0, 0, 1, 0);
        // Full of fresh streams: the third is passed on unchecked.
        assert_eq!(r.accept(3, 0, 0, 1, 10), NEW);
        assert_eq!(r.len(), 2);
        // Two seconds later the first two are evictable.
        r.accept(3, 0, 0, 1, 2_000_000_001);
        assert_eq!(r.len(), 1);
        r.forget(3);
        assert!(r.is_empty());
    }
}
