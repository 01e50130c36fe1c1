//! Searches without a language ("roaming" searches). The protocol lets such a
//! search match a partner of any language, but pools are per language: in the
//! store each language's pool is one Redis hash slot (`{pool:LANG}`), and one
//! atomic claim must stay inside one slot. So a roaming search is *homed* in one
//! language pool at a time, where it matches like any search of that language,
//! and moves between pools one step at a time: its shard ends it in the old pool
//! (`end_search`, which also withdraws its replicas on other nodes) before the
//! shard of the new pool begins it there (`begin_search`). At every moment it is
//! claimable in at most one pool, so "one valid search per user" and "at most one
//! match per search" hold as for any search.
//!
//! A roaming search moves when it is alone in its bucket, or after [`DWELL`] in
//! a pool without a match, to the next language (in name order, after its current
//! one) where searches of its group size wait, here or (as replicas) on other
//! nodes. [`Directory`] is where shards publish how many wait per bucket.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest stay of a roaming search in one pool without a match.
pub const DWELL: Duration = Duration::from_millis(1_000);

/// Searches waiting per (language, group size), every shard's pool together
/// (replicas of other nodes' searches included). Each language belongs to one
/// shard, which replaces its own languages' counts whenever its pool changes.
#[derive(Debug, Default)]
pub struct Directory {
    /// A mutex, not a DashMap: shards take it once per pool report, briefly.
    waiting: Mutex<BTreeMap<(Arc<str>, u8), usize>>,
}

impl Directory {
    /// A shard's buckets now: `sizes` replaces the counts of `previous` (the keys it
    /// reported last time).
    pub fn report(&self, previous: &[(Arc<str>, u8)], sizes: &[((Arc<str>, u8), usize)]) {
        let mut map = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        for k in previous {
            map.remove(k);
        }
        for (k, n) in sizes {
            if *n > 0 {
                map.insert(k.clone(), *n);
            }
        }
    }

    /// The next language after `current` (cyclically, in name order) where
    /// searches of `group_size` wait.
    pub fn next_after(&self, current: &str, group_size: u8) -> Option<Arc<str>> {
        let map = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let mut langs =
            map.keys().filter(|(l, g)| *g == group_size && &**l != current).map(|(l, _)| l.clone());
        let all: Vec<Arc<str>> = langs.by_ref().collect();
        all.iter().find(|l| &***l > current).or_else(|| all.first()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_language_in_turn_with_the_same_group_size() {
        let d = Directory::default();
        let k = |l: &str, g: u8| (Arc::from(l), g);
        d.report(&[], &[(k("de", 2), 1), (k("fr", 2), 3), (k("it", 3), 1)]);
        assert_eq!(d.next_after("en", 2).as_deref(), Some("fr"));
        assert_eq!(d.next_after("fr", 2).as_deref(), Some("de"), "wraps around");
        assert_eq!(d.next_after("de", 3).as_deref(), Some("it"));
        assert_eq!(d.next_after("it", 3), None, "only its own pool has searches of 3");
        d.report(&[k("fr", 2)], &[(k("fr", 2), 0)]);
        assert_eq!(d.next_after("de", 2), None);
    }
}
