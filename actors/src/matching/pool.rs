//! The waiting pool of one shard, as plain data: insertion, the interest index,
//! scoring, relaxation over wait time, and group selection. No actors, no clocks
//! of its own (callers pass `now`), so every rule is unit-tested here.
//!
//! Layout: entries live in `entries` by ticket. Each (language, group size) pair is
//! a [`Bucket`] with two indexes of tickets, both ordered by ticket (= arrival):
//! `order` (everyone) and `by_interest` (interest → who lists it). A search scores
//! only the users that share one of its interests, plus the oldest few of its bucket
//! for the relaxed steps, so it never walks the whole pool.
//!
//! Rules (protocol "Matching rules"):
//! * same language (one bucket per language) and same group size;
//! * score = shared interests; ties go to the longest wait (lowest ticket);
//! * each search applies a *rule* that depends on how long it has waited: a ladder
//!   step (`--ladder`) or the wait-target policy's required score (the default, see
//!   [`super::policy`]);
//! * a pair is acceptable under a rule when: not the same user, neither avoids
//!   the other, same region if the rule wants it and both gave one, and they share
//!   at least `min(min_shared, |a|, |b|)` interests. The rule is the more relaxed of
//!   the two sides' rules, so a long waiter is served by any compatible newcomer;
//! * in a group, every member must be acceptable with the searcher, and members must
//!   not avoid each other nor differ in region when the rule wants one region;
//! * under the wait-target policy, candidates past their forced time rank first
//!   (oldest first), then by score, then same region (when both gave one).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::policy::{ArrivalStats, Odds, Policy};
use crate::bridge::Ticket;
use crate::config::LadderStep;
use crate::ids::{Interest, UserId};

/// Most tickets read from one interest's index per search.
pub const PER_INTEREST_SCAN: usize = 2_000;
/// Oldest entries of a bucket considered as zero-shared candidates per search.
pub const OLDEST_SCAN: usize = 256;

/// What a search asks for, validated and normalized by the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Criteria {
    /// Sorted, deduplicated.
    pub interests: Vec<Interest>,
    /// The pool the search waits in: its language, the part of its language it
    /// is in now (`en~2`, when the language is split), or, when it roams, the pool
    /// it is homed in now.
    pub language: Arc<str>,
    /// Whether and where the search may move between pools (see [`super::roaming`]).
    pub roam: Roam,
    pub region: Option<Arc<str>>,
    pub group_size: u8,
}

/// Where a search may move (see [`super::roaming`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Roam {
    /// It waits in its language's pool only.
    Stays,
    /// The searcher gave no language: any language's pool (or any part of one).
    AnyLanguage,
    /// Its language is split (`EngineConfig::language_parts`): among its parts.
    Parts,
}

/// One waiting search. `link` is whatever the caller needs to notify the searcher.
#[derive(Debug)]
pub struct Entry<T> {
    pub ticket: Ticket,
    pub user: UserId,
    pub criteria: Criteria,
    pub joined: Instant,
    pub deadline: Instant,
    /// Ladder step last evaluated for this entry; under the wait-target policy,
    /// the score it last required.
    pub step: usize,
    pub link: T,
}

/// A group chosen by [`Pool::try_match`], already removed from the pool.
#[derive(Debug)]
pub struct Match<T> {
    /// The searcher first, then partners in rank order.
    pub members: Vec<Entry<T>>,
    /// Interests every member listed.
    pub shared: Vec<Interest>,
    /// The ladder step the match was made at; under the wait-target policy, the
    /// score the least demanding member required.
    pub step: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BucketKey {
    language: Arc<str>,
    group_size: u8,
}

#[derive(Debug, Default)]
struct Bucket {
    order: BTreeSet<Ticket>,
    by_interest: HashMap<Interest, BTreeSet<Ticket>>,
}

/// What a timer sweep produced.
#[derive(Debug)]
pub struct TickOutcome<T> {
    pub matches: Vec<Match<T>>,
    pub expired: Vec<Entry<T>>,
}

/// Most buckets whose arrivals are remembered; past it the stalest is forgotten.
const STATS_CAP: usize = 256;
/// Arrival statistics of a bucket nobody entered for this long are forgotten.
const STATS_IDLE: Duration = Duration::from_secs(600);

/// The pool of one shard.
#[derive(Debug)]
pub struct Pool<T> {
    policy: Policy,
    entries: HashMap<Ticket, Entry<T>>,
    by_user: HashMap<UserId, Ticket>,
    buckets: HashMap<BucketKey, Bucket>,
    /// (when, ticket): the next moment each entry's rule changes or it expires.
    timers: BTreeSet<(Instant, Ticket)>,
    /// The time each entry is in `timers` under.
    due: HashMap<Ticket, Instant>,
    /// Arrivals per bucket (kept while the bucket is empty: the rate spans gaps).
    stats: HashMap<BucketKey, ArrivalStats>,
    /// Wait-target policy: each entry's odds against its bucket's arrivals.
    odds: HashMap<Ticket, Odds>,
    /// Wait-target policy: entries past their forced time whose own look found
    /// nobody; any searcher takes them, first.
    stranded: HashSet<Ticket>,
}

impl<T> Pool<T> {
    /// An empty pool relaxing along `ladder` (validated: sorted, first at 0).
    pub fn new(ladder: Vec<LadderStep>) -> Self {
        Self::with_policy(Policy::Ladder(ladder))
    }

