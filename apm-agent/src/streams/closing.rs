//! Closes of connections whose plaintext is keyed by socket, held back
//! for a moment. They come from the TCP state tracepoint, often in softirq
//! on another CPU than the owner's, while the owner's last library call
//! (an `SSL_write` whose return probe has not run yet) may still be on its
//! way: handed on at once, that call's response would find its connection
//! gone.

use std::collections::VecDeque;

/// How long a close waits for the owner's records: they carry earlier or
/// slightly later timestamps, and reach the reader behind it at worst by
/// a preempted return probe.
pub const CLOSE_DELAY_NS: u64 = 250_000_000;

/// A connection's end, due at `due_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Close {
    pub due_ns: u64,
    pub ts_ns: u64,
    pub conn: u64,
    pub tgid: u32,
    pub port: u16,
}

/// Held closes, oldest first, at most `cap`.
pub struct Closing {
    held: VecDeque<Close>,
    cap: usize,
}

impl Closing {
    pub fn new(cap: usize) -> Self {
        Self {
            held: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Holds `close`; when full, the oldest held one is returned to be
    /// handed on now (early rather than lost).
    pub fn hold(&mut self, close: Close) -> Option<Close> {
        let early = if self.held.len() >= self.cap {
            self.held.pop_front()
        } else {
            None
        };
        self.held.push_back(close);
        early
    }

    /// The next held close due at `now_ns`. Closes come in timestamp
    /// order nearly always; one out of order waits for those before it.
    pub fn due(&mut self, now_ns: u64) -> Option<Close> {
        if self.held.front()?.due_ns <= now_ns {
            self.held.pop_front()
        } else {
            None
        }
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(conn: u64, due_ns: u64) -> Close {
        Close {
            due_ns,
            ts_ns: 0,
            conn,
            tgid: 1,
            port: 443,
        }
    }

    #[test]
    fn a_close_waits_until_it_is_due() {
        let mut c = Closing::new(4);
        assert_eq!(c.hold(close(1, 100)), None);
        assert_eq!(c.hold(close(2, 200)), None);
        assert_eq!(c.due(99), None);
        assert_eq!(c.due(150), Some(close(1, 100)));
        assert_eq!(c.due(150), None);
        assert_eq!(c.due(200), Some(close(2, 200)));
        assert!(c.is_empty());
    }

    #[test]
    fn a_full_queue_hands_on_its_oldest_close_early() {
        let mut c = Closing::new(2);
        c.hold(close(1, 100));
        c.hold(close(2, 200));
        assert_eq!(c.hold(close(3, 300)), Some(close(1, 100)));
        assert_eq!(c.due(u64::MAX), Some(close(2, 200)));
        assert_eq!(c.due(u64::MAX), Some(close(3, 300)));
    }
}
