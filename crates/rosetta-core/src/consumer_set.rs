//! The consumers of one queue and which of them gets the next message.
//!
//! Consumers are grouped by priority (`x-priority`, RabbitMQ's consumer priorities): the queue
//! offers a message to the highest level first, round-robin among that level's consumers, and
//! to a lower level only when every consumer above it is blocked (no prefetch room, or its
//! buffer budget spent). Nobody setting a priority leaves a single level, so the common case
//! costs what plain round-robin costs: the cursor's consumer, and the ones after it only while
//! they are blocked.

use std::sync::Arc;

use crate::consumer::Consumer;

/// The consumers of one priority, with the round-robin cursor among them.
#[derive(Debug)]
struct Level {
    priority: i64,
    members: Vec<Arc<Consumer>>,
    /// Index of the member offered the next message first.
    next: usize,
}

#[derive(Debug, Default)]
pub(crate) struct ConsumerSet {
    /// In the order they arrived: the single active consumer is the first.
    arrived: Vec<Arc<Consumer>>,
    /// Highest priority first; no level is empty.
    levels: Vec<Level>,
}

impl ConsumerSet {
    pub fn len(&self) -> usize {
        self.arrived.len()
    }

    pub fn is_empty(&self) -> bool {
        self.arrived.is_empty()
    }

    /// In the order they arrived.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Consumer>> {
        self.arrived.iter()
    }

    pub fn push(&mut self, consumer: Arc<Consumer>) {
        let priority = consumer.priority;
        self.arrived.push(consumer.clone());
        // Few levels exist in practice (usually one), so a linear search is the cheap way.
        match self.levels.iter().position(|l| l.priority <= priority) {
            Some(i) if self.levels[i].priority == priority => self.levels[i].members.push(consumer),
            Some(i) => self.levels.insert(i, Level::new(priority, consumer)),
            None => self.levels.push(Level::new(priority, consumer)),
        }
    }

    /// Removes `consumer`; false if it was not there.
    pub fn remove(&mut self, consumer: &Arc<Consumer>) -> bool {
        let Some(at) = self.arrived.iter().position(|c| Arc::ptr_eq(c, consumer)) else {
            return false;
        };
        self.arrived.remove(at);
        if let Some(li) = self
            .levels
            .iter()
            .position(|l| l.priority == consumer.priority)
        {
            let level = &mut self.levels[li];
            if let Some(mi) = level.members.iter().position(|c| Arc::ptr_eq(c, consumer)) {
                level.members.remove(mi);
                // The member after the removed one keeps its turn.
                if mi < level.next {
                    level.next -= 1;
                }
                if level.next >= level.members.len() {
                    level.next = 0;
                }
            }
            if level.members.is_empty() {
                self.levels.remove(li);
            }
        }
        true
    }

    /// Empties the set; returns the consumers in the order they arrived.
    pub fn drain(&mut self) -> Vec<Arc<Consumer>> {
        self.levels.clear();
        std::mem::take(&mut self.arrived)
    }

    /// The consumer to offer the next message to, holding one unit of its credit; `None` when
    /// every consumer is blocked. With `single_active` only the longest-standing consumer
    /// receives (RabbitMQ's single active consumer on a classic queue).
    pub fn pick(&mut self, single_active: bool) -> Option<Arc<Consumer>> {
        if single_active {
            let first = self.arrived.first()?;
            return first.try_acquire().then(|| first.clone());
        }
        for level in &mut self.levels {
            let n = level.members.len();
            for i in 0..n {
                let idx = (level.next + i) % n;
                if level.members[idx].try_acquire() {
                    level.next = (idx + 1) % n;
                    return Some(level.members[idx].clone());
                }
            }
        }
        None
    }
}

impl Level {
    fn new(priority: i64, first: Arc<Consumer>) -> Self {
        Level {
            priority,
            members: vec![first],
            next: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::mpsc::unbounded_channel;

    use super::ConsumerSet;
    use crate::consumer::{Consumer, ConsumerSpec, PRIORITY_ARGUMENT};
    use crate::message::{Table, Value};

    /// An acknowledging consumer named `tag` with a prefetch of `prefetch` and `priority`.
    fn consumer(tag: &str, prefetch: u32, priority: i32) -> Arc<Consumer> {
        let (outbox, _) = unbounded_channel();
        let mut arguments = Table::new();
        arguments.insert(PRIORITY_ARGUMENT.to_owned(), Value::I32(priority));
        let spec = ConsumerSpec {
            tag: tag.to_owned(),
            connection: 1,
            no_ack: false,
            exclusive: false,
            arguments,
            prefetch,
            shared_credit: None,
        };
        Consumer::new(spec, outbox, 0).expect("valid priority")
    }

    fn picks(set: &mut ConsumerSet, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                set.pick(false)
                    .map_or("-".to_owned(), |c| c.tag.to_string())
            })
            .collect()
    }

    #[test]
    fn the_highest_priority_with_credit_is_picked_and_lower_ones_only_when_it_is_blocked() {
        let mut set = ConsumerSet::default();
        set.push(consumer("low", 0, -3));
        set.push(consumer("high", 2, 7));
        set.push(consumer("mid", 1, 0));
        assert_eq!(picks(&mut set, 5), ["high", "high", "mid", "low", "low"]);
        assert_eq!(
            set.iter().map(|c| c.tag.to_string()).collect::<Vec<_>>(),
            ["low", "high", "mid"],
            "arrival order is kept beside the priorities"
        );
    }

    #[test]
    fn equal_priorities_take_turns_and_a_removal_keeps_the_next_ones_turn() {
        let mut set = ConsumerSet::default();
        let (a, b, c) = (
            consumer("a", 0, 0),
            consumer("b", 0, 0),
            consumer("c", 0, 0),
        );
        for x in [&a, &b, &c] {
            set.push(x.clone());
        }
        assert_eq!(picks(&mut set, 4), ["a", "b", "c", "a"]);
        assert!(set.remove(&a));
        assert!(!set.remove(&a));
        assert_eq!(picks(&mut set, 3), ["b", "c", "b"]);
        assert!(set.remove(&b) && set.remove(&c));
        assert!(set.is_empty());
        assert!(set.pick(false).is_none());
    }
}
