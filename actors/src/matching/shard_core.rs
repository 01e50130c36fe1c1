//! The bookkeeping of one matching shard as a pure state machine: the pool, the
//! claims it runs, and the cross-node offer protocol. No actors, no bridge, no
//! metrics, no clock: every input is a method taking `now`, and every outside
//! action is an [`Effect`] queued for the caller ([`super::MatchShard`]), which
//! drains them with [`ShardCore::take_effects`] and carries them out in order (the
//! bridge's order guarantee, a `begin_search` before the claim that names its
//! ticket, holds because effects keep the order they were made in).
//!
//! # Where a search can be
//! Each ticket is in at most one of these places:
//! * `pool`: waiting, pickable.
//! * `claims` (tickets in `claiming`): picked for a group whose atomic claim runs.
//! * `offers`: claimed here for a group with members on other nodes, waiting for
//!   those nodes to hold theirs (creator side).
//! * `held`: a local search another node's offer asked this node to hold (member side).
//! * `parked`: a local search that lost a claim to another node's claim, waiting out
//!   of the pool for that claim's offer.
//!
//! `withdrawn` marks tickets cancelled while out of the pool: if their pick falls
//! through they end with `SearchCancelled`; if the match completes, `match_found`
//! answers the cancel.
//!
//! # The offer protocol
//! ```text
//!  creator shard (node A)                        member shard (node B)
//!  pool ─pick─► claims ─Claimed, all local──► OpenRoom
//!                 │ Claimed, members on B
//!                 ▼
//!               offers ──────Offer──────────────► pool | parked ──► held ─┐
//!                 ▲                               (own claim runs: deferred)│
//!                 └────────OfferReply ok | gone ◄───────────────────────────┘
//!  every node ok ─► Decide(open) ─► OpenRoom ─OfferConfirm─► held ─► Settled ─► MatchSettled
//!                     │ recorded: aborted ─┐
//!  refused | OFFER_TIMEOUT ─► OfferAbort (every offered node), locals to pool
//!                              OfferAbort ─► held back to pool (announced again)
//!  claim Lost ─► local loser parked ─PARKED_TIMEOUT─► pool
//!  held ─HELD_CHECK─► Decide(abort) ─► recorded: opened ─► Settled | aborted ─► pool
//! ```
//! The end of an offer is recorded once in the store ([`Effect::Decide`]): the
//! creator records the room before it opens it, and a member node that heard
//! nothing for [`HELD_CHECK`] (the confirm or the abort was lost, say in a
//! failover) records `aborted` unless an outcome is there, and follows whichever
//! outcome the store holds. The first record wins, so both sides always agree: a
//! member is never left out of a room its partner was told about, and never
//! matched again while the room holds it. An unknown answer (the store is down) is
//! asked again every [`DECIDE_RETRY`]; the searches wait meanwhile.
//!
//! Races it absorbs: an offer for a ticket whose own claim still runs here waits
//! (`deferred`) until that claim ends; an abort that arrives before its offer is
//! remembered (`settled_early`) so the offer is refused; an offer that overtakes its
//! search's `EnqueueSearch` is refused and the search is announced again on arrival
//! (`overtaken`); parked and held searches time out back into the pool.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::policy::Policy;
use super::pool::{Criteria, Entry, Match, Pool, Roam};
use super::timeouts::Timeouts;
use crate::bridge::events::{ClusterEvent, OfferMember};
use crate::bridge::{BridgeError, ClaimMember, ClaimOutcome, OfferOutcome, SearchAd, Ticket};
use crate::ids::{Interest, RoomId, UserId};

/// How long a creator waits for member nodes to answer an offer.
pub const OFFER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a member node holds searches for an offer before it asks the store how
/// the offer ended (its confirm or abort may have been lost).
pub const HELD_CHECK: Duration = Duration::from_secs(5);
/// How soon an outcome the store could not answer is asked for again.
pub const DECIDE_RETRY: Duration = Duration::from_millis(500);
/// How long a search that lost a claim waits for the winner's offer.
pub const PARKED_TIMEOUT: Duration = Duration::from_secs(4);
/// Extra life of a replica past its origin's deadline, so the origin's own expiry
/// (and its removal event) always comes first.
pub const REPLICA_SLACK: Duration = Duration::from_secs(2);
/// Most remembered early-settled offers and overtaken tickets (oldest forgotten).
const MEMORY: usize = 1_024;

/// What the core needs of a local searcher's handle.
pub trait LocalLink {
    /// Whether the searcher can still be told about a match.
    fn alive(&self) -> bool;
}

/// Who a pool entry belongs to: a session on this node, or a replica of a search
/// waiting on another node (that node's ticket, so claims and offers can name it).
#[derive(Debug, Clone)]
pub enum Link<L> {
    Local(L),
    Remote { node: Arc<str>, ticket: Ticket },
}

impl<L: LocalLink> Link<L> {
    /// Remote searches count as alive: their own node answers for them when offered.
    pub fn alive(&self) -> bool {
        match self {
            Link::Local(l) => l.alive(),
            Link::Remote { .. } => true,
        }
    }
}

impl<L> Link<L> {
    fn is_local(&self) -> bool {
        matches!(self, Link::Local(_))
    }
}

/// Why a search is withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    Cancelled,
    Disconnected,
}

/// Why a search ended without a match (the `reason` label of the ended counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Cancelled,
    Disconnected,
    Timeout,
}

impl EndReason {
    pub fn label(self) -> &'static str {
        match self {
            EndReason::Cancelled => "cancelled",
            EndReason::Disconnected => "disconnected",
            EndReason::Timeout => "timeout",
        }
    }
}

impl From<CancelReason> for EndReason {
    fn from(r: CancelReason) -> Self {
        match r {
            CancelReason::Cancelled => EndReason::Cancelled,
            CancelReason::Disconnected => EndReason::Disconnected,
        }
    }
}

