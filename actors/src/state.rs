//! State below the actors: what sessions, pool shards and rooms share ([`Shared`]):
//! the session registry, memberships, avoid list, rate limiters and budgets, the
//! bridge, the worker arbiters. It imports no actor (no `Addr` of any kind), so
//! every actor may import it and it imports none of them back. Wiring (which
//! actors exist and how they reach one another) is in [`crate::engine`].

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::ArbiterHandle;
use dashmap::DashMap;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::avoid::AvoidList;
use crate::bridge::{Bridge, Ticket};
use crate::config::EngineConfig;
use crate::ids::{RoomId, UserId};
use crate::registry::Registry;
use crate::token::TokenVerifier;

/// State shared by sessions, shards and rooms. Every map is a DashMap because
/// actors on different arbiter threads use it; no guard is held across an await.
/// It holds no actor address: the room directory and the supervisor live in
/// `rooms::Rooms`, the shards in `Engine`.
pub struct Shared {
    pub config: EngineConfig,
    /// user → live session on this node.
    pub registry: Registry,
    /// user → rooms they hold a seat in, in join order (welcome, next, block). The
    /// one record of a user's rooms on this node: rooms add and remove seats here,
    /// sessions read it.
    pub memberships: DashMap<UserId, Vec<RoomId>>,
    /// Skips (`next`) and blocks, capped per user.
    pub avoid: AvoidList,
    /// Languages with their own per-language pool series (one set for all shards).
    pub language_series: crate::language::LanguageSeries,
    /// Searches waiting per language and group size, for roaming searches.
    pub pools: crate::matching::roaming::Directory,
    /// Public rooms open on this node (replicas included), against
    /// `max_public_rooms`. Raised by the one path that opens rooms (`rooms::Rooms`),
    /// under the room's directory entry (a first join is checked against the cap
    /// and counted in one step; a replica is counted, never refused), lowered when
    /// the room forgets itself.
    pub public_rooms: AtomicUsize,
    /// Each user's byte budget of actions ([`crate::budget`]), shared by their
    /// sessions and charged by rooms after the fact; swept like `send_limits`, but
    /// one still in debt is kept (a reconnect does not clear it).
    budgets: DashMap<UserId, crate::budget::Budget>,
    /// Open sessions per client IP address (the per-IP cap).
    pub per_ip: DashMap<std::net::IpAddr, usize>,
    /// Each user's last search criteria, read by `next` (on the same connection or
    /// a new one: a reload within the grace period). The one record of it: sessions
    /// keep no copy. Swept with the user's last seat.
    pub last_search: DashMap<UserId, (crate::matching::pool::Criteria, Duration)>,
    pub bridge: Arc<dyn Bridge>,
    /// Worker arbiters (one thread each) that run sessions, rooms and shards.
    pub workers: Vec<ArbiterHandle>,
    /// Checks tokens sent with `refresh`; installed once by the server (which owns
    /// the keys). Unset: token sessions cannot refresh (`unauthorized`).
    token_verifier: OnceLock<Arc<dyn TokenVerifier>>,
    /// `find_match` and `next` per user (per minute quota).
    pub find_match_limiter: DefaultKeyedRateLimiter<UserId>,
    /// `send` per user (per second with burst).
    /// A session takes its user's bucket at its first `send` and checks it with
    /// one atomic operation per `send` after that, instead of a keyed lookup
    /// (hash, shard lock) per message. A reconnect finds the same bucket until the sweep drops the
    /// ones no session holds.
    send_limits: DashMap<UserId, Arc<DefaultDirectRateLimiter>>,
    send_quota: Quota,
    /// The one clock every rate limiter reads. Making a clock is expensive (it
    /// probes the CPU for a usable TSC), so sessions share this one instead of
    /// making their own per connection.
    pub clock: governor::clock::DefaultClock,
    /// Searches waiting in all shards (for `/api/stats`).
    pub searching: AtomicU64,
    next_ticket: AtomicU64,
    next_session: AtomicU64,
    /// Entries of `find_match_limiter` when it was last shrunk (or at its peak since).
    limiter_len_at_shrink: AtomicUsize,
    next_worker: AtomicUsize,
    pub started_at: Instant,
    /// Per-message metric handles.
    pub hot: crate::metrics::Hot,
    /// Bans, lasting blocks, reports, recently closed rooms ([`crate::moderation`]).
    pub moderation: crate::moderation::Moderation,
}

