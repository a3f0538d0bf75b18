//! TLS plaintext of memory-BIO objects not yet tied to their socket,
//! held until the kernel ties them. Such an object (asyncio, Node.js)
//! names no descriptor: its socket is known when its first write's
//! ciphertext is sent, after the request it answers was read. Its calls
//! so far come keyed by the object (`record_flags::OBJECT`); the tie's
//! record hands them, in order, to the socket's stream. What is never
//! tied (freed first, or waiting too long) is dropped and counted.

use std::collections::VecDeque;

use apm_common::events::EventHeader;
use rustc_hash::FxHashMap;

/// How long an object's records wait for its tie after its last call: a
/// server's request waits as long as its handler takes to answer.
pub const HOLD_NS: u64 = 30_000_000_000;
/// Objects waiting at most, all processes together.
const MAX_OBJECTS: usize = 1024;
/// Records of one object held at most: a request's reads and its
/// response's writes before the first send (an HTTP/2 call's frames
/// followed make several records of one call). Past it the object's
/// records are dropped (counted) until its tie.
const MAX_RECORDS: usize = 256;
/// Captured bytes held at most, all objects together (each record holds
/// at most `DATA_CAP`).
const MAX_BYTES: usize = 4 << 20;

/// A held record: its header and captured bytes.
pub type Held = (EventHeader, Box<[u8]>);

/// One object's records, oldest first.
struct Object {
    /// Its latest record's time.
    last_ns: u64,
    records: Vec<Held>,
    /// Records were dropped: the stream would have a hole.
    overflowed: bool,
}

#[derive(Default)]
pub struct Untied {
    objects: FxHashMap<(u32, u64), Object>,
    /// Each held record's (object, time), in arrival order, for expiry:
    /// an entry whose object is gone or has a later record is skipped,
    /// and the queue is rebuilt when such entries outnumber the rest.
    order: VecDeque<((u32, u64), u64)>,
    bytes: usize,
    lost: u64,
}

impl Untied {
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Holds a read or write record of object `header.conn` of process
    /// `header.tgid`.
    pub fn hold(&mut self, header: &EventHeader, data: &[u8]) {
        let key = (header.tgid, header.conn);
        if !self.objects.contains_key(&key) && self.objects.len() >= MAX_OBJECTS {
            self.lost += 1;
            return;
        }
        if self.order.len() > 4 * self.objects.len() + 1024 {
            self.compact();
        }
        self.order.push_back((key, header.ts_ns));
        let object = self.objects.entry(key).or_insert_with(|| Object {
            last_ns: header.ts_ns,
            records: Vec::new(),
            overflowed: false,
        });
        object.last_ns = header.ts_ns;
        if object.overflowed
            || object.records.len() >= MAX_RECORDS
            || self.bytes + data.len() > MAX_BYTES
        {
            self.lost += object.records.len() as u64 + 1;
            self.bytes -= held_bytes(&object.records);
            object.records = Vec::new();
            object.overflowed = true;
            return;
        }
        self.bytes += data.len();
        object.records.push((*header, data.into()));
    }

    /// The records of object `ssl` of process `tgid`, now tied: all of
    /// them in order, or none if some were dropped.
    pub fn tie(&mut self, tgid: u32, ssl: u64) -> Vec<Held> {
        match self.objects.remove(&(tgid, ssl)) {
            Some(object) if !object.overflowed => {
                self.bytes -= held_bytes(&object.records);
                object.records
            }
            _ => Vec::new(),
        }
    }

    /// Object `ssl` of process `tgid` was freed before any tie.
    pub fn free(&mut self, tgid: u32, ssl: u64) {
        if let Some(object) = self.objects.remove(&(tgid, ssl)) {
            self.lost += object.records.len() as u64;
            self.bytes -= held_bytes(&object.records);
        }
    }

    /// Drops the objects whose last call is older than [`HOLD_NS`] at
    /// `now_ns`.
    pub fn expire(&mut self, now_ns: u64) {
        while let Some(&(key, ts)) = self.order.front() {
            if now_ns.saturating_sub(ts) < HOLD_NS {
                break;
            }
            self.order.pop_front();
            if self.objects.get(&key).is_some_and(|o| o.last_ns == ts) {
                self.free(key.0, key.1);
            }
        }
        if self.objects.is_empty() {
            self.order.clear();
        }
    }

    /// The expiry queue without the entries of objects gone or seen
    /// since: one per object, oldest last call first.
    fn compact(&mut self) {
        let mut live: Vec<((u32, u64), u64)> =
            self.objects.iter().map(|(&k, o)| (k, o.last_ns)).collect();
        live.sort_by_key(|&(_, ts)| ts);
        self.order = live.into();
    }

    /// Records dropped since the last call.
    pub fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }
}

fn held_bytes(records: &[Held]) -> usize {
    records.iter().map(|(_, data)| data.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(tgid: u32, ssl: u64, ts_ns: u64) -> EventHeader {
        EventHeader {
            tgid,
            conn: ssl,
            ts_ns,
            ..EventHeader::default()
        }
    }

    #[test]
    fn a_tie_hands_over_the_records_in_order() {
        let mut u = Untied::default();
        u.hold(&header(1, 7, 10), b"GET / HTTP/1.1\r\n\r\n");
        u.hold(&header(1, 8, 11), b"other object");
        u.hold(&header(1, 7, 12), b"HTTP/1.1 200 OK\r\n\r\n");
        let held = u.tie(1, 7);
        assert_eq!(held.len(), 2);
        assert_eq!(&*held[0].1, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(held[1].0.ts_ns, 12);
        assert!(u.tie(1, 7).is_empty());
        assert_eq!(u.take_lost(), 0);
    }

    #[test]
    fn freed_expired_and_overflowing_objects_are_counted() {
        let mut u = Untied::default();
        u.hold(&header(1, 7, 0), b"a");
        u.hold(&header(1, 7, 1), b"b");
        u.free(1, 7);
        assert_eq!(u.take_lost(), 2);

        u.hold(&header(2, 9, 100), b"c");
        // A later call keeps it: the hold runs from the last one.
        u.hold(&header(2, 9, 200), b"d");
        u.expire(100 + HOLD_NS);
        assert!(!u.is_empty());
        u.expire(200 + HOLD_NS);
        assert!(u.is_empty());
        assert_eq!(u.take_lost(), 2);

        for i in 0..=MAX_RECORDS as u64 {
            u.hold(&header(3, 5, 1_000 + i), b"x");
        }
        assert!(u.tie(3, 5).is_empty(), "a holey stream is not handed on");
        assert_eq!(u.take_lost(), MAX_RECORDS as u64 + 1);
        assert_eq!(u.bytes, 0);
    }

    #[test]
    fn the_expiry_queue_stays_bounded_by_the_objects_held() {
        let mut u = Untied::default();
        // Objects tied at once (clients that write first) leave their
        // queue entries behind.
        for ssl in 0..10_000u64 {
            u.hold(&header(1, ssl, ssl), b"x");
            assert_eq!(u.tie(1, ssl).len(), 1);
        }
        assert!(u.order.len() <= 1024 + 1, "{}", u.order.len());
    }

    #[test]
    fn objects_past_the_bound_are_counted_not_held() {
        let mut u = Untied::default();
        for ssl in 0..MAX_OBJECTS as u64 + 3 {
            u.hold(&header(1, ssl, 0), b"x");
        }
        assert_eq!(u.objects.len(), MAX_OBJECTS);
        assert_eq!(u.take_lost(), 3);
    }
}