/// A local search arriving at the shard.
#[derive(Debug)]
pub struct LocalSearch<L> {
    pub ticket: Ticket,
    pub user: UserId,
    pub criteria: Criteria,
    pub joined: Instant,
    pub deadline: Instant,
    pub link: L,
    /// A roaming search moved here from another pool (see [`super::roaming`]): it
    /// is announced here, and already counted as searching.
    pub moved: bool,
}

/// Another node's search ad, with its wall-clock times already turned into
/// this process's `Instant`s (the caller owns the clock).
#[derive(Debug)]
pub struct RemoteSearch {
    pub ad: SearchAd,
    pub joined: Instant,
    pub deadline: Instant,
}

/// Member node: the creator claimed these local searches and asks to hold them.
#[derive(Debug)]
pub struct OfferReceived {
    /// The node that claimed the group and will open the room.
    pub creator: Arc<str>,
    /// The creator's offer id (unique per creator).
    pub offer: u64,
    /// Routes the reply back to the creator's shard.
    pub language: String,
    /// This node's members, by this node's tickets.
    pub members: Vec<OfferMember>,
}

/// Creator: a member node's answer to an offer.
#[derive(Debug)]
pub struct OfferAnswered {
    /// The member node answering.
    pub from: Arc<str>,
    pub offer: u64,
    /// Every named search is held there.
    pub ok: bool,
    /// The users it could not find (empty when `ok`).
    pub gone: Vec<UserId>,
}

/// The room a settled offer opened: its id, every member with its node, the shared
/// interests.
pub type SettledRoom = (RoomId, Vec<(UserId, Arc<str>)>, Vec<Interest>);

/// Member node: the offer's room exists (`Some`), or the match fell through
/// (`None`) and the held searches go back to the pool.
#[derive(Debug)]
pub struct OfferSettled {
    pub creator: Arc<str>,
    pub offer: u64,
    pub room: Option<SettledRoom>,
}

/// A local member of a match, with the handle that reaches its session.
#[derive(Debug)]
pub struct Matched<L> {
    pub user: UserId,
    pub ticket: Ticket,
    pub link: L,
}

/// What a search announces to the store and to other nodes (the caller turns it
/// into a [`SearchAd`] with wall-clock times).
#[derive(Debug, Clone)]
pub struct Announce {
    pub ticket: Ticket,
    pub user: UserId,
    pub criteria: Criteria,
    pub joined: Instant,
    pub deadline: Instant,
}

/// The offer a cross-node room settles (its room, as recorded), and the member
/// nodes that held for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    pub room: RoomId,
    pub offer: u64,
    pub language: String,
    pub nodes: Vec<Arc<str>>,
}

/// What the caller does on the core's behalf, in the order given.
#[derive(Debug)]
pub enum Effect<L> {
    /// Bridge: make this the user's one valid search and show it to every node.
    BeginSearch(Announce),
    /// Bridge: end the user's search if `ticket` is still the valid one.
    EndSearch { user: UserId, ticket: Ticket, language: Arc<str> },
    /// Bridge: claim these searches atomically; feed the result back to
    /// [`ShardCore::claim_result`] with `id`.
    Claim { id: u64, language: Arc<str>, members: Vec<ClaimMember> },
    /// Bridge: send an event to one node (`Offer`, `OfferReply`, `OfferAbort`).
    Send { node: Arc<str>, event: ClusterEvent },
    /// Supervisor: open a room for a claimed group (`confirm`: a cross-node one).
    OpenRoom {
        members: Vec<Matched<L>>,
        remote: Vec<(UserId, Arc<str>)>,
        shared: Vec<Interest>,
        confirm: Option<Confirm>,
    },
    /// Supervisor: another node opened this room for these local members.
    Settled {
        room_id: RoomId,
        members: Vec<Matched<L>>,
        all: Vec<(UserId, Arc<str>)>,
        shared: Vec<Interest>,
    },
    /// Bridge: record how `creator`'s offer `offer` in `pool` ends unless an
    /// outcome is recorded, and feed the recorded one back to
    /// [`ShardCore::decided`]. An opened room gets its id here, from the caller.
    Decide { creator: Arc<str>, offer: u64, pool: Arc<str>, proposal: Proposal },
    /// Session: the withdrawn search's pick fell through (`SearchCancelled`).
    Cancelled { link: L, ticket: Ticket },
    /// Session: the search's wait ran out (`SearchExpired`).
    Expired { link: L, ticket: Ticket },
    /// Gauge of local searches in progress, moved by this much.
    Searching(i64),
    /// A search ended without a match.
    Ended(EndReason),
    /// A claim lost a member to another claim, or an offer fell through.
    ClaimConflict,
    /// Another shard (or this one): a roaming search moves to the pool of
    /// `search.criteria.language` (its old pool's `EndSearch` came first).
    Move(LocalSearch<L>),
    /// A match was made here: the group size, its shared interests, the ladder
    /// step (or required score), each member's wait, its language (the pool it
    /// was made in) and the interests each pair of members shares.
    MatchMade {
        size: usize,
        shared: Vec<Interest>,
        step: usize,
        waits: Vec<Duration>,
        language: Arc<str>,
        pair_shared: Vec<usize>,
    },
}

/// What a shard proposes as the end of an offer ([`Effect::Decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proposal {
    /// The creator: a room of these members (with their nodes) sharing these
    /// interests.
    Open { members: Vec<(UserId, Arc<str>)>, shared: Vec<Interest> },
    /// A member node that heard nothing: nobody is matched.
    Abort,
}

/// A cross-node group this shard claimed, waiting for member nodes to hold theirs.
struct PendingOffer<L> {
    found: Match<Link<L>>,
    offered: Vec<Arc<str>>,
    waiting: HashSet<Arc<str>>,
    accepted: Vec<Arc<str>>,
    failed: bool,
}

/// An offer as a member node knows it: (creator node, the creator's offer id).
type OfferKey = (Arc<str>, u64);

/// The skip/block check between two users.
pub type Avoids = Box<dyn Fn(&UserId, &UserId) -> bool>;

/// Where a roaming search in (pool, group size) that roams so goes next, if
/// anywhere; `lone`: it is alone in its bucket and has not yet stayed its dwell
/// (see [`super::roaming::Directory::next_for`]).
pub type Elsewhere = Box<dyn Fn(&str, u8, Roam, bool) -> Option<Arc<str>>>;

