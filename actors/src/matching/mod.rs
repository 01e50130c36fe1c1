//! Matching-pool shards. Searches are sharded by language (see
//! [`crate::engine::Engine::shard_for`]), so each shard is an independent actor and
//! matching runs on every core. The rules live in [`pool`], the shard's bookkeeping
//! (claims, the cross-node offer protocol, timeouts) in [`shard_core`]: both are
//! plain data. This actor is the thin loop around them: it feeds the core its
//! inbox, timer ticks and claim results, and carries out the [`Effect`]s it
//! returns (bridge calls, rooms for the supervisor, session notices, metrics).
//!
//! In a cluster the pool also holds replicas of searches waiting on other nodes
//! ([`Link::Remote`]). A claimed group with remote members becomes an *offer*: the
//! creator asks each member's node to hold its searches, and only when every node
//! has answered yes is the room opened and everyone told; otherwise every held or
//! local search goes back to the pool with its original ticket and arrival time.

pub mod messages;
pub mod policy;
pub mod pool;
pub mod roaming;
pub mod shard_core;
#[cfg(test)]
mod sim;
mod timeouts;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Recipient, WrapFuture};

use self::messages::*;
use self::pool::Criteria;
use self::shard_core::{Effect, LocalSearch, Matched, Proposal, RemoteSearch, ShardCore};
use crate::bridge::{OfferOutcome, SearchAd, Ticket};
use crate::clock;
use crate::ids::{random_id, RoomId};
use crate::language::OTHER as OTHER_LANGUAGES;
use crate::metrics as m;
use crate::rooms::messages::{CreateMatchRoom, MatchSettled, MatchedMember, OfferConfirmation};
use crate::session::messages::SessionEvent;
use crate::state::Shared;

pub use self::shard_core::Link;

/// How often the shard looks for ended offer, held and parked timeouts.
const TIMEOUT_SWEEP: Duration = Duration::from_millis(100);

/// The shard of `shards` that owns searches in `language`.
pub fn shard_for<'a>(shards: &'a [Addr<MatchShard>], language: &str) -> &'a Addr<MatchShard> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    language.hash(&mut h);
    &shards[(h.finish() as usize) % shards.len()]
}

/// The language a pool belongs to, as an `Arc` (the pool's own when it is not a
/// part of a split language).
fn family_of(pool: &Arc<str>) -> Arc<str> {
    let family = crate::language::family(pool);
    if family.len() == pool.len() {
        pool.clone()
    } else {
        Arc::from(family)
    }
}

/// The ad other nodes see for a local search.
pub fn ad_for(
    node: &str,
    ticket: Ticket,
    user: &crate::ids::UserId,
    c: &Criteria,
    joined: Instant,
    deadline: Instant,
) -> SearchAd {
    SearchAd {
        node: node.to_owned(),
        ticket,
        user: user.to_string(),
        language: c.language.to_string(),
        interests: c.interests.iter().map(|i| i.to_string()).collect(),
        region: c.region.as_ref().map(|r| r.to_string()),
        group_size: c.group_size,
        joined_ms: clock::instant_to_ms(joined),
        deadline_ms: clock::instant_to_ms(deadline),
    }
}

/// One shard of the waiting pool: a [`ShardCore`] and the hands that carry out its
/// effects.
pub struct MatchShard {
    /// The shard's index, as the `shard` label of the pool gauge.
    label: String,
    node: Arc<str>,
    core: ShardCore<SearchLink>,
    shared: Arc<Shared>,
    /// The room supervisor: opens rooms for groups claimed here.
    create: Recipient<CreateMatchRoom>,
    /// The room supervisor: announces matches another node settled.
    settled: Recipient<MatchSettled>,
    /// This shard's part of each per-language series, as last reported. The
    /// series are moved by deltas, so shards never overwrite one another: a split
    /// language's parts live in several shards, and `other` sums every shard's
    /// languages without a series of their own ([`crate::language::LanguageSeries`]).
    by_language: HashMap<Arc<str>, usize>,
    /// Every shard of the engine (set once at start): where roaming searches move.
    peers: Option<Arc<[Addr<MatchShard>]>>,
    /// Buckets last reported to the roaming directory.
    buckets: Vec<(Arc<str>, u8)>,
}

