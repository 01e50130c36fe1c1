//! Where a room of this node alone and this node's replica of a cluster room
//! differ: the room's [`Replication`], and the [`RoomActor`] methods that act on it.
//! Everything else about a room is the same for both (see [`super::actor`]).
//!
//! In a cluster the store assigns `seq` and keeps the history; a message sent here
//! is delivered when the store answers with its `seq`, and one sent on another node
//! arrives as a [`RoomEv::Message`]. Either way the replica delivers only the next
//! expected `seq` (a gap waits briefly, then is filled from the store's history):
//! that order is the pure [`ReplicaOrder`], and this file carries out its effects.
//! Typing, reads, signals and presence are delivered here first and published to
//! the other member nodes. While the store is unreachable, a replica whose members
//! are all on this node goes on alone (local `seq`, local history) and restores the
//! store from what it holds when the connection returns ([`super::messages::ResyncRoom`]);
//! a room with members on other nodes refuses `send` instead (`unavailable`,
//! `retry_after_ms`), because the other replicas would hand out the same local seqs
//! and one of two acknowledged messages would be lost.

use std::sync::Arc;

use actix::{ActorFutureExt, AsyncContext, Context, WrapFuture};
use rendezvous_protocol::{ChatMessage, ErrorCode};
use tracing::{debug, warn};

use super::actor::{ack, error_for, remember, send_context, ErrorContext, RoomActor};
use super::messages::{FetchHistory, JoinPublicRoom};
use super::ordering::{Answer, Effect, FetchCause, ReplicaOrder, FILL_PAGE, GAP_WAIT};
use super::replication::{Replication, Sender};
use super::room::RoomKind;
use crate::bridge::events::{MemberStatus, RoomEv};
use crate::bridge::{Appended, RoomSeed, StoredKind};
use crate::ids::UserId;
use crate::metrics as m;

/// When a client refused for an unreachable store should try again.
const STORE_DOWN_RETRY_MS: u64 = 1_000;

