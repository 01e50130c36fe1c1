//! Unit tests of the shard core: each race the multi-process tests once found,
//! replayed as a few events on one core (node `a`), with the state checked after
//! every step. Microseconds each; no actors, no Redis, no clock.

use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::config::LadderStep;

/// A local searcher whose session can die.
#[derive(Debug, Clone)]
struct Fake {
    alive: Arc<AtomicBool>,
}

impl LocalLink for Fake {
    fn alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }
}

impl Fake {
    fn kill(&self) {
        self.alive.store(false, Ordering::Relaxed);
    }
}

type Fx = Vec<Effect<Fake>>;

/// A core, the start of time, and a ticket counter for replicas.
struct World {
    core: ShardCore<Fake>,
    t0: Instant,
    /// The time every input is given.
    now: Instant,
    next_ticket: Ticket,
}

fn ladder() -> Vec<LadderStep> {
    vec![LadderStep { after_ms: 0, same_region: false, min_shared: 1 }]
}

fn world(clustered: bool) -> World {
    let policy = crate::matching::policy::Policy::Ladder(ladder());
    let core = ShardCore::new(Arc::from("a"), clustered, policy, Box::new(|_, _| false));
    let t0 = Instant::now();
    World { core, t0, now: t0, next_ticket: 1_000 }
}

fn criteria(size: u8) -> Criteria {
    Criteria {
        interests: vec![Interest::from("chess")],
        language: Arc::from("en"),
        roam: Roam::Stays,
        region: None,
        group_size: size,
    }
}

fn uid(u: &str) -> UserId {
    UserId::from(u)
}

impl World {
    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Effects of the last input, after checking the state.
    fn fx(&mut self) -> Fx {
        self.core.check();
        self.core.take_effects()
    }

    fn local_sized(&mut self, ticket: Ticket, user: &str, size: u8) -> (Fake, Fx) {
        let link = Fake { alive: Arc::new(AtomicBool::new(true)) };
        let search = LocalSearch {
            ticket,
            user: uid(user),
            criteria: criteria(size),
            joined: self.t0,
            deadline: self.at(60_000),
            link: link.clone(),
            moved: false,
        };
        self.core.enqueue(search, self.now);
        (link, self.fx())
    }

    fn local(&mut self, ticket: Ticket, user: &str) -> (Fake, Fx) {
        self.local_sized(ticket, user, 2)
    }

    fn replica_sized(&mut self, node: &str, ticket: Ticket, user: &str, size: u8) -> Fx {
        let ad = SearchAd {
            node: node.into(),
            ticket,
            user: user.into(),
            language: "en".into(),
            interests: vec!["chess".into()],
            region: None,
            group_size: size,
            joined_ms: 0,
            deadline_ms: 60_000,
        };
        let r = RemoteSearch { ad, joined: self.t0, deadline: self.at(60_000) };
        let next = &mut self.next_ticket;
        self.core.remote_added(
            r,
            || {
                *next += 1;
                *next
            },
            self.now,
        );
        self.fx()
    }

    fn replica(&mut self, node: &str, ticket: Ticket, user: &str) -> Fx {
        self.replica_sized(node, ticket, user, 2)
    }

    fn claim_result(&mut self, id: u64, outcome: Result<ClaimOutcome, BridgeError>) -> Fx {
        self.core.claim_result(id, outcome, self.now);
        self.fx()
    }

    fn offer(&mut self, creator: &str, offer: u64, members: &[(&str, Ticket)]) -> Fx {
        let members =
            members.iter().map(|(u, t)| OfferMember { user: (*u).into(), ticket: *t }).collect();
        let msg =
            OfferReceived { creator: Arc::from(creator), offer, language: "en".into(), members };
        self.core.offer_received(msg, self.now);
        self.fx()
    }

    fn answer(&mut self, from: &str, offer: u64, ok: bool) -> Fx {
        let msg = OfferAnswered { from: Arc::from(from), offer, ok, gone: Vec::new() };
        self.core.offer_answered(msg, self.now);
        self.fx()
    }

    fn settle(&mut self, creator: &str, offer: u64, room: bool) -> Fx {
        let room = room.then(|| (RoomId::from("r1"), seats(creator), Vec::new()));
        self.core
            .offer_settled(OfferSettled { creator: Arc::from(creator), offer, room }, self.now);
        self.fx()
    }

    /// The store answers the outcome of `creator`'s offer `offer`.
    fn decided(
        &mut self,
        creator: &str,
        offer: u64,
        outcome: Result<OfferOutcome, BridgeError>,
    ) -> Fx {
        self.core.decided(Arc::from(creator), offer, outcome, self.now);
        self.fx()
    }

    fn sweep(&mut self, after: Duration) -> Fx {
        self.core.sweep(self.now + after);
        self.fx()
    }

    fn waiting(&self, ticket: Ticket) -> bool {
        self.core.pool().contains(ticket)
    }
}

/// The seats of the rooms these tests settle: `u1` here (node `a`), `x` on the
/// creator's node.
fn seats(creator: &str) -> Vec<(UserId, Arc<str>)> {
    vec![(uid("u1"), Arc::from("a")), (uid("x"), Arc::from(creator))]
}

/// A recorded opened outcome for the room of [`seats`].
fn opened(creator: &str) -> OfferOutcome {
    OfferOutcome::Opened { room: RoomId::from("r1"), members: seats(creator), shared: Vec::new() }
}

// ---- what effects say ----