impl MatchShard {
    pub fn new(
        index: usize,
        shared: Arc<Shared>,
        create: Recipient<CreateMatchRoom>,
        settled: Recipient<MatchSettled>,
    ) -> Self {
        let node: Arc<str> = Arc::from(shared.bridge.node_id());
        let avoid = shared.clone();
        let directory = shared.clone();
        let core = ShardCore::new(
            node.clone(),
            shared.bridge.clustered(),
            self::policy::Policy::from_config(&shared.config),
            Box::new(move |a, b| avoid.avoid.avoids(a, b)),
        )
        .with_roaming(Box::new(move |pool, size, roam, lone| {
            directory.pools.next_for(pool, size, roam, lone)
        }))
        // Offer ids name recorded outcomes in the store: a restarted node with the
        // same id must not meet its previous run's records.
        .with_first_offer(rand::random::<u64>() >> 2);
        Self {
            label: index.to_string(),
            node,
            core,
            shared,
            create,
            settled,
            by_language: HashMap::new(),
            peers: None,
            buckets: Vec::new(),
        }
    }

    /// Carry out what the core asked for, in order.
    fn run(&mut self, ctx: &mut Context<Self>) {
        for effect in self.core.take_effects() {
            self.apply(effect, ctx);
        }
        if self.core.take_pool_changed() {
            self.report_size();
        }
    }

    fn apply(&mut self, effect: Effect<SearchLink>, ctx: &mut Context<Self>) {
        let bridge = &self.shared.bridge;
        match effect {
            Effect::BeginSearch(a) => bridge.begin_search(ad_for(
                &self.node,
                a.ticket,
                &a.user,
                &a.criteria,
                a.joined,
                a.deadline,
            )),
            Effect::EndSearch { user, ticket, language } => {
                bridge.end_search(&user, ticket, &language)
            }
            Effect::Claim { id, language, members } => {
                let fut = bridge.claim_match(&language, members);
                ctx.spawn(fut.into_actor(self).map(move |outcome, act, ctx| {
                    act.core.claim_result(id, outcome, Instant::now());
                    act.run(ctx);
                }));
            }
            Effect::Send { node, event } => bridge.send_to_node(&node, event),
            Effect::Move(s) => {
                let msg = EnqueueSearch {
                    ticket: s.ticket,
                    user: s.user,
                    max_wait: s.deadline.saturating_duration_since(s.joined),
                    joined: s.joined,
                    link: s.link,
                    moved: true,
                    criteria: s.criteria,
                };
                match &self.peers {
                    Some(peers) => shard_for(peers, &msg.criteria.language).do_send(msg),
                    None => ctx.address().do_send(msg),
                }
            }
            Effect::Decide { creator, offer, pool, proposal } => {
                let proposal = match proposal {
                    Proposal::Open { members, shared } => {
                        OfferOutcome::Opened { room: new_room_id(), members, shared }
                    }
                    Proposal::Abort => OfferOutcome::Aborted,
                };
                let fut = bridge.decide_offer(&creator, &pool, offer, proposal);
                ctx.spawn(fut.into_actor(self).map(move |outcome, act, ctx| {
                    if let Ok(o) = &outcome {
                        let label = if creator == act.node { "creator" } else { "member" };
                        let outcome = match o {
                            OfferOutcome::Opened { .. } => "opened",
                            OfferOutcome::Aborted => "aborted",
                        };
                        metrics::counter!(m::BRIDGE_OFFER_OUTCOMES_TOTAL, "side" => label, "outcome" => outcome)
                            .increment(1);
                    }
                    act.core.decided(creator, offer, outcome, Instant::now());
                    act.run(ctx);
                }));
            }
            Effect::OpenRoom { members, remote, shared, confirm } => {
                self.create.do_send(CreateMatchRoom {
                    room_id: confirm.as_ref().map_or_else(new_room_id, |c| c.room.clone()),
                    members: members.into_iter().map(matched_member).collect(),
                    remote,
                    shared,
                    confirm: confirm.map(|c| OfferConfirmation {
                        creator: self.node.clone(),
                        offer: c.offer,
                        language: c.language,
                        nodes: c.nodes,
                    }),
                })
            }
            Effect::Settled { room_id, members, all, shared } => {
                self.settled.do_send(MatchSettled {
                    room_id,
                    members: members.into_iter().map(matched_member).collect(),
                    all,
                    shared,
                })
            }
            Effect::Cancelled { link, ticket } => {
                link.events.do_send(SessionEvent::SearchCancelled { ticket })
            }
            Effect::Expired { link, ticket } => {
                link.events.do_send(SessionEvent::SearchExpired { ticket })
            }
            Effect::Searching(n) if n >= 0 => {
                self.shared.searching.fetch_add(n as u64, Ordering::Relaxed);
            }
            Effect::Searching(n) => {
                self.shared.searching.fetch_sub(n.unsigned_abs(), Ordering::Relaxed);
            }
            Effect::Ended(reason) => {
                metrics::counter!(m::SEARCHES_ENDED_TOTAL, "reason" => reason.label()).increment(1)
            }
            Effect::ClaimConflict => metrics::counter!(m::CLAIM_CONFLICTS_TOTAL).increment(1),
            Effect::MatchMade { size, shared, step, waits, language, pair_shared } => {
                metrics::counter!(m::MATCHES_TOTAL, "group_size" => size.to_string()).increment(1);
                metrics::histogram!(m::MATCH_SHARED_INTERESTS).record(shared.len() as f64);
                let level = step.to_string();
                // Per language (a split one's parts together), bounded like the
                // pool gauge: admitted or `other`.
                let language = family_of(&language);
                let own = self.shared.language_series.admit(&[&language]);
                let lang = if own.first() == Some(&true) {
                    language.to_string()
                } else {
                    OTHER_LANGUAGES.into()
                };
                let wait_hist =
                    metrics::histogram!(m::MATCH_WAIT_SECONDS, "language" => lang.clone());
                for wait in waits {
                    metrics::histogram!(m::MATCH_LATENCY_SECONDS, "level" => level.clone())
                        .record(wait.as_secs_f64());
                    wait_hist.record(wait.as_secs_f64());
                }
                let pair_hist =
                    metrics::histogram!(m::MATCH_PAIR_SHARED_INTERESTS, "language" => lang);
                for n in pair_shared {
                    pair_hist.record(n as f64);
                }
                bridge.record_match(shared);
            }
        }
    }