/// One shard's pool, claims and offers.
pub struct ShardCore<L> {
    node: Arc<str>,
    /// Other nodes exist: a lost claim waits for the winner's offer (`parked`).
    clustered: bool,
    avoids: Avoids,
    pool: Pool<Link<L>>,
    /// Claims running, by claim id, with the group they would make.
    claims: HashMap<u64, Match<Link<L>>>,
    next_claim: u64,
    /// Tickets of the groups in `claims` (out of the pool).
    claiming: HashSet<Ticket>,
    /// Tickets cancelled while claimed, held, parked or offered.
    withdrawn: HashMap<Ticket, CancelReason>,
    /// Replicas: (origin node, origin ticket) → local ticket.
    remote: HashMap<(Arc<str>, Ticket), Ticket>,
    /// Offers made by this shard, by offer id.
    offers: HashMap<u64, PendingOffer<L>>,
    next_offer: u64,
    /// Local searches held for another node's offer: (creator, offer) → entries.
    held: HashMap<OfferKey, Vec<Entry<Link<L>>>>,
    /// Offers that named a search whose own claim was running; retried after it.
    deferred: Vec<OfferReceived>,
    /// Local searches that lost a claim to another node's, waiting for its offer.
    parked: HashMap<Ticket, Entry<Link<L>>>,
    /// Offers settled (aborted) before they were looked at here, newest last.
    settled_early: VecDeque<OfferKey>,
    /// Local tickets an offer named before their search reached this shard.
    overtaken: VecDeque<Ticket>,
    /// When offers made here give up on their member nodes.
    offer_timeouts: Timeouts<u64>,
    /// When held searches of an offer that was never settled ask for its outcome.
    held_timeouts: Timeouts<OfferKey>,
    /// Outcomes asked of the store and not yet answered, with what was proposed:
    /// this shard's own offers (creator) and held offers (member node).
    deciding: HashMap<OfferKey, (Arc<str>, Proposal)>,
    /// When an unanswered outcome is asked again.
    decide_retries: Timeouts<OfferKey>,
    /// When parked searches stop waiting for the winning claim's offer.
    parked_timeouts: Timeouts<Ticket>,
    /// Effects not yet taken by the caller.
    out: Vec<Effect<L>>,
    /// The pool changed since the caller last asked ([`ShardCore::take_pool_changed`]).
    pool_changed: bool,
    /// Roaming local searches waiting here, with when they came to this pool.
    roaming: HashMap<Ticket, Instant>,
    /// Roaming searches that left for another pool: (its language, the search's
    /// deadline), so a cancel sent here can follow them.
    moved_to: HashMap<Ticket, (Arc<str>, Instant)>,
    /// Where roaming searches may go; none: they stay.
    elsewhere: Option<Elsewhere>,
}

impl<L: LocalLink> ShardCore<L> {
    /// An empty shard of `node` matching under `policy`.
    pub fn new(node: Arc<str>, clustered: bool, policy: Policy, avoids: Avoids) -> Self {
        Self {
            node,
            clustered,
            avoids,
            pool: Pool::with_policy(policy),
            claims: HashMap::new(),
            next_claim: 1,
            claiming: HashSet::new(),
            withdrawn: HashMap::new(),
            remote: HashMap::new(),
            offers: HashMap::new(),
            next_offer: 1,
            held: HashMap::new(),
            deferred: Vec::new(),
            parked: HashMap::new(),
            settled_early: VecDeque::new(),
            overtaken: VecDeque::new(),
            offer_timeouts: Timeouts::new(OFFER_TIMEOUT),
            held_timeouts: Timeouts::new(HELD_CHECK),
            deciding: HashMap::new(),
            decide_retries: Timeouts::new(DECIDE_RETRY),
            parked_timeouts: Timeouts::new(PARKED_TIMEOUT),
            out: Vec::new(),
            pool_changed: false,
            roaming: HashMap::new(),
            moved_to: HashMap::new(),
            elsewhere: None,
        }
    }

    /// Number this shard's offers from `first` on. Offer ids name the recorded
    /// outcomes in the store, so a restarted node must not reuse its old ones: the
    /// caller starts each run somewhere random.
    pub fn with_first_offer(mut self, first: u64) -> Self {
        self.next_offer = first.max(1);
        self
    }

    /// Let roaming searches move to the pools `elsewhere` names.
    pub fn with_roaming(mut self, elsewhere: Elsewhere) -> Self {
        self.elsewhere = Some(elsewhere);
        self
    }

    /// The pool a roaming search left this one for, if it did.
    pub fn moved_to(&self, ticket: Ticket) -> Option<Arc<str>> {
        self.moved_to.get(&ticket).map(|(l, _)| l.clone())
    }

    /// The waiting pool (read-only: gauges, tests).
    pub fn pool(&self) -> &Pool<Link<L>> {
        &self.pool
    }

    /// The effects queued since the last call, in order.
    pub fn take_effects(&mut self) -> Vec<Effect<L>> {
        std::mem::take(&mut self.out)
    }

    /// Whether the pool changed since the last call (the caller reports its size).
    pub fn take_pool_changed(&mut self) -> bool {
        std::mem::take(&mut self.pool_changed)
    }

    // ---- inputs ----

    /// A local search arrives.
    pub fn enqueue(&mut self, s: LocalSearch<L>, now: Instant) {
        let entry = Entry {
            ticket: s.ticket,
            user: s.user,
            criteria: s.criteria,
            joined: s.joined,
            deadline: s.deadline,
            step: 0,
            link: Link::Local(s.link),
        };
        if s.moved {
            // Ended in its old pool by the shard that moved it: begin it here.
            self.moved_to.remove(&entry.ticket);
            self.out.push(Effect::BeginSearch(announce(&entry)));
        } else {
            self.out.push(Effect::Searching(1));
        }
        if entry.criteria.roam != Roam::Stays {
            self.roaming.insert(entry.ticket, now);
        }
        if let Some(at) = self.overtaken.iter().position(|t| *t == entry.ticket) {
            // Refused in an offer before it got here: its store entry is gone.
            self.overtaken.remove(at);
            self.out.push(Effect::BeginSearch(announce(&entry)));
        }
        let ticket = entry.ticket;
        self.arrive(entry, now);
        self.attempt(ticket, now);
    }

