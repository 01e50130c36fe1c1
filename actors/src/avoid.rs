//! Pairs of users who must not be matched: partners skipped with `next` (minutes)
//! and blocks (days). Each user's record holds both directions of their pairs (so
//! a lookup is one map probe) and, in order, the pairs they asked for themselves.
//! Those are capped per user (`max_blocks_per_user`): past the cap the oldest is
//! forgotten on both sides, unless the other side asked for it too. Entries carry
//! their own expiry and are swept lazily and periodically. The number of pairs
//! stored is the `rendezvous_avoid_pairs` gauge.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::ids::UserId;

/// One peer in a user's record: until when each side asked to be kept apart.
#[derive(Debug, Default)]
struct Side {
    /// This user asked (blocked or skipped the peer).
    mine: Option<Instant>,
    /// The peer asked.
    theirs: Option<Instant>,
}

impl Side {
    fn live(&self, now: Instant) -> bool {
        self.mine.is_some_and(|t| t > now) || self.theirs.is_some_and(|t| t > now)
    }

    fn is_empty(&self) -> bool {
        self.mine.is_none() && self.theirs.is_none()
    }
}

/// One user's pairs.
#[derive(Debug, Default)]
struct Record {
    peers: HashMap<UserId, Side>,
    /// Peers this user asked to avoid, oldest first (the ones with `mine` set).
    asked: VecDeque<UserId>,
}

impl Record {
    /// Forget expired sides; returns how many of this user's own pairs ended.
    fn expire(&mut self, now: Instant) -> usize {
        let mut ended = 0;
        self.peers.retain(|_, s| {
            if s.mine.is_some_and(|t| t <= now) {
                s.mine = None;
                ended += 1;
            }
            if s.theirs.is_some_and(|t| t <= now) {
                s.theirs = None;
            }
            !s.is_empty()
        });
        if ended > 0 {
            let peers = &self.peers;
            self.asked.retain(|p| peers.get(p).is_some_and(|s| s.mine.is_some()));
        }
        ended
    }

    fn is_empty(&self) -> bool {
        self.peers.is_empty() && self.asked.is_empty()
    }
}

/// Shared by all pool shards and sessions; sharded map because shards on
/// different threads read it while sessions write it. No two entries are ever
/// locked at once (DashMap shard locks are not reentrant).
pub struct AvoidList {
    map: DashMap<UserId, Record>,
    /// Most pairs one user may ask for at once.
    cap: usize,
    /// Pairs stored (each user's asked ones), mirrored in the gauge.
    pairs: AtomicUsize,
    /// `rendezvous_avoid_pairs`, moved by deltas so that several engines in one
    /// process (tests) add up instead of overwriting each other.
    gauge: metrics::Gauge,
}

impl AvoidList {
    /// An empty list keeping at most `cap` pairs asked by one user.
    pub fn new(cap: usize) -> Self {
        Self {
            map: DashMap::new(),
            cap: cap.max(1),
            pairs: AtomicUsize::new(0),
            gauge: metrics::gauge!(crate::metrics::AVOID_PAIRS),
        }
    }

    /// Keep `a` and `b` apart for `ttl` (both directions), at `a`'s request. A
    /// longer existing expiry is kept. When `a` now asks for more than the cap,
    /// their oldest pairs are forgotten.
    pub fn add(&self, a: &UserId, b: &UserId, ttl: Duration) {
        self.add_at(a, b, ttl, Instant::now());
    }

    fn add_at(&self, a: &UserId, b: &UserId, ttl: Duration, now: Instant) {
        let until = now + ttl;
        let (mut added, mut ended) = (0, 0);
        let mut evicted = Vec::new();
        {
            let mut entry = self.map.entry(a.clone()).or_default();
            let me = &mut *entry;
            ended += me.expire(now);
            let side = me.peers.entry(b.clone()).or_default();
            if side.mine.is_none() {
                added += 1;
                me.asked.push_back(b.clone());
            }
            side.mine = Some(side.mine.map_or(until, |t| t.max(until)));
            while me.asked.len() > self.cap {
                let Some(old) = me.asked.pop_front() else { break };
                if let Some(s) = me.peers.get_mut(&old) {
                    s.mine = None;
                    if s.is_empty() {
                        me.peers.remove(&old);
                    }
                }
                evicted.push(old);
            }
        }
        {
            let mut them = self.map.entry(b.clone()).or_default();
            let side = them.peers.entry(a.clone()).or_default();
            side.theirs = Some(side.theirs.map_or(until, |t| t.max(until)));
        }
        for old in &evicted {
            if let Some(mut rec) = self.map.get_mut(old) {
                if let Some(s) = rec.peers.get_mut(a) {
                    s.theirs = None;
                    if s.is_empty() {
                        rec.peers.remove(a);
                    }
                }
            }
            self.map.remove_if(old, |_, rec| rec.is_empty());
        }
        self.moved(added, ended + evicted.len());
    }

