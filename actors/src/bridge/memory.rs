//! The in-process bridge: the embedded single-node default. Claims are decided with
//! per-user entries in a DashMap; trending counts sit behind a mutex that is only
//! touched once per match and once per `/api/trending` request.
//!
//! There are no other nodes: `broadcast` and `room_event` reach nobody, and
//! `send_to_node` reaches this node's sink only when it names this node (the one
//! node a single node can send to), delivered at once on the caller's thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use dashmap::DashMap;

use super::events::ClusterEvent;
use super::{Attachment, BoxFut, Bridge, ClaimMember, ClaimOutcome, ClusterSink, SearchAd, Ticket};
use crate::ids::{Interest, UserId};

/// Interests kept by the trending counts (the most counted); the rest are
/// forgotten, so one-off interests cannot grow the table without bound.
pub const TRENDING_CAP: usize = 10_000;

/// Single-node facts.
pub struct MemoryBridge {
    node_id: String,
    /// user → their one valid search ticket.
    searches: DashMap<UserId, Ticket>,
    /// Serializes claims so a multi-member check-and-remove is atomic across shards
    /// (a DashMap alone locks one key at a time). Held for microseconds, never
    /// across an await.
    claim_lock: Mutex<()>,
    /// interest → matches it was shared in.
    trending: Mutex<HashMap<Interest, u64>>,
    /// Where events sent to this node go, once attached.
    sink: OnceLock<Weak<dyn ClusterSink>>,
}

impl MemoryBridge {
    pub fn new(node_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            searches: DashMap::new(),
            claim_lock: Mutex::new(()),
            trending: Mutex::new(HashMap::new()),
            sink: OnceLock::new(),
        }
    }

    /// The synchronous claim, shared by the trait method, the Redis bridge's
    /// fallback while Redis is down, and unit tests.
    pub fn claim_now(&self, members: &[(UserId, Ticket)]) -> ClaimOutcome {
        let _guard = self.claim_lock.lock().unwrap_or_else(|p| p.into_inner());
        let lost: Vec<UserId> = members
            .iter()
            .filter(|(u, t)| self.searches.get(u).map(|v| *v) != Some(*t))
            .map(|(u, _)| u.clone())
            .collect();
        if !lost.is_empty() {
            return ClaimOutcome::Lost(lost);
        }
        for (u, t) in members {
            self.searches.remove_if(u, |_, v| v == t);
        }
        ClaimOutcome::Claimed
    }
}

impl MemoryBridge {
    /// Make `ticket` the user's one valid search.
    pub fn begin(&self, user: &UserId, ticket: Ticket) {
        let _guard = self.claim_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.searches.insert(user.clone(), ticket);
    }

    /// End the user's search if `ticket` is still the valid one.
    pub fn end(&self, user: &UserId, ticket: Ticket) {
        let _guard = self.claim_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.searches.remove_if(user, |_, v| *v == ticket);
    }

    /// Forget every search (the Redis bridge's mirror, after a resync).
    pub fn clear(&self) {
        let _guard = self.claim_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.searches.clear();
    }
}

impl Bridge for MemoryBridge {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn attach(self: Arc<Self>, attachment: Attachment) {
        let _ = self.sink.set(attachment.sink);
    }

    fn send_to_node(&self, node: &str, event: ClusterEvent) {
        if node == self.node_id {
            if let Some(sink) = self.sink.get().and_then(Weak::upgrade) {
                sink.deliver(event);
            }
        }
    }

    fn begin_search(&self, ad: SearchAd) {
        self.begin(&UserId::from(ad.user), ad.ticket);
    }

    fn end_search(&self, user: &UserId, ticket: Ticket, _language: &str) {
        self.end(user, ticket);
    }

    fn claim_match(&self, _language: &str, members: Vec<ClaimMember>) -> BoxFut<ClaimOutcome> {
        let keys: Vec<(UserId, Ticket)> = members.into_iter().map(|m| (m.user, m.ticket)).collect();
        let outcome = self.claim_now(&keys);
        Box::pin(async move { Ok(outcome) })
    }