    /// An empty pool under `policy`.
    pub fn with_policy(policy: Policy) -> Self {
        Self {
            policy,
            entries: HashMap::default(),
            by_user: HashMap::default(),
            buckets: HashMap::default(),
            timers: BTreeSet::new(),
            due: HashMap::default(),
            stats: HashMap::default(),
            odds: HashMap::default(),
            stranded: HashSet::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, ticket: Ticket) -> bool {
        self.entries.contains_key(&ticket)
    }

    /// Waiting entries per (language, group size).
    pub fn bucket_sizes(&self) -> Vec<((Arc<str>, u8), usize)> {
        self.buckets
            .iter()
            .map(|(k, b)| ((k.language.clone(), k.group_size), b.order.len()))
            .collect()
    }

    /// Entries waiting in `language` for groups of `group_size`.
    pub fn bucket_len(&self, language: &Arc<str>, group_size: u8) -> usize {
        let key = BucketKey { language: language.clone(), group_size };
        self.buckets.get(&key).map_or(0, |b| b.order.len())
    }

    /// Waiting entries per language (every group size together).
    pub fn sizes_by_language(&self) -> Vec<(Arc<str>, usize)> {
        let mut out: Vec<(Arc<str>, usize)> = Vec::new();
        for (key, bucket) in &self.buckets {
            match out.iter_mut().find(|(l, _)| *l == key.language) {
                Some((_, n)) => *n += bucket.order.len(),
                None => out.push((key.language.clone(), bucket.order.len())),
            }
        }
        out
    }

    /// The waiting entry with this ticket.
    pub fn get(&self, ticket: Ticket) -> Option<&Entry<T>> {
        self.entries.get(&ticket)
    }

    /// Every waiting entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry<T>> {
        self.entries.values()
    }