    /// The session withdraws its search. True when it was still waiting (and is
    /// now gone); false when a match (or expiry) is already on its way, or, if the
    /// pending pick falls through, `Cancelled`.
    pub fn cancel(&mut self, user: &UserId, ticket: Ticket, reason: CancelReason) -> bool {
        let waiting = self.pool.ticket_of(user) == Some(ticket)
            && self.pool.get(ticket).is_some_and(|e| e.link.is_local());
        if !waiting {
            let held = self.held.values().flatten().any(|e| e.ticket == ticket)
                || self.parked.contains_key(&ticket);
            let offered = self
                .offers
                .values()
                .flat_map(|p| &p.found.members)
                .any(|e| e.ticket == ticket && e.link.is_local());
            if self.claiming.contains(&ticket) || held || offered {
                self.withdrawn.insert(ticket, reason);
            }
            return false;
        }
        if let Some(e) = self.remove(ticket) {
            let language = e.criteria.language.clone();
            self.out.push(Effect::EndSearch { user: e.user, ticket, language });
        }
        self.out.push(Effect::Searching(-1));
        self.out.push(Effect::Ended(reason.into()));
        true
    }

    /// Another node announced a search. `next_ticket` gives the replica its local
    /// ticket (asked only when the replica is kept).
    pub fn remote_added(
        &mut self,
        r: RemoteSearch,
        next_ticket: impl FnOnce() -> Ticket,
        now: Instant,
    ) {
        let ad = r.ad;
        if ad.node == *self.node {
            return;
        }
        let node: Arc<str> = Arc::from(ad.node.as_str());
        // The origin re-announces (reconnect, requeue): one replica per search.
        if self.remote.contains_key(&(node.clone(), ad.ticket)) {
            return;
        }
        let user = UserId::from(ad.user);
        if let Some(t) = self.pool.ticket_of(&user) {
            if self.pool.get(t).is_some_and(|e| e.link.is_local()) {
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
            // Only the origin node moves a roaming search; here it is a search of
            // the pool it is in now.
            roam: Roam::Stays,
            language: Arc::from(ad.language),
            region: ad.region.map(Arc::from),
            group_size: ad.group_size,
        };
        let ticket = next_ticket();
        let entry = Entry {
            ticket,
            user,
            criteria,
            joined: r.joined,
            deadline: r.deadline + REPLICA_SLACK,
            step: 0,
            link: Link::Remote { node: node.clone(), ticket: ad.ticket },
        };
        self.arrive(entry, now);
        self.remote.insert((node, ad.ticket), ticket);
        self.attempt(ticket, now);
    }

    /// Searches on `node` left the pool (by that node's tickets).
    pub fn remote_removed(&mut self, node: &Arc<str>, tickets: &[Ticket]) {
        for t in tickets {
            if let Some(local) = self.remote.remove(&(node.clone(), *t)) {
                self.remove(local);
            }
        }
    }

    /// Forget every replica of `node` (it died or left), or of every node (`None`:
    /// the store was lost and replicas will be reloaded).
    pub fn remote_dropped(&mut self, node: Option<&Arc<str>>) {
        let doomed: Vec<((Arc<str>, Ticket), Ticket)> = self
            .remote
            .iter()
            .filter(|((n, _), _)| node.is_none_or(|want| want == n))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (key, local) in doomed {
            self.remote.remove(&key);
            self.remove(local);
        }
        debug!(node = ?node, "dropped replicas");
    }

    /// Announce every waiting local search again (after a reconnect).
    pub fn republish(&mut self) {
        let ads: Vec<Announce> =
            self.pool.iter().filter(|e| e.link.is_local()).map(announce).collect();
        self.out.extend(ads.into_iter().map(Effect::BeginSearch));
    }

    /// The claim started as [`Effect::Claim`] `id` ended.
    pub fn claim_result(
        &mut self,
        id: u64,
        outcome: Result<ClaimOutcome, BridgeError>,
        now: Instant,
    ) {
        let Some(found) = self.claims.remove(&id) else { return };
        for e in &found.members {
            self.claiming.remove(&e.ticket);
        }
        match outcome {
            Ok(ClaimOutcome::Claimed) => {
                for e in &found.members {
                    self.forget_replica(e);
                }
                if found.members.iter().all(|e| e.link.is_local()) {
                    self.deliver(found, now);
                } else {
                    self.offer(found, now);
                }
            }
            Ok(ClaimOutcome::Lost(lost)) => {
                self.out.push(Effect::ClaimConflict);
                let (gone, keep): (Vec<_>, Vec<_>) =
                    found.members.into_iter().partition(|e| lost.contains(&e.user));
                for e in gone {
                    self.forget_replica(&e);
                    if e.link.is_local() {
                        self.park(e, now);
                    }
                }
                self.requeue(keep, false, now);
            }
            Err(e) => {
                warn!(error = %e, "claim failed; members go back to the pool");
                self.requeue(found.members, false, now);
            }
        }
        self.retry_deferred(now);
    }

    /// Member node: hold the offered local searches if every one still waits here,
    /// and answer the creator.
    pub fn offer_received(&mut self, msg: OfferReceived, now: Instant) {
        if msg.members.iter().any(|m| self.claiming.contains(&m.ticket)) {
            // Our own claim of one of them is running; it will lose (the creator's
            // claim won) and then this offer is looked at again.
            self.deferred.push(msg);
            return;
        }
        // A ticket this shard has never seen: the offer overtook the search's own
        // `EnqueueSearch` (the ad reached the other node first). The creator's claim
        // ended that search in the store, so it is announced again when it arrives.
        for m in &msg.members {
            let known = self.pool.contains(m.ticket)
                || self.parked.contains_key(&m.ticket)
                || self.held.values().flatten().any(|e| e.ticket == m.ticket);
            if !known {
                remember(&mut self.overtaken, m.ticket);
            }
        }
        let ours = |e: &Entry<Link<L>>, m: &OfferMember| {
            e.user.as_str() == m.user && e.link.is_local() && e.link.alive()
        };
        let present = |m: &OfferMember| {
            self.pool
                .get(m.ticket)
                .or_else(|| self.parked.get(&m.ticket))
                .is_some_and(|e| ours(e, m))
        };
        let over = self.settled_early.contains(&(msg.creator.clone(), msg.offer));
        let gone: Vec<String> =
            msg.members.iter().filter(|m| over || !present(m)).map(|m| m.user.clone()).collect();
        let ok = gone.is_empty();
        let mut entries = Vec::new();
        for m in &msg.members {
            let e = match self.remove(m.ticket) {
                Some(e) => Some(e),
                None => {
                    self.parked_timeouts.disarm(&m.ticket);
                    self.parked.remove(&m.ticket)
                }
            };
            entries.extend(e);
        }
        if ok {
            let key = (msg.creator.clone(), msg.offer);
            self.held.insert(key.clone(), entries);
            // A creator that dies before it confirms must not keep them forever.
            self.held_timeouts.arm(key, now);
        } else {
            // The creator's claim ended these searches in the store; announce the
            // ones still here again so the next claim can take them.
            for e in entries {
                self.out.push(Effect::BeginSearch(announce(&e)));
                self.insert(e, now);
            }
        }
        let event = ClusterEvent::OfferReply {
            from: self.node.to_string(),
            offer: msg.offer,
            language: msg.language,
            ok,
            gone,
        };
        self.out.push(Effect::Send { node: msg.creator, event });
    }

    /// Creator: a member node answered one of this shard's offers.
    pub fn offer_answered(&mut self, msg: OfferAnswered, now: Instant) {
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
            self.settle(msg.offer, now);
        }
    }