impl RoomActor {
    /// Store a message from a member and acknowledge it. Alone: the room assigns
    /// the next seq, stores, acks and delivers at once. A replica: the store
    /// assigns it; answers go out in send order, deliveries in seq order.
    pub(super) fn store_message(
        &mut self,
        draft: ChatMessage,
        to: Sender,
        ctx: &mut Context<Self>,
    ) {
        let Replication::Cluster(replica) = &mut self.replication else {
            // Stored first, then acknowledged: an ack always means `history` has it.
            let stored = self.state.append_draft(draft);
            remember(&mut self.state, &to, stored.seq, &stored.msg_id, stored.ts);
            ack(&to, &self.state.id, stored.seq, &stored.msg_id);
            return self.deliver_message(&stored);
        };
        if self.state.has_remote_members() && !self.shared.bridge.writable() {
            // The store is down or not yet re-seeded after a reconnect: refused like
            // a send that found it down (no seq handed out, nothing stored).
            let id = replica.order.append_sent(to, draft);
            return self
                .feed(ctx, |order, out| order.append_answered(id, Answer::StoreDown, true, out));
        }
        let fut = self.shared.bridge.room_append_once(&draft, to.client_msg_id.as_deref());
        let id = replica.order.append_sent(to, draft);
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            let answer = match res {
                Ok(Some(Appended::Stored(seq))) => Answer::Stored(seq),
                Ok(Some(Appended::Duplicate { seq, msg_id })) => {
                    metrics::counter!(m::DUPLICATE_SENDS_TOTAL).increment(1);
                    Answer::Duplicate { seq, msg_id }
                }
                Ok(Some(Appended::Unconfirmed { seq, fresh })) => {
                    Answer::Unconfirmed { seq, fresh }
                }
                Ok(None) => Answer::NotMember,
                Err(e) => {
                    debug!(room = %act.state.id, error = %e, "append while the store is down");
                    Answer::StoreDown
                }
            };
            let spans_nodes = act.state.has_remote_members();
            act.feed(ctx, |order, out| order.append_answered(id, answer, spans_nodes, out));
        }));
    }

    /// Seat a joiner of a public room. A replica takes the seat in the store first
    /// and learns the room's members (and, the first time, its seq) from it.
    pub(super) fn join_through_store(&mut self, j: JoinPublicRoom, ctx: &mut Context<Self>) {
        if !self.replication.is_cluster() {
            return self.seat_joiner(j, ctx);
        }
        let fut = self.shared.bridge.room_join(&self.state.id, &j.user);
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            match res {
                Ok(snapshot) => {
                    let store_seq = snapshot.last_seq;
                    let me = act.node();
                    for (user, node) in snapshot.members {
                        if node != me && user != j.user {
                            act.state.seat_remote(user, node);
                        }
                    }
                    act.feed(ctx, |order, out| order.loaded(store_seq, out));
                }
                Err(e) => {
                    warn!(room = %act.state.id, error = %e, "join while the store is down; local only");
                    act.feed(ctx, |order, _| order.load_failed());
                }
            }
            act.seat_joiner(j, ctx);
        }));
    }

    /// Answer a `history` request the ring does not cover: a replica reads the
    /// store's stream, which keeps more (and what this replica never saw); a room
    /// alone has only its ring.
    pub(super) fn history_beyond_ring(
        &mut self,
        msg: FetchHistory,
        local: Vec<ChatMessage>,
        ctx: &mut Context<Self>,
    ) {
        if !self.replication.is_cluster() {
            let span = self.held_span();
            return self.send_history(&msg.reply, local, span, &msg.budget);
        }
        let fut = self.shared.bridge.room_history_page(&self.state.id, msg.after_seq, msg.limit);
        ctx.spawn(fut.into_actor(self).map(move |res, act, _| match res {
            Ok(page) => {
                // The store's seq can be ahead of what this replica delivered.
                let last = page.last_seq.max(act.state.last_seq);
                act.send_history(&msg.reply, page.messages, (page.first_seq, last), &msg.budget)
            }
            Err(_) => {
                let span = act.held_span();
                act.send_history(&msg.reply, local, span, &msg.budget)
            }
        }));
    }

    /// A stored message from the store's feed (a replica's; a room alone has none).
    pub(super) fn on_feed_message(&mut self, msg: ChatMessage, ctx: &mut Context<Self>) {
        self.feed(ctx, |order, out| order.message_arrived(msg, out));
    }

    /// Redis Cluster: the room's channel is subscribed (the store was at
    /// `store_seq`); fetch what was stored before.
    pub(super) fn on_subscribed(&mut self, store_seq: u64, ctx: &mut Context<Self>) {
        self.feed(ctx, |order, out| order.subscribed(store_seq, out));
    }

    /// Send a typing, read, signal or member event to the other member nodes.
    pub(super) fn publish(&self, ev: RoomEv) {
        if self.replication.is_cluster() && self.state.has_remote_members() {
            self.shared.bridge.room_event(&self.state.id, ev);
        }
    }

    /// Tell the other member nodes about a local member's presence.
    pub(super) fn publish_member(&self, user: &UserId, status: MemberStatus) {
        if self.replication.is_cluster() && self.state.has_remote_members() {
            let ev =
                RoomEv::Member { user: user.to_string(), node: self.node().to_string(), status };
            self.shared.bridge.room_event(&self.state.id, ev);
        }
    }

    /// Remove the seat in the store too (which tells the other nodes).
    pub(super) fn leave_everywhere(&self, user: &UserId, on_node: Option<Arc<str>>) {
        if self.replication.is_cluster() {
            let fut =
                self.shared.bridge.room_leave(&self.state.id, user, on_node, self.stored_kind());
            actix::spawn(async move {
                let _ = fut.await;
            });
        }
    }

    /// Close the room in the store too (which tells the other nodes).
    pub(super) fn close_everywhere(&self, reason: &'static str) {
        if self.replication.is_cluster() {
            self.shared.bridge.room_close(&self.state.id, reason);
        }
    }

    /// A replica whose last local member left while others remain elsewhere: the
    /// room goes on there, not here.
    pub(super) fn goes_on_elsewhere(&self) -> bool {
        self.replication.is_cluster()
            && !self.state.has_local_members()
            && self.state.members.len() > 1
    }

    /// A replica of a match room with no members on this node has nothing to do here.
    pub(super) fn detach_if_unused(&mut self, ctx: &mut Context<Self>) {
        if self.replication.is_cluster()
            && self.state.kind == RoomKind::Match
            && !self.state.has_local_members()
        {
            self.forget(ctx);
        }
    }

    /// The store is reachable again: restore what it lacks from what this replica
    /// holds, drop seats it no longer has, and fetch what others stored meanwhile.
    pub(super) fn resync(&mut self, ctx: &mut Context<Self>) {
        if !self.replication.is_cluster() {
            return;
        }
        let me = self.node();
        let seed = RoomSeed {
            kind: self.stored_kind(),
            members: self
                .state
                .members
                .iter()
                .map(|mb| (mb.user.clone(), mb.node.clone().unwrap_or_else(|| me.clone())))
                .collect(),
            last_seq: self.state.last_seq,
            messages: self.state.held_messages(),
        };
        let ours = self.state.last_seq;
        let fut = self.shared.bridge.room_reseed(&self.state.id, seed);
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok((store_seq, stored)) => {
                // Seats of other nodes that the store no longer has left while this
                // node was cut off (their `left` event was missed).
                let gone: Vec<UserId> = act
                    .state
                    .members
                    .iter()
                    .filter(|mb| mb.node.is_some() && !stored.iter().any(|(u, _)| *u == mb.user))
                    .map(|mb| mb.user.clone())
                    .collect();
                for user in gone {
                    act.remove_member(&user, ctx);
                }
                let me = act.node();
                for (user, node) in stored {
                    if node != me {
                        act.state.seat_remote(user, node);
                    }
                }
                act.feed(ctx, |order, out| order.reseeded(store_seq, ours, out));
            }
            Err(e) => debug!(room = %act.state.id, error = %e, "reseed failed; retried at the next reconnect"),
        }));
    }

    fn stored_kind(&self) -> StoredKind {
        match self.state.kind {
            RoomKind::Match => StoredKind::Match,
            RoomKind::Public => StoredKind::Public,
        }
    }

    /// Give the replica's ordering one input and carry out what it decides, in
    /// order. A room alone has no ordering: nothing happens.
    fn feed(
        &mut self,
        ctx: &mut Context<Self>,
        input: impl FnOnce(&mut ReplicaOrder<Sender>, &mut Vec<Effect<Sender>>),
    ) {
        let Replication::Cluster(replica) = &mut self.replication else { return };
        let mut effects = std::mem::take(&mut replica.effects);
        input(&mut replica.order, &mut effects);
        for effect in effects.drain(..) {
            self.carry_out(effect, ctx);
        }
        if let Replication::Cluster(replica) = &mut self.replication {
            replica.effects = effects;
        }
        debug_assert_eq!(self.order_seq(), Some(self.state.last_seq));
    }

    fn order_seq(&self) -> Option<u64> {
        match &self.replication {
            Replication::Cluster(replica) => Some(replica.order.last_seq()),
            Replication::Local => None,
        }
    }

    fn carry_out(&mut self, effect: Effect<Sender>, ctx: &mut Context<Self>) {
        match effect {
            Effect::Ack { to, seq, msg_id, local } => {
                if local {
                    debug!(room = %self.state.id, seq, "store down, every member here; local seq");
                }
                remember(&mut self.state, &to, seq, &msg_id, crate::clock::now_ms());
                ack(&to, &self.state.id, seq, &msg_id);
            }
            Effect::Deliver(msg) => {
                let stored = self.state.push_stored(msg);
                self.deliver_message(&stored);
            }
            Effect::SkipTo(seq) => self.state.last_seq = seq,
            Effect::NotMember(to) => error_for(
                &to.reply,
                ErrorCode::NotInRoom,
                format!("not a member of room {}", self.state.id),
                send_context(&to.client_msg_id),
            ),
            Effect::Refuse(to) => {
                debug!(room = %self.state.id, "append while the store is down; refused");
                let message = format!(
                    "room {} spans nodes and the shared store is unreachable: \
                     the message was not stored; send it again",
                    self.state.id
                );
                let cx = ErrorContext {
                    retry_after_ms: Some(STORE_DOWN_RETRY_MS),
                    ..send_context(&to.client_msg_id)
                };
                error_for(&to.reply, ErrorCode::Unavailable, message, cx);
            }
            Effect::Unconfirmed(to) => {
                debug!(room = %self.state.id, "stored, but too few replicas confirmed it in time");
                let message = format!(
                    "room {}: the message is stored but not yet confirmed by a replica of the \
                     shared store (it may be failing over): send it again with the same \
                     client_msg_id",
                    self.state.id
                );
                let cx = ErrorContext {
                    retry_after_ms: Some(STORE_DOWN_RETRY_MS),
                    ..send_context(&to.client_msg_id)
                };
                error_for(&to.reply, ErrorCode::Unavailable, message, cx);
            }
            Effect::ArmGapTimer => {
                ctx.run_later(GAP_WAIT, |act, ctx| {
                    act.feed(ctx, |order, out| order.gap_timer_fired(out));
                });
            }
            Effect::Fetch { after, cause } => {
                if cause == FetchCause::Gap {
                    metrics::counter!(m::BRIDGE_SEQ_GAPS_TOTAL).increment(1);
                }
                let fut = self.shared.bridge.room_history(&self.state.id, after, FILL_PAGE);
                ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
                    Ok(messages) => act.feed(ctx, |order, out| order.gap_filled(messages, out)),
                    Err(e) => debug!(room = %act.state.id, error = %e, "gap fill failed; retried"),
                }));
            }
        }
    }
}
