//! The `client_msg_id`s a room stored recently, as plain data: a `send` that
//! repeats the id of an earlier one of the same user (a resend after a dropped
//! connection) is answered with the original `ack` instead of being stored again.
//!
//! Bounded two ways, both settings: an id is remembered for `window_ms` after its
//! message was stored, and a room remembers at most `cap` ids (the oldest are
//! forgotten first). A resend of a forgotten id is stored as a new message. Time
//! is an argument (ms since the epoch), never read here. Sends without an id are
//! never remembered and cost nothing.
//!
//! In a cluster the store remembers the ids too (`append.lua`), so a resend to
//! another node is caught there; this one answers resends that reach the same
//! node without a round trip, and the sends of a room that goes on alone while
//! the store is down.

use std::collections::{HashMap, VecDeque};

use crate::ids::UserId;

/// What the first `send` of an id was stored as: the `ack` a resend gets again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub seq: u64,
    pub msg_id: String,
}

type Key = (UserId, Box<str>);

/// Recently stored `(sender, client_msg_id)` pairs of one room.
#[derive(Debug)]
pub struct SentIds {
    window_ms: u64,
    cap: usize,
    /// Keys by the time they were stored, oldest first (with that time).
    order: VecDeque<(u64, Key)>,
    /// The original of each remembered key, with the time it was stored (an
    /// entry of `order` whose time differs was superseded and is skipped).
    map: HashMap<Key, (u64, Original)>,
}

impl SentIds {
    /// Remember ids for `window_ms`, at most `cap` of them (0 = remember none).
    pub fn new(window_ms: u64, cap: usize) -> Self {
        Self { window_ms, cap, order: VecDeque::new(), map: HashMap::new() }
    }

    /// The original `ack` of `id` sent by `user`, if it was stored within the window.
    pub fn get(&mut self, user: &UserId, id: &str, now_ms: u64) -> Option<Original> {
        self.expire(now_ms);
        self.map.get(&(user.clone(), Box::from(id))).map(|(_, o)| o.clone())
    }

    /// `user`'s message with `id` was stored as `original` at `now_ms`.
    pub fn record(&mut self, user: &UserId, id: &str, original: Original, now_ms: u64) {
        if self.cap == 0 {
            return;
        }
        self.expire(now_ms);
        let key: Key = (user.clone(), Box::from(id));
        self.map.insert(key.clone(), (now_ms, original));
        self.order.push_back((now_ms, key));
        while self.map.len() > self.cap {
            self.pop_oldest();
        }
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn expire(&mut self, now_ms: u64) {
        while self.order.front().is_some_and(|(at, _)| at.saturating_add(self.window_ms) <= now_ms)
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        let Some((at, key)) = self.order.pop_front() else { return };
        // Only when the map still holds this very entry (not a newer record).
        if self.map.get(&key).is_some_and(|(stored_at, _)| *stored_at == at) {
            self.map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orig(seq: u64) -> Original {
        Original { seq, msg_id: format!("m{seq}") }
    }

    #[test]
    fn a_resend_finds_the_original_of_the_same_user_only() {
        let mut s = SentIds::new(1_000, 10);
        let (ann, bob) = (UserId::from("ann"), UserId::from("bob"));
        assert_eq!(s.get(&ann, "c1", 0), None);
        s.record(&ann, "c1", orig(1), 0);
        assert_eq!(s.get(&ann, "c1", 10), Some(orig(1)));
        assert_eq!(s.get(&bob, "c1", 10), None, "another user's id is their own");
        assert_eq!(s.get(&ann, "c2", 10), None);
    }

    #[test]
    fn ids_are_forgotten_after_the_window() {
        let mut s = SentIds::new(1_000, 10);
        let ann = UserId::from("ann");
        s.record(&ann, "c1", orig(1), 100);
        s.record(&ann, "c2", orig(2), 600);
        assert_eq!(s.get(&ann, "c1", 1_099), Some(orig(1)));
        assert_eq!(s.get(&ann, "c1", 1_100), None, "window over");
        assert_eq!(s.get(&ann, "c2", 1_100), Some(orig(2)));
        assert_eq!(s.len(), 1);
        assert_eq!(s.get(&ann, "c2", 5_000), None);
        assert!(s.is_empty());
    }

    #[test]
    fn past_the_cap_the_oldest_ids_go_first() {
        let mut s = SentIds::new(60_000, 2);
        let ann = UserId::from("ann");
        for i in 1..=3 {
            s.record(&ann, &format!("c{i}"), orig(i), i);
        }
        assert_eq!(s.len(), 2);
        assert_eq!(s.get(&ann, "c1", 4), None, "the oldest was forgotten");
        assert_eq!(s.get(&ann, "c3", 4), Some(orig(3)));
        let mut none = SentIds::new(60_000, 0);
        none.record(&ann, "c1", orig(1), 0);
        assert_eq!(none.get(&ann, "c1", 0), None, "cap 0 remembers nothing");
    }

    #[test]
    fn recording_an_id_again_keeps_the_newest_until_its_own_expiry() {
        let mut s = SentIds::new(1_000, 10);
        let ann = UserId::from("ann");
        s.record(&ann, "c1", orig(1), 0);
        s.record(&ann, "c1", orig(5), 900);
        // The first entry's expiry must not take the newer record with it.
        assert_eq!(s.get(&ann, "c1", 1_500), Some(orig(5)));
        assert_eq!(s.get(&ann, "c1", 1_900), None);
        assert!(s.order.is_empty());
    }
}