    /// Member node: the creator confirmed the room or aborted the offer.
    pub fn offer_settled(&mut self, msg: OfferSettled, now: Instant) {
        let key = (msg.creator, msg.offer);
        self.held_timeouts.disarm(&key);
        // The creator's word settles it; an outcome asked of the store meanwhile is
        // the same one (the creator recorded it first) and is ignored when it comes.
        self.deciding.remove(&key);
        self.decide_retries.disarm(&key);
        let Some(entries) = self.held.remove(&key) else {
            // Settled before this node held anything (the offer is deferred behind a
            // running claim, or still on its way): an offer that comes later is over.
            self.deferred.retain(|d| (d.creator.clone(), d.offer) != key);
            remember(&mut self.settled_early, key);
            return;
        };
        self.settle_held(entries, msg.room, now);
    }

    /// Member node: the held searches of an offer are matched in `room`, or (none)
    /// go back to the pool.
    fn settle_held(
        &mut self,
        entries: Vec<Entry<Link<L>>>,
        room: Option<SettledRoom>,
        now: Instant,
    ) {
        match room {
            Some((room_id, all, shared)) => {
                let mut members = Vec::with_capacity(entries.len());
                for e in entries {
                    self.withdrawn.remove(&e.ticket);
                    self.out.push(Effect::Searching(-1));
                    if let Link::Local(link) = e.link {
                        members.push(Matched { user: e.user, ticket: e.ticket, link });
                    }
                }
                self.out.push(Effect::Settled { room_id, members, all, shared });
            }
            None => self.requeue(entries, true, now),
        }
    }

