//! The portals an Execute with a row limit left suspended on a
//! PostgreSQL connection.

use std::sync::Arc;

use crate::protocols::sql::Statement;
pub use crate::streams::sql::{MAX_NAMES, Names, name};

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