    /// The user's ticket, if they wait here.
    pub fn ticket_of(&self, user: &UserId) -> Option<Ticket> {
        self.by_user.get(user).copied()
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Ladder step for a wait of `waited` (0 under the wait-target policy).
    pub fn step_at(&self, waited: Duration) -> usize {
        let Policy::Ladder(ladder) = &self.policy else { return 0 };
        let ms = waited.as_millis() as u64;
        ladder.iter().rposition(|s| s.after_ms <= ms).unwrap_or(0)
    }

    /// Arrivals per second in `language` for groups of `group_size`, as observed.
    pub fn arrival_rate(&self, language: &str, group_size: u8, now: Instant) -> f64 {
        let key = BucketKey { language: Arc::from(language), group_size };
        self.stats.get(&key).map_or(0.0, |s| s.rate(now))
    }

    /// A new search arrives (local, or another node's seen for the first time):
    /// count it in its bucket's arrival statistics, then [`Pool::insert`] it.
    pub fn arrive(&mut self, entry: Entry<T>, now: Instant) -> Option<Entry<T>> {
        let key = key_of(&entry.criteria);
        let interests = entry.criteria.interests.clone();
        let old = self.insert(entry, now);
        if !self.stats.contains_key(&key) && self.stats.len() >= STATS_CAP {
            self.forget_stalest_stats();
        }
        self.stats.entry(key).or_insert_with(|| ArrivalStats::new(now)).arrive(&interests, now);
        old
    }

    fn forget_stalest_stats(&mut self) {
        let stalest = self.stats.iter().min_by_key(|(_, s)| s.last()).map(|(k, _)| k.clone());
        if let Some(k) = stalest {
            self.stats.remove(&k);
        }
    }

    /// Add a search (a new one, see [`Pool::arrive`], or one put back). A user waits
    /// at most once per pool: an older entry of the same user is removed and
    /// returned (it was superseded by a newer connection).
    pub fn insert(&mut self, mut entry: Entry<T>, now: Instant) -> Option<Entry<T>> {
        let old = self.by_user.get(&entry.user).copied().and_then(|t| self.remove(t));
        let key = key_of(&entry.criteria);
        if let Policy::Target(_) = self.policy {
            let odds =
                self.stats.get(&key).map(|s| s.odds(&entry.criteria.interests)).unwrap_or_default();
            self.odds.insert(entry.ticket, odds);
        }
        entry.step = self.level(&entry, now);
        let bucket = self.buckets.entry(key).or_default();
        bucket.order.insert(entry.ticket);
        for i in &entry.criteria.interests {
            bucket.by_interest.entry(i.clone()).or_default().insert(entry.ticket);
        }
        self.by_user.insert(entry.user.clone(), entry.ticket);
        let next = self.next_event(&entry, now);
        self.timers.insert((next, entry.ticket));
        self.due.insert(entry.ticket, next);
        self.entries.insert(entry.ticket, entry);
        old
    }

    /// The entry's rule level now: its ladder step, or the score it requires.
    fn level(&self, e: &Entry<T>, now: Instant) -> usize {
        match &self.policy {
            Policy::Ladder(_) => self.step_at(now.saturating_duration_since(e.joined)),
            Policy::Target(_) => self.required(e, now) as usize,
        }
    }

    /// Wait-target policy: the score `e` requires of a partner now.
    fn required(&self, e: &Entry<T>, now: Instant) -> u32 {
        let Policy::Target(t) = &self.policy else { return 0 };
        let forced = e.joined + t.force_after;
        if now >= forced {
            return 0;
        }
        let Some(odds) = self.odds.get(&e.ticket) else { return 0 };
        let key = key_of(&e.criteria);
        let need = usize::from(e.criteria.group_size).saturating_sub(1);
        let rate = self.stats.get(&key).map_or(0.0, |s| s.rate(now));
        t.required(odds, rate, forced - now, need)
    }

    /// The rule `e` applies now, and how relaxed it is (higher = more relaxed).
    fn rule(&self, e: &Entry<T>, now: Instant) -> (usize, LadderStep) {
        match &self.policy {
            Policy::Ladder(ladder) => {
                let step = self.step_at(now.saturating_duration_since(e.joined));
                (step, ladder[step].clone())
            }
            Policy::Target(_) => {
                let req = self.required(e, now);
                let rule = LadderStep { after_ms: 0, same_region: false, min_shared: req };
                (usize::MAX - req as usize, rule)
            }
        }
    }

    /// Remove a search by ticket.
    pub fn remove(&mut self, ticket: Ticket) -> Option<Entry<T>> {
        let entry = self.entries.remove(&ticket)?;
        if let Some(at) = self.due.remove(&ticket) {
            self.timers.remove(&(at, ticket));
        }
        self.odds.remove(&ticket);
        self.stranded.remove(&ticket);
        if self.by_user.get(&entry.user) == Some(&ticket) {
            self.by_user.remove(&entry.user);
        }
        let key = BucketKey {
            language: entry.criteria.language.clone(),
            group_size: entry.criteria.group_size,
        };
        if let Some(bucket) = self.buckets.get_mut(&key) {
            bucket.order.remove(&ticket);
            for i in &entry.criteria.interests {
                if let Some(set) = bucket.by_interest.get_mut(i) {
                    set.remove(&ticket);
                    if set.is_empty() {
                        bucket.by_interest.remove(i);
                    }
                }
            }
            if bucket.order.is_empty() {
                self.buckets.remove(&key);
            }
        }
        Some(entry)
    }

    /// When `entry` next needs attention: its next ladder step, the moment its
    /// required score falls, its forced time, or its deadline.
    fn next_event(&self, entry: &Entry<T>, now: Instant) -> Instant {
        let next = match &self.policy {
            Policy::Ladder(ladder) => {
                ladder.get(entry.step + 1).map(|s| entry.joined + Duration::from_millis(s.after_ms))
            }
            Policy::Target(t) => {
                let forced = entry.joined + t.force_after;
                if now >= forced {
                    // Past the forced time: look once more (next tick), unless that
                    // look already found nobody.
                    (!self.stranded.contains(&entry.ticket)).then_some(now)
                } else if entry.step == 0 {
                    Some(forced)
                } else {
                    let rate =
                        self.stats.get(&key_of(&entry.criteria)).map_or(0.0, |s| s.rate(now));
                    let need = usize::from(entry.criteria.group_size).saturating_sub(1);
                    let drop = self
                        .odds
                        .get(&entry.ticket)
                        .and_then(|o| t.drops_before_forced(o, rate, entry.step as u32, need));
                    let at = drop.and_then(|d| forced.checked_sub(d)).unwrap_or(forced);
                    Some(at.max(now + Duration::from_millis(1)).min(forced))
                }
            }
        };
        match next {
            Some(t) if t < entry.deadline => t,
            _ => entry.deadline,
        }
    }

    /// Try to complete a group for `ticket` now. On success the members are removed
    /// from the pool and returned. `avoids(a, b)` is the skip/block check; `alive`
    /// says whether a waiting entry can still be notified (skipped if not).
    pub fn try_match(
        &mut self,
        ticket: Ticket,
        now: Instant,
        avoids: impl Fn(&UserId, &UserId) -> bool,
        alive: impl Fn(&T) -> bool,
    ) -> Option<Match<T>> {
        let chosen = self.choose(ticket, now, &avoids, &alive)?;
        let step = chosen.1;
        let mut members = Vec::with_capacity(chosen.0.len() + 1);
        for t in std::iter::once(ticket).chain(chosen.0) {
            // unwrap-free: every ticket came from `entries` just above.
            if let Some(e) = self.remove(t) {
                members.push(e);
            }
        }
        let shared = shared_by_all(&members);
        Some(Match { members, shared, step })
    }

    /// Pick partners for `ticket` without changing the pool: (partners, step).
    fn choose(
        &self,
        ticket: Ticket,
        now: Instant,
        avoids: &impl Fn(&UserId, &UserId) -> bool,
        alive: &impl Fn(&T) -> bool,
    ) -> Option<(Vec<Ticket>, usize)> {
        let me = self.entries.get(&ticket)?;
        let need = usize::from(me.criteria.group_size).saturating_sub(1);
        if need == 0 {
            return None;
        }
        let key = BucketKey {
            language: me.criteria.language.clone(),
            group_size: me.criteria.group_size,
        };
        let bucket = self.buckets.get(&key)?;
        if bucket.order.len() <= need {
            return None;
        }
        // Shared-interest counts for everyone who lists one of my interests.
        let mut counts: HashMap<Ticket, u32> = HashMap::default();
        counts.reserve(me.criteria.interests.len() * 64);
        for i in &me.criteria.interests {
            if let Some(set) = bucket.by_interest.get(i) {
                for &t in set.iter().take(PER_INTEREST_SCAN) {
                    if t != ticket {
                        *counts.entry(t).or_default() += 1;
                    }
                }
            }
        }
        let mut ranked: Vec<(u32, Ticket)> = counts.iter().map(|(t, c)| (*c, *t)).collect();
        // The oldest waiters as zero-shared candidates (relaxed steps, or users who
        // gave no interests).
        for &t in bucket.order.iter().take(OLDEST_SCAN) {
            if t != ticket && !counts.contains_key(&t) {
                ranked.push((0, t));
            }
        }
        if let Policy::Target(_) = self.policy {
            return self.choose_for_target(me, need, ranked, now, avoids, alive);
        }
        ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));

