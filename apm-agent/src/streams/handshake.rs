//! The first data of connections whose handshake's last ACK was lost.
//!
//! TCP runs the socket filter of the listener, not of the new connection,
//! on the segment that completes a handshake, and hands the new connection
//! its data without filtering it again. When the client's pure ACK is
//! lost, that segment is the first request's: the packet programs report
//! it under the listener's cookie, flagged `side::LISTENER`, with the
//! client's port. It is kept here until the new connection's first own
//! segment names its cookie (same namespace, server port and client port),
//! then placed first on that connection.

use apm_common::events::PacketHeader;
use rustc_hash::FxHashMap;

/// Handshakes waiting for their connection; more are dropped (counted).
pub const MAX_WAITING: usize = 4096;
/// Records kept per handshake (one segment, cut into records).
const MAX_RECORDS: usize = 16;
/// How long a handshake's data waits for its connection's first segment.
pub const WAIT_NS: u64 = 2_000_000_000;

/// (namespace cookie, server port, client port).
type Key = (u64, u16, u16);

struct Waiting {
    since_ns: u64,
    records: Vec<(PacketHeader, Box<[u8]>)>,
}

#[derive(Default)]
pub struct Handshakes {
    waiting: FxHashMap<Key, Waiting>,
}

fn key(h: &PacketHeader) -> Key {
    (h.netns, h.port, h.remote_port)
}

impl Handshakes {
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Keeps a listener's record; false when there is no room (the caller
    /// counts it).
    pub fn keep(&mut self, h: &PacketHeader, data: &[u8]) -> bool {
        let k = key(h);
        if !self.waiting.contains_key(&k) && self.waiting.len() >= MAX_WAITING {
            return false;
        }
        let w = self.waiting.entry(k).or_insert_with(|| Waiting {
            since_ns: h.ts_ns,
            records: Vec::new(),
        });
        if w.records.len() >= MAX_RECORDS {
            return false;
        }
        w.records.push((*h, data.into()));
        true
    }

    /// The records kept for the connection whose first segment `h` is,
    /// given its cookie and side.
    pub fn take(&mut self, h: &PacketHeader) -> Vec<(PacketHeader, Box<[u8]>)> {
        let Some(w) = self.waiting.remove(&key(h)) else {
            return Vec::new();
        };
        w.records
            .into_iter()
            .map(|(mut r, data)| {
                r.cookie = h.cookie;
                r.side = h.side;
                (r, data)
            })
            .collect()
    }

    /// Drops what waited past [`WAIT_NS`]; returns (namespace, port) of
    /// each record dropped.
    pub fn expire(&mut self, now_ns: u64) -> Vec<(u64, u16)> {
        let mut dropped = Vec::new();
        self.waiting.retain(|(netns, port, _), w| {
            let keep = now_ns.saturating_sub(w.since_ns) <= WAIT_NS;
            if !keep {
                dropped.extend(w.records.iter().map(|_| (*netns, *port)));
            }
            keep
        });
        dropped
    }
}