/// The one outcome asked of the store: (creator, offer, proposal).
fn decide_of(fx: &Fx) -> (String, u64, Proposal) {
    let asked: Vec<_> = fx
        .iter()
        .filter_map(|f| match f {
            Effect::Decide { creator, offer, proposal, .. } => {
                Some((creator.to_string(), *offer, proposal.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(asked.len(), 1, "one outcome asked in {fx:?}");
    asked.into_iter().next().expect("one")
}

fn claim_of(fx: &Fx) -> (u64, Vec<ClaimMember>) {
    let claims: Vec<_> = fx
        .iter()
        .filter_map(|f| match f {
            Effect::Claim { id, members, .. } => Some((*id, members.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(claims.len(), 1, "one claim in {fx:?}");
    claims.into_iter().next().unwrap_or_default()
}

fn sent(fx: &Fx) -> Vec<(&str, &ClusterEvent)> {
    fx.iter()
        .filter_map(|f| match f {
            Effect::Send { node, event } => Some((&**node, event)),
            _ => None,
        })
        .collect()
}

/// The one `OfferReply` sent: (to, ok, gone).
fn reply(fx: &Fx) -> (&str, bool, Vec<String>) {
    match sent(fx).as_slice() {
        [(to, ClusterEvent::OfferReply { ok, gone, .. })] => (to, *ok, gone.clone()),
        other => panic!("expected one reply, got {other:?}"),
    }
}

fn aborted_nodes(fx: &Fx) -> Vec<&str> {
    sent(fx)
        .into_iter()
        .filter(|(_, e)| matches!(e, ClusterEvent::OfferAbort { .. }))
        .map(|(n, _)| n)
        .collect()
}

fn offer_id(fx: &Fx) -> u64 {
    let ids: Vec<u64> = sent(fx)
        .into_iter()
        .filter_map(|(_, e)| match e {
            ClusterEvent::Offer { offer, .. } => Some(*offer),
            _ => None,
        })
        .collect();
    assert!(!ids.is_empty(), "an offer in {fx:?}");
    ids[0]
}

fn announced(fx: &Fx) -> Vec<Ticket> {
    fx.iter()
        .filter_map(|f| match f {
            Effect::BeginSearch(a) => Some(a.ticket),
            _ => None,
        })
        .collect()
}

fn cancelled(fx: &Fx) -> Vec<Ticket> {
    fx.iter()
        .filter_map(|f| match f {
            Effect::Cancelled { ticket, .. } => Some(*ticket),
            _ => None,
        })
        .collect()
}

fn room_members(fx: &Fx) -> Option<Vec<Ticket>> {
    fx.iter().find_map(|f| match f {
        Effect::OpenRoom { members, .. } | Effect::Settled { members, .. } => {
            Some(members.iter().map(|m| m.ticket).collect())
        }
        _ => None,
    })
}

fn searching(fx: &Fx) -> i64 {
    fx.iter().map(|f| if let Effect::Searching(n) = f { *n } else { 0 }).sum()
}

/// A cancel lost the race: the match answers it, and nothing is left withdrawn.
fn match_wins(w: &World, fx: &Fx, tickets: &[Ticket]) {
    assert_eq!(room_members(fx).as_deref(), Some(tickets), "match_found answers the cancel");
    assert!(cancelled(fx).is_empty());
    assert!(tickets.iter().all(|t| !w.core.is_withdrawn(*t)));
}

/// A cancel won: the pick fell through, the session hears `SearchCancelled`, and
/// the search is neither announced again nor waiting.
fn cancel_wins(w: &World, fx: &Fx, ticket: Ticket) {
    assert_eq!(cancelled(fx), vec![ticket]);
    assert!(!announced(fx).contains(&ticket), "a cancelled search is not announced again");
    assert!(!w.waiting(ticket));
}

fn has(fx: &Fx, want: impl Fn(&Effect<Fake>) -> bool) -> bool {
    fx.iter().any(want)
}

/// Local `u1` (ticket 1) picks the replica of `b`'s `u2` (b's ticket 20): the
/// claim runs. Returns the claim id.
fn cross_pair(w: &mut World) -> u64 {
    let (_, fx) = w.local(1, "u1");
    assert!(fx.iter().all(|f| !matches!(f, Effect::Claim { .. })));
    let fx = w.replica("b", 20, "u2");
    claim_of(&fx).0
}

/// Local `u1` (ticket 1) and `u2` (ticket 2) pair up: the claim runs. Returns
/// u2's link and the claim id.
fn local_pair(w: &mut World) -> (Fake, u64) {
    w.local(1, "u1");
    let (u2, fx) = w.local(2, "u2");
    (u2, claim_of(&fx).0)
}

// ---- single node ----

#[test]
fn a_local_pair_is_claimed_then_opens_a_room() {
    let mut w = world(false);
    let (_, fx) = w.local(1, "u1");
    assert_eq!(searching(&fx), 1);
    let (_, fx) = w.local(2, "u2");
    let (id, members) = claim_of(&fx);
    assert_eq!(members.iter().map(|m| m.ticket).collect::<Vec<_>>(), vec![2, 1]);
    let fx = w.claim_result(id, Ok(ClaimOutcome::Claimed));
    assert_eq!(room_members(&fx), Some(vec![2, 1]));
    assert_eq!(searching(&fx), -2);
    assert!(has(&fx, |f| matches!(f, Effect::MatchMade { size: 2, .. })));
    assert!(has(&fx, |f| matches!(f, Effect::OpenRoom { confirm: None, .. })));
}

#[test]
fn a_lost_claim_on_one_node_drops_the_superseded_search() {
    let mut w = world(false);
    let (_, id) = local_pair(&mut w);
    // u1 searched again elsewhere (a newer session): its ticket is no longer valid.
    let fx = u1_lost(&mut w, id);
    assert!(has(&fx, |f| matches!(f, Effect::ClaimConflict)));
    assert_eq!(searching(&fx), -1);
    assert!(!w.core.is_parked(1) && !w.waiting(1));
    assert!(w.waiting(2), "the other member waits again");
    assert!(announced(&fx).is_empty(), "its claim did not end u2: no re-announce");
}

#[test]
fn a_failed_claim_puts_every_member_back() {
    let mut w = world(false);
    let (_, id) = local_pair(&mut w);
    let fx = w.claim_result(id, Err(BridgeError::Unavailable("down".into())));
    // Back together, so they are picked again at once.
    let (again, _) = claim_of(&fx);
    assert_ne!(again, id);
}

#[test]
fn a_member_that_vanished_before_delivery_sends_the_others_back() {
    let mut w = world(false);
    let (u2, id) = local_pair(&mut w);
    u2.kill();
    let fx = w.claim_result(id, Ok(ClaimOutcome::Claimed));
    assert_eq!(room_members(&fx), None);
    assert_eq!(searching(&fx), -1, "the dead one stops counting");
    assert_eq!(announced(&fx), vec![1], "the claim ended u1 in the store: announced again");
    assert!(w.waiting(1));
}

#[test]
fn cancel_while_claiming_ends_the_search_if_the_claim_fails() {
    let mut w = world(false);
    let (_, id) = local_pair(&mut w);
    assert!(!w.core.cancel(&uid("u1"), 1, CancelReason::Cancelled), "not waiting");
    assert!(w.core.is_withdrawn(1));
    let fx = w.claim_result(id, Err(BridgeError::Unavailable("down".into())));
    cancel_wins(&w, &fx, 1);
    assert!(has(&fx, |f| matches!(f, Effect::EndSearch { ticket: 1, .. })));
    assert!(has(&fx, |f| matches!(f, Effect::Ended(EndReason::Cancelled))));
    assert!(w.waiting(2));
}

#[test]
fn cancel_while_claiming_loses_to_a_claim_that_succeeds() {
    let mut w = world(false);
    let (_, id) = local_pair(&mut w);
    assert!(!w.core.cancel(&uid("u1"), 1, CancelReason::Disconnected));
    let fx = w.claim_result(id, Ok(ClaimOutcome::Claimed));
    match_wins(&w, &fx, &[2, 1]);
}

#[test]
fn cancel_of_a_waiting_search_ends_it_at_once() {
    let mut w = world(false);
    w.local(1, "u1");
    assert!(w.core.cancel(&uid("u1"), 1, CancelReason::Cancelled));
    let fx = w.fx();
    assert!(has(&fx, |f| matches!(f, Effect::EndSearch { ticket: 1, .. })));
    assert_eq!(searching(&fx), -1);
    assert!(!w.waiting(1));
    // An old ticket of the user is not the waiting one.
    w.local(2, "u1");
    assert!(!w.core.cancel(&uid("u1"), 1, CancelReason::Cancelled));
    assert!(w.waiting(2) && !w.core.is_withdrawn(1));
}

#[test]
fn a_newer_search_of_the_same_user_replaces_the_older() {
    let mut w = world(false);
    w.local(1, "u1");
    let (_, fx) = w.local(2, "u1");
    assert_eq!(searching(&fx), 0, "one in, one out");
    assert!(!w.waiting(1) && w.waiting(2));
}

#[test]
fn the_deadline_expires_a_search_and_tells_its_session() {
    let mut w = world(false);
    w.local(1, "u1");
    w.core.tick(w.at(60_000));
    let fx = w.fx();
    assert!(has(&fx, |f| matches!(f, Effect::Expired { ticket: 1, .. })));
    assert!(has(&fx, |f| matches!(f, Effect::EndSearch { ticket: 1, .. })));
    assert!(has(&fx, |f| matches!(f, Effect::Ended(EndReason::Timeout))));
    assert!(w.core.pool().is_empty());
}

// ---- replicas ----

#[test]
fn a_replica_re_announced_by_its_origin_is_kept_once() {
    let mut w = world(true);
    w.replica("b", 20, "u2");
    w.replica("b", 20, "u2");
    assert_eq!(w.core.pool().len(), 1);
    w.core.remote_removed(&Arc::from("b"), &[20]);
    w.fx();
    assert!(w.core.pool().is_empty());
    w.replica_sized("b", 20, "u2", 3);
    w.replica_sized("c", 30, "u3", 3);
    w.core.remote_dropped(Some(&Arc::from("b")));
    w.fx();
    assert_eq!(w.core.pool().len(), 1, "only b's replicas go");
    w.core.remote_dropped(None);
    w.fx();
    assert!(w.core.pool().is_empty());
}

#[test]
fn a_local_search_beats_a_replica_of_the_same_user() {
    let mut w = world(true);
    w.local(1, "u1");
    let fx = w.replica("b", 20, "u1");
    assert!(fx.is_empty() && w.core.pool().len() == 1 && w.waiting(1));
    // And the other way round: the local search replaces the replica.
    let mut w = world(true);
    w.replica("b", 20, "u9");
    let (_, fx) = w.local(1, "u9");
    assert_eq!(searching(&fx), 1);
    assert_eq!(w.core.pool().len(), 1);
    assert!(w.waiting(1));
    // Its origin announcing it again changes nothing.
    assert!(w.replica("b", 20, "u9").is_empty());
    assert_eq!(w.core.pool().len(), 1);
}

#[test]
fn this_nodes_own_ads_are_not_replicated() {
    let mut w = world(true);
    assert!(w.replica("a", 5, "u5").is_empty());
    assert!(w.core.pool().is_empty());
}

#[test]
fn republish_announces_only_local_searches() {
    let mut w = world(true);
    w.local_sized(1, "u1", 3);
    w.replica_sized("b", 20, "u2", 3);
    w.core.republish();
    assert_eq!(announced(&w.fx()), vec![1]);
}

// ---- creator side ----

#[test]
fn a_cross_node_claim_becomes_an_offer_and_opens_when_every_node_holds() {
    let mut w = world(true);
    let id = cross_pair(&mut w);
    let fx = w.claim_result(id, Ok(ClaimOutcome::Claimed));
    let offer = offer_id(&fx);
    assert_eq!(sent(&fx).len(), 1);
    assert_eq!(sent(&fx)[0].0, "b");
    assert_eq!(room_members(&fx), None, "no room before b holds");
    let fx = w.answer("b", offer, true);
    assert_eq!(room_members(&fx), None, "no room before it is recorded");
    let (creator, asked, proposal) = decide_of(&fx);
    assert_eq!((creator.as_str(), asked), ("a", offer));
    let seated = vec![(uid("u2"), Arc::from("b")), (uid("u1"), Arc::from("a"))];
    assert_eq!(
        proposal,
        Proposal::Open { members: seated.clone(), shared: vec![Interest::from("chess")] }
    );
    // A duplicate answer changes nothing, and the offer no longer times out.
    assert!(w.answer("b", offer, true).is_empty());
    assert!(w.sweep(OFFER_TIMEOUT * 2).is_empty());
    let recorded = OfferOutcome::Opened {
        room: RoomId::from("r9"),
        members: seated,
        shared: vec![Interest::from("chess")],
    };
    let fx = w.decided("a", offer, Ok(recorded));
    match fx.iter().find(|f| matches!(f, Effect::OpenRoom { .. })) {
        Some(Effect::OpenRoom { members, remote, confirm: Some(c), .. }) => {
            assert_eq!(members.len(), 1);
            assert_eq!(remote, &vec![(uid("u2"), Arc::from("b"))]);
            assert_eq!(c.room, RoomId::from("r9"), "the recorded room");
            assert_eq!(c.offer, offer);
            assert_eq!(c.nodes, vec![Arc::<str>::from("b")]);
        }
        other => panic!("expected a confirmed room, got {other:?}"),
    }
    assert_eq!(searching(&fx), -1, "only the local member counted here");
}

#[test]
fn an_offer_recorded_aborted_by_a_member_node_puts_everyone_back() {
    let mut w = world(true);
    let id = cross_pair(&mut w);
    let offer = offer_id(&w.claim_result(id, Ok(ClaimOutcome::Claimed)));
    decide_of(&w.answer("b", offer, true));
    // b heard nothing in time and recorded `aborted` first.
    let fx = w.decided("a", offer, Ok(OfferOutcome::Aborted));
    assert_eq!(room_members(&fx), None);
    assert_eq!(aborted_nodes(&fx), vec!["b"]);
    assert_eq!(announced(&fx), vec![1]);
    assert!(w.waiting(1));
}

#[test]
fn an_unknown_outcome_is_asked_again_with_the_same_proposal_until_answered() {
    let mut w = world(true);
    let id = cross_pair(&mut w);
    let offer = offer_id(&w.claim_result(id, Ok(ClaimOutcome::Claimed)));
    let first = decide_of(&w.answer("b", offer, true));
    assert!(w.decided("a", offer, Err(BridgeError::Unavailable("down".into()))).is_empty());
    assert!(w.sweep(DECIDE_RETRY - Duration::from_millis(1)).is_empty());
    assert_eq!(decide_of(&w.sweep(DECIDE_RETRY)), first);
    // A cancel meanwhile only withdraws: the recorded room answers it.
    assert!(!w.core.cancel(&uid("u1"), 1, CancelReason::Cancelled));
    let fx = w.decided("a", offer, Ok(opened("a")));
    match_wins(&w, &fx, &[1]);
}

#[test]
fn a_refused_offer_aborts_and_puts_the_local_members_back() {
    let mut w = world(true);
    let id = cross_pair(&mut w);
    let offer = offer_id(&w.claim_result(id, Ok(ClaimOutcome::Claimed)));
    let fx = w.answer("b", offer, false);
    assert_eq!(aborted_nodes(&fx), vec!["b"]);
    assert!(has(&fx, |f| matches!(f, Effect::ClaimConflict)));
    assert_eq!(announced(&fx), vec![1], "the claim ended u1 in the store");
    assert!(w.waiting(1));
    // The remote member comes back when b re-announces it.
    assert_eq!(w.core.pool().len(), 1);
}

#[test]
fn an_offer_timeout_aborts_every_offered_node_and_requeues_the_locals() {
    let mut w = world(true);
    w.local_sized(1, "u1", 3);
    w.replica_sized("b", 20, "u2", 3);
    let fx = w.replica_sized("c", 30, "u3", 3);
    let (id, _) = claim_of(&fx);
    let fx = w.claim_result(id, Ok(ClaimOutcome::Claimed));
    let offer = offer_id(&fx);
    assert_eq!(sent(&fx).len(), 2);
    w.answer("b", offer, true);
    assert!(w.sweep(OFFER_TIMEOUT - Duration::from_millis(1)).is_empty());
    let fx = w.sweep(OFFER_TIMEOUT);
    let mut nodes = aborted_nodes(&fx);
    nodes.sort();
    assert_eq!(nodes, vec!["b", "c"], "answered or not, every offered node hears it is over");
    assert_eq!(announced(&fx), vec![1]);
    assert!(w.waiting(1));
    // c's late answer is ignored.
    assert!(w.answer("c", offer, true).is_empty());
}

#[test]
fn a_local_member_that_died_during_the_offer_aborts_it() {
    let mut w = world(true);
    let (u1, _) = w.local(1, "u1");
    let fx = w.replica("b", 20, "u2");
    let (id, _) = claim_of(&fx);
    let offer = offer_id(&w.claim_result(id, Ok(ClaimOutcome::Claimed)));
    u1.kill();
    let fx = w.answer("b", offer, true);
    assert_eq!(aborted_nodes(&fx), vec!["b"]);
    assert_eq!(room_members(&fx), None);
    assert_eq!(searching(&fx), -1);
    assert!(w.core.pool().is_empty());
}

#[test]
fn cancel_while_offered_ends_the_search_if_the_offer_fails() {
    let (mut w, offer) = offered_then_cancelled();
    let fx = w.answer("b", offer, false);
    cancel_wins(&w, &fx, 1);
}

#[test]
fn cancel_while_offered_loses_to_an_offer_that_holds() {
    let (mut w, offer) = offered_then_cancelled();
    decide_of(&w.answer("b", offer, true));
    let fx = w.decided("a", offer, Ok(opened("a")));
    match_wins(&w, &fx, &[1]);
}

/// u1 (here) and u2 (node b) claimed and offered; then u1 cancels, which only
/// withdraws it while the offer runs. Returns the offer id.
fn offered_then_cancelled() -> (World, u64) {
    let mut w = world(true);
    let id = cross_pair(&mut w);
    let offer = offer_id(&w.claim_result(id, Ok(ClaimOutcome::Claimed)));
    assert!(!w.core.cancel(&uid("u1"), 1, CancelReason::Cancelled));
    (w, offer)
}

// ---- member side ----

#[test]
fn an_offer_for_waiting_searches_holds_them_and_a_confirm_settles_them() {
    let mut w = world(true);
    w.local(1, "u1");
    let fx = w.offer("c", 7, &[("u1", 1)]);
    assert_eq!(reply(&fx), ("c", true, vec![]));
    assert!(w.core.is_held(1) && !w.waiting(1));
    let fx = w.settle("c", 7, true);
    assert_eq!(room_members(&fx), Some(vec![1]));
    match fx.iter().find(|f| matches!(f, Effect::Settled { .. })) {
        Some(Effect::Settled { all, .. }) => assert_eq!(all, &seats("c")),
        other => panic!("expected settled, got {other:?}"),
    }
    assert_eq!(searching(&fx), -1);
}

#[test]
fn an_aborted_offer_puts_held_searches_back_announced() {
    let mut w = world(true);
    w.local(1, "u1");
    w.offer("c", 7, &[("u1", 1)]);
    let fx = w.settle("c", 7, false);
    assert_eq!(announced(&fx), vec![1]);
    assert!(w.waiting(1));
}

#[test]
fn claim_lost_parks_then_the_winners_offer_holds_it() {
    let mut w = world(true);
    let id = cross_pair(&mut w);
    // c's claim took u1 first.
    let fx = u1_lost(&mut w, id);
    assert!(has(&fx, |f| matches!(f, Effect::ClaimConflict)));
    assert!(w.core.is_parked(1) && !w.waiting(1), "parked, out of the pool");
    assert_eq!(w.core.pool().len(), 1, "b's replica waits again");
    let fx = w.offer("c", 7, &[("u1", 1)]);
    assert_eq!(reply(&fx), ("c", true, vec![]));
    assert!(w.core.is_held(1) && !w.core.is_parked(1));
    // The park's timeout no longer applies.
    assert!(w.sweep(PARKED_TIMEOUT).is_empty());
    assert!(w.core.is_held(1));
}

#[test]
fn a_park_times_out_back_to_the_pool_announced_again() {
    let mut w = world(true);
    let id = cross_pair(&mut w);
    u1_lost(&mut w, id);
    assert!(w.sweep(PARKED_TIMEOUT - Duration::from_millis(1)).is_empty());
    let fx = w.sweep(PARKED_TIMEOUT);
    assert_eq!(announced(&fx)[0], 1, "re-announced so the next claim can take it");
    // Back with b's replica: picked again at once.
    claim_of(&fx);
}

#[test]
fn cancel_while_parked_then_held_then_aborted_ends_the_search() {
    let mut w = world(true);
    let id = cross_pair(&mut w);
    u1_lost(&mut w, id);
    assert!(!w.core.cancel(&uid("u1"), 1, CancelReason::Cancelled));
    w.offer("c", 7, &[("u1", 1)]);
    assert!(!w.core.cancel(&uid("u1"), 1, CancelReason::Cancelled), "held: still not waiting");
    let fx = w.settle("c", 7, false);
    cancel_wins(&w, &fx, 1);
}

#[test]
fn cancel_while_held_loses_to_a_confirm() {
    let mut w = world(true);
    w.local(1, "u1");
    w.offer("c", 7, &[("u1", 1)]);
    assert!(!w.core.cancel(&uid("u1"), 1, CancelReason::Cancelled));
    let fx = w.settle("c", 7, true);
    match_wins(&w, &fx, &[1]);
}

#[test]
fn a_held_offer_never_settled_asks_the_store_and_goes_back_when_aborted() {
    let mut w = world(true);
    w.local(1, "u1");
    w.offer("c", 7, &[("u1", 1)]);
    assert!(w.sweep(HELD_CHECK - Duration::from_millis(1)).is_empty());
    let fx = w.sweep(HELD_CHECK);
    assert_eq!(decide_of(&fx), ("c".into(), 7, Proposal::Abort));
    assert!(w.core.is_held(1), "held until the store answers");
    let fx = w.decided("c", 7, Ok(OfferOutcome::Aborted));
    assert_eq!(announced(&fx), vec![1]);
    assert!(w.waiting(1));
    // An abort that comes after all finds nothing held.
    assert!(w.settle("c", 7, false).is_empty());
    assert!(w.waiting(1));
}

#[test]
fn a_held_offer_whose_confirm_was_lost_is_matched_in_the_recorded_room() {
    let mut w = world(true);
    w.local(1, "u1");
    w.offer("c", 7, &[("u1", 1)]);
    decide_of(&w.sweep(HELD_CHECK));
    // The store is down: asked again, still held, never back in the pool.
    assert!(w.decided("c", 7, Err(BridgeError::Unavailable("down".into()))).is_empty());
    assert_eq!(decide_of(&w.sweep(HELD_CHECK + DECIDE_RETRY)).2, Proposal::Abort);
    assert!(w.core.is_held(1) && !w.waiting(1));
    let fx = w.decided("c", 7, Ok(opened("c")));
    assert_eq!(room_members(&fx), Some(vec![1]));
    match fx.iter().find(|f| matches!(f, Effect::Settled { .. })) {
        Some(Effect::Settled { room_id, all, .. }) => {
            assert_eq!(room_id, &RoomId::from("r1"));
            assert_eq!(all, &seats("c"));
        }
        other => panic!("expected settled, got {other:?}"),
    }
    assert_eq!(searching(&fx), -1);
    // The confirm, late after all, matches nobody twice.
    assert!(w.settle("c", 7, true).is_empty());
}

#[test]
fn an_offer_naming_nobody_is_dropped_at_its_check_without_asking() {
    let mut w = world(true);
    assert_eq!(reply(&w.offer("c", 7, &[])), ("c", true, vec![]));
    assert!(w.sweep(HELD_CHECK).is_empty(), "nothing held, nothing to ask");
    assert!(w.settle("c", 7, true).is_empty());
}

#[test]
fn a_confirm_that_comes_while_the_store_is_asked_settles_and_the_answer_is_ignored() {
    let mut w = world(true);
    w.local(1, "u1");
    w.offer("c", 7, &[("u1", 1)]);
    decide_of(&w.sweep(HELD_CHECK));
    assert_eq!(room_members(&w.settle("c", 7, true)), Some(vec![1]));
    assert!(w.decided("c", 7, Ok(opened("c"))).is_empty());
    assert!(w.sweep(HELD_CHECK + DECIDE_RETRY).is_empty(), "no retry left behind");
}

#[test]
fn an_offer_that_overtakes_the_enqueue_is_refused_and_the_search_announced_on_arrival() {
    let mut w = world(true);
    let fx = w.offer("c", 7, &[("u1", 1)]);
    assert_eq!(reply(&fx), ("c", false, vec!["u1".to_string()]));
    let (_, fx) = w.local(1, "u1");
    assert_eq!(announced(&fx), vec![1], "c's claim ended it in the store");
    // Only once.
    w.core.cancel(&uid("u1"), 1, CancelReason::Cancelled);
    w.fx();
    let (_, fx) = w.local(1, "u1");
    assert!(announced(&fx).is_empty());
}

#[test]
fn a_search_whose_claim_loses_after_a_refused_offer_is_not_parked() {
    // Two creators' offers overtook u1's enqueue and were refused: no offer is on
    // its way any more, so when u1's own claim loses it waits again at once
    // instead of parking for a winner's offer.
    let mut w = world(true);
    w.offer("c", 7, &[("u1", 1)]);
    w.offer("d", 9, &[("u1", 1)]);
    w.replica("b", 20, "u2");
    let (_, fx) = w.local(1, "u1");
    assert_eq!(announced(&fx), vec![1], "announced again on arrival");
    let (id, _) = claim_of(&fx);
    let fx = u1_lost(&mut w, id);
    assert!(!w.core.is_parked(1));
    assert_eq!(announced(&fx), vec![1]);
    // Back with b's replica: picked again at once.
    claim_of(&fx);
}

/// c's offer for u1 arrives while u1's own claim (with b's replica) runs: it
/// waits. Returns the world and the running claim.
fn offer_behind_our_claim() -> (World, u64) {
    let mut w = world(true);
    let id = cross_pair(&mut w);
    assert!(w.offer("c", 7, &[("u1", 1)]).is_empty(), "deferred: no answer yet");
    (w, id)
}

/// The claim `id` lost u1 to another node's claim.
fn u1_lost(w: &mut World, id: u64) -> Fx {
    w.claim_result(id, Ok(ClaimOutcome::Lost(vec![uid("u1")])))
}

/// Claim `id` loses u1 to the creator's: the deferred offer is accepted and holds it.
fn lost_then_held(w: &mut World, id: u64) {
    let fx = u1_lost(w, id);
    assert_eq!(reply(&fx), ("c", true, vec![]));
    assert!(w.core.is_held(1));
}

#[test]
fn an_offer_during_our_own_claim_is_looked_at_when_the_claim_loses() {
    // The creator's claim won: u1 is parked, then the deferred offer holds it.
    let (mut w, id) = offer_behind_our_claim();
    lost_then_held(&mut w, id);
}

#[test]
fn an_offer_during_our_own_claim_waits_for_the_retry_of_a_failed_one() {
    // Back in the pool and picked again at once, so the offer waits for that claim
    // too; when it loses, the offer holds the parked search.
    let (mut w, id) = offer_behind_our_claim();
    let fx = w.claim_result(id, Err(BridgeError::Unavailable("down".into())));
    assert!(sent(&fx).is_empty(), "still deferred");
    let (again, _) = claim_of(&fx);
    lost_then_held(&mut w, again);
}

#[test]
fn an_offer_during_our_own_claim_is_refused_when_the_claim_wins() {
    let (mut w, id) = offer_behind_our_claim();
    let fx = w.claim_result(id, Ok(ClaimOutcome::Claimed));
    let replies: Vec<_> = sent(&fx)
        .into_iter()
        .filter(|(_, e)| matches!(e, ClusterEvent::OfferReply { ok: false, .. }))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(replies, vec!["c"]);
}

#[test]
fn an_offer_settled_before_it_was_looked_at_is_refused() {
    let mut w = world(true);
    w.local(1, "u1");
    assert!(w.settle("c", 7, false).is_empty());
    let fx = w.offer("c", 7, &[("u1", 1)]);
    assert_eq!(reply(&fx), ("c", false, vec!["u1".to_string()]));
    assert!(w.waiting(1), "still waiting here");
    assert_eq!(announced(&fx), vec![1], "announced again: c's claim ended it in the store");
    // Another offer of c is unaffected.
    let fx = w.offer("c", 8, &[("u1", 1)]);
    assert_eq!(reply(&fx), ("c", true, vec![]));
}

#[test]
fn an_abort_of_a_deferred_offer_drops_it() {
    let (mut w, id) = offer_behind_our_claim();
    assert!(w.settle("c", 7, false).is_empty());
    let fx = u1_lost(&mut w, id);
    assert!(sent(&fx).is_empty(), "no answer to an offer that is over");
    assert!(w.core.is_parked(1));
}

#[test]
fn an_offer_for_a_dead_session_is_refused() {
    let mut w = world(true);
    let (u1, _) = w.local(1, "u1");
    u1.kill();
    let fx = w.offer("c", 7, &[("u1", 1)]);
    assert_eq!(reply(&fx), ("c", false, vec!["u1".to_string()]));
}

#[test]
fn an_offer_naming_a_different_user_for_the_ticket_is_refused() {
    let mut w = world(true);
    w.local(1, "u1");
    let fx = w.offer("c", 7, &[("someone", 1)]);
    assert_eq!(reply(&fx), ("c", false, vec!["someone".to_string()]));
}

#[test]
fn a_partly_present_offer_is_refused_and_the_present_ones_wait_again() {
    let mut w = world(true);
    w.local_sized(1, "u1", 3);
    let fx = w.offer("c", 7, &[("u1", 1), ("u4", 4)]);
    assert_eq!(reply(&fx), ("c", false, vec!["u4".to_string()]));
    assert!(w.waiting(1));
    assert_eq!(announced(&fx), vec![1]);
}

// ---- every interleaving at once ----

/// A small deterministic generator (no dependency on a random crate).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Random inputs in random order on a clustered core: the state stays consistent
/// after every step, and every local search ends exactly one way.
#[test]
fn random_interleavings_keep_the_state_consistent() {
    for seed in 0..40u64 {
        let mut w = world(true);
        let mut rng = Lcg(seed);
        let mut claims: Vec<u64> = Vec::new();
        let mut offers: Vec<u64> = Vec::new();
        let mut asked: Vec<(String, u64)> = Vec::new();
        let mut links: Vec<Fake> = Vec::new();
        let mut now = 0u64;
        let mut net = 0i64;
        for step in 0..400u64 {
            let user = format!("u{}", rng.below(12));
            let fx: Fx = match rng.below(13) {
                0 | 1 => {
                    let (link, fx) = w.local(100 + step, &user);
                    links.push(link);
                    fx
                }
                2 => {
                    let node = ["b", "c"][rng.below(2) as usize];
                    w.replica(node, rng.below(30), &user)
                }
                3 => {
                    let t = 100 + rng.below(step + 1);
                    w.core.cancel(&UserId::from(user.as_str()), t, CancelReason::Cancelled);
                    w.fx()
                }
                4 | 5 if !claims.is_empty() => {
                    let id = claims.remove(rng.below(claims.len() as u64) as usize);
                    let outcome = match rng.below(3) {
                        0 => Ok(ClaimOutcome::Claimed),
                        1 => Ok(ClaimOutcome::Lost(vec![UserId::from(user.as_str())])),
                        _ => Err(BridgeError::Unavailable("x".into())),
                    };
                    w.claim_result(id, outcome)
                }
                6 => {
                    let t = 100 + rng.below(step + 1);
                    w.offer("c", 1_000 + step, &[(&user, t)])
                }
                7 if !offers.is_empty() => {
                    let id = offers[rng.below(offers.len() as u64) as usize];
                    w.answer(["b", "c"][rng.below(2) as usize], id, rng.below(2) == 0)
                }
                8 => w.settle("c", 1_000 + rng.below(step + 1), rng.below(2) == 0),
                9 => {
                    now += rng.below(3_000);
                    w.now = w.at(now);
                    w.core.sweep(w.now);
                    w.core.tick(w.now);
                    w.fx()
                }
                10 if !links.is_empty() => {
                    links[rng.below(links.len() as u64) as usize].kill();
                    Vec::new()
                }
                11 if !asked.is_empty() => {
                    let (creator, offer) = asked.remove(rng.below(asked.len() as u64) as usize);
                    let outcome = match rng.below(3) {
                        0 => Ok(opened(&creator)),
                        1 => Ok(OfferOutcome::Aborted),
                        _ => Err(BridgeError::Unavailable("x".into())),
                    };
                    w.decided(&creator, offer, outcome)
                }
                _ => {
                    w.core.remote_dropped(Some(&Arc::from("b")));
                    w.fx()
                }
            };
            for f in &fx {
                match f {
                    Effect::Claim { id, .. } => claims.push(*id),
                    Effect::Send { event: ClusterEvent::Offer { offer, .. }, .. } => {
                        offers.push(*offer)
                    }
                    Effect::Decide { creator, offer, .. } => {
                        asked.push((creator.to_string(), *offer))
                    }
                    _ => {}
                }
            }
            net += searching(&fx);
            assert_eq!(
                net,
                w.core.local_searches() as i64,
                "seed {seed} step {step}: the gauge counts every local search once"
            );
        }
    }
}

// ---- roaming searches (no language) ----

/// A core whose roaming searches go to `fr` when it is not their pool.
fn roaming_world() -> World {
    let policy = crate::matching::policy::Policy::Ladder(ladder());
    let core = ShardCore::new(Arc::from("a"), false, policy, Box::new(|_, _| false))
        .with_roaming(Box::new(|from, _, _, _| (from != "fr").then(|| Arc::from("fr"))));
    let t0 = Instant::now();
    World { core, t0, now: t0, next_ticket: 1_000 }
}

fn roamer(
    ticket: Ticket,
    user: &str,
    language: &str,
    moved: bool,
    t0: Instant,
) -> LocalSearch<Fake> {
    let mut criteria = criteria(2);
    criteria.language = Arc::from(language);
    criteria.roam = Roam::AnyLanguage;
    LocalSearch {
        ticket,
        user: uid(user),
        criteria,
        joined: t0,
        deadline: t0 + Duration::from_secs(60),
        link: Fake { alive: Arc::new(AtomicBool::new(true)) },
        moved,
    }
}

#[test]
fn a_lone_roaming_search_ends_here_before_it_moves_and_is_begun_there() {
    let mut w = roaming_world();
    w.core.enqueue(roamer(1, "r", "en", false, w.t0), w.now);
    let fx = w.fx();
    assert_eq!(searching(&fx), 1);
    w.core.tick(w.at(100));
    let fx = w.fx();
    let end = fx.iter().position(
        |f| matches!(f, Effect::EndSearch { ticket: 1, language, .. } if &**language == "en"),
    );
    let mv = fx.iter().position(
        |f| matches!(f, Effect::Move(s) if s.ticket == 1 && &*s.criteria.language == "fr"),
    );
    assert!(end.is_some() && mv.is_some() && end < mv, "ended here, then moved: {fx:?}");
    assert_eq!(searching(&fx), 0, "still one search in progress");
    assert!(!w.waiting(1));
    assert_eq!(w.core.moved_to(1).as_deref(), Some("fr"), "a cancel sent here can follow it");
    // The shard of `fr` (here the same core) begins it and counts it once.
    w.core.enqueue(roamer(1, "r", "fr", true, w.t0), w.at(110));
    let fx = w.fx();
    assert_eq!(announced(&fx), vec![1]);
    assert_eq!(searching(&fx), 0);
    assert_eq!(w.core.moved_to(1), None);
    assert!(w.waiting(1));
    // In `fr` it has nowhere else to go: it stays, and matches a `fr` searcher.
    w.core.tick(w.at(2_000));
    assert!(w.waiting(1));
    let link = Fake { alive: Arc::new(AtomicBool::new(true)) };
    let mut c = criteria(2);
    c.language = Arc::from("fr");
    let s = LocalSearch {
        ticket: 2,
        user: uid("f"),
        criteria: c,
        joined: w.at(2_000),
        deadline: w.at(60_000),
        link,
        moved: false,
    };
    w.core.enqueue(s, w.at(2_000));
    let fx = w.fx();
    let (id, members) = claim_of(&fx);
    assert_eq!(members.len(), 2);
    let fx = w.claim_result(id, Ok(ClaimOutcome::Claimed));
    assert_eq!(
        room_members(&fx).map(|mut m| {
            m.sort();
            m
        }),
        Some(vec![1, 2])
    );
}

#[test]
fn a_roaming_search_with_company_stays_for_its_dwell() {
    let mut w = roaming_world();
    // Two roaming searches that do not match each other (groups of three).
    let mut a = roamer(1, "r1", "en", false, w.t0);
    let mut b = roamer(2, "r2", "en", false, w.t0);
    a.criteria.group_size = 3;
    b.criteria.group_size = 3;
    w.core.enqueue(a, w.now);
    w.core.enqueue(b, w.now);
    w.fx();
    w.core.tick(w.at(500));
    assert!(w.waiting(1) && w.waiting(2), "not alone, within the dwell: they stay");
    w.core.tick(w.at(1_100));
    let fx = w.fx();
    assert_eq!(fx.iter().filter(|f| matches!(f, Effect::Move(_))).count(), 2, "{fx:?}");
}

#[test]
fn a_lone_search_in_a_part_is_asked_as_lone_until_its_dwell() {
    // Where to go is the directory's choice; the core says how the search roams
    // and whether it is lone (alone, within its dwell). This stand-in keeps lone
    // searches home and sends the others to `en~0`.
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = asked.clone();
    let policy = crate::matching::policy::Policy::Ladder(ladder());
    let core = ShardCore::new(Arc::from("a"), false, policy, Box::new(|_, _| false)).with_roaming(
        Box::new(move |from, _, roam, lone| {
            log.lock().expect("the log").push((from.to_owned(), roam, lone));
            (!lone).then(|| Arc::from("en~0"))
        }),
    );
    let t0 = Instant::now();
    let mut w = World { core, t0, now: t0, next_ticket: 1_000 };
    let mut s = roamer(1, "p", "en~1", false, w.t0);
    s.criteria.roam = Roam::Parts;
    w.core.enqueue(s, w.now);
    w.fx();
    w.core.tick(w.at(100));
    assert!(w.waiting(1), "lone: stays where the directory keeps it");
    w.core.tick(w.at(1_100));
    let fx = w.fx();
    assert!(
        fx.iter().any(|f| matches!(f, Effect::Move(s) if &*s.criteria.language == "en~0")),
        "{fx:?}"
    );
    let asked = asked.lock().expect("the log").clone();
    assert_eq!(
        asked,
        vec![("en~1".to_owned(), Roam::Parts, true), ("en~1".to_owned(), Roam::Parts, false)]
    );
}