    fn record_match(&self, interests: Vec<Interest>) {
        if interests.is_empty() {
            return;
        }
        let mut t = self.trending.lock().unwrap_or_else(|p| p.into_inner());
        for i in interests {
            *t.entry(i).or_default() += 1;
        }
        // Interests are whatever users type: past twice the cap, keep the most
        // counted `TRENDING_CAP` (amortized: one sort per `TRENDING_CAP` new ones).
        if t.len() > 2 * TRENDING_CAP {
            let mut counts: Vec<u64> = t.values().copied().collect();
            counts.sort_unstable_by(|a, b| b.cmp(a));
            let floor = counts[TRENDING_CAP - 1];
            let mut above = counts.iter().filter(|&&c| c > floor).count();
            t.retain(|_, c| {
                if *c > floor {
                    true
                } else if *c == floor && above < TRENDING_CAP {
                    above += 1;
                    true
                } else {
                    false
                }
            });
        }
    }

    fn trending(&self, limit: usize) -> BoxFut<Vec<(String, u64)>> {
        let mut top: Vec<(String, u64)> = {
            let t = self.trending.lock().unwrap_or_else(|p| p.into_inner());
            t.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(limit);
        Box::pin(async move { Ok(top) })
    }

    fn nodes(&self) -> BoxFut<usize> {
        Box::pin(async { Ok(1) })
    }

    fn health(&self) -> BoxFut<()> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_claimed_at_most_once() {
        let b = MemoryBridge::new("n");
        let (x, y, z) = (UserId::from("x"), UserId::from("y"), UserId::from("z"));
        b.begin(&x, 1);
        b.begin(&y, 2);
        b.begin(&z, 3);
        assert_eq!(b.claim_now(&[(x.clone(), 1), (y.clone(), 2)]), ClaimOutcome::Claimed);
        assert_eq!(
            b.claim_now(&[(z.clone(), 3), (y.clone(), 2)]),
            ClaimOutcome::Lost(vec![y.clone()])
        );
        // z was left untouched by the failed claim.
        assert_eq!(b.claim_now(&[(z.clone(), 3)]), ClaimOutcome::Claimed);
    }

    #[test]
    fn a_newer_search_supersedes_and_end_needs_the_right_ticket() {
        let b = MemoryBridge::new("n");
        let x = UserId::from("x");
        b.begin(&x, 1);
        b.begin(&x, 5);
        assert_eq!(b.claim_now(&[(x.clone(), 1)]), ClaimOutcome::Lost(vec![x.clone()]));
        b.end(&x, 1);
        assert_eq!(b.claim_now(&[(x.clone(), 5)]), ClaimOutcome::Claimed);
    }

    #[test]
    fn trending_orders_by_count() {
        let b = MemoryBridge::new("n");
        b.record_match(vec![Interest::from("chess"), Interest::from("go")]);
        b.record_match(vec![Interest::from("chess")]);
        let top =
            futures_util::FutureExt::now_or_never(b.trending(10)).expect("ready").expect("ok");
        assert_eq!(top, vec![("chess".into(), 2), ("go".into(), 1)]);
    }

    #[test]
    fn trending_forgets_one_off_interests_past_its_cap() {
        let b = MemoryBridge::new("n");
        for _ in 0..3 {
            b.record_match(vec![Interest::from("chess")]);
        }
        for i in 0..(2 * TRENDING_CAP + 5) {
            b.record_match(vec![Interest::from(format!("once-{i}").as_str())]);
        }
        let len = b.trending.lock().map(|t| t.len()).expect("lock");
        assert!((TRENDING_CAP..=2 * TRENDING_CAP).contains(&len), "{len} kept");
        let top = futures_util::FutureExt::now_or_never(b.trending(1)).expect("ready").expect("ok");
        assert_eq!(top, vec![("chess".into(), 3)]);
    }
}
