//! Matching-pool shards. Searches are sharded by language (see
//! [`crate::engine::Engine::shard_for`]), so each shard is an independent actor and
//! matching runs on every core. The rules live in [`pool`]; this actor feeds it
//! arrivals, cancels and timer ticks, confirms each chosen group through the
//! bridge's atomic claim, and hands claimed groups to the room supervisor.
//!
//! In a cluster the pool also holds replicas of searches waiting on other nodes
//! ([`Link::Remote`]). A claimed group with remote members becomes an *offer*: the
//! creator asks each member's node to hold its searches, and only when every node
//! has answered yes is the room opened and everyone told; otherwise every held or
//! local search goes back to the pool with its original ticket and arrival time.

pub mod messages;
pub mod pool;
mod timeouts;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, WrapFuture};
use tracing::{debug, warn};

use self::messages::*;
use self::pool::{Criteria, Entry, Match, Pool};
use self::timeouts::Timeouts;
use crate::bridge::events::{ClusterEvent, OfferMember};
use crate::bridge::{ClaimMember, ClaimOutcome, SearchAd, Ticket};
use crate::clock;
use crate::ids::{random_id, Interest, RoomId, UserId};
use crate::language::OTHER as OTHER_LANGUAGES;
use crate::metrics as m;
use crate::rooms::messages::{CreateMatchRoom, MatchSettled, MatchedMember, OfferConfirmation};
use crate::rooms::RoomSupervisor;
use crate::session::messages::SessionEvent;
use crate::state::Shared;

/// How long a creator waits for member nodes to answer an offer.
const OFFER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a member node holds searches for an offer that is never settled.
const HELD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a search that lost a claim waits for the winner's offer.
const PARKED_TIMEOUT: Duration = Duration::from_secs(4);
/// How often the shard looks for ended offer, held and parked timeouts.
const TIMEOUT_SWEEP: Duration = Duration::from_millis(100);
/// Extra life of a replica past its origin's deadline, so the origin's own expiry
/// (and its removal event) always comes first.
const REPLICA_SLACK: Duration = Duration::from_secs(2);