impl Shared {
    /// Shared state over the given worker arbiters (one thread each).
    pub fn new(config: EngineConfig, bridge: Arc<dyn Bridge>, workers: Vec<ArbiterHandle>) -> Self {
        let clock = governor::clock::DefaultClock::default();
        let clock_for_moderation = clock.clone();
        Shared {
            find_match_limiter: RateLimiter::dashmap_with_clock(
                per_minute(config.find_match_per_minute),
                clock.clone(),
            ),
            send_limits: DashMap::new(),
            send_quota: per_second(config.send_per_second, config.send_burst),
            clock,
            registry: Registry::default(),
            memberships: DashMap::new(),
            avoid: AvoidList::new(config.max_blocks_per_user),
            language_series: crate::language::LanguageSeries::new(
                config.language_series,
                std::iter::once(config.default_language.as_str())
                    .filter(|l| !l.is_empty())
                    .chain(config.languages.iter().map(String::as_str)),
            ),
            pools: Default::default(),
            public_rooms: AtomicUsize::new(0),
            budgets: DashMap::new(),
            last_search: DashMap::new(),
            per_ip: DashMap::new(),
            bridge,
            workers,
            token_verifier: OnceLock::new(),
            searching: AtomicU64::new(0),
            next_ticket: AtomicU64::new(1),
            next_session: AtomicU64::new(1),
            limiter_len_at_shrink: AtomicUsize::new(0),
            next_worker: AtomicUsize::new(0),
            started_at: Instant::now(),
            hot: crate::metrics::Hot::new(),
            moderation: crate::moderation::Moderation::new(&config, clock_for_moderation),
            config,
        }
    }

    /// The periodic sweep (every 30 s, on a blocking thread): expired avoid
    /// pairs, send-limit and budget state no session holds. `last_search` is
    /// emptied as users leave ([`Self::forget_search_if_gone`]) and walked here
    /// only when it outgrew the live users (a case that path missed); a table is
    /// shrunk only when it is mostly empty (shrinking one in use rebuilds it).
    pub fn sweep(&self) {
        self.avoid.sweep();
        self.moderation.sweep();
        let live = self.registry.len() + self.memberships.len();
        if self.last_search.len() > 2 * live + 1_024 {
            self.last_search.retain(|user, _| {
                self.registry.get(user.as_str()).is_some() || self.memberships.contains_key(user)
            });
        }
        self.send_limits.retain(|_, bucket| Arc::strong_count(bucket) > 1);
        self.budgets.retain(|_, budget| budget.in_use());
        shrink_if_sparse(&self.send_limits);
        shrink_if_sparse(&self.budgets);
        shrink_if_sparse(&self.last_search);
    }

    /// The `find_match` limiter's sweep (every second, on a blocking thread):
    /// drops the users whose quota is full again. The limiter holds an entry per
    /// user who searched within its window, so under an arrival storm a 30 s
    /// walk met 150,000 entries and took a core for 17 ms, a stall every
    /// client saw; a walk each second meets one second's arrivals.
    pub fn sweep_limiter(&self) {
        self.find_match_limiter.retain_recent();
        // The limiter's map hides its capacity: shrink it when it holds a
        // quarter of what it held at the last shrink.
        let held = self.find_match_limiter.len();
        let at_shrink = self.limiter_len_at_shrink.load(Ordering::Relaxed);
        if held * 4 < at_shrink {
            self.find_match_limiter.shrink_to_fit();
        }
        if held * 4 < at_shrink || held > at_shrink {
            self.limiter_len_at_shrink.store(held, Ordering::Relaxed);
        }
    }

    /// Drop `user`'s last search criteria once they have neither a session here
    /// nor a seat: `next` has nothing left to continue. Called when either ends.
    pub fn forget_search_if_gone(&self, user: &UserId) {
        self.last_search.remove_if(user, |user, _| {
            self.registry.get(user.as_str()).is_none() && !self.memberships.contains_key(user)
        });
    }

