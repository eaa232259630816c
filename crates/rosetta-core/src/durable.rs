//! Replies that promise durability wait for the store's durable point.
//!
//! A reply that tells a client its change is on disk (a publisher confirm, PUBACK, SUBACK, a
//! RECEIPT, `declare-ok`) may go out only once the durable epoch reaches the epoch of the write
//! it covers. Front-ends run on async worker threads, where a blocking [`Store::sync`] would
//! stall every connection scheduled there, so they hold such replies in a [`Held`] and release
//! them as the durable epoch advances; code that can await uses [`reached`] instead.

use std::collections::VecDeque;

use crate::store::{Epoch, Store, StoreError};

/// Replies (or anything else to send) waiting for the durable point, in the order they must go
/// out.
#[derive(Debug)]
pub struct Held<T> {
    waiting: VecDeque<(Epoch, T)>,
}

impl<T> Default for Held<T> {
    fn default() -> Self {
        Held {
            waiting: VecDeque::new(),
        }
    }
}

impl<T> Held<T> {
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Holds `item` until the durable epoch reaches `epoch`, behind everything already held.
    pub fn push(&mut self, epoch: Epoch, item: T) {
        self.waiting.push_back((epoch, item));
    }

    /// The items held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.waiting.iter().map(|(_, item)| item)
    }

    /// The item held last, which output that must not overtake it can join.
    pub fn last_mut(&mut self) -> Option<&mut T> {
        self.waiting.back_mut().map(|(_, item)| item)
    }

    /// The next item to send if `durable` covers it. Stops at the first item it does not
    /// cover: a later item may have a smaller epoch but must not overtake it, since replies
    /// answer requests in the order they came.
    pub fn pop_durable(&mut self, durable: Epoch) -> Option<T> {
        match self.waiting.front() {
            Some((epoch, _)) if *epoch <= durable => self.waiting.pop_front().map(|(_, t)| t),
            _ => None,
        }
    }
}

/// Asks the group committer for `epoch` and waits, without blocking the thread, until it is
/// durable. Fails if the store closes first: then the write may never reach the disk.
pub async fn reached(store: &dyn Store, epoch: Epoch) -> Result<(), StoreError> {
    let mut durable = store.subscribe_durable();
    store.request_sync(epoch);
    let reached = durable.wait_for(|d| *d >= epoch).await.is_ok();
    if reached {
        Ok(())
    } else {
        Err(StoreError::Engine(
            "the store closed before the write was durable".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::Held;

    #[test]
    fn held_items_leave_in_order_once_the_durable_epoch_covers_them() {
        let mut held = Held::default();
        held.push(3, "a");
        held.push(1, "b");
        held.push(5, "c");
        assert_eq!(held.pop_durable(2), None, "b must not overtake a");
        assert_eq!(held.pop_durable(4), Some("a"));
        assert_eq!(held.pop_durable(4), Some("b"));
        assert_eq!(held.pop_durable(4), None);
        assert!(!held.is_empty());
        assert_eq!(held.pop_durable(5), Some("c"));
        assert!(held.is_empty());
    }
}