        let (mut group_relax, mut group_rule) = self.rule(me, now);
        let mut chosen: Vec<&Entry<T>> = Vec::with_capacity(need);
        for (shared, t) in ranked {
            let Some(c) = self.entries.get(&t) else { continue };
            if !alive(&c.link) {
                continue;
            }
            let (relax, rule) = self.rule(c, now);
            let (relax, rule) =
                if relax > group_relax { (relax, rule) } else { (group_relax, group_rule.clone()) };
            if !pair_ok(me, c, shared, &rule, avoids) {
                continue;
            }
            let fits_group = chosen.iter().all(|o| {
                o.user != c.user
                    && !avoids(&o.user, &c.user)
                    && !(rule.same_region && regions_differ(&o.criteria, &c.criteria))
            });
            if !fits_group {
                continue;
            }
            group_relax = relax;
            group_rule = rule;
            chosen.push(c);
            if chosen.len() == need {
                let level = match self.policy {
                    Policy::Ladder(_) => group_relax,
                    Policy::Target(_) => group_rule.min_shared as usize,
                };
                return Some((chosen.iter().map(|e| e.ticket).collect(), level));
            }
        }
        None
    }

    /// [`Pool::choose`] under the wait-target policy: only the searcher's own
    /// requirement counts (a candidate is passive: it is taken when a searcher who
    /// requires no more than they share picks it), except that *stranded*
    /// candidates (past their forced time with nobody there for them) are taken at
    /// any score, first, oldest first. Then by score, same region, longest wait.
    fn choose_for_target(
        &self,
        me: &Entry<T>,
        need: usize,
        ranked: Vec<(u32, Ticket)>,
        now: Instant,
        avoids: &impl Fn(&UserId, &UserId) -> bool,
        alive: &impl Fn(&T) -> bool,
    ) -> Option<(Vec<Ticket>, usize)> {
        let mut keyed: Vec<(bool, u32, bool, Ticket)> = ranked
            .into_iter()
            .filter_map(|(shared, t)| {
                let c = self.entries.get(&t)?;
                let same_region = matches!(
                    (&me.criteria.region, &c.criteria.region),
                    (Some(x), Some(y)) if x == y
                );
                Some((self.stranded.contains(&t), shared, same_region, t))
            })
            .collect();
        keyed.sort_unstable_by(|a, b| {
            b.0.cmp(&a.0)
                .then(if a.0 && b.0 { std::cmp::Ordering::Equal } else { b.1.cmp(&a.1) })
                .then(b.2.cmp(&a.2))
                .then(a.3.cmp(&b.3))
        });
        let mine = self.required(me, now);
        let wanted = LadderStep { after_ms: 0, same_region: false, min_shared: mine };
        let anyone = LadderStep { after_ms: 0, same_region: false, min_shared: 0 };
        let mut level = mine;
        let mut chosen: Vec<&Entry<T>> = Vec::with_capacity(need);
        for (stranded, shared, _, t) in keyed {
            let Some(c) = self.entries.get(&t) else { continue };
            if !alive(&c.link) {
                continue;
            }
            let rule = if stranded { &anyone } else { &wanted };
            if !pair_ok(me, c, shared, rule, avoids) {
                continue;
            }
            if !chosen.iter().all(|o| o.user != c.user && !avoids(&o.user, &c.user)) {
                continue;
            }
            if stranded {
                level = 0;
            }
            chosen.push(c);
            if chosen.len() == need {
                return Some((chosen.iter().map(|e| e.ticket).collect(), level as usize));
            }
        }
        None
    }

