//! Request ids for writes: a client's writes run in slots, one write at a time per slot, so
//! that a retried write applies once (see [`RequestId`]).
//!
//! A write takes a free slot (the one freed last, so a client uses as few slots as it has
//! writes in flight at once) and the slot's next number; every attempt of the write carries
//! that id. Whatever the write's end (an answer, an error, the caller dropping it), the slot
//! goes back with its number advanced: a number is never used for two writes. At most
//! `max_write_slots` writes are in flight; more wait for a slot.

use std::sync::{Mutex, PoisonError};

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::proto::RequestId;

/// The slots of one client.
pub(crate) struct WriteSlots {
    client: u64,
    /// Free slots with their next number; the last pushed is taken first.
    free: Mutex<FreeSlots>,
    /// One permit per slot.
    permits: Semaphore,
}

struct FreeSlots {
    slots: Vec<(u32, u64)>,
    /// Slots made so far.
    made: u32,
}

/// A slot held by one write; returned (its number advanced) when dropped.
pub(crate) struct HeldSlot<'a> {
    slots: &'a WriteSlots,
    id: RequestId,
    _permit: SemaphorePermit<'a>,
}

impl WriteSlots {
    /// Slots of a client named `client`, at most `max_write_slots` (at least 1).
    pub(crate) fn new(client: u64, max_write_slots: usize) -> Self {
        let max = max_write_slots.clamp(1, u32::MAX as usize);
        WriteSlots { client, free: Mutex::new(FreeSlots { slots: Vec::new(), made: 0 }), permits: Semaphore::new(max) }
    }

    /// A slot for one write (waits while every slot is in use).
    pub(crate) async fn take(&self) -> HeldSlot<'_> {
        // The semaphore is never closed.
        let permit = match self.permits.acquire().await {
            Ok(p) => p,
            Err(_) => unreachable!("write slots are never closed"),
        };
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let (slot, seq) = free.slots.pop().unwrap_or_else(|| {
            free.made += 1;
            (free.made - 1, 1)
        });
        HeldSlot { slots: self, id: RequestId { client: self.client, slot, seq }, _permit: permit }
    }
}

impl HeldSlot<'_> {
    /// The id every attempt of this write carries.
    pub(crate) fn id(&self) -> RequestId {
        self.id
    }
}

impl Drop for HeldSlot<'_> {
    fn drop(&mut self) {
        let mut free = self.slots.free.lock().unwrap_or_else(PoisonError::into_inner);
        free.slots.push((self.id.slot, self.id.seq + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slot_is_reused_with_its_next_number_and_concurrent_writes_get_their_own() {
        let slots = WriteSlots::new(9, 2);
        let a = slots.take().await;
        let b = slots.take().await;
        assert_eq!((a.id().slot, a.id().seq), (0, 1));
        assert_eq!((b.id().slot, b.id().seq), (1, 1));
        assert_eq!(a.id().client, 9);
        drop(b);
        let c = slots.take().await;
        assert_eq!((c.id().slot, c.id().seq), (1, 2), "the slot freed last, numbered on");
        // Every slot is held: a third write waits.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(10), slots.take()).await;
        assert!(waiting.is_err());
        drop(a);
        let d = slots.take().await;
        assert_eq!((d.id().slot, d.id().seq), (0, 2));
    }
}
