//! The memory of records read but not yet folded, bounded for the whole
//! process (`ingest.unfolded_max_bytes`), whatever the backlog and however
//! many partitions and generations fold at once.
//!
//! A batch takes credit for what it holds as records arrive, in chunks, and
//! gives it all back when it is dropped (folded). A partition that finds no
//! credit left stops reading: its batch is written at its linger time, or
//! fills further once credit comes back. A batch never waits for credit it
//! cannot get while it holds some: it is written instead, so partitions
//! cannot starve each other into a standstill. Each partition may overrun
//! the bound by the record that found it spent.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Credit is taken in steps of at least this many bytes.
const CHUNK: usize = 256 << 10;

/// The shared bound.
#[derive(Debug, Clone)]
pub struct Budget {
    credit: Arc<Semaphore>,
    total: usize,
}

impl Budget {
    /// A bound of `bytes` (at least one chunk).
    pub fn new(bytes: usize) -> Self {
        let total = bytes.clamp(CHUNK, Semaphore::MAX_PERMITS);
        Self {
            credit: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Bytes of credit nobody holds.
    pub fn available(&self) -> usize {
        self.credit.available_permits()
    }

    /// The bound.
    pub fn total(&self) -> usize {
        self.total
    }

    /// What a batch holds against the bound.
    pub fn account(&self) -> Account {
        Account {
            budget: self.clone(),
            held: None,
            used: 0,
        }
    }
}

/// One batch's credit: taken as it grows, given back when dropped.
#[derive(Debug)]
pub struct Account {
    budget: Budget,
    held: Option<OwnedSemaphorePermit>,
    used: usize,
}

impl Account {
    /// Counts `bytes` more held by the batch, taking credit if there is
    /// some; false when the batch is over its credit and none is left.
    pub fn charge(&mut self, bytes: usize) -> bool {
        self.used += bytes;
        let short = self.short();
        if short == 0 {
            return true;
        }
        let step = self.step(short);
        match self.budget.credit.clone().try_acquire_many_owned(step) {
            Ok(permit) => {
                self.keep(permit);
                self.short() == 0
            }
            Err(_) => false,
        }
    }

    /// Bytes used beyond the credit held.
    pub fn short(&self) -> usize {
        self.used.saturating_sub(self.held())
    }

    /// Waits until the credit the batch lacks is free, then takes it
    /// (cancel-safe: dropping the future takes nothing).
    pub async fn settle(&mut self) {
        let short = self.short();
        if short == 0 {
            return;
        }
        let step = self.step(short);
        if let Ok(permit) = self.budget.credit.clone().acquire_many_owned(step).await {
            self.keep(permit);
        }
    }

    /// Credit to ask for when `short` bytes are missing: a chunk at
    /// least, and never more than the bound leaves to this batch (a record
    /// larger than the bound is let through once the batch holds all of
    /// it).
    fn step(&self, short: usize) -> u32 {
        let room = self.budget.total - self.held();
        u32::try_from(short.max(CHUNK).min(room).max(1)).unwrap_or(u32::MAX)
    }

    fn held(&self) -> usize {
        self.held
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    fn keep(&mut self, permit: OwnedSemaphorePermit) {
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_is_taken_in_chunks_and_given_back_on_drop() {
        let budget = Budget::new(4 * CHUNK);
        let mut a = budget.account();
        assert!(a.charge(10));
        assert_eq!(budget.available(), 3 * CHUNK);
        assert!(a.charge(CHUNK - 10));
        assert_eq!(
            budget.available(),
            3 * CHUNK,
            "still within the first chunk"
        );
        assert!(a.charge(1));
        assert_eq!(budget.available(), 2 * CHUNK);
        drop(a);
        assert_eq!(budget.available(), 4 * CHUNK);
    }

    #[test]
    fn a_spent_bound_refuses_until_credit_comes_back() {
        let budget = Budget::new(2 * CHUNK);
        let mut a = budget.account();
        let mut b = budget.account();
        assert!(a.charge(2 * CHUNK));
        assert!(!b.charge(1), "nothing left");
        assert_eq!(b.short(), 1);
        drop(a);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(b.settle());
        assert_eq!(b.short(), 0);
        assert_eq!(budget.available(), CHUNK);
    }

    #[test]
    fn a_record_larger_than_the_bound_takes_all_of_it_and_no_more() {
        let budget = Budget::new(2 * CHUNK);
        let mut a = budget.account();
        assert!(!a.charge(10 * CHUNK));
        assert_eq!(a.short(), 8 * CHUNK);
        assert_eq!(budget.available(), 0);
        // It never waits for more than the bound: its partition writes it
        // at its linger time and gives everything back.
        drop(a);
        assert_eq!(budget.available(), 2 * CHUNK);
    }
}
