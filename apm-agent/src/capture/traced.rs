//! The kernel's first filter for the syscall programs: how many traced
//! processes (`PIDS`) fall in each slot of `TRACED`, indexed by tgid modulo
//! its size, so that the programs, which run for every process on the
//! host, turn other processes away with an array lookup.

use std::collections::HashMap;

use apm_common::maps::{self as names, TRACED_SLOTS};
use aya::maps::{Array, MapData};

use super::kernel::{KernelError, map_err};

pub struct Traced {
    slots: Array<MapData, u32>,
    /// What `slots` holds, for the slots that are not 0.
    counts: HashMap<u32, u32>,
}

impl Traced {
    pub fn new(slots: Array<MapData, u32>) -> Self {
        Self {
            slots,
            counts: HashMap::new(),
        }
    }

    /// A process was added to `PIDS`.
    pub fn add(&mut self, tgid: u32) -> Result<(), KernelError> {
        let slot = tgid % TRACED_SLOTS;
        let n = self.counts.get(&slot).copied().unwrap_or(0) + 1;
        self.slots.set(slot, n, 0).map_err(map_err(names::TRACED))?;
        self.counts.insert(slot, n);
        Ok(())
    }

    /// A process was taken out of `PIDS`.
    pub fn remove(&mut self, tgid: u32) {
        let slot = tgid % TRACED_SLOTS;
        let n = self
            .counts
            .get(&slot)
            .copied()
            .unwrap_or(0)
            .saturating_sub(1);
        // A failed write leaves the slot open: the programs then look the
        // process up in PIDS, as before this filter.
        let _ = self.slots.set(slot, n, 0);
        if n == 0 {
            self.counts.remove(&slot);
        } else {
            self.counts.insert(slot, n);
        }
    }
}