    /// Expire searches past their deadline and retry those whose ladder step grew.
    pub fn tick(
        &mut self,
        now: Instant,
        avoids: impl Fn(&UserId, &UserId) -> bool,
        alive: impl Fn(&T) -> bool,
    ) -> TickOutcome<T> {
        let mut out = TickOutcome { matches: Vec::new(), expired: Vec::new() };
        self.stats.retain(|_, s| now.saturating_duration_since(s.last()) < STATS_IDLE);
        let due: Vec<(Instant, Ticket)> =
            self.timers.range(..=(now, Ticket::MAX)).copied().collect();
        for (when, ticket) in due {
            self.timers.remove(&(when, ticket));
            self.due.remove(&ticket);
            let Some(entry) = self.entries.get(&ticket) else { continue };
            if entry.deadline <= now {
                if let Some(e) = self.remove(ticket) {
                    out.expired.push(e);
                }
                continue;
            }
            let level = self.level(entry, now);
            let forced = match &self.policy {
                Policy::Target(t) => now >= entry.joined + t.force_after,
                Policy::Ladder(_) => false,
            };
            if let Some(e) = self.entries.get_mut(&ticket) {
                e.step = level;
            }
            if let Some(m) = self.try_match(ticket, now, &avoids, &alive) {
                out.matches.push(m);
                continue;
            }
            if forced {
                self.stranded.insert(ticket);
            }
            if let Some(e) = self.entries.get(&ticket) {
                let next = self.next_event(e, now);
                self.timers.insert((next, ticket));
                self.due.insert(ticket, next);
            }
        }
        out
    }

    /// Every waiting entry, oldest first (drain on shutdown).
    pub fn drain(&mut self) -> Vec<Entry<T>> {
        let mut tickets: Vec<Ticket> = self.entries.keys().copied().collect();
        tickets.sort_unstable();
        tickets.into_iter().filter_map(|t| self.remove(t)).collect()
    }
}

fn key_of(c: &Criteria) -> BucketKey {
    BucketKey { language: c.language.clone(), group_size: c.group_size }
}

fn regions_differ(a: &Criteria, b: &Criteria) -> bool {
    matches!((&a.region, &b.region), (Some(x), Some(y)) if x != y)
}

