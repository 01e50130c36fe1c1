//! Pairs of users who must not be matched: partners skipped with `next` (minutes)
//! and blocks (days). Both directions are stored, so a lookup is one map probe per
//! side. Entries carry their own expiry and are swept lazily and periodically.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::ids::UserId;

/// Shared by all pool shards and sessions; sharded map because shards on
/// different threads read it while sessions write it.
#[derive(Default)]
pub struct AvoidList {
    map: DashMap<UserId, HashMap<UserId, Instant>>,
}

impl AvoidList {
    /// Keep `a` and `b` apart for `ttl` (both directions). A longer existing
    /// expiry is kept.
    pub fn add(&self, a: &UserId, b: &UserId, ttl: Duration) {
        let until = Instant::now() + ttl;
        for (x, y) in [(a, b), (b, a)] {
            let mut e = self.map.entry(x.clone()).or_default();
            let now = Instant::now();
            e.retain(|_, t| *t > now);
            let slot = e.entry(y.clone()).or_insert(until);
            if *slot < until {
                *slot = until;
            }
        }
    }

    /// True when `a` and `b` must not be matched now.
    pub fn avoids(&self, a: &UserId, b: &UserId) -> bool {
        let now = Instant::now();
        self.map.get(a).and_then(|m| m.get(b).copied()).is_some_and(|t| t > now)
    }

    /// Drop expired pairs and empty users; returns how many users remain.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        self.map.retain(|_, m| {
            m.retain(|_, t| *t > now);
            !m.is_empty()
        });
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_expiring() {
        let l = AvoidList::default();
        let (a, b, c) = (UserId::from("a"), UserId::from("b"), UserId::from("c"));
        l.add(&a, &b, Duration::from_secs(60));
        assert!(l.avoids(&a, &b) && l.avoids(&b, &a));
        assert!(!l.avoids(&a, &c));
        l.add(&a, &c, Duration::ZERO);
        assert!(!l.avoids(&a, &c), "a zero ttl has already expired");
        assert_eq!(l.sweep(), 2, "a and b remain, c's pair is gone");
    }
}