    /// The store answered [`Effect::Decide`] for `creator`'s offer `offer`: how it
    /// ended, or (an error) that the answer is unknown and must be asked again.
    pub fn decided(
        &mut self,
        creator: Arc<str>,
        offer: u64,
        outcome: Result<OfferOutcome, BridgeError>,
        now: Instant,
    ) {
        let key = (creator, offer);
        if !self.deciding.contains_key(&key) {
            // Settled meanwhile by the creator's own word.
            return;
        }
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                // Every 500 ms per offer while the store is away: not a warning each.
                debug!(offer, creator = %key.0, error = %e, "offer outcome unknown; asking again");
                self.decide_retries.arm(key, now);
                return;
            }
        };
        self.deciding.remove(&key);
        let room = match outcome {
            OfferOutcome::Opened { room, members, shared } => Some((room, members, shared)),
            OfferOutcome::Aborted => None,
        };
        if key.0 == self.node {
            match room {
                Some((room, _, _)) => self.open_offer(offer, room, now),
                None => self.abort_offer(offer, now),
            }
        } else if let Some(entries) = self.held.remove(&key) {
            warn!(offer, creator = %key.0, opened = room.is_some(), "held offer settled by its recorded outcome");
            self.settle_held(entries, room, now);
        }
    }

    /// Ask the store for the outcome of `key` (see [`Effect::Decide`]).
    fn decide(&mut self, key: OfferKey, pool: Arc<str>, proposal: Proposal) {
        let (creator, offer) = key.clone();
        self.out.push(Effect::Decide {
            creator,
            offer,
            pool: pool.clone(),
            proposal: proposal.clone(),
        });
        self.deciding.insert(key, (pool, proposal));
    }

    /// Move roaming searches that are alone in their bucket, or have stayed
    /// [`super::roaming::DWELL`] without a match, to the next pool with searches.
    fn roam(&mut self, now: Instant) {
        let Some(elsewhere) = &self.elsewhere else { return };
        if self.roaming.is_empty() {
            return;
        }
        let mut moves = Vec::new();
        let (pool, claiming) = (&self.pool, &self.claiming);
        self.roaming.retain(|t, since| {
            let Some(e) = pool.get(*t) else {
                // Being claimed: it may come back. Matched or gone: forget it.
                return claiming.contains(t);
            };
            let c = &e.criteria;
            let alone = pool.bucket_len(&c.language, c.group_size) <= 1;
            let dwelt = now.saturating_duration_since(*since) >= super::roaming::dwell(c.roam);
            if alone || dwelt {
                if let Some(to) = elsewhere(&c.language, c.group_size, c.roam, alone && !dwelt) {
                    moves.push((*t, to));
                    return false;
                }
            }
            true
        });
        for (ticket, to) in moves {
            let Some(e) = self.remove(ticket) else { continue };
            let Link::Local(link) = e.link else { continue };
            let from = e.criteria.language.clone();
            debug!(ticket, %from, %to, "roaming search moves");
            self.out.push(Effect::EndSearch { user: e.user.clone(), ticket, language: from });
            self.moved_to.insert(ticket, (to.clone(), e.deadline));
            let criteria = Criteria { language: to, ..e.criteria };
            self.out.push(Effect::Move(LocalSearch {
                ticket,
                user: e.user,
                criteria,
                joined: e.joined,
                deadline: e.deadline,
                link,
                moved: true,
            }));
        }
    }

    /// End the offers, holds and parks whose time is up.
    pub fn sweep(&mut self, now: Instant) {
        self.moved_to.retain(|_, (_, deadline)| *deadline > now);
        for ticket in self.parked_timeouts.expired(now) {
            if let Some(e) = self.parked.remove(&ticket) {
                debug!(ticket, "no offer came for a lost claim; back to the pool");
                self.requeue(vec![e], true, now);
            }
        }
        for id in self.offer_timeouts.expired(now) {
            if let Some(p) = self.offers.get_mut(&id) {
                warn!(offer = id, waiting = ?p.waiting, "offer timed out");
                p.failed = true;
                p.waiting.clear();
                self.settle(id, now);
            }
        }
        for key in self.held_timeouts.expired(now) {
            let pool = match self.held.get(&key).map(|es| es.first()) {
                Some(Some(e)) => e.criteria.language.clone(),
                // Nothing of ours in it (never so for an offer held here): over.
                Some(None) => {
                    self.held.remove(&key);
                    continue;
                }
                None => continue,
            };
            warn!(offer = key.1, creator = %key.0, "offer not settled; asking the store");
            self.decide(key, pool, Proposal::Abort);
        }
        for key in self.decide_retries.expired(now) {
            if let Some((pool, proposal)) = self.deciding.get(&key).cloned() {
                self.decide(key, pool, proposal);
            }
        }
    }

    /// Expire searches past their deadline and retry those whose ladder step grew.
    pub fn tick(&mut self, now: Instant) {
        if self.pool.is_empty() {
            return;
        }
        let avoids = &self.avoids;
        let out = self.pool.tick(now, |a, b| avoids(a, b), Link::alive);
        self.pool_changed = true;
        for e in out.expired {
            match e.link {
                Link::Local(link) => {
                    let language = e.criteria.language.clone();
                    self.out.push(Effect::EndSearch { user: e.user, ticket: e.ticket, language });
                    self.out.push(Effect::Searching(-1));
                    self.out.push(Effect::Ended(EndReason::Timeout));
                    self.out.push(Effect::Expired { link, ticket: e.ticket });
                }
                Link::Remote { node, ticket } => {
                    self.remote.remove(&(node, ticket));
                }
            }
        }
        for found in out.matches {
            self.claim(found);
        }
        self.roam(now);
    }

    // ---- steps ----

    /// Add an entry to the pool. A user waits at most once: the same user's entry
    /// it displaces is gone (a local one stops counting, a replica is forgotten).
    fn insert(&mut self, e: Entry<Link<L>>, now: Instant) {
        self.pool_changed = true;
        if let Some(old) = self.pool.insert(e, now) {
            self.displaced(old);
        }
    }

    /// Add a new search: counted in its bucket's arrivals, then as [`Self::insert`].
    fn arrive(&mut self, e: Entry<Link<L>>, now: Instant) {
        self.pool_changed = true;
        if let Some(old) = self.pool.arrive(e, now) {
            self.displaced(old);
        }
    }

    fn displaced(&mut self, old: Entry<Link<L>>) {
        match &old.link {
            // The same user's older search, from a session that was replaced.
            Link::Local(_) => self.out.push(Effect::Searching(-1)),
            Link::Remote { .. } => self.forget_replica(&old),
        }
    }

    fn remove(&mut self, ticket: Ticket) -> Option<Entry<Link<L>>> {
        let e = self.pool.remove(ticket);
        self.pool_changed |= e.is_some();
        e
    }

    /// Try to complete a group for `ticket`; claim it if one is found.
    fn attempt(&mut self, ticket: Ticket, now: Instant) {
        let avoids = &self.avoids;
        if let Some(found) = self.pool.try_match(ticket, now, |a, b| avoids(a, b), Link::alive) {
            self.pool_changed = true;
            self.claim(found);
        }
    }

    /// Confirm a group through the bridge. Members are out of the pool while the
    /// claim runs, so no other search can pick them.
    fn claim(&mut self, found: Match<Link<L>>) {
        let members = found
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
        let id = self.next_claim;
        self.next_claim += 1;
        let language = found.members[0].criteria.language.clone();
        self.out.push(Effect::Claim { id, language, members });
        self.claims.insert(id, found);
    }

    /// A local search that lost a claim because another claim took it: in a
    /// cluster, that claim's offer is on its way, so the search waits out of the
    /// pool for it. If no offer comes, it goes back to the pool (announced again).
    fn park(&mut self, e: Entry<Link<L>>, now: Instant) {
        if !self.clustered {
            // One node: the only other claim is a newer search of the same user.
            self.withdrawn.remove(&e.ticket);
            self.out.push(Effect::Searching(-1));
            return;
        }
        let ticket = e.ticket;
        if let Some(at) = self.overtaken.iter().position(|t| *t == ticket) {
            // The claim that took it was already refused here: no offer will come.
            self.overtaken.remove(at);
            return self.requeue(vec![e], true, now);
        }
        self.parked.insert(ticket, e);
        self.parked_timeouts.arm(ticket, now);
    }

    fn forget_replica(&mut self, e: &Entry<Link<L>>) {
        if let Link::Remote { node, ticket } = &e.link {
            self.remote.remove(&(node.clone(), *ticket));
        }
    }

    /// The metrics of a match made here (the creator counts it once).
    fn count_match(&mut self, found: &Match<Link<L>>, now: Instant) {
        let members = &found.members;
        let mut pair_shared = Vec::with_capacity(members.len() * (members.len() - 1) / 2);
        for (i, a) in members.iter().enumerate() {
            for b in &members[i + 1..] {
                let (x, y) = (&a.criteria.interests, &b.criteria.interests);
                pair_shared.push(x.iter().filter(|i| y.binary_search(i).is_ok()).count());
            }
        }
        self.out.push(Effect::MatchMade {
            size: members.len(),
            shared: found.shared.clone(),
            step: found.step,
            waits: members.iter().map(|e| now.saturating_duration_since(e.joined)).collect(),
            language: members[0].criteria.language.clone(),
            pair_shared,
        });
    }

    /// A claimed all-local group: hand it to the supervisor, unless a member vanished
    /// since the pick, in which case the others return to the pool at their old place.
    fn deliver(&mut self, found: Match<Link<L>>, now: Instant) {
        let (alive, gone): (Vec<_>, Vec<_>) =
            found.members.into_iter().partition(|e| e.link.alive());
        if !gone.is_empty() {
            for e in &gone {
                self.withdrawn.remove(&e.ticket);
            }
            self.out.push(Effect::Searching(-(gone.len() as i64)));
            return self.requeue(alive, true, now);
        }
        let found = Match { members: alive, shared: found.shared, step: found.step };
        self.count_match(&found, now);
        self.out.push(Effect::Searching(-(found.members.len() as i64)));
        let mut members = Vec::with_capacity(found.members.len());
        for e in found.members {
            // A cancel that lost the race to this match is answered by `match_found`.
            self.withdrawn.remove(&e.ticket);
            if let Link::Local(link) = e.link {
                members.push(Matched { user: e.user, ticket: e.ticket, link });
            }
        }
        self.out.push(Effect::OpenRoom {
            members,
            remote: Vec::new(),
            shared: found.shared,
            confirm: None,
        });
    }

    /// Ask every member node of a claimed cross-node group to hold its searches.
    fn offer(&mut self, found: Match<Link<L>>, now: Instant) {
        let id = self.next_offer;
        self.next_offer += 1;
        let language = found.members[0].criteria.language.to_string();
        // In first-seen order (a group is a handful of members).
        let mut by_node: Vec<(Arc<str>, Vec<OfferMember>)> = Vec::new();
        for e in &found.members {
            if let Link::Remote { node, ticket } = &e.link {
                let m = OfferMember { user: e.user.to_string(), ticket: *ticket };
                match by_node.iter_mut().find(|(n, _)| n == node) {
                    Some((_, ms)) => ms.push(m),
                    None => by_node.push((node.clone(), vec![m])),
                }
            }
        }
        let mut offered = Vec::with_capacity(by_node.len());
        for (node, members) in by_node {
            let event = ClusterEvent::Offer {
                creator: self.node.to_string(),
                offer: id,
                language: language.clone(),
                members,
            };
            self.out.push(Effect::Send { node: node.clone(), event });
            offered.push(node);
        }
        let waiting = offered.iter().cloned().collect();
        self.offers.insert(
            id,
            PendingOffer { found, offered, waiting, accepted: Vec::new(), failed: false },
        );
        self.offer_timeouts.arm(id, now);
    }

    /// Every member node answered (or the offer timed out): record the room, or put
    /// everyone back.
    fn settle(&mut self, id: u64, now: Instant) {
        let Some(p) = self.offers.get(&id) else { return };
        self.offer_timeouts.disarm(&id);
        let locals_alive = p.found.members.iter().all(|e| e.link.alive());
        if p.failed || !locals_alive {
            return self.abort_offer(id, now);
        }
        let members = p
            .found
            .members
            .iter()
            .map(|e| {
                let node = match &e.link {
                    Link::Local(_) => self.node.clone(),
                    Link::Remote { node, .. } => node.clone(),
                };
                (e.user.clone(), node)
            })
            .collect();
        let proposal = Proposal::Open { members, shared: p.found.shared.clone() };
        let pool = p.found.members[0].criteria.language.clone();
        self.decide((self.node.clone(), id), pool, proposal);
    }

    /// The room of offer `id` is recorded as `room`: open it and tell everyone.
    fn open_offer(&mut self, id: u64, room: RoomId, now: Instant) {
        let Some(p) = self.offers.remove(&id) else { return };
        let language = p.found.members[0].criteria.language.to_string();
        self.count_match(&p.found, now);
        let mut members = Vec::new();
        let mut remote = Vec::new();
        for e in p.found.members {
            match e.link {
                Link::Local(link) => {
                    self.withdrawn.remove(&e.ticket);
                    self.out.push(Effect::Searching(-1));
                    members.push(Matched { user: e.user, ticket: e.ticket, link });
                }
                Link::Remote { node, .. } => remote.push((e.user, node)),
            }
        }
        let confirm = Confirm { room, offer: id, language, nodes: p.accepted };
        self.out.push(Effect::OpenRoom {
            members,
            remote,
            shared: p.found.shared,
            confirm: Some(confirm),
        });
    }

    /// Offer `id` is over without a match: tell every offered node, put the local
    /// members back.
    fn abort_offer(&mut self, id: u64, now: Instant) {
        let Some(p) = self.offers.remove(&id) else { return };
        self.offer_timeouts.disarm(&id);
        let language = p.found.members[0].criteria.language.to_string();
        self.out.push(Effect::ClaimConflict);
        // Every node offered, answered or not: one that answers late must not hold
        // its members for an offer that is over.
        for node in p.offered {
            let event = ClusterEvent::OfferAbort {
                creator: self.node.to_string(),
                offer: id,
                language: language.clone(),
            };
            self.out.push(Effect::Send { node, event });
        }
        // Remote members come back as replicas when their nodes re-announce them.
        let (alive, gone): (Vec<_>, Vec<_>) =
            p.found.members.into_iter().filter(|e| e.link.is_local()).partition(|e| e.link.alive());
        for e in &gone {
            self.withdrawn.remove(&e.ticket);
        }
        if !gone.is_empty() {
            self.out.push(Effect::Searching(-(gone.len() as i64)));
        }
        self.requeue(alive, true, now);
    }

    /// Put entries back with their original ticket and arrival time, then retry them.
    /// `reclaim` re-registers local searches the claim had already ended.
    fn requeue(&mut self, entries: Vec<Entry<Link<L>>>, reclaim: bool, now: Instant) {
        let mut tickets = Vec::with_capacity(entries.len());
        for e in entries {
            if let Some(reason) = self.withdrawn.remove(&e.ticket) {
                // Cancelled while its pick was being claimed: end it here, since the
                // session was told a match was on its way (`NotWaiting`).
                if !reclaim {
                    let language = e.criteria.language.clone();
                    self.out.push(Effect::EndSearch { user: e.user, ticket: e.ticket, language });
                }
                self.out.push(Effect::Searching(-1));
                self.out.push(Effect::Ended(reason.into()));
                if let Link::Local(link) = e.link {
                    self.out.push(Effect::Cancelled { link, ticket: e.ticket });
                }
                continue;
            }
            match &e.link {
                Link::Local(_) if reclaim => self.out.push(Effect::BeginSearch(announce(&e))),
                Link::Local(_) => {}
                Link::Remote { node, ticket } => {
                    self.remote.insert((node.clone(), *ticket), e.ticket);
                }
            }
            tickets.push(e.ticket);
            self.insert(e, now);
        }
        for t in tickets {
            if self.pool.contains(t) {
                self.attempt(t, now);
            }
        }
    }

    fn retry_deferred(&mut self, now: Instant) {
        for msg in std::mem::take(&mut self.deferred) {
            self.offer_received(msg, now);
        }
    }
}

