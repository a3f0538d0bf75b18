//! A bounded table of per-connection state, keyed by kernel-made ids
//! (socket cookies, tgid and fd) and ordered by when each entry was last
//! looked up: lookups, inserts and removals are O(1), idle entries leave
//! from the least recently seen end in O(evicted), and a full table makes
//! room by evicting its least recently seen entry only if that one is idle.
//!
//! The order is the order of lookups ([`Table::get_mut`] and inserts);
//! idleness is the value's own [`LastSeen`] time, which the caller updates
//! when it handles an event. Events arrive nearly in time order, so the two
//! agree; where they do not (records from different CPUs), an entry stays
//! until the ones seen before it are idle too.

use std::hash::BuildHasherDefault;

use lru::LruCache;
use rustc_hash::FxHasher;

/// Entries idle this long may be evicted to make room for a new one.
pub const EVICTABLE_NS: u64 = 1_000_000_000;

/// What the table needs of a value: when its connection was last seen.
pub trait LastSeen {
    fn last_seen_ns(&self) -> u64;
}

/// The table is full and its least recently seen entry is not idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// At most `max` entries, least recently seen first.
pub struct Table<V> {
    /// Kernel-made keys: a fast, non-keyed hash is safe. Unbounded for
    /// the crate (which would evict on insert): the bound is `max`.
    entries: LruCache<u64, V, BuildHasherDefault<FxHasher>>,
    max: usize,
}

impl<V: LastSeen> Table<V> {
    pub fn new(max: usize) -> Self {
        Self {
            entries: LruCache::unbounded_with_hasher(BuildHasherDefault::default()),
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.max
    }

    pub fn contains(&self, key: u64) -> bool {
        self.entries.contains(&key)
    }

    /// The entry, without counting as a lookup.
    pub fn peek(&self, key: u64) -> Option<&V> {
        self.entries.peek(&key)
    }

    /// The entry, mutably, without counting as a lookup.
    pub fn peek_mut(&mut self, key: u64) -> Option<&mut V> {
        self.entries.peek_mut(&key)
    }

    /// The entry, made the most recently seen: the caller updates its
    /// last-seen time.
    pub fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        self.entries.get_mut(&key)
    }

    /// Inserts `value` as the most recently seen entry, making room as
    /// [`Table::make_room`] does when `key` is new and the table is full.
    /// Returns the value it displaced: `key`'s old value, or the entry
    /// evicted for room. On [`Full`] the table is unchanged.
    pub fn insert(
        &mut self,
        key: u64,
        value: V,
        now_ns: u64,
        evictable_ns: u64,
    ) -> Result<Option<V>, Full> {
        let evicted = if self.entries.contains(&key) {
            None
        } else {
            self.make_room(now_ns, evictable_ns)?
        };
        Ok(self.entries.put(key, value).or(evicted))
    }

    pub fn remove(&mut self, key: u64) -> Option<V> {
        self.entries.pop(&key)
    }

    /// The least recently seen entry.
    pub fn oldest(&self) -> Option<(u64, &V)> {
        self.entries.peek_lru().map(|(k, v)| (*k, v))
    }

    /// Whether one more entry fits: `Ok(None)` if it does, `Ok(Some(_))`
    /// with the least recently seen entry, evicted because it was idle for
    /// `evictable_ns` or more, or [`Full`] with nothing done. O(1).
    pub fn make_room(&mut self, now_ns: u64, evictable_ns: u64) -> Result<Option<V>, Full> {
        if self.entries.len() < self.max {
            return Ok(None);
        }
        match self.oldest() {
            Some((_, v)) if now_ns.saturating_sub(v.last_seen_ns()) >= evictable_ns => {
                Ok(self.entries.pop_lru().map(|(_, v)| v))
            }
            _ => Err(Full),
        }
    }