    fn report_size(&mut self) {
        metrics::gauge!(m::POOL_WAITING, "shard" => self.label.clone())
            .set(self.core.pool().len() as f64);
        let buckets = self.core.pool().bucket_sizes();
        self.shared.pools.report(&self.buckets, &buckets);
        self.buckets = buckets.into_iter().map(|(k, _)| k).collect();
        // Parts of a split language count as their language.
        let mut sizes: Vec<(Arc<str>, usize)> = Vec::new();
        for (pool, n) in self.core.pool().sizes_by_language() {
            let lang = family_of(&pool);
            match sizes.iter_mut().find(|(l, _)| *l == lang) {
                Some((_, sum)) => *sum += n,
                None => sizes.push((lang, n)),
            }
        }
        let langs: Vec<&Arc<str>> = sizes.iter().map(|(l, _)| l).collect();
        let own = self.shared.language_series.admit(&langs);
        let mut now: HashMap<Arc<str>, usize> = HashMap::with_capacity(sizes.len());
        for ((lang, n), own) in sizes.iter().zip(own) {
            let label = if own { lang.clone() } else { Arc::from(OTHER_LANGUAGES) };
            *now.entry(label).or_default() += n;
        }
        for (label, before) in &self.by_language {
            if !now.contains_key(label) {
                metrics::gauge!(m::POOL_WAITING_BY_LANGUAGE, "language" => label.to_string())
                    .decrement(*before as f64);
            }
        }
        for (label, n) in &now {
            let before = self.by_language.get(label).copied().unwrap_or(0);
            if *n != before || before == 0 {
                metrics::gauge!(m::POOL_WAITING_BY_LANGUAGE, "language" => label.to_string())
                    .increment(*n as f64 - before as f64);
            }
        }
        self.by_language = now;
    }
}

/// A fresh match room id.
fn new_room_id() -> RoomId {
    RoomId::from(random_id("r"))
}

fn matched_member(m: Matched<SearchLink>) -> MatchedMember {
    MatchedMember {
        user: m.user,
        session_id: m.link.session_id,
        ticket: m.ticket,
        events: m.link.events,
    }
}