#[cfg(test)]
impl<L: LocalLink> ShardCore<L> {
    /// Panic unless the state is consistent: each ticket in at most one place,
    /// `claiming` is exactly the claims' tickets, every replica is waiting or being
    /// claimed, and each timeout belongs to what it guards.
    pub(crate) fn check(&self) {
        let mut seen: HashMap<Ticket, &str> = HashMap::new();
        let mut put = |t: Ticket, place: &'static str| {
            if let Some(before) = seen.insert(t, place) {
                panic!("ticket {t} is in {before} and in {place}");
            }
        };
        self.pool.iter().for_each(|e| put(e.ticket, "pool"));
        self.claims.values().flat_map(|m| &m.members).for_each(|e| put(e.ticket, "claims"));
        self.offers.values().flat_map(|p| &p.found.members).for_each(|e| put(e.ticket, "offers"));
        self.held.values().flatten().for_each(|e| put(e.ticket, "held"));
        self.parked.values().for_each(|e| put(e.ticket, "parked"));
        let claimed: HashSet<Ticket> =
            self.claims.values().flat_map(|m| &m.members).map(|e| e.ticket).collect();
        assert_eq!(self.claiming, claimed, "claiming is the claims' tickets");
        for ((node, origin), local) in &self.remote {
            let link = self
                .pool
                .get(*local)
                .or_else(|| {
                    self.claims.values().flat_map(|m| &m.members).find(|e| e.ticket == *local)
                })
                .map(|e| &e.link);
            assert!(
                matches!(link, Some(Link::Remote { node: n, ticket }) if n == node && ticket == origin),
                "replica ({node}, {origin}) → {local} is neither waiting nor claimed"
            );
        }
        for e in self.held.values().flatten().chain(self.parked.values()) {
            assert!(e.link.is_local(), "only local searches are held or parked");
        }
        assert_eq!(self.parked_timeouts.len(), self.parked.len(), "a timeout per parked search");
        let deciding_mine = self.deciding.keys().filter(|(c, _)| *c == self.node).count();
        let deciding_held = self.deciding.len() - deciding_mine;
        assert_eq!(
            self.held_timeouts.len() + deciding_held,
            self.held.len(),
            "a held offer waits for its timeout or for its outcome"
        );
        assert_eq!(
            self.offer_timeouts.len() + deciding_mine,
            self.offers.len(),
            "an offer waits for its answers or for its outcome"
        );
        for (creator, offer) in self.deciding.keys() {
            if *creator == self.node {
                assert!(self.offers.contains_key(offer), "deciding offer {offer} is an offer");
            } else {
                assert!(self.held.contains_key(&(creator.clone(), *offer)), "deciding held offer");
            }
        }
    }

    /// Local searches anywhere in the shard (what the `searching` gauge counts).
    pub(crate) fn local_searches(&self) -> usize {
        let pool = self.pool.iter();
        let claims = self.claims.values().flat_map(|m| &m.members);
        let offers = self.offers.values().flat_map(|p| &p.found.members);
        let held = self.held.values().flatten();
        let parked = self.parked.values();
        pool.chain(claims)
            .chain(offers)
            .chain(held)
            .chain(parked)
            .filter(|e| e.link.is_local())
            .count()
    }

    pub(crate) fn is_parked(&self, ticket: Ticket) -> bool {
        self.parked.contains_key(&ticket)
    }

    pub(crate) fn is_held(&self, ticket: Ticket) -> bool {
        self.held.values().flatten().any(|e| e.ticket == ticket)
    }

    pub(crate) fn is_withdrawn(&self, ticket: Ticket) -> bool {
        self.withdrawn.contains_key(&ticket)
    }
}

fn announce<L>(e: &Entry<L>) -> Announce {
    Announce {
        ticket: e.ticket,
        user: e.user.clone(),
        criteria: e.criteria.clone(),
        joined: e.joined,
        deadline: e.deadline,
    }
}

/// Append to a bounded memory, forgetting the oldest.
fn remember<T>(memory: &mut VecDeque<T>, item: T) {
    if memory.len() >= MEMORY {
        memory.pop_front();
    }
    memory.push_back(item);
}

#[cfg(test)]
mod tests;