fn pair_ok<T>(
    a: &Entry<T>,
    b: &Entry<T>,
    shared: u32,
    rule: &LadderStep,
    avoids: &impl Fn(&UserId, &UserId) -> bool,
) -> bool {
    // Cheap checks first; the avoid list (a shared map) last.
    if a.user == b.user || (rule.same_region && regions_differ(&a.criteria, &b.criteria)) {
        return false;
    }
    let need = rule
        .min_shared
        .min(a.criteria.interests.len() as u32)
        .min(b.criteria.interests.len() as u32);
    shared >= need && !avoids(&a.user, &b.user)
}

/// Interests listed by every member (inputs are sorted and deduplicated).
fn shared_by_all<T>(members: &[Entry<T>]) -> Vec<Interest> {
    let Some((first, rest)) = members.split_first() else { return Vec::new() };
    first
        .criteria
        .interests
        .iter()
        .filter(|i| rest.iter().all(|m| m.criteria.interests.binary_search(i).is_ok()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder() -> Vec<LadderStep> {
        vec![
            LadderStep { after_ms: 0, same_region: true, min_shared: 2 },
            LadderStep { after_ms: 1_000, same_region: true, min_shared: 1 },
            LadderStep { after_ms: 2_000, same_region: false, min_shared: 1 },
            LadderStep { after_ms: 3_000, same_region: false, min_shared: 0 },
        ]
    }

    struct Spec<'a> {
        user: &'a str,
        interests: &'a [&'a str],
        lang: &'a str,
        region: Option<&'a str>,
        group: u8,
    }

    fn entry(ticket: Ticket, s: Spec<'_>, joined: Instant) -> Entry<()> {
        let mut interests: Vec<Interest> = s.interests.iter().map(|i| Interest::from(*i)).collect();
        interests.sort();
        interests.dedup();
        Entry {
            ticket,
            user: UserId::from(s.user),
            criteria: Criteria {
                interests,
                language: Arc::from(s.lang),
                roam: Roam::Stays,
                region: s.region.map(Arc::from),
                group_size: s.group,
            },
            joined,
            deadline: joined + Duration::from_secs(60),
            step: 0,
            link: (),
        }
    }

    fn pair(user: &str, interests: &'static [&'static str], region: Option<&str>) -> Spec<'static> {
        // Leak is fine in tests: tiny, bounded strings.
        let user: &'static str = Box::leak(user.to_owned().into_boxed_str());
        let region = region.map(|r| &*Box::leak(r.to_owned().into_boxed_str()));
        Spec { user, interests, lang: "en", region, group: 2 }
    }

    fn never(_: &UserId, _: &UserId) -> bool {
        false
    }

    fn users(m: &Match<()>) -> Vec<&str> {
        m.members.iter().map(|e| e.user.as_str()).collect()
    }

    #[test]
    fn best_score_wins_and_ties_go_to_the_longest_wait() {
        let t0 = Instant::now();
        let mut p = Pool::new(ladder());
        p.insert(entry(1, pair("a", &["chess", "go"], None), t0), t0);
        p.insert(entry(2, pair("b", &["chess", "go", "jazz"], None), t0), t0);
        p.insert(entry(3, pair("c", &["chess", "go", "jazz"], None), t0), t0);
        // d shares 3 with b and c, 2 with a: b (older than c) wins.
        p.insert(entry(4, pair("d", &["chess", "go", "jazz"], None), t0), t0);
        let m = p.try_match(4, t0, never, |_| true).expect("match");
        assert_eq!(users(&m), ["d", "b"]);
        assert_eq!(m.shared.len(), 3);
        assert_eq!(p.len(), 2);
        assert!(p.contains(1) && p.contains(3));
    }

    #[test]
    fn language_and_group_size_separate_buckets() {
        let t0 = Instant::now();
        let mut p = Pool::new(ladder());
        p.insert(
            entry(
                1,
                Spec { user: "a", interests: &["x", "y"], lang: "de", region: None, group: 2 },
                t0,
            ),
            t0,
        );
        p.insert(
            entry(
                2,
                Spec { user: "b", interests: &["x", "y"], lang: "en", region: None, group: 3 },
                t0,
            ),
            t0,
        );
        p.insert(
            entry(
                3,
                Spec { user: "c", interests: &["x", "y"], lang: "en", region: None, group: 2 },
                t0,
            ),
            t0,
        );
        assert!(p.try_match(3, t0, never, |_| true).is_none());
    }

    #[test]
    fn criteria_relax_along_the_ladder() {
        let t0 = Instant::now();
        let mut p = Pool::new(ladder());
        p.insert(entry(1, pair("a", &["chess", "go"], Some("eu")), t0), t0);
        p.insert(entry(2, pair("b", &["chess", "poker"], Some("eu")), t0), t0);
        // One shared interest: not enough at step 0.
        assert!(p.try_match(2, t0, never, |_| true).is_none());
        let out = p.tick(t0 + Duration::from_millis(1_100), never, |_| true);
        assert_eq!(out.matches.len(), 1);
        assert_eq!(out.matches[0].step, 1);

        // Different regions wait until step 2.
        p.insert(entry(3, pair("c", &["chess"], Some("eu")), t0), t0);
        p.insert(entry(4, pair("d", &["chess"], Some("us")), t0), t0);
        let out = p.tick(t0 + Duration::from_millis(1_500), never, |_| true);
        assert!(out.matches.is_empty());
        let out = p.tick(t0 + Duration::from_millis(2_100), never, |_| true);
        assert_eq!(out.matches.len(), 1);

        // No shared interest at all: only at the last step.
        p.insert(entry(5, pair("e", &["knitting"], None), t0), t0);
        p.insert(entry(6, pair("f", &["surfing"], None), t0), t0);
        assert!(p.tick(t0 + Duration::from_millis(2_500), never, |_| true).matches.is_empty());
        assert_eq!(p.tick(t0 + Duration::from_millis(3_100), never, |_| true).matches.len(), 1);
        assert!(p.is_empty());
    }

    #[test]
    fn a_long_waiter_is_served_by_any_compatible_newcomer() {
        let t0 = Instant::now();
        let mut p = Pool::new(ladder());
        p.insert(entry(1, pair("old", &["rare"], None), t0), t0);
        let later = t0 + Duration::from_millis(3_500);
        p.insert(entry(2, pair("new", &["common"], None), later), later);
        let m = p.try_match(2, later, never, |_| true).expect("relaxed by the old waiter");
        assert_eq!(users(&m), ["new", "old"]);
    }

    #[test]
    fn users_without_interests_match_at_once() {
        let t0 = Instant::now();
        let mut p = Pool::new(ladder());
        p.insert(entry(1, pair("a", &[], None), t0), t0);
        p.insert(entry(2, pair("b", &["chess", "go"], None), t0), t0);
        assert!(p.try_match(2, t0, never, |_| true).is_some());
    }

    #[test]
    fn never_self_never_avoided_never_dead() {
        let t0 = Instant::now();
        let mut p: Pool<bool> = Pool::new(ladder());
        let mk = |t, u: &'static str, alive| {
            let mut e = entry(t, pair(u, &["x", "y"], None), t0);
            let link = alive;
            Entry {
                link,
                ticket: e.ticket,
                user: std::mem::replace(&mut e.user, UserId::from("")),
                criteria: e.criteria,
                joined: e.joined,
                deadline: e.deadline,
                step: 0,
            }
        };
        p.insert(mk(1, "skipped", true), t0);
        p.insert(mk(2, "gone", false), t0);
        p.insert(mk(3, "me", true), t0);
        let avoid = |a: &UserId, b: &UserId| {
            let pair = [a.as_str(), b.as_str()];
            pair.contains(&"me") && pair.contains(&"skipped")
        };
        assert!(p.try_match(3, t0, avoid, |alive| *alive).is_none());
        p.insert(mk(4, "fresh", true), t0);
        let m = p.try_match(3, t0, avoid, |alive| *alive).expect("fresh is fine");
        assert_eq!(m.members[1].user.as_str(), "fresh");
    }

    #[test]
    fn a_user_waits_once_per_pool() {
        let t0 = Instant::now();
        let mut p = Pool::new(ladder());
        assert!(p.insert(entry(1, pair("a", &["x"], None), t0), t0).is_none());
        let old = p.insert(entry(2, pair("a", &["x"], None), t0), t0).expect("superseded");
        assert_eq!(old.ticket, 1);
        assert_eq!(p.len(), 1);
        assert_eq!(p.ticket_of(&UserId::from("a")), Some(2));
    }

    #[test]
    fn groups_fill_with_mutually_compatible_members() {
        let t0 = Instant::now();
        let mut p = Pool::new(ladder());
        let g = |u: &'static str, r: &'static str| Spec {
            user: u,
            interests: &["x", "y"],
            lang: "en",
            region: Some(r),
            group: 3,
        };
        p.insert(entry(1, g("a", "eu"), t0), t0);
        p.insert(entry(2, g("b", "us"), t0), t0);
        p.insert(entry(3, g("c", "eu"), t0), t0);
        assert!(p.try_match(3, t0, never, |_| true).is_none(), "only two in eu");
        p.insert(entry(4, g("d", "eu"), t0), t0);
        let m = p.try_match(4, t0, never, |_| true).expect("three in eu");
        let mut u = users(&m);
        u.sort();
        assert_eq!(u, ["a", "c", "d"]);
        assert_eq!(m.shared.len(), 2);
    }

    #[test]
    fn searches_expire_at_their_deadline() {
        let t0 = Instant::now();
        let mut p = Pool::new(ladder());
        let mut e = entry(1, pair("a", &["x"], None), t0);
        e.deadline = t0 + Duration::from_millis(500);
        p.insert(e, t0);
        assert!(p.tick(t0 + Duration::from_millis(400), never, |_| true).expired.is_empty());
        let out = p.tick(t0 + Duration::from_millis(600), never, |_| true);
        assert_eq!(out.expired.len(), 1);
        assert!(p.is_empty());
        assert!(p.timers.is_empty());
    }

    #[test]
    fn the_target_policy_holds_out_in_a_busy_pool_then_takes_the_best_there() {
        use crate::matching::policy::Target;
        let t0 = Instant::now();
        let target = Target::tuned(Duration::from_millis(2_000), 0.01, 4.0);
        let mut p: Pool<()> = Pool::with_policy(Policy::Target(target));
        // 400 arrivals over 4 s (100/s), each sharing "x" and one of 8 others with
        // the searchers below; matched (removed) at once.
        for t in 0..400u64 {
            let at = t0 + Duration::from_millis(t * 10);
            let other: &'static str = ["a", "b", "c", "d", "e", "f", "g", "h"][t as usize % 8];
            let interests: &'static [&'static str] =
                Box::leak(vec!["x", other, "z"].into_boxed_slice());
            p.arrive(entry(10_000 + t, pair(&format!("w{t}"), interests, None), at), at);
            p.remove(10_000 + t);
        }
        let now = t0 + Duration::from_secs(4);
        assert!(p.arrival_rate("en", 2, now) > 80.0);
        // u and v share one interest: in a pool this busy, both hold out for two.
        p.arrive(entry(1, pair("u", &["x", "a", "q"], None), now), now);
        p.arrive(entry(2, pair("v", &["x", "b", "r"], None), now), now);
        assert!(p.try_match(2, now, never, |_| true).is_none(), "both hold out for two");
        // At u's forced time it takes the best partner there.
        let out = p.tick(now + Duration::from_millis(2_000), never, |_| true);
        assert_eq!(out.matches.len(), 1);
        assert_eq!(out.matches[0].shared.len(), 1);
        assert!(p.is_empty());
    }

    #[test]
    fn the_target_policy_serves_a_stranded_search_first_and_groups_at_once_when_quiet() {
        use crate::matching::policy::Target;
        let t0 = Instant::now();
        let target = Target::tuned(Duration::from_millis(1_000), 0.01, 4.0);
        let mut p: Pool<()> = Pool::with_policy(Policy::Target(target));
        // Alone until past its forced time: stranded.
        p.arrive(entry(1, pair("lonely", &["knitting"], None), t0), t0);
        assert!(p.tick(t0 + Duration::from_millis(1_100), never, |_| true).matches.is_empty());
        let later = t0 + Duration::from_millis(1_200);
        p.arrive(entry(2, pair("fan", &["chess", "go"], None), later), later);
        p.arrive(entry(3, pair("newcomer", &["chess", "go"], None), later), later);
        let m = p.try_match(3, later, never, |_| true).expect("a match");
        assert_eq!(users(&m), ["newcomer", "lonely"], "the stranded search comes first");
        // A quiet stream: a group of three forms as soon as three are there.
        let g = |u: &'static str, i: &'static [&'static str]| Spec {
            user: u,
            interests: i,
            lang: "de",
            region: None,
            group: 3,
        };
        p.arrive(entry(4, g("a", &["p"]), later), later);
        p.arrive(entry(5, g("b", &["q"]), later), later);
        p.arrive(entry(6, g("c", &["r"]), later), later);
        assert_eq!(p.try_match(6, later, never, |_| true).map(|m| m.members.len()), Some(3));
    }

    #[test]
    fn removal_keeps_indexes_exact() {
        let t0 = Instant::now();
        let mut p = Pool::new(ladder());
        for t in 0..100u64 {
            p.insert(entry(t, pair(&format!("u{t}"), &["a", "b", "c"], None), t0), t0);
        }
        for t in 0..100u64 {
            assert!(p.remove(t).is_some());
        }
        assert!(
            p.is_empty() && p.buckets.is_empty() && p.by_user.is_empty() && p.timers.is_empty()
        );
        assert!(p.due.is_empty() && p.odds.is_empty() && p.stranded.is_empty());
    }
}