    pub fn next_ticket(&self) -> Ticket {
        self.next_ticket.fetch_add(1, Ordering::Relaxed)
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Round-robin over worker arbiters.
    pub fn next_worker(&self) -> ArbiterHandle {
        let i = self.next_worker.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        self.workers[i].clone()
    }

    /// The worker most of these members' sessions run on (the first one's on a
    /// tie), else the next one round-robin. A room placed there reaches those
    /// members' outboxes, and hears their posts, without waking another thread.
    pub fn worker_near<'a>(&self, members: impl IntoIterator<Item = &'a str>) -> ArbiterHandle {
        let placed =
            members.into_iter().filter_map(|u| self.registry.get(u).and_then(|e| e.worker));
        match most_common(placed, self.workers.len()) {
            Some(i) => self.workers[i].clone(),
            None => self.next_worker(),
        }
    }

    /// The `send` rate-limit bucket of `user`, shared by their sessions.
    pub fn send_limit(&self, user: &UserId) -> Arc<DefaultDirectRateLimiter> {
        self.send_limits
            .entry(user.clone())
            .or_insert_with(|| {
                Arc::new(RateLimiter::direct_with_clock(self.send_quota, self.clock.clone()))
            })
            .clone()
    }

    /// The action byte budget of `user`, shared by their sessions.
    pub fn budget(&self, user: &UserId) -> crate::budget::Budget {
        self.budgets
            .entry(user.clone())
            .or_insert_with(|| {
                crate::budget::Budget::new(
                    self.config.action_bytes_per_second,
                    self.config.action_bytes_burst,
                )
            })
            .clone()
    }

    /// Take a seat for `user` in `room` before the join reaches the room, so that
    /// a burst of joins cannot all pass the count: checked and recorded under the
    /// user's map entry in one step. Ok when reserved (or already held); Err with
    /// the rooms held when `max` are. The room keeps the seat when it seats the
    /// user and gives it back ([`Self::remove_membership`]) when it refuses.
    pub fn reserve_room(&self, user: &UserId, room: &RoomId, max: usize) -> Result<(), usize> {
        let mut rooms = self.memberships.entry(user.clone()).or_default();
        if rooms.contains(room) {
            return Ok(());
        }
        if rooms.len() >= max {
            let held = rooms.len();
            drop(rooms);
            self.memberships.remove_if(user, |_, rooms| rooms.is_empty());
            return Err(held);
        }
        rooms.push(room.clone());
        Ok(())
    }

    pub fn add_membership(&self, user: &UserId, room: &RoomId) {
        let mut rooms = self.memberships.entry(user.clone()).or_default();
        if !rooms.contains(room) {
            rooms.push(room.clone());
        }
    }

    pub fn remove_membership(&self, user: &UserId, room: &RoomId) {
        if let Some(mut rooms) = self.memberships.get_mut(user) {
            rooms.retain(|r| r != room);
        }
        if self.memberships.remove_if(user, |_, rooms| rooms.is_empty()).is_some() {
            self.forget_search_if_gone(user);
        }
    }

    /// Rooms the user holds a seat in, oldest first.
    pub fn rooms_of(&self, user: &UserId) -> Vec<RoomId> {
        self.memberships.get(user).map(|r| r.clone()).unwrap_or_default()
    }

    /// Keep `a` and `b` apart for `ttl` here and on every other node.
    pub fn avoid_pair(&self, a: &UserId, b: &UserId, ttl: Duration) {
        self.avoid.add(a, b, ttl);
        if self.bridge.clustered() {
            self.bridge.broadcast(crate::bridge::ClusterEvent::Avoid {
                a: a.to_string(),
                b: b.to_string(),
                ttl_ms: ttl.as_millis() as u64,
            });
        }
    }

