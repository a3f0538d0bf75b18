//! The assembler's spans: slots reused through a free list, so holding and
//! releasing a span hashes nothing. A [`Ref`] names a slot and the span it
//! held; once the slot is reused for another span the old `Ref` finds
//! nothing.

use super::{Join, Span};

/// A span held: its slot and its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ref {
    slot: u32,
    pub id: u64,
}

pub struct Node {
    pub span: Span,
    pub parent: Option<Ref>,
    pub join: Join,
    pub children: Vec<Ref>,
}

#[derive(Default)]
pub struct Arena {
    slots: Vec<Option<Node>>,
    free: Vec<u32>,
    len: usize,
}

impl Arena {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn insert(&mut self, span: Span) -> Ref {
        let id = span.id;
        let node = Node {
            span,
            parent: None,
            join: Join::Root,
            children: Vec::new(),
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(node);
                slot
            }
            None => {
                self.slots.push(Some(node));
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.len += 1;
        Ref { slot, id }
    }

    pub fn get(&self, r: Ref) -> Option<&Node> {
        self.slots
            .get(r.slot as usize)?
            .as_ref()
            .filter(|n| n.span.id == r.id)
    }

    pub fn get_mut(&mut self, r: Ref) -> Option<&mut Node> {
        self.slots
            .get_mut(r.slot as usize)?
            .as_mut()
            .filter(|n| n.span.id == r.id)
    }

    pub fn remove(&mut self, r: Ref) -> Option<Node> {
        let slot = self.slots.get_mut(r.slot as usize)?;
        if slot.as_ref().is_none_or(|n| n.span.id != r.id) {
            return None;
        }
        self.free.push(r.slot);
        self.len -= 1;
        slot.take()
    }
}
