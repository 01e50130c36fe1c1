//! Timeouts of a shard's offers, held and parked searches, kept in one queue per
//! kind and swept by the shard's own timer.
//!
//! Each kind has a fixed length, so arming order is deadline order and a
//! `VecDeque` is enough. One actix timer per offer would cost far more: an
//! actix context polls every timer it holds whenever any message arrives, and a
//! shard confirming a thousand cross-node matches a second held over ten
//! thousand of them (half the worker threads' time went to `Sleep::poll` and
//! waker bookkeeping, perf; see BENCHMARKS.md).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Deadlines of one kind, each `length` after it was armed.
pub struct Timeouts<K> {
    length: Duration,
    queue: VecDeque<(Instant, K, u64)>,
    /// The serial of each key's latest arming: re-arming a key moves its deadline.
    armed: HashMap<K, u64>,
    serial: u64,
}

impl<K: Clone + Eq + Hash> Timeouts<K> {
    pub fn new(length: Duration) -> Self {
        Self { length, queue: VecDeque::new(), armed: HashMap::new(), serial: 0 }
    }

    /// Start (or restart) `key`'s timeout at `now`.
    pub fn arm(&mut self, key: K, now: Instant) {
        self.serial += 1;
        self.armed.insert(key.clone(), self.serial);
        self.queue.push_back((now + self.length, key, self.serial));
    }

    /// Stop `key`'s timeout (it was settled in time).
    pub fn disarm(&mut self, key: &K) {
        self.armed.remove(key);
    }

    /// The keys whose timeout ended by `now`, oldest first; each is disarmed.
    pub fn expired(&mut self, now: Instant) -> Vec<K> {
        let mut out = Vec::new();
        while let Some((due, _, _)) = self.queue.front() {
            if *due > now {
                break;
            }
            let Some((_, key, serial)) = self.queue.pop_front() else { break };
            if self.armed.get(&key) == Some(&serial) {
                self.armed.remove(&key);
                out.push(key);
            }
        }
        out
    }

    /// Timeouts armed and not yet ended or stopped.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.armed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_expire_in_order_once_and_not_when_disarmed_or_rearmed() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = Timeouts::new(ms(100));
        t.arm(1u64, t0);
        t.arm(2, t0 + ms(10));
        t.arm(3, t0 + ms(20));
        t.arm(4, t0 + ms(30));
        t.disarm(&2);
        // 3 re-armed later: its first deadline no longer counts.
        t.arm(3, t0 + ms(50));
        assert!(t.expired(t0 + ms(99)).is_empty());
        assert_eq!(t.expired(t0 + ms(130)), vec![1, 4]);
        assert_eq!(t.len(), 1);
        assert!(t.expired(t0 + ms(149)).is_empty());
        assert_eq!(t.expired(t0 + ms(150)), vec![3]);
        assert!(t.expired(t0 + ms(1_000)).is_empty());
        assert_eq!(t.len(), 0);
    }
}