    /// Record a moderation change on this node, store it (Redis in a cluster; a
    /// single node's state file is written by the engine's periodic flush) and
    /// send it to every other node. Carrying it out here (closing sessions and
    /// rooms) is [`crate::admin::enforce`]'s job.
    pub fn moderate(&self, ev: &crate::moderation::ModEvent) {
        self.moderation.apply(ev);
        if self.bridge.clustered() {
            if let Some(key) = ev.store_key() {
                let json = serde_json::to_string(ev).unwrap_or_default();
                self.bridge.moderation_store(key, json);
            }
            self.bridge.broadcast(crate::bridge::ClusterEvent::Moderation {
                origin: self.bridge.node_id().to_owned(),
                ev: ev.clone(),
            });
        }
    }

    /// Install the verifier for tokens sent with `refresh` (once; later calls are
    /// ignored).
    pub fn install_token_verifier(&self, verifier: Arc<dyn TokenVerifier>) {
        let _ = self.token_verifier.set(verifier);
    }

    /// The verifier for `refresh` tokens, if the server installed one.
    pub fn token_verifier(&self) -> Option<&Arc<dyn TokenVerifier>> {
        self.token_verifier.get()
    }
}

/// The index below `n` that occurs most often in `indices`, the earliest seen on a
/// tie; `None` when none is below `n`.
fn most_common(indices: impl Iterator<Item = usize>, n: usize) -> Option<usize> {
    let mut counts = vec![0usize; n];
    let mut first = None;
    for i in indices.filter(|&i| i < n) {
        counts[i] += 1;
        first.get_or_insert(i);
    }
    let first = first?;
    (0..n).max_by_key(|&i| (counts[i], i == first))
}

thread_local! {
    /// Which of [`Shared::workers`] this thread is, if it is one.
    static WORKER_INDEX: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The index in [`Shared::workers`] of the worker arbiter running the caller, or
/// `None` off the workers (the main thread, tests).
pub fn current_worker() -> Option<usize> {
    WORKER_INDEX.get()
}

/// Record that the calling thread is worker `index` (run once on each worker
/// arbiter as it starts).
pub fn set_current_worker(index: usize) {
    WORKER_INDEX.set(Some(index));
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN))
}

fn per_second(n: u32, burst: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN))
}

/// Give a map's table back to the allocator when it is mostly empty (a burst of
/// users has left): shrinking a table that is still in use only rebuilds it.
fn shrink_if_sparse<K: Eq + std::hash::Hash, V>(map: &DashMap<K, V>) {
    if map.capacity() > 4 * map.len().max(4_096) {
        map.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_goes_where_most_of_its_members_are() {
        assert_eq!(most_common([1, 0, 1].into_iter(), 2), Some(1));
        // A tie goes to the first member's worker.
        assert_eq!(most_common([1, 0].into_iter(), 2), Some(1));
        assert_eq!(most_common([0, 1, 1, 0].into_iter(), 2), Some(0));
        // Nobody placed (all remote, or offline), or an index from a bigger pool.
        assert_eq!(most_common(std::iter::empty(), 2), None);
        assert_eq!(most_common([5].into_iter(), 2), None);
    }

    #[test]
    fn the_limiter_sweep_keeps_spent_quotas_and_drops_full_ones() {
        // 600 a minute: one search's cell comes back after 100 ms.
        let config = EngineConfig { find_match_per_minute: 600, ..EngineConfig::default() };
        let bridge = Arc::new(crate::bridge::memory::MemoryBridge::new("t"));
        let shared = Shared::new(config, bridge, Vec::new());
        let users: Vec<UserId> =
            (0..1_000).map(|i| UserId::from(format!("u{i}").as_str())).collect();
        for user in &users {
            assert!(shared.find_match_limiter.check_key(user).is_ok());
        }
        shared.sweep_limiter();
        assert_eq!(shared.find_match_limiter.len(), 1_000, "every quota is still spent");
        std::thread::sleep(Duration::from_millis(250));
        shared.sweep_limiter();
        assert_eq!(shared.find_match_limiter.len(), 0, "every quota is full again");
        // What a user spent survives the sweeps: the burst of 600 is gone after 600.
        let user = &users[0];
        let spent =
            (0..700).take_while(|_| shared.find_match_limiter.check_key(user).is_ok()).count();
        shared.sweep_limiter();
        assert!(shared.find_match_limiter.check_key(user).is_err(), "spent {spent}, then swept");
    }
}