impl Actor for MatchShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let target = match self.core.pool().policy() {
            self::policy::Policy::Target(_) => self.shared.config.max_wait_target_ms as f64 / 1e3,
            self::policy::Policy::Ladder(_) => 0.0,
        };
        metrics::gauge!(m::MATCH_WAIT_TARGET_SECONDS).set(target);
        let every = Duration::from_millis(self.shared.config.match_tick_ms);
        ctx.run_interval(every, |act, ctx| {
            act.core.tick(Instant::now());
            act.run(ctx);
        });
        ctx.run_interval(TIMEOUT_SWEEP, |act, ctx| {
            act.core.sweep(Instant::now());
            act.run(ctx);
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // The series are moved by deltas: take this shard's part back out.
        for (label, n) in self.by_language.drain() {
            metrics::gauge!(m::POOL_WAITING_BY_LANGUAGE, "language" => label.to_string())
                .decrement(n as f64);
        }
    }
}

impl Handler<EnqueueSearch> for MatchShard {
    type Result = ();

    fn handle(&mut self, msg: EnqueueSearch, ctx: &mut Self::Context) {
        let search = LocalSearch {
            ticket: msg.ticket,
            user: msg.user,
            criteria: msg.criteria,
            joined: msg.joined,
            deadline: msg.joined + msg.max_wait,
            link: msg.link,
            moved: msg.moved,
        };
        self.core.enqueue(search, Instant::now());
        self.run(ctx);
    }
}

impl Handler<CancelSearch> for MatchShard {
    type Result = actix::ResponseFuture<CancelOutcome>;

    fn handle(&mut self, msg: CancelSearch, ctx: &mut Self::Context) -> Self::Result {
        if let (Some(lang), Some(peers)) = (self.core.moved_to(msg.ticket), &self.peers) {
            // A roaming search that moved on: the cancel follows it (its move was
            // sent to that shard before this message was handled, so it is there).
            let ask = shard_for(peers, &lang).send(msg);
            return Box::pin(async move { ask.await.unwrap_or(CancelOutcome::NotWaiting) });
        }
        let cancelled = self.core.cancel(&msg.user, msg.ticket, msg.reason);
        self.run(ctx);
        let out = if cancelled { CancelOutcome::Cancelled } else { CancelOutcome::NotWaiting };
        Box::pin(async move { out })
    }
}

impl Handler<SetPeers> for MatchShard {
    type Result = ();

    fn handle(&mut self, msg: SetPeers, _ctx: &mut Self::Context) {
        self.peers = Some(msg.0);
    }
}

impl Handler<AddRemoteSearch> for MatchShard {
    type Result = ();

    fn handle(&mut self, msg: AddRemoteSearch, ctx: &mut Self::Context) {
        let ad = msg.ad;
        if ad.node == *self.node {
            return;
        }
        let joined = clock::ms_to_instant(ad.joined_ms);
        let deadline = clock::ms_to_instant(ad.deadline_ms);
        let shared = &self.shared;
        let replica = RemoteSearch { ad, joined, deadline };
        self.core.remote_added(replica, || shared.next_ticket(), Instant::now());
        self.run(ctx);
    }
}

/// Handlers that only feed their message to the core (at `now`) and carry out
/// what it asks for: `Message => |message, core, now| input;`.
macro_rules! feed_core {
    ($($msg:ty => |$m:ident, $core:ident, $now:ident| $input:expr;)*) => {$(
        impl Handler<$msg> for MatchShard {
            type Result = ();

            fn handle(&mut self, $m: $msg, ctx: &mut Self::Context) {
                let ($core, $now) = (&mut self.core, Instant::now());
                $input;
                self.run(ctx);
            }
        }
    )*};
}

feed_core! {
    RemoveRemoteSearches => |msg, core, _now| core.remote_removed(&msg.node, &msg.tickets);
    DropRemoteSearches => |msg, core, _now| core.remote_dropped(msg.node.as_ref());
    RepublishSearches => |_msg, core, _now| core.republish();
    OfferReceived => |msg, core, now| core.offer_received(msg, now);
    OfferAnswered => |msg, core, now| core.offer_answered(msg, now);
    OfferSettled => |msg, core, now| core.offer_settled(msg, now);
}

impl Handler<Probe> for MatchShard {
    type Result = ();

    fn handle(&mut self, _msg: Probe, _ctx: &mut Self::Context) {}
}