    fn moved(&self, added: usize, removed: usize) {
        if added > removed {
            self.pairs.fetch_add(added - removed, Ordering::Relaxed);
            self.gauge.increment((added - removed) as f64);
        } else if removed > added {
            self.pairs.fetch_sub(removed - added, Ordering::Relaxed);
            self.gauge.decrement((removed - added) as f64);
        }
    }

    /// True when `a` and `b` must not be matched now.
    pub fn avoids(&self, a: &UserId, b: &UserId) -> bool {
        let now = Instant::now();
        self.map.get(a).is_some_and(|rec| rec.peers.get(b).is_some_and(|s| s.live(now)))
    }

    /// Pairs stored now (each counted once per user who asked for it).
    pub fn pairs(&self) -> usize {
        self.pairs.load(Ordering::Relaxed)
    }

    /// Drop expired pairs and empty users; returns how many users remain.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut ended = 0;
        self.map.retain(|_, rec| {
            ended += rec.expire(now);
            !rec.is_empty()
        });
        self.moved(0, ended);
        self.map.len()
    }
}

impl Drop for AvoidList {
    fn drop(&mut self) {
        // The gauge is process-wide: take this list's pairs back out of it.
        self.gauge.decrement(self.pairs() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserId {
        UserId::from(s)
    }

    #[test]
    fn symmetric_and_expiring() {
        let l = AvoidList::new(10);
        let (a, b, c) = (u("a"), u("b"), u("c"));
        l.add(&a, &b, Duration::from_secs(60));
        assert!(l.avoids(&a, &b) && l.avoids(&b, &a));
        assert!(!l.avoids(&a, &c));
        l.add(&a, &c, Duration::ZERO);
        assert!(!l.avoids(&a, &c), "a zero ttl has already expired");
        assert_eq!(l.sweep(), 2, "a and b remain, c's pair is gone");
        assert_eq!(l.pairs(), 1);
    }

    #[test]
    fn the_oldest_pairs_past_the_cap_are_forgotten_on_both_sides() {
        let l = AvoidList::new(100);
        let a = u("a");
        let t0 = Instant::now();
        let day = Duration::from_secs(86_400);
        for i in 0..10_000 {
            l.add_at(&a, &u(&format!("x{i}")), day, t0 + Duration::from_micros(i));
        }
        assert_eq!(l.pairs(), 100);
        assert!(!l.avoids(&a, &u("x0")) && !l.avoids(&u("x0"), &a));
        assert!(!l.avoids(&a, &u("x9899")));
        assert!(l.avoids(&a, &u("x9900")) && l.avoids(&u("x9999"), &a));
        assert_eq!(l.sweep(), 101, "a and the 100 kept peers; the forgotten ones are gone");
    }

    #[test]
    fn a_pair_both_sides_asked_for_outlives_one_sides_eviction() {
        let l = AvoidList::new(2);
        let (a, b) = (u("a"), u("b"));
        let ttl = Duration::from_secs(60);
        l.add(&a, &b, ttl);
        l.add(&b, &a, ttl);
        l.add(&a, &u("c"), ttl);
        l.add(&a, &u("d"), ttl);
        assert!(l.avoids(&a, &b), "b's own block of a still holds");
        assert_eq!(l.pairs(), 3, "a: c, d; b: a");
        // Once b's pairs roll over too, the pair is gone.
        l.add(&b, &u("e"), ttl);
        l.add(&b, &u("f"), ttl);
        assert!(!l.avoids(&a, &b) && !l.avoids(&b, &a));
    }

    #[test]
    fn asking_again_refreshes_without_counting_twice() {
        let l = AvoidList::new(5);
        let (a, b) = (u("a"), u("b"));
        l.add(&a, &b, Duration::ZERO);
        l.add(&a, &b, Duration::from_secs(60));
        assert!(l.avoids(&a, &b));
        assert_eq!(l.pairs(), 1);
    }
}
