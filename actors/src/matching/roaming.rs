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
//!
//! A language split into parts (`EngineConfig::language_parts`: pools `en~0`,
//! `en~1`, … each in a slot of its own) uses the same move: its searches roam
//! ([`Roam::Parts`]) among its parts only. Two lone searches in two parts must
//! not swap places forever (two nodes ticking in step would do that), so a lone
//! search goes to the sibling part where most wait, and when that part has just
//! one waiting too, only if its name sorts before its own: of two lone searches,
//! the one in the later part moves and the other stays to be found. After its
//! dwell ([`PART_DWELL`], shorter than between languages: the other parts hold
//! the same language's other waiting users) a search moves to the next part in
//! turn, as across languages.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::pool::Roam;
use crate::language::siblings;

/// Longest stay of a roaming search in one pool without a match.
pub const DWELL: Duration = Duration::from_millis(1_000);

/// Longest stay of a split language's search in one of its parts without a
/// match: shorter than [`DWELL`], since the other parts hold the same language's
/// other waiting users, any of whom may be its best partner.
pub const PART_DWELL: Duration = Duration::from_millis(250);

/// How long a search that roams as `roam` stays in a pool without a match.
pub fn dwell(roam: Roam) -> Duration {
    match roam {
        Roam::Parts => PART_DWELL,
        Roam::Stays | Roam::AnyLanguage => DWELL,
    }
}

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
        self.next_for(current, group_size, Roam::AnyLanguage, false)
    }

    /// Where a search of `group_size` in pool `current` that roams as `roam` goes
    /// next, if anywhere. `lone`: it is alone in its bucket and has not stayed its
    /// dwell yet ([`dwell`]); then a sibling part with searches comes first (see
    /// the module's notes).
    pub fn next_for(
        &self,
        current: &str,
        group_size: u8,
        roam: Roam,
        lone: bool,
    ) -> Option<Arc<str>> {
        let map = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let open = || map.iter().filter(|((l, g), _)| *g == group_size && &**l != current);
        if lone {
            let best = open()
                .filter(|((l, _), _)| siblings(l, current))
                .max_by(|((a, _), m), ((b, _), n)| m.cmp(n).then_with(|| b.cmp(a)));
            if let Some(((to, _), n)) = best {
                return (*n > 1 || &**to < current).then(|| to.clone());
            }
        }
        let all: Vec<&Arc<str>> = match roam {
            Roam::Stays => return None,
            Roam::Parts => open().map(|((l, _), _)| l).filter(|l| siblings(l, current)).collect(),
            Roam::AnyLanguage => open().map(|((l, _), _)| l).collect(),
        };
        all.iter().find(|l| &****l > current).or_else(|| all.first()).map(|l| (*l).clone())
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

    #[test]
    fn a_split_languages_searches_move_among_its_parts_only() {
        let d = Directory::default();
        let k = |l: &str, g: u8| (Arc::from(l), g);
        d.report(&[], &[(k("de", 2), 1), (k("en~0", 2), 1), (k("en~2", 2), 1), (k("en~3", 2), 1)]);
        let next = |from: &str, roam, lone| d.next_for(from, 2, roam, lone);
        // Lone: of lone searches in sibling parts, only the later part's moves,
        // to the earliest part, so they meet and never swap.
        assert_eq!(next("en~0", Roam::Parts, true), None, "stays to be found");
        assert_eq!(next("en~2", Roam::Parts, true).as_deref(), Some("en~0"));
        assert_eq!(next("en~3", Roam::Parts, true).as_deref(), Some("en~0"));
        // After its dwell: the next part in turn, never another language.
        assert_eq!(next("en~0", Roam::Parts, false).as_deref(), Some("en~2"));
        assert_eq!(next("en~3", Roam::Parts, false).as_deref(), Some("en~0"), "wraps around");
        // A part where more than one waits draws a lone search whatever its name.
        d.report(&[k("en~3", 2)], &[(k("en~3", 2), 4)]);
        assert_eq!(next("en~0", Roam::Parts, true).as_deref(), Some("en~3"));
        assert_eq!(next("en~1", Roam::Parts, true).as_deref(), Some("en~3"));
        // A search without a language homed in a part: siblings first when lone,
        // any language after its dwell; with no sibling waiting, any language.
        assert_eq!(next("en~1", Roam::AnyLanguage, true).as_deref(), Some("en~3"));
        assert_eq!(next("en~3", Roam::AnyLanguage, false).as_deref(), Some("de"));
        let d2 = Directory::default();
        d2.report(&[], &[(k("de", 2), 1), (k("en~1", 2), 1)]);
        assert_eq!(d2.next_for("en~1", 2, Roam::AnyLanguage, true).as_deref(), Some("de"));
        assert_eq!(d2.next_for("en~1", 2, Roam::Parts, true), None, "no sibling waits");
        assert_eq!(d2.next_for("en~1", 2, Roam::Parts, false), None);
        assert_eq!(d2.next_for("fr", 2, Roam::Stays, false), None);
        // Unsplit languages are no one's siblings.
        assert_eq!(d2.next_for("de", 2, Roam::AnyLanguage, true).as_deref(), Some("en~1"));
    }
}
