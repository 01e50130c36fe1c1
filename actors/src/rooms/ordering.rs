//! The order in which a cluster replica acknowledges sends and delivers messages,
//! as a pure state machine: no actor, no bridge, no clock. The room actor feeds it
//! events (a send went to the store, the store answered, a message came on the
//! feed, the gap timer fired, a gap fill or a reseed answered) and carries out the
//! [`Effect`]s it returns, in order.
//!
//! The store assigns each message its `seq`. Messages stored by other nodes arrive
//! on the feed; this node's own come back only as the answer to its append. Either
//! way they wait in `pending` until every smaller `seq` was delivered, so members
//! see one order with no holes:
//!
//! ```text
//!  send ──append_sent──► appends (by arrival) ──append_answered──┐
//!                          answers leave in send order            │
//!           ┌───────── Stored(seq): Ack, then ──────────────────┤
//!           │          NotMember: NotMember(to)                  │
//!           │          Unconfirmed: Unconfirmed(to), then ───────┤
//!           │            (a fresh one) delivered like Stored     │
//!           │          StoreDown: Refuse(to) if the room spans   │
//!           │            nodes, else Ack + Deliver a local seq ──┘
//!           ▼
//!  feed ──message_arrived──► pending (by seq) ──drain──► Deliver(last_seq + 1) …
//!                               │ ≤ last_seq: dropped (duplicate, overlap)
//!                               │ a hole: ArmGapTimer ── gap_timer_fired ──► Fetch
//!                               │ (not loaded yet: buffered until `loaded`)
//!  store history ──gap_filled──►┘ (a full page: Fetch the next one)
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use rendezvous_protocol::ChatMessage;

/// How long a replica waits for a missing `seq` before it reads the store.
pub const GAP_WAIT: Duration = Duration::from_millis(250);
/// Messages asked of the store per gap-fill read; a full page asks for the next.
pub const FILL_PAGE: usize = 200;

/// The store's answer to one append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Stored with this `seq`.
    Stored(u64),
    /// Not stored: the sender's earlier `send` with the same `client_msg_id` was
    /// stored as `seq` / `msg_id` (a resend). Acknowledged as that one; nothing is
    /// delivered (the original was, in its turn).
    Duplicate { seq: u64, msg_id: String },
    /// The store does not hold the sender's seat.
    NotMember,
    /// The store is unreachable.
    StoreDown,
    /// Stored as `seq` (`fresh`: by this append, else earlier: a resend), but too
    /// few replicas confirmed it in time. Not acknowledged: the sender resends. A
    /// fresh one is delivered all the same (the other nodes deliver it too).
    Unconfirmed { seq: u64, fresh: bool },
}

/// Why the machine asks for the store's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchCause {
    /// A hole in `seq` outlived [`GAP_WAIT`].
    Gap,
    /// After a reseed the store is ahead of this replica.
    Resync,
    /// The previous read returned a full page.
    NextPage,
}

/// What the actor carries out, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect<R> {
    /// Acknowledge a send: stored as `seq` with `msg_id`. `local`: the store was
    /// unreachable and the room went on alone (its seq is this node's).
    Ack { to: R, seq: u64, msg_id: String, local: bool },
    /// Store `msg` in the history ring (its seq is `last_seq + 1`) and fan it out.
    Deliver(ChatMessage),
    /// The room's seq starts after this (learnt when loaded): nothing before it is
    /// delivered here.
    SkipTo(u64),
    /// Answer the sender `not_in_room`: the store has no seat for them.
    NotMember(R),
    /// Refuse the send (`unavailable`, retry later): the store is unreachable and
    /// the room has members on other nodes, which could hand out the same local seqs.
    Refuse(R),
    /// Answer the send `unavailable` (retry later, with the same `client_msg_id`):
    /// stored, but not yet confirmed by the replicas asked for.
    Unconfirmed(R),
    /// Call [`ReplicaOrder::gap_timer_fired`] after [`GAP_WAIT`].
    ArmGapTimer,
    /// Read up to [`FILL_PAGE`] messages after `after` from the store and pass them
    /// to [`ReplicaOrder::gap_filled`] (a failed read is dropped: the next message
    /// that finds the hole arms the timer again).
    Fetch { after: u64, cause: FetchCause },
}

