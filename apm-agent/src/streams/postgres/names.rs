//! What a PostgreSQL connection's names stand for: prepared statements and
//! portals (bounded, the least recently used forgotten first), and the
//! portals an Execute with a row limit left suspended.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::protocols::sql::Statement;

/// Prepared statements and portals remembered per connection; past it
/// the least recently used is forgotten (an Execute of it is of an
/// unknown statement).
pub const MAX_NAMES: usize = 256;
/// PostgreSQL compares names up to NAMEDATALEN - 1 bytes.
const NAME_LEN: usize = 63;

/// A name as the server compares it.
pub fn name(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.len().min(NAME_LEN)]
}

/// Name → statement, at most [`MAX_NAMES`].
#[derive(Default)]
pub struct Names {
    map: FxHashMap<Vec<u8>, (Arc<Statement>, u64)>,
    clock: u64,
}

impl Names {
    pub fn insert(&mut self, key: &[u8], stmt: Arc<Statement>) {
        let key = name(key);
        if self.map.len() >= MAX_NAMES && !self.map.contains_key(key) {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.map.remove(&oldest);
            }
        }
        self.clock += 1;
        self.map.insert(key.to_vec(), (stmt, self.clock));
    }

    /// The statement `key` stands for, now the most recently used.
    pub fn get(&mut self, key: &[u8]) -> Option<Arc<Statement>> {
        self.clock += 1;
        let (stmt, used) = self.map.get_mut(name(key))?;
        *used = self.clock;
        Some(Arc::clone(stmt))
    }

    pub fn remove(&mut self, key: &[u8]) {
        self.map.remove(name(key));
    }
}

/// A portal an Execute with a row limit left open (PortalSuspended): it
/// counts once, when a later Execute runs it to its end, or when it is
/// dropped (closed, bound again, or its transaction over).
#[derive(Clone, Debug)]
pub struct Suspended {
    pub portal: Vec<u8>,
    pub stmt: Arc<Statement>,
    /// When its first Execute began, and when the last one was answered.
    pub start_ns: u64,
    pub answered_ns: u64,
}

/// The suspended portals of a connection, at most [`MAX_NAMES`] (past it
/// the oldest counts as dropped).
#[derive(Default)]
pub struct Portals(Vec<Suspended>);

impl Portals {
    /// Keeps `s`; returns one that had to go (the same portal's earlier
    /// state, or the oldest when full).
    pub fn suspend(&mut self, s: Suspended) -> Option<Suspended> {
        let gone = match self.0.iter().position(|p| p.portal == s.portal) {
            Some(i) => Some(self.0.remove(i)),
            None if self.0.len() >= MAX_NAMES => Some(self.0.remove(0)),
            None => None,
        };
        self.0.push(s);
        gone
    }

    /// The suspended portal `portal`, taken out (it runs again).
    pub fn resume(&mut self, portal: &[u8]) -> Option<Suspended> {
        let i = self.0.iter().position(|p| p.portal == name(portal))?;
        Some(self.0.remove(i))
    }

    /// Every suspended portal, taken out (their transaction ended).
    pub fn drain(&mut self) -> std::vec::Drain<'_, Suspended> {
        self.0.drain(..)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