/// The ad other nodes see for a local search.
pub fn ad_for(
    node: &str,
    ticket: Ticket,
    user: &UserId,
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

/// A cross-node group this shard claimed, waiting for member nodes to hold theirs.
struct PendingOffer {
    found: Match<Link>,
    offered: Vec<Arc<str>>,
    waiting: HashSet<Arc<str>>,
    accepted: Vec<Arc<str>>,
    failed: bool,
}

/// One shard of the waiting pool.
pub struct MatchShard {
    index: usize,
    label: String,
    node: Arc<str>,
    pool: Pool<Link>,
    shared: Arc<Shared>,
    supervisor: Addr<RoomSupervisor>,
    /// Tickets picked for a group whose claim is still running (out of the pool).
    claiming: HashSet<Ticket>,
    /// Of those (and of held ones), the ones withdrawn meanwhile: if their pick falls
    /// through they end (and the session hears `SearchCancelled`) instead of going
    /// back to the pool.
    withdrawn: HashMap<Ticket, CancelReason>,
    /// Replicas: (origin node, origin ticket) → local ticket.
    remote: HashMap<(Arc<str>, Ticket), Ticket>,
    /// Offers made by this shard, by offer id.
    offers: HashMap<u64, PendingOffer>,
    next_offer: u64,
    /// Local searches held for another node's offer: (creator, offer) → entries.
    held: HashMap<(Arc<str>, u64), Vec<Entry<Link>>>,
    /// Offers that named a search whose own claim was running; retried after it.
    deferred: Vec<OfferReceived>,
    /// Local searches that lost a claim to another node's, waiting for its offer.
    parked: HashMap<Ticket, Entry<Link>>,
    /// Offers settled (aborted) before they were looked at here, newest last.
    settled_early: VecDeque<(Arc<str>, u64)>,
    /// Languages last reported in the per-language gauge (to zero emptied ones).
    languages: Vec<Arc<str>>,
    /// This shard's part of the `other` language series (searches in languages
    /// without their own series, see [`crate::language::LanguageSeries`]).
    other_waiting: usize,
    /// Local tickets an offer named before their search reached this shard.
    overtaken: VecDeque<Ticket>,
    /// When offers made here give up on their member nodes.
    offer_timeouts: Timeouts<u64>,
    /// When held searches of an offer that was never settled go back to the pool.
    held_timeouts: Timeouts<(Arc<str>, u64)>,
    /// When parked searches stop waiting for the winning claim's offer.
    parked_timeouts: Timeouts<Ticket>,
}

impl MatchShard {
    pub fn new(index: usize, shared: Arc<Shared>, supervisor: Addr<RoomSupervisor>) -> Self {
        let pool = Pool::new(shared.config.ladder.clone());
        Self {
            index,
            label: index.to_string(),
            node: Arc::from(shared.bridge.node_id()),
            pool,
            shared,
            supervisor,
            claiming: HashSet::new(),
            withdrawn: HashMap::new(),
            remote: HashMap::new(),
            offers: HashMap::new(),
            next_offer: 1,
            held: HashMap::new(),
            deferred: Vec::new(),
            parked: HashMap::new(),
            settled_early: VecDeque::new(),
            languages: Vec::new(),
            other_waiting: 0,
            overtaken: VecDeque::new(),
            offer_timeouts: Timeouts::new(OFFER_TIMEOUT),
            held_timeouts: Timeouts::new(HELD_TIMEOUT),
            parked_timeouts: Timeouts::new(PARKED_TIMEOUT),
        }
    }

    /// End the offers, holds and parks whose time is up.
    fn sweep_timeouts(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        for ticket in self.parked_timeouts.expired(now) {
            if let Some(e) = self.parked.remove(&ticket) {
                debug!(ticket, "no offer came for a lost claim; back to the pool");
                self.requeue(vec![e], true, ctx);
            }
        }
        for id in self.offer_timeouts.expired(now) {
            if let Some(p) = self.offers.get_mut(&id) {
                warn!(offer = id, waiting = ?p.waiting, "offer timed out");
                p.failed = true;
                p.waiting.clear();
                self.settle(id, ctx);
            }
        }
        for key in self.held_timeouts.expired(now) {
            if let Some(entries) = self.held.remove(&key) {
                warn!(offer = key.1, creator = %key.0, "offer never settled; back to the pool");
                self.requeue(entries, true, ctx);
            }
        }
    }

    fn report_size(&mut self) {
        metrics::gauge!(m::POOL_WAITING, "shard" => self.label.clone()).set(self.pool.len() as f64);
        let sizes = self.pool.sizes_by_language();
        let langs: Vec<&Arc<str>> = sizes.iter().map(|(l, _)| l).collect();
        let own = self.shared.language_series.admit(&langs);
        let mut other = 0usize;
        let mut reported = Vec::with_capacity(sizes.len());
        for ((lang, n), own) in sizes.iter().zip(own) {
            if own {
                metrics::gauge!(m::POOL_WAITING_BY_LANGUAGE, "language" => lang.to_string())
                    .set(*n as f64);
                reported.push(lang.clone());
            } else {
                other += n;
            }
        }
        for lang in &self.languages {
            if !reported.contains(lang) {
                metrics::gauge!(m::POOL_WAITING_BY_LANGUAGE, "language" => lang.to_string())
                    .set(0.0);
            }
        }
        self.languages = reported;
        // `other` sums every shard's unadmitted languages: each moves it by its own
        // change, so the shards never overwrite one another.
        if other != self.other_waiting {
            let g = metrics::gauge!(m::POOL_WAITING_BY_LANGUAGE, "language" => OTHER_LANGUAGES);
            g.increment(other as f64 - self.other_waiting as f64);
            self.other_waiting = other;
        }
    }

    fn ad(&self, e: &Entry<Link>) -> SearchAd {
        ad_for(&self.node, e.ticket, &e.user, &e.criteria, e.joined, e.deadline)
    }

    /// Try to complete a group for `ticket`; claim it if one is found.
    fn attempt(&mut self, ticket: u64, ctx: &mut Context<Self>) {
        let avoid = &self.shared.avoid;
        if let Some(found) =
            self.pool.try_match(ticket, Instant::now(), |a, b| avoid.avoids(a, b), Link::alive)
        {
            self.claim(found, ctx);
        }
    }

    /// Confirm a group through the bridge. Members are out of the pool while the
    /// claim runs, so no other search can pick them.
    fn claim(&mut self, found: Match<Link>, ctx: &mut Context<Self>) {
        let keys = found
            .members
            .iter()
            .map(|e| match &e.link {
                Link::Local(_) => {
                    ClaimMember { user: e.user.clone(), node: None, ticket: e.ticket }
                }
                Link::Remote { node, ticket } => {
                    ClaimMember { user: e.user.clone(), node: Some(node.clone()), ticket: *ticket }
                }
            })
            .collect();
        self.claiming.extend(found.members.iter().map(|e| e.ticket));
        let language = found.members[0].criteria.language.clone();
        let fut = self.shared.bridge.claim_match(&language, keys);
        ctx.spawn(fut.into_actor(self).map(move |outcome, act, ctx| {
            for e in &found.members {
                act.claiming.remove(&e.ticket);
            }
            match outcome {
                Ok(ClaimOutcome::Claimed) => {
                    for e in &found.members {
                        act.forget_replica(e);
                    }
                    if found.members.iter().all(|e| matches!(e.link, Link::Local(_))) {
                        act.deliver(found, ctx);
                    } else {
                        act.offer(found);
                    }
                }
                Ok(ClaimOutcome::Lost(lost)) => {
                    metrics::counter!(m::CLAIM_CONFLICTS_TOTAL).increment(1);
                    let (gone, keep): (Vec<_>, Vec<_>) =
                        found.members.into_iter().partition(|e| lost.contains(&e.user));
                    for e in gone {
                        act.forget_replica(&e);
                        if matches!(e.link, Link::Local(_)) {
                            act.park(e, ctx);
                        }
                    }
                    act.requeue(keep, false, ctx);
                }
                Err(e) => {
                    warn!(error = %e, shard = act.index, "claim failed; members go back to the pool");
                    act.requeue(found.members, false, ctx);
                }
            }
            act.retry_deferred();
        }));
    }

    /// A local search that lost a claim because another claim took it: in a
    /// cluster, that claim's offer is on its way, so the search waits out of the
    /// pool for it. If no offer comes, it goes back to the pool (announced again).
    fn park(&mut self, e: Entry<Link>, ctx: &mut Context<Self>) {
        if !self.shared.bridge.clustered() {
            // One node: the only other claim is a newer search of the same user.
            self.withdrawn.remove(&e.ticket);
            self.shared.searching.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let ticket = e.ticket;
        if let Some(at) = self.overtaken.iter().position(|t| *t == ticket) {
            // The claim that took it was already refused here: no offer will come.
            self.overtaken.remove(at);
            return self.requeue(vec![e], true, ctx);
        }
        self.parked.insert(ticket, e);
        self.parked_timeouts.arm(ticket, Instant::now());
    }

    fn forget_replica(&mut self, e: &Entry<Link>) {
        if let Link::Remote { node, ticket } = &e.link {
            self.remote.remove(&(node.clone(), *ticket));
        }
    }

    /// Record the metrics of a match made here (the creator counts it once).
    fn count_match(&self, found: &Match<Link>) {
        let now = Instant::now();
        metrics::counter!(m::MATCHES_TOTAL, "group_size" => found.members.len().to_string())
            .increment(1);
        metrics::histogram!(m::MATCH_SHARED_INTERESTS).record(found.shared.len() as f64);
        let level = found.step.to_string();
        for e in &found.members {
            metrics::histogram!(m::MATCH_LATENCY_SECONDS, "level" => level.clone())
                .record(now.saturating_duration_since(e.joined).as_secs_f64());
        }
        self.shared.bridge.record_match(found.shared.clone());
    }

    /// A claimed all-local group: hand it to the supervisor, unless a member vanished
    /// since the pick, in which case the others return to the pool at their old place.
    fn deliver(&mut self, found: Match<Link>, ctx: &mut Context<Self>) {
        let (alive, gone): (Vec<_>, Vec<_>) =
            found.members.into_iter().partition(|e| e.link.alive());
        for e in &gone {
            self.withdrawn.remove(&e.ticket);
        }
        if !gone.is_empty() {
            self.shared.searching.fetch_sub(gone.len() as u64, Ordering::Relaxed);
            self.requeue(alive, true, ctx);
            return;
        }
        let found = Match { members: alive, shared: found.shared, step: found.step };
        self.count_match(&found);
        self.shared.searching.fetch_sub(found.members.len() as u64, Ordering::Relaxed);
        let mut members = Vec::with_capacity(found.members.len());
        for e in found.members {
            // A cancel that lost the race to this match is answered by `match_found`.
            self.withdrawn.remove(&e.ticket);
            if let Link::Local(link) = e.link {
                members.push(MatchedMember {
                    user: e.user,
                    session_id: link.session_id,
                    ticket: e.ticket,
                    events: link.events,
                });
            }
        }
        self.supervisor.do_send(CreateMatchRoom {
            room_id: RoomId::from(random_id("r")),
            members,
            remote: Vec::new(),
            shared: found.shared,
            confirm: None,
        });
        self.report_size();
    }

    /// Ask every member node of a claimed cross-node group to hold its searches.
    fn offer(&mut self, found: Match<Link>) {
        let id = self.next_offer;
        self.next_offer += 1;
        let language = found.members[0].criteria.language.to_string();
        let mut by_node: HashMap<Arc<str>, Vec<OfferMember>> = HashMap::new();
        for e in &found.members {
            if let Link::Remote { node, ticket } = &e.link {
                by_node
                    .entry(node.clone())
                    .or_default()
                    .push(OfferMember { user: e.user.to_string(), ticket: *ticket });
            }
        }
        for (node, members) in &by_node {
            self.shared.bridge.send_to_node(
                node,
                ClusterEvent::Offer {
                    creator: self.node.to_string(),
                    offer: id,
                    language: language.clone(),
                    members: members.clone(),
                },
            );
        }
        let offered: Vec<Arc<str>> = by_node.into_keys().collect();
        let waiting = offered.iter().cloned().collect();
        self.offers.insert(
            id,
            PendingOffer { found, offered, waiting, accepted: Vec::new(), failed: false },
        );
        self.offer_timeouts.arm(id, Instant::now());
    }

    /// Every member node answered (or the offer timed out): open the room, or put
    /// everyone back.
    fn settle(&mut self, id: u64, ctx: &mut Context<Self>) {
        let Some(p) = self.offers.remove(&id) else { return };
        self.offer_timeouts.disarm(&id);
        let language = p.found.members[0].criteria.language.to_string();
        let locals_alive = p.found.members.iter().all(|e| e.link.alive());
        if !p.failed && locals_alive {
            self.count_match(&p.found);
            let mut members = Vec::new();
            let mut remote = Vec::new();
            for e in p.found.members {
                match e.link {
                    Link::Local(link) => {
                        self.withdrawn.remove(&e.ticket);
                        self.shared.searching.fetch_sub(1, Ordering::Relaxed);
                        members.push(MatchedMember {
                            user: e.user,
                            session_id: link.session_id,
                            ticket: e.ticket,
                            events: link.events,
                        });
                    }
                    Link::Remote { node, .. } => remote.push((e.user, node)),
                }
            }
            self.supervisor.do_send(CreateMatchRoom {
                room_id: RoomId::from(random_id("r")),
                members,
                remote,
                shared: p.found.shared,
                confirm: Some(OfferConfirmation {
                    creator: self.node.clone(),
                    offer: id,
                    language,
                    nodes: p.accepted,
                }),
            });
            return;
        }
        metrics::counter!(m::CLAIM_CONFLICTS_TOTAL).increment(1);
        // Every node offered, answered or not: one that answers late must not hold
        // its members for an offer that is over.
        for node in &p.offered {
            self.shared.bridge.send_to_node(
                node,
                ClusterEvent::OfferAbort {
                    creator: self.node.to_string(),
                    offer: id,
                    language: language.clone(),
                },
            );
        }
        let (locals, _remotes): (Vec<_>, Vec<_>) =
            p.found.members.into_iter().partition(|e| matches!(e.link, Link::Local(_)));
        let (alive, gone): (Vec<_>, Vec<_>) = locals.into_iter().partition(|e| e.link.alive());
        for e in &gone {
            self.withdrawn.remove(&e.ticket);
        }
        self.shared.searching.fetch_sub(gone.len() as u64, Ordering::Relaxed);
        // Remote members come back as replicas when their nodes re-announce them.
        self.requeue(alive, true, ctx);
    }

    /// Put entries back with their original ticket and arrival time, then retry them.
    /// `reclaim` re-registers local searches the claim had already ended.
    fn requeue(&mut self, entries: Vec<Entry<Link>>, reclaim: bool, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let mut tickets = Vec::with_capacity(entries.len());
        for e in entries {
            if let Some(reason) = self.withdrawn.remove(&e.ticket) {
                // Cancelled while its pick was being claimed: end it here, since the
                // session was told a match was on its way (`NotWaiting`).
                if !reclaim {
                    self.shared.bridge.end_search(&e.user, e.ticket, &e.criteria.language);
                }
                self.shared.searching.fetch_sub(1, Ordering::Relaxed);
                metrics::counter!(m::SEARCHES_ENDED_TOTAL, "reason" => reason_label(reason))
                    .increment(1);
                if let Link::Local(link) = &e.link {
                    link.events.do_send(SessionEvent::SearchCancelled { ticket: e.ticket });
                }
                continue;
            }
            match &e.link {
                Link::Local(_) if reclaim => self.shared.bridge.begin_search(self.ad(&e)),
                Link::Local(_) => {}
                Link::Remote { node, ticket } => {
                    self.remote.insert((node.clone(), *ticket), e.ticket);
                }
            }
            tickets.push(e.ticket);
            self.pool.insert(e, now);
        }
        for t in tickets {
            if self.pool.contains(t) {
                self.attempt(t, ctx);
            }
        }
        self.report_size();
    }

    fn retry_deferred(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        for msg in std::mem::take(&mut self.deferred) {
            self.receive_offer(msg);
        }
    }

    /// Member node: hold the offered local searches if every one still waits here.
    fn receive_offer(&mut self, msg: OfferReceived) {
        if msg.members.iter().any(|m| self.claiming.contains(&m.ticket)) {
            // Our own claim of one of them is running; it will lose (the creator's
            // claim won) and then this offer is looked at again.
            self.deferred.push(msg);
            return;
        }
        let ours = |e: &Entry<Link>, m: &OfferMember| {
            e.user.as_str() == m.user && matches!(e.link, Link::Local(_)) && e.link.alive()
        };
        let present = |m: &OfferMember| {
            self.pool
                .get(m.ticket)
                .or_else(|| self.parked.get(&m.ticket))
                .is_some_and(|e| ours(e, m))
        };
        // A ticket this shard has never seen: the offer overtook the search's own
        // `EnqueueSearch` (the ad reached the other node first). The creator's claim
        // ended that search in the store, so it is announced again when it arrives.
        for m in &msg.members {
            let known = self.pool.contains(m.ticket)
                || self.parked.contains_key(&m.ticket)
                || self.held.values().flatten().any(|e| e.ticket == m.ticket);
            if !known {
                if self.overtaken.len() >= 1_024 {
                    self.overtaken.pop_front();
                }
                self.overtaken.push_back(m.ticket);
            }
        }
        let over = self.settled_early.contains(&(msg.creator.clone(), msg.offer));
        let gone: Vec<String> =
            msg.members.iter().filter(|m| over || !present(m)).map(|m| m.user.clone()).collect();
        let ok = gone.is_empty();
        let mut entries = Vec::new();
        for m in &msg.members {
            let parked = || {
                self.parked_timeouts.disarm(&m.ticket);
                self.parked.remove(&m.ticket)
            };
            if let Some(e) = self.pool.remove(m.ticket).or_else(parked) {
                entries.push(e);
            }
        }
        if ok {
            let key = (msg.creator.clone(), msg.offer);
            self.held.insert(key.clone(), entries);
            // A creator that dies before it confirms must not keep them forever.
            self.held_timeouts.arm(key, Instant::now());
        } else {
            // The creator's claim ended these searches in the store; announce the
            // ones still here again so the next claim can take them.
            let now = Instant::now();
            for e in entries {
                self.shared.bridge.begin_search(self.ad(&e));
                self.pool.insert(e, now);
            }
        }
        self.shared.bridge.send_to_node(
            &msg.creator,
            ClusterEvent::OfferReply {
                from: self.node.to_string(),
                offer: msg.offer,
                language: msg.language.clone(),
                ok,
                gone,
            },
        );
        self.report_size();
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.pool.is_empty() {
            return;
        }
        let avoid = &self.shared.avoid;
        let out = self.pool.tick(Instant::now(), |a, b| avoid.avoids(a, b), Link::alive);
        for e in out.expired {
            match &e.link {
                Link::Local(link) => {
                    self.shared.bridge.end_search(&e.user, e.ticket, &e.criteria.language);
                    self.shared.searching.fetch_sub(1, Ordering::Relaxed);
                    metrics::counter!(m::SEARCHES_ENDED_TOTAL, "reason" => "timeout").increment(1);
                    link.events.do_send(SessionEvent::SearchExpired { ticket: e.ticket });
                }
                Link::Remote { .. } => self.forget_replica(&e),
            }
        }
        for found in out.matches {
            self.claim(found, ctx);
        }
        self.report_size();
    }
}

fn reason_label(reason: CancelReason) -> &'static str {
    match reason {
        CancelReason::Cancelled => "cancelled",
        CancelReason::Disconnected => "disconnected",
    }
}

impl Actor for MatchShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let every = Duration::from_millis(self.shared.config.match_tick_ms);
        ctx.run_interval(every, |act, ctx| act.tick(ctx));
        ctx.run_interval(TIMEOUT_SWEEP, |act, ctx| act.sweep_timeouts(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // The `other` series is moved by deltas: take this shard's part back out.
        if self.other_waiting > 0 {
            metrics::gauge!(m::POOL_WAITING_BY_LANGUAGE, "language" => OTHER_LANGUAGES)
                .decrement(self.other_waiting as f64);
        }
    }
}

impl Handler<EnqueueSearch> for MatchShard {
    type Result = ();

    fn handle(&mut self, msg: EnqueueSearch, ctx: &mut Self::Context) {
        let entry = Entry {
            ticket: msg.ticket,
            user: msg.user,
            criteria: msg.criteria,
            joined: msg.joined,
            deadline: msg.joined + msg.max_wait,
            step: 0,
            link: Link::Local(msg.link),
        };
        self.shared.searching.fetch_add(1, Ordering::Relaxed);
        if let Some(at) = self.overtaken.iter().position(|t| *t == entry.ticket) {
            // Refused in an offer before it got here: its store entry is gone.
            self.overtaken.remove(at);
            self.shared.bridge.begin_search(self.ad(&entry));
        }
        if let Some(old) = self.pool.insert(entry, Instant::now()) {
            match &old.link {
                // The same user's older search, from a session that was replaced.
                Link::Local(_) => {
                    self.shared.searching.fetch_sub(1, Ordering::Relaxed);
                }
                Link::Remote { .. } => self.forget_replica(&old),
            }
        }
        self.attempt(msg.ticket, ctx);
        self.report_size();
    }
}

impl Handler<CancelSearch> for MatchShard {
    type Result = CancelOutcome;

    fn handle(&mut self, msg: CancelSearch, _ctx: &mut Self::Context) -> CancelOutcome {
        let waiting = self.pool.ticket_of(&msg.user) == Some(msg.ticket)
            && self.pool.get(msg.ticket).is_some_and(|e| matches!(e.link, Link::Local(_)));
        if !waiting {
            let held = self.held.values().flatten().any(|e| e.ticket == msg.ticket)
                || self.parked.contains_key(&msg.ticket);
            let offered = self
                .offers
                .values()
                .flat_map(|p| &p.found.members)
                .any(|e| e.ticket == msg.ticket && matches!(e.link, Link::Local(_)));
            if self.claiming.contains(&msg.ticket) || held || offered {
                self.withdrawn.insert(msg.ticket, msg.reason);
            }
            return CancelOutcome::NotWaiting;
        }
        if let Some(e) = self.pool.remove(msg.ticket) {
            self.shared.bridge.end_search(&msg.user, msg.ticket, &e.criteria.language);
        }
        self.shared.searching.fetch_sub(1, Ordering::Relaxed);
        metrics::counter!(m::SEARCHES_ENDED_TOTAL, "reason" => reason_label(msg.reason))
            .increment(1);
        self.report_size();
        CancelOutcome::Cancelled
    }
}

impl Handler<AddRemoteSearch> for MatchShard {
    type Result = ();

    fn handle(&mut self, msg: AddRemoteSearch, ctx: &mut Self::Context) {
        let ad = msg.ad;
        if ad.node == *self.node {
            return;
        }
        let node: Arc<str> = Arc::from(ad.node.as_str());
        if self.remote.contains_key(&(node.clone(), ad.ticket)) {
            return;
        }
        let user = UserId::from(ad.user);
        if let Some(t) = self.pool.ticket_of(&user) {
            if self.pool.get(t).is_some_and(|e| matches!(e.link, Link::Local(_))) {
                // The user also searches here (a newer connection is on its way to
                // replace one of the two); the local search wins.
                return;
            }
        }
        let mut interests: Vec<Interest> = ad.interests.into_iter().map(Interest::from).collect();
        interests.sort();
        interests.dedup();
        let criteria = Criteria {
            interests,
            language: Arc::from(ad.language),
            region: ad.region.map(Arc::from),
            group_size: ad.group_size,
        };
        let ticket = self.shared.next_ticket();
        let entry = Entry {
            ticket,
            user,
            criteria,
            joined: clock::ms_to_instant(ad.joined_ms),
            deadline: clock::ms_to_instant(ad.deadline_ms) + REPLICA_SLACK,
            step: 0,
            link: Link::Remote { node: node.clone(), ticket: ad.ticket },
        };
        if let Some(old) = self.pool.insert(entry, Instant::now()) {
            self.forget_replica(&old);
        }
        self.remote.insert((node, ad.ticket), ticket);
        self.attempt(ticket, ctx);
        self.report_size();
    }
}

impl Handler<RemoveRemoteSearches> for MatchShard {
    type Result = ();

    fn handle(&mut self, msg: RemoveRemoteSearches, _ctx: &mut Self::Context) {
        for t in msg.tickets {
            if let Some(local) = self.remote.remove(&(msg.node.clone(), t)) {
                self.pool.remove(local);
            }
        }
        self.report_size();
    }
}

impl Handler<DropRemoteSearches> for MatchShard {
    type Result = ();

    fn handle(&mut self, msg: DropRemoteSearches, _ctx: &mut Self::Context) {
        let doomed: Vec<((Arc<str>, Ticket), Ticket)> = self
            .remote
            .iter()
            .filter(|((node, _), _)| msg.node.as_ref().is_none_or(|n| n == node))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (key, local) in doomed {
            self.remote.remove(&key);
            self.pool.remove(local);
        }
        debug!(shard = self.index, node = ?msg.node, "dropped replicas");
        self.report_size();
    }
}

impl Handler<RepublishSearches> for MatchShard {
    type Result = ();

    fn handle(&mut self, _msg: RepublishSearches, _ctx: &mut Self::Context) {
        let ads: Vec<SearchAd> = self
            .pool
            .iter()
            .filter(|e| matches!(e.link, Link::Local(_)))
            .map(|e| self.ad(e))
            .collect();
        for ad in ads {
            self.shared.bridge.begin_search(ad);
        }
    }
}

impl Handler<OfferReceived> for MatchShard {
    type Result = ();

    fn handle(&mut self, msg: OfferReceived, _ctx: &mut Self::Context) {
        self.receive_offer(msg);
    }
}

impl Handler<OfferAnswered> for MatchShard {
    type Result = ();

    fn handle(&mut self, msg: OfferAnswered, ctx: &mut Self::Context) {
        let Some(p) = self.offers.get_mut(&msg.offer) else { return };
        if !p.waiting.remove(&msg.from) {
            return;
        }
        if msg.ok {
            p.accepted.push(msg.from);
        } else {
            debug!(offer = msg.offer, gone = ?msg.gone, "offer refused");
            p.failed = true;
        }
        if p.waiting.is_empty() {
            self.settle(msg.offer, ctx);
        }
    }
}

impl Handler<OfferSettled> for MatchShard {
    type Result = ();

    fn handle(&mut self, msg: OfferSettled, ctx: &mut Self::Context) {
        let key = (msg.creator, msg.offer);
        self.held_timeouts.disarm(&key);
        let Some(entries) = self.held.remove(&key) else {
            // Settled before this node held anything (the offer is deferred behind a
            // running claim, or still on its way): an offer that comes later is over.
            self.deferred.retain(|d| (d.creator.clone(), d.offer) != key);
            if self.settled_early.len() >= 1_024 {
                self.settled_early.pop_front();
            }
            self.settled_early.push_back(key);
            return;
        };
        match msg.room {
            Some((room_id, all, shared)) => {
                let mut members = Vec::with_capacity(entries.len());
                for e in entries {
                    self.withdrawn.remove(&e.ticket);
                    self.shared.searching.fetch_sub(1, Ordering::Relaxed);
                    if let Link::Local(link) = e.link {
                        members.push(MatchedMember {
                            user: e.user,
                            session_id: link.session_id,
                            ticket: e.ticket,
                            events: link.events,
                        });
                    }
                }
                self.supervisor.do_send(MatchSettled { room_id, members, all, shared });
            }
            None => self.requeue(entries, true, ctx),
        }
        self.report_size();
    }
}

impl Handler<Probe> for MatchShard {
    type Result = ();

    fn handle(&mut self, _msg: Probe, _ctx: &mut Self::Context) {}
}