/// An append under way.
#[derive(Debug)]
struct Append<R> {
    to: R,
    draft: ChatMessage,
    answer: Option<Answer>,
}

/// Ordering state of one cluster replica. `R` is how the actor reaches a sender
/// (their outbox and `client_msg_id`); the machine only hands it back.
#[derive(Debug)]
pub struct ReplicaOrder<R> {
    /// Last seq delivered here (the room's `last_seq`).
    last_seq: u64,
    /// The replica knows the room's seq; until then messages are only buffered.
    loaded: bool,
    /// Messages past the next expected seq, waiting for the hole to fill.
    pending: BTreeMap<u64, ChatMessage>,
    /// A gap check is scheduled.
    gap_timer: bool,
    /// Appends under way, by arrival; answered in this order.
    appends: BTreeMap<u64, Append<R>>,
    next_append: u64,
}

impl<R> ReplicaOrder<R> {
    /// A replica whose last delivered seq is `last_seq`; `loaded` when that is the
    /// room's real seq (a fresh match room, a snapshot), not yet when a public
    /// replica waits for its first join's answer.
    pub fn new(last_seq: u64, loaded: bool) -> Self {
        Self {
            last_seq,
            loaded,
            pending: BTreeMap::new(),
            gap_timer: false,
            appends: BTreeMap::new(),
            next_append: 0,
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// A send went to the store; returns the id its answer is given with.
    pub fn append_sent(&mut self, to: R, draft: ChatMessage) -> u64 {
        let id = self.next_append;
        self.next_append += 1;
        self.appends.insert(id, Append { to, draft, answer: None });
        id
    }

    /// The store answered append `id`. `spans_nodes`: the room has members on
    /// other nodes now. Answers every finished append at the front, in send order.
    pub fn append_answered(
        &mut self,
        id: u64,
        answer: Answer,
        spans_nodes: bool,
        out: &mut Vec<Effect<R>>,
    ) {
        if let Some(a) = self.appends.get_mut(&id) {
            a.answer = Some(answer);
        }
        while let Some(entry) = self.appends.first_entry() {
            if entry.get().answer.is_none() {
                break;
            }
            let Append { to, draft, answer } = entry.remove();
            let Some(answer) = answer else { break };
            match answer {
                Answer::Duplicate { seq, msg_id } => {
                    out.push(Effect::Ack { to, seq, msg_id, local: false })
                }
                // Acknowledged, then delivered in seq order among the messages
                // other nodes stored (the feed brings those; this node's own are
                // not published back to it).
                Answer::Stored(seq) => {
                    let msg_id = draft.msg_id.clone();
                    out.push(Effect::Ack { to, seq, msg_id, local: false });
                    self.message_arrived(ChatMessage { seq, ..draft }, out);
                }
                Answer::NotMember => out.push(Effect::NotMember(to)),
                // Not acknowledged (a failover could lose it); the resend finds it
                // stored and is acknowledged once the replicas confirm it.
                Answer::Unconfirmed { seq, fresh } => {
                    out.push(Effect::Unconfirmed(to));
                    if fresh {
                        self.message_arrived(ChatMessage { seq, ..draft }, out);
                    }
                }
                // Members on other nodes take their seqs from the store too: a
                // local seq could be handed out twice, once here and once there,
                // and one of two acknowledged messages would be lost when the store
                // comes back. Not stored, so not acknowledged.
                Answer::StoreDown if spans_nodes => out.push(Effect::Refuse(to)),
                // Every member is here: go on alone; the reseed stores it later.
                Answer::StoreDown => {
                    let seq = self.last_seq + 1;
                    self.last_seq = seq;
                    let msg_id = draft.msg_id.clone();
                    out.push(Effect::Ack { to, seq, msg_id, local: true });
                    out.push(Effect::Deliver(ChatMessage { seq, ..draft }));
                }
            }
        }
    }

    /// A stored message arrived (from the feed, or as this node's own append).
    pub fn message_arrived(&mut self, msg: ChatMessage, out: &mut Vec<Effect<R>>) {
        if self.loaded && msg.seq <= self.last_seq {
            return; // already delivered (a duplicate, a resync overlap)
        }
        self.pending.insert(msg.seq, msg);
        if self.loaded {
            self.drain(out);
        }
    }

    /// The first join answered with the room's seq: deliver what was buffered
    /// past it, drop what it covers.
    pub fn loaded(&mut self, store_last_seq: u64, out: &mut Vec<Effect<R>>) {
        if self.loaded {
            return;
        }
        self.loaded = true;
        if store_last_seq > self.last_seq {
            self.last_seq = store_last_seq;
            out.push(Effect::SkipTo(store_last_seq));
        }
        self.drain(out);
    }

    /// The first join found the store unreachable: go on with the seq held here.
    /// What was buffered waits for the next message to find it.
    pub fn load_failed(&mut self) {
        self.loaded = true;
    }

    /// The gap timer fired: read the store if a hole is still open.
    pub fn gap_timer_fired(&mut self, out: &mut Vec<Effect<R>>) {
        self.gap_timer = false;
        if !self.pending.is_empty() {
            out.push(Effect::Fetch { after: self.last_seq, cause: FetchCause::Gap });
        }
    }

    /// The store's history after the asked seq (oldest first).
    pub fn gap_filled(&mut self, messages: Vec<ChatMessage>, out: &mut Vec<Effect<R>>) {
        let more = messages.len() == FILL_PAGE;
        for m in messages {
            self.pending.insert(m.seq, m);
        }
        self.drain(out);
        if more {
            out.push(Effect::Fetch { after: self.last_seq, cause: FetchCause::NextPage });
        }
    }

    /// The store was restored after a reconnect and is at `store_seq`; this
    /// replica was at `seq_at_reseed` when it sent the reseed. Others went on
    /// meanwhile when the store is ahead: fetch what this replica missed.
    pub fn reseeded(&mut self, store_seq: u64, seq_at_reseed: u64, out: &mut Vec<Effect<R>>) {
        if store_seq > seq_at_reseed {
            self.loaded = true;
            out.push(Effect::Fetch { after: self.last_seq, cause: FetchCause::Resync });
        }
    }

    /// The replica's feed started (Redis Cluster: the room's channel was
    /// subscribed) when the store was at `store_seq`: what was stored before is
    /// fetched, since it was not delivered here. Nothing to do before the first
    /// load (that answer carries the seq).
    pub fn subscribed(&mut self, store_seq: u64, out: &mut Vec<Effect<R>>) {
        if self.loaded && store_seq > self.last_seq {
            out.push(Effect::Fetch { after: self.last_seq, cause: FetchCause::Resync });
        }
    }

    /// Deliver the pending messages that follow `last_seq` without a hole; arm
    /// the gap timer when a hole is left.
    fn drain(&mut self, out: &mut Vec<Effect<R>>) {
        while let Some(entry) = self.pending.first_entry() {
            let seq = *entry.key();
            if seq <= self.last_seq {
                entry.remove();
                continue;
            }
            if seq != self.last_seq + 1 {
                break;
            }
            self.last_seq = seq;
            out.push(Effect::Deliver(entry.remove()));
        }
        if !self.pending.is_empty() && !self.gap_timer {
            self.gap_timer = true;
            out.push(Effect::ArmGapTimer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Out = Vec<Effect<&'static str>>;

    fn msg(seq: u64, id: &str) -> ChatMessage {
        ChatMessage {
            room_id: "r".into(),
            seq,
            msg_id: id.into(),
            sender: "u".into(),
            text: format!("text of {id}"),
            ts: 1,
        }
    }

    /// A draft as the actor sends it (seq 0: the store assigns it).
    fn draft(id: &str) -> ChatMessage {
        msg(0, id)
    }

    fn loaded_at(seq: u64) -> ReplicaOrder<&'static str> {
        ReplicaOrder::new(seq, true)
    }

    fn arrive(o: &mut ReplicaOrder<&'static str>, seq: u64, id: &str) -> Out {
        let mut out = Vec::new();
        o.message_arrived(msg(seq, id), &mut out);
        out
    }

    fn answer(o: &mut ReplicaOrder<&'static str>, id: u64, a: Answer, spans: bool) -> Out {
        let mut out = Vec::new();
        o.append_answered(id, a, spans, &mut out);
        out
    }

    /// The seqs delivered, in order.
    fn delivered(out: &Out) -> Vec<u64> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Deliver(m) => Some(m.seq),
                _ => None,
            })
            .collect()
    }

    fn ack(to: &'static str, seq: u64, msg_id: &str) -> Effect<&'static str> {
        Effect::Ack { to, seq, msg_id: msg_id.into(), local: false }
    }

    #[test]
    fn in_order_messages_are_delivered_at_once() {
        let mut o = loaded_at(0);
        assert_eq!(delivered(&arrive(&mut o, 1, "a")), [1]);
        assert_eq!(delivered(&arrive(&mut o, 2, "b")), [2]);
        assert_eq!(o.last_seq(), 2);
    }

    #[test]
    fn own_append_is_acked_then_delivered() {
        let mut o = loaded_at(4);
        let id = o.append_sent("alice", draft("m"));
        let out = answer(&mut o, id, Answer::Stored(5), false);
        assert_eq!(out[0], ack("alice", 5, "m"));
        assert_eq!(out[1], Effect::Deliver(msg(5, "m")));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn a_duplicate_is_acked_as_the_original_and_not_delivered() {
        let mut o = loaded_at(7);
        let first = o.append_sent("alice", draft("m-new"));
        let dup = Answer::Duplicate { seq: 3, msg_id: "m-orig".into() };
        let out = answer(&mut o, first, dup, true);
        assert_eq!(out, vec![ack("alice", 3, "m-orig")], "the original ack, nothing delivered");
        assert_eq!(o.last_seq(), 7, "no seq consumed");
        // Answers still leave in send order around a duplicate.
        let a = o.append_sent("a", draft("x"));
        let b = o.append_sent("b", draft("y"));
        assert!(
            answer(&mut o, b, Answer::Duplicate { seq: 2, msg_id: "y0".into() }, false).is_empty()
        );
        let out = answer(&mut o, a, Answer::Stored(8), false);
        assert_eq!(out, vec![ack("a", 8, "x"), Effect::Deliver(msg(8, "x")), ack("b", 2, "y0")]);
    }

    #[test]
    fn out_of_order_answers_go_out_in_send_order() {
        let mut o = loaded_at(0);
        let a = o.append_sent("first", draft("a"));
        let b = o.append_sent("second", draft("b"));
        let c = o.append_sent("third", draft("c"));
        // The second and third answers are polled before the first.
        assert!(answer(&mut o, b, Answer::Stored(2), false).is_empty());
        assert!(answer(&mut o, c, Answer::NotMember, false).is_empty());
        let out = answer(&mut o, a, Answer::Stored(1), false);
        assert_eq!(
            out,
            [
                ack("first", 1, "a"),
                Effect::Deliver(msg(1, "a")),
                ack("second", 2, "b"),
                Effect::Deliver(msg(2, "b")),
                Effect::NotMember("third"),
            ]
        );
    }

    #[test]
    fn store_order_wins_over_send_order_for_delivery() {
        // Two sends answered in send order, but the store gave the first the larger
        // seq (another connection's pipeline): acks in send order, delivery in seq.
        let mut o = loaded_at(0);
        let a = o.append_sent("a", draft("a"));
        let b = o.append_sent("b", draft("b"));
        let out = answer(&mut o, a, Answer::Stored(2), false);
        assert_eq!(out, [ack("a", 2, "a"), Effect::ArmGapTimer]);
        let out = answer(&mut o, b, Answer::Stored(1), false);
        assert_eq!(out[0], ack("b", 1, "b"));
        assert_eq!(delivered(&out), [1, 2]);
    }

    #[test]
    fn a_feed_message_that_overtakes_our_answer_waits_for_it() {
        // Ours is seq 3; another node's seq 4 reaches the feed before our answer.
        let mut o = loaded_at(2);
        let id = o.append_sent("me", draft("mine"));
        let out = arrive(&mut o, 4, "theirs");
        assert_eq!(out, [Effect::ArmGapTimer], "4 waits for 3");
        let out = answer(&mut o, id, Answer::Stored(3), false);
        assert_eq!(out[0], ack("me", 3, "mine"));
        assert_eq!(delivered(&out), [3, 4]);
        // The timer fires after the hole closed: nothing to fetch.
        let mut out = Vec::new();
        o.gap_timer_fired(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut o = loaded_at(0);
        assert_eq!(delivered(&arrive(&mut o, 1, "a")), [1]);
        assert!(arrive(&mut o, 1, "a").is_empty(), "delivered already");
        // A duplicate of a buffered message replaces it; it is delivered once.
        assert_eq!(arrive(&mut o, 3, "c"), [Effect::ArmGapTimer]);
        assert!(arrive(&mut o, 3, "c").is_empty());
        assert_eq!(delivered(&arrive(&mut o, 2, "b")), [2, 3]);
        assert!(arrive(&mut o, 3, "c").is_empty());
        assert_eq!(o.last_seq(), 3);
    }

    #[test]
    fn a_gap_is_filled_from_the_store() {
        let mut o = loaded_at(10);
        assert_eq!(arrive(&mut o, 13, "d"), [Effect::ArmGapTimer]);
        // Only one timer while the hole is open.
        assert!(arrive(&mut o, 14, "e").is_empty());
        let mut out = Vec::new();
        o.gap_timer_fired(&mut out);
        assert_eq!(out, [Effect::Fetch { after: 10, cause: FetchCause::Gap }]);
        let mut out = Vec::new();
        o.gap_filled(vec![msg(11, "b"), msg(12, "c"), msg(13, "d")], &mut out);
        assert_eq!(delivered(&out), [11, 12, 13, 14]);
        assert_eq!(out.len(), 4, "no timer, no further fetch");
    }

    #[test]
    fn a_failed_fill_is_retried_when_the_next_message_finds_the_hole() {
        let mut o = loaded_at(0);
        assert_eq!(arrive(&mut o, 2, "b"), [Effect::ArmGapTimer]);
        let mut out = Vec::new();
        o.gap_timer_fired(&mut out);
        assert_eq!(out, [Effect::Fetch { after: 0, cause: FetchCause::Gap }]);
        // The read failed (nothing comes back); the next arrival arms the timer again.
        assert_eq!(arrive(&mut o, 3, "c"), [Effect::ArmGapTimer]);
    }

    #[test]
    fn a_full_page_asks_for_the_next() {
        let mut o = loaded_at(0);
        let page: Vec<_> = (1..=FILL_PAGE as u64).map(|s| msg(s, "x")).collect();
        let mut out = Vec::new();
        o.gap_filled(page, &mut out);
        assert_eq!(delivered(&out).len(), FILL_PAGE);
        assert_eq!(
            out.last(),
            Some(&Effect::Fetch { after: FILL_PAGE as u64, cause: FetchCause::NextPage })
        );
    }

    #[test]
    fn a_fill_answered_after_the_missing_message_arrived_anyway() {
        let mut o = loaded_at(0);
        arrive(&mut o, 2, "b");
        let mut out = Vec::new();
        o.gap_timer_fired(&mut out);
        // Seq 1 comes on the feed while the read is under way.
        assert_eq!(delivered(&arrive(&mut o, 1, "a")), [1, 2]);
        // The read returns 1..=3: 1 and 2 are dropped, 3 is new.
        let mut out = Vec::new();
        o.gap_filled(vec![msg(1, "a"), msg(2, "b"), msg(3, "c")], &mut out);
        assert_eq!(out, [Effect::Deliver(msg(3, "c"))]);
        // And a read that brings only what was delivered changes nothing.
        let mut out = Vec::new();
        o.gap_filled(vec![msg(2, "b"), msg(3, "c")], &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn messages_before_loaded_are_buffered_and_those_it_covers_dropped() {
        // A public replica waiting for its first join's answer.
        let mut o = ReplicaOrder::<&str>::new(0, false);
        assert!(arrive(&mut o, 7, "g").is_empty());
        assert!(arrive(&mut o, 5, "e").is_empty());
        assert!(arrive(&mut o, 6, "f").is_empty());
        // The join answers: the room's seq is 5 (5 is in the history already).
        let mut out = Vec::new();
        o.loaded(5, &mut out);
        assert_eq!(out[0], Effect::SkipTo(5));
        assert_eq!(delivered(&out), [6, 7]);
        assert_eq!(o.last_seq(), 7);
        // A second load changes nothing.
        let mut out = Vec::new();
        o.loaded(100, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn loaded_behind_what_is_held_keeps_what_is_held() {
        let mut o = ReplicaOrder::<&str>::new(3, false);
        let mut out = Vec::new();
        o.loaded(2, &mut out);
        assert!(out.is_empty());
        assert_eq!(o.last_seq(), 3);
    }

    #[test]
    fn a_load_that_failed_goes_on_with_the_seq_held() {
        let mut o = ReplicaOrder::<&str>::new(0, false);
        assert!(arrive(&mut o, 2, "b").is_empty());
        o.load_failed();
        assert!(o.is_loaded());
        // What was buffered waits for the next arrival.
        let out = arrive(&mut o, 1, "a");
        assert_eq!(delivered(&out), [1, 2]);
    }

    #[test]
    fn store_down_with_every_member_here_goes_on_with_a_local_seq() {
        let mut o = loaded_at(8);
        let a = o.append_sent("a", draft("a"));
        let b = o.append_sent("b", draft("b"));
        let out = answer(&mut o, b, Answer::StoreDown, false);
        assert!(out.is_empty(), "b waits for a");
        let out = answer(&mut o, a, Answer::StoreDown, false);
        assert_eq!(
            out,
            [
                Effect::Ack { to: "a", seq: 9, msg_id: "a".into(), local: true },
                Effect::Deliver(msg(9, "a")),
                Effect::Ack { to: "b", seq: 10, msg_id: "b".into(), local: true },
                Effect::Deliver(msg(10, "b")),
            ]
        );
        assert_eq!(o.last_seq(), 10);
    }

    #[test]
    fn store_down_with_members_elsewhere_refuses_and_acks_nothing() {
        let mut o = loaded_at(8);
        let a = o.append_sent("a", draft("a"));
        let out = answer(&mut o, a, Answer::StoreDown, true);
        assert_eq!(out, [Effect::Refuse("a")]);
        assert_eq!(o.last_seq(), 8, "no seq handed out");
        // The next stored message is still 9.
        assert_eq!(delivered(&arrive(&mut o, 9, "x")), [9]);
    }

    #[test]
    fn an_unconfirmed_append_is_delivered_but_not_acknowledged() {
        let mut o = loaded_at(8);
        let a = o.append_sent("a", draft("a"));
        let out = answer(&mut o, a, Answer::Unconfirmed { seq: 9, fresh: true }, true);
        assert_eq!(out[0], Effect::Unconfirmed("a"));
        assert_eq!(delivered(&out), [9], "in the seq order like the other nodes");
        assert!(!out.iter().any(|e| matches!(e, Effect::Ack { .. })));
        // The resend finds it stored; still unconfirmed: refused again, nothing
        // delivered twice.
        let b = o.append_sent("a", draft("a"));
        let out = answer(&mut o, b, Answer::Unconfirmed { seq: 9, fresh: false }, true);
        assert_eq!(out, [Effect::Unconfirmed("a")]);
        // Confirmed at last: acknowledged as the original.
        let c = o.append_sent("a", draft("a"));
        let out = answer(&mut o, c, Answer::Duplicate { seq: 9, msg_id: "a".into() }, true);
        assert_eq!(out, [ack("a", 9, "a")]);
        assert_eq!(o.last_seq(), 9);
    }

    #[test]
    fn resync_fetches_what_others_stored_meanwhile() {
        let mut o = loaded_at(4);
        let mut out = Vec::new();
        o.reseeded(4, 4, &mut out);
        assert!(out.is_empty(), "the store is not ahead");
        // Others went on to 9 while this node was cut off.
        o.reseeded(9, 4, &mut out);
        assert_eq!(out, [Effect::Fetch { after: 4, cause: FetchCause::Resync }]);
        let mut out = Vec::new();
        o.gap_filled((5..=9).map(|s| msg(s, "x")).collect(), &mut out);
        assert_eq!(delivered(&out), [5, 6, 7, 8, 9]);
        // The feed's late copies of those are duplicates.
        assert!(arrive(&mut o, 7, "x").is_empty());
    }

    #[test]
    fn resync_loads_a_replica_that_never_learnt_its_seq() {
        let mut o = ReplicaOrder::<&str>::new(0, false);
        arrive(&mut o, 3, "c");
        let mut out = Vec::new();
        o.reseeded(3, 0, &mut out);
        assert!(o.is_loaded());
        assert_eq!(out, [Effect::Fetch { after: 0, cause: FetchCause::Resync }]);
        let mut out = Vec::new();
        o.gap_filled(vec![msg(1, "a"), msg(2, "b"), msg(3, "c")], &mut out);
        assert_eq!(delivered(&out), [1, 2, 3]);
    }

    #[test]
    fn local_seqs_while_down_then_the_feed_resumes_after_them() {
        // Store down: two local messages. Back up: the reseed wrote them to the
        // store (store_seq == ours), and the next stored message is 3.
        let mut o = loaded_at(0);
        let a = o.append_sent("a", draft("a"));
        answer(&mut o, a, Answer::StoreDown, false);
        let b = o.append_sent("b", draft("b"));
        answer(&mut o, b, Answer::StoreDown, false);
        let mut out = Vec::new();
        o.reseeded(2, 2, &mut out);
        assert!(out.is_empty());
        let c = o.append_sent("c", draft("c"));
        let out = answer(&mut o, c, Answer::Stored(3), false);
        assert_eq!(out, [ack("c", 3, "c"), Effect::Deliver(msg(3, "c"))]);
    }

    #[test]
    fn a_late_subscription_fetches_what_was_stored_before_it() {
        let mut o = loaded_at(2);
        let mut out = Vec::new();
        o.subscribed(5, &mut out);
        assert_eq!(out, [Effect::Fetch { after: 2, cause: FetchCause::Resync }]);
        let mut out = Vec::new();
        o.subscribed(2, &mut out);
        assert!(out.is_empty(), "nothing was missed");
        let mut unloaded = ReplicaOrder::<&'static str>::new(0, false);
        unloaded.subscribed(4, &mut out);
        assert!(out.is_empty(), "the first load brings the seq itself");
    }
}