    /// Removes and yields the entries idle for longer than `idle_ns`, from
    /// the least recently seen end, stopping at the first one that is not.
    pub fn sweep(&mut self, now_ns: u64, idle_ns: u64) -> impl Iterator<Item = V> + '_ {
        std::iter::from_fn(move || {
            let (_, oldest) = self.oldest()?;
            if now_ns.saturating_sub(oldest.last_seen_ns()) > idle_ns {
                self.entries.pop_lru().map(|(_, v)| v)
            } else {
                None
            }
        })
    }

    /// Every entry, most recently seen first.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.entries.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    /// A value that is its own last-seen time.
    #[derive(Debug, PartialEq, Eq)]
    struct At(u64);

    impl LastSeen for At {
        fn last_seen_ns(&self) -> u64 {
            self.0
        }
    }

    fn keys<V: LastSeen>(t: &Table<V>) -> Vec<u64> {
        // Most recently seen first, as `values` yields them.
        t.entries.iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn lookups_make_an_entry_the_most_recent() {
        let mut t = Table::new(4);
        for k in 1..=3 {
            assert_eq!(t.insert(k, At(k), k, SEC), Ok(None));
        }
        assert_eq!(t.oldest(), Some((1, &At(1))));
        if let Some(v) = t.get_mut(1) {
            v.0 = 10;
        }
        assert_eq!(keys(&t), [1, 3, 2]);
        // Peeking leaves the order alone.
        assert_eq!(t.peek(2), Some(&At(2)));
        assert_eq!(t.peek_mut(2).map(|v| v.0), Some(2));
        assert_eq!(t.oldest(), Some((2, &At(2))));
        assert_eq!(t.remove(2), Some(At(2)));
        assert_eq!(t.remove(2), None);
        assert!(!t.contains(2) && t.contains(3));
        assert_eq!(t.values().count(), 2);
    }

    #[test]
    fn a_full_table_evicts_its_least_recently_seen_idle_entry_only() {
        let mut t = Table::new(3);
        for k in 1..=3 {
            t.insert(k, At(k), k, SEC).expect("room");
        }
        t.get_mut(1);
        // All three are idle at 5 s; one goes, the least recently seen.
        assert_eq!(t.insert(4, At(5 * SEC), 5 * SEC, SEC), Ok(Some(At(2))));
        assert_eq!((t.len(), t.capacity()), (3, 3));
        assert_eq!(keys(&t), [4, 1, 3]);
        // A key already present is replaced, whatever the room.
        assert_eq!(t.insert(3, At(6), 6, SEC), Ok(Some(At(3))));
        assert_eq!(t.make_room(5 * SEC, SEC), Ok(Some(At(1))));
        assert_eq!(t.make_room(5 * SEC, SEC), Ok(None));
    }

    #[test]
    fn a_full_table_of_busy_entries_refuses() {
        let mut t = Table::new(2);
        t.insert(1, At(0), 0, SEC).expect("room");
        t.insert(2, At(SEC / 2), SEC / 2, SEC).expect("room");
        assert_eq!(t.insert(3, At(SEC - 1), SEC - 1, SEC), Err(Full));
        assert_eq!(t.make_room(SEC - 1, SEC), Err(Full));
        assert_eq!(keys(&t), [2, 1]);
        // Idle for exactly `evictable_ns`: evictable.
        assert_eq!(t.make_room(SEC, SEC), Ok(Some(At(0))));
        let mut none = Table::<At>::new(0);
        assert_eq!(none.insert(1, At(0), SEC, 0), Err(Full));
        assert!(none.is_empty());
    }

    #[test]
    fn sweep_removes_idle_entries_from_the_old_end() {
        let mut t = Table::new(8);
        for k in 1..=5 {
            t.insert(k, At(k * SEC), k * SEC, SEC).expect("room");
        }
        // Entry 1 seen again at 10 s.
        if let Some(v) = t.get_mut(1) {
            v.0 = 10 * SEC;
        }
        // At 12 s, idle longer than 8 s: 2 and 3 (4 is idle for exactly 8 s).
        let gone: Vec<At> = t.sweep(12 * SEC, 8 * SEC).collect();
        assert_eq!(gone, [At(2 * SEC), At(3 * SEC)]);
        assert_eq!(keys(&t), [1, 5, 4]);
        assert_eq!(t.sweep(12 * SEC, 100 * SEC).count(), 0);
        assert_eq!(t.sweep(u64::MAX, 0).count(), 3);
        assert!(t.is_empty());
    }
}
